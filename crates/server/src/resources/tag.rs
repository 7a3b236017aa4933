//! System and user tags (upstream `SystemTagVO`, `UserTagVO`): create, update (system tags),
//! delete, query; the tags a create API's `systemTags`/`userTags` put on its new resource; and
//! the registry of system-tag patterns each resource type accepts.
//!
//! Tag patterns (upstream `TagPatternVO`, the "tag2" APIs CreateTag, UpdateTag, QueryTag,
//! AttachTagToResources, DetachTagFromResources, and DeleteTag for patterns): a pattern is put
//! on a resource as a user tag whose `tagPatternUuid` names it, so QueryUserTag and the
//! `__userTag__` query condition see it. Every create API's `tagUuids` puts its (simple)
//! patterns on the new resource once it is created.

use crate::api::{boxed, ApiDef, Kind, Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, FType, ResourceDef};
use crate::util::{new_uuid, now_ms};
use crate::App;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::Row;

pub static SYSTEM_TAG: ResourceDef = ResourceDef {
    inventory: "SystemTagInventory",
    vo: "SystemTagVO",
    class: "org.zstack.header.tag.SystemTagInventory",
    table: "system_tag",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("resourceUuid", "resource_uuid", FType::Str),
        field("resourceType", "resource_type", FType::Str),
        field("tag", "tag", FType::Str),
        field("type", "type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("inherent", "inherent", FType::Bool),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: None,
};

pub static USER_TAG: ResourceDef = ResourceDef {
    inventory: "UserTagInventory",
    vo: "UserTagVO",
    class: "org.zstack.header.tag.UserTagInventory",
    table: "user_tag",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("resourceUuid", "resource_uuid", FType::Str),
        field("resourceType", "resource_type", FType::Str),
        field("tag", "tag", FType::Str),
        field("type", "type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("tagPatternUuid", "tag_pattern_uuid", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: None,
};

pub static TAG_PATTERN: ResourceDef = ResourceDef {
    inventory: "TagPatternInventory",
    vo: "TagPatternVO",
    class: "org.zstack.header.tag.TagPatternInventory",
    table: "tag_pattern",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("value", "value", FType::Str),
        field("description", "description", FType::Str),
        field("color", "color", FType::Str),
        field("type", "type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("TagPatternVO"),
};

/// System-tag patterns per resource type (upstream `*SystemTags` classes registered for
/// the VO). `{x}` is one `::`-separated segment of any value.
pub static SYSTEM_TAG_PATTERNS: &[(&str, &[&str])] = &[
    (
        "VmInstanceVO",
        &[
            "hostname::{hostname}",
            "staticIp::{l3NetworkUuid}::{ip}",
            "ipv4Gateway::{l3NetworkUuid}::{gateway}",
            "ipv4Netmask::{l3NetworkUuid}::{netmask}",
            "customMac::{l3NetworkUuid}::{mac}",
            "userdata::{userdata}",
            "sshkey::{sshkey}",
            "rootPassword::{password}",
            "consolePassword::{password}",
            "bootOrder::{order}",
            "bootMode::{mode}",
            "cdroms::{a}::{b}::{c}",
            "createWithoutCdRom::{flag}",
            "primaryStorageUuidForDataVolume::{uuid}",
            "usbRedirect::{flag}",
            "cleanTraffic::{flag}",
            "syncHostname::{flag}",
            "vmPriority::{priority}",
            "instanceOfferingOnlinechange::{flag}",
            "resourceBindings::{bindings}",
            "maxInstancePerHost::{n}",
            "soundType::{type}",
            "driver::virtio",
        ],
    ),
    (
        "HostVO",
        &[
            "reservedCpu::{capacity}",
            "reservedMemory::{capacity}",
            "os::distribution::{v}",
            "os::release::{v}",
            "os::version::{v}",
            "extraips::{ips}",
            "ipmiAddress::{ip}",
            "capability::liveSnapshot",
        ],
    ),
    ("ClusterVO", &["host::reservedCpu::{capacity}", "host::reservedMemory::{capacity}"]),
    ("InstanceOfferingVO", &["instanceOfferingUserConfig::{config}"]),
    ("DiskOfferingVO", &["diskOfferingUserConfig::{config}", "capability::virtio-scsi"]),
    ("L2NetworkVO", &["kvm::bridge::{name}"]),
    (
        "L3NetworkVO",
        &["networkservices::{services}", "enableDHCP::{flag}", "dhcpServerUuid::{uuid}", "routerInterfaceIp::{ip}"],
    ),
    (
        "PrimaryStorageVO",
        &[
            "primaryStorageVolumeProvisioningStrategy::{strategy}",
            "primaryStorage::allocator::uuid::{uuid}",
            "primaryStorage::allocator::userTag::{tag}",
            "primaryStorage::allocator::userTag::{tag}::required",
            "primaryStorage::gateway::cidr::{cidr}",
            "capability:snapshot",
        ],
    ),
    ("BackupStorageVO", &["extraips::{ips}", "backupStorage::data::network::cidr::{cidr}"]),
    ("ImageVO", &["bootMode::{mode}", "applianceType::{type}", "sourceType::{type}", "packer", "temporary"]),
    (
        "VolumeVO",
        &[
            "capability::virtio-scsi",
            "volumeProvisioningStrategy::{strategy}",
            "notSupportActualSize::{flag}",
            "localStorage::hostUuid::{hostUuid}",
            "packer",
        ],
    ),
];

/// Upstream's tag pattern match: both split on `::` into the same number of segments, and
/// every literal segment of the pattern is equal (a pattern without `::` must be equal).
pub fn pattern_matches(pattern: &str, tag: &str) -> bool {
    if !pattern.contains("::") {
        return pattern == tag;
    }
    let p: Vec<&str> = pattern.split("::").collect();
    let t: Vec<&str> = tag.split("::").collect();
    p.len() == t.len() && p.iter().zip(&t).all(|(ps, ts)| (ps.starts_with('{') && ps.ends_with('}')) || ps == ts)
}

/// VM system tags upstream registers (and acts on: at start, in the allocator, ...) that this
/// node does not act on. CreateSystemTag and UpdateSystemTag refuse them rather than store a
/// tag that would change nothing.
const NOT_HONOURED: &[&str] = &[
    "bootMode::",
    "usbRedirect::",
    "cleanTraffic::",
    "syncHostname::",
    "vmPriority::",
    "instanceOfferingOnlinechange::",
    "resourceBindings::",
    "maxInstancePerHost::",
    "soundType::",
];

/// The refusal of a registered system tag this node does not act on (see [`NOT_HONOURED`]).
fn check_honoured(vo: &str, tag: &str) -> Result<()> {
    if vo == "VmInstanceVO" && NOT_HONOURED.iter().any(|p| tag.starts_with(p)) {
        return Err(Error::argerr(format!(
            "system tag[{tag}] is not supported by this management node: it would be kept without any effect"
        )));
    }
    Ok(())
}

/// Whether `tag` is a system tag registered for resources of type `vo`.
pub fn is_valid_system_tag(vo: &str, tag: &str) -> bool {
    SYSTEM_TAG_PATTERNS.iter().filter(|(t, _)| *t == vo).flat_map(|(_, ps)| ps.iter()).any(|p| pattern_matches(p, tag))
}

/// The resource definition whose tag type (or VO name) is `vo`, among every resource the
/// node serves (queried or referenced by an API).
pub fn def_by_vo(vo: &str) -> Option<&'static ResourceDef> {
    for api in crate::rest::all_apis() {
        let mut defs: Vec<&'static ResourceDef> = api.params.iter().filter_map(|p| p.resource).collect();
        if let Kind::Query(d) = api.kind {
            defs.push(d);
        }
        if let Some(d) = defs.into_iter().find(|d| d.tag_type == Some(vo) || (d.tag_type.is_some() && d.vo == vo)) {
            return Some(d);
        }
    }
    None
}

/// Put the `systemTags`/`userTags` of a create message on the new resource, inside the
/// creating transaction (upstream `createTagsFromAPICreateMessage`). System tags that are
/// not registered for `resource_type` (they configure the creation rather than the resource)
/// and `ephemeral::` tags are skipped; a tag the resource already has is not added twice.
pub async fn attach_create_tags(
    tx: &mut WriteTx,
    resource_uuid: &str,
    resource_type: &str,
    system_tags: &[String],
    user_tags: &[String],
) -> Result<()> {
    let now = now_ms();
    for t in system_tags {
        if t.starts_with("ephemeral::") || !is_valid_system_tag(resource_type, t) {
            continue;
        }
        insert_system_tag(tx, &new_uuid(), resource_uuid, resource_type, t, false, now, true).await?;
    }
    for t in user_tags {
        // one statement: inserted unless the resource has the tag (then the transaction rolls back)
        let n = tx
            .execute(
                "INSERT INTO user_tag (uuid, resource_uuid, resource_type, tag, type, create_date, last_op_date) \
                 SELECT $1, $2, $3, $4, 'User', $5, $5 WHERE NOT EXISTS \
                 (SELECT 1 FROM user_tag WHERE resource_uuid = $2 AND resource_type = $3 AND tag = $4)",
                &[
                    Val::S(new_uuid()),
                    Val::from(resource_uuid),
                    Val::from(resource_type),
                    Val::from(t.as_str()),
                    Val::I(now),
                ],
            )
            .await?;
        if n == 0 {
            return Err(duplicated(t, "User", resource_type, resource_uuid));
        }
    }
    Ok(())
}

/// Put an inherent (system-made, not removable by users) system tag on a resource.
pub async fn add_inherent_system_tag(
    tx: &mut WriteTx,
    resource_uuid: &str,
    resource_type: &str,
    tag: &str,
) -> Result<()> {
    insert_system_tag(tx, &new_uuid(), resource_uuid, resource_type, tag, true, now_ms(), true).await
}

/// Remove every tag of a deleted resource, in the deleting transaction.
pub async fn delete_for_resource(tx: &mut WriteTx, resource_uuid: &str) -> Result<()> {
    tx.execute("DELETE FROM system_tag WHERE resource_uuid = $1", &[Val::from(resource_uuid)]).await?;
    tx.execute("DELETE FROM user_tag WHERE resource_uuid = $1", &[Val::from(resource_uuid)]).await?;
    Ok(())
}

fn duplicated(tag: &str, ty: &str, resource_type: &str, resource_uuid: &str) -> Error {
    Error::operr(format!(
        "Duplicated Tag[tag:{tag}, type:{ty}, resourceType:{resource_type}, resourceUuid:{resource_uuid}]"
    ))
}

async fn has_tag(tx: &mut WriteTx, table: &str, resource_uuid: &str, resource_type: &str, tag: &str) -> Result<bool> {
    let sql = format!("SELECT 1 FROM {table} WHERE resource_uuid = $1 AND resource_type = $2 AND tag = $3");
    Ok(tx.fetch_optional(&sql, &[Val::from(resource_uuid), Val::from(resource_type), Val::from(tag)]).await?.is_some())
}

/// Put a system tag on a resource. With `if_absent`, unless it has it already, in one statement
/// (the existence check is the INSERT's own condition, a search of the (resource_uuid,
/// resource_type) index).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_system_tag(
    tx: &mut WriteTx,
    uuid: &str,
    resource_uuid: &str,
    resource_type: &str,
    tag: &str,
    inherent: bool,
    now: i64,
    if_absent: bool,
) -> Result<()> {
    let sql = if if_absent {
        "INSERT INTO system_tag (uuid, resource_uuid, resource_type, tag, type, inherent, create_date, last_op_date) \
         SELECT $1, $2, $3, $4, 'System', $5, $6, $6 WHERE NOT EXISTS \
         (SELECT 1 FROM system_tag WHERE resource_uuid = $2 AND resource_type = $3 AND tag = $4)"
    } else {
        "INSERT INTO system_tag (uuid, resource_uuid, resource_type, tag, type, inherent, create_date, last_op_date) \
         VALUES ($1, $2, $3, $4, 'System', $5, $6, $6)"
    };
    let vals = [
        Val::from(uuid),
        Val::from(resource_uuid),
        Val::from(resource_type),
        Val::from(tag),
        Val::from(inherent),
        Val::I(now),
    ];
    tx.execute(sql, &vals).await?;
    Ok(())
}

async fn insert_user_tag(
    tx: &mut WriteTx,
    uuid: &str,
    resource_uuid: &str,
    resource_type: &str,
    tag: &str,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO user_tag (uuid, resource_uuid, resource_type, tag, type, create_date, last_op_date) \
         VALUES ($1, $2, $3, $4, 'User', $5, $5)",
        &[Val::from(uuid), Val::from(resource_uuid), Val::from(resource_type), Val::from(tag), Val::I(now)],
    )
    .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateTag {
    resource_type: String,
    resource_uuid: String,
    tag: String,
}

/// Upstream's checks common to both create APIs: the uuid names some resource
/// (`ResourceVO`), the type is one the tag system manages. Returns the type's definition.
async fn check_create(app: &App, req: &CreateTag) -> Result<&'static ResourceDef> {
    let def = def_by_vo(&req.resource_type);
    let known = app
        .db
        .fetch_optional(
            "SELECT 1 FROM account_resource_ref WHERE resource_uuid = $1",
            &[Val::from(req.resource_uuid.as_str())],
        )
        .await?
        .is_some();
    let in_table = match def {
        Some(d) => app
            .db
            .fetch_optional(
                &format!("SELECT 1 FROM {} WHERE uuid = $1", d.table),
                &[Val::from(req.resource_uuid.as_str())],
            )
            .await?
            .is_some(),
        None => false,
    };
    if !known && !in_table {
        return Err(Error::not_found(format!(
            "invalid field[resourceUuid], resource[uuid:{}, type:ResourceVO] not found",
            req.resource_uuid
        )));
    }
    def.ok_or_else(|| Error::argerr(format!("no resource type[{}] found in tag system", req.resource_type)))
}

