//! LocalStorage capacity per host (upstream LocalStorageHostRefVO): a row per host of the
//! clusters a LocalStorage is attached to, the storage's figures the sum of its hosts', every
//! allocation taken from (and given back to) the disk of the host holding the file, hosts
//! without room skipped by the VM allocator, and GetLocalStorageHostDiskCapacity.
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// GetLocalStorageHostDiskCapacity for every host of `ps`: hostUuid → the answer's entry.
async fn disks(srv: &Server, ps: &str) -> BTreeMap<String, Value> {
    srv.query(&format!("/primary-storage/local-storage/{ps}/capacities"))
        .await
        .into_iter()
        .map(|c| (s(&c["hostUuid"]), c))
        .collect()
}

async fn available(srv: &Server, ps: &str, host: &str) -> i64 {
    let r = srv.query(&format!("/primary-storage/local-storage/{ps}/capacities?hostUuid={host}")).await;
    assert_eq!(r.len(), 1, "{r:?}");
    r[0]["availableCapacity"].as_i64().unwrap()
}

async fn storage(srv: &Server, ps: &str) -> Value {
    srv.query(&format!("/primary-storage/{ps}")).await[0].clone()
}

fn sum(d: &BTreeMap<String, Value>, field: &str) -> i64 {
    d.values().map(|c| c[field].as_i64().unwrap()).sum()
}

/// The storage's figures are the sum of its hosts' rows.
async fn assert_sums(srv: &Server, ps: &str) {
    let d = disks(srv, ps).await;
    let p = storage(srv, ps).await;
    for f in ["totalCapacity", "availableCapacity", "totalPhysicalCapacity", "availablePhysicalCapacity"] {
        assert_eq!(p[f].as_i64().unwrap(), sum(&d, f), "{f}: {p} {d:?}");
    }
}

async fn add_host(srv: &Server, cluster: &str, name: &str, ip: &str) -> String {
    s(&srv
        .ok(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": name, "managementIp": ip, "clusterUuid": cluster,
                "cpuCapacity": 4, "memoryCapacity": 8 * GB}})),
        )
        .await["inventory"]["uuid"])
}

fn on_host(name: &str, ps: &str, host: &str, size: i64) -> Value {
    json!({"params": {"name": name, "diskSize": size, "primaryStorageUuid": ps},
        "systemTags": [format!("localStorage::hostUuid::{host}")]})
}

/// What a refused VM creation must leave as it was: rows, hosts' CPU/memory, the disks, the
/// storage, the LocalStorage resource refs.
async fn leftover(srv: &Server, t: &Topo) -> impl PartialEq + std::fmt::Debug {
    (
        rows(srv).await,
        usage(srv, t).await.0,
        disks(srv, &t.ps).await,
        storage(srv, &t.ps).await,
        srv.query("/primary-storage/local-storage/resource-refs").await,
    )
}

