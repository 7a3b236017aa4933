//! Images (upstream `ImageVO`): add (a real download or copy into every chosen backup
//! storage), update, change state, delete (deletion policy Delay: status Deleted), expunge,
//! recover, query; and the task progress of running downloads (`GET /task-progresses/{apiId}`).
//!
//! AddImage copies a `file://` (or absolute path) source, or streams an `http(s)://` source,
//! into `<bs url>/<rootVolumeTemplates|dataVolumeTemplates>/acct-<account>/<image uuid>/<name>.<suffix>`
//! (upstream's layout) of the first local backup storage, computing the md5 sum on the way,
//! checks the file with `qemu-img info` (the format must be the one given), then copies it
//! to the other backup storages. Any failure removes every file and row it made.

use crate::api::{boxed, ApiDef, Msg, Reply, HOURS};
use crate::db::Val;
use crate::error::{Error, Result};
use crate::params::Param;
use crate::query::{field, Child, FType, ResourceDef};
use crate::util::now_ms;
use crate::App;
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backup_storage::{BACKUP_STORAGE, SIMULATOR as SIMULATOR_BS};

pub static IMAGE_BS_REF: ResourceDef = ResourceDef {
    inventory: "ImageBackupStorageRefInventory",
    vo: "ImageBackupStorageRefVO",
    class: "org.zstack.header.image.ImageBackupStorageRefInventory",
    table: "image_backup_storage_ref",
    fields: &[
        field("id", "id", FType::Int),
        field("imageUuid", "image_uuid", FType::Str),
        field("backupStorageUuid", "backup_storage_uuid", FType::Str),
        field("installPath", "install_path", FType::Str),
        field("status", "status", FType::Str),
        field("exportMd5Sum", "export_md5_sum", FType::Str),
        field("exportUrl", "export_url", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.backup_storage_uuid",
    tag_type: None,
};

pub static IMAGE: ResourceDef = ResourceDef {
    inventory: "ImageInventory",
    vo: "ImageVO",
    class: "org.zstack.header.image.ImageInventory",
    table: "image",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("state", "state", FType::Str),
        field("status", "status", FType::Str),
        field("size", "size", FType::Int),
        field("actualSize", "actual_size", FType::Int),
        field("md5Sum", "md5_sum", FType::Str),
        field("url", "url", FType::Str),
        field("mediaType", "media_type", FType::Str),
        field("guestOsType", "guest_os_type", FType::Str),
        field("type", "type", FType::Str),
        field("platform", "platform", FType::Str),
        field("architecture", "architecture", FType::Str),
        field("format", "format", FType::Str),
        field("system", "system", FType::Bool),
        field("virtio", "virtio", FType::Bool),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[Child { name: "backupStorageRefs", def: &IMAGE_BS_REF, fk: "image_uuid", pk: "uuid", many: true }],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("ImageVO"),
};

const FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "iso"];
/// Upstream `image.download.localPath.blacklist` default, as prefixes / hidden components.
const BLACKLIST: &str = "/**/.*/**;/**/~*/**;/etc/**;/usr/local/zstack/**;/var/log/**;/dev/**;/proc/**;/sys/**";

async fn reply(app: &App, uuid: &str) -> Result<Reply> {
    super::inventory_reply(app, &IMAGE, uuid).await
}

fn io_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::code(rzstack_api::codes::SYS_1016, format!("{what}: {e}"))
}

