//! Management-node APIs: version, readiness, the node list; and this node's heart beat.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::Val;
use crate::error::Result;
use crate::query::{field, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde_json::Value;

/// The upstream version rzstack's API is compatible with.
pub const COMPATIBLE_VERSION: &str = "5.2.1";

pub static MANAGEMENT_NODE: ResourceDef = ResourceDef {
    inventory: "ManagementNodeInventory",
    vo: "ManagementNodeVO",
    class: "org.zstack.header.managementnode.ManagementNodeInventory",
    table: "management_node",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("hostName", "host_name", FType::Str),
        field("joinDate", "join_date", FType::Date),
        field("heartBeat", "heart_beat", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.join_date, t.uuid",
    tag_type: None,
};

/// Register (or refresh) this node's row.
pub async fn join(app: &App) -> Result<()> {
    let now = now_ms();
    let host = app.config.listen.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default();
    let port: i64 = app.config.listen.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(8080);
    app.db
        .execute(
            "INSERT INTO management_node (uuid, host_name, port, state, join_date, heart_beat) VALUES ($1, $2, $3, 'RUNNING', $4, $4) \
             ON CONFLICT (uuid) DO UPDATE SET host_name = excluded.host_name, port = excluded.port, state = 'RUNNING', \
             join_date = excluded.join_date, heart_beat = excluded.heart_beat",
            &[Val::from(app.mn_uuid.as_str()), Val::S(host), Val::I(port), Val::I(now)],
        )
        .await?;
    Ok(())
}

pub async fn heart_beat(app: &App) -> Result<()> {
    app.db
        .execute(
            "UPDATE management_node SET heart_beat = $1 WHERE uuid = $2",
            &[Val::I(now_ms()), Val::from(app.mn_uuid.as_str())],
        )
        .await?;
    Ok(())
}

/// Remove this node's row at a clean shutdown.
pub async fn leave(app: &App) -> Result<()> {
    app.db.execute("DELETE FROM management_node WHERE uuid = $1", &[Val::from(app.mn_uuid.as_str())]).await?;
    Ok(())
}

async fn get_version(_app: App, _msg: Msg) -> Result<Reply> {
    // Upstream maps every field of the reply (`fieldsTo = {"all"}`), `success` included.
    Ok(Reply::fields([("success", Value::Bool(true)), ("version", Value::from(COMPATIBLE_VERSION))]))
}

/// Ready once the node serves requests at all; upstream maps no reply field, so the body is `{}`.
async fn is_ready_to_go(_app: App, _msg: Msg) -> Result<Reply> {
    Ok(Reply::empty())
}

pub static APIS: &[ApiDef] = &[
    ApiDef::action("GetVersion", "/management-nodes/actions").sync().no_auth().handler(|a, m| boxed(get_version(a, m))),
    ApiDef::get("IsReadyToGo", "/management-nodes/ready")
        .no_auth()
        .params(&[crate::params::Param::str("managementNodeId")])
        .handler(|a, m| boxed(is_ready_to_go(a, m))),
    ApiDef::query("QueryManagementNode", "/management-nodes", &MANAGEMENT_NODE),
];