async fn expunge_volume(srv: &Server, v: &str) {
    srv.ok("DELETE", &format!("/volumes/{v}"), None).await;
    srv.ok("PUT", &format!("/volumes/{v}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
}

async fn expunge_vm(srv: &Server, vm: &str) {
    srv.ok("DELETE", &format!("/vm-instances/{vm}"), None).await;
    srv.ok("PUT", &format!("/vm-instances/{vm}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
}

/// Rows appear for each host of the attached cluster and for a host joining it, go with a
/// deleted host and with a detach; the storage's figures follow (the sum of its hosts').
/// GetLocalStorageHostDiskCapacity answers every host, or one; a Connected host that is not the
/// storage's, an unknown host and a storage of another type are refused with upstream's errors.
#[tokio::test]
async fn host_rows_and_disk_capacity() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let d = disks(&srv, &t.ps).await;
    assert_eq!(d.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![h0.clone(), h1.clone()];
        v.sort();
        v
    });
    for c in d.values() {
        let total = c["totalCapacity"].as_i64().unwrap();
        let avail = c["availableCapacity"].as_i64().unwrap();
        assert!(total > 0 && avail > 0 && avail <= total, "{c}");
        assert_eq!(c["totalPhysicalCapacity"], total, "{c}");
        assert_eq!(c["availablePhysicalCapacity"], avail, "{c}");
        let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{c}");
    }
    assert_sums(&srv, &t.ps).await;
    // one host
    let one = srv.query(&format!("/primary-storage/local-storage/{}/capacities?hostUuid={h1}", t.ps)).await;
    assert_eq!(one, vec![d[&h1].clone()]);

    // a host joining the cluster gets its row, and the storage its share
    let h2 = add_host(&srv, &t.cluster, "h2", "10.0.0.9").await;
    let d = disks(&srv, &t.ps).await;
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d[&h2]["totalCapacity"].as_i64().unwrap() > 0);
    assert_sums(&srv, &t.ps).await;

    // refusals, nothing changed
    let before = (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await);
    let c2 = s(&srv
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"name": "c2", "zoneUuid": t.zone, "hypervisorType": "Simulator"}})),
        )
        .await["inventory"]["uuid"]);
    let other = add_host(&srv, &c2, "o", "10.0.1.1").await;
    let r = srv.get(&format!("/primary-storage/local-storage/{}/capacities?hostUuid={other}", t.ps)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1003",
        &format!("local primary storage[uuid:{}] doesn't have the host[uuid:{other}]", t.ps),
    );
    let bad = "0123456789ab4def8123456789abcdef";
    let r = srv.get(&format!("/primary-storage/local-storage/{}/capacities?hostUuid={bad}", t.ps)).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1003",
        &format!("invalid field[hostUuid], resource[uuid:{bad}, type:HostVO] not found"),
    );
    let r = srv.get(&format!("/primary-storage/local-storage/{bad}/capacities")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(&r.body["error"], "SYS.1003", "invalid field[primaryStorageUuid]");
    // the topology's simulator storage is not LocalStorage: no service handles the message
    let sim = srv.query("/primary-storage?q=type=SimulatorPrimaryStorage").await;
    let r = srv.get(&format!("/primary-storage/local-storage/{}/capacities", s(&sim[0]["uuid"]))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(&r.body["error"], "SYS.1008", "No service deals with message");
    assert_eq!((disks(&srv, &t.ps).await, storage(&srv, &t.ps).await), before);

    // a deleted host takes its row and its share away
    srv.ok("DELETE", &format!("/hosts/{h2}"), None).await;
    let d = disks(&srv, &t.ps).await;
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(!d.contains_key(&h2));
    assert_sums(&srv, &t.ps).await;

    // detached from the cluster: no rows (the storage keeps the last host's figures)
    srv.ok("DELETE", &format!("/clusters/{}/primary-storage/{}", t.cluster, t.ps), None).await;
    assert!(disks(&srv, &t.ps).await.is_empty());
    let p = storage(&srv, &t.ps).await;
    assert!(p["totalCapacity"].as_i64().unwrap() > 0, "{p}");
    // attached again: the rows come back
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{}", t.cluster, t.ps), None).await;
    assert_eq!(disks(&srv, &t.ps).await.len(), 2);
    assert_sums(&srv, &t.ps).await;
}

/// A VM's volumes take their sizes from the disk of the host it runs on (and from the storage),
/// nothing from the other host's; expunging the VM and its data volume gives them back exactly.
/// A data volume made with `localStorage::hostUuid::` takes from that host's disk, and gives it
/// back when expunged; one larger than that disk's room is refused with upstream's text.
#[tokio::test]
async fn allocations_take_from_the_hosts_disk_and_come_back() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let start = (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await["availableCapacity"].clone());

    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "a", "hostUuid": h0, "l3NetworkUuids": [l3], "dataDiskSizes": [GB]}))),
        )
        .await["inventory"]
        .clone();
    let vols = vm["allVolumes"].as_array().unwrap().clone();
    let taken: i64 = vols.iter().map(|v| v["size"].as_i64().unwrap()).sum();
    assert!(taken > GB, "{vm}");
    let d = disks(&srv, &t.ps).await;
    assert_eq!(
        d[&h0]["availableCapacity"].as_i64().unwrap(),
        start.0[&h0]["availableCapacity"].as_i64().unwrap() - taken
    );
    assert_eq!(d[&h1], start.0[&h1], "the other host's disk is untouched");
    assert_eq!(d[&h0]["totalCapacity"], start.0[&h0]["totalCapacity"]);
    assert_sums(&srv, &t.ps).await;

    // a data volume on h1's disk
    let h1_free = available(&srv, &t.ps, &h1).await;
    let dv = s(&srv.ok("POST", "/volumes/data", Some(on_host("d", &t.ps, &h1, 2 * GB))).await["inventory"]["uuid"]);
    assert_eq!(available(&srv, &t.ps, &h1).await, h1_free - 2 * GB);
    assert_sums(&srv, &t.ps).await;
    // more than h1's disk has: refused, nothing made or taken
    let before = (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await, srv.query("/volumes").await);
    let too_big = h1_free - 2 * GB + 1;
    let e = srv.fails("POST", "/volumes/data", Some(on_host("x", &t.ps, &h1, too_big))).await;
    // the storage as a whole has room (h0's disk); h1's has not
    assert!(before.1["availableCapacity"].as_i64().unwrap() >= too_big);
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "the required host[uuid:{h1}] cannot satisfy conditions[state: Enabled, status: Connected, size > \
             {too_big} bytes], or doesn't belong to a local primary storage satisfying conditions[state: Enabled, \
             status: Connected], or its cluster doesn't attach to any local primary storage"
        ),
    );
    assert_eq!((disks(&srv, &t.ps).await, storage(&srv, &t.ps).await, srv.query("/volumes").await), before);

    expunge_volume(&srv, &dv).await;
    assert_eq!(available(&srv, &t.ps, &h1).await, h1_free);
    // the VM, then its data volume (detached by the VM's expunge)
    expunge_vm(&srv, &s(&vm["uuid"])).await;
    let data = s(&vols.iter().find(|v| v["type"] == "Data").unwrap()["uuid"]);
    expunge_volume(&srv, &data).await;
    assert_eq!((disks(&srv, &t.ps).await, storage(&srv, &t.ps).await["availableCapacity"].clone()), start);
}

