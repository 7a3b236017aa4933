//! LocalStorage through the public API, on simulator hosts: data volumes made on the disk of
//! the host the `localStorage::hostUuid::` system tag names (upstream
//! LocalStorageSystemTags.DEST_HOST_FOR_CREATING_DATA_VOLUME), and what deleting a host does
//! to the VMs, volumes and snapshots on its disk (upstream LocalStorageFactory.beforeDeleteHost).
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};

/// The LocalStorage resource refs of a primary storage, by resource uuid.
async fn local_refs(srv: &Server, ps: &str) -> std::collections::BTreeMap<String, Value> {
    srv.query(&format!("/primary-storage/local-storage/resource-refs?q=primaryStorageUuid={ps}"))
        .await
        .into_iter()
        .map(|r| (s(&r["resourceUuid"]), r))
        .collect()
}

async fn ps_available(srv: &Server, ps: &str) -> i64 {
    srv.query(&format!("/primary-storage/{ps}")).await[0]["availableCapacity"].as_i64().unwrap()
}

/// The room left on `host`'s disk of LocalStorage `ps` (GetLocalStorageHostDiskCapacity).
async fn host_available(srv: &Server, ps: &str, host: &str) -> i64 {
    let r = srv.query(&format!("/primary-storage/local-storage/{ps}/capacities?hostUuid={host}")).await;
    r[0]["availableCapacity"].as_i64().unwrap()
}

fn data_volume(name: &str, ps: Option<&str>, tags: &[String], resource_uuid: Option<&str>) -> Value {
    let mut p = json!({"name": name, "diskSize": GB});
    if let Some(ps) = ps {
        p["primaryStorageUuid"] = json!(ps);
    }
    if let Some(u) = resource_uuid {
        p["resourceUuid"] = json!(u);
    }
    json!({"params": p, "systemTags": tags})
}

fn host_tag(h: &str) -> Vec<String> {
    vec![format!("localStorage::hostUuid::{h}")]
}

fn volume_of<'a>(vm: &'a Value, ty: &str) -> &'a Value {
    vm["allVolumes"].as_array().unwrap().iter().find(|v| v["type"] == ty).unwrap_or_else(|| panic!("no {ty}: {vm}"))
}

/// What a refused create must leave as it was: volumes, refs, the storage's capacity.
async fn state(srv: &Server, ps: &str) -> (Vec<Value>, std::collections::BTreeMap<String, Value>, i64) {
    (srv.query("/volumes").await, local_refs(srv, ps).await, ps_available(srv, ps).await)
}