async fn resource_is_of_type(app: &App, def: &ResourceDef, uuid: &str) -> Result<bool> {
    Ok(app
        .db
        .fetch_optional(&format!("SELECT 1 FROM {} WHERE uuid = $1", def.table), &[Val::from(uuid)])
        .await?
        .is_some())
}

async fn create_system_tag(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateTag = msg.parse()?;
    let def = check_create(&app, &req).await?;
    if !is_valid_system_tag(&req.resource_type, &req.tag) {
        return Err(Error::argerr(format!(
            "no system tag matches[{}] for resourceType[{}]",
            req.tag, req.resource_type
        )));
    }
    check_honoured(&req.resource_type, &req.tag)?;
    if !resource_is_of_type(&app, def, &req.resource_uuid).await? {
        return Err(Error::argerr("The argument :'resourceType' doesn't match uuid"));
    }
    // The job uuid is fixed when the job is accepted: a replay finds the row it made.
    let uuid = msg.job_uuid.clone();
    let mut tx = app.db.begin_write().await?;
    let replay =
        tx.fetch_optional("SELECT 1 FROM system_tag WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?.is_some();
    if !replay {
        // An identical tag already on the resource: upstream answers without an inventory.
        if has_tag(&mut tx, "system_tag", &req.resource_uuid, &req.resource_type, &req.tag).await? {
            return Ok(Reply::empty());
        }
        insert_system_tag(&mut tx, &uuid, &req.resource_uuid, &req.resource_type, &req.tag, false, now_ms(), false)
            .await?;
    }
    tx.commit().await?;
    tag_reply(&app, &SYSTEM_TAG, &uuid).await
}

async fn create_user_tag(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateTag = msg.parse()?;
    check_create(&app, &req).await?;
    let uuid = msg.job_uuid.clone();
    let mut tx = app.db.begin_write().await?;
    let replay =
        tx.fetch_optional("SELECT 1 FROM user_tag WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?.is_some();
    if !replay {
        if has_tag(&mut tx, "user_tag", &req.resource_uuid, &req.resource_type, &req.tag).await? {
            return Err(duplicated(&req.tag, "User", &req.resource_type, &req.resource_uuid));
        }
        insert_user_tag(&mut tx, &uuid, &req.resource_uuid, &req.resource_type, &req.tag, now_ms()).await?;
    }
    tx.commit().await?;
    tag_reply(&app, &USER_TAG, &uuid).await
}

async fn tag_reply(app: &App, def: &'static ResourceDef, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, def, uuid).await? {
        Some(inv) => Ok(Reply::inventory(def, inv)),
        None => Err(Error::not_found(format!("tag[uuid:{uuid}] is not found"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateSystemTag {
    uuid: String,
    tag: String,
}

async fn update_system_tag(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateSystemTag = msg.parse()?;
    let row = app
        .db
        .fetch_optional("SELECT resource_type FROM system_tag WHERE uuid = $1", &[Val::from(req.uuid.as_str())])
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("invalid field[uuid], resource[uuid:{}, type:SystemTagVO] not found", req.uuid))
        })?;
    let resource_type: String = row.try_get(0)?;
    if !is_valid_system_tag(&resource_type, &req.tag) {
        return Err(Error::argerr(format!("no system tag matches[{}] for resourceType[{resource_type}]", req.tag)));
    }
    check_honoured(&resource_type, &req.tag)?;
    app.db
        .execute(
            "UPDATE system_tag SET tag = $1, last_op_date = $2 WHERE uuid = $3 AND tag != $1",
            &[Val::from(req.tag.as_str()), Val::I(now_ms()), Val::from(req.uuid.as_str())],
        )
        .await?;
    tag_reply(&app, &SYSTEM_TAG, &req.uuid).await
}

async fn delete_tag(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    if tx
        .fetch_optional("SELECT 1 FROM system_tag WHERE uuid = $1 AND inherent = 1", &[Val::from(uuid.as_str())])
        .await?
        .is_some()
    {
        return Err(Error::operr(format!("tag[uuid:{uuid}] is an inherent system tag, can not be removed")));
    }
    tx.execute("DELETE FROM system_tag WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    tx.execute("DELETE FROM user_tag WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    // A tag pattern: its attachments go with it (upstream: foreign key ON DELETE CASCADE).
    if tx.execute("DELETE FROM tag_pattern WHERE uuid = $1", &[Val::from(uuid.as_str())]).await? > 0 {
        tx.execute("DELETE FROM user_tag WHERE tag_pattern_uuid = $1", &[Val::from(uuid.as_str())]).await?;
        delete_for_resource(&mut tx, &uuid).await?;
        super::disown(&mut tx, &uuid).await?;
    }
    tx.commit().await?;
    Ok(Reply::empty())
}

// ---- tag patterns ----

const SIMPLE: &str = "simple";
const WITH_TOKEN: &str = "withToken";

/// Upstream's colour rule: `#` and six hex digits.
fn check_color(color: Option<&str>) -> Result<()> {
    match color {
        Some(c) if !(c.len() == 7 && c.starts_with('#') && c[1..].chars().all(|x| x.is_ascii_hexdigit())) => {
            Err(Error::argerr(format!("Invalid color specification[{c}], must like #FF00FF")))
        }
        _ => Ok(()),
    }
}

/// A `withToken` pattern value `name::{t1}::{t2}` or `{t1}::{t2}`: its leading name (if any)
/// and its token names. `None` when the value is not such a format.
fn parse_format(value: &str) -> Option<(Option<&str>, Vec<&str>)> {
    let bad = |s: &str| s.is_empty() || s.contains(['{', '}', ':']);
    let mut name = None;
    let mut tokens = Vec::new();
    for (i, seg) in value.split("::").enumerate() {
        match seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
            Some(t) if !bad(t) => tokens.push(t),
            Some(_) => return None,
            None if i == 0 && !bad(seg) => name = Some(seg),
            None => return None,
        }
    }
    (!tokens.is_empty()).then_some((name, tokens))
}

fn bad_format(value: &str) -> Error {
    Error::argerr(format!(
        "Get format[{value}], format must like that name::{{tokenName1}}::{{tokenName2}} ... ::{{tokenNameN}} or \
         {{tokenName1}}::{{tokenName2}} ... ::{{tokenNameN}} Name cannot contain '{{}}:'"
    ))
}

/// A Java list's text: `[a, b]`.
fn java_list<S: AsRef<str>>(items: &[S]) -> String {
    format!("[{}]", items.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", "))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreatePattern {
    name: String,
    value: String,
    description: Option<String>,
    color: Option<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
}

async fn create_tag_pattern(app: App, msg: Msg) -> Result<Reply> {
    let req: CreatePattern = msg.parse()?;
    let ty = req.ty.as_deref().unwrap_or(SIMPLE);
    check_color(req.color.as_deref())?;
    if ty == WITH_TOKEN && parse_format(&req.value).is_none() {
        return Err(bad_format(&req.value));
    }
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &TAG_PATTERN, &uuid, &msg).await? {
        tx.execute(
            "INSERT INTO tag_pattern (uuid, name, value, description, color, type, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name.as_str()),
                Val::from(req.value.as_str()),
                Val::from(req.description),
                Val::from(req.color),
                Val::from(ty),
                Val::I(now),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, TAG_PATTERN.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    super::inventory_reply(&app, &TAG_PATTERN, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdatePattern {
    uuid: String,
    name: Option<String>,
    value: Option<String>,
    description: Option<String>,
    color: Option<String>,
}

async fn update_tag_pattern(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdatePattern = msg.parse()?;
    check_color(req.color.as_deref())?;
    if let Some(v) = &req.value {
        let row = app
            .db
            .fetch_optional("SELECT type, value FROM tag_pattern WHERE uuid = $1", &[Val::from(req.uuid.as_str())])
            .await?
            .ok_or_else(|| not_found_pattern(&req.uuid))?;
        let (ty, old): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        if ty == WITH_TOKEN {
            // Only the token names may change: same leading name, same number of tokens.
            let new = parse_format(v).ok_or_else(|| bad_format(v))?;
            let same_shape = parse_format(&old).is_some_and(|o| o.0 == new.0 && o.1.len() == new.1.len());
            if !same_shape {
                return Err(Error::argerr("you can only update token name"));
            }
        } else if *v != old {
            return Err(Error::argerr("cannot update simple tag pattern format"));
        }
    }
    app.db
        .execute(
            "UPDATE tag_pattern SET name = COALESCE($1, name), value = COALESCE($2, value), \
             description = COALESCE($3, description), color = COALESCE($4, color), last_op_date = $5 WHERE uuid = $6",
            &[
                Val::from(req.name),
                Val::from(req.value),
                Val::from(req.description),
                Val::from(req.color),
                Val::I(now_ms()),
                Val::from(req.uuid.as_str()),
            ],
        )
        .await?;
    super::inventory_reply(&app, &TAG_PATTERN, &req.uuid).await
}

fn not_found_pattern(uuid: &str) -> Error {
    Error::not_found(format!("invalid field[tagUuid], resource[uuid:{uuid}, type:TagPatternVO] not found"))
}

/// The text of the user tag a pattern puts on a resource: a simple pattern's value, or a
/// `withToken` value with every `{token}` replaced by `tokens[token]`.
fn tag_text(ty: &str, value: &str, tokens: &Map<String, Value>) -> Result<String> {
    if ty != WITH_TOKEN {
        if !tokens.is_empty() {
            return Err(Error::argerr("simple tag pattern has no tokens"));
        }
        return Ok(value.to_string());
    }
    let names = parse_format(value).map(|(_, t)| t).unwrap_or_default();
    let token_value = |n: &str| match tokens.get(n) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(x)) => Some(x.to_string()),
        Some(Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    };
    if names.iter().any(|n| token_value(n).is_none()) {
        return Err(Error::argerr(format!("all tokens {} must be specify", java_list(&names))));
    }
    let mut out = value.to_string();
    for n in names {
        out = out.replace(&format!("{{{n}}}"), &token_value(n).unwrap_or_default());
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachPattern {
    tag_uuid: String,
    resource_uuids: Vec<String>,
    #[serde(default)]
    tokens: Option<Map<String, Value>>,
}

/// Put one pattern's user tag on a resource unless it is already there; its uuid.
async fn put_pattern(
    tx: &mut WriteTx,
    pattern_uuid: &str,
    resource_uuid: &str,
    resource_type: &str,
    text: &str,
) -> Result<Option<String>> {
    let vals = [Val::from(pattern_uuid), Val::from(resource_uuid), Val::from(text)];
    tx.execute(
        "INSERT INTO user_tag (uuid, resource_uuid, resource_type, tag, type, tag_pattern_uuid, create_date, \
         last_op_date) SELECT $1, $2, $3, $4, 'User', p.uuid, $5, $5 FROM tag_pattern p WHERE p.uuid = $6 \
         ON CONFLICT DO NOTHING",
        &[
            Val::from(new_uuid()),
            Val::from(resource_uuid),
            Val::from(resource_type),
            Val::from(text),
            Val::I(now_ms()),
            Val::from(pattern_uuid),
        ],
    )
    .await?;
    let row = tx
        .fetch_optional(
            "SELECT uuid FROM user_tag WHERE tag_pattern_uuid = $1 AND resource_uuid = $2 AND tag = $3",
            &vals,
        )
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get(0)?),
        None => None,
    })
}

async fn attach_tag_pattern(app: App, msg: Msg) -> Result<Reply> {
    let req: AttachPattern = msg.parse()?;
    let row = app
        .db
        .fetch_optional("SELECT type, value FROM tag_pattern WHERE uuid = $1", &[Val::from(req.tag_uuid.as_str())])
        .await?
        .ok_or_else(|| not_found_pattern(&req.tag_uuid))?;
    let (ty, value): (String, String) = (row.try_get(0)?, row.try_get(1)?);
    let text = tag_text(&ty, &value, &req.tokens.unwrap_or_default())?;
    // The resources must belong to the pattern's owner (any account's, for the admin).
    let owner = app
        .db
        .fetch_optional(
            "SELECT account_uuid FROM account_resource_ref WHERE resource_uuid = $1",
            &[Val::from(req.tag_uuid.as_str())],
        )
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?
        .unwrap_or_else(|| msg.account_uuid().to_string());
    let admin = msg.account_uuid() == crate::identity::ADMIN_UUID;
    let mut targets = Vec::new();
    let mut invalid = Vec::new();
    for ru in &req.resource_uuids {
        let r = app
            .db
            .fetch_optional(
                "SELECT resource_type, account_uuid FROM account_resource_ref WHERE resource_uuid = $1",
                &[Val::from(ru.as_str())],
            )
            .await?;
        match r {
            Some(r) => {
                let (rt, acc): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                if admin || acc == owner {
                    targets.push((ru.clone(), rt));
                } else {
                    invalid.push(ru.clone());
                }
            }
            None => invalid.push(ru.clone()),
        }
    }
    if !invalid.is_empty() {
        return Err(Error::argerr(format!(
            "resource[uuids:{}] is not owned by account[uuid:{owner}]",
            java_list(&invalid)
        )));
    }
    let mut tx = app.db.begin_write().await?;
    let mut tag_uuids = Vec::new();
    for (ru, rt) in &targets {
        tag_uuids.push(put_pattern(&mut tx, &req.tag_uuid, ru, rt, &text).await?);
    }
    tx.commit().await?;
    let mut results = Vec::new();
    let mut schema = Map::new();
    for (i, tu) in tag_uuids.into_iter().enumerate() {
        // Upstream order: an object's class before its children's.
        schema.insert(format!("results[{i}]"), Value::String("org.zstack.tag2.AttachTagResult".into()));
        let mut r = Map::new();
        r.insert("success".into(), Value::Bool(true));
        if let Some(inv) = match tu {
            Some(u) => query::get(&app.db, &USER_TAG, &u).await?,
            None => None,
        } {
            query::schema_for(&USER_TAG, &format!("results[{i}].inventory"), &inv, &mut schema);
            r.insert("inventory".into(), Value::Object(inv));
        }
        results.push(Value::Object(r));
    }
    let mut body = Map::new();
    body.insert("results".into(), Value::Array(results));
    Ok(Reply { body, schema })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetachPattern {
    tag_uuid: String,
    resource_uuids: Vec<String>,
}

async fn detach_tag_pattern(app: App, msg: Msg) -> Result<Reply> {
    let req: DetachPattern = msg.parse()?;
    let mut tx = app.db.begin_write().await?;
    for ru in &req.resource_uuids {
        tx.execute(
            "DELETE FROM user_tag WHERE tag_pattern_uuid = $1 AND resource_uuid = $2",
            &[Val::from(req.tag_uuid.as_str()), Val::from(ru.as_str())],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Reply::empty())
}

/// The `tagUuids` of a message (upstream `APICreateMessage.tagUuids`).
pub fn tag_uuids_of(msg: &Msg) -> Vec<String> {
    match msg.fields.get("tagUuids") {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

/// Upstream's checks of a create message's `tagUuids`: every one names a tag pattern
/// (`@APIParam(resourceType = TagPatternVO.class)`, SYS.1003), and only simple patterns can be
/// put on a new resource (there is no way to give tokens).
pub async fn check_tag_uuids(app: &App, msg: &Msg) -> Result<()> {
    let uuids = tag_uuids_of(msg);
    let mut missing = Vec::new();
    let mut not_simple = Vec::new();
    for u in &uuids {
        let row =
            app.db.fetch_optional("SELECT type FROM tag_pattern WHERE uuid = $1", &[Val::from(u.as_str())]).await?;
        match row {
            None => missing.push(u.clone()),
            Some(r) if r.try_get::<String, _>(0)? != SIMPLE => not_simple.push(u.clone()),
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Err(Error::not_found(format!(
            "invalid field[tagUuids], resource[uuids:{}, type:{}] not found",
            java_list(&missing),
            TAG_PATTERN.vo
        )));
    }
    if !not_simple.is_empty() {
        return Err(Error::argerr(format!("illegal tag uuids {}, tag type must be simple,", java_list(&not_simple))));
    }
    Ok(())
}

/// Put the `tagUuids` patterns on the resource a create API has just made (the `inventory`
/// of its reply), as upstream's `afterCreateTagFromMsg`. Runs only after a successful
/// creation, so a failed one leaves no attachment; idempotent for a replayed job.
pub async fn attach_to_created(app: &App, reply: &Reply, tag_uuids: &[String]) -> Result<()> {
    if tag_uuids.is_empty() {
        return Ok(());
    }
    let Some(uuid) = reply.body.get("inventory").and_then(|i| i.get("uuid")).and_then(Value::as_str) else {
        return Ok(());
    };
    let ref_type = app
        .db
        .fetch_optional("SELECT resource_type FROM account_resource_ref WHERE resource_uuid = $1", &[Val::from(uuid)])
        .await?
        .map(|r| r.try_get::<String, _>(0))
        .transpose()?;
    // Without an owner record: the VO named after the inventory class.
    let resource_type = match ref_type {
        Some(t) => t,
        None => match reply.schema.get("inventory").and_then(Value::as_str) {
            Some(class) => {
                let simple = class.rsplit('.').next().unwrap_or(class);
                format!("{}VO", simple.strip_suffix("Inventory").unwrap_or(simple))
            }
            None => return Ok(()),
        },
    };
    let mut tx = app.db.begin_write().await?;
    for t in tag_uuids {
        let row = tx.fetch_optional("SELECT value FROM tag_pattern WHERE uuid = $1", &[Val::from(t.as_str())]).await?;
        if let Some(r) = row {
            let value: String = r.try_get(0)?;
            put_pattern(&mut tx, t, uuid, &resource_type, &value).await?;
        }
    }
    tx.commit().await
}

const CREATE_PARAMS: &[Param] =
    &[Param::str("resourceType").required(), Param::str("resourceUuid").required(), Param::str("tag").required()];

pub static APIS: &[ApiDef] = &[
    ApiDef::post("CreateSystemTag", "/system-tags")
        .params(CREATE_PARAMS)
        .handler(|a, m| boxed(create_system_tag(a, m))),
    ApiDef::post("CreateUserTag", "/user-tags").params(CREATE_PARAMS).handler(|a, m| boxed(create_user_tag(a, m))),
    ApiDef::action("UpdateSystemTag", "/system-tags/{uuid}/actions")
        .params(&[Param::str("uuid").required().resource(&SYSTEM_TAG), Param::str("tag").required()])
        .handler(|a, m| boxed(update_system_tag(a, m))),
    ApiDef::delete("DeleteTag", "/tags/{uuid}")
        .params(&[Param::str("uuid").required(), Param::str("deleteMode").values(&["Permissive", "Enforcing"])])
        .handler(|a, m| boxed(delete_tag(a, m))),
    ApiDef::create("CreateTag", "/tags")
        .params(&[
            Param::str("name").required().max(128),
            Param::str("value").required().max(128),
            Param::str("description").max(2048),
            Param::str("color"),
            Param::str("type").values(&[SIMPLE, WITH_TOKEN]),
        ])
        .handler(|a, m| boxed(create_tag_pattern(a, m))),
    ApiDef::action("UpdateTag", "/tags/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&TAG_PATTERN),
            Param::str("name").max(128),
            Param::str("value").max(128),
            Param::str("description").max(2048),
            Param::str("color"),
        ])
        .handler(|a, m| boxed(update_tag_pattern(a, m))),
    ApiDef::query("QueryTag", "/tags", &TAG_PATTERN).optional_paths(&["/tags/{uuid}"]),
    ApiDef::post("AttachTagToResources", "/tags/{tagUuid}/resources")
        .params(&[
            Param::str("tagUuid").required().resource(&TAG_PATTERN),
            Param::list("resourceUuids").required().non_empty(),
            Param::map("tokens"),
        ])
        .handler(|a, m| boxed(attach_tag_pattern(a, m))),
    ApiDef::delete("DetachTagFromResources", "/tags/{tagUuid}/resources")
        .params(&[
            Param::str("tagUuid").required().resource(&TAG_PATTERN),
            Param::list("resourceUuids").required().non_empty(),
        ])
        .handler(|a, m| boxed(detach_tag_pattern(a, m))),
    ApiDef::query("QuerySystemTag", "/system-tags", &SYSTEM_TAG).optional_paths(&["/system-tags/{uuid}"]),
    ApiDef::query("QueryUserTag", "/user-tags", &USER_TAG).optional_paths(&["/user-tags/{uuid}"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_pattern_match() {
        assert!(pattern_matches("hostname::{hostname}", "hostname::vm1"));
        assert!(!pattern_matches("hostname::{hostname}", "hostname::vm1::x"));
        assert!(!pattern_matches("hostname::{hostname}", "hostnames::vm1"));
        assert!(pattern_matches("packer", "packer"));
        assert!(!pattern_matches("packer", "packer2"));
        assert!(is_valid_system_tag("InstanceOfferingVO", "instanceOfferingUserConfig::{}"));
        assert!(!is_valid_system_tag("ZoneVO", "hostname::x"));
    }

    #[test]
    fn pattern_formats_and_tokens() {
        assert_eq!(parse_format("owner::{name}"), Some((Some("owner"), vec!["name"])));
        assert_eq!(parse_format("{a}::{b}"), Some((None, vec!["a", "b"])));
        assert_eq!(parse_format("owner"), None);
        assert_eq!(parse_format("owner::{}"), None);
        assert_eq!(parse_format("a::b::{c}"), None);
        assert_eq!(parse_format("{a:b}"), None);
        let mut t = Map::new();
        t.insert("name".into(), Value::String("alice".into()));
        assert_eq!(tag_text(WITH_TOKEN, "owner::{name}", &t).unwrap(), "owner::alice");
        assert!(tag_text(WITH_TOKEN, "{name}::{x}", &t).is_err());
        assert!(tag_text(SIMPLE, "web", &t).is_err());
        assert!(check_color(Some("#18aE0f")).is_ok());
        assert!(check_color(Some("red")).is_err());
    }
}
