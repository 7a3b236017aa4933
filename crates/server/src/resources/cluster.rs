//! Clusters (upstream `ClusterVO`): create, update, change state, delete, query; and the
//! deletion cascade from zones (a cluster takes its hosts with it).

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{self, field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;
use sqlx::Row;

pub static CLUSTER: ResourceDef = ResourceDef {
    inventory: "ClusterInventory",
    vo: "ClusterVO",
    class: "org.zstack.header.cluster.ClusterInventory",
    table: "cluster",
    fields: &[
        field("name", "name", FType::Str),
        field("uuid", "uuid", FType::Str),
        field("description", "description", FType::Str),
        field("state", "state", FType::Str),
        field("hypervisorType", "hypervisor_type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("zoneUuid", "zone_uuid", FType::Str),
        field("type", "type", FType::Str),
        field("architecture", "architecture", FType::Str),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("ClusterVO"),
};

/// Hypervisor types rzstack can run hosts of.
pub const HYPERVISOR_TYPES: &[&str] = &["KVM", "Simulator"];

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, &CLUSTER, uuid).await? {
        Some(inv) => Ok(Reply::inventory(&CLUSTER, inv)),
        None => Err(Error::not_found(format!("Cannot find cluster: {uuid}, it may have been deleted"))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateCluster {
    zone_uuid: String,
    name: String,
    description: Option<String>,
    hypervisor_type: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    architecture: Option<String>,
}

/// The canonical spelling of a value the validator accepted case-insensitively.
fn canonical(valid: &[&'static str], v: &str) -> String {
    valid.iter().find(|x| x.eq_ignore_ascii_case(v)).map(|x| x.to_string()).unwrap_or_else(|| v.to_string())
}

async fn create_cluster(app: App, msg: Msg) -> Result<Reply> {
    let req: CreateCluster = msg.parse()?;
    let hypervisor = canonical(HYPERVISOR_TYPES, &req.hypervisor_type);
    let kind = req.kind.map(|k| canonical(CLUSTER_TYPES, &k)).unwrap_or_else(|| "zstack".to_string());
    if (kind == "baremetal") != (hypervisor == "baremetal") {
        return Err(Error::argerr(
            "if cluster type is baremetal, then hypervisorType must be baremetal too, or vice versa",
        ));
    }
    let arch = req.architecture.map(|a| canonical(ARCHITECTURES, &a));
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &CLUSTER, &uuid, &msg).await? {
        tx.execute(
            "INSERT INTO cluster (uuid, zone_uuid, name, description, state, hypervisor_type, type, architecture, \
             create_date, last_op_date) VALUES ($1, $2, $3, $4, 'Enabled', $5, $6, $7, $8, $8)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.zone_uuid),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(hypervisor),
                Val::from(kind),
                Val::from(arch),
                Val::I(now),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, CLUSTER.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

async fn update_cluster(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &CLUSTER, false).await?;
    reply(&app, &uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangeClusterState {
    uuid: String,
    state_event: String,
}

/// Enable/disable a cluster. As upstream, the event is passed on to the cluster's hosts,
/// except hosts in (pre)maintenance.
async fn change_cluster_state(app: App, msg: Msg) -> Result<Reply> {
    let req: ChangeClusterState = msg.parse()?;
    let state = if req.state_event.eq_ignore_ascii_case("enable") { "Enabled" } else { "Disabled" };
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    tx.execute(
        "UPDATE cluster SET state = $1, last_op_date = $2 WHERE uuid = $3",
        &[Val::from(state), Val::I(now), Val::from(req.uuid.as_str())],
    )
    .await?;
    tx.execute(
        "UPDATE host SET state = $1, last_op_date = $2 WHERE cluster_uuid = $3 \
         AND state IN ('Enabled', 'Disabled') AND state != $1",
        &[Val::from(state), Val::I(now), Val::from(req.uuid.as_str())],
    )
    .await?;
    tx.commit().await?;
    reply(&app, &req.uuid).await
}

/// DeleteCluster: the rows in one transaction, then the KVM hosts' agents end what the
/// deletion of their hosts leaves running (see [`super::host::HostCleanups`]).
async fn delete_cluster(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    let cleanups = super::host::HostCleanups::for_cluster(&mut tx, &uuid).await?;
    delete_one(&mut tx, &uuid).await?;
    tx.commit().await?;
    cleanups.run(&app).await;
    Ok(Reply::empty())
}

/// Delete one cluster and everything that hangs off it, inside `tx`.
async fn delete_one(tx: &mut WriteTx, uuid: &str) -> Result<()> {
    super::host::delete_for_cluster(tx, uuid).await?;
    super::l2::detach_cluster(tx, uuid).await?;
    // Primary storage stays; its attachment to the cluster goes (upstream detaches it).
    tx.execute("DELETE FROM primary_storage_cluster_ref WHERE cluster_uuid = $1", &[Val::from(uuid)]).await?;
    tx.execute("DELETE FROM cluster WHERE uuid = $1", &[Val::from(uuid)]).await?;
    super::disown(tx, uuid).await?;
    Ok(())
}

/// The zone deletion cascade: delete every cluster of `zone_uuid` (and their hosts).
pub async fn delete_for_zone(tx: &mut WriteTx, zone_uuid: &str) -> Result<()> {
    let rows = tx.fetch_all("SELECT uuid FROM cluster WHERE zone_uuid = $1", &[Val::from(zone_uuid)]).await?;
    for r in rows {
        let uuid: String = r.try_get(0)?;
        delete_one(tx, &uuid).await?;
    }
    Ok(())
}

const CLUSTER_TYPES: &[&str] = &["zstack", "baremetal", "baremetal2"];
const ARCHITECTURES: &[&str] = &["x86_64", "aarch64", "mips64el", "loongarch64"];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateCluster", "/clusters")
        .params(&[
            Param::str("zoneUuid").required().resource(&super::zone::ZONE),
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("hypervisorType").required().values(HYPERVISOR_TYPES),
            Param::str("type").values(CLUSTER_TYPES),
            Param::str("architecture").values(ARCHITECTURES),
        ])
        .handler(|a, m| boxed(create_cluster(a, m))),
    ApiDef::query("QueryCluster", "/clusters", &CLUSTER).optional_paths(&["/clusters/{uuid}"]),
    ApiDef::action("UpdateCluster", "/clusters/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&CLUSTER),
            Param::str("name").max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update_cluster(a, m))),
    ApiDef::action("ChangeClusterState", "/clusters/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&CLUSTER),
            Param::str("stateEvent").required().values(&["enable", "disable"]),
        ])
        .handler(|a, m| boxed(change_cluster_state(a, m))),
    ApiDef::delete("DeleteCluster", "/clusters/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&CLUSTER).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete_cluster(a, m))),
];
