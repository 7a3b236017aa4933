//! L2 networks (upstream `L2NetworkVO`, `L2VlanNetworkVO`): create no-VLAN and VLAN networks,
//! update, delete (taking their L3 networks along), query, attach to / detach from clusters.

use crate::api::{boxed, ApiDef, Body, Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{field, FType, Refs, ResourceDef};
use crate::util::now_ms;
use crate::App;
use rzstack_api::codes::Code;
use rzstack_api::ErrorCode;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::Row;

pub const NO_VLAN: &str = "L2NoVlanNetwork";
pub const VLAN: &str = "L2VlanNetwork";

const L2_1000: Code = Code { code: "L2.1000", description: "Unable to attach L2Network to a cluster" };

static CLUSTER_REFS: Refs = Refs { table: "l2_network_cluster_ref", fk: "l2_network_uuid", value: "cluster_uuid" };

fn class_of(row: &Map<String, Value>) -> &'static str {
    if row.get("type").and_then(Value::as_str) == Some(VLAN) {
        "org.zstack.header.network.l2.L2VlanNetworkInventory"
    } else {
        "org.zstack.header.network.l2.L2NetworkInventory"
    }
}

/// All L2 networks; VLAN rows carry `vlan` and are `L2VlanNetworkInventory` in the schema.
pub static L2_NETWORK: ResourceDef = ResourceDef {
    inventory: "L2NetworkInventory",
    vo: "L2NetworkVO",
    class: "org.zstack.header.network.l2.L2NetworkInventory",
    table: "l2_network",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("zoneUuid", "zone_uuid", FType::Str),
        field("physicalInterface", "physical_interface", FType::Str),
        field("type", "type", FType::Str),
        field("vSwitchType", "v_switch_type", FType::Str),
        field("virtualNetworkId", "virtual_network_id", FType::Int),
        field("isolated", "isolated", FType::Bool),
        field("pvlan", "pvlan", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("attachedClusterUuids", "uuid", FType::Refs(&CLUSTER_REFS)),
        field("vlan", "vlan", FType::Int),
    ],
    children: &[],
    class_of: Some(class_of),
    order: "t.create_date, t.uuid",
    tag_type: Some("L2NetworkVO"),
};