/// CreateDataVolume on LocalStorage: the volume is Ready on the disk of the host the
/// `localStorage::hostUuid::` tag names (its ref says so, the storage's capacity is taken);
/// without the tag, or naming a host that is not one of the storage's, it is refused with
/// upstream's argerr texts and nothing is made. The tag means nothing elsewhere (no storage,
/// another type). A VM made with that volume runs on its host; one designated elsewhere is
/// refused.
#[tokio::test]
async fn data_volume_on_the_tagged_host() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let free = ps_available(&srv, &t.ps).await;

    let mut body = data_volume("d", Some(&t.ps), &host_tag(&h1), None);
    body["userTags"] = json!(["ut"]);
    let v = srv.ok("POST", "/volumes/data", Some(body)).await["inventory"].clone();
    assert_eq!(v["status"], "Ready");
    assert_eq!(v["state"], "Enabled");
    assert_eq!(v["type"], "Data");
    assert_eq!(v["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(v["size"], GB);
    assert!(v.get("vmInstanceUuid").is_none(), "{v}");
    let d = s(&v["uuid"]);
    let refs = local_refs(&srv, &t.ps).await;
    assert_eq!(refs.len(), 1, "{refs:?}");
    let r = &refs[d.as_str()];
    assert_eq!(r["hostUuid"], h1.as_str());
    assert_eq!(r["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(r["resourceType"], "VolumeVO");
    assert_eq!(r["size"], GB);
    assert!(r["createDate"].is_string() && r["lastOpDate"].is_string(), "{r}");
    assert_eq!(ps_available(&srv, &t.ps).await, free - GB);
    // the tag stays on the volume, as upstream keeps the message's system tags
    let st: Vec<Value> = srv.query(&format!("/system-tags?q=resourceUuid={d}")).await;
    assert!(st.iter().any(|x| x["tag"] == format!("localStorage::hostUuid::{h1}").as_str()), "{st:?}");
    let ut = srv.query(&format!("/user-tags?q=resourceUuid={d}")).await;
    assert_eq!(ut.len(), 1, "{ut:?}");
    assert_eq!(ut[0]["tag"], "ut");
    assert_eq!(ut[0]["resourceType"], "VolumeVO");
    // a snapshot of it is on the same disk
    let snap = s(&srv
        .ok("POST", &format!("/volumes/{d}/volume-snapshots"), Some(json!({"params": {"name": "sn"}})))
        .await["inventory"]["uuid"]);
    assert_eq!(local_refs(&srv, &t.ps).await[snap.as_str()]["hostUuid"], h1.as_str());

    // refusals: nothing made, nothing taken
    let before = state(&srv, &t.ps).await;
    let bad = "0123456789ab4def8123456789abcd11";
    let e = srv.fails("POST", "/volumes/data", Some(data_volume("x", Some(&t.ps), &[], Some(bad)))).await;
    assert_error(
        &e,
        "SYS.1007",
        "To create volume on the local primary storage, you must specify the host that the volume is going to be \
         created using the system tag [localStorage::hostUuid::{hostUuid}]",
    );
    assert_eq!(state(&srv, &t.ps).await, before);
    assert!(srv.query(&format!("/volumes/{bad}")).await.is_empty());

    // a host of a cluster the storage is not attached to, and no host at all
    let c2 = s(&srv
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"name": "c2", "zoneUuid": t.zone, "hypervisorType": "Simulator"}})),
        )
        .await["inventory"]["uuid"]);
    let other = s(&srv
        .ok(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": "o", "managementIp": "10.0.1.1", "clusterUuid": c2,
                "cpuCapacity": 4, "memoryCapacity": 8 * GB}})),
        )
        .await["inventory"]["uuid"]);
    let before = state(&srv, &t.ps).await;
    for h in [other.as_str(), "0123456789ab4def8123456789abcdff"] {
        let e = srv.fails("POST", "/volumes/data", Some(data_volume("x", Some(&t.ps), &host_tag(h), Some(bad)))).await;
        assert_error(
            &e,
            "SYS.1007",
            &format!("the host[uuid:{h}] doesn't belong to the local primary storage[uuid:{}]", t.ps),
        );
        assert_eq!(state(&srv, &t.ps).await, before);
        assert!(srv.query(&format!("/volumes/{bad}")).await.is_empty());
    }
    // another localStorage:: tag is no tag of this API
    let e = srv
        .fails("POST", "/volumes/data", Some(data_volume("x", Some(&t.ps), &["localStorage::bogus".into()], Some(bad))))
        .await;
    assert_error(&e, "SYS.1007", "no system tag matches localStorage::bogus");
    assert_eq!(state(&srv, &t.ps).await, before);

    // no primary storage: NotInstantiated, no ref; a simulator storage: Ready, no ref
    let mut body = data_volume("n", None, &host_tag(&h1), None);
    body["userTags"] = json!(["ut"]);
    let n = srv.ok("POST", "/volumes/data", Some(body)).await["inventory"].clone();
    assert_eq!(n["status"], "NotInstantiated");
    assert!(n.get("primaryStorageUuid").is_none(), "{n}");
    // its tags go when it is expunged
    let nu = s(&n["uuid"]);
    assert_eq!(srv.query(&format!("/user-tags?q=resourceUuid={nu}")).await.len(), 1);
    srv.ok("DELETE", &format!("/volumes/{nu}"), None).await;
    srv.ok("PUT", &format!("/volumes/{nu}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    assert!(srv.query(&format!("/volumes/{nu}")).await.is_empty());
    assert!(srv.query(&format!("/user-tags?q=resourceUuid={nu}")).await.is_empty());
    let sim = s(&srv.query("/primary-storage?q=type=SimulatorPrimaryStorage").await[0]["uuid"]);
    let o = srv.ok("POST", "/volumes/data", Some(data_volume("o", Some(&sim), &host_tag(&h1), None))).await
        ["inventory"]
        .clone();
    assert_eq!(o["status"], "Ready");
    assert_eq!(o["primaryStorageUuid"], sim.as_str());
    let refs = local_refs(&srv, &t.ps).await;
    assert_eq!(refs.keys().cloned().collect::<Vec<_>>(), {
        let mut k = vec![d.clone(), snap.clone()];
        k.sort();
        k
    });
    assert!(local_refs(&srv, &sim).await.is_empty());

    // a VM made with the volume: on h1 although h1 is the busier host; h0 designated: refused
    let l3 = network(&srv, &t, "n", 10, 60).await;
    srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "busy", "hostUuid": h1, "l3NetworkUuids": [l3]}))))
        .await;
    let with_data = |extra: Value| {
        let mut b = create(
            &t,
            json!({"name": "w", "l3NetworkUuids": [l3], "diskAOs": [
                {"boot": true, "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"},
                {"sourceType": "VolumeVO", "sourceUuid": d}]}),
        );
        for (k, v) in extra.as_object().unwrap() {
            b["params"][k] = v.clone();
        }
        b
    };
    let bad_vm = "0123456789ab4def8123456789abcd12";
    let before = (state(&srv, &t.ps).await, rows(&srv).await);
    let e = srv.fails("POST", "/vm-instances", Some(with_data(json!({"hostUuid": h0, "resourceUuid": bad_vm})))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("is on the host[uuid:{h0}] but the data volume[uuid: {d}] is on the host[uuid: {h1}]"),
    );
    assert_eq!((state(&srv, &t.ps).await, rows(&srv).await), before);
    let w = srv.ok("POST", "/vm-instances", Some(with_data(json!({})))).await["inventory"].clone();
    assert_eq!(w["hostUuid"], h1.as_str(), "the host holding the data volume");
    assert_eq!(volume_of(&w, "Data")["uuid"], d.as_str());
    assert_eq!(volume_of(&w, "Data")["vmInstanceUuid"], w["uuid"]);
    let refs = local_refs(&srv, &t.ps).await;
    assert_eq!(refs[d.as_str()], before.0 .1[d.as_str()], "the volume's ref is kept as it was");
    assert_eq!(refs[s(&w["rootVolumeUuid"]).as_str()]["hostUuid"], h1.as_str());
}

