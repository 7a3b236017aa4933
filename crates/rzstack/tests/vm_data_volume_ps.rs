//! The VM system tag `primaryStorageUuidForDataVolume::{uuid}` at CreateVmInstance (upstream
//! VmSystemTags.PRIMARY_STORAGE_UUID_FOR_DATA_VOLUME): the data volumes of dataDiskOfferingUuids
//! and dataDiskSizes go on the named storage, the root volume where the allocator (or
//! primaryStorageUuidForRootVolume) puts it; only hosts whose cluster has the storage are
//! chosen; on LocalStorage the data volumes are on the VM's host's disk; every refusal leaves
//! nothing behind.
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};

fn tagged(t: &Topo, extra: Value, ps: &str) -> Value {
    let mut b = create(t, extra);
    b["systemTags"] = json!([format!("primaryStorageUuidForDataVolume::{ps}")]);
    b
}

async fn sim_ps(srv: &Server, t: &Topo, name: &str, capacity: i64) -> String {
    s(&srv
        .ok(
            "POST",
            "/primary-storage/simulators",
            Some(json!({"params": {"name": name, "url": format!("/sim-{name}"), "zoneUuid": t.zone,
                "totalCapacity": capacity, "availableCapacity": capacity}})),
        )
        .await["inventory"]["uuid"])
}

async fn available(srv: &Server, ps: &str) -> i64 {
    srv.query(&format!("/primary-storage/{ps}")).await[0]["availableCapacity"].as_i64().unwrap()
}

async fn vm_tags(srv: &Server, vm: &str) -> Vec<String> {
    srv.query(&format!("/system-tags?q=resourceUuid={vm}")).await.iter().map(|x| s(&x["tag"])).collect()
}

fn volumes(vm: &Value, ty: &str) -> Vec<Value> {
    vm["allVolumes"].as_array().unwrap().iter().filter(|v| v["type"] == ty).cloned().collect()
}

async fn expunge_vm(srv: &Server, vm: &str) {
    srv.ok("DELETE", &format!("/vm-instances/{vm}"), None).await;
    srv.ok("PUT", &format!("/vm-instances/{vm}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
}

async fn expunge_volume(srv: &Server, v: &str) {
    srv.ok("DELETE", &format!("/volumes/{v}"), None).await;
    srv.ok("PUT", &format!("/volumes/{v}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
}

/// Two storages attached to the cluster: the data volumes (offering and size) on the named one,
/// which gives their room and takes it back when they are expunged; the root volume on the
/// other; the tag stays on the VM; JustCreate then start honours it too.
#[tokio::test]
async fn data_volumes_on_the_named_storage() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let ps2 = sim_ps(&srv, &t, "ps2", 100 * GB).await;
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{ps2}", t.cluster), None).await;
    let off = s(&srv.ok("POST", "/disk-offerings", Some(json!({"params": {"name": "d2", "diskSize": 2 * GB}}))).await
        ["inventory"]["uuid"]);
    let (ps_start, ps2_start) = (available(&srv, &t.ps).await, available(&srv, &ps2).await);

    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(
                &t,
                json!({"l3NetworkUuids": [l3], "primaryStorageUuidForRootVolume": t.ps,
                    "dataDiskOfferingUuids": [off], "dataDiskSizes": [3 * GB]}),
                &ps2,
            )),
        )
        .await["inventory"]
        .clone();
    let u = s(&vm["uuid"]);
    assert_eq!(vm["state"], "Running");
    let root = volumes(&vm, "Root");
    let data = volumes(&vm, "Data");
    assert_eq!(root.len(), 1);
    assert_eq!(root[0]["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(data.len(), 2, "{vm}");
    let mut sizes: Vec<i64> = data.iter().map(|d| d["size"].as_i64().unwrap()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![2 * GB, 3 * GB]);
    for d in &data {
        assert_eq!(d["primaryStorageUuid"], ps2.as_str(), "{d}");
        assert!(s(&d["installPath"]).starts_with("/sim-ps2/dataVolumes/"), "{d}");
    }
    let root_size = root[0]["size"].as_i64().unwrap();
    assert_eq!(available(&srv, &t.ps).await, ps_start - root_size);
    assert_eq!(available(&srv, &ps2).await, ps2_start - 5 * GB);
    assert!(vm_tags(&srv, &u).await.contains(&format!("primaryStorageUuidForDataVolume::{ps2}")));

    // no root storage named: the data volumes still go on the named one
    let vm2 = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(&t, json!({"name": "vm2", "l3NetworkUuids": [l3], "dataDiskSizes": [GB]}), &ps2)),
        )
        .await["inventory"]
        .clone();
    assert_eq!(volumes(&vm2, "Data")[0]["primaryStorageUuid"], ps2.as_str());
    assert_eq!(available(&srv, &ps2).await, ps2_start - 6 * GB);

    // JustCreate, then start: the stored plan keeps the storage
    let vm3 = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(
                &t,
                json!({"name": "vm3", "l3NetworkUuids": [l3], "primaryStorageUuidForRootVolume": t.ps,
                    "dataDiskSizes": [GB], "strategy": "JustCreate"}),
                &ps2,
            )),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm3["state"], "Created");
    let u3 = s(&vm3["uuid"]);
    let started = srv.ok("PUT", &format!("/vm-instances/{u3}/actions"), Some(json!({"startVmInstance": {}}))).await;
    assert_eq!(started["inventory"]["state"], "Running");
    let q = &srv.query(&format!("/vm-instances/{u3}")).await[0];
    assert_eq!(volumes(q, "Data")[0]["primaryStorageUuid"], ps2.as_str(), "{q}");
    assert_eq!(volumes(q, "Root")[0]["primaryStorageUuid"], t.ps.as_str(), "{q}");
    assert_eq!(available(&srv, &ps2).await, ps2_start - 7 * GB);

    // expunged: the VMs' data volumes stay (detached) until they are expunged themselves,
    // then every byte is back
    for vm in [&u, &s(&vm2["uuid"]), &u3] {
        let q = srv.query(&format!("/vm-instances/{vm}")).await[0].clone();
        expunge_vm(&srv, vm).await;
        for d in volumes(&q, "Data") {
            expunge_volume(&srv, &s(&d["uuid"])).await;
        }
    }
    assert_eq!(available(&srv, &ps2).await, ps2_start);
    assert_eq!(available(&srv, &t.ps).await, ps_start);
}

