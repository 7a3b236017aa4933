//! System and user tags (upstream `SystemTagVO`, `UserTagVO`): create, update (system tags),
//! delete, query; the tags a create API's `systemTags`/`userTags` put on its new resource; and
//! the registry of system-tag patterns each resource type accepts.

use crate::api::{boxed, ApiDef, Body, Kind, Method, Msg, Reply, DEFAULT_API_TIMEOUT_MS};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, FType, ResourceDef};
use crate::util::{new_uuid, now_ms};
use crate::App;
use serde::Deserialize;
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
        if has_tag(tx, "system_tag", resource_uuid, resource_type, t).await? {
            continue;
        }
        insert_system_tag(tx, &new_uuid(), resource_uuid, resource_type, t, false, now).await?;
    }
    for t in user_tags {
        if has_tag(tx, "user_tag", resource_uuid, resource_type, t).await? {
            return Err(duplicated(t, "User", resource_type, resource_uuid));
        }
        insert_user_tag(tx, &new_uuid(), resource_uuid, resource_type, t, now).await?;
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
    if !has_tag(tx, "system_tag", resource_uuid, resource_type, tag).await? {
        insert_system_tag(tx, &new_uuid(), resource_uuid, resource_type, tag, true, now_ms()).await?;
    }
    Ok(())
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

async fn insert_system_tag(
    tx: &mut WriteTx,
    uuid: &str,
    resource_uuid: &str,
    resource_type: &str,
    tag: &str,
    inherent: bool,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO system_tag (uuid, resource_uuid, resource_type, tag, type, inherent, create_date, last_op_date) \
         VALUES ($1, $2, $3, $4, 'System', $5, $6, $6)",
        &[
            Val::from(uuid),
            Val::from(resource_uuid),
            Val::from(resource_type),
            Val::from(tag),
            Val::from(inherent),
            Val::I(now),
        ],
    )
    .await?;
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
        insert_system_tag(&mut tx, &uuid, &req.resource_uuid, &req.resource_type, &req.tag, false, now_ms()).await?;
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
    tx.commit().await?;
    Ok(Reply::empty())
}

const ASYNC: Kind = Kind::Async { timeout_ms: DEFAULT_API_TIMEOUT_MS };
const CREATE_PARAMS: &[Param] =
    &[Param::str("resourceType").required(), Param::str("resourceUuid").required(), Param::str("tag").required()];

pub static APIS: &[ApiDef] = &[
    ApiDef {
        name: "CreateSystemTag",
        method: Method::Post,
        path: "/system-tags",
        optional_paths: &[],
        body: Body::Params,
        kind: ASYNC,
        auth: true,
        create: false,
        params: CREATE_PARAMS,
        tags: &[],
        handler: Some(|a, m| boxed(create_system_tag(a, m))),
    },
    ApiDef {
        name: "CreateUserTag",
        method: Method::Post,
        path: "/user-tags",
        optional_paths: &[],
        body: Body::Params,
        kind: ASYNC,
        auth: true,
        create: false,
        params: CREATE_PARAMS,
        tags: &[],
        handler: Some(|a, m| boxed(create_user_tag(a, m))),
    },
    ApiDef {
        name: "UpdateSystemTag",
        method: Method::Put,
        path: "/system-tags/{uuid}/actions",
        optional_paths: &[],
        body: Body::Action,
        kind: ASYNC,
        auth: true,
        create: false,
        params: &[Param::str("uuid").required().resource(&SYSTEM_TAG), Param::str("tag").required()],
        tags: &[],
        handler: Some(|a, m| boxed(update_system_tag(a, m))),
    },
    ApiDef {
        name: "DeleteTag",
        method: Method::Delete,
        path: "/tags/{uuid}",
        optional_paths: &[],
        body: Body::Query,
        kind: ASYNC,
        auth: true,
        create: false,
        params: &[Param::str("uuid").required(), Param::str("deleteMode").values(&["Permissive", "Enforcing"])],
        tags: &[],
        handler: Some(|a, m| boxed(delete_tag(a, m))),
    },
    ApiDef {
        name: "QuerySystemTag",
        method: Method::Get,
        path: "/system-tags",
        optional_paths: &["/system-tags/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&SYSTEM_TAG),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
    ApiDef {
        name: "QueryUserTag",
        method: Method::Get,
        path: "/user-tags",
        optional_paths: &["/user-tags/{uuid}"],
        body: Body::Query,
        kind: Kind::Query(&USER_TAG),
        auth: true,
        create: false,
        params: &[],
        tags: &[],
        handler: None,
    },
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
}
