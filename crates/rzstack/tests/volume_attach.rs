//! AttachDataVolumeToVm / DetachDataVolumeFromVm on simulator hosts: the volume row (vm,
//! device id, attach/detach dates, a NotInstantiated volume instantiated on the VM's storage),
//! the VM's allVolumes, and upstream's refusals with their codes and texts, nothing changed.

mod common;

use common::kvm::qmp;

use common::sim::{create, local_topology, network, new_volume, s, topology, usage, GB};
use common::{assert_error, Server};
use serde_json::{json, Value};

async fn volume(srv: &Server, uuid: &str) -> Value {
    srv.query(&format!("/volumes/{uuid}")).await[0].clone()
}

async fn attach(srv: &Server, vol: &str, vm: &str) -> Value {
    srv.ok("POST", &format!("/volumes/{vol}/vm-instances/{vm}"), Some(json!({"params": {}}))).await["inventory"].clone()
}

async fn attach_fails(srv: &Server, vol: &str, vm: &str) -> Value {
    srv.fails("POST", &format!("/volumes/{vol}/vm-instances/{vm}"), Some(json!({"params": {}}))).await
}

async fn detach(srv: &Server, vol: &str) -> Value {
    srv.ok("DELETE", &format!("/volumes/{vol}/vm-instances"), None).await["inventory"].clone()
}

