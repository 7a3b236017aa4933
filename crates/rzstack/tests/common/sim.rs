//! A simulated cloud for black-box VM tests: a zone, a Simulator cluster with simulator hosts,
//! simulator primary and backup storage, a real (empty) qcow2 image, an instance offering, and
//! L2/L3 networks with small IP ranges; plus what tests count to prove nothing leaked.

use super::Server;
use serde_json::{json, Value};
use std::process::Command;

pub const GB: i64 = 1 << 30;
pub const MB: i64 = 1 << 20;

pub fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

pub struct Topo {
    pub zone: String,
    pub cluster: String,
    pub hosts: Vec<String>,
    pub ps: String,
    pub image: String,
    pub offering: String,
    pub _dir: tempfile::TempDir,
}

/// zone, a Simulator cluster with `hosts` simulator hosts (4 CPUs, 8 GiB each), a simulator
/// primary storage (100 GiB) attached, a simulator backup storage in the zone with a 64 MiB
/// qcow2 image, an instance offering (1 CPU, 1 GiB; LeastVmPreferred by default).
pub async fn topology(srv: &Server, hosts: usize) -> Topo {
    let zone = s(&srv.create_zone("z").await["uuid"]);
    topology_in(srv, &zone, hosts).await
}

/// [`topology`] in an existing zone.
pub async fn topology_in(srv: &Server, zone: &str, hosts: usize) -> Topo {
    let zone = zone.to_string();
    let cluster = s(&srv
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"name": "c", "zoneUuid": zone, "hypervisorType": "Simulator"}})),
        )
        .await["inventory"]["uuid"]);
    let mut hs = Vec::new();
    for i in 0..hosts {
        let h = srv
            .ok(
                "POST",
                "/hosts/simulators",
                Some(json!({"params": {"name": format!("h{i}"), "managementIp": format!("10.0.0.{}", i + 1),
                    "clusterUuid": cluster, "cpuCapacity": 4, "memoryCapacity": 8 * GB}})),
            )
            .await;
        hs.push(s(&h["inventory"]["uuid"]));
    }
    let ps = s(&srv
        .ok(
            "POST",
            "/primary-storage/simulators",
            Some(json!({"params": {"name": "ps", "url": "/sim-ps", "zoneUuid": zone,
                "totalCapacity": 100 * GB, "availableCapacity": 100 * GB}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/clusters/{cluster}/primary-storage/{ps}"), None).await;
    let bs = s(&srv
        .ok(
            "POST",
            "/backup-storage/simulators",
            Some(json!({"params": {"name": "bs", "url": "/sim-bs", "totalCapacity": 100 * GB, "availableCapacity": 100 * GB}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/zones/{zone}/backup-storage/{bs}"), None).await;
    let dir = tempfile::Builder::new().prefix("rzvm").tempdir().expect("tempdir");
    let qcow = dir.path().join("t.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "64M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let image = s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "img", "url": format!("file://{}", qcow.display()), "format": "qcow2",
                "backupStorageUuids": [bs], "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"}})),
        )
        .await["inventory"]["uuid"]);
    let offering = s(&srv
        .ok("POST", "/instance-offerings", Some(json!({"params": {"name": "small", "cpuNum": 1, "memorySize": GB}})))
        .await["inventory"]["uuid"]);
    Topo { zone, cluster, hosts: hs, ps, image, offering, _dir: dir }
}

/// An L2 NoVlan network attached to the cluster and an L3 on it with the range
/// 192.168.10.`first`-`last` (gateway .1). Returns the L3 uuid.
pub async fn network(srv: &Server, t: &Topo, name: &str, first: u8, last: u8) -> String {
    let l2 = s(&srv
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": name, "zoneUuid": t.zone, "physicalInterface": format!("eth{first}")}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/l2-networks/{l2}/clusters/{}", t.cluster), None).await;
    let l3 = s(&srv.ok("POST", "/l3-networks", Some(json!({"params": {"name": name, "l2NetworkUuid": l2}}))).await
        ["inventory"]["uuid"]);
    srv.ok(
        "POST",
        &format!("/l3-networks/{l3}/ip-ranges"),
        Some(json!({"params": {"name": "r", "startIp": format!("192.168.10.{first}"), "endIp": format!("192.168.10.{last}"),
            "netmask": "255.255.255.0", "gateway": "192.168.10.1"}})),
    )
    .await;
    l3
}

/// Used IPs of the VMs (all L3s).
pub async fn used_ips(srv: &Server) -> usize {
    srv.query("/vm-instances/nics").await.iter().map(|n| n["usedIps"].as_array().map(|a| a.len()).unwrap_or(0)).sum()
}

/// What allocation touches: (per-host available cpu/memory, PS available capacity).
pub async fn usage(srv: &Server, t: &Topo) -> (Vec<(i64, i64)>, i64) {
    let mut h = Vec::new();
    for u in &t.hosts {
        let inv = &srv.query(&format!("/hosts/{u}")).await[0];
        h.push((inv["availableCpuCapacity"].as_i64().unwrap(), inv["availableMemoryCapacity"].as_i64().unwrap()));
    }
    let ps = srv.query(&format!("/primary-storage/{}", t.ps)).await[0]["availableCapacity"].as_i64().unwrap();
    (h, ps)
}

/// Rows a VM creation may leave: VMs, volumes, NICs.
pub async fn rows(srv: &Server) -> (usize, usize, usize) {
    (
        srv.query("/vm-instances").await.len(),
        srv.query("/volumes").await.len(),
        srv.query("/vm-instances/nics").await.len(),
    )
}

pub fn create(t: &Topo, extra: Value) -> Value {
    let mut p =
        json!({"name": "vm1", "instanceOfferingUuid": t.offering, "imageUuid": t.image, "clusterUuid": t.cluster});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            p.as_object_mut().unwrap().remove(k);
        } else {
            p[k] = v.clone();
        }
    }
    json!({"params": p})
}

/// [`topology`] whose cluster uses a LocalStorage primary storage (a directory in the topology's
/// temporary directory; capacity that of its file system) instead of the simulator one, which
/// is detached: each VM's volumes live on the disk of the host it runs on. `ps` is the local one.
pub async fn local_topology(srv: &Server, hosts: usize) -> Topo {
    let t = topology(srv, hosts).await;
    srv.ok("DELETE", &format!("/clusters/{}/primary-storage/{}", t.cluster, t.ps), None).await;
    let url = t._dir.path().join("local-ps");
    let ps = s(&srv
        .ok(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "local", "url": url.to_str().unwrap(), "zoneUuid": t.zone}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{ps}", t.cluster), None).await;
    Topo { ps, ..t }
}

/// Create a 1 GiB data volume named `name`, with `extra` params (e.g. a primary storage); its uuid.
pub async fn new_volume(srv: &Server, name: &str, extra: Value) -> String {
    let mut p = json!({"name": name, "diskSize": GB});
    for (k, v) in extra.as_object().into_iter().flatten() {
        p[k] = v.clone();
    }
    s(&srv.ok("POST", "/volumes/data", Some(json!({"params": p}))).await["inventory"]["uuid"])
}
