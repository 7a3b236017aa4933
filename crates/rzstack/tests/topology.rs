//! The user's day before CreateVmInstance: a whole simulated cloud built through the API in
//! upstream's order, checked through queries (including nested conditions), then torn down
//! by deleting the zone.
mod common;
use common::*;
use serde_json::{json, Value};

const GB: i64 = 1 << 30;

fn uuid(v: &Value) -> String {
    v["inventory"]["uuid"].as_str().expect("inventory uuid").to_string()
}

#[tokio::test]
async fn build_query_and_delete_a_simulated_cloud() {
    let s = Server::start().await;
    let dir = tempfile::Builder::new().prefix("rztopo").tempdir().unwrap();

    // zone → cluster → hosts
    let zone = uuid(&s.ok("POST", "/zones", Some(json!({"params": {"name": "zone1"}}))).await);
    let cluster = uuid(
        &s.ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": zone, "name": "c1", "hypervisorType": "Simulator"}})),
        )
        .await,
    );
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let h = s
            .ok(
                "POST",
                "/hosts/simulators",
                Some(json!({"params": {"name": format!("h{i}"), "managementIp": format!("10.1.0.{i}"),
                    "clusterUuid": cluster, "cpuCapacity": 8, "memoryCapacity": 16 * GB}})),
            )
            .await;
        assert_eq!(h["inventory"]["status"], "Connected", "{h}");
        assert_eq!(h["inventory"]["state"], "Enabled");
        assert_eq!(h["inventory"]["zoneUuid"], zone.as_str());
        hosts.push(uuid(&h));
    }

    // primary storage: a simulator and a real local directory, both attached
    let sim_ps = uuid(
        &s.ok(
            "POST",
            "/primary-storage/simulators",
            Some(json!({"params": {"name": "sim", "url": "/sim", "zoneUuid": zone, "totalCapacity": 100 * GB, "availableCapacity": 100 * GB}})),
        )
        .await,
    );
    let local_dir = dir.path().join("local");
    let local_ps = uuid(
        &s.ok(
            "POST",
            "/primary-storage/local-storage",
            Some(json!({"params": {"name": "local", "url": local_dir.display().to_string(), "zoneUuid": zone}})),
        )
        .await,
    );
    for ps in [&sim_ps, &local_ps] {
        let a = s.ok("POST", &format!("/clusters/{cluster}/primary-storage/{ps}"), None).await;
        assert_eq!(a["inventory"]["attachedClusterUuids"], json!([cluster]));
    }
    assert_eq!(s.query(&format!("/primary-storage?q=attachedClusterUuids={cluster}")).await.len(), 2);

    // backup storage on this machine, attached to the zone, with a real image added by file://
    let bs = uuid(
        &s.ok(
            "POST",
            "/backup-storage/image-store",
            Some(json!({"params": {"name": "bs", "url": dir.path().join("bs").display().to_string(),
                "hostname": "127.0.0.1", "username": "root", "password": "password"}})),
        )
        .await,
    );
    s.ok("POST", &format!("/zones/{zone}/backup-storage/{bs}"), None).await;
    let img_path = dir.path().join("guest.qcow2");
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img_path)
        .arg("64M")
        .output()
        .expect("qemu-img");
    assert!(out.status.success(), "{out:?}");
    let image = s
        .ok(
            "POST",
            "/images",
            Some(
                json!({"params": {"name": "guest", "url": format!("file://{}", img_path.display()), "format": "qcow2",
                "mediaType": "RootVolumeTemplate", "platform": "Linux", "backupStorageUuids": [bs]}}),
            ),
        )
        .await;
    assert_eq!(image["inventory"]["status"], "Ready", "{image}");
    assert_eq!(image["inventory"]["size"], 64 << 20);
    let image_uuid = uuid(&image);

    // offerings
    let io = uuid(
        &s.ok("POST", "/instance-offerings", Some(json!({"params": {"name": "small", "cpuNum": 1, "memorySize": GB}})))
            .await,
    );
    let dof =
        uuid(&s.ok("POST", "/disk-offerings", Some(json!({"params": {"name": "10g", "diskSize": 10 * GB}}))).await);

    // L2 → cluster, L3, IP range, DHCP
    let l2 = uuid(
        &s.ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "l2", "zoneUuid": zone, "physicalInterface": "eth1"}})),
        )
        .await,
    );
    let a = s.ok("POST", &format!("/l2-networks/{l2}/clusters/{cluster}"), Some(json!({"null": {}}))).await;
    assert_eq!(a["inventory"]["attachedClusterUuids"], json!([cluster]));
    let l3 = uuid(&s.ok("POST", "/l3-networks", Some(json!({"params": {"name": "l3", "l2NetworkUuid": l2}}))).await);
    let range = s
        .ok(
            "POST",
            &format!("/l3-networks/{l3}/ip-ranges"),
            Some(json!({"params": {"name": "r1", "startIp": "192.168.100.10", "endIp": "192.168.100.200",
                "netmask": "255.255.255.0", "gateway": "192.168.100.1"}})),
        )
        .await;
    assert_eq!(range["inventory"]["l3NetworkUuid"], l3.as_str());
    let err = s
        .fails(
            "POST",
            &format!("/l3-networks/{l3}/ip-ranges"),
            Some(json!({"params": {"name": "r2", "startIp": "192.168.100.150", "endIp": "192.168.100.250",
                "netmask": "255.255.255.0", "gateway": "192.168.100.1"}})),
        )
        .await;
    assert_eq!(err["code"], "SYS.1007", "an overlapping range is refused: {err}");
    let flat = s.query("/network-services/providers?q=type=Flat").await;
    let flat_uuid = flat[0]["uuid"].as_str().unwrap().to_string();
    s.ok(
        "POST",
        &format!("/l3-networks/{l3}/network-services"),
        Some(json!({"params": {"networkServices": {flat_uuid.clone(): ["DHCP", "DNS", "Userdata"]}}})),
    )
    .await;

    // What a user checks before creating VMs: nested conditions, counts, schema classes.
    let found = s.query("/l3-networks?q=ipRanges.startIp=192.168.100.10").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["uuid"], l3.as_str());
    assert_eq!(found[0]["ipRanges"].as_array().unwrap().len(), 1);
    let services: Vec<&str> = found[0]["networkServices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["networkServiceType"].as_str())
        .collect();
    assert!(services.contains(&"DHCP"), "{services:?}");
    assert_eq!(s.query("/l3-networks?q=ipRanges.startIp=10.9.9.9").await.len(), 0);
    let r = s.get(&format!("/l3-networks/{l3}")).await;
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.network.l3.L3NetworkInventory");
    assert_eq!(r.body["schema"]["inventories[0].ipRanges[0]"], "org.zstack.header.network.l3.IpRangeInventory");
    let cap = s.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
    assert_eq!(cap.status, 200, "{}", cap.text);
    assert_eq!(cap.body["totalCapacity"], 191);
    assert_eq!(cap.body["availableCapacity"], 191);
    assert_eq!(s.get(&format!("/hosts?q=clusterUuid={cluster}&count=true")).await.body["total"], 3);
    let h = s.query(&format!("/hosts?q=zoneUuid={zone}&sort=-name&limit=1")).await;
    assert_eq!(h[0]["name"], "h3");
    assert_eq!(s.query(&format!("/images?q=backupStorageRefs.backupStorageUuid={bs}")).await.len(), 1);
    assert_eq!(s.query("/instance-offerings?q=cpuNum=1").await[0]["uuid"], io.as_str());
    assert_eq!(s.query("/disk-offerings?q=diskSize>1").await[0]["uuid"], dof.as_str());

    // Deleting the zone takes everything in it; backup storage and images stay (not zone-scoped).
    s.ok("DELETE", &format!("/zones/{zone}"), None).await;
    for path in [
        "/zones".to_string(),
        "/clusters".to_string(),
        "/hosts".to_string(),
        "/primary-storage".to_string(),
        "/l2-networks".to_string(),
        "/l3-networks".to_string(),
        "/l3-networks/ip-ranges".to_string(),
    ] {
        assert_eq!(s.query(&path).await.len(), 0, "{path} not empty after zone deletion");
    }
    let b = s.query(&format!("/backup-storage/{bs}")).await;
    assert_eq!(b[0]["attachedZoneUuids"], json!([]));
    assert_eq!(s.query(&format!("/images/{image_uuid}")).await.len(), 1);
}
