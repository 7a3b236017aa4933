//! ChangeVolumeState, UpdateVolume, UpdateVolumeSnapshot, RecoverDataVolume,
//! RevertVolumeFromSnapshot, ResizeRootVolume/ResizeDataVolume and GetVmAttachableDataVolume
//! on simulator clouds: the inventories they answer, and upstream's refusals (code and text)
//! with nothing changed.

mod common;

use common::sim::{create, network, new_volume, s, topology, usage, GB};
use common::{assert_error, Server};
use serde_json::{json, Value};

async fn volume(srv: &Server, uuid: &str) -> Value {
    srv.query(&format!("/volumes/{uuid}")).await[0].clone()
}

async fn snap(srv: &Server, uuid: &str) -> Value {
    srv.query(&format!("/volume-snapshots/{uuid}")).await[0].clone()
}

async fn new_snapshot(srv: &Server, vol: &str, name: &str) -> String {
    s(&srv.ok("POST", &format!("/volumes/{vol}/volume-snapshots"), Some(json!({"params": {"name": name}}))).await
        ["inventory"]["uuid"])
}

fn act(name: &str, body: Value) -> Option<Value> {
    Some(json!({ name: body }))
}

/// Every volume and snapshot and the storage capacity: what a refusal must leave as it was.
async fn state(srv: &Server, t: &common::sim::Topo) -> (Vec<Value>, Vec<Value>, i64) {
    (srv.query("/volumes").await, srv.query("/volume-snapshots").await, usage(srv, t).await.1)
}

#[tokio::test]
async fn change_state_update_and_recover() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let vm =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"].clone();
    let root = s(&vm["rootVolumeUuid"]);
    let d1 = new_volume(&srv, "d1", json!({"primaryStorageUuid": t.ps, "description": "first"})).await;
    let path = format!("/volumes/{d1}/actions");

    // ChangeVolumeState
    let inv =
        srv.ok("PUT", &path, act("changeVolumeState", json!({"stateEvent": "disable"}))).await["inventory"].clone();
    assert_eq!(inv["uuid"], d1.as_str());
    assert_eq!(inv["state"], "Disabled");
    assert_eq!(inv["status"], "Ready");
    assert_eq!(inv["name"], "d1");
    assert_eq!(volume(&srv, &d1).await["state"], "Disabled");
    let inv =
        srv.ok("PUT", &path, act("changeVolumeState", json!({"stateEvent": "enable"}))).await["inventory"].clone();
    assert_eq!(inv["state"], "Enabled");

    let before = state(&srv, &t).await;
    let e = srv
        .fails("PUT", &format!("/volumes/{root}/actions"), act("changeVolumeState", json!({"stateEvent": "disable"})))
        .await;
    assert_error(&e, "SYS.1006", &format!("it's not allowed to change state of root volume, uuid:{root}"));
    let r = srv.put(&path, json!({"changeVolumeState": {"stateEvent": "off"}}), Some(&srv.session)).await;
    let e = if r.status == 202 {
        srv.poll(r.body["location"].as_str().unwrap()).await.body["error"].clone()
    } else {
        r.body["error"].clone()
    };
    assert_error(&e, "SYS.1007", "stateEvent");
    assert_eq!(state(&srv, &t).await, before);

    // UpdateVolume: what is set changes, the rest stays
    let inv = srv.ok("PUT", &path, act("updateVolume", json!({"name": "renamed"}))).await["inventory"].clone();
    assert_eq!(inv["name"], "renamed");
    assert_eq!(inv["description"], "first");
    let inv = srv.ok("PUT", &path, act("updateVolume", json!({"description": "second"}))).await["inventory"].clone();
    assert_eq!(inv["name"], "renamed");
    assert_eq!(inv["description"], "second");
    assert_eq!(inv["size"], GB);
    // nothing to set: nothing written, not even lastOpDate
    let before = state(&srv, &t).await;
    let inv = srv.ok("PUT", &path, act("updateVolume", json!({}))).await["inventory"].clone();
    assert_eq!(inv, volume(&srv, &d1).await);
    assert_eq!(state(&srv, &t).await, before);
    let e = srv.fails("PUT", &path, act("updateVolume", json!({"name": "x".repeat(256)}))).await;
    assert_error(&e, "SYS.1007", "name");
    assert_eq!(state(&srv, &t).await, before);

    // RecoverDataVolume: a deleted volume with storage comes back Ready, one without NotInstantiated
    let d2 = new_volume(&srv, "d2", json!({})).await;
    let free = usage(&srv, &t).await.1;
    srv.ok("DELETE", &format!("/volumes/{d1}"), None).await;
    srv.ok("DELETE", &format!("/volumes/{d2}"), None).await;
    assert_eq!(volume(&srv, &d1).await["status"], "Deleted");

    // a deleted volume's state cannot change
    let before = state(&srv, &t).await;
    let e = srv.fails("PUT", &path, act("changeVolumeState", json!({"stateEvent": "disable"}))).await;
    assert_error(&e, "SYS.1006", &format!("the volume[uuid:{d1}] is in status of deleted, cannot do the operation"));
    assert_eq!(state(&srv, &t).await, before);

    let inv = srv.ok("PUT", &path, act("recoverDataVolume", json!({}))).await["inventory"].clone();
    assert_eq!(inv["uuid"], d1.as_str());
    assert_eq!(inv["status"], "Ready");
    assert_eq!(inv["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(inv["name"], "renamed");
    let inv = srv.ok("PUT", &format!("/volumes/{d2}/actions"), act("recoverDataVolume", json!({}))).await["inventory"]
        .clone();
    assert_eq!(inv["status"], "NotInstantiated");
    assert_eq!(usage(&srv, &t).await.1, free, "the capacity stayed held while deleted");

    let before = state(&srv, &t).await;
    let e = srv.fails("PUT", &path, act("recoverDataVolume", json!({}))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "the volume[uuid:{d1}] is not in status of deleted. This is operation is to recover a deleted data volume"
        ),
    );
    let missing = "0123456789abcdef0123456789abcdef";
    let e = srv.fails("PUT", &format!("/volumes/{missing}/actions"), act("recoverDataVolume", json!({}))).await;
    assert_error(&e, "SYS.1003", missing);
    assert_eq!(state(&srv, &t).await, before);
}

