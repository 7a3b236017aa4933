//! A VM's console password and boot order (upstream `VmSystemTags.CONSOLE_PASSWORD` /
//! `BOOT_ORDER` and their APIs in VmInstanceBase): SetVmConsolePassword,
//! DeleteVmConsolePassword, GetVmConsolePassword, SetVmBootOrder, GetVmBootOrder.
//!
//! Both live in the VM's system tags (`consolePassword::<password>`, `bootOrder::<a,b>`), which
//! CreateVmInstance accepts too. A KVM VM's start command carries them (kvm.rs
//! `console_and_boot`): QEMU's VNC display asks for the password, the disks and CD-ROM boot in
//! that order. As upstream (whose open-source VmInstanceBase runs no hypervisor step for
//! these APIs), a change is a tag change that a running VM takes at its next start.

use super::checks::BOOT_DEVICES;
use crate::api::{Msg, Reply};
use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::util::{new_uuid, now_ms};
use crate::App;
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;

// (no `%` or `_` in them: they are LIKE prefixes as they are)
const CONSOLE_PASSWORD: &str = "consolePassword::";
const BOOT_ORDER: &str = "bootOrder::";

/// Replace the VM's tags starting with `prefix` by `tag` (none: only remove them), as upstream's
/// tag creator with `recreate` does.
async fn replace_tag(tx: &mut WriteTx, vm: &str, prefix: &str, tag: Option<&str>) -> Result<()> {
    tx.execute(
        "DELETE FROM system_tag WHERE resource_uuid = $1 AND resource_type = 'VmInstanceVO' \
         AND tag LIKE $2",
        &[Val::from(vm), Val::S(format!("{prefix}%"))],
    )
    .await?;
    if let Some(tag) = tag {
        crate::resources::tag::insert_system_tag(tx, &new_uuid(), vm, "VmInstanceVO", tag, false, now_ms(), false)
            .await?;
    }
    Ok(())
}

/// The value of the VM's oldest tag starting with `prefix`.
async fn tag_value(app: &App, vm: &str, prefix: &str) -> Result<Option<String>> {
    let r = app
        .db
        .fetch_optional(
            "SELECT tag FROM system_tag WHERE resource_uuid = $1 AND resource_type = 'VmInstanceVO' \
             AND tag LIKE $2 ORDER BY create_date, uuid LIMIT 1",
            &[Val::from(vm), Val::S(format!("{prefix}%"))],
        )
        .await?;
    let Some(r) = r else { return Ok(None) };
    let tag: String = r.try_get(0)?;
    Ok(tag.strip_prefix(prefix).map(str::to_string))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetPassword {
    uuid: String,
    #[serde(default)]
    console_password: String,
}

/// SetVmConsolePassword (upstream interceptor: no password starting with `password`).
pub(super) async fn set_console_password(app: App, msg: Msg) -> Result<Reply> {
    let req: SetPassword = msg.parse()?;
    if req.console_password.starts_with("password") {
        return Err(Error::argerr(
            "The console password cannot start with 'password' which may trigger a VNC security issue",
        ));
    }
    let tag = format!("{CONSOLE_PASSWORD}{}", req.console_password);
    let mut tx = app.db.begin_write().await?;
    replace_tag(&mut tx, &req.uuid, CONSOLE_PASSWORD, Some(&tag)).await?;
    tx.commit().await?;
    super::reply(&app, &req.uuid).await
}

/// DeleteVmConsolePassword: the VM's console asks for no password from its next start
/// (upstream's event maps no field: `{}`).
pub(super) async fn delete_console_password(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let mut tx = app.db.begin_write().await?;
    replace_tag(&mut tx, &uuid, CONSOLE_PASSWORD, None).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

/// GetVmConsolePassword: `{"password": ...}`, no field when the VM has none.
pub(super) async fn get_console_password(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let pw = tag_value(&app, &uuid, CONSOLE_PASSWORD).await?;
    Ok(Reply::fields(pw.map(|p| ("password", Value::from(p)))))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SetBootOrder {
    uuid: String,
    #[serde(default)]
    boot_order: Option<Vec<String>>,
}

/// SetVmBootOrder: each device one of upstream's `VmBootDevice` (SYS.1007, upstream's text with
/// the list as Java prints it); kept once each, in order, as `bootOrder::a,b`; no list removes
/// the tag (the default order again).
pub(super) async fn set_boot_order(app: App, msg: Msg) -> Result<Reply> {
    let req: SetBootOrder = msg.parse()?;
    let tag = match &req.boot_order {
        Some(order) => {
            if let Some(bad) = order.iter().find(|o| !BOOT_DEVICES.contains(&o.as_str())) {
                return Err(Error::argerr(format!("invalid boot device[{bad}] in boot order[{}]", order.join(", "))));
            }
            let mut distinct: Vec<&str> = Vec::new();
            for o in order {
                if !distinct.contains(&o.as_str()) {
                    distinct.push(o);
                }
            }
            Some(format!("{BOOT_ORDER}{}", distinct.join(",")))
        }
        None => None,
    };
    let mut tx = app.db.begin_write().await?;
    replace_tag(&mut tx, &req.uuid, BOOT_ORDER, tag.as_deref()).await?;
    tx.commit().await?;
    super::reply(&app, &req.uuid).await
}

/// GetVmBootOrder: `{"orders": [...]}`: the VM's tag, else upstream's default list (HardDisk,
/// then CdRom when an ISO is attached, then Network).
pub(super) async fn get_boot_order(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let orders: Vec<String> = match tag_value(&app, &uuid, BOOT_ORDER).await? {
        Some(order) => order.split(',').map(str::to_string).collect(),
        None => {
            let iso = app
                .db
                .fetch_optional(
                    "SELECT 1 FROM vm_cdrom WHERE vm_instance_uuid = $1 AND iso_uuid IS NOT NULL",
                    &[Val::from(uuid.as_str())],
                )
                .await?
                .is_some();
            let devices: &[&str] = if iso { &["HardDisk", "CdRom", "Network"] } else { &["HardDisk", "Network"] };
            devices.iter().map(|d| d.to_string()).collect()
        }
    };
    Ok(Reply::fields([("orders", Value::from(orders))]))
}
