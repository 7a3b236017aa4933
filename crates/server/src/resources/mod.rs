//! Resource services. Each module holds one resource's `ResourceDef`, its API table and its
//! business rules.

pub mod backup_storage;
pub mod cluster;
pub mod global_config;
pub mod host;
pub mod image;
pub mod l2;
pub mod l3;
pub mod offering;
pub mod primary_storage;
pub mod ssh_key;
pub mod tag;
pub mod vm;
pub mod volume;
pub mod volume_ops;
pub mod zone;

use crate::api::{Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::query::{self, Refs, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;

/// Record the owner account of a new resource (upstream `AccountResourceRefVO`), in the
/// transaction that creates it.
pub async fn own(tx: &mut WriteTx, resource_uuid: &str, resource_type: &str, account_uuid: &str) -> Result<()> {
    tx.execute(
        "INSERT INTO account_resource_ref (resource_uuid, resource_type, account_uuid, create_date) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (resource_uuid) DO NOTHING",
        &[Val::from(resource_uuid), Val::from(resource_type), Val::from(account_uuid), Val::I(now_ms())],
    )
    .await?;
    Ok(())
}

/// Whether a create API must still insert its resource `uuid` into `def`'s table.
/// `Ok(false)`: the row exists because this job already ran before a restart (a replay), so the
/// handler just answers with it. A row that exists otherwise means the caller reused a
/// `resourceUuid`: refused.
pub async fn is_new(tx: &mut WriteTx, def: &ResourceDef, uuid: &str, msg: &Msg) -> Result<bool> {
    let sql = format!("SELECT 1 FROM {} WHERE uuid = $1", def.table);
    if tx.fetch_optional(&sql, &[Val::from(uuid)]).await?.is_none() {
        return Ok(true);
    }
    if msg.replay {
        return Ok(false);
    }
    Err(Error::argerr(format!("resourceUuid[{uuid}] is already used by another resource[type:{}]", def.vo)))
}

/// Forget the owner of a deleted resource, in the deleting transaction.
pub async fn disown(tx: &mut WriteTx, resource_uuid: &str) -> Result<()> {
    tx.execute("DELETE FROM account_resource_ref WHERE resource_uuid = $1", &[Val::from(resource_uuid)]).await?;
    Ok(())
}

/// Answer with the current inventory of `uuid` (`{"inventory": ...}` with its schema).
pub async fn inventory_reply(app: &App, def: &'static ResourceDef, uuid: &str) -> Result<Reply> {
    match query::get(&app.db, def, uuid).await? {
        Some(inv) => Ok(Reply::inventory(def, inv)),
        None => Err(Error::not_found(format!(
            "unable to find {}[uuid:{uuid}], it may have been deleted",
            def.vo.trim_end_matches("VO")
        ))),
    }
}

/// The body of every `changeXxxState` action.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeState {
    pub uuid: String,
    pub state_event: String,
}

/// `stateEvent` enable / disable → state Enabled / Disabled (the values are validated before).
pub fn enable_disable(event: &str) -> &'static str {
    if event.eq_ignore_ascii_case("enable") {
        "Enabled"
    } else {
        "Disabled"
    }
}

/// The common ChangeXxxState API: the state `state_of(stateEvent)` written to `def`'s row, and
/// the inventory as the answer. Resources whose state change cascades have their own handler.
pub async fn change_state(
    app: App,
    msg: Msg,
    def: &'static ResourceDef,
    state_of: fn(&str) -> &'static str,
) -> Result<Reply> {
    let req: ChangeState = msg.parse()?;
    let sql = format!("UPDATE {} SET state = $1, last_op_date = $2 WHERE uuid = $3", def.table);
    app.db
        .execute(&sql, &[Val::from(state_of(&req.state_event)), Val::I(now_ms()), Val::from(req.uuid.as_str())])
        .await?;
    inventory_reply(&app, def, &req.uuid).await
}

/// Add the link `uuid` ↔ `other` (with its `create_date`) to the reference table `refs`
/// unless it exists; the table's primary key guards it, so concurrent attaches add one row.
/// Whether it was added.
pub async fn link(tx: &mut WriteTx, refs: &Refs, uuid: &str, other: &str) -> Result<bool> {
    let sql = format!(
        "INSERT INTO {t} ({f}, {v}, create_date) VALUES ($1, $2, $3) ON CONFLICT ({f}, {v}) DO NOTHING",
        t = refs.table,
        f = refs.fk,
        v = refs.value
    );
    Ok(tx.execute(&sql, &[Val::from(uuid), Val::from(other), Val::I(now_ms())]).await? > 0)
}

/// The common Attach API of a reference table (backup storage ↔ zone): the link `uuid` ↔
/// `other` is added and the answer is `uuid`'s inventory; `attached` is the error when they
/// were linked already.
pub async fn attach_ref(
    app: &App,
    def: &'static ResourceDef,
    refs: &Refs,
    uuid: &str,
    other: &str,
    attached: Error,
) -> Result<Reply> {
    let mut tx = app.db.begin_write().await?;
    if !link(&mut tx, refs, uuid, other).await? {
        return Err(attached);
    }
    tx.commit().await?;
    inventory_reply(app, def, uuid).await
}

/// The common Detach API of a reference table (primary storage ↔ cluster, backup storage ↔
/// zone, L2 network ↔ cluster): the link `uuid` ↔ `other` goes and the answer is `uuid`'s
/// inventory; `not_attached` is the error when there was no link (`None`: answer all the same).
pub async fn detach_ref(
    app: &App,
    def: &'static ResourceDef,
    refs: &Refs,
    uuid: &str,
    other: &str,
    not_attached: Option<Error>,
) -> Result<Reply> {
    let sql = format!("DELETE FROM {} WHERE {} = $1 AND {} = $2", refs.table, refs.fk, refs.value);
    let n = app.db.execute(&sql, &[Val::from(uuid), Val::from(other)]).await?;
    match not_attached {
        Some(e) if n == 0 => Err(e),
        _ => inventory_reply(app, def, uuid).await,
    }
}

/// A step run inside a write transaction on one resource (boxed, so that it can be passed as a `fn`).
pub type TxStep = for<'a> fn(&'a mut WriteTx, &'a str) -> Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// The common Delete API of a resource whose deletion cascades: `delete_one(tx, uuid)` in one
/// write transaction; an empty answer.
pub async fn delete_in_tx(app: App, msg: Msg, delete_one: TxStep) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    delete_one(&mut tx, &uuid).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

/// The request of an UpdateXxx API that changes only a name and a description.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateNameDescription {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
}

/// The common UpdateXxx API of a resource with only a name and a description to change:
/// both written to `def`'s row (unset ones kept) with lastOpDate; the resource's uuid back,
/// for the caller's answer. With `skip_empty`, a request that sets neither writes nothing
/// (lastOpDate stays).
pub async fn update_name_description(app: &App, msg: &Msg, def: &ResourceDef, skip_empty: bool) -> Result<String> {
    let req: UpdateNameDescription = msg.parse()?;
    if !skip_empty || req.name.is_some() || req.description.is_some() {
        let sql = format!(
            "UPDATE {} SET name = COALESCE($1, name), description = COALESCE($2, description), last_op_date = $3 \
             WHERE uuid = $4",
            def.table
        );
        app.db
            .execute(
                &sql,
                &[Val::from(req.name), Val::from(req.description), Val::I(now_ms()), Val::from(req.uuid.as_str())],
            )
            .await?;
    }
    Ok(req.uuid)
}