fn in_blacklist(path: &str) -> bool {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    // `/**/.*/**` and `/**/~*/**`: a hidden or backup directory anywhere above the file.
    if comps.len() > 1 && comps[..comps.len() - 1].iter().any(|c| c.starts_with('.') || c.starts_with('~')) {
        return true;
    }
    ["/etc/", "/usr/local/zstack/", "/var/log/", "/dev/", "/proc/", "/sys/"].iter().any(|p| path.starts_with(p))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddImage {
    name: String,
    description: Option<String>,
    url: String,
    media_type: Option<String>,
    guest_os_type: Option<String>,
    architecture: Option<String>,
    #[serde(default)]
    system: bool,
    format: Option<String>,
    platform: Option<String>,
    backup_storage_uuids: Vec<String>,
    #[serde(rename = "type")]
    ty: Option<String>,
    virtio: Option<bool>,
}

/// One backup storage an image goes to.
struct Target {
    bs_uuid: String,
    simulator: bool,
    path: PathBuf,
}

fn ref_id(image: &str, bs: &str) -> i64 {
    let d = Md5::digest(format!("{image}/{bs}").as_bytes());
    let mut b = [0u8; 8];
    b[1..8].copy_from_slice(&d[..7]);
    i64::from_be_bytes(b)
}

fn file_name(url: &str, media_type: &str, uuid: &str) -> String {
    let last = url.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let last = last.split(['?', '#']).next().unwrap_or("");
    let base = match last.rsplit_once('.') {
        Some((b, _)) if !b.is_empty() => b,
        _ => last,
    };
    let mut base: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if base.is_empty() || base.starts_with('.') {
        base = uuid.to_string();
    }
    let suffix = match media_type {
        "ISO" => "iso",
        "DataVolumeTemplate" => "volume",
        _ => "template",
    };
    format!("{base}.{suffix}")
}

fn install_folder(media_type: &str) -> &'static str {
    if media_type == "RootVolumeTemplate" {
        "rootVolumeTemplates"
    } else {
        "dataVolumeTemplates"
    }
}

fn partial(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".download");
    PathBuf::from(s)
}

async fn set_progress(app: &App, api_id: &str, content: &str) {
    let r = app
        .db
        .execute(
            "UPDATE task_progress SET content = $1, time = $2 WHERE uuid = $3",
            &[Val::from(content), Val::I(now_ms()), Val::from(api_id)],
        )
        .await;
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot record task progress");
    }
}

/// Remove an image's files (final and partial) from every target and its rows.
async fn discard(app: &App, uuid: &str, targets: &[Target], staging: Option<&Path>) -> Result<()> {
    for t in targets.iter().filter(|t| !t.simulator) {
        for p in [t.path.clone(), partial(&t.path)] {
            let _ = tokio::fs::remove_file(&p).await;
        }
        if let Some(dir) = t.path.parent() {
            let _ = tokio::fs::remove_dir(dir).await;
        }
    }
    if let Some(s) = staging {
        let _ = tokio::fs::remove_file(s).await;
    }
    let mut tx = app.db.begin_write().await?;
    tx.execute("DELETE FROM image_backup_storage_ref WHERE image_uuid = $1", &[Val::from(uuid)]).await?;
    tx.execute("DELETE FROM image WHERE uuid = $1", &[Val::from(uuid)]).await?;
    super::disown(&mut tx, uuid).await?;
    tx.commit().await
}

/// A source of bytes: a local file or an HTTP response body.
enum Source {
    File(tokio::fs::File),
    Http(reqwest::Response),
}

impl Source {
    async fn next(&mut self, buf: &mut Vec<u8>) -> Result<bool> {
        match self {
            Source::File(f) => {
                buf.resize(1 << 20, 0);
                let n = f.read(buf).await.map_err(|e| io_err("cannot read the image file", e))?;
                buf.truncate(n);
                Ok(n > 0)
            }
            Source::Http(r) => match tokio::time::timeout(Duration::from_secs(120), r.chunk()).await {
                Ok(Ok(Some(c))) => {
                    buf.clear();
                    buf.extend_from_slice(&c);
                    Ok(true)
                }
                Ok(Ok(None)) => Ok(false),
                Ok(Err(e)) => Err(Error::code(rzstack_api::codes::SYS_1015, format!("download failed: {e}"))),
                Err(_) => {
                    Err(Error::code(rzstack_api::codes::SYS_1015, "download failed: no data received for 120 seconds"))
                }
            },
        }
    }
}

async fn open_source(url: &str) -> Result<(Source, Option<u64>)> {
    if let Some(path) = url.strip_prefix("file://") {
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::operr(format!("cannot read the image at url[{url}]: {e}")))?;
        let meta = f.metadata().await.map_err(|e| io_err("cannot stat the image file", e))?;
        if !meta.is_file() {
            return Err(Error::operr(format!("the image at url[{url}] is not a regular file")));
        }
        return Ok((Source::File(f), Some(meta.len())));
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let resp = client.get(url).send().await.map_err(|e| {
        Error::code(rzstack_api::codes::SYS_1015, format!("cannot download the image from url[{url}]: {e}"))
    })?;
    if !resp.status().is_success() {
        return Err(Error::code(
            rzstack_api::codes::SYS_1015,
            format!("cannot download the image from url[{url}]: the server answered HTTP {}", resp.status().as_u16()),
        ));
    }
    let len = resp.content_length();
    Ok((Source::Http(resp), len))
}

