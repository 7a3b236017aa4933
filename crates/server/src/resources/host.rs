//! Hosts (upstream `HostVO` + `HostCapacityVO`).

use crate::api::ApiDef;
use crate::db::{Val, WriteTx};
use crate::error::Result;
use sqlx::Row;

pub static APIS: &[ApiDef] = &[];

/// The cluster deletion cascade: delete every host of `cluster_uuid`, inside `tx`.
pub async fn delete_for_cluster(tx: &mut WriteTx, cluster_uuid: &str) -> Result<()> {
    let rows = tx.fetch_all("SELECT uuid FROM host WHERE cluster_uuid = $1", &[Val::from(cluster_uuid)]).await?;
    for r in rows {
        let uuid: String = r.try_get(0)?;
        tx.execute("DELETE FROM host WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
        super::disown(tx, &uuid).await?;
    }
    Ok(())
}
