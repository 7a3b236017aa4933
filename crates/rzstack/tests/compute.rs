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