/// The VLAN networks only (upstream `APIQueryL2VlanNetworkMsg`). The view holds the rows
/// of `l2_network` whose type is VLAN.
pub static L2_VLAN_NETWORK: ResourceDef = ResourceDef {
    inventory: "L2VlanNetworkInventory",
    vo: "L2VlanNetworkVO",
    class: "org.zstack.header.network.l2.L2VlanNetworkInventory",
    table: "l2_vlan_network",
    fields: L2_NETWORK.fields,
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("L2VlanNetworkVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, &L2_NETWORK, uuid).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateL2 {
    name: String,
    description: Option<String>,
    zone_uuid: String,
    physical_interface: String,
    #[serde(rename = "vSwitchType")]
    v_switch_type: Option<String>,
    isolated: Option<bool>,
    pvlan: Option<String>,
    vlan: Option<i64>,
}

async fn create(app: App, msg: Msg, ty: &'static str) -> Result<Reply> {
    let req: CreateL2 = msg.parse()?;
    let vswitch = req.v_switch_type.clone().unwrap_or_else(|| "LinuxBridge".into());
    // Only the Linux bridge is a registered vSwitch type in the open-source tree.
    if vswitch != "LinuxBridge" {
        return Err(Error::argerr(format!("unsupported vSwitch type[{vswitch}]")));
    }
    let vlan = if ty == VLAN {
        match req.vlan {
            Some(v) => Some(v),
            None => {
                return Err(Error::argerr(format!(
                    "field[vlan] of message[{}] is mandatory, can not be null",
                    crate::params::VALIDATOR_CLASS
                )))
            }
        }
    } else {
        None
    };
    let uuid = msg.resource_uuid();
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &L2_NETWORK, &uuid, &msg).await? {
        tx.execute(
            "INSERT INTO l2_network (uuid, name, description, zone_uuid, physical_interface, type, v_switch_type, \
             virtual_network_id, isolated, pvlan, vlan, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.zone_uuid),
                Val::from(req.physical_interface),
                Val::from(ty),
                Val::from(vswitch),
                Val::I(vlan.unwrap_or(0)),
                Val::from(req.isolated.unwrap_or(false)),
                Val::from(req.pvlan),
                Val::from(vlan),
                Val::I(now),
            ],
        )
        .await?;
        // Every new L2 network is served by the built-in flat provider (upstream
        // FlatProviderFactory.afterCreateL2Network).
        tx.execute(
            "INSERT INTO network_service_provider_l2_ref (network_service_provider_uuid, l2_network_uuid) \
             SELECT uuid, $1 FROM network_service_provider WHERE type = 'Flat'",
            &[Val::from(uuid.as_str())],
        )
        .await?;
        super::own(&mut tx, &uuid, L2_NETWORK.vo, msg.account_uuid()).await?;
        super::tag::attach_create_tags(&mut tx, &uuid, L2_NETWORK.vo, &msg.system_tags(), &msg.user_tags()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

async fn update(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &L2_NETWORK, true).await?;
    reply(&app, &uuid).await
}

/// Delete one L2 network with its L3 networks and attachments, inside `tx`.
pub async fn delete_one(tx: &mut WriteTx, uuid: &str) -> Result<()> {
    let l3s = tx.fetch_all("SELECT uuid FROM l3_network WHERE l2_network_uuid = $1", &[Val::from(uuid)]).await?;
    for r in l3s {
        let l3: String = r.try_get(0)?;
        super::l3::delete_one(tx, &l3).await?;
    }
    tx.execute("DELETE FROM l2_network_cluster_ref WHERE l2_network_uuid = $1", &[Val::from(uuid)]).await?;
    tx.execute("DELETE FROM network_service_provider_l2_ref WHERE l2_network_uuid = $1", &[Val::from(uuid)]).await?;
    tx.execute("DELETE FROM l2_network WHERE uuid = $1", &[Val::from(uuid)]).await?;
    super::tag::delete_for_resource(tx, uuid).await?;
    super::disown(tx, uuid).await?;
    Ok(())
}

/// The zone deletion cascade: delete every L2 network of `zone_uuid` (and their L3s).
pub async fn delete_for_zone(tx: &mut WriteTx, zone_uuid: &str) -> Result<()> {
    let rows = tx.fetch_all("SELECT uuid FROM l2_network WHERE zone_uuid = $1", &[Val::from(zone_uuid)]).await?;
    for r in rows {
        let uuid: String = r.try_get(0)?;
        delete_one(tx, &uuid).await?;
    }
    Ok(())
}

/// The cluster deletion cascade: the cluster's L2 attachments go.
pub async fn detach_cluster(tx: &mut WriteTx, cluster_uuid: &str) -> Result<()> {
    tx.execute("DELETE FROM l2_network_cluster_ref WHERE cluster_uuid = $1", &[Val::from(cluster_uuid)]).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClusterL2 {
    l2_network_uuid: String,
    cluster_uuid: String,
}

fn attach_failed(cause: Error) -> Error {
    let cause = cause.to_error_code();
    let text = serde_json::to_string(&cause).unwrap_or_default();
    Error::Api(ErrorCode::new(L2_1000, format!("attach l2 network failed:{text}")).with_cause(cause))
}

async fn attach(app: App, msg: Msg) -> Result<Reply> {
    let req: ClusterL2 = msg.parse()?;
    let (l2, c) = (req.l2_network_uuid.as_str(), req.cluster_uuid.as_str());
    let mut tx = app.db.begin_write().await?;
    let attached = tx
        .fetch_optional(
            "SELECT 1 FROM l2_network_cluster_ref WHERE l2_network_uuid = $1 AND cluster_uuid = $2",
            &[Val::from(l2), Val::from(c)],
        )
        .await?
        .is_some();
    if attached {
        return Err(Error::operr(format!(
            "l2Network[uuid:{l2}] has attached to cluster[uuid:{c}], can't attach again"
        )));
    }
    let row = tx
        .fetch_optional(
            "SELECT physical_interface, v_switch_type, type, vlan FROM l2_network WHERE uuid = $1",
            &[Val::from(l2)],
        )
        .await?
        .ok_or_else(|| {
            Error::not_found(format!("invalid field[l2NetworkUuid], resource[uuid:{l2}, type:L2NetworkVO] not found"))
        })?;
    let nic: String = row.try_get(0)?;
    let vswitch: String = row.try_get(1)?;
    let ty: String = row.try_get(2)?;
    let vlan: Option<i64> = row.try_get(3)?;
    // Another L2 on the same interface with a different vSwitch type already on the cluster.
    let other = tx
        .fetch_optional(
            "SELECT l.uuid FROM l2_network l WHERE l.physical_interface = $1 AND l.v_switch_type != $2 \
             AND l.uuid IN (SELECT r.l2_network_uuid FROM l2_network_cluster_ref r WHERE r.cluster_uuid = $3) \
             ORDER BY l.create_date, l.uuid",
            &[Val::from(nic.as_str()), Val::from(vswitch.as_str()), Val::from(c)],
        )
        .await?;
    if let Some(o) = other {
        let o: String = o.try_get(0)?;
        return Err(Error::argerr(format!(
            "could not attach l2 network, because there is another network [uuid:{o}] on physical interface [{nic}] with different vswitch type"
        )));
    }
    // The attach itself (upstream L2NoVlanNetwork.attachL2NetworkToCluster): one no-VLAN
    // network per interface per cluster; one VLAN network per interface and VLAN id.
    let clash = if ty == NO_VLAN {
        tx.fetch_optional(
            "SELECT l.uuid, l.name, l.physical_interface, l.vlan FROM l2_network l \
             JOIN l2_network_cluster_ref r ON r.l2_network_uuid = l.uuid \
             WHERE r.cluster_uuid = $1 AND l.type = $2 AND l.physical_interface = $3 ORDER BY l.create_date, l.uuid",
            &[Val::from(c), Val::from(NO_VLAN), Val::from(nic.as_str())],
        )
        .await?
    } else {
        tx.fetch_optional(
            "SELECT l.uuid, l.name, l.physical_interface, l.vlan FROM l2_network l \
             JOIN l2_network_cluster_ref r ON r.l2_network_uuid = l.uuid \
             WHERE r.cluster_uuid = $1 AND l.type = $2 AND l.physical_interface = $3 AND l.vlan = $4 \
             ORDER BY l.create_date, l.uuid",
            &[Val::from(c), Val::from(VLAN), Val::from(nic.as_str()), Val::from(vlan)],
        )
        .await?
    };
    if let Some(r) = clash {
        let ou: String = r.try_get(0)?;
        let on: String = r.try_get(1)?;
        let onic: String = r.try_get(2)?;
        let text = if ty == NO_VLAN {
            format!(
                "There has been a l2Network[uuid:{ou}, name:{on}] attached to cluster[uuid:{c}] that has physical interface[{onic}]. Failed to attach l2Network[uuid:{l2}]"
            )
        } else {
            let ov: Option<i64> = r.try_get(3)?;
            format!(
                "There has been a L2VlanNetwork[uuid:{ou}, name:{on}] attached to cluster[uuid:{c}] that has physical interface[{onic}], vlan[{}]. Failed to attach L2VlanNetwork[uuid:{l2}]",
                ov.unwrap_or_default()
            )
        };
        return Err(attach_failed(Error::argerr(text)));
    }
    tx.execute(
        "INSERT INTO l2_network_cluster_ref (l2_network_uuid, cluster_uuid, create_date, last_op_date) \
         VALUES ($1, $2, $3, $3)",
        &[Val::from(l2), Val::from(c), Val::I(now_ms())],
    )
    .await?;
    tx.commit().await?;
    reply(&app, l2).await
}

async fn detach(app: App, msg: Msg) -> Result<Reply> {
    let req: ClusterL2 = msg.parse()?;
    let (l2, c) = (req.l2_network_uuid.as_str(), req.cluster_uuid.as_str());
    let not_attached = Error::operr(format!("l2Network[uuid:{l2}] has not attached to cluster[uuid:{c}]"));
    super::detach_ref(&app, &L2_NETWORK, &CLUSTER_REFS, l2, c, Some(not_attached)).await
}

const V_SWITCH_TYPES: &[&str] = &["LinuxBridge", "OvsDpdk", "MacVlan"];

const CREATE_COMMON: [Param; 8] = [
    Param::str("name").required().max(255),
    Param::str("description").max(2048),
    Param::str("zoneUuid").required().resource(&super::zone::ZONE),
    Param::str("physicalInterface").required().max(1024),
    Param::str("type"),
    Param::str("vSwitchType").max(1024).values(V_SWITCH_TYPES),
    Param::bool("isolated"),
    Param::str("pvlan").no_empty_string(),
];

const CREATE_VLAN: [Param; 9] = [
    CREATE_COMMON[0],
    CREATE_COMMON[1],
    CREATE_COMMON[2],
    CREATE_COMMON[3],
    CREATE_COMMON[4],
    CREATE_COMMON[5],
    CREATE_COMMON[6],
    CREATE_COMMON[7],
    Param::int("vlan").required().range(1, 4094),
];

const L2_TAGS: &[&str] = &["kvm::bridge::{name}"];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("CreateL2NoVlanNetwork", "/l2-networks/no-vlan")
        .params(&CREATE_COMMON)
        .tags(L2_TAGS)
        .handler(|a, m| boxed(create(a, m, NO_VLAN))),
    ApiDef::create("CreateL2VlanNetwork", "/l2-networks/vlan")
        .params(&CREATE_VLAN)
        .tags(L2_TAGS)
        .handler(|a, m| boxed(create(a, m, VLAN))),
    ApiDef::query("QueryL2Network", "/l2-networks", &L2_NETWORK).optional_paths(&["/l2-networks/{uuid}"]),
    ApiDef::query("QueryL2VlanNetwork", "/l2-networks/vlan", &L2_VLAN_NETWORK)
        .optional_paths(&["/l2-networks/vlan/{uuid}"]),
    ApiDef::action("UpdateL2Network", "/l2-networks/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&L2_NETWORK),
            Param::str("name").max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update(a, m))),
    ApiDef::delete("DeleteL2Network", "/l2-networks/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&L2_NETWORK).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(super::delete_in_tx(a, m, |tx, uuid| Box::pin(delete_one(tx, uuid))))),
    ApiDef::post("AttachL2NetworkToCluster", "/l2-networks/{l2NetworkUuid}/clusters/{clusterUuid}")
        .body(Body::Key("null"))
        .params(&[
            Param::str("l2NetworkUuid").required().resource(&L2_NETWORK),
            Param::str("clusterUuid").required().resource(&super::cluster::CLUSTER),
            Param::str("l2ProviderType").values(&["LinuxBridge"]),
        ])
        .handler(|a, m| boxed(attach(a, m))),
    ApiDef::delete("DetachL2NetworkFromCluster", "/l2-networks/{l2NetworkUuid}/clusters/{clusterUuid}")
        .params(&[
            Param::str("l2NetworkUuid").required().resource(&L2_NETWORK),
            Param::str("clusterUuid").required().resource(&super::cluster::CLUSTER),
        ])
        .handler(|a, m| boxed(detach(a, m))),
];