async fn vm_volumes(srv: &Server, vm: &str) -> Vec<(String, i64)> {
    let inv = &srv.query(&format!("/vm-instances/{vm}")).await[0];
    let mut v: Vec<(String, i64)> = inv["allVolumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (s(&v["uuid"]), v["deviceId"].as_i64().unwrap_or(-1)))
        .collect();
    v.sort_by_key(|x| x.1);
    v
}

/// Every volume and the storage capacity: what a refusal must leave as it was.
async fn snapshot(srv: &Server, t: &common::sim::Topo) -> (Vec<Value>, i64) {
    (srv.query("/volumes").await, usage(srv, t).await.1)
}

#[tokio::test]
async fn attach_and_detach_on_simulator_hosts() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let vm =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"].clone();
    let vm_uuid = s(&vm["uuid"]);
    let root = s(&vm["rootVolumeUuid"]);
    assert_eq!(vm["state"], "Running");

    // a NotInstantiated volume attached to a Running VM: instantiated on its root volume's storage
    let d1 = new_volume(&srv, "d1", json!({})).await;
    assert_eq!(volume(&srv, &d1).await["status"], "NotInstantiated");
    let free = usage(&srv, &t).await.1;
    let inv = attach(&srv, &d1, &vm_uuid).await;
    assert_eq!(inv["uuid"], d1.as_str());
    assert_eq!(inv["vmInstanceUuid"], vm_uuid.as_str());
    assert_eq!(inv["deviceId"], 1);
    assert_eq!(inv["status"], "Ready");
    assert_eq!(inv["type"], "Data");
    assert_eq!(inv["format"], "qcow2");
    assert_eq!(inv["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(inv["isShareable"], false);
    assert!(inv["lastAttachDate"].is_string(), "{inv}");
    assert!(inv.get("lastDetachDate").is_none_or(|d| d.is_null()), "{inv}");
    assert_eq!(usage(&srv, &t).await.1, free - GB);
    assert_eq!(vm_volumes(&srv, &vm_uuid).await, vec![(root.clone(), 0), (d1.clone(), 1)]);

    // a Ready volume attached to a Stopped VM takes the next device id
    let d2 = new_volume(&srv, "d2", json!({"primaryStorageUuid": t.ps})).await;
    srv.ok("PUT", &format!("/vm-instances/{vm_uuid}/actions"), Some(json!({"stopVmInstance": {}}))).await;
    let free = usage(&srv, &t).await.1;
    let inv = attach(&srv, &d2, &vm_uuid).await;
    assert_eq!(inv["vmInstanceUuid"], vm_uuid.as_str());
    assert_eq!(inv["deviceId"], 2);
    assert_eq!(usage(&srv, &t).await.1, free, "a Ready volume is not reserved twice");
    assert_eq!(vm_volumes(&srv, &vm_uuid).await, vec![(root.clone(), 0), (d1.clone(), 1), (d2.clone(), 2)]);

    // detach: the VM is forgotten, remembered as the last one
    let inv = detach(&srv, &d1).await;
    assert!(inv["vmInstanceUuid"].is_null(), "{inv}");
    assert!(inv["deviceId"].is_null(), "{inv}");
    assert_eq!(inv["lastVmInstanceUuid"], vm_uuid.as_str());
    assert!(inv["lastDetachDate"].is_string(), "{inv}");
    assert_eq!(inv["status"], "Ready");
    assert_eq!(vm_volumes(&srv, &vm_uuid).await, vec![(root.clone(), 0), (d2.clone(), 2)]);
    // the free device id is used again, on the started VM
    srv.ok("PUT", &format!("/vm-instances/{vm_uuid}/actions"), Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(attach(&srv, &d1, &vm_uuid).await["deviceId"], 1);

    // refusals, nothing changed
    let before = snapshot(&srv, &t).await;
    let e = attach_fails(&srv, &d1, &vm_uuid).await;
    assert_error(&e, "SYS.1006", &format!("data volume[uuid:{d1}] has been attached to some vm, can't attach again"));
    let e = attach_fails(&srv, &root, &vm_uuid).await;
    let root_name = s(&volume(&srv, &root).await["name"]);
    assert_error(&e, "SYS.1006", &format!("the volume[uuid:{root}, name:{root_name}] is Root Volume, can't attach it"));
    let e = srv.fails("DELETE", &format!("/volumes/{root}/vm-instances"), None).await;
    assert_error(&e, "SYS.1006", &format!("the volume[uuid:{root}, name:{root_name}, type:Root] can't detach it"));
    let missing = "0123456789abcdef0123456789abcdef";
    let e = attach_fails(&srv, &d1, missing).await;
    assert_error(&e, "SYS.1003", missing);
    let e = attach_fails(&srv, missing, &vm_uuid).await;
    assert_error(&e, "SYS.1003", missing);
    assert_eq!(snapshot(&srv, &t).await, before);

    let d3 = new_volume(&srv, "d3", json!({})).await;
    let e = srv.fails("DELETE", &format!("/volumes/{d3}/vm-instances"), None).await;
    assert_error(&e, "SYS.1006", &format!("data volume[uuid:{d3}] is not attached to any vm, can't detach"));
    srv.ok("DELETE", &format!("/volumes/{d3}"), None).await;
    let before = snapshot(&srv, &t).await;
    let e = attach_fails(&srv, &d3, &vm_uuid).await;
    assert_error(&e, "SYS.1006", &format!("the volume[uuid:{d3}] is in status of deleted, cannot do the operation"));
    assert_eq!(snapshot(&srv, &t).await, before);

    // a VM in a state that does not allow it (Destroyed, deletion policy Delay)
    srv.ok(
        "PUT",
        "/global-configurations/vm/deletionPolicy/actions",
        Some(json!({"updateGlobalConfig": {"value": "Delay"}})),
    )
    .await;
    let vm2 = s(&srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "vm2", "l3NetworkUuids": [l3]}))))
        .await["inventory"]["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{vm2}"), None).await;
    let d4 = new_volume(&srv, "d4", json!({})).await;
    let before = snapshot(&srv, &t).await;
    let e = attach_fails(&srv, &d4, &vm2).await;
    let text = "current vm instance state[Destroyed] doesn't allow to proceed message\
                [org.zstack.header.vm.AttachDataVolumeToVmMsg], allowed states are [Stopped, Running, Paused]";
    assert_error(&e, "VM.1005", text);
    assert_error(&e["cause"], "VM.1010", text);
    assert_eq!(snapshot(&srv, &t).await, before);

    // detach with the VM named
    let inv =
        srv.ok("DELETE", &format!("/volumes/{d2}/vm-instances?vmUuid={vm_uuid}"), None).await["inventory"].clone();
    assert!(inv["vmInstanceUuid"].is_null(), "{inv}");
    assert_eq!(vm_volumes(&srv, &vm_uuid).await, vec![(root.clone(), 0), (d1.clone(), 1)]);
}

/// upstream's limit: 24 data volumes per VM
#[tokio::test]
async fn max_data_volumes() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"]
            ["uuid"]);
    for i in 0..24 {
        let d = new_volume(&srv, &format!("d{i}"), json!({"primaryStorageUuid": t.ps})).await;
        assert_eq!(attach(&srv, &d, &vm).await["deviceId"], i + 1);
    }
    let extra = new_volume(&srv, "extra", json!({})).await;
    let before = snapshot(&srv, &t).await;
    let e = attach_fails(&srv, &extra, &vm).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "hypervisor[Simulator] only allows max 24 data volumes to be attached to a single vm; there have been 24 \
             data volumes attached to vm[uuid:{vm}]"
        ),
    );
    assert_eq!(snapshot(&srv, &t).await, before);
}

