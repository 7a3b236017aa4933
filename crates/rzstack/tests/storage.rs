//! Storage: primary storage, backup storage, images (real copies checked with qemu-img),
//! data volumes and snapshots.
mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

/// A temporary directory whose path has no hidden component (upstream refuses image paths
/// under hidden directories, and the default temp dirs are `.tmpXXXX`).
fn visible_tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rzstor").tempdir().expect("tempdir")
}

fn qemu_img(args: &[&str]) {
    let st = Command::new("qemu-img").args(args).status().expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

fn md5_of(p: &Path) -> String {
    let out = Command::new("md5sum").arg(p).output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[tokio::test]
async fn primary_storage_types_and_rules() {
    let s_ = Server::start().await;
    let srv = &s_;
    let zone = srv.create_zone("z1").await;
    let zu = s(&zone["uuid"]).to_string();
    let dir = visible_tempdir();
    let ps_dir = dir.path().join("ps1");
    let url = ps_dir.display().to_string();

    let r = srv
        .ok(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "local", "url": url, "zoneUuid": zu, "description": "d"}})),
        )
        .await;
    let ps = &r["inventory"];
    assert_eq!(ps["type"], "LocalStorage");
    assert_eq!(ps["state"], "Enabled");
    assert_eq!(ps["status"], "Connected");
    assert_eq!(ps["url"], url.as_str());
    assert_eq!(ps["zoneUuid"], zu.as_str());
    assert_eq!(ps["attachedClusterUuids"], json!([]));
    assert!(ps_dir.is_dir(), "the local storage directory is created");
    let total = ps["totalCapacity"].as_i64().unwrap();
    let avail = ps["availableCapacity"].as_i64().unwrap();
    assert!(total > 0 && avail > 0 && avail <= total, "{ps}");
    assert_eq!(ps["totalPhysicalCapacity"], total);
    assert!(ps["createDate"].is_string());
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.storage.primary.PrimaryStorageInventory");
    let ps_uuid = s(&ps["uuid"]).to_string();

    // query by uuid and by condition, with the schema map
    let q = srv.get(&format!("/primary-storage/{ps_uuid}")).await;
    assert_eq!(q.body["inventories"][0]["name"], "local");
    assert_eq!(q.body["schema"]["inventories[0]"], "org.zstack.header.storage.primary.PrimaryStorageInventory");
    assert_eq!(srv.query("/primary-storage?q=type=LocalStorage").await.len(), 1);
    assert_eq!(srv.query("/primary-storage?q=attachedClusterUuids=nope").await.len(), 0);

    // bad inputs: relative url, forbidden folder, missing zone, unknown zone
    let e = srv
        .fails(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "x", "url": "rel/dir", "zoneUuid": zu}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "the url[rel/dir] is not an absolute path starting with '/'");
    let e = srv
        .fails(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "x", "url": "/proc/x", "zoneUuid": zu}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "the url contains an invalid folder[/dev or /proc or /sys]");
    let e = srv
        .fails("POST", "/primary-storage/local-storage", Some(json!({"params": {"name": "x", "url": "/data"}})))
        .await;
    assert_error(
        &e,
        "SYS.1007",
        "field[zoneUuid] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
    );
    let e = srv
        .fails(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "x", "url": "/data", "zoneUuid": "0123456789abcdef0123456789abcdef"}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1003",
        "invalid field[zoneUuid], resource[uuid:0123456789abcdef0123456789abcdef, type:ZoneVO] not found",
    );
    assert_eq!(srv.query("/primary-storage").await.len(), 1, "refused adds left nothing");

    // NFS: recorded with zero capacity until a host mounts it; one url per zone
    let nfs = srv
        .ok(
            "POST",
            "/primary-storage/nfs",
            Some(json!({"params": {"name": "nfs", "url": "10.0.0.5:/export/ps", "zoneUuid": zu}})),
        )
        .await;
    assert_eq!(nfs["inventory"]["type"], "NFS");
    assert_eq!(nfs["inventory"]["totalCapacity"], 0);
    let e = srv
        .fails(
            "POST",
            "/primary-storage/nfs",
            Some(json!({"params": {"name": "nfs2", "url": "10.0.0.5:/export/ps", "zoneUuid": zu}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "there has been a nfs primary storage having url as 10.0.0.5:/export/ps in zone");
    let e = srv
        .fails(
            "POST",
            "/primary-storage/nfs",
            Some(json!({"params": {"name": "nfs3", "url": "no-colon", "zoneUuid": zu}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "is not a NFS export of the form host:/path");

    // simulator: capacities as given
    let sim = srv
        .ok("POST", "/primary-storage/simulators", Some(json!({"params": {"name": "sim", "url": "/sim", "zoneUuid": zu, "totalCapacity": 1000, "availableCapacity": 900}})))
        .await;
    assert_eq!(sim["inventory"]["type"], "SimulatorPrimaryStorage");
    assert_eq!(sim["inventory"]["totalCapacity"], 1000);
    assert_eq!(sim["inventory"]["availableCapacity"], 900);

    // update, change state
    let u = srv
        .ok(
            "PUT",
            &format!("/primary-storage/{ps_uuid}/actions"),
            Some(json!({"updatePrimaryStorage": {"name": "renamed", "description": "new"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "renamed");
    assert_eq!(u["inventory"]["description"], "new");
    let e = srv
        .fails(
            "PUT",
            &format!("/primary-storage/{ps_uuid}/actions"),
            Some(json!({"updatePrimaryStorage": {"name": "x".repeat(256)}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "exceeds max length of string. expected was <= 255, actual was 256");
    let c = srv
        .ok(
            "PUT",
            &format!("/primary-storage/{ps_uuid}/actions"),
            Some(json!({"changePrimaryStorageState": {"stateEvent": "maintain"}})),
        )
        .await;
    assert_eq!(c["inventory"]["state"], "Maintenance");
    let e = srv
        .fails(
            "PUT",
            &format!("/primary-storage/{ps_uuid}/actions"),
            Some(json!({"changePrimaryStorageState": {"stateEvent": "explode"}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "valid value for field[stateEvent]");
    assert_eq!(srv.query(&format!("/primary-storage/{ps_uuid}")).await[0]["state"], "Maintenance");

    // delete (not attached anywhere), then a second delete of the same uuid succeeds silently
    srv.ok("DELETE", &format!("/primary-storage/{ps_uuid}"), None).await;
    assert!(srv.query(&format!("/primary-storage/{ps_uuid}")).await.is_empty());
    srv.ok("DELETE", &format!("/primary-storage/{ps_uuid}"), None).await;
    assert_eq!(srv.query("/primary-storage").await.len(), 2);
}

async fn add_local_bs(srv: &Server, name: &str, url: &str) -> Value {
    srv.ok(
        "POST",
        "/backup-storage/sftp",
        Some(json!({"params": {"name": name, "url": url, "hostname": "localhost", "username": "root", "password": "p", "sshPort": 22}})),
    )
    .await["inventory"]
        .clone()
}

#[tokio::test]
async fn backup_storage_rules() {
    let srv = Server::start().await;
    let zone = srv.create_zone("z1").await;
    let zu = s(&zone["uuid"]).to_string();
    let dir = visible_tempdir();
    let url = dir.path().join("bs").display().to_string();

    let bs = add_local_bs(&srv, "bs1", &url).await;
    assert_eq!(bs["type"], "SftpBackupStorage");
    assert_eq!(bs["hostname"], "localhost");
    assert_eq!(bs["username"], "root");
    assert_eq!(bs["sshPort"], 22);
    assert_eq!(bs["status"], "Connected");
    assert_eq!(bs["attachedZoneUuids"], json!([]));
    assert!(bs.get("password").is_none(), "the password is never shown");
    assert!(bs["totalCapacity"].as_i64().unwrap() > 0);
    assert!(dir.path().join("bs").is_dir());
    let bu = s(&bs["uuid"]).to_string();
    let q = srv.get(&format!("/backup-storage/{bu}")).await;
    assert_eq!(q.body["schema"]["inventories[0]"], "org.zstack.storage.backup.sftp.SftpBackupStorageInventory");

    // same hostname twice, a remote host, a bad hostname, a missing password
    let e = srv
        .fails(
            "POST",
            "/backup-storage/sftp",
            Some(
                json!({"params": {"name": "b", "url": url, "hostname": "localhost", "username": "u", "password": "p"}}),
            ),
        )
        .await;
    assert_error(
        &e,
        "SYS.1006",
        "duplicate backup storage. There has been a sftp backup storage[hostname:localhost] existing",
    );
    let e = srv
        .fails("POST", "/backup-storage/image-store", Some(json!({"params": {"name": "b", "url": "/bs", "hostname": "192.0.2.10", "username": "u", "password": "p"}})))
        .await;
    assert_error(&e, "SYS.1006", "needs the host agent");
    let e = srv
        .fails("POST", "/backup-storage/sftp", Some(json!({"params": {"name": "b", "url": "/bs", "hostname": "bad_host!", "username": "u", "password": "p"}})))
        .await;
    assert_error(&e, "SYS.1007", "hostname[bad_host!] is neither an IPv4 address nor a valid hostname");
    let e = srv
        .fails(
            "POST",
            "/backup-storage/sftp",
            Some(json!({"params": {"name": "b", "url": "/bs", "hostname": "localhost", "username": "u"}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "field[password]");
    let e = srv
        .fails("POST", "/backup-storage/sftp", Some(json!({"params": {"name": "b", "url": "/bs", "hostname": "127.0.0.1", "username": "u", "password": "p", "sshPort": 70000}})))
        .await;
    assert_error(&e, "SYS.1007", "field[sshPort] must be in range of [1, 65535]");
    assert_eq!(srv.query("/backup-storage").await.len(), 1);

    // image store on this machine's loopback address; simulator
    let is = srv
        .ok(
            "POST",
            "/backup-storage/image-store",
            Some(json!({"params": {"name": "is", "url": dir.path().join("is").display().to_string(), "hostname": "127.0.0.1", "username": "u", "password": "p"}})),
        )
        .await;
    assert_eq!(is["inventory"]["type"], "ImageStoreBackupStorage");
    assert_eq!(is["schema"]["inventory"], "org.zstack.storage.backup.imagestore.ImageStoreBackupStorageInventory");
    let sim = srv
        .ok(
            "POST",
            "/backup-storage/simulators",
            Some(json!({"params": {"name": "sim", "url": "/sim", "totalCapacity": 100, "availableCapacity": 50}})),
        )
        .await;
    assert_eq!(sim["inventory"]["type"], "SimulatorBackupStorage");
    assert_eq!(sim["inventory"]["availableCapacity"], 50);
    assert!(sim["inventory"].get("hostname").is_none());

    // attach / detach zone
    let a = srv.ok("POST", &format!("/zones/{zu}/backup-storage/{bu}"), None).await;
    assert_eq!(a["inventory"]["attachedZoneUuids"], json!([zu]));
    let e = srv.fails("POST", &format!("/zones/{zu}/backup-storage/{bu}"), None).await;
    assert_error(&e, "SYS.1006", &format!("backup storage[uuid:{bu}] has been attached to zone[uuid:{zu}]"));
    assert_eq!(srv.query(&format!("/backup-storage?q=attachedZoneUuids={zu}")).await.len(), 1);
    let e = srv.fails("POST", &format!("/zones/0123456789abcdef0123456789abcdef/backup-storage/{bu}"), None).await;
    assert_error(&e, "SYS.1003", "type:ZoneVO] not found");
    let d = srv.ok("DELETE", &format!("/zones/{zu}/backup-storage/{bu}"), None).await;
    assert_eq!(d["inventory"]["attachedZoneUuids"], json!([]));
    let e = srv.fails("DELETE", &format!("/zones/{zu}/backup-storage/{bu}"), None).await;
    assert_error(&e, "SYS.1006", &format!("backup storage[uuid:{bu}] has not been attached to zone[uuid:{zu}]"));

    // update, state, delete
    let u = srv
        .ok("PUT", &format!("/backup-storage/{bu}/actions"), Some(json!({"updateBackupStorage": {"name": "bs1b"}})))
        .await;
    assert_eq!(u["inventory"]["name"], "bs1b");
    let c = srv
        .ok(
            "PUT",
            &format!("/backup-storage/{bu}/actions"),
            Some(json!({"changeBackupStorageState": {"stateEvent": "disable"}})),
        )
        .await;
    assert_eq!(c["inventory"]["state"], "Disabled");
    srv.ok("DELETE", &format!("/backup-storage/{bu}"), None).await;
    assert!(srv.query(&format!("/backup-storage/{bu}")).await.is_empty());
}

#[tokio::test]
async fn images_are_really_copied_and_checked() {
    let srv = Server::start().await;
    let dir = visible_tempdir();
    let bs_url = dir.path().join("bs").display().to_string();
    let bs = add_local_bs(&srv, "bs", &bs_url).await;
    let bu = s(&bs["uuid"]).to_string();
    let bs_avail = bs["availableCapacity"].as_i64().unwrap();
    let src_dir = dir.path().join("src");
    std::fs::create_dir_all(&src_dir).unwrap();
    let qcow = src_dir.join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "64M"]);
    let raw = src_dir.join("r.raw");
    qemu_img(&["create", "-q", "-f", "raw", raw.to_str().unwrap(), "1M"]);
    let qcow_len = std::fs::metadata(&qcow).unwrap().len() as i64;
    let qcow_md5 = md5_of(&qcow);

    // file:// url
    let r = srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "img1", "url": format!("file://{}", qcow.display()), "format": "qcow2", "backupStorageUuids": [bu], "platform": "Linux"}})),
        )
        .await;
    let img = &r["inventory"];
    assert_eq!(img["status"], "Ready");
    assert_eq!(img["state"], "Enabled");
    assert_eq!(img["size"], 64 * 1024 * 1024);
    assert_eq!(img["actualSize"], qcow_len);
    assert_eq!(img["md5Sum"], qcow_md5.as_str());
    assert_eq!(img["format"], "qcow2");
    assert_eq!(img["mediaType"], "RootVolumeTemplate");
    assert_eq!(img["type"], "zstack");
    assert_eq!(img["architecture"], "x86_64");
    assert_eq!(img["virtio"], true);
    assert_eq!(img["system"], false);
    let refs = img["backupStorageRefs"].as_array().unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0]["status"], "Ready");
    assert_eq!(refs[0]["backupStorageUuid"], bu.as_str());
    let install = s(&refs[0]["installPath"]).to_string();
    assert!(install.starts_with(&format!("{bs_url}/rootVolumeTemplates/acct-")), "{install}");
    assert!(install.ends_with("/t.template"), "{install}");
    assert_eq!(md5_of(Path::new(&install)), qcow_md5, "the copy is identical");
    assert_eq!(r["schema"]["inventory.backupStorageRefs[0]"], "org.zstack.header.image.ImageBackupStorageRefInventory");
    let iu = s(&img["uuid"]).to_string();
    let bs_now = srv.query(&format!("/backup-storage/{bu}")).await[0]["availableCapacity"].as_i64().unwrap();
    assert_eq!(bs_now, bs_avail - qcow_len, "the image's size is accounted on the backup storage");

    // absolute path, ISO forces the iso format (qemu-img sees raw)
    let r2 = srv
        .ok("POST", "/images", Some(json!({"params": {"name": "iso", "url": raw.display().to_string(), "mediaType": "ISO", "backupStorageUuids": [bu]}})))
        .await;
    assert_eq!(r2["inventory"]["url"], format!("file://{}", raw.display()));
    assert_eq!(r2["inventory"]["format"], "iso");
    assert_eq!(r2["inventory"]["size"], 1024 * 1024);
    let iso_path = s(&r2["inventory"]["backupStorageRefs"][0]["installPath"]).to_string();
    assert!(iso_path.contains("/dataVolumeTemplates/") && iso_path.ends_with("/r.iso"), "{iso_path}");
    assert!(Path::new(&iso_path).is_file());

    // progress of the finished job is recorded
    let resp = srv
        .request(
            "POST",
            "/images",
            Some(json!({"params": {"name": "img3", "url": qcow.display().to_string(), "format": "qcow2", "backupStorageUuids": [bu]}})),
            Some(&srv.session),
            &[],
        )
        .await;
    let loc = s(&resp.body["location"]).to_string();
    let job = loc.rsplit('/').next().unwrap().to_string();
    let done = srv.poll(&loc).await;
    assert_eq!(done.status, 200, "{}", done.text);
    let p = srv.get(&format!("/task-progresses/{job}")).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["inventories"][0]["content"], "100");
    assert_eq!(p.body["inventories"][0]["type"], "Progress");
    assert_eq!(p.body["inventories"][0]["taskUuid"], job.as_str());
    let img3 = s(&done.body["inventory"]["uuid"]).to_string();

    // wrong format: fails, and leaves neither rows nor files behind
    let before_files = files_under(Path::new(&bs_url)).len();
    let before_images = srv.query("/images").await.len();
    let e = srv
        .fails("POST", "/images", Some(json!({"params": {"name": "bad", "url": raw.display().to_string(), "format": "qcow2", "backupStorageUuids": [bu]}})))
        .await;
    assert_error(&e, "SYS.1006", "is in format[raw], but its format was given as [qcow2]");
    assert_eq!(files_under(Path::new(&bs_url)).len(), before_files);
    assert_eq!(srv.query("/images").await.len(), before_images);
    assert_eq!(srv.query("/images?q=name=bad").await.len(), 0);

    // unreachable URL (a closed port on loopback): fails cleanly
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let e = srv
        .fails("POST", "/images", Some(json!({"params": {"name": "far", "url": format!("http://127.0.0.1:{port}/x.qcow2"), "format": "qcow2", "backupStorageUuids": [bu]}})))
        .await;
    assert_error(&e, "SYS.1015", "cannot download the image from url");
    assert_eq!(files_under(Path::new(&bs_url)).len(), before_files);
    assert_eq!(srv.query("/images").await.len(), before_images);

    // bad inputs
    let e = srv
        .fails(
            "POST",
            "/images",
            Some(json!({"params": {"name": "n", "url": qcow.display().to_string(), "backupStorageUuids": [bu]}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "unknown format[null]");
    let e = srv
        .fails(
            "POST",
            "/images",
            Some(json!({"params": {"name": "n", "url": "gopher://x", "format": "raw", "backupStorageUuids": [bu]}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "url must starts with 'file:///', 'http://', 'https://'");
    let e = srv
        .fails(
            "POST",
            "/images",
            Some(json!({"params": {"name": "n", "url": "/etc/passwd", "format": "raw", "backupStorageUuids": [bu]}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "image path [/etc/passwd] is in black list");
    let e = srv
        .fails(
            "POST",
            "/images",
            Some(json!({"params": {"name": "n", "url": "/x", "format": "raw", "backupStorageUuids": []}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "field[backupStorageUuids] must be a nonempty list");
    let e = srv
        .fails("POST", "/images", Some(json!({"params": {"name": "n", "url": "/x", "format": "raw", "backupStorageUuids": ["0123456789abcdef0123456789abcdef"]}})))
        .await;
    assert_error(&e, "SYS.1003", "type:BackupStorageVO] not found");
    let e = srv
        .fails("POST", "/images", Some(json!({"params": {"name": "n", "url": "/x", "format": "iso", "system": true, "backupStorageUuids": [bu]}})))
        .await;
    assert_error(&e, "SYS.1007", "ISO cannot be used as system image");
    assert_eq!(srv.query("/images").await.len(), before_images);

    // update, state, query by uuid
    let u = srv
        .ok(
            "PUT",
            &format!("/images/{iu}/actions"),
            Some(json!({"updateImage": {"name": "img1b", "guestOsType": "Linux"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "img1b");
    let c = srv
        .ok("PUT", &format!("/images/{iu}/actions"), Some(json!({"changeImageState": {"stateEvent": "disable"}})))
        .await;
    assert_eq!(c["inventory"]["state"], "Disabled");
    let q = srv.get(&format!("/images/{iu}")).await;
    assert_eq!(q.body["schema"]["inventories[0]"], "org.zstack.header.image.ImageInventory");
    assert_eq!(
        q.body["schema"]["inventories[0].backupStorageRefs[0]"],
        "org.zstack.header.image.ImageBackupStorageRefInventory"
    );

    // delete (Delay policy) → Deleted; recover → Ready; expunge needs Deleted
    let e = srv.fails("PUT", &format!("/images/{iu}/actions"), Some(json!({"expungeImage": {}}))).await;
    assert_error(&e, "SYS.1006", "is not deleted on any backup storage");
    srv.ok("DELETE", &format!("/images/{iu}"), None).await;
    let d = srv.query(&format!("/images/{iu}")).await;
    assert_eq!(d[0]["status"], "Deleted");
    assert_eq!(d[0]["backupStorageRefs"][0]["status"], "Deleted");
    assert!(Path::new(&install).is_file(), "a deleted image keeps its file until expunged");
    let rec = srv.ok("PUT", &format!("/images/{iu}/actions"), Some(json!({"recoverImage": {}}))).await;
    assert_eq!(rec["inventory"]["status"], "Ready");
    srv.ok("DELETE", &format!("/images/{iu}"), None).await;
    srv.ok("PUT", &format!("/images/{iu}/actions"), Some(json!({"expungeImage": {}}))).await;
    assert!(srv.query(&format!("/images/{iu}")).await.is_empty());
    assert!(!Path::new(&install).exists(), "expunge removes the file");
    let bs_after = srv.query(&format!("/backup-storage/{bu}")).await[0]["availableCapacity"].as_i64().unwrap();
    let img3_size = srv.query(&format!("/images/{img3}")).await[0]["actualSize"].as_i64().unwrap();
    let iso_size = srv.query("/images?q=name=iso").await[0]["actualSize"].as_i64().unwrap();
    assert_eq!(bs_after, bs_avail - img3_size - iso_size, "expunge gives the capacity back");
}

#[tokio::test]
async fn volumes_capacity_and_snapshots() {
    let srv = Server::start().await;
    let zone = srv.create_zone("z1").await;
    let zu = s(&zone["uuid"]).to_string();
    let ps = srv
        .ok("POST", "/primary-storage/simulators", Some(json!({"params": {"name": "sim", "url": "/sim", "zoneUuid": zu, "totalCapacity": 10000, "availableCapacity": 10000}})))
        .await["inventory"]
        .clone();
    let pu = s(&ps["uuid"]).to_string();
    let avail = |v: &Vec<Value>| v[0]["availableCapacity"].as_i64().unwrap();

    // a volume on the PS reserves its size
    let v = srv
        .ok(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "d1", "diskSize": 4000, "primaryStorageUuid": pu}})),
        )
        .await;
    let vol = &v["inventory"];
    assert_eq!(vol["type"], "Data");
    assert_eq!(vol["status"], "Ready");
    assert_eq!(vol["state"], "Enabled");
    assert_eq!(vol["size"], 4000);
    assert_eq!(vol["primaryStorageUuid"], pu.as_str());
    assert_eq!(vol["isShareable"], false);
    let vu = s(&vol["uuid"]).to_string();
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 6000);

    // more than is left: refused, nothing reserved
    let e = srv
        .fails(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "big", "diskSize": 7000, "primaryStorageUuid": pu}})),
        )
        .await;
    assert_error(&e, "SYS.1006", "cannot find available primary storage");
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 6000);
    assert_eq!(srv.query("/volumes").await.len(), 1);

    // without a PS: NotInstantiated, nothing reserved
    let n = srv.ok("POST", "/volumes/data", Some(json!({"params": {"name": "d2", "diskSize": 100}}))).await;
    assert_eq!(n["inventory"]["status"], "NotInstantiated");
    let nu = s(&n["inventory"]["uuid"]).to_string();
    let e = srv.fails("POST", "/volumes/data", Some(json!({"params": {"name": "neg", "diskSize": -1}}))).await;
    assert_error(&e, "SYS.1007", "unexpected disk size settings");
    let e = srv.fails("POST", "/volumes/data", Some(json!({"params": {"diskSize": 1}}))).await;
    assert_error(&e, "SYS.1007", "field[name]");
    let e = srv.fails("POST", "/volumes/data", Some(json!({"params": {"name": "x", "diskSize": 1, "primaryStorageUuid": "0123456789abcdef0123456789abcdef"}}))).await;
    assert_error(&e, "SYS.1003", "type:PrimaryStorageVO] not found");

    // snapshots: only on Ready volumes; a chain in one tree
    let e = srv.fails("POST", &format!("/volumes/{nu}/volume-snapshots"), Some(json!({"params": {"name": "s"}}))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("volume[uuid:{nu}] is not in status Ready, current is NotInstantiated, can't create snapshot"),
    );
    let s1 = srv
        .ok(
            "POST",
            &format!("/volumes/{vu}/volume-snapshots"),
            Some(json!({"params": {"name": "s1", "description": "first"}})),
        )
        .await;
    let s1 = &s1["inventory"];
    assert_eq!(s1["volumeUuid"], vu.as_str());
    assert_eq!(s1["latest"], true);
    assert_eq!(s1["distance"], 0);
    assert_eq!(s1["status"], "Ready");
    assert_eq!(s1["volumeType"], "Data");
    assert_eq!(s1["primaryStorageUuid"], pu.as_str());
    let s2 = srv.ok("POST", &format!("/volumes/{vu}/volume-snapshots"), Some(json!({"params": {"name": "s2"}}))).await
        ["inventory"]
        .clone();
    assert_eq!(s2["parentUuid"], s1["uuid"]);
    assert_eq!(s2["treeUuid"], s1["treeUuid"]);
    assert_eq!(s2["distance"], 1);
    let snaps = srv.query(&format!("/volume-snapshots?q=volumeUuid={vu}&sort=%2Bdistance")).await;
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["latest"], false);
    let q = srv.get(&format!("/volume-snapshots/{}", s(&s2["uuid"]))).await;
    assert_eq!(q.body["schema"]["inventories[0]"], "org.zstack.header.storage.snapshot.VolumeSnapshotInventory");
    srv.ok("DELETE", &format!("/volume-snapshots/{}", s(&s2["uuid"])), None).await;
    let left = srv.query(&format!("/volume-snapshots?q=volumeUuid={vu}")).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["latest"], true, "the parent becomes the latest again");

    // delete → Deleted (capacity kept), expunge → gone and capacity back
    let e = srv.fails("PUT", &format!("/volumes/{vu}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    assert_error(&e, "SYS.1006", &format!("the volume[uuid:{vu}, name:d1] is not deleted yet, can't expunge it"));
    srv.ok("DELETE", &format!("/volumes/{vu}"), None).await;
    assert_eq!(srv.query(&format!("/volumes/{vu}")).await[0]["status"], "Deleted");
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 6000);
    let e = srv.fails("DELETE", &format!("/volumes/{vu}"), None).await;
    assert_error(&e, "SYS.1006", &format!("volume[uuid:{vu}] is already in status of deleted"));
    srv.ok("PUT", &format!("/volumes/{vu}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    assert!(srv.query(&format!("/volumes/{vu}")).await.is_empty());
    assert!(srv.query(&format!("/volume-snapshots?q=volumeUuid={vu}")).await.is_empty());
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 10000);
    let q = srv.get(&format!("/volumes/{nu}")).await;
    assert_eq!(q.body["schema"]["inventories[0]"], "org.zstack.header.volume.VolumeInventory");
}

#[tokio::test]
async fn images_download_over_http() {
    let srv = Server::start().await;
    let dir = visible_tempdir();
    let bs_url = dir.path().join("bs").display().to_string();
    let bs = add_local_bs(&srv, "bs", &bs_url).await;
    let bu = s(&bs["uuid"]).to_string();
    let qcow = dir.path().join("h.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "32M"]);
    let bytes = std::fs::read(&qcow).unwrap();
    let md5 = md5_of(&qcow);

    // A small HTTP server on loopback serving the image.
    let body = bytes.clone();
    let app =
        axum::Router::new().route("/images/h.qcow2", axum::routing::get(move || std::future::ready(body.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let r = srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "web", "url": format!("http://{addr}/images/h.qcow2"), "format": "qcow2", "backupStorageUuids": [bu]}})),
        )
        .await;
    let img = &r["inventory"];
    assert_eq!(img["status"], "Ready");
    assert_eq!(img["size"], 32 * 1024 * 1024);
    assert_eq!(img["actualSize"], bytes.len() as i64);
    assert_eq!(img["md5Sum"], md5.as_str());
    let install = s(&img["backupStorageRefs"][0]["installPath"]).to_string();
    assert!(install.ends_with("/h.template"), "{install}");
    assert_eq!(std::fs::read(&install).unwrap(), bytes, "the downloaded copy is identical");

    // a missing file on the server: the job fails and leaves nothing
    let before = files_under(Path::new(&bs_url)).len();
    let e = srv
        .fails(
            "POST",
            "/images",
            Some(json!({"params": {"name": "gone", "url": format!("http://{addr}/images/none.qcow2"), "format": "qcow2", "backupStorageUuids": [bu]}})),
        )
        .await;
    assert_error(&e, "SYS.1015", "the server answered HTTP 404");
    assert_eq!(files_under(Path::new(&bs_url)).len(), before);
    assert_eq!(srv.query("/images").await.len(), 1);
}

async fn create_cluster(srv: &Server, zone: &str, name: &str) -> String {
    let c = srv
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": zone, "name": name, "hypervisorType": "Simulator"}})),
        )
        .await;
    s(&c["inventory"]["uuid"]).to_string()
}

async fn add_sim_ps(srv: &Server, zone: &str, name: &str, url: &str, capacity: i64) -> String {
    let r = srv
        .ok(
            "POST",
            "/primary-storage/simulators",
            Some(json!({"params": {"name": name, "url": url, "zoneUuid": zone,
                "totalCapacity": capacity, "availableCapacity": capacity}})),
        )
        .await;
    s(&r["inventory"]["uuid"]).to_string()
}

/// The clusters a primary storage is attached to, as its inventory lists them.
async fn attached(srv: &Server, ps: &str) -> Value {
    let q = srv.query(&format!("/primary-storage/{ps}")).await;
    assert_eq!(q.len(), 1, "primary storage {ps} exists");
    q[0]["attachedClusterUuids"].clone()
}

fn sorted(mut v: Vec<&str>) -> Value {
    v.sort();
    json!(v)
}

#[tokio::test]
async fn primary_storage_attach_detach_clusters() {
    let srv = Server::start().await;
    let z1 = s(&srv.create_zone("z1").await["uuid"]).to_string();
    let z2 = s(&srv.create_zone("z2").await["uuid"]).to_string();
    let c1 = create_cluster(&srv, &z1, "c1").await;
    let c2 = create_cluster(&srv, &z1, "c2").await;
    let c3 = create_cluster(&srv, &z2, "c3").await;
    let p1 = add_sim_ps(&srv, &z1, "p1", "/sim/a", 1000).await;
    let p2 = add_sim_ps(&srv, &z1, "p2", "/sim/a", 1000).await;
    let p3 = add_sim_ps(&srv, &z1, "p3", "/sim/b", 1000).await;
    let missing = "0123456789abcdef0123456789abcdef";

    // attach (no body at all, as upstream allows): the inventory lists the cluster
    let r = srv.ok("POST", &format!("/clusters/{c1}/primary-storage/{p1}"), None).await;
    assert_eq!(r["inventory"]["uuid"], p1.as_str());
    assert_eq!(r["inventory"]["attachedClusterUuids"], json!([c1]));
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.storage.primary.PrimaryStorageInventory");
    // an empty params body works too
    let r = srv.ok("POST", &format!("/clusters/{c2}/primary-storage/{p1}"), Some(json!({"params": {}}))).await;
    assert_eq!(r["inventory"]["attachedClusterUuids"], sorted(vec![&c1, &c2]));
    let r = srv.ok("POST", &format!("/clusters/{c1}/primary-storage/{p3}"), None).await;
    assert_eq!(r["inventory"]["attachedClusterUuids"], json!([c1]));

    // query by attached cluster
    let q = srv.query(&format!("/primary-storage?q=attachedClusterUuids={c1}&sort=%2Bname")).await;
    let names: Vec<&str> = q.iter().map(|p| s(&p["name"])).collect();
    assert_eq!(names, vec!["p1", "p3"]);
    let q = srv.query(&format!("/primary-storage?q=attachedClusterUuids={c2}")).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["uuid"], p1.as_str());
    assert!(srv.query(&format!("/primary-storage?q=attachedClusterUuids={c3}")).await.is_empty());
    assert_eq!(attached(&srv, &p2).await, json!([]));

    // already attached: SYS.1006, nothing changed
    let e = srv.fails("POST", &format!("/clusters/{c1}/primary-storage/{p1}"), None).await;
    assert_error(&e, "SYS.1006", &format!("primary storage[uuid:{p1}] has been attached to cluster[uuid:{c1}]"));
    assert_eq!(attached(&srv, &p1).await, sorted(vec![&c1, &c2]));

    // a cluster of another zone: SYS.1007, nothing changed
    let e = srv.fails("POST", &format!("/clusters/{c3}/primary-storage/{p1}"), None).await;
    assert_error(
        &e,
        "SYS.1007",
        &format!("primary storage[uuid:{p1}] and cluster[uuid:{c3}] are not in the same zone"),
    );
    assert_eq!(attached(&srv, &p1).await, sorted(vec![&c1, &c2]));
    assert!(srv.query(&format!("/primary-storage?q=attachedClusterUuids={c3}")).await.is_empty());

    // a second storage with the same url in the same cluster: SYS.1007, nothing changed
    let e = srv.fails("POST", &format!("/clusters/{c1}/primary-storage/{p2}"), None).await;
    assert_error(&e, "SYS.1007", "url[/sim/a] has been occupied, it cannot be duplicate in same cluster");
    assert_eq!(attached(&srv, &p2).await, json!([]));

    // unknown cluster or storage: the parameter validator's SYS.1003, nothing changed
    let e = srv.fails("POST", &format!("/clusters/{missing}/primary-storage/{p2}"), None).await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[clusterUuid], resource[uuid:{missing}, type:ClusterVO] not found"),
    );
    let e = srv.fails("POST", &format!("/clusters/{c2}/primary-storage/{missing}"), None).await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[primaryStorageUuid], resource[uuid:{missing}, type:PrimaryStorageVO] not found"),
    );
    assert_eq!(attached(&srv, &p2).await, json!([]));
    assert_eq!(srv.query(&format!("/primary-storage?q=attachedClusterUuids={c2}")).await.len(), 1);

    // delete while attached: SYS.1006 naming every cluster, nothing changed
    let e = srv.fails("DELETE", &format!("/primary-storage/{p1}"), None).await;
    let mut cs = [c1.as_str(), c2.as_str()];
    cs.sort();
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "primary storage[uuid:{p1}] cannot be deleted for still being attached to cluster[uuid:{}, {}].",
            cs[0], cs[1]
        ),
    );
    assert_eq!(attached(&srv, &p1).await, sorted(vec![&c1, &c2]));

    // detach
    let d = srv.ok("DELETE", &format!("/clusters/{c1}/primary-storage/{p1}"), None).await;
    assert_eq!(d["inventory"]["attachedClusterUuids"], json!([c2]));
    assert_eq!(d["schema"]["inventory"], "org.zstack.header.storage.primary.PrimaryStorageInventory");
    let q = srv.query(&format!("/primary-storage?q=attachedClusterUuids={c1}")).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["uuid"], p3.as_str());

    // detach what is not attached: SYS.1007, nothing changed
    let e = srv.fails("DELETE", &format!("/clusters/{c1}/primary-storage/{p1}"), None).await;
    assert_error(
        &e,
        "SYS.1007",
        &format!("primary storage[uuid:{p1}] has not been attached to cluster[uuid:{c1}] yet"),
    );
    let e = srv.fails("DELETE", &format!("/clusters/{c3}/primary-storage/{p1}"), None).await;
    assert_error(
        &e,
        "SYS.1007",
        &format!("primary storage[uuid:{p1}] has not been attached to cluster[uuid:{c3}] yet"),
    );
    let e = srv.fails("DELETE", &format!("/clusters/{missing}/primary-storage/{p1}"), None).await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[clusterUuid], resource[uuid:{missing}, type:ClusterVO] not found"),
    );
    let e = srv.fails("DELETE", &format!("/clusters/{c2}/primary-storage/{missing}"), None).await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[primaryStorageUuid], resource[uuid:{missing}, type:PrimaryStorageVO] not found"),
    );
    assert_eq!(attached(&srv, &p1).await, json!([c2]));
    assert_eq!(attached(&srv, &p3).await, json!([c1]));

    // with the url free again in c1, p2 may join it
    let r = srv.ok("POST", &format!("/clusters/{c1}/primary-storage/{p2}"), None).await;
    assert_eq!(r["inventory"]["attachedClusterUuids"], json!([c1]));

    // once detached everywhere, the storage can be deleted
    let d = srv.ok("DELETE", &format!("/clusters/{c2}/primary-storage/{p1}"), None).await;
    assert_eq!(d["inventory"]["attachedClusterUuids"], json!([]));
    srv.ok("DELETE", &format!("/primary-storage/{p1}"), None).await;
    assert!(srv.query(&format!("/primary-storage/{p1}")).await.is_empty());
    assert!(srv.query(&format!("/primary-storage?q=attachedClusterUuids={c2}")).await.is_empty());

    // deleting a cluster detaches its storage (the storage stays)
    srv.ok("DELETE", &format!("/clusters/{c1}"), None).await;
    assert_eq!(attached(&srv, &p2).await, json!([]));
    assert_eq!(attached(&srv, &p3).await, json!([]));
}

#[tokio::test]
async fn data_volume_from_disk_offering() {
    let srv = Server::start().await;
    let zu = s(&srv.create_zone("z1").await["uuid"]).to_string();
    let pu = add_sim_ps(&srv, &zu, "sim", "/sim", 10000).await;
    let offering = |name: &str, size: i64| {
        let body = json!({"params": {"name": name, "diskSize": size}});
        let srv = &srv;
        async move { s(&srv.ok("POST", "/disk-offerings", Some(body)).await["inventory"]["uuid"]).to_string() }
    };
    let small = offering("small", 3000).await;
    let huge = offering("huge", 8000).await;
    let avail = |v: &Vec<Value>| v[0]["availableCapacity"].as_i64().unwrap();

    // the size comes from the offering (a diskSize given alongside is ignored, as upstream)
    let v = srv
        .ok(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "d1", "diskOfferingUuid": small, "diskSize": 5, "primaryStorageUuid": pu}})),
        )
        .await;
    let vol = &v["inventory"];
    assert_eq!(vol["size"], 3000);
    assert_eq!(vol["diskOfferingUuid"], small.as_str());
    assert_eq!(vol["primaryStorageUuid"], pu.as_str());
    assert_eq!(vol["status"], "Ready");
    assert_eq!(vol["type"], "Data");
    assert_eq!(v["schema"]["inventory"], "org.zstack.header.volume.VolumeInventory");
    let vu = s(&vol["uuid"]).to_string();
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 7000, "the offering's size is reserved");
    let q = srv.query(&format!("/volumes?q=diskOfferingUuid={small}")).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["uuid"], vu.as_str());

    // without a primary storage: NotInstantiated, nothing reserved
    let n = srv.ok("POST", "/volumes/data", Some(json!({"params": {"name": "d2", "diskOfferingUuid": small}}))).await;
    assert_eq!(n["inventory"]["size"], 3000);
    assert_eq!(n["inventory"]["status"], "NotInstantiated");
    assert!(n["inventory"].get("primaryStorageUuid").is_none() || n["inventory"]["primaryStorageUuid"].is_null());
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 7000);

    // an offering larger than what is left: refused, nothing reserved or created
    let e = srv
        .fails(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "d3", "diskOfferingUuid": huge, "primaryStorageUuid": pu}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1006",
        "cannot find available primary storage[state: Enabled, status: Connected, available capacity 8000 bytes]",
    );
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 7000);
    assert_eq!(srv.query("/volumes").await.len(), 2);

    // an unknown offering: the parameter validator's SYS.1003, nothing reserved or created
    let missing = "0123456789abcdef0123456789abcdef";
    let e = srv
        .fails(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "d4", "diskOfferingUuid": missing, "primaryStorageUuid": pu}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[diskOfferingUuid], resource[uuid:{missing}, type:DiskOfferingVO] not found"),
    );
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 7000);
    assert_eq!(srv.query("/volumes").await.len(), 2);

    // a resourceUuid already used: refused, nothing reserved or created
    let e = srv
        .fails(
            "POST",
            "/volumes/data",
            Some(json!({"params": {"name": "d5", "diskOfferingUuid": small, "primaryStorageUuid": pu, "resourceUuid": vu}})),
        )
        .await;
    assert_error(&e, "SYS.1007", &format!("resourceUuid[{vu}] is already used by another resource[type:VolumeVO]"));
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 7000);
    assert_eq!(srv.query("/volumes").await.len(), 2);
    assert_eq!(srv.query(&format!("/volumes/{vu}")).await[0]["name"], "d1");

    // delete keeps the reservation; expunge frees it
    srv.ok("DELETE", &format!("/volumes/{vu}"), None).await;
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 7000);
    srv.ok("PUT", &format!("/volumes/{vu}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    assert!(srv.query(&format!("/volumes/{vu}")).await.is_empty());
    assert_eq!(avail(&srv.query(&format!("/primary-storage/{pu}")).await), 10000);
}

#[tokio::test]
async fn resumed_create_jobs_make_their_resource_once() {
    // Every job waits before running, so a kill -9 lands while the create is pending; the
    // restarted node resumes it (a replay) with the uuid fixed when the job was accepted.
    let mut srv = Server::start_with_env(vec![("RZSTACK_TEST_JOB_DELAY_MS".into(), "1500".into())]).await;
    let zu = s(&srv.create_zone("z1").await["uuid"]).to_string();
    let pu = add_sim_ps(&srv, &zu, "sim", "/sim", 10000).await;
    let ps_uuid = uuid::Uuid::new_v4().simple().to_string();
    let vol_uuid = uuid::Uuid::new_v4().simple().to_string();
    let mut jobs = Vec::new();
    for (path, body) in [
        (
            "/primary-storage/simulators",
            json!({"params": {"name": "p2", "url": "/sim2", "zoneUuid": zu, "totalCapacity": 500,
                "availableCapacity": 500, "resourceUuid": ps_uuid}}),
        ),
        (
            "/volumes/data",
            json!({"params": {"name": "v", "diskSize": 4000, "primaryStorageUuid": pu, "resourceUuid": vol_uuid}}),
        ),
    ] {
        let r = srv.request("POST", path, Some(body), Some(&srv.session), &[]).await;
        assert_eq!(r.status, 202, "{}", r.text);
        jobs.push(s(&r.body["location"]).rsplit('/').next().unwrap_or_default().to_string());
    }
    srv.kill9();
    srv.restart().await;
    let p = srv.poll(&srv.url(&format!("/api-jobs/{}", jobs[0]))).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["inventory"]["uuid"], ps_uuid.as_str());
    let v = srv.poll(&srv.url(&format!("/api-jobs/{}", jobs[1]))).await;
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["inventory"]["uuid"], vol_uuid.as_str());
    assert_eq!(v.body["inventory"]["status"], "Ready");
    assert_eq!(srv.query("/primary-storage").await.len(), 2);
    assert_eq!(srv.query("/volumes").await.len(), 1);
    let ps = srv.query(&format!("/primary-storage/{pu}")).await;
    assert_eq!(ps[0]["availableCapacity"], 6000, "the volume's size is reserved exactly once");
}