struct Downloaded {
    bytes: i64,
    md5: String,
}

/// Stream `url` into `dest`, hashing it and reporting progress.
async fn fetch(app: &App, api_id: &str, url: &str, dest: &Path) -> Result<Downloaded> {
    let (mut src, total) = open_source(url).await?;
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_err(&format!("cannot create the directory {}", dir.display()), e))?;
    }
    let mut out =
        tokio::fs::File::create(dest).await.map_err(|e| io_err(&format!("cannot create {}", dest.display()), e))?;
    let mut hash = Md5::new();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut done: u64 = 0;
    let mut last_pct = 0u64;
    while src.next(&mut buf).await? {
        hash.update(&buf);
        out.write_all(&buf).await.map_err(|e| io_err(&format!("cannot write {}", dest.display()), e))?;
        done += buf.len() as u64;
        if let Some(t) = total.filter(|t| *t > 0) {
            let pct = (done * 100 / t).min(99);
            if pct != last_pct {
                last_pct = pct;
                set_progress(app, api_id, &pct.to_string()).await;
            }
        }
    }
    out.flush().await.map_err(|e| io_err(&format!("cannot write {}", dest.display()), e))?;
    out.sync_all().await.map_err(|e| io_err(&format!("cannot write {}", dest.display()), e))?;
    if let Some(t) = total {
        if t != done {
            return Err(Error::code(
                rzstack_api::codes::SYS_1015,
                format!("the download from url[{url}] ended after {done} of {t} bytes"),
            ));
        }
    }
    Ok(Downloaded { bytes: done as i64, md5: format!("{:x}", hash.finalize()) })
}

