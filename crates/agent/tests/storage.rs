//! Image cache and volumes through the agent's HTTP API, with real qemu-img files.
mod common;
use common::*;
use rzstack_api::agent::*;
use serde_json::json;

const MIB: i64 = 1 << 20;

/// A 64 MiB qcow2 "image" with 8 MiB of data, on a "backup storage" directory.
fn make_image(dir: &std::path::Path) -> String {
    let bs = dir.join("bs");
    std::fs::create_dir_all(&bs).unwrap();
    let img = bs.join("image.qcow2").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", &img, "64M"]);
    let st = std::process::Command::new("qemu-io").args(["-c", "write -P 7 0 8M", &img]).output().expect("qemu-io");
    assert!(st.status.success());
    img
}

#[tokio::test]
async fn image_cache_thin_thick_data_snapshot_delete() {
    if !require("storage", &[("qemu-img", "qemu-utils")]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let a = Agent::start(d.path()).await;
    let img = make_image(d.path());
    let image_uuid = uuid();

    // Filled once, also under concurrent requests: every answer names the same file.
    let mut handles = Vec::new();
    for _ in 0..6 {
        let (base, body) = (a.base.clone(), json!({"imageUuid": image_uuid, "sourcePath": img}));
        handles.push(tokio::spawn(async move {
            let mut body = body;
            body["version"] = 1.into();
            let v: serde_json::Value = reqwest::Client::new()
                .post(format!("{base}{PATH_IMAGE_CACHE}"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            serde_json::from_value::<AgentRsp<ImageCacheInfo>>(v).unwrap().result.unwrap()
        }));
    }
    let mut infos = Vec::new();
    for h in handles {
        infos.push(h.await.unwrap());
    }
    let cache = infos[0].clone();
    assert!(infos.iter().all(|i| *i == cache), "{infos:?}");
    let expected = d.path().join(format!("imagecache/template/{image_uuid}/{image_uuid}.qcow2"));
    assert_eq!(cache.install_path, expected.to_string_lossy());
    assert_eq!((cache.format.as_str(), cache.size), ("qcow2", 64 * MIB));
    let entries: Vec<_> = std::fs::read_dir(expected.parent().unwrap()).unwrap().collect();
    assert_eq!(entries.len(), 1, "no temporary file is left");

    // A missing source is refused and caches nothing.
    let other = uuid();
    let e = a.fails(PATH_IMAGE_CACHE, json!({"imageUuid": other, "sourcePath": "/nonexistent/x.qcow2"})).await;
    assert!(e.contains("does not exist"), "{e}");
    assert!(!d.path().join(format!("imagecache/template/{other}")).exists());

    // Thin root volume: a small overlay backed by the cache, larger virtual size.
    let ps = d.path().join("ps");
    let thin_uuid = uuid();
    let thin_path = ps.join(format!("rootVolumes/acct-x/vol-{thin_uuid}/{thin_uuid}.qcow2"));
    let body = json!({"volumeUuid": thin_uuid, "installPath": thin_path, "size": 128 * MIB,
        "backingFile": cache.install_path, "provisioning": "ThinProvisioning"});
    let thin: VolumeInfo = a.ok(PATH_VOLUME_CREATE, body.clone()).await;
    assert_eq!(thin.backing_file.as_deref(), Some(cache.install_path.as_str()));
    assert_eq!(thin.size, 128 * MIB);
    assert!(thin.actual_size < 2 * MIB, "thin overlay is small: {}", thin.actual_size);
    // The overlay (written by the agent, not by qemu-img) is a consistent qcow2 that qemu-img
    // reads as asked: backing file and format, virtual size, the image's content.
    let check = std::process::Command::new("qemu-img").args(["check", &thin.install_path]).output().unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && out.contains("No errors were found"), "{out}");
    let info =
        std::process::Command::new("qemu-img").args(["info", "--output=json", &thin.install_path]).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2", "{info}");
    assert_eq!(info["virtual-size"], 128 * MIB, "{info}");
    assert_eq!(info["backing-filename"], cache.install_path.as_str(), "{info}");
    assert_eq!(info["backing-filename-format"], "qcow2", "{info}");
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", &thin.install_path, &cache.install_path])
        .status()
        .unwrap();
    assert!(cmp.success(), "the overlay shows the image's content");
    // A replay answers the same volume.
    let again: VolumeInfo = a.ok(PATH_VOLUME_CREATE, body).await;
    assert_eq!(again, thin);

    // Thick root volume: independent, fully allocated.
    let thick_uuid = uuid();
    let thick_path = ps.join(format!("rootVolumes/acct-x/vol-{thick_uuid}/{thick_uuid}.qcow2"));
    let thick: VolumeInfo = a
        .ok(
            PATH_VOLUME_CREATE,
            json!({"volumeUuid": thick_uuid, "installPath": thick_path, "size": 96 * MIB,
            "backingFile": cache.install_path, "provisioning": "ThickProvisioning"}),
        )
        .await;
    assert_eq!(thick.backing_file, None);
    assert_eq!(thick.size, 96 * MIB);
    assert!(thick.actual_size as f64 >= 0.9 * thick.size as f64, "thick: {} of {}", thick.actual_size, thick.size);
    assert_eq!(actual_size(&thick.install_path) as i64, thick.actual_size);

    // Thin and thick data volumes.
    let dv = uuid();
    let dv_path = ps.join(format!("dataVolumes/acct-x/vol-{dv}/{dv}.qcow2"));
    let data: VolumeInfo =
        a.ok(PATH_VOLUME_CREATE, json!({"volumeUuid": dv, "installPath": dv_path, "size": 32 * MIB})).await;
    assert_eq!((data.size, data.backing_file.clone()), (32 * MIB, None));
    assert!(data.actual_size < MIB);
    let dv2 = uuid();
    let dv2_path = ps.join(format!("dataVolumes/acct-x/vol-{dv2}/{dv2}.qcow2"));
    let data2: VolumeInfo = a
        .ok(
            PATH_VOLUME_CREATE,
            json!({"volumeUuid": dv2, "installPath": dv2_path, "size": 32 * MIB, "provisioning": "ThickProvisioning"}),
        )
        .await;
    assert!(data2.actual_size >= 32 * MIB, "{}", data2.actual_size);

    // Bad inputs: nothing is created.
    let bad = uuid();
    let bad_path = ps.join(format!("x/{bad}.qcow2"));
    let e = a.fails(PATH_VOLUME_CREATE, json!({"volumeUuid": bad, "installPath": bad_path, "size": 0})).await;
    assert!(e.contains("positive size"), "{e}");
    let e = a
        .fails(
            PATH_VOLUME_CREATE,
            json!({"volumeUuid": bad, "installPath": bad_path, "size": MIB, "backingFile": cache.install_path}),
        )
        .await;
    assert!(e.contains("smaller than the image"), "{e}");
    let e = a.fails(PATH_VOLUME_CREATE, json!({"volumeUuid": bad, "installPath": "rel/x.qcow2", "size": MIB})).await;
    assert!(e.contains("absolute"), "{e}");
    assert!(!bad_path.exists() && !ps.join("x").join(format!("{bad}.qcow2.creating")).exists());
    // Another volume at an existing path is refused.
    let e = a.fails(PATH_VOLUME_CREATE, json!({"volumeUuid": bad, "installPath": thin_path, "size": 128 * MIB})).await;
    assert!(e.contains("another volume"), "{e}");

    // Snapshot of a stopped VM's volume: an independent copy with the data.
    let snap_uuid = uuid();
    let snap_path = ps.join(format!("snapshots/{snap_uuid}.qcow2"));
    let snap: VolumeInfo = a
        .ok(
            PATH_VOLUME_SNAPSHOT,
            json!({"snapshotUuid": snap_uuid, "volumeInstallPath": thin_path, "installPath": snap_path}),
        )
        .await;
    assert_eq!((snap.backing_file.clone(), snap.size), (None, 128 * MIB));
    let cmp = std::process::Command::new("qemu-img")
        .args(["compare", "-U", &thin.install_path, &snap.install_path])
        .status()
        .unwrap();
    assert!(cmp.success(), "the snapshot has the volume's content");
    // A new volume from the snapshot.
    let from = uuid();
    let from_path = ps.join(format!("rootVolumes/acct-x/vol-{from}/{from}.qcow2"));
    let v: VolumeInfo = a
        .ok(
            PATH_VOLUME_CREATE,
            json!({"volumeUuid": from, "installPath": from_path, "size": 0, "backingFile": snap.install_path}),
        )
        .await;
    assert_eq!((v.backing_file.as_deref(), v.size), (Some(snap.install_path.as_str()), 128 * MIB));

    // Capacity of the primary storage's filesystem, as df sees it.
    let before: StorageCapacity = a.ok(PATH_STORAGE_CAPACITY, json!({"path": ps})).await;
    assert!(before.total_capacity > 0 && before.available_capacity > 0);
    assert!(before.available_capacity <= before.total_capacity);
    let e = a.fails(PATH_STORAGE_CAPACITY, json!({"path": "relative"})).await;
    assert!(e.contains("absolute"), "{e}");

    // Delete: the file and its directory go; a second delete finds nothing.
    let del: Deleted = a.ok(PATH_VOLUME_DELETE, json!({"installPath": thick_path})).await;
    assert!(del.deleted);
    assert!(!thick_path.exists() && !thick_path.parent().unwrap().exists());
    let del: Deleted = a.ok(PATH_VOLUME_DELETE, json!({"installPath": thick_path})).await;
    assert!(!del.deleted);
    a.shutdown().await;
}

#[tokio::test]
async fn raw_images_are_converted_and_isos_kept() {
    if !require("storage", &[("qemu-img", "qemu-utils")]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let a = Agent::start(d.path()).await;
    let raw = d.path().join("img.raw").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "raw", &raw, "16M"]);
    let u = uuid();
    let c: ImageCacheInfo = a.ok(PATH_IMAGE_CACHE, json!({"imageUuid": u, "sourcePath": raw})).await;
    assert_eq!((c.format.as_str(), c.size), ("qcow2", 16 * MIB));
    assert!(c.install_path.ends_with(&format!("imagecache/template/{u}/{u}.qcow2")));

    let iso = d.path().join("cd.iso");
    std::fs::write(&iso, vec![0u8; 4096]).unwrap();
    let u = uuid();
    let c: ImageCacheInfo = a.ok(PATH_IMAGE_CACHE, json!({"imageUuid": u, "sourcePath": iso, "format": "iso"})).await;
    assert_eq!((c.format.as_str(), c.size), ("iso", 4096));
    assert!(c.install_path.ends_with(&format!("imagecache/iso/{u}/{u}.iso")));

    // A format the cache does not take: refused, nothing left in the cache.
    let vmdk = d.path().join("img.vmdk").to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "vmdk", &vmdk, "16M"]);
    let u = uuid();
    let e = a.fails(PATH_IMAGE_CACHE, json!({"imageUuid": u, "sourcePath": vmdk})).await;
    assert!(e.contains("not qcow2 or raw"), "{e}");
    let left: Vec<_> = std::fs::read_dir(d.path().join(format!("imagecache/template/{u}"))).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    let e = a.fails(PATH_IMAGE_CACHE, json!({"imageUuid": "nope", "sourcePath": raw})).await;
    assert!(e.contains("not a uuid"), "{e}");
    let e = a.fails(PATH_IMAGE_CACHE, json!({"imageUuid": uuid(), "sourcePath": raw, "format": "vmdk"})).await;
    assert!(e.contains("unsupported image format"), "{e}");
    a.shutdown().await;
}