#[tokio::test]
async fn nfs_url_unique_per_zone_even_when_racing() {
    let srv = Server::start().await;
    let z1 = s(&srv.create_zone("z1").await["uuid"]).to_string();
    let z2 = s(&srv.create_zone("z2").await["uuid"]).to_string();
    let add = |name: &str, url: &str, zone: &str| json!({"params": {"name": name, "url": url, "zoneUuid": zone}});
    // six adds of the same export in the same zone at once: exactly one wins
    let url = "10.0.0.9:/export/race";
    let (a, b, c, d, e, f) = tokio::join!(
        srv.job("POST", "/primary-storage/nfs", Some(add("n1", url, &z1))),
        srv.job("POST", "/primary-storage/nfs", Some(add("n2", url, &z1))),
        srv.job("POST", "/primary-storage/nfs", Some(add("n3", url, &z1))),
        srv.job("POST", "/primary-storage/nfs", Some(add("n4", url, &z1))),
        srv.job("POST", "/primary-storage/nfs", Some(add("n5", url, &z1))),
        srv.job("POST", "/primary-storage/nfs", Some(add("n6", url, &z1))),
    );
    let all = [a, b, c, d, e, f];
    assert_eq!(
        all.iter().filter(|r| r.status == 200).count(),
        1,
        "{:?}",
        all.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for r in all.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 503, "{}", r.text);
        assert_error(
            &r.body["error"],
            "SYS.1007",
            &format!("there has been a nfs primary storage having url as {url} in zone[uuid:{z1}]"),
        );
    }
    assert_eq!(srv.query(&format!("/primary-storage?q=url={url}")).await.len(), 1);

    // the same export in another zone is another storage; a non-NFS storage may use the text
    srv.ok("POST", "/primary-storage/nfs", Some(add("other-zone", url, &z2))).await;
    srv.ok("POST", "/primary-storage/simulators", Some(add("sim", url, &z1))).await;
    assert_eq!(srv.query(&format!("/primary-storage?q=url={url}")).await.len(), 3);

    // moving a second NFS storage onto a taken url is refused and changes nothing
    let second = srv.ok("POST", "/primary-storage/nfs", Some(add("second", "10.0.0.9:/export/b", &z1))).await;
    let su = s(&second["inventory"]["uuid"]).to_string();
    let e = srv
        .fails("PUT", &format!("/primary-storage/{su}/actions"), Some(json!({"updatePrimaryStorage": {"url": url}})))
        .await;
    assert_error(
        &e,
        "SYS.1007",
        &format!("there has been a nfs primary storage having url as {url} in zone[uuid:{z1}]"),
    );
    assert_eq!(srv.query(&format!("/primary-storage/{su}")).await[0]["url"], "10.0.0.9:/export/b");
    let u = srv
        .ok(
            "PUT",
            &format!("/primary-storage/{su}/actions"),
            Some(json!({"updatePrimaryStorage": {"url": "10.0.0.9:/export/c"}})),
        )
        .await;
    assert_eq!(u["inventory"]["url"], "10.0.0.9:/export/c");
    // once deleted, its url is free again
    srv.ok("DELETE", &format!("/primary-storage/{su}"), None).await;
    srv.ok("POST", "/primary-storage/nfs", Some(add("again", "10.0.0.9:/export/c", &z1))).await;
}