/// The tag's refusals (upstream's codes and texts), none of which leaves a VM, volume, NIC, IP,
/// tag or any capacity taken: a storage not sharing a cluster with primaryStorageUuidForRootVolume
/// (interceptor), one attached to no candidate host's cluster, missing, disabled or too small
/// (host allocation), and one that has room for the data volumes but not also for the root
/// volume named onto it (the primary-storage step fails after taking the root volume's room).
#[tokio::test]
async fn refusals_leave_nothing_behind() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    // attached to no cluster
    let loose = sim_ps(&srv, &t, "loose", 100 * GB).await;
    // attached, but 4 GiB only
    let small = sim_ps(&srv, &t, "small", 4 * GB).await;
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{small}", t.cluster), None).await;
    // attached, then disabled
    let off = sim_ps(&srv, &t, "off", 100 * GB).await;
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{off}", t.cluster), None).await;
    srv.ok(
        "PUT",
        &format!("/primary-storage/{off}/actions"),
        Some(json!({"changePrimaryStorageState": {"stateEvent": "disable"}})),
    )
    .await;
    let tags = || async { srv.query("/system-tags").await.len() };
    let state = || async {
        (
            rows(&srv).await,
            used_ips(&srv).await,
            usage(&srv, &t).await,
            available(&srv, &small).await,
            available(&srv, &loose).await,
            tags().await,
        )
    };
    let before = state().await;
    let missing = "0123456789ab4def8123456789abcdef";
    // the image is 64 MiB: the root volume takes that much
    let image_size = 64 * MB;
    let cases: Vec<(Value, &str, &str, String)> = vec![
        (
            json!({"primaryStorageUuidForRootVolume": t.ps, "dataDiskSizes": [GB]}),
            loose.as_str(),
            "SYS.1006",
            format!(
                "the primary storage[{}] of the root volume and the primary storage[{loose}] of the data volume are not in the same cluster",
                t.ps
            ),
        ),
        (
            json!({"dataDiskSizes": [GB]}),
            loose.as_str(),
            "SYS.1006",
            format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {} bytes]. \
                 Check the state/status of primary storage and make sure they have been attached to clusters",
                image_size + GB
            ),
        ),
        (
            json!({"dataDiskSizes": [GB]}),
            missing,
            "SYS.1006",
            "cannot find available primary storage[state: Enabled, status: Connected".into(),
        ),
        (
            json!({"dataDiskSizes": [GB]}),
            off.as_str(),
            "SYS.1006",
            "cannot find available primary storage[state: Enabled, status: Connected".into(),
        ),
        (
            json!({"dataDiskSizes": [5 * GB]}),
            small.as_str(),
            "SYS.1006",
            format!(
                "cannot find available primary storage[state: Enabled, status: Connected, available capacity {} bytes]",
                image_size + 5 * GB
            ),
        ),
        (
            json!({"primaryStorageUuidForRootVolume": small, "dataDiskSizes": [4 * GB - 32 * MB]}),
            small.as_str(),
            "SYS.1006",
            "cannot find primary storage satisfying conditions[connected to host:".into(),
        ),
    ];
    for (extra, ps, code, text) in cases {
        let mut p = extra.clone();
        p["l3NetworkUuids"] = json!([l3]);
        let e = srv.fails("POST", "/vm-instances", Some(tagged(&t, p, ps))).await;
        assert_error(&e, code, &text);
        assert_eq!(state().await, before, "{extra} on {ps}");
    }
    // the last case's text names the data volume's size, as upstream's per-disk allocation
    let mut p = json!({"primaryStorageUuidForRootVolume": small, "dataDiskSizes": [4 * GB - 32 * MB]});
    p["l3NetworkUuids"] = json!([l3]);
    let e = srv.fails("POST", "/vm-instances", Some(tagged(&t, p, &small))).await;
    assert_error(&e, "SYS.1006", &format!("status: Connected, available capacity > {}", 4 * GB - 32 * MB));
    assert_eq!(state().await, before);

    // the same storage with room for both: accepted, root and data on it
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(
                &t,
                json!({"l3NetworkUuids": [l3], "primaryStorageUuidForRootVolume": small, "dataDiskSizes": [GB]}),
                &small,
            )),
        )
        .await["inventory"]
        .clone();
    for v in vm["allVolumes"].as_array().unwrap() {
        assert_eq!(v["primaryStorageUuid"], small.as_str(), "{v}");
    }
    assert_eq!(available(&srv, &small).await, 4 * GB - image_size - GB);
}