#[tokio::test]
async fn update_and_revert_snapshots() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let vm =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"].clone();
    let vm_uuid = s(&vm["uuid"]);
    let root = s(&vm["rootVolumeUuid"]);
    let d1 = new_volume(&srv, "d1", json!({"primaryStorageUuid": t.ps})).await;
    let s1 = new_snapshot(&srv, &d1, "s1").await;
    let s2 = new_snapshot(&srv, &d1, "s2").await;
    assert_eq!(snap(&srv, &s2).await["parentUuid"], s1.as_str());

    // UpdateVolumeSnapshot
    let p1 = format!("/volume-snapshots/{s1}/actions");
    let inv = srv.ok("PUT", &p1, act("updateVolumeSnapshot", json!({"name": "first", "description": "d"}))).await
        ["inventory"]
        .clone();
    assert_eq!(inv["uuid"], s1.as_str());
    assert_eq!(inv["name"], "first");
    assert_eq!(inv["description"], "d");
    assert_eq!(inv["volumeUuid"], d1.as_str());
    let inv = srv.ok("PUT", &p1, act("updateVolumeSnapshot", json!({"description": "dd"}))).await["inventory"].clone();
    assert_eq!(inv["name"], "first");
    assert_eq!(inv["description"], "dd");
    assert_eq!(snap(&srv, &s1).await["description"], "dd");
    let before = state(&srv, &t).await;
    let e = srv.fails("PUT", &p1, act("updateVolumeSnapshot", json!({"description": "x".repeat(2049)}))).await;
    assert_error(&e, "SYS.1007", "description");
    assert_eq!(state(&srv, &t).await, before);

    // RevertVolumeFromSnapshot: a detached volume goes back to s1, which becomes the latest
    assert_eq!(snap(&srv, &s2).await["latest"], true);
    let r = srv.ok("PUT", &p1, act("revertVolumeFromSnapshot", json!({}))).await;
    assert!(r.get("inventory").is_none(), "{r}");
    assert_eq!(snap(&srv, &s1).await["latest"], true);
    assert_eq!(snap(&srv, &s2).await["latest"], false);
    let s3 = new_snapshot(&srv, &d1, "s3").await;
    assert_eq!(snap(&srv, &s3).await["parentUuid"], s1.as_str(), "the next snapshot follows the reverted one");
    assert_eq!(snap(&srv, &s3).await["latest"], true);
    assert_eq!(snap(&srv, &s1).await["latest"], false);

    // the root volume of a running VM: refused with upstream's text, nothing changed
    let r1 = new_snapshot(&srv, &root, "r1").await;
    let before = state(&srv, &t).await;
    let e =
        srv.fails("PUT", &format!("/volume-snapshots/{r1}/actions"), act("revertVolumeFromSnapshot", json!({}))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "unable to reset volume[uuid:{root}] to snapshot[uuid:{r1}], the vm[uuid:{vm_uuid}] volume attached to is \
             not in Stopped state, current state is Running"
        ),
    );
    assert_eq!(state(&srv, &t).await, before);
    // stopped: allowed
    srv.ok("PUT", &format!("/vm-instances/{vm_uuid}/actions"), Some(json!({"stopVmInstance": {}}))).await;
    srv.ok("PUT", &format!("/volume-snapshots/{r1}/actions"), act("revertVolumeFromSnapshot", json!({}))).await;
    assert_eq!(snap(&srv, &r1).await["latest"], true);
}