/// A host whose disk has too little room is skipped by the VM allocator even though the storage
/// as a whole has room; a VM designated to it, and any VM once no host has room, is refused with
/// upstream's error (HOST_ALLOCATION.1000 under SYS.1006), leaving nothing behind.
#[tokio::test]
async fn a_host_without_room_is_skipped() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    // h0's disk full
    let fill0 = s(&srv
        .ok("POST", "/volumes/data", Some(on_host("f0", &t.ps, &h0, available(&srv, &t.ps, &h0).await)))
        .await["inventory"]["uuid"]);
    assert_eq!(available(&srv, &t.ps, &h0).await, 0);
    // LeastVmPreferred would put the second VM on h0 (no VM there); both go to h1
    let mut vms = Vec::new();
    for name in ["a", "b"] {
        let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": name, "l3NetworkUuids": [l3]})))).await;
        assert_eq!(vm["inventory"]["hostUuid"], h1.as_str(), "{vm}");
        vms.push(vm["inventory"].clone());
    }
    let root = vms[0]["allVolumes"][0]["size"].as_i64().unwrap();
    assert_sums(&srv, &t.ps).await;

    let nothing = leftover(&srv, &t).await;
    // designated to h0: refused
    let e = srv
        .fails("POST", "/vm-instances", Some(create(&t, json!({"name": "c", "hostUuid": h0, "l3NetworkUuids": [l3]}))))
        .await;
    assert_error(&e, "SYS.1006", "the local primary storage has no hosts with enough disk capacity");
    assert_error(
        &e["cause"],
        "HOST_ALLOCATION.1000",
        &format!(
            "the local primary storage has no hosts with enough disk capacity[{root} bytes] required by the vm[uuid:"
        ),
    );
    assert!(leftover(&srv, &t).await == nothing);

    // each disk with half the root volume's size left: the storage as a whole has room for it,
    // no host has
    expunge_volume(&srv, &fill0).await;
    let mut fills = Vec::new();
    for h in [&h0, &h1] {
        let size = available(&srv, &t.ps, h).await - (root / 2 + 1);
        fills.push(s(&srv.ok("POST", "/volumes/data", Some(on_host("f", &t.ps, h, size))).await["inventory"]["uuid"]));
        assert_eq!(available(&srv, &t.ps, h).await, root / 2 + 1);
    }
    assert!(storage(&srv, &t.ps).await["availableCapacity"].as_i64().unwrap() >= root);
    let nothing = leftover(&srv, &t).await;
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"name": "d", "l3NetworkUuids": [l3]})))).await;
    assert_error(&e, "SYS.1006", "the local primary storage has no hosts with enough disk capacity");
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000", "{e}");
    assert!(leftover(&srv, &t).await == nothing);

    // room again on h0: the next VM goes there
    expunge_volume(&srv, &fills[0]).await;
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "e", "l3NetworkUuids": [l3]})))).await;
    assert_eq!(vm["inventory"]["hostUuid"], h0.as_str());
    expunge_volume(&srv, &fills[1]).await;
    assert_sums(&srv, &t.ps).await;
}