/// Only hosts whose cluster has the named storage are chosen: a second cluster without it is
/// never used, even when it is the only one with room otherwise.
#[tokio::test]
async fn only_clusters_with_the_storage() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 40).await;
    // a second cluster on the same L2 and storage, but without ps2
    let c2 = s(&srv
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"name": "c2", "zoneUuid": t.zone, "hypervisorType": "Simulator"}})),
        )
        .await["inventory"]["uuid"]);
    let h2 = s(&srv
        .ok(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": "h2", "managementIp": "10.0.1.1", "clusterUuid": c2,
                "cpuCapacity": 4, "memoryCapacity": 8 * GB}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/clusters/{c2}/primary-storage/{}", t.ps), None).await;
    let l2 = s(&srv.query(&format!("/l3-networks/{l3}")).await[0]["l2NetworkUuid"]);
    srv.ok("POST", &format!("/l2-networks/{l2}/clusters/{c2}"), None).await;
    let ps2 = sim_ps(&srv, &t, "ps2", 100 * GB).await;
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{ps2}", t.cluster), None).await;
    for i in 0..4 {
        let vm = srv
            .ok(
                "POST",
                "/vm-instances",
                Some(tagged(
                    &t,
                    json!({"name": format!("v{i}"), "clusterUuid": null, "l3NetworkUuids": [l3], "dataDiskSizes": [GB]}),
                    &ps2,
                )),
            )
            .await["inventory"]
            .clone();
        assert_eq!(vm["hostUuid"], t.hosts[0].as_str(), "{vm}");
        assert_ne!(vm["hostUuid"], h2.as_str());
        assert_eq!(volumes(&vm, "Data")[0]["primaryStorageUuid"], ps2.as_str());
    }
}