/// LocalStorage: a volume on another host's disk is refused with upstream's text; a
/// NotInstantiated one goes on the disk of the VM's host.
#[tokio::test]
async fn local_storage_hosts() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let vm = s(&srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3], "hostUuid": h1}))))
        .await["inventory"]["uuid"]);
    let on_h0 = new_volume(
        &srv,
        "on-h0",
        json!({"primaryStorageUuid": t.ps, "systemTags": [format!("localStorage::hostUuid::{h0}")]}),
    )
    .await;
    let before = snapshot(&srv, &t).await;
    let e = attach_fails(&srv, &on_h0, &vm).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "the host of the vm[hostUuid:{h1}] is different from that of the volume[hostUuid:{h0}]. the volume cannot \
             attach to the vm."
        ),
    );
    assert_eq!(snapshot(&srv, &t).await, before);

    let d = new_volume(&srv, "d", json!({})).await;
    let inv = attach(&srv, &d, &vm).await;
    assert_eq!(inv["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(inv["status"], "Ready");
    let refs = srv.query(&format!("/primary-storage/local-storage/resource-refs?q=resourceUuid={d}")).await;
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(refs[0]["hostUuid"], h1.as_str());
}

/// A KVM host (QEMU under TCG here): attaching a data volume to the running guest hot-plugs
/// it (its virtio driver takes the disk: DRIVER_OK), detaching unplugs it (the guest lets go).
#[tokio::test]
async fn hot_plug_on_a_kvm_host() {
    use common::kvm::{qemu_pids, uuid, KvmCloud};
    let Some(c) = KvmCloud::setup("volume_attach", "va").await else { return };
    let s = &c.s;
    let vm = c.create_vm("hp", json!({})).await;
    let vu = uuid(&vm);
    c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    let sock = c.serial_log(&vu).await.parent().expect("vm dir").join("qmp.sock");
    let d = new_volume(s, "hot", json!({"diskSize": 32 << 20})).await;
    let inv = attach(s, &d, &vu).await;
    assert_eq!(inv["vmInstanceUuid"], vu.as_str());
    assert_eq!(inv["deviceId"], 1);
    assert_eq!(inv["status"], "Ready");
    let file = s.query(&format!("/volumes/{d}")).await[0]["installPath"].as_str().expect("a file").to_string();
    assert!(std::path::Path::new(&file).is_file(), "{file}");
    let virtio = json!({"path": "/machine/peripheral/vd1/virtio-backend"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let st = qmp(&sock, "x-query-virtio-status", virtio.clone()).expect("vd1 is plugged");
        if st.to_string().contains("DRIVER_OK") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the guest never took vd1: {st}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    let inv = detach(s, &d).await;
    assert!(inv["vmInstanceUuid"].is_null(), "{inv}");
    assert!(qmp(&sock, "x-query-virtio-status", virtio).is_err(), "vd1 is gone");
    let nodes = qmp(&sock, "query-named-block-nodes", json!({})).expect("nodes");
    assert!(!nodes.to_string().contains(&file), "the file is closed: {nodes}");

    // a stopped VM: rows only (a NotInstantiated volume gets its file on the host); the next
    // boot has both disks
    s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {}}))).await;
    assert_eq!(attach(s, &d, &vu).await["deviceId"], 1);
    let d2 = new_volume(s, "cold", json!({"diskSize": 48 << 20})).await;
    let inv = attach(s, &d2, &vu).await;
    assert_eq!(inv["deviceId"], 2);
    let file2 = s.query(&format!("/volumes/{d2}")).await[0]["installPath"].as_str().expect("a file").to_string();
    assert!(std::path::Path::new(&file2).is_file(), "{file2}");
    s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"startVmInstance": {}}))).await;
    let log = c.wait_serial(&vu, &format!("RZSTACK-GUEST-DISK vdc size={}", 48 << 20)).await;
    assert!(log.contains(&format!("RZSTACK-GUEST-DISK vdb size={}", 32 << 20)), "{log}");

    s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    if !s.query(&format!("/vm-instances/{vu}")).await.is_empty() {
        s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    }
    assert!(qemu_pids(&vu).is_empty(), "no QEMU left for {vu}");
}