/// Growing a volume on LocalStorage takes the growth from its host's disk (more than the disk
/// has is refused with upstream's text, nothing changed); a NotInstantiated volume attached to
/// a VM is made on the disk of the VM's host and takes its size from there; expunged, both give
/// everything back.
#[tokio::test]
async fn resize_and_attach_take_from_the_hosts_disk() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let vm = s(&srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "a", "hostUuid": h1, "l3NetworkUuids": [l3]}))))
        .await["inventory"]["uuid"]);
    let start = disks(&srv, &t.ps).await;

    // resize a data volume on h0
    let d = s(&srv.ok("POST", "/volumes/data", Some(on_host("d", &t.ps, &h0, GB))).await["inventory"]["uuid"]);
    let h0_free = available(&srv, &t.ps, &h0).await;
    srv.ok("PUT", &format!("/volumes/data/resize/{d}/actions"), Some(json!({"resizeDataVolume": {"size": 3 * GB}})))
        .await;
    assert_eq!(available(&srv, &t.ps, &h0).await, h0_free - 2 * GB);
    assert_eq!(disks(&srv, &t.ps).await[&h1], start[&h1]);
    assert_sums(&srv, &t.ps).await;
    // growing by more than h0's disk has (the storage as a whole has it): refused
    let before = (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await, srv.query(&format!("/volumes/{d}")).await);
    let grow = h0_free - 2 * GB + MB;
    assert!(before.1["availableCapacity"].as_i64().unwrap() >= grow);
    let e = srv
        .fails(
            "PUT",
            &format!("/volumes/data/resize/{d}/actions"),
            Some(json!({"resizeDataVolume": {"size": 3 * GB + grow}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("host[uuid: {h0}] of local primary storage[uuid: {}] doesn't have enough capacity", t.ps),
    );
    assert_eq!(
        (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await, srv.query(&format!("/volumes/{d}")).await),
        before
    );

    // a NotInstantiated volume attached to the VM: on h1's disk
    let n = s(&srv.ok("POST", "/volumes/data", Some(json!({"params": {"name": "n", "diskSize": 2 * GB}}))).await
        ["inventory"]["uuid"]);
    let h1_free = available(&srv, &t.ps, &h1).await;
    let v = srv.ok("POST", &format!("/volumes/{n}/vm-instances/{vm}"), Some(json!({"params": {}}))).await;
    assert_eq!(v["inventory"]["status"], "Ready", "{v}");
    assert_eq!(available(&srv, &t.ps, &h1).await, h1_free - 2 * GB);
    assert_sums(&srv, &t.ps).await;

    // one larger than h1's disk has room for (the storage as a whole has it): refused, nothing changed
    let big = available(&srv, &t.ps, &h1).await + MB;
    let b = s(&srv.ok("POST", "/volumes/data", Some(json!({"params": {"name": "b", "diskSize": big}}))).await
        ["inventory"]["uuid"]);
    let before = (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await, srv.query(&format!("/volumes/{b}")).await);
    assert!(before.1["availableCapacity"].as_i64().unwrap() >= big);
    let e = srv.fails("POST", &format!("/volumes/{b}/vm-instances/{vm}"), Some(json!({"params": {}}))).await;
    assert_error(&e, "SYS.1006", &format!("the required host[uuid:{h1}] cannot satisfy conditions"));
    assert_eq!(
        (disks(&srv, &t.ps).await, storage(&srv, &t.ps).await, srv.query(&format!("/volumes/{b}")).await),
        before
    );

    // everything back
    srv.ok("DELETE", &format!("/volumes/{n}/vm-instances"), None).await;
    for v in [&d, &n] {
        expunge_volume(&srv, v).await;
    }
    assert_eq!(disks(&srv, &t.ps).await, start);
    assert_sums(&srv, &t.ps).await;
}

/// Concurrent creates never over-commit a host's disk: with room for three root volumes on
/// each disk, eight creates at once make at most three VMs on each host; the others are refused
/// (the allocator's error, or the primary-storage step's when another create took the room of
/// the host it had chosen in between: on PostgreSQL, whose transactions run side by side, that
/// create fails rather than trying another host) and leave nothing; each disk keeps exactly
/// what its VMs left. On SQLite (one writer at a time) the allocator's view is never stale:
/// exactly six.
#[tokio::test]
async fn concurrent_creates_never_overcommit_a_hosts_disk() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let root = srv.query(&format!("/images/{}", t.image)).await[0]["size"].as_i64().unwrap();
    assert!(root > 0);
    for h in &t.hosts {
        let size = available(&srv, &t.ps, h).await - (3 * root + root / 2);
        srv.ok("POST", "/volumes/data", Some(on_host("f", &t.ps, h, size))).await;
    }
    let refs_before = srv.query("/primary-storage/local-storage/resource-refs").await.len();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let srv = srv.clone();
        let body = create(&t, json!({"name": format!("v{i}"), "l3NetworkUuids": [l3]}));
        tasks.push(tokio::spawn(async move { srv.job("POST", "/vm-instances", Some(body)).await }));
    }
    let mut made = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == 200 {
            made.push(s(&r.body["inventory"]["hostUuid"]));
        } else {
            assert_eq!(r.body["error"]["code"], "SYS.1006", "{}", r.text);
            let cause = r.body["error"]["cause"]["code"].as_str().unwrap_or_default().to_string();
            assert!(cause == "HOST_ALLOCATION.1000" || cause == "PS.1000", "{}", r.text);
        }
    }
    if std::env::var_os("RZSTACK_TEST_DATABASE_URL").is_none() {
        assert_eq!(made.len(), 6, "{made:?}");
    }
    assert!(made.len() >= 2, "{made:?}");
    for h in &t.hosts {
        let on = made.iter().filter(|m| *m == h).count() as i64;
        assert!(on <= 3, "{made:?}");
        assert_eq!(available(&srv, &t.ps, h).await, root / 2 + (3 - on) * root, "{made:?}");
    }
    assert_eq!(srv.query("/vm-instances").await.len(), made.len());
    assert_eq!(srv.query("/primary-storage/local-storage/resource-refs").await.len(), refs_before + made.len());
    assert_sums(&srv, &t.ps).await;
}