/// Deleting a host with LocalStorage files (upstream LocalStorageFactory.beforeDeleteHost +
/// LocalStorageBase.deleteResourceRef): the VMs whose root volume is on its disk go with their
/// NICs and addresses, every volume and snapshot on its disk goes, and their refs; the other
/// host's VMs, volumes,
/// snapshots and refs stay as they were; the capacity the volumes held goes back.
#[tokio::test]
async fn deleting_a_host_drops_what_its_disk_held() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    // on h0: a VM with a data disk, a data volume with a snapshot
    let b = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "b", "hostUuid": h0, "l3NetworkUuids": [l3], "dataDiskSizes": [GB]}))),
        )
        .await["inventory"]
        .clone();
    let d0 = s(&srv.ok("POST", "/volumes/data", Some(data_volume("d0", Some(&t.ps), &host_tag(&h0), None))).await
        ["inventory"]["uuid"]);
    srv.ok("POST", &format!("/volumes/{d0}/volume-snapshots"), Some(json!({"params": {"name": "s0"}}))).await;
    let keep = (
        srv.query("/vm-instances").await,
        srv.query("/volumes").await,
        srv.query("/volume-snapshots").await,
        local_refs(&srv, &t.ps).await,
        host_available(&srv, &t.ps, &h0).await,
        used_ips(&srv).await,
    );

    // on h1: a VM with a data disk and snapshots of both, a stopped VM, a lone data volume
    // with a snapshot
    let a = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"name": "a", "hostUuid": h1, "l3NetworkUuids": [l3], "diskAOs": [
                    {"boot": true, "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"},
                    {"size": GB}]}),
            )),
        )
        .await["inventory"]
        .clone();
    let (a_uuid, a_root) = (s(&a["uuid"]), s(&a["rootVolumeUuid"]));
    let a_data: Vec<String> =
        a["allVolumes"].as_array().unwrap().iter().filter(|v| v["type"] == "Data").map(|v| s(&v["uuid"])).collect();
    assert_eq!(a_data.len(), 1, "{a}");
    for v in [&a_root, &a_data[0]] {
        srv.ok("POST", &format!("/volumes/{v}/volume-snapshots"), Some(json!({"params": {"name": "sa"}}))).await;
    }
    let c = s(&srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "c", "hostUuid": h1, "l3NetworkUuids": [l3]}))))
        .await["inventory"]["uuid"]);
    srv.ok("PUT", &format!("/vm-instances/{c}/actions"), Some(json!({"stopVmInstance": {}}))).await;
    let d1 = s(&srv.ok("POST", "/volumes/data", Some(data_volume("d1", Some(&t.ps), &host_tag(&h1), None))).await
        ["inventory"]["uuid"]);
    srv.ok("POST", &format!("/volumes/{d1}/volume-snapshots"), Some(json!({"params": {"name": "s1"}}))).await;
    let on_h1 = srv.query(&format!("/primary-storage/local-storage/resource-refs?q=hostUuid={h1}")).await;
    assert_eq!(on_h1.len(), 7, "a: root, data, 2 snapshots; c: root; d1 and its snapshot: {on_h1:?}");
    assert!(used_ips(&srv).await > keep.5);

    srv.ok("DELETE", &format!("/hosts/{h1}"), None).await;
    assert!(srv.query(&format!("/hosts/{h1}")).await.is_empty());
    for vm in [&a_uuid, &c] {
        assert!(srv.query(&format!("/vm-instances/{vm}")).await.is_empty(), "{vm} is gone");
        assert!(srv.query(&format!("/vm-instances/nics?q=vmInstanceUuid={vm}")).await.is_empty());
    }
    for v in [&a_root, &a_data[0], &d1] {
        assert!(srv.query(&format!("/volumes/{v}")).await.is_empty(), "{v} is gone");
        assert!(srv.query(&format!("/volume-snapshots?q=volumeUuid={v}")).await.is_empty());
    }
    assert!(srv.query(&format!("/primary-storage/local-storage/resource-refs?q=hostUuid={h1}")).await.is_empty());
    // h0's things as they were, the addresses back; the storage is now h0's disk alone (its
    // figures are the sum of its hosts': h1's share left with h1, as upstream)
    let after = (
        srv.query("/vm-instances").await,
        srv.query("/volumes").await,
        srv.query("/volume-snapshots").await,
        local_refs(&srv, &t.ps).await,
        host_available(&srv, &t.ps, &h0).await,
        used_ips(&srv).await,
    );
    assert_eq!(after, keep);
    assert_eq!(ps_available(&srv, &t.ps).await, keep.4);
    assert_eq!(s(&b["hostUuid"]), h0);
    // h0 still serves: a VM is made there
    let again =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "again", "l3NetworkUuids": [l3]})))).await;
    assert_eq!(again["inventory"]["hostUuid"], h0.as_str());
}