#[tokio::test]
async fn resize_volumes() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let vm =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"].clone();
    let vm_uuid = s(&vm["uuid"]);
    let root = s(&vm["rootVolumeUuid"]);
    let d1 = new_volume(&srv, "d1", json!({"primaryStorageUuid": t.ps})).await;

    // grow a data volume: the difference is taken from its storage
    let free = usage(&srv, &t).await.1;
    let inv = srv
        .ok("PUT", &format!("/volumes/data/resize/{d1}/actions"), act("resizeDataVolume", json!({"size": 2 * GB})))
        .await["inventory"]
        .clone();
    assert_eq!(inv["uuid"], d1.as_str());
    assert_eq!(inv["size"], 2 * GB);
    assert_eq!(inv["type"], "Data");
    assert_eq!(volume(&srv, &d1).await["size"], 2 * GB);
    assert_eq!(usage(&srv, &t).await.1, free - GB);

    // a NotInstantiated volume: its size only
    let d2 = new_volume(&srv, "d2", json!({})).await;
    let free = usage(&srv, &t).await.1;
    let inv = srv
        .ok("PUT", &format!("/volumes/data/resize/{d2}/actions"), act("resizeDataVolume", json!({"size": 3 * GB})))
        .await["inventory"]
        .clone();
    assert_eq!(inv["size"], 3 * GB);
    assert_eq!(inv["status"], "NotInstantiated");
    assert_eq!(usage(&srv, &t).await.1, free);

    // the root volume of a running VM, named by the VM
    let old = volume(&srv, &root).await["size"].as_i64().unwrap();
    let free = usage(&srv, &t).await.1;
    let inv = srv
        .ok(
            "PUT",
            &format!("/volumes/resize/{root}/actions"),
            act("resizeRootVolume", json!({"vmInstanceUuid": vm_uuid, "size": old + GB})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(inv["uuid"], root.as_str());
    assert_eq!(inv["size"], old + GB);
    assert_eq!(inv["type"], "Root");
    assert_eq!(usage(&srv, &t).await.1, free - GB);

    // refusals: shrinking, a disabled volume, a root volume as a data volume; nothing changed
    let before = state(&srv, &t).await;
    let e = srv
        .fails("PUT", &format!("/volumes/data/resize/{d1}/actions"), act("resizeDataVolume", json!({"size": GB})))
        .await;
    assert_error(&e, "SYS.1006", &format!("Cannot shrink [Data] volume[uuid:{d1}]'s size"));
    let e = srv
        .fails("PUT", &format!("/volumes/resize/{root}/actions"), act("resizeRootVolume", json!({"size": GB})))
        .await;
    assert_error(&e, "SYS.1006", &format!("Cannot shrink [Root] volume[uuid:{root}]'s size"));
    let e = srv
        .fails(
            "PUT",
            &format!("/volumes/data/resize/{root}/actions"),
            act("resizeDataVolume", json!({"size": 100 * GB})),
        )
        .await;
    assert_error(&e, "SYS.1006", &root);
    assert_eq!(state(&srv, &t).await, before);
    srv.ok("PUT", &format!("/volumes/{d1}/actions"), act("changeVolumeState", json!({"stateEvent": "disable"}))).await;
    let before = state(&srv, &t).await;
    let e = srv
        .fails("PUT", &format!("/volumes/data/resize/{d1}/actions"), act("resizeDataVolume", json!({"size": 4 * GB})))
        .await;
    assert_error(&e, "SYS.1006", &format!("can not resize volume[{d1}], because volume state is Disabled"));
    // more than the storage has
    let d3 = new_volume(&srv, "d3", json!({"primaryStorageUuid": t.ps})).await;
    let before3 = state(&srv, &t).await;
    let e = srv
        .fails(
            "PUT",
            &format!("/volumes/data/resize/{d3}/actions"),
            act("resizeDataVolume", json!({"size": 1000 * GB})),
        )
        .await;
    assert_error(&e, "SYS.1006", &d3);
    assert_eq!(state(&srv, &t).await, before3);
    assert_eq!(before.0.len() + 1, before3.0.len());
}

#[tokio::test]
async fn attachable_data_volumes() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"]
            ["uuid"]);
    let free_ready = new_volume(&srv, "ready", json!({"primaryStorageUuid": t.ps})).await;
    let not_inst = new_volume(&srv, "not-instantiated", json!({})).await;
    let disabled = new_volume(&srv, "disabled", json!({})).await;
    srv.ok("PUT", &format!("/volumes/{disabled}/actions"), act("changeVolumeState", json!({"stateEvent": "disable"})))
        .await;
    let deleted = new_volume(&srv, "deleted", json!({})).await;
    srv.ok("DELETE", &format!("/volumes/{deleted}"), None).await;
    let attached = new_volume(&srv, "attached", json!({})).await;
    srv.ok("POST", &format!("/volumes/{attached}/vm-instances/{vm}"), Some(json!({"params": {}}))).await;

    let path = format!("/vm-instances/{vm}/data-volume-candidates");
    let r = srv.request("GET", &path, None, Some(&srv.session), &[("X-JSON-Schema", "true")]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let invs = r.body["inventories"].as_array().unwrap();
    let mut got: Vec<String> = invs.iter().map(|v| s(&v["uuid"])).collect();
    got.sort();
    let mut want = vec![free_ready.clone(), not_inst.clone()];
    want.sort();
    assert_eq!(got, want, "{}", r.text);
    let inv = invs.iter().find(|v| v["uuid"] == free_ready.as_str()).unwrap();
    assert_eq!(inv["name"], "ready");
    assert_eq!(inv["type"], "Data");
    assert_eq!(inv["status"], "Ready");
    assert_eq!(inv["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.volume.VolumeInventory", "{}", r.text);

    // a VM that is neither Running nor Stopped (Destroyed, deletion policy Delay)
    srv.ok(
        "PUT",
        "/global-configurations/vm/deletionPolicy/actions",
        Some(json!({"updateGlobalConfig": {"value": "Delay"}})),
    )
    .await;
    srv.ok("DELETE", &format!("/vm-instances/{vm}"), None).await;
    let r = srv.get(&format!("/vm-instances/{vm}/data-volume-candidates")).await;
    assert_ne!(r.status, 200, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1006",
        &format!("vm[uuid:{vm}] can only attach volume when state is Running or Stopped, current state is Destroyed"),
    );

    // an unknown VM
    let missing = "0123456789abcdef0123456789abcdef";
    let r = srv.get(&format!("/vm-instances/{missing}/data-volume-candidates")).await;
    assert_ne!(r.status, 200, "{}", r.text);
    assert_error(&r.body["error"], "SYS.1003", missing);
}

/// `qemu-img info` of a file (`-U`: a running QEMU may hold it).
fn img_info(p: &str) -> Value {
    let o = std::process::Command::new("qemu-img").args(["info", "-U", "--output=json", p]).output().expect("qemu-img");
    assert!(o.status.success(), "qemu-img info {p}: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("json")
}

/// On a KVM host: ResizeRootVolume of a running VM (QEMU grows the disk), of a stopped one
/// (qemu-img), then RevertVolumeFromSnapshot: the volume's file is replaced with a copy of the
/// snapshot (its size back to the snapshot's), and the VM boots from it.
#[tokio::test]
async fn kvm_resize_and_revert() {
    use common::kvm::{qemu_pids, uuid, KvmCloud};
    let Some(c) = KvmCloud::setup("volume_ops", "vo").await else { return };
    let vm = c.create_vm("vo", json!({})).await;
    let vu = uuid(&vm);
    assert_eq!(vm["state"], "Running", "{vm}");
    let root = s(&vm["rootVolumeUuid"]);
    let v = volume(&c.s, &root).await;
    let file = s(&v["installPath"]);
    let size0 = v["size"].as_i64().unwrap();
    assert_eq!(img_info(&file)["virtual-size"].as_i64(), Some(size0));

    // running: QEMU grows the disk it holds
    let size1 = size0 + 64 * common::sim::MB;
    let path = format!("/volumes/resize/{root}/actions");
    let inv =
        c.s.ok("PUT", &path, act("resizeRootVolume", json!({"uuid": root, "size": size1}))).await["inventory"].clone();
    assert_eq!(inv["size"], size1);
    assert_eq!(img_info(&file)["virtual-size"].as_i64(), Some(size1), "QEMU resized the file");
    assert_eq!(qemu_pids(&vu).len(), 1);

    // shrinking is refused, the file untouched
    let e = c.s.fails("PUT", &path, act("resizeRootVolume", json!({"uuid": root, "size": size0}))).await;
    assert_error(&e, "SYS.1006", &format!("Cannot shrink [Root] volume[uuid:{root}]'s size"));
    assert_eq!(img_info(&file)["virtual-size"].as_i64(), Some(size1));
    assert_eq!(volume(&c.s, &root).await["size"], size1);

    // stopped: a snapshot, then qemu-img grows the file
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    let snap_uuid = new_snapshot(&c.s, &root, "before-grow").await;
    let size2 = size1 + 64 * common::sim::MB;
    let inv =
        c.s.ok("PUT", &path, act("resizeRootVolume", json!({"uuid": root, "size": size2}))).await["inventory"].clone();
    assert_eq!(inv["size"], size2);
    assert_eq!(img_info(&file)["virtual-size"].as_i64(), Some(size2), "qemu-img resized the file");

    // a running VM's volume cannot be reverted
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"startVmInstance": {}}))).await;
    let e =
        c.s.fails("PUT", &format!("/volume-snapshots/{snap_uuid}/actions"), act("revertVolumeFromSnapshot", json!({})))
            .await;
    assert_error(&e, "SYS.1006", "is not in Stopped state, current state is Running");
    assert_eq!(volume(&c.s, &root).await["installPath"], file.as_str());
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}}))).await;

    // revert: the file replaced with an independent copy of the snapshot (its content and size)
    let snap_file = s(&snap(&c.s, &snap_uuid).await["primaryStorageInstallPath"]);
    c.s.ok("PUT", &format!("/volume-snapshots/{snap_uuid}/actions"), act("revertVolumeFromSnapshot", json!({}))).await;
    let v = volume(&c.s, &root).await;
    assert_eq!(v["installPath"], file.as_str(), "{v}");
    assert_eq!(v["size"], size1);
    let info = img_info(&file);
    assert_eq!(info["virtual-size"].as_i64(), Some(size1), "{info}");
    assert!(info["backing-filename"].is_null(), "{info}");
    let o =
        std::process::Command::new("qemu-img").args(["compare", "-U", &snap_file, &file]).output().expect("qemu-img");
    assert!(o.status.success(), "the volume holds the snapshot: {}", String::from_utf8_lossy(&o.stdout));
    assert!(std::path::Path::new(&snap_file).is_file(), "the snapshot stays");
    assert!(snap_latest(&c.s, &snap_uuid).await);

    // the VM boots from the reverted file
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"startVmInstance": {}}))).await;
    c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(qemu_pids(&vu).is_empty(), "no QEMU left");
}

async fn snap_latest(srv: &Server, uuid: &str) -> bool {
    snap(srv, uuid).await["latest"].as_bool().unwrap()
}