/// LocalStorage as the data volumes' storage: their files on the VM's host's disk (a resource
/// ref naming that host, that host's share of the storage taken, the other host's untouched),
/// given back on expunge; with a non-local storage in the cluster too, upstream's refusal.
#[tokio::test]
async fn local_storage_data_volumes_on_the_vm_host() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let url = t._dir.path().join("local-ps2");
    let local2 = s(&srv
        .ok(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "local2", "url": url.to_str().unwrap(), "zoneUuid": t.zone}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{local2}", t.cluster), None).await;
    let disk = |ps: String, h: String| {
        let srv = &srv;
        async move {
            let r = srv.query(&format!("/primary-storage/local-storage/{ps}/capacities?hostUuid={h}")).await;
            r[0]["availableCapacity"].as_i64().unwrap()
        }
    };
    let start: Vec<i64> = [
        disk(local2.clone(), t.hosts[0].clone()).await,
        disk(local2.clone(), t.hosts[1].clone()).await,
        available(&srv, &local2).await,
    ]
    .to_vec();

    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(
                &t,
                json!({"l3NetworkUuids": [l3], "primaryStorageUuidForRootVolume": t.ps, "dataDiskSizes": [GB]}),
                &local2,
            )),
        )
        .await["inventory"]
        .clone();
    let u = s(&vm["uuid"]);
    let host = s(&vm["hostUuid"]);
    let other = t.hosts.iter().find(|h| **h != host).unwrap().clone();
    let data = volumes(&vm, "Data");
    assert_eq!(data[0]["primaryStorageUuid"], local2.as_str());
    assert_eq!(volumes(&vm, "Root")[0]["primaryStorageUuid"], t.ps.as_str());
    let refs = srv.query("/primary-storage/local-storage/resource-refs").await;
    let r = refs.iter().find(|r| r["resourceUuid"] == data[0]["uuid"]).unwrap_or_else(|| panic!("{refs:?}"));
    assert_eq!(r["hostUuid"], host.as_str());
    assert_eq!(r["primaryStorageUuid"], local2.as_str());
    let i = if host == t.hosts[0] { 0 } else { 1 };
    assert_eq!(disk(local2.clone(), host.clone()).await, start[i] - GB);
    assert_eq!(disk(local2.clone(), other.clone()).await, start[1 - i]);
    assert_eq!(available(&srv, &local2).await, start[2] - GB);

    expunge_vm(&srv, &u).await;
    expunge_volume(&srv, &s(&data[0]["uuid"])).await;
    assert_eq!(disk(local2.clone(), host.clone()).await, start[i]);
    assert_eq!(available(&srv, &local2).await, start[2]);

    // a non-local storage in the cluster as well: LocalStorage cannot take the data volumes
    let sim = sim_ps(&srv, &t, "sim2", 100 * GB).await;
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{sim}", t.cluster), None).await;
    let before = (
        rows(&srv).await,
        used_ips(&srv).await,
        usage(&srv, &t).await.0,
        available(&srv, &local2).await,
        available(&srv, &t.ps).await,
        available(&srv, &sim).await,
        srv.query("/primary-storage/local-storage/resource-refs").await,
    );
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(tagged(
                &t,
                json!({"l3NetworkUuids": [l3], "primaryStorageUuidForRootVolume": t.ps, "dataDiskSizes": [GB]}),
                &local2,
            )),
        )
        .await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "The cluster mounts multiple primary storage[{local2}(LocalStorage), other non-LocalStorage primary storage], \
             primaryStorageUuidForDataVolume cannot be specified LocalStorage"
        ),
    );
    let after = (
        rows(&srv).await,
        used_ips(&srv).await,
        usage(&srv, &t).await.0,
        available(&srv, &local2).await,
        available(&srv, &t.ps).await,
        available(&srv, &sim).await,
        srv.query("/primary-storage/local-storage/resource-refs").await,
    );
    assert_eq!(after, before);
}

/// Creates naming two storages in opposite roles at the same time (root on one and data on the
/// other, and the reverse) all succeed: the storage rows are taken in one order (on PostgreSQL
/// opposite orders would deadlock and abort one of them), and every byte is accounted for.
#[tokio::test]
async fn opposite_roles_at_once() {
    let srv = Server::start().await;
    let t = topology(&srv, 4).await;
    let l3 = network(&srv, &t, "a", 10, 60).await;
    let ps2 = sim_ps(&srv, &t, "ps2", 1000 * GB).await;
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{ps2}", t.cluster), None).await;
    let (a0, b0) = (available(&srv, &t.ps).await, available(&srv, &ps2).await);
    let body = |i: usize| {
        let (root, data) = if i.is_multiple_of(2) { (&t.ps, &ps2) } else { (&ps2, &t.ps) };
        tagged(
            &t,
            json!({"name": format!("o{i}"), "l3NetworkUuids": [l3], "primaryStorageUuidForRootVolume": root,
                "dataDiskSizes": [GB]}),
            data,
        )
    };
    let all = futures::future::join_all((0..16).map(|i| srv.job("POST", "/vm-instances", Some(body(i))))).await;
    for r in &all {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let vms = srv.query("/vm-instances").await;
    assert_eq!(vms.len(), 16);
    let held = |ps: &str| -> i64 {
        vms.iter()
            .flat_map(|v| v["allVolumes"].as_array().unwrap().clone())
            .filter(|v| v["primaryStorageUuid"] == ps)
            .map(|v| v["size"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(available(&srv, &t.ps).await, a0 - held(&t.ps));
    assert_eq!(available(&srv, &ps2).await, b0 - held(&ps2));
}