/// `qemu-img info` of a file: (format, virtual size, has a backing file).
pub async fn qemu_img_info(path: &Path) -> Result<(String, i64, bool)> {
    let out = tokio::process::Command::new("qemu-img")
        .arg("info")
        .arg("--output=json")
        .arg(path)
        .output()
        .await
        .map_err(|e| Error::Internal(format!("cannot run qemu-img (is it installed?): {e}")))?;
    if !out.status.success() {
        return Err(Error::operr(format!(
            "qemu-img cannot read the image: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v: Value =
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Internal(format!("bad qemu-img output: {e}")))?;
    let format = v["format"].as_str().unwrap_or_default().to_string();
    let size = v["virtual-size"].as_i64().unwrap_or(0);
    let backing = v.get("backing-filename").is_some();
    Ok((format, size, backing))
}

async fn add_image(app: App, msg: Msg) -> Result<Reply> {
    let req: AddImage = msg.parse()?;
    let uuid = msg.resource_uuid();
    // A replay of a job that finished before the restart: the image is the answer.
    let mut half_done = false;
    if msg.replay {
        if let Some(r) =
            app.db.fetch_optional("SELECT status FROM image WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?
        {
            let status: String = r.try_get(0)?;
            if status != "Downloading" {
                return reply(&app, &uuid).await;
            }
            half_done = true;
        }
    }

    // Upstream interceptor rules, in order.
    let mut format = req.format.clone();
    if req.media_type.as_deref() == Some("ISO") {
        format = Some("iso".into());
    }
    if req.system && (req.media_type.as_deref() == Some("ISO") || format.as_deref() == Some("iso")) {
        return Err(Error::argerr("ISO cannot be used as system image"));
    }
    let format = match format {
        Some(f) if FORMATS.contains(&f.as_str()) => f,
        other => return Err(Error::argerr(format!("unknown format[{}]", other.as_deref().unwrap_or("null")))),
    };
    if let Some(t) = req.ty.as_deref().filter(|t| *t != "zstack") {
        return Err(Error::argerr(format!("unsupported image type[{t}]")));
    }
    let media_type = req.media_type.clone().unwrap_or_else(|| "RootVolumeTemplate".into());
    let (mut platform, mut architecture) = (req.platform.clone(), req.architecture.clone());
    let mut guest_os_type = req.guest_os_type.clone();
    if media_type != "DataVolumeTemplate" {
        platform = Some(match platform.as_deref() {
            None => "Linux".to_string(),
            Some("Paravirtualization") => "Other".to_string(),
            Some("WindowsVirtio") => "Windows".to_string(),
            Some(p) => p.to_string(),
        });
        if architecture.is_none() {
            architecture = Some(if std::env::consts::ARCH == "aarch64" { "aarch64" } else { "x86_64" }.to_string());
        }
        // upstream (ImageMessageFiller, GuestOsCategory): the platform's own name is the
        // default guest OS type for Linux, Windows and Other
        if guest_os_type.is_none() {
            guest_os_type = platform.clone().filter(|p| ["Linux", "Windows", "Other"].contains(&p.as_str()));
        }
    }
    let mut phs = Vec::new();
    let mut vals = Vec::new();
    for (i, b) in req.backup_storage_uuids.iter().enumerate() {
        phs.push(format!("${}", i + 1));
        vals.push(Val::from(b.as_str()));
    }
    let rows = app
        .db
        .fetch_all(
            &format!(
                "SELECT uuid, url, type FROM backup_storage WHERE status = 'Connected' AND available_capacity > 0 \
                 AND uuid IN ({}) ORDER BY create_date, uuid",
                phs.join(", ")
            ),
            &vals,
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::operr(format!(
            "no backup storage specified in uuids[{}] is available for adding this image; they are not in status Connected \
             or not in state Enabled, or the uuid is invalid backup storage uuid",
            req.backup_storage_uuids.join(", ")
        )));
    }
    let url = if req.url.starts_with('/') { format!("file://{}", req.url) } else { req.url.clone() };
    if !["file:///", "http://", "https://", "ftp://", "sftp://"].iter().any(|p| url.starts_with(p)) {
        if url.starts_with("file://") {
            return Err(Error::argerr("absolute path must be used"));
        }
        return Err(Error::argerr(
            "url must starts with 'file:///', 'http://', 'https://'， 'ftp://', 'sftp://' or '/'",
        ));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if in_blacklist(path) {
            return Err(Error::argerr(format!("image path [{path}] is in black list [{BLACKLIST}]")));
        }
    }
    if url.starts_with("ftp://") || url.starts_with("sftp://") {
        return Err(Error::operr(format!(
            "cannot download the image from url[{url}]: ftp:// and sftp:// sources are not supported yet, use http(s):// or a local path"
        )));
    }

    let account = msg.account_uuid().to_string();
    let name = file_name(&url, &media_type, &uuid);
    let mut targets = Vec::new();
    for r in &rows {
        let bs_uuid: String = r.try_get(0)?;
        let bs_url: String = r.try_get(1)?;
        let ty: String = r.try_get(2)?;
        let path = Path::new(&bs_url)
            .join(install_folder(&media_type))
            .join(format!("acct-{account}"))
            .join(&uuid)
            .join(&name);
        targets.push(Target { bs_uuid, simulator: ty == SIMULATOR_BS, path });
    }

    // A replay of a job cut short: the half-done image starts over.
    if half_done {
        discard(&app, &uuid, &targets, None).await?;
    }

    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    // Refuses a reused resourceUuid; false only if the image appeared since the replay began.
    let fresh = super::is_new(&mut tx, &IMAGE, &uuid, &msg).await?;
    if !fresh {
        drop(tx);
        return reply(&app, &uuid).await;
    }
    tx.execute(
        "INSERT INTO image (uuid, name, description, state, status, url, media_type, guest_os_type, type, platform, \
         architecture, format, system, virtio, create_date, last_op_date) \
         VALUES ($1, $2, $3, 'Enabled', 'Downloading', $4, $5, $6, 'zstack', $7, $8, $9, $10, $11, $12, $12)",
        &[
            Val::from(uuid.as_str()),
            Val::from(req.name.clone()),
            Val::from(req.description.clone()),
            Val::from(url.as_str()),
            Val::from(media_type.as_str()),
            Val::from(guest_os_type),
            Val::from(platform),
            Val::from(architecture),
            Val::from(format.as_str()),
            Val::from(req.system),
            Val::from(req.virtio.unwrap_or(true)),
            Val::I(now),
        ],
    )
    .await?;
    for t in &targets {
        tx.execute(
            "INSERT INTO image_backup_storage_ref (id, image_uuid, backup_storage_uuid, install_path, status, reserved_size, \
             create_date, last_op_date) VALUES ($1, $2, $3, $4, 'Downloading', 0, $5, $5)",
            &[
                Val::I(ref_id(&uuid, &t.bs_uuid)),
                Val::from(uuid.as_str()),
                Val::from(t.bs_uuid.as_str()),
                Val::from(t.path.display().to_string()),
                Val::I(now),
            ],
        )
        .await?;
    }
    super::own(&mut tx, &uuid, IMAGE.vo, &account).await?;
    tx.execute(
        "INSERT INTO task_progress (uuid, api_id, task_name, type, content, time) VALUES ($1, $1, $2, 'Progress', '0', $3) \
         ON CONFLICT (uuid) DO UPDATE SET content = '0', time = $3",
        &[Val::from(msg.job_uuid.as_str()), Val::from(format!("download-image-{uuid}")), Val::I(now)],
    )
    .await?;
    tx.commit().await?;

    let staging = match targets.iter().find(|t| !t.simulator) {
        Some(t) => partial(&t.path),
        None => app.config.data_dir.join("tmp").join(format!("{uuid}.download")),
    };
    match install(&app, &msg.job_uuid, &uuid, &url, &format, &targets, &staging).await {
        Ok(()) => {
            set_progress(&app, &msg.job_uuid, "100").await;
            reply(&app, &uuid).await
        }
        Err(e) => {
            if let Err(d) = discard(&app, &uuid, &targets, Some(&staging)).await {
                tracing::error!(image = %uuid, error = %d, "cannot clean up a failed image");
            }
            let _ =
                app.db.execute("DELETE FROM task_progress WHERE uuid = $1", &[Val::from(msg.job_uuid.as_str())]).await;
            Err(e)
        }
    }
}

async fn install(
    app: &App,
    api_id: &str,
    uuid: &str,
    url: &str,
    format: &str,
    targets: &[Target],
    staging: &Path,
) -> Result<()> {
    let got = fetch(app, api_id, url, staging).await?;
    let (actual_format, size, backing) = qemu_img_info(staging).await?;
    let compatible = actual_format == format || (format == "iso" && actual_format == "raw");
    if !compatible {
        return Err(Error::operr(format!(
            "the image[uuid:{uuid}] downloaded from url[{url}] is in format[{actual_format}], but its format was given as [{format}]"
        )));
    }
    if backing {
        return Err(Error::operr(format!(
            "the image[uuid:{uuid}] downloaded from url[{url}] has a backing file; only self-contained images can be added"
        )));
    }
    // Move the staged file into place, copy it to the other local backup storages.
    let mut first: Option<&Path> = None;
    for t in targets.iter().filter(|t| !t.simulator) {
        match first {
            None => {
                tokio::fs::rename(staging, &t.path).await.map_err(|e| io_err("cannot move the image into place", e))?;
                first = Some(&t.path);
            }
            Some(src) => {
                if let Some(dir) = t.path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(|e| io_err(&format!("cannot create the directory {}", dir.display()), e))?;
                }
                let tmp = partial(&t.path);
                tokio::fs::copy(src, &tmp).await.map_err(|e| io_err("cannot copy the image", e))?;
                tokio::fs::rename(&tmp, &t.path).await.map_err(|e| io_err("cannot move the image into place", e))?;
            }
        }
    }
    if first.is_none() {
        let _ = tokio::fs::remove_file(staging).await;
    }
    // Reserve the space on every backup storage and mark everything Ready, atomically.
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    for t in targets {
        let n = tx
            .execute(
                "UPDATE backup_storage SET available_capacity = available_capacity - $1 WHERE uuid = $2 AND available_capacity >= $1",
                &[Val::I(got.bytes), Val::from(t.bs_uuid.as_str())],
            )
            .await?;
        if n == 0 {
            return Err(Error::operr(format!(
                "backup storage[uuid:{}] does not have enough capacity for the image[uuid:{uuid}, size:{} bytes]",
                t.bs_uuid, got.bytes
            )));
        }
        tx.execute(
            "UPDATE image_backup_storage_ref SET status = 'Ready', reserved_size = $1, last_op_date = $2 \
             WHERE image_uuid = $3 AND backup_storage_uuid = $4",
            &[Val::I(got.bytes), Val::I(now), Val::from(uuid), Val::from(t.bs_uuid.as_str())],
        )
        .await?;
    }
    tx.execute(
        "UPDATE image SET status = 'Ready', size = $1, actual_size = $2, md5_sum = $3, last_op_date = $4 WHERE uuid = $5",
        &[Val::I(size), Val::I(got.bytes), Val::from(got.md5), Val::I(now), Val::from(uuid)],
    )
    .await?;
    tx.commit().await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateImage {
    uuid: String,
    name: Option<String>,
    description: Option<String>,
    guest_os_type: Option<String>,
    media_type: Option<String>,
    format: Option<String>,
    system: Option<bool>,
    platform: Option<String>,
    architecture: Option<String>,
    virtio: Option<bool>,
}

async fn update_image(app: App, msg: Msg) -> Result<Reply> {
    let req: UpdateImage = msg.parse()?;
    app.db
        .execute(
            "UPDATE image SET name = COALESCE($1, name), description = COALESCE($2, description), \
             guest_os_type = COALESCE($3, guest_os_type), media_type = COALESCE($4, media_type), format = COALESCE($5, format), \
             system = COALESCE($6, system), platform = COALESCE($7, platform), architecture = COALESCE($8, architecture), \
             virtio = COALESCE($9, virtio), last_op_date = $10 WHERE uuid = $11",
            &[
                Val::from(req.name),
                Val::from(req.description),
                Val::from(req.guest_os_type),
                Val::from(req.media_type),
                Val::from(req.format),
                Val::from(req.system),
                Val::from(req.platform),
                Val::from(req.architecture),
                Val::from(req.virtio),
                Val::I(now_ms()),
                Val::from(req.uuid.as_str()),
            ],
        )
        .await?;
    reply(&app, &req.uuid).await
}

struct Ref {
    bs: String,
    status: String,
    path: Option<String>,
    reserved: i64,
}

async fn image_refs(app: &App, uuid: &str) -> Result<(String, Vec<Ref>)> {
    let name: String = app
        .db
        .fetch_optional("SELECT name FROM image WHERE uuid = $1", &[Val::from(uuid)])
        .await?
        .ok_or_else(|| Error::not_found(format!("image[uuid:{uuid}] is not found")))?
        .try_get(0)?;
    let rows = app
        .db
        .fetch_all(
            "SELECT backup_storage_uuid, status, install_path, reserved_size FROM image_backup_storage_ref \
             WHERE image_uuid = $1 ORDER BY create_date, backup_storage_uuid",
            &[Val::from(uuid)],
        )
        .await?;
    let mut refs = Vec::new();
    for r in rows {
        refs.push(Ref { bs: r.try_get(0)?, status: r.try_get(1)?, path: r.try_get(2)?, reserved: r.try_get(3)? });
    }
    Ok((name, refs))
}

/// The backup storages an action applies to: those given (each must hold the image, in
/// `want` status when given), or all refs in `want` status.
fn choose<'a>(
    uuid: &str,
    name: &str,
    refs: &'a [Ref],
    given: &Option<Vec<String>>,
    want: Option<&str>,
) -> Result<Vec<&'a Ref>> {
    match given {
        Some(list) if !list.is_empty() => {
            let mut out = Vec::new();
            for b in list {
                let Some(r) = refs.iter().find(|r| &r.bs == b) else {
                    return Err(Error::argerr(format!(
                        "the image[uuid:{uuid}, name:{name}] is not on the backup storage[uuid:{b}]"
                    )));
                };
                if let Some(w) = want {
                    if r.status != w {
                        return Err(Error::argerr(format!(
                            "the image[uuid:{uuid}, name:{name}]'s status[{}] is not Deleted on the backup storage[uuid:{b}]",
                            r.status
                        )));
                    }
                }
                out.push(r);
            }
            Ok(out)
        }
        _ => {
            let out: Vec<&Ref> = refs.iter().filter(|r| want.is_none_or(|w| r.status == w)).collect();
            if out.is_empty() && want.is_some() {
                return Err(Error::operr(format!(
                    "the image[uuid:{uuid}, name:{name}] is not deleted on any backup storage"
                )));
            }
            Ok(out)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BsList {
    uuid: Option<String>,
    image_uuid: Option<String>,
    backup_storage_uuids: Option<Vec<String>>,
}

impl BsList {
    fn image(&self) -> String {
        self.image_uuid.clone().or_else(|| self.uuid.clone()).unwrap_or_default()
    }
}

async fn refresh_status(tx: &mut crate::db::WriteTx, uuid: &str, now: i64) -> Result<()> {
    // The image is Deleted when no backup storage holds it any more in another status.
    tx.execute(
        "UPDATE image SET status = CASE WHEN EXISTS (SELECT 1 FROM image_backup_storage_ref r \
         WHERE r.image_uuid = $1 AND r.status != 'Deleted') THEN 'Ready' ELSE 'Deleted' END, last_op_date = $2 WHERE uuid = $1",
        &[Val::from(uuid), Val::I(now)],
    )
    .await?;
    Ok(())
}

async fn delete_image(app: App, msg: Msg) -> Result<Reply> {
    let req: BsList = msg.parse()?;
    let uuid = req.image();
    let (name, refs) = image_refs(&app, &uuid).await?;
    if refs.iter().any(|r| r.status == "Downloading") {
        return Err(Error::operr(format!(
            "the image[uuid:{uuid}, name:{name}] is being downloaded, it cannot be deleted now"
        )));
    }
    let chosen = choose(&uuid, &name, &refs, &req.backup_storage_uuids, None)?;
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    for r in chosen {
        tx.execute(
            "UPDATE image_backup_storage_ref SET status = 'Deleted', last_op_date = $1 WHERE image_uuid = $2 AND backup_storage_uuid = $3",
            &[Val::I(now), Val::from(uuid.as_str()), Val::from(r.bs.as_str())],
        )
        .await?;
    }
    refresh_status(&mut tx, &uuid, now).await?;
    tx.commit().await?;
    Ok(Reply::empty())
}

async fn recover_image(app: App, msg: Msg) -> Result<Reply> {
    let req: BsList = msg.parse()?;
    let uuid = req.image();
    let (name, refs) = image_refs(&app, &uuid).await?;
    let chosen = choose(&uuid, &name, &refs, &req.backup_storage_uuids, Some("Deleted"))?;
    let now = now_ms();
    let mut tx = app.db.begin_write().await?;
    for r in chosen {
        tx.execute(
            "UPDATE image_backup_storage_ref SET status = 'Ready', last_op_date = $1 WHERE image_uuid = $2 AND backup_storage_uuid = $3",
            &[Val::I(now), Val::from(uuid.as_str()), Val::from(r.bs.as_str())],
        )
        .await?;
    }
    refresh_status(&mut tx, &uuid, now).await?;
    tx.commit().await?;
    reply(&app, &uuid).await
}

async fn expunge_image(app: App, msg: Msg) -> Result<Reply> {
    let req: BsList = msg.parse()?;
    let uuid = req.image();
    let (name, refs) = image_refs(&app, &uuid).await?;
    let chosen = choose(&uuid, &name, &refs, &req.backup_storage_uuids, Some("Deleted"))?;
    let mut tx = app.db.begin_write().await?;
    for r in &chosen {
        let n = tx
            .execute(
                "DELETE FROM image_backup_storage_ref WHERE image_uuid = $1 AND backup_storage_uuid = $2 AND status = 'Deleted'",
                &[Val::from(uuid.as_str()), Val::from(r.bs.as_str())],
            )
            .await?;
        if n == 1 {
            tx.execute(
                "UPDATE backup_storage SET available_capacity = available_capacity + $1 WHERE uuid = $2",
                &[Val::I(r.reserved), Val::from(r.bs.as_str())],
            )
            .await?;
        }
    }
    let left = tx
        .fetch_optional("SELECT 1 FROM image_backup_storage_ref WHERE image_uuid = $1", &[Val::from(uuid.as_str())])
        .await?;
    if left.is_none() {
        tx.execute("DELETE FROM image WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
        super::disown(&mut tx, &uuid).await?;
    }
    tx.commit().await?;
    // Files go after the rows: a crash in between leaves a file, never a row without one.
    for r in &chosen {
        if let Some(p) = &r.path {
            let p = Path::new(p);
            if p.is_absolute() {
                let _ = tokio::fs::remove_file(p).await;
                if let Some(dir) = p.parent() {
                    let _ = tokio::fs::remove_dir(dir).await;
                }
            }
        }
    }
    Ok(Reply::empty())
}

async fn get_task_progress(app: App, msg: Msg) -> Result<Reply> {
    let api_id = msg.str("apiId").unwrap_or_default().to_string();
    let rows = app
        .db
        .fetch_all(
            "SELECT uuid, task_name, type, content, time FROM task_progress WHERE api_id = $1 ORDER BY time DESC",
            &[Val::from(api_id.as_str())],
        )
        .await?;
    let mut invs = Vec::new();
    let mut schema = Map::new();
    for (i, r) in rows.iter().enumerate() {
        let task: String = r.try_get(0)?;
        let name: String = r.try_get(1)?;
        let ty: String = r.try_get(2)?;
        let content: Option<String> = r.try_get(3)?;
        let time: i64 = r.try_get(4)?;
        invs.push(json!({"taskUuid": task, "taskName": name, "type": ty, "content": content, "time": time}));
        schema
            .insert(format!("inventories[{i}]"), Value::from("org.zstack.header.core.progress.TaskProgressInventory"));
    }
    let mut body = Map::new();
    body.insert("inventories".into(), Value::Array(invs));
    Ok(Reply { body, schema })
}

pub static APIS: &[ApiDef] = &[
    ApiDef::create("AddImage", "/images")
        .timeout(72 * HOURS)
        .params(&[
            Param::str("name").required().max(255),
            Param::str("description").max(2048),
            Param::str("url").required().max(1024),
            Param::str("mediaType").values(&["RootVolumeTemplate", "ISO", "DataVolumeTemplate"]),
            Param::str("guestOsType").max(255),
            Param::str("architecture").max(32).values(&["x86_64", "aarch64", "mips64el", "loongarch64"]),
            Param::bool("system"),
            Param::str("format"),
            Param::str("platform").values(&["Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio"]),
            Param::list("backupStorageUuids").required().non_empty().resource(&BACKUP_STORAGE),
            Param::str("type"),
            Param::bool("virtio"),
        ])
        .handler(|a, m| boxed(add_image(a, m))),
    ApiDef::query("QueryImage", "/images", &IMAGE).optional_paths(&["/images/{uuid}"]),
    ApiDef::action("UpdateImage", "/images/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&IMAGE),
            Param::str("name").max(255),
            Param::str("description").max(2048),
            Param::str("guestOsType").max(255),
            Param::str("mediaType").max(255).values(&["RootVolumeTemplate", "DataVolumeTemplate", "ISO"]),
            Param::str("format").max(255).values(&["raw", "qcow2", "iso"]),
            Param::bool("system"),
            Param::str("platform").values(&["Linux", "Windows", "Other", "Paravirtualization", "WindowsVirtio"]),
            Param::str("architecture").max(32).values(&["x86_64", "aarch64", "mips64el", "loongarch64"]),
            Param::bool("virtio"),
        ])
        .handler(|a, m| boxed(update_image(a, m))),
    ApiDef::action("ChangeImageState", "/images/{uuid}/actions")
        .params(&[
            Param::str("uuid").required().resource(&IMAGE),
            Param::str("stateEvent").required().values(&["enable", "disable"]),
        ])
        .handler(|a, m| boxed(super::change_state(a, m, &IMAGE, super::enable_disable))),
    ApiDef::delete("DeleteImage", "/images/{uuid}")
        .params(&[
            Param::str("uuid").required().resource(&IMAGE).success_if_missing(),
            Param::list("backupStorageUuids").non_empty().resource(&BACKUP_STORAGE),
            Param::str("deleteMode").values(&["Permissive", "Enforcing"]),
        ])
        .handler(|a, m| boxed(delete_image(a, m))),
    ApiDef::action("ExpungeImage", "/images/{imageUuid}/actions")
        .params(&[
            Param::str("imageUuid").required().resource(&IMAGE),
            Param::list("backupStorageUuids").non_empty().resource(&BACKUP_STORAGE),
        ])
        .handler(|a, m| boxed(expunge_image(a, m))),
    ApiDef::action("RecoverImage", "/images/{imageUuid}/actions")
        .params(&[Param::str("imageUuid").required().resource(&IMAGE), Param::list("backupStorageUuids")])
        .handler(|a, m| boxed(recover_image(a, m))),
    ApiDef::get("GetTaskProgress", "/task-progresses/{apiId}")
        .params(&[Param::str("apiId"), Param::bool("all")])
        .handler(|a, m| boxed(get_task_progress(a, m))),
];
