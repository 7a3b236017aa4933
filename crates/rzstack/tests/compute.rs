//! Compute infrastructure through the public API: clusters, hosts (simulator and KVM),
//! capacity, global configs, and the zone → cluster → host deletion cascade.
mod common;
use common::*;
use serde_json::{json, Value};

const V: &str = "org.zstack.header.message.ApiMessageParamValidator";
const GB: i64 = 1 << 30;

async fn create_cluster(s: &Server, zone: &str, name: &str, hv: &str) -> Value {
    let b = s
        .ok("POST", "/clusters", Some(json!({"params": {"zoneUuid": zone, "name": name, "hypervisorType": hv}})))
        .await;
    b["inventory"].clone()
}

fn uuid_of(v: &Value) -> String {
    v["uuid"].as_str().expect("uuid").to_string()
}

#[tokio::test]
async fn clusters() {
    let s = Server::start().await;
    let zone = uuid_of(&s.create_zone("zone1").await);

    let r = s
        .job(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": zone, "name": "cluster1", "description": "first",
                "hypervisorType": "KVM", "architecture": "x86_64"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = &r.body["inventory"];
    let cu = uuid_of(c);
    assert_eq!(cu.len(), 32);
    assert_eq!(c["name"], "cluster1");
    assert_eq!(c["description"], "first");
    assert_eq!(c["state"], "Enabled");
    assert_eq!(c["hypervisorType"], "KVM");
    assert_eq!(c["zoneUuid"], zone.as_str());
    assert_eq!(c["type"], "zstack");
    assert_eq!(c["architecture"], "x86_64");
    assert!(c["createDate"].as_str().unwrap().ends_with('M'), "{c}");
    assert!(c["lastOpDate"].as_str().unwrap().ends_with('M'), "{c}");
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.cluster.ClusterInventory");

    // Defaults: no description, no architecture (filled by the first host), type zstack.
    let c2 = create_cluster(&s, &zone, "sim", "Simulator").await;
    assert_eq!(c2["hypervisorType"], "Simulator");
    assert_eq!(c2["type"], "zstack");
    assert!(c2.get("description").is_none(), "{c2}");
    assert!(c2.get("architecture").is_none(), "{c2}");

    // Query forms.
    let all = s.query("/clusters").await;
    assert_eq!(all.len(), 2);
    assert_eq!(s.query(&format!("/clusters/{cu}")).await[0]["name"], "cluster1");
    assert_eq!(s.query("/clusters?q=hypervisorType=Simulator").await.len(), 1);
    assert_eq!(s.query(&format!("/clusters?q=zoneUuid={zone}")).await.len(), 2);
    let r = s.get("/clusters?q=hypervisorType=KVM").await;
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.cluster.ClusterInventory");

    // Update.
    let u = s
        .ok(
            "PUT",
            &format!("/clusters/{cu}/actions"),
            Some(json!({"updateCluster": {"name": "renamed", "description": "d2"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "renamed");
    assert_eq!(u["inventory"]["description"], "d2");
    assert_eq!(u["inventory"]["hypervisorType"], "KVM");

    // State.
    let d = s
        .ok("PUT", &format!("/clusters/{cu}/actions"), Some(json!({"changeClusterState": {"stateEvent": "disable"}})))
        .await;
    assert_eq!(d["inventory"]["state"], "Disabled");
    let e = s
        .ok("PUT", &format!("/clusters/{cu}/actions"), Some(json!({"changeClusterState": {"stateEvent": "enable"}})))
        .await;
    assert_eq!(e["inventory"]["state"], "Enabled");

    // Delete; deleting again succeeds; a malformed uuid does not.
    assert_eq!(s.ok("DELETE", &format!("/clusters/{cu}"), None).await, json!({}));
    assert!(s.query(&format!("/clusters/{cu}")).await.is_empty());
    s.ok("DELETE", &format!("/clusters/{cu}"), None).await;
    let err = s.fails("DELETE", "/clusters/nope", None).await;
    assert_error(&err, "SYS.1003", "invalid value[nope] of field [uuid]");
    assert_eq!(s.query("/clusters").await.len(), 1);
}

#[tokio::test]
async fn cluster_bad_inputs_change_nothing() {
    let s = Server::start().await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let c = create_cluster(&s, &zone, "c1", "KVM").await;
    let cu = uuid_of(&c);

    let err = s.fails("POST", "/clusters", Some(json!({"params": {"zoneUuid": zone, "hypervisorType": "KVM"}}))).await;
    assert_error(&err, "SYS.1007", &format!("field[name] of message[{V}] is mandatory, can not be null"));
    let err = s.fails("POST", "/clusters", Some(json!({"params": {"name": "x", "hypervisorType": "KVM"}}))).await;
    assert_error(&err, "SYS.1007", &format!("field[zoneUuid] of message[{V}] is mandatory, can not be null"));
    let err = s.fails("POST", "/clusters", Some(json!({"params": {"zoneUuid": zone, "name": "x"}}))).await;
    assert_error(&err, "SYS.1007", &format!("field[hypervisorType] of message[{V}] is mandatory, can not be null"));
    let err = s
        .fails("POST", "/clusters", Some(json!({"params": {"zoneUuid": zone, "name": "x", "hypervisorType": "Xen"}})))
        .await;
    assert_error(
        &err,
        "SYS.1007",
        &format!("valid value for field[hypervisorType] of message[{V}] are [KVM, Simulator], but Xen found"),
    );
    let err = s
        .fails(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": zone, "name": "x", "hypervisorType": "KVM", "architecture": "sparc"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "valid value for field[architecture]");
    let err = s
        .fails(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": zone, "name": "x", "hypervisorType": "KVM", "type": "baremetal"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "if cluster type is baremetal, then hypervisorType must be baremetal too");
    let missing = "0123456789abcdef0123456789abcdef";
    let err = s
        .fails(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": missing, "name": "x", "hypervisorType": "KVM"}})),
        )
        .await;
    assert_error(
        &err,
        "SYS.1003",
        &format!("invalid field[zoneUuid], resource[uuid:{missing}, type:ZoneVO] not found"),
    );
    let err =
        s.fails("PUT", &format!("/clusters/{missing}/actions"), Some(json!({"updateCluster": {"name": "y"}}))).await;
    assert_error(&err, "SYS.1003", &format!("invalid field[uuid], resource[uuid:{missing}, type:ClusterVO] not found"));
    let err = s
        .fails("PUT", &format!("/clusters/{cu}/actions"), Some(json!({"updateCluster": {"name": "y".repeat(256)}})))
        .await;
    assert_error(&err, "SYS.1007", "exceeds max length of string. expected was <= 255, actual was 256");
    let err = s
        .fails("PUT", &format!("/clusters/{cu}/actions"), Some(json!({"changeClusterState": {"stateEvent": "pause"}})))
        .await;
    assert_error(&err, "SYS.1007", "valid value for field[stateEvent]");
    let err = s
        .fails(
            "PUT",
            &format!("/clusters/{missing}/actions"),
            Some(json!({"changeClusterState": {"stateEvent": "enable"}})),
        )
        .await;
    assert_error(&err, "SYS.1003", "type:ClusterVO] not found");

    let all = s.query("/clusters").await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0], c.clone(), "the cluster did not change");
}

async fn add_sim_host(s: &Server, cluster: &str, name: &str, ip: &str, cpu: i64, mem: i64) -> Value {
    s.ok(
        "POST",
        "/hosts/simulators",
        Some(json!({"params": {"name": name, "managementIp": ip, "clusterUuid": cluster,
            "cpuCapacity": cpu, "memoryCapacity": mem}})),
    )
    .await["inventory"]
        .clone()
}

async fn capacity(s: &Server, qs: &str) -> Value {
    let r = s.get(&format!("/hosts/capacities/cpu-memory?{qs}")).await;
    assert_eq!(r.status, 200, "{qs}: {}", r.text);
    r.body
}

/// A stand-in KVM agent on a random loopback port: answers /v1/host/connect with fixed facts
/// (or refuses when `refuse` is set) and /v1/host/ping.
struct FakeAgent {
    port: u16,
    refuse: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

async fn fake_agent(cpu: i64, mem: i64, arch: &'static str) -> FakeAgent {
    use axum::routing::post;
    use std::sync::atomic::{AtomicBool, Ordering};
    let refuse = std::sync::Arc::new(AtomicBool::new(false));
    let r1 = refuse.clone();
    let app = axum::Router::new()
        .route(
            "/v1/host/connect",
            post(move |axum::Json(cmd): axum::Json<Value>| {
                let refuse = r1.load(Ordering::SeqCst);
                async move {
                    assert_eq!(cmd["version"], 1);
                    assert!(cmd["hostUuid"].as_str().is_some_and(|u| u.len() == 32), "{cmd}");
                    if refuse {
                        return axum::Json(json!({"version": 1, "success": false, "error": "libvirtd is not running"}));
                    }
                    axum::Json(json!({"version": 1, "success": true, "facts": {
                        "cpuNum": cpu, "cpuSockets": 2, "cpuModelName": "Fake CPU", "memoryBytes": mem,
                        "hypervisorType": "KVM", "hypervisorVersion": "8.2.2", "architecture": arch,
                        "accelerator": "kvm", "osDistribution": "ubuntu", "osRelease": "noble", "osVersion": "24.04"}}))
                }
            }),
        )
        .route("/v1/host/ping", post(|| async { axum::Json(json!({"version": 1, "success": true})) }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    FakeAgent { port, refuse }
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn simulator_hosts_inventory_and_capacity() {
    let s = Server::start().await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = uuid_of(&create_cluster(&s, &zone, "sim", "Simulator").await);

    let r = s
        .job(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": "h1", "description": "first host", "managementIp": "10.0.0.1",
                "clusterUuid": cluster, "cpuCapacity": 8, "memoryCapacity": 16 * GB}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let h = &r.body["inventory"];
    let h1 = uuid_of(h);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.simulator.SimulatorHostInventory");
    assert_eq!(h["zoneUuid"], zone.as_str());
    assert_eq!(h["name"], "h1");
    assert_eq!(h1.len(), 32);
    assert_eq!(h["clusterUuid"], cluster.as_str());
    assert_eq!(h["description"], "first host");
    assert_eq!(h["managementIp"], "10.0.0.1");
    assert_eq!(h["hypervisorType"], "Simulator");
    assert_eq!(h["state"], "Enabled");
    assert_eq!(h["status"], "Connected");
    assert_eq!(h["cpuNum"], 8);
    assert_eq!(h["cpuSockets"], 1);
    assert_eq!(h["totalCpuCapacity"], 80, "cpuNum x the default over-provisioning ratio 10");
    assert_eq!(h["availableCpuCapacity"], 80);
    assert_eq!(h["totalMemoryCapacity"], 16 * GB);
    assert_eq!(h["availableMemoryCapacity"], 16 * GB);
    assert_eq!(h["architecture"], "x86_64");
    assert_eq!(h["cpuCapacity"], 8);
    assert_eq!(h["memoryCapacity"], 16 * GB);
    assert!(h["createDate"].as_str().unwrap().ends_with('M'));
    assert!(h["lastOpDate"].as_str().unwrap().ends_with('M'));
    for absent in ["username", "password", "sshPort"] {
        assert!(h.get(absent).is_none(), "{absent} in {h}");
    }
    // The first host gave the cluster its architecture.
    assert_eq!(s.query(&format!("/clusters/{cluster}")).await[0]["architecture"], "x86_64");

    // Upstream's default simulator capacities.
    let h2 = s
        .ok(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": "h2", "managementIp": "sim-2.example.com", "clusterUuid": cluster}})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(h2["cpuNum"], 1_000_000_000i64);
    assert_eq!(h2["totalMemoryCapacity"], 1_000_000_000i64);
    let h2u = uuid_of(&h2);
    s.ok("DELETE", &format!("/hosts/{h2u}"), None).await;
    let h3 = uuid_of(&add_sim_host(&s, &cluster, "h3", "10.0.0.3", 4, 8 * GB).await);

    // Query: per-row schema class, conditions on capacity.
    let r = s.get("/hosts?sort=name").await;
    let invs = r.body["inventories"].as_array().unwrap();
    assert_eq!(invs.len(), 2);
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.simulator.SimulatorHostInventory");
    assert_eq!(r.body["schema"]["inventories[1]"], "org.zstack.header.simulator.SimulatorHostInventory");
    assert_eq!(s.query(&format!("/hosts/{h1}")).await[0]["name"], "h1");
    assert_eq!(s.query("/hosts?q=totalCpuCapacity>50").await.len(), 1);
    assert_eq!(s.query(&format!("/hosts?q=clusterUuid={cluster}&q=status=Connected")).await.len(), 2);

    // Capacity by host, cluster, zone and all (simulator hosts reserve nothing).
    let c = capacity(&s, &format!("hostUuids={h1}")).await;
    assert_eq!((c["totalCpu"].as_i64(), c["availableCpu"].as_i64()), (Some(80), Some(80)));
    assert_eq!((c["totalMemory"].as_i64(), c["availableMemory"].as_i64()), (Some(16 * GB), Some(16 * GB)));
    assert_eq!(c["managedCpuNum"], 8);
    assert_eq!(c["resourceType"], "HostVO");
    assert_eq!(c["capacityData"][0]["resourceUuid"], h1.as_str());
    for qs in [format!("clusterUuids={cluster}"), format!("zoneUuids={zone}"), "all=true".to_string()] {
        let c = capacity(&s, &qs).await;
        assert_eq!(c["totalCpu"], 120, "{qs}");
        assert_eq!(c["availableCpu"], 120, "{qs}");
        assert_eq!(c["totalMemory"], 24 * GB, "{qs}");
        assert_eq!(c["availableMemory"], 24 * GB, "{qs}");
        assert_eq!(c["managedCpuNum"], 12, "{qs}");
    }
    assert_eq!(capacity(&s, &format!("clusterUuids={cluster}")).await["resourceType"], "ClusterVO");
    assert_eq!(capacity(&s, "all=true").await["resourceType"], "ZoneVO");

    // A disabled host no longer counts.
    s.ok("PUT", &format!("/hosts/{h3}/actions"), Some(json!({"changeHostState": {"stateEvent": "disable"}}))).await;
    assert_eq!(capacity(&s, &format!("zoneUuids={zone}")).await["totalCpu"], 80);

    // Capacity API refusals.
    let r = s.get("/hosts/capacities/cpu-memory").await;
    assert_eq!(r.status, 503);
    assert_error(
        &r.body["error"],
        "SYS.1007",
        "zoneUuids, clusterUuids, hostUuids must at least have one be none-empty list, or all is set to true",
    );
    let missing = "0123456789abcdef0123456789abcdef";
    let r = s.get(&format!("/hosts/capacities/cpu-memory?hostUuids={missing}")).await;
    assert_eq!(r.status, 503);
    assert_error(
        &r.body["error"],
        "SYS.1003",
        &format!("invalid field[hostUuids], resource[uuids:[{missing}], type:HostVO] not found"),
    );
}

#[tokio::test]
async fn host_bad_inputs_change_nothing() {
    let s = Server::start().await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = uuid_of(&create_cluster(&s, &zone, "sim", "Simulator").await);
    let kvm_cluster = uuid_of(&create_cluster(&s, &zone, "kvm", "KVM").await);
    let h = add_sim_host(&s, &cluster, "h1", "10.0.0.1", 8, 16 * GB).await;
    let hu = uuid_of(&h);
    let missing = "0123456789abcdef0123456789abcdef";
    let sr = &s;
    let add = |p: Value| async move { sr.fails("POST", "/hosts/simulators", Some(json!({"params": p}))).await };

    let err = add(json!({"name": "x", "managementIp": "10.0.0.1", "clusterUuid": cluster})).await;
    assert_error(&err, "SYS.1007", "there has been a host having managementIp[10.0.0.1]");
    let err = add(json!({"name": "x", "managementIp": "not an ip", "clusterUuid": cluster})).await;
    assert_error(&err, "SYS.1007", "managementIp[not an ip] is neither an IPv4 address nor a valid hostname");
    let err = add(json!({"name": "x", "managementIp": "10.0.0.9"})).await;
    assert_error(&err, "SYS.1007", &format!("field[clusterUuid] of message[{V}] is mandatory, can not be null"));
    let err = add(json!({"managementIp": "10.0.0.9", "clusterUuid": cluster})).await;
    assert_error(&err, "SYS.1007", &format!("field[name] of message[{V}] is mandatory, can not be null"));
    let err = add(json!({"name": "x", "managementIp": "", "clusterUuid": cluster})).await;
    assert_error(&err, "SYS.1007", "field[managementIp] cannot be an empty string");
    let err = add(json!({"name": "x", "managementIp": "10.0.0.9", "clusterUuid": missing})).await;
    assert_error(
        &err,
        "SYS.1003",
        &format!("invalid field[clusterUuid], resource[uuid:{missing}, type:ClusterVO] not found"),
    );
    let err = add(json!({"name": "x", "managementIp": "10.0.0.9", "clusterUuid": kvm_cluster})).await;
    assert_error(&err, "SYS.1007", "whose hypervisorType is KVM");
    let r = s
        .request(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": "x", "managementIp": "10.0.0.9", "clusterUuid": cluster, "cpuCapacity": "lots"}})),
            Some(&s.session),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text, "[cpuCapacity] field is excepted an int or long, but was [lots].");

    let err = s.fails("PUT", &format!("/hosts/{missing}/actions"), Some(json!({"updateHost": {"name": "y"}}))).await;
    assert_error(&err, "SYS.1003", &format!("invalid field[uuid], resource[uuid:{missing}, type:HostVO] not found"));
    let err = s
        .fails("PUT", &format!("/hosts/{hu}/actions"), Some(json!({"changeHostState": {"stateEvent": "preMaintain"}})))
        .await;
    assert_error(&err, "SYS.1007", "valid value for field[stateEvent]");
    let err = s.fails("PUT", &format!("/hosts/{missing}/actions"), Some(json!({"reconnectHost": {}}))).await;
    assert_error(&err, "SYS.1003", "type:HostVO] not found");
    let err =
        s.fails("PUT", &format!("/hosts/{hu}/actions"), Some(json!({"updateHost": {"name": "n".repeat(256)}}))).await;
    assert_error(&err, "SYS.1007", "exceeds max length of string. expected was <= 255, actual was 256");

    let hosts = s.query("/hosts").await;
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0], h, "the host did not change");
}

#[tokio::test]
async fn host_state_update_reconnect_delete() {
    let s = Server::start().await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = uuid_of(&create_cluster(&s, &zone, "sim", "Simulator").await);
    let h1 = uuid_of(&add_sim_host(&s, &cluster, "h1", "10.0.0.1", 8, 16 * GB).await);
    let h2 = uuid_of(&add_sim_host(&s, &cluster, "h2", "10.0.0.2", 8, 16 * GB).await);
    let act = |u: &str| format!("/hosts/{u}/actions");
    let state = |b: Value| b["inventory"]["state"].as_str().unwrap().to_string();

    let b = s.ok("PUT", &act(&h1), Some(json!({"changeHostState": {"stateEvent": "disable"}}))).await;
    assert_eq!(state(b), "Disabled");
    let b = s.ok("PUT", &act(&h1), Some(json!({"changeHostState": {"stateEvent": "enable"}}))).await;
    assert_eq!(state(b), "Enabled");
    let b = s.ok("PUT", &act(&h1), Some(json!({"changeHostState": {"stateEvent": "maintain"}}))).await;
    assert_eq!(state(b.clone()), "Maintenance");
    assert_eq!(b["inventory"]["status"], "Connected");

    // Cluster state passes to hosts not in maintenance.
    s.ok(
        "PUT",
        &format!("/clusters/{cluster}/actions"),
        Some(json!({"changeClusterState": {"stateEvent": "disable"}})),
    )
    .await;
    assert_eq!(s.query(&format!("/hosts/{h2}")).await[0]["state"], "Disabled");
    assert_eq!(s.query(&format!("/hosts/{h1}")).await[0]["state"], "Maintenance");
    s.ok("PUT", &format!("/clusters/{cluster}/actions"), Some(json!({"changeClusterState": {"stateEvent": "enable"}})))
        .await;
    assert_eq!(s.query(&format!("/hosts/{h2}")).await[0]["state"], "Enabled");

    // Out of maintenance: enabled and connected again.
    let b = s.ok("PUT", &act(&h1), Some(json!({"changeHostState": {"stateEvent": "enable"}}))).await;
    assert_eq!(b["inventory"]["state"], "Enabled");
    assert_eq!(b["inventory"]["status"], "Connected");

    let b = s.ok("PUT", &act(&h1), Some(json!({"reconnectHost": {}}))).await;
    assert_eq!(b["inventory"]["status"], "Connected");
    assert_eq!(b["inventory"]["totalCpuCapacity"], 80);

    // Update.
    let b = s
        .ok(
            "PUT",
            &act(&h1),
            Some(json!({"updateHost": {"name": "renamed", "description": "d", "managementIp": "10.0.0.11"}})),
        )
        .await;
    assert_eq!(b["inventory"]["name"], "renamed");
    assert_eq!(b["inventory"]["description"], "d");
    assert_eq!(b["inventory"]["managementIp"], "10.0.0.11");
    let err = s.fails("PUT", &act(&h1), Some(json!({"updateHost": {"managementIp": "10.0.0.2"}}))).await;
    assert_error(&err, "SYS.1007", "there has been a host having managementIp[10.0.0.2]");
    assert_eq!(s.query(&format!("/hosts/{h1}")).await[0]["managementIp"], "10.0.0.11");

    // Delete; unknown uuids (even malformed ones, as upstream) succeed.
    assert_eq!(s.ok("DELETE", &format!("/hosts/{h1}"), None).await, json!({}));
    assert!(s.query(&format!("/hosts/{h1}")).await.is_empty());
    s.ok("DELETE", &format!("/hosts/{h1}"), None).await;
    s.ok("DELETE", "/hosts/not-a-uuid", None).await;
    assert_eq!(s.query("/hosts").await.len(), 1);
    // The IP is free again.
    add_sim_host(&s, &cluster, "again", "10.0.0.11", 1, GB).await;
}

#[tokio::test]
async fn kvm_host_without_agent_fails_and_leaves_nothing() {
    let port = closed_port();
    let s = Server::start_with_env(vec![("RZSTACK_KVM_AGENT_PORT".into(), port.to_string())]).await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = uuid_of(&create_cluster(&s, &zone, "kvm", "KVM").await);
    let r = s
        .request(
            "POST",
            "/hosts/kvm",
            Some(json!({"params": {"name": "k1", "managementIp": "127.0.0.1", "clusterUuid": cluster,
                "username": "root", "password": "secret", "sshPort": 22}})),
            Some(&s.session),
            &[],
        )
        .await;
    assert_eq!(r.status, 202);
    assert_eq!(r.body["apiTimeout"], 3 * 3600 * 1000, "AddKVMHost has a 3 h timeout");
    let r = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let err = &r.body["error"];
    assert_error(err, "HOST.1003", "ip:127.0.0.1");
    assert_eq!(err["description"], "An error happened when connecting to host");
    let details = err["details"].as_str().unwrap();
    assert!(details.contains(&format!("127.0.0.1:{port}")), "{details}");
    assert!(details.to_lowercase().contains("refused"), "the reason is named: {details}");
    assert_eq!(err["cause"]["code"], "SYS.1006");
    assert!(s.query("/hosts").await.is_empty());
    assert!(s.query(&format!("/clusters/{cluster}")).await[0].get("architecture").is_none());

    // Bad inputs of AddKVMHost.
    let err = s
        .fails(
            "POST",
            "/hosts/kvm",
            Some(
                json!({"params": {"name": "k1", "managementIp": "127.0.0.1", "clusterUuid": cluster, "password": "p"}}),
            ),
        )
        .await;
    assert_error(&err, "SYS.1007", &format!("field[username] of message[{V}] is mandatory, can not be null"));
    let err = s
        .fails(
            "POST",
            "/hosts/kvm",
            Some(json!({"params": {"name": "k1", "managementIp": "127.0.0.1", "clusterUuid": cluster,
                "username": "root", "password": "p", "sshPort": 70000}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "field[sshPort] must be in range of [1, 65535]");
    assert!(s.query("/hosts").await.is_empty());
}

#[tokio::test]
async fn kvm_host_through_agent_capacity_and_global_configs() {
    let agent = fake_agent(16, 32 * GB, "aarch64").await;
    let s = Server::start_with_env(vec![("RZSTACK_KVM_AGENT_PORT".into(), agent.port.to_string())]).await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = uuid_of(&create_cluster(&s, &zone, "kvm", "KVM").await);
    let r = s
        .job(
            "POST",
            "/hosts/kvm",
            Some(json!({"params": {"name": "k1", "managementIp": "127.0.0.1", "clusterUuid": cluster,
                "username": "root", "password": "secret"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.kvm.KVMHostInventory");
    let h = &r.body["inventory"];
    let hu = uuid_of(h);
    assert_eq!(h["hypervisorType"], "KVM");
    assert_eq!(h["status"], "Connected");
    assert_eq!(h["cpuNum"], 16);
    assert_eq!(h["cpuSockets"], 2);
    assert_eq!(h["totalCpuCapacity"], 160);
    assert_eq!(h["totalMemoryCapacity"], 32 * GB);
    assert_eq!(h["availableMemoryCapacity"], 32 * GB);
    assert_eq!(h["architecture"], "aarch64");
    assert_eq!(h["username"], "root");
    assert_eq!(h["sshPort"], 22);
    assert_eq!(h["osDistribution"], "ubuntu");
    assert_eq!(h["osVersion"], "24.04");
    assert!(h.get("password").is_none(), "the password is never shown: {h}");
    assert!(h.get("cpuCapacity").is_none());
    assert_eq!(s.query(&format!("/clusters/{cluster}")).await[0]["architecture"], "aarch64");
    let r = s.get("/hosts").await;
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.kvm.KVMHostInventory");

    let err = s
        .fails(
            "POST",
            "/hosts/kvm",
            Some(json!({"params": {"name": "k2", "managementIp": "127.0.0.1", "clusterUuid": cluster,
                "username": "root", "password": "secret"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "there has been a kvm host having management ip[127.0.0.1]");

    // KVM hosts keep kvm.reservedMemory (1G by default) out of the reported available memory.
    let c = capacity(&s, &format!("zoneUuids={zone}")).await;
    assert_eq!(c["totalMemory"], 32 * GB);
    assert_eq!(c["availableMemory"], 31 * GB);
    assert_eq!(c["totalCpu"], 160);

    // Global configs: listed with metadata, queryable by SQL conditions.
    let all = s.query("/global-configurations").await;
    let ratio = all
        .iter()
        .find(|c| c["category"] == "host" && c["name"] == "cpu.overProvisioning.ratio")
        .expect("ratio listed");
    assert_eq!(ratio["value"], "10");
    assert_eq!(ratio["defaultValue"], "10");
    assert!(ratio["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(all.iter().any(|c| c["category"] == "identity" && c["name"] == "session.timeout"));
    let r = s.get("/global-configurations?q=category=kvm&q=name=reservedMemory").await;
    assert_eq!(r.body["inventories"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["inventories"][0]["value"], "1G");
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.core.config.GlobalConfigInventory");

    // Updating configs changes the capacity math.
    let b = s
        .ok(
            "PUT",
            "/global-configurations/host/cpu.overProvisioning.ratio/actions",
            Some(json!({"updateGlobalConfig": {"value": "4"}})),
        )
        .await;
    assert_eq!(b["inventory"]["value"], "4");
    assert_eq!(b["inventory"]["defaultValue"], "10");
    let h = &s.query(&format!("/hosts/{hu}")).await[0];
    assert_eq!(h["totalCpuCapacity"], 64);
    assert_eq!(h["availableCpuCapacity"], 64);
    s.ok(
        "PUT",
        "/global-configurations/kvm/reservedMemory/actions",
        Some(json!({"updateGlobalConfig": {"value": "4G"}})),
    )
    .await;
    let c = capacity(&s, &format!("hostUuids={hu}")).await;
    assert_eq!(c["availableMemory"], 28 * GB);
    assert_eq!(c["totalCpu"], 64);

    // Refused values change nothing.
    let upd = |path: &'static str, v: Value| {
        let s = &s;
        async move { s.fails("PUT", path, Some(json!({"updateGlobalConfig": {"value": v}}))).await }
    };
    let err = upd("/global-configurations/host/cpu.overProvisioning.ratio/actions", json!("many")).await;
    assert_error(&err, "SYS.1007", "GlobalConfig[category:host, name:cpu.overProvisioning.ratio] is of type java.lang.Integer, the value[many] cannot be converted to that type");
    let err = upd("/global-configurations/host/cpu.overProvisioning.ratio/actions", json!("0")).await;
    assert_error(
        &err,
        "SYS.1007",
        "Global config[category: host, name: cpu.overProvisioning.ratio] should not less than 1, but got 0",
    );
    let err = upd("/global-configurations/kvm/reservedMemory/actions", json!("4GB")).await;
    assert_error(&err, "SYS.1007", "only allows a size string");
    let err = upd("/global-configurations/host/no.such.thing/actions", json!("1")).await;
    assert_error(&err, "SYS.1007", "Unable to find GlobalConfig[category: host, name: no.such.thing]");
    let r = s.get("/global-configurations?q=category=host&q=name=cpu.overProvisioning.ratio").await;
    assert_eq!(r.body["inventories"][0]["value"], "4");
    assert_eq!(s.query(&format!("/hosts/{hu}")).await[0]["totalCpuCapacity"], 64);
    // The value survives a restart.
    let mut s = s;
    s.restart().await;
    s.session = s.login().await;
    assert_eq!(s.query(&format!("/hosts/{hu}")).await[0]["totalCpuCapacity"], 64);
    assert_eq!(capacity(&s, &format!("hostUuids={hu}")).await["availableMemory"], 28 * GB);

    // Reconnect: a refusing agent fails with HOST.1002 and the host shows Disconnected.
    agent.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = s.fails("PUT", &format!("/hosts/{hu}/actions"), Some(json!({"reconnectHost": {}}))).await;
    assert_error(&err, "HOST.1002", "libvirtd is not running");
    assert_eq!(err["cause"]["code"], "HOST.1003");
    assert_eq!(s.query(&format!("/hosts/{hu}")).await[0]["status"], "Disconnected");
    let err = s
        .fails("PUT", &format!("/hosts/{hu}/actions"), Some(json!({"changeHostState": {"stateEvent": "maintain"}})))
        .await;
    assert_error(
        &err,
        "SYS.1006",
        &format!("can not maintain host[uuid:{hu}, status:Disconnected]which is not Connected"),
    );
    agent.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    let b = s.ok("PUT", &format!("/hosts/{hu}/actions"), Some(json!({"reconnectHost": {}}))).await;
    assert_eq!(b["inventory"]["status"], "Connected");
}

#[tokio::test]
async fn zone_and_cluster_deletion_cascade() {
    let s = Server::start().await;
    let z1 = uuid_of(&s.create_zone("zone1").await);
    let z2 = uuid_of(&s.create_zone("zone2").await);
    let c1 = uuid_of(&create_cluster(&s, &z1, "c1", "Simulator").await);
    let c2 = uuid_of(&create_cluster(&s, &z1, "c2", "Simulator").await);
    let c3 = uuid_of(&create_cluster(&s, &z2, "c3", "Simulator").await);
    add_sim_host(&s, &c1, "h1", "10.0.1.1", 2, GB).await;
    add_sim_host(&s, &c1, "h2", "10.0.1.2", 2, GB).await;
    let h3 = uuid_of(&add_sim_host(&s, &c2, "h3", "10.0.1.3", 2, GB).await);
    let h4 = uuid_of(&add_sim_host(&s, &c3, "h4", "10.0.2.1", 2, GB).await);

    // Deleting a cluster takes its hosts.
    s.ok("DELETE", &format!("/clusters/{c1}"), None).await;
    assert_eq!(s.query("/hosts?sort=name").await.iter().map(uuid_of).collect::<Vec<_>>(), [h3.clone(), h4.clone()]);

    // Deleting a zone takes its clusters and their hosts, and nothing else.
    s.ok("DELETE", &format!("/zones/{z1}"), None).await;
    assert!(s.query(&format!("/zones/{z1}")).await.is_empty());
    assert_eq!(s.query("/clusters").await.iter().map(uuid_of).collect::<Vec<_>>(), [c3]);
    assert_eq!(s.query("/hosts").await.iter().map(uuid_of).collect::<Vec<_>>(), [h4]);
    // The deleted hosts' IPs can be used again.
    let c4 = uuid_of(&create_cluster(&s, &z2, "c4", "Simulator").await);
    add_sim_host(&s, &c4, "again", "10.0.1.1", 2, GB).await;
}