#[tokio::test]
async fn image_platform_defaults_and_unsupported_urls() {
    let srv = Server::start().await;
    let dir = visible_tempdir();
    let bs = add_local_bs(&srv, "bs", &dir.path().join("bs").display().to_string()).await;
    let bu = s(&bs["uuid"]).to_string();
    let qcow = dir.path().join("t.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "1M"]);
    let url = format!("file://{}", qcow.display());
    let add = |name: &str, extra: Value| {
        let mut p = json!({"name": name, "url": url, "format": "qcow2", "backupStorageUuids": [bu]});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        json!({ "params": p })
    };

    // upstream defaults: platform Linux, guestOsType = the platform; Paravirtualization is
    // stored as Other, WindowsVirtio as Windows; an explicit guestOsType is kept
    let cases = [
        (json!({}), "Linux", Some("Linux")),
        (json!({"platform": "Windows"}), "Windows", Some("Windows")),
        (json!({"platform": "WindowsVirtio"}), "Windows", Some("Windows")),
        (json!({"platform": "Paravirtualization"}), "Other", Some("Other")),
        (json!({"platform": "Linux", "guestOsType": "Ubuntu"}), "Linux", Some("Ubuntu")),
    ];
    for (i, (extra, platform, guest)) in cases.into_iter().enumerate() {
        let img = srv.ok("POST", "/images", Some(add(&format!("i{i}"), extra))).await["inventory"].clone();
        assert_eq!(img["platform"], platform, "{img}");
        assert_eq!(img["guestOsType"].as_str(), guest, "{img}");
        assert_eq!(img["architecture"], "x86_64");
        let q = &srv.query(&format!("/images/{}", s(&img["uuid"]))).await[0];
        assert_eq!(q["guestOsType"].as_str(), guest);
    }
    // a data volume template gets no platform defaults
    let dv = srv.ok("POST", "/images", Some(add("dv", json!({"mediaType": "DataVolumeTemplate"})))).await["inventory"]
        .clone();
    assert!(dv.get("platform").is_none() && dv.get("guestOsType").is_none(), "{dv}");

    // ftp:// and sftp:// are upstream protocols we cannot download from: a clear refusal
    // naming what is supported, and nothing left behind
    let before = srv.query("/images").await.len();
    for u in ["ftp://10.0.0.1/img.qcow2", "sftp://root@10.0.0.1/img.qcow2"] {
        let mut body = add("ftp", json!({}));
        body["params"]["url"] = json!(u);
        let e = srv.fails("POST", "/images", Some(body)).await;
        assert_error(
            &e,
            "SYS.1006",
            "ftp:// and sftp:// sources are not supported yet, use http(s):// or a local path",
        );
    }
    let mut body = add("bad", json!({}));
    body["params"]["url"] = json!("gopher://x/y");
    let e = srv.fails("POST", "/images", Some(body)).await;
    assert_error(&e, "SYS.1007", "url must starts with 'file:///', 'http://', 'https://'");
    assert_eq!(srv.query("/images").await.len(), before);
    assert!(srv.query("/images?q=name=ftp").await.is_empty());
}
