//! Backup storage (upstream `BackupStorageVO`): SFTP, ImageStore and simulator types; add,
//! update, change state, delete, query, attach to / detach from zones.
//!
//! Until a host agent exists, an SFTP or ImageStore backup storage must live on this
//! machine (hostname localhost, a loopback address, this machine's name or one of its
//! addresses): its url is a local directory, created when the storage is added, and its
//! capacity is read from the file system that holds it.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::Val;
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{field, FType, Refs, ResourceDef};
use crate::util::now_ms;
use crate::App;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::Row;
use std::time::Duration;

pub const SFTP: &str = "SftpBackupStorage";
pub const IMAGE_STORE: &str = "ImageStoreBackupStorage";
pub const SIMULATOR: &str = "SimulatorBackupStorage";

static ZONE_REFS: Refs = Refs { table: "backup_storage_zone_ref", fk: "backup_storage_uuid", value: "zone_uuid" };

fn class_of(row: &Map<String, Value>) -> &'static str {
    match row.get("type").and_then(Value::as_str) {
        Some(SFTP) => "org.zstack.storage.backup.sftp.SftpBackupStorageInventory",
        Some(IMAGE_STORE) => "org.zstack.storage.backup.imagestore.ImageStoreBackupStorageInventory",
        _ => "org.zstack.header.storage.backup.BackupStorageInventory",
    }
}

pub static BACKUP_STORAGE: ResourceDef = ResourceDef {
    inventory: "BackupStorageInventory",
    vo: "BackupStorageVO",
    class: "org.zstack.header.storage.backup.BackupStorageInventory",
    table: "backup_storage",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("url", "url", FType::Str),
        field("description", "description", FType::Str),
        field("totalCapacity", "total_capacity", FType::Int),
        field("availableCapacity", "available_capacity", FType::Int),
        field("type", "type", FType::Str),
        field("state", "state", FType::Str),
        field("status", "status", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
        field("attachedZoneUuids", "uuid", FType::Refs(&ZONE_REFS)),
        field("hostname", "hostname", FType::Str),
        field("username", "username", FType::Str),
        field("sshPort", "ssh_port", FType::Int),
    ],
    children: &[],
    class_of: Some(class_of),
    order: "t.create_date, t.uuid",
    tag_type: Some("BackupStorageVO"),
};

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, &BACKUP_STORAGE, uuid).await
}

fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Whether `host` names this machine: a loopback address, or an address some local
/// interface holds (binding to it succeeds), directly or after name resolution.
pub async fn is_this_machine(host: &str) -> bool {
    let local = |ip: std::net::IpAddr| ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return local(ip);
    }
    let lookup = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((host, 0))).await;
    match lookup {
        Ok(Ok(addrs)) => {
            let ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
            !ips.is_empty() && ips.into_iter().all(local)
        }
        _ => false,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddBackupStorage {
    name: String,
    description: Option<String>,
    url: String,
    hostname: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ssh_port: Option<i64>,
    total_capacity: Option<i64>,
    available_capacity: Option<i64>,
}

async fn add(app: App, msg: Msg, ty: &'static str) -> Result<Reply> {
    let req: AddBackupStorage = msg.parse()?;
    let uuid = msg.resource_uuid();
    let url = req.url.clone();
    let host = req.hostname.clone().unwrap_or_default();
    if ty != SIMULATOR && host.parse::<std::net::Ipv4Addr>().is_err() && !is_hostname(&host) {
        return Err(Error::argerr(format!("hostname[{host}] is neither an IPv4 address nor a valid hostname")));
    }
    // Resolved before the write transaction: a name lookup may take seconds.
    let local = ty == SIMULATOR || is_this_machine(&host).await;
    let mut tx = app.db.begin_write().await?;
    if super::is_new(&mut tx, &BACKUP_STORAGE, &uuid, &msg).await? {
        let (total, available, hostname, ssh_port) = if ty == SIMULATOR {
            let total = req.total_capacity.unwrap_or(0);
            let available = req.available_capacity.unwrap_or(0);
            if total < 0 || available < 0 {
                return Err(Error::argerr("the capacity of a simulator backup storage cannot be negative"));
            }
            (total, available, None, None)
        } else {
            let dup = tx
                .fetch_optional(
                    "SELECT 1 FROM backup_storage WHERE type = $1 AND hostname = $2",
                    &[Val::from(ty), Val::from(host.as_str())],
                )
                .await?;
            if dup.is_some() {
                let kind = if ty == SFTP { "sftp" } else { "image store" };
                return Err(Error::operr(format!(
                    "duplicate backup storage. There has been a {kind} backup storage[hostname:{host}] existing"
                )));
            }
            if url.starts_with("/proc") || url.starts_with("/dev") || url.starts_with("/sys") {
                return Err(Error::argerr(" the url contains an invalid folder[/dev or /proc or /sys]"));
            }
            if !url.starts_with('/') {
                return Err(Error::argerr(format!("the url[{url}] is not an absolute path starting with '/'")));
            }
            if !local {
                return Err(Error::operr(format!(
                    "cannot add the backup storage on host[{host}]: backup storage on other machines needs the host agent, \
                     which this management node does not have yet; use hostname localhost (a directory on the management node)"
                )));
            }
            super::primary_storage::make_dir(&url)?;
            let (total, avail) = super::primary_storage::fs_capacity(&url)?;
            (total, avail, Some(host.clone()), Some(req.ssh_port.unwrap_or(22)))
        };
        tx.execute(
            "INSERT INTO backup_storage (uuid, name, url, description, total_capacity, available_capacity, type, state, status, \
             hostname, username, password, ssh_port, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'Enabled', 'Connected', $8, $9, $10, $11, $12, $12)",
            &[
                Val::from(uuid.as_str()),
                Val::from(req.name),
                Val::from(url),
                Val::from(req.description),
                Val::I(total),
                Val::I(available),
                Val::from(ty),
                Val::from(hostname),
                Val::from(if ty == SIMULATOR { None } else { req.username }),
                Val::from(if ty == SIMULATOR { None } else { req.password }),
                Val::from(ssh_port),
                Val::I(now_ms()),
            ],
        )
        .await?;
        super::own(&mut tx, &uuid, BACKUP_STORAGE.vo, msg.account_uuid()).await?;
    }
    tx.commit().await?;
    reply(&app, &uuid).await
}

async fn update(app: App, msg: Msg) -> Result<Reply> {
    let uuid = super::update_name_description(&app, &msg, &BACKUP_STORAGE, false).await?;
    reply(&app, &uuid).await
}

async fn delete(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("uuid").unwrap_or_default().to_string();
    let busy = app
        .db
        .fetch_optional(
            "SELECT image_uuid FROM image_backup_storage_ref WHERE backup_storage_uuid = $1 AND status = 'Downloading'",
            &[Val::from(uuid.as_str())],
        )
        .await?;
    if let Some(r) = busy {
        let image: String = r.try_get(0)?;
        return Err(Error::operr(format!(
            "backup storage[uuid:{uuid}] cannot be deleted while image[uuid:{image}] is being downloaded to it"
        )));
    }
    let mut tx = app.db.begin_write().await?;
    tx.execute("DELETE FROM backup_storage_zone_ref WHERE backup_storage_uuid = $1", &[Val::from(uuid.as_str())])
        .await?;
    tx.execute("DELETE FROM image_backup_storage_ref WHERE backup_storage_uuid = $1", &[Val::from(uuid.as_str())])
        .await?;
    // Images left on no backup storage go with it (upstream cascades them); their files
    // stay in the storage directory, which deleting a backup storage never wipes.
    let orphans = tx
        .fetch_all("SELECT uuid FROM image WHERE uuid NOT IN (SELECT image_uuid FROM image_backup_storage_ref)", &[])
        .await?;
    for r in orphans {
        let img: String = r.try_get(0)?;
        tx.execute("DELETE FROM image WHERE uuid = $1", &[Val::from(img.as_str())]).await?;
        super::disown(&mut tx, &img).await?;
    }
    tx.execute("DELETE FROM backup_storage WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    super::disown(&mut tx, &uuid).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ZoneBs {
    zone_uuid: String,
    backup_storage_uuid: String,
}

async fn attach(app: App, msg: Msg) -> Result<Reply> {
    let req: ZoneBs = msg.parse()?;
    let (z, b) = (req.zone_uuid.as_str(), req.backup_storage_uuid.as_str());
    let attached = Error::operr(format!("backup storage[uuid:{b}] has been attached to zone[uuid:{z}]"));
    super::attach_ref(&app, &BACKUP_STORAGE, &ZONE_REFS, b, z, attached).await
}

async fn detach(app: App, msg: Msg) -> Result<Reply> {
    let req: ZoneBs = msg.parse()?;
    let (z, b) = (req.zone_uuid.as_str(), req.backup_storage_uuid.as_str());
    let not_attached = Error::operr(format!("backup storage[uuid:{b}] has not been attached to zone[uuid:{z}]"));
    super::detach_ref(&app, &BACKUP_STORAGE, &ZONE_REFS, b, z, Some(not_attached)).await
}

const REMOTE_PARAMS: &[Param] = &[
    Param::str("url").required().max(2048).no_empty_string(),
    Param::str("name").required().max(255),
    Param::str("description").max(2048),
    Param::str("type"),
    Param::bool("importImages"),
    Param::str("hostname").required().max(255).no_empty_string(),
    Param::str("username").required().max(255),
    Param::str("password").required().max(255),
    Param::int("sshPort").range(1, 65535),
];

pub static APIS: &[ApiDef] = &[
    ApiDef::create("AddSftpBackupStorage", "/backup-storage/sftp")
        .params(REMOTE_PARAMS)
        .handler(|a, m| boxed(add(a, m, SFTP))),
    ApiDef::create("AddImageStoreBackupStorage", "/backup-storage/image-store")
        .params(REMOTE_PARAMS)
        .handler(|a, m| boxed(add(a, m, IMAGE_STORE))),
    ApiDef::create("AddSimulatorBackupStorage", "/backup-storage/simulators")
        .params(&[
            Param::str("url").required().max(2048).no_empty_string(),
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("type"),
            Param::bool("importImages"),
            Param::int("totalCapacity"),
            Param::int("availableCapacity"),
        ])
        .handler(|a, m| boxed(add(a, m, SIMULATOR))),
    ApiDef::query("QueryBackupStorage", "/backup-storage", &BACKUP_STORAGE).optional_paths(&["/backup-storage/{uuid}"]),
    ApiDef::action("UpdateBackupStorage", "/backup-storage/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&BACKUP_STORAGE),
            Param::str("name").max(255),
            Param::str("description").max(2048),
        ])
        .handler(|a, m| boxed(update(a, m))),
    ApiDef::action("ChangeBackupStorageState", "/backup-storage/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&BACKUP_STORAGE),
            Param::str("stateEvent").required().values(&["enable", "disable"]),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &BACKUP_STORAGE, super::enable_disable))),
    ApiDef::delete("DeleteBackupStorage", "/backup-storage/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&BACKUP_STORAGE).success_if_missing(),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete(a, m))),
    ApiDef::post("AttachBackupStorageToZone", "/zones/{zoneUuid}/backup-storage/{backupStorageUuid}")
        .params(&[
            Param::str("zoneUuid").required().resource(&super::zone::ZONE),
            Param::str("backupStorageUuid").required().resource(&BACKUP_STORAGE),
        ])
        .handler(|a, m| boxed(attach(a, m))),
    ApiDef::delete("DetachBackupStorageFromZone", "/zones/{zoneUuid}/backup-storage/{backupStorageUuid}")
        .params(&[
            Param::str("backupStorageUuid").required().resource(&BACKUP_STORAGE),
            Param::str("zoneUuid").required().resource(&super::zone::ZONE),
        ])
        .handler(|a, m| boxed(detach(a, m))),
];