/// Deleting a host whose VMs' volumes are on shared storage: its running VMs are stopped
/// (upstream VmCascadeExtension), keeping their volumes and addresses and the host as their
/// last host, and start again on another host; VMs elsewhere are untouched.
#[tokio::test]
async fn deleting_a_host_stops_its_vms_on_shared_storage() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let mk = |name: &str, h: &str| create(&t, json!({"name": name, "hostUuid": h, "l3NetworkUuids": [l3]}));
    let a = srv.ok("POST", "/vm-instances", Some(mk("a", &h1))).await["inventory"].clone();
    let b = srv.ok("POST", "/vm-instances", Some(mk("b", &h0))).await["inventory"].clone();
    let a_uuid = s(&a["uuid"]);
    let ips = used_ips(&srv).await;
    let b_before = srv.query(&format!("/vm-instances/{}", s(&b["uuid"]))).await;

    srv.ok("DELETE", &format!("/hosts/{h1}"), None).await;
    let a2 = srv.query(&format!("/vm-instances/{a_uuid}")).await[0].clone();
    assert_eq!(a2["state"], "Stopped");
    assert!(a2.get("hostUuid").is_none(), "{a2}");
    assert_eq!(a2["lastHostUuid"], h1.as_str());
    assert_eq!(a2["vmNics"][0]["ip"], a["vmNics"][0]["ip"]);
    assert_eq!(volume_of(&a2, "Root")["status"], "Ready");
    assert_eq!(used_ips(&srv).await, ips);
    assert_eq!(srv.query(&format!("/vm-instances/{}", s(&b["uuid"]))).await, b_before);

    let started = srv.ok("PUT", &format!("/vm-instances/{a_uuid}/actions"), Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(started["inventory"]["state"], "Running");
    assert_eq!(started["inventory"]["hostUuid"], h0.as_str());
}
