//! Zones (upstream `ZoneVO`): create, update, change state, delete, query.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::Val;
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;

pub static ZONE: ResourceDef = ResourceDef {
    inventory: "ZoneInventory",
    vo: "ZoneVO",
    class: "org.zstack.header.zone.ZoneInventory",
    table: "zone",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("state", "state", FType::Str),
        field("type", "type", FType::Str),
        field("isDefault", "is_default", FType::Bool),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("ZoneVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, &ZONE, uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateZone {
    name: String,
    description: Option<String>,
    #[serde(default)]
    is_default: bool,
}

async fn create_zone(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateZone = msg.parse()?;
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &ZONE, &uuid, &msg).await? {
        if req.is_default {
            tx.execute("UPDATE zone SET is_default = 0, last_op_date = $1 WHERE is_default = 1", &[Val::I(now)])
                .await?;
        }
        tx.execute(
            "INSERT INTO zone (uuid, name, description, state, type, is_default, create_date, last_op_date) \
             VALUES ($1, $2, $3, 'Enabled', 'zstack', $4, $5, $5)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.is_default),
                Val::I(now),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, ZONE.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateZone {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
    is_default: Option<bool>,
}

async fn update_zone(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateZone = msg.parse()?;
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if req.is_default == Some(true) {
        tx.execute(
            "UPDATE zone SET is_default = 0, last_op_date = $1 WHERE is_default = 1 AND uuid != $2",
            &[Val::I(now), Val::from(req.uuid.as_str())],
        )
        .await?;
    }
    tx.execute(
        "UPDATE zone SET name = COALESCE($1, name), description = COALESCE($2, description), \
         is_default = COALESCE($3, is_default), last_op_date = $4 WHERE uuid = $5",
        &[
            Val::from(req.name),
            Val::from(req.description),
            Val::from(req.is_default),
            Val::I(now),
            Val::from(req.uuid.as_str()),
        ],
    )
    .await?;
    tx.commit().await?;
    reply(&app, &req.uuid).await
}

async fn delete_zone(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    // what the KVM hosts' agents must end once the rows are gone (their guests, taps, files)
    let cleanups = super::host::HostCleanups::for_zone(&mut tx, &uuid).await?;
    delete_children(&mut tx, &uuid).await?;
    tx.execute("DELETE FROM zone WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    super::disown(&mut tx, &uuid).await?;
    tx.commit().await?;
    cleanups.run(&app).await;
    Ok(Reply::empty())
}

/// The zone deletion cascade, as upstream: clusters (with their hosts and attachments), L2
/// networks (with their L3s), the zone's primary storage, and the zone's backup-storage
/// attachments (backup storage itself is not zone-scoped). Primary storage that still holds
/// volumes stops the deletion.
async fn delete_children(tx: &mut crate::db::WriteTx, uuid: &str) -> Result<()> {
    super::cluster::delete_for_zone(tx, uuid).await?;
    super::l2::delete_for_zone(tx, uuid).await?;
    let busy = tx
        .fetch_optional(
            "SELECT p.uuid FROM primary_storage p WHERE p.zone_uuid = $1 AND EXISTS \
             (SELECT 1 FROM volume v WHERE v.primary_storage_uuid = p.uuid AND v.status != 'Deleted')",
            &[Val::from(uuid)],
        )
        .await?;
    if let Some(row) = busy {
        let ps: String = sqlx::Row::try_get(&row, 0)?;
        return Err(Error::code(
            rzstack_api::codes::SYS_1004,
            format!("cannot delete zone[uuid:{uuid}]: its primary storage[uuid:{ps}] still has volumes"),
        ));
    }
    let ps = tx.fetch_all("SELECT uuid FROM primary_storage WHERE zone_uuid = $1", &[Val::from(uuid)]).await?;
    for row in ps {
        let p: String = sqlx::Row::try_get(&row, 0)?;
        super::disown(tx, &p).await?;
    }
    tx.execute("DELETE FROM primary_storage WHERE zone_uuid = $1", &[Val::from(uuid)]).await?;
    tx.execute("DELETE FROM backup_storage_zone_ref WHERE zone_uuid = $1", &[Val::from(uuid)]).await?;
    Ok(())
}

/// Upstream's zone name rule: letters, digits, CJK and `-_.():+"` and inner spaces; no
/// leading or trailing space (upstream writes it with look-arounds).
const NAME_REGEX: &str = r#"(?:[\x{4e00}-\x{9fa5}a-zA-Z0-9\-_.():+"](?:[\x{4e00}-\x{9fa5}a-zA-Z0-9\-_.():+" ]*[\x{4e00}-\x{9fa5}a-zA-Z0-9\-_.():+"])?)?"#;
const NAME_REGEX_SHOWN: &str = r#"^(?! )[\u4e00-\u9fa5a-zA-Z0-9\-_.():+" ]*(?<! )$"#;

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateZone", "/zones")
        .params(&[
            Param::str("name").required().max(255).regex_as(NAME_REGEX, NAME_REGEX_SHOWN),
            Param::str("description").max(2048),
            Param::bool("isDefault"),
        ])
        .handler(|a, m| boxed(create_zone(a, m))),
    ApiDef::query("QueryZone", "/zones", &ZONE).optional_paths(&["/zones/{uuid}"]),
    ApiDef::action("UpdateZone", "/zones/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&ZONE),
            Param::str("name").max(255).regex_as(NAME_REGEX, NAME_REGEX_SHOWN),
            Param::str("description").max(2048),
            Param::bool("isDefault"),
        ])
        .handler(|a, m| boxed(update_zone(a, m))),
    ApiDef::action("ChangeZoneState", "/zones/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&ZONE),
            Param::str("stateEvent").required().values(&["enable", "disable"]),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &ZONE, super::enable_disable))),
    ApiDef::delete("DeleteZone", "/zones/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&ZONE).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete_zone(a, m))),
];
