//! L2/L3 networks, IP ranges, DNS, network services and IP capacity through the public API.
mod common;
use common::*;
use serde_json::{json, Value};

fn uuid(v: &Value) -> String {
    v["uuid"].as_str().expect("uuid").to_string()
}

async fn no_vlan(s: &Server, zone: &str, name: &str, nic: &str) -> Value {
    s.ok(
        "POST",
        "/l2-networks/no-vlan",
        Some(json!({"params": {"name": name, "zoneUuid": zone, "physicalInterface": nic}})),
    )
    .await["inventory"]
        .clone()
}

async fn vlan(s: &Server, zone: &str, name: &str, nic: &str, id: i64) -> Value {
    s.ok(
        "POST",
        "/l2-networks/vlan",
        Some(json!({"params": {"name": name, "zoneUuid": zone, "physicalInterface": nic, "vlan": id}})),
    )
    .await["inventory"]
        .clone()
}

async fn cluster(s: &Server, zone: &str, name: &str) -> String {
    let c = s
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"zoneUuid": zone, "name": name, "hypervisorType": "Simulator"}})),
        )
        .await;
    uuid(&c["inventory"])
}

async fn l3(s: &Server, l2: &str, name: &str, extra: Value) -> Value {
    let mut p = json!({"name": name, "l2NetworkUuid": l2});
    if let (Some(m), Some(e)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            m.insert(k.clone(), v.clone());
        }
    }
    s.ok("POST", "/l3-networks", Some(json!({ "params": p }))).await["inventory"].clone()
}

#[tokio::test]
async fn l2_networks_create_query_update_delete() {
    let s = Server::start().await;
    let zone = uuid(&s.create_zone("z").await);

    let r = s
        .job(
            "POST",
            "/l2-networks/no-vlan",
            Some(
                json!({"params": {"name": "pub", "description": "flat", "zoneUuid": zone, "physicalInterface": "eth0"},
                "systemTags": ["kvm::bridge::br0"]}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let n = &r.body["inventory"];
    let nv = uuid(n);
    assert_eq!(n["name"], "pub");
    assert_eq!(n["description"], "flat");
    assert_eq!(n["zoneUuid"], zone.as_str());
    assert_eq!(n["physicalInterface"], "eth0");
    assert_eq!(n["type"], "L2NoVlanNetwork");
    assert_eq!(n["vSwitchType"], "LinuxBridge");
    assert_eq!(n["virtualNetworkId"], 0);
    assert_eq!(n["isolated"], false);
    assert_eq!(n["attachedClusterUuids"], json!([]));
    assert!(n.get("vlan").is_none());
    assert!(n["createDate"].is_string() && n["lastOpDate"].is_string());
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.network.l2.L2NetworkInventory");
    assert_eq!(s.query(&format!("/system-tags?q=resourceUuid={nv}")).await[0]["tag"], "kvm::bridge::br0");

    let r = s
        .job(
            "POST",
            "/l2-networks/vlan",
            Some(json!({"params": {"name": "v10", "zoneUuid": zone, "physicalInterface": "eth1", "vlan": 10}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = &r.body["inventory"];
    let vv = uuid(v);
    assert_eq!(v["type"], "L2VlanNetwork");
    assert_eq!(v["vlan"], 10);
    assert_eq!(v["virtualNetworkId"], 10);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.network.l2.L2VlanNetworkInventory");

    // QueryL2Network: both, each with its class; QueryL2VlanNetwork: only the VLAN one
    let r = s.get("/l2-networks?sort=%2BcreateDate").await;
    let invs = r.body["inventories"].as_array().unwrap();
    assert_eq!(invs.len(), 2);
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.network.l2.L2NetworkInventory");
    assert_eq!(r.body["schema"]["inventories[1]"], "org.zstack.header.network.l2.L2VlanNetworkInventory");
    let r = s.get("/l2-networks/vlan").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["inventories"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["inventories"][0]["uuid"], vv.as_str());
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.network.l2.L2VlanNetworkInventory");
    assert_eq!(s.query(&format!("/l2-networks/vlan/{vv}")).await.len(), 1);
    assert!(s.query(&format!("/l2-networks/vlan/{nv}")).await.is_empty());
    assert_eq!(s.query("/l2-networks?q=vlan=10").await.len(), 1);
    assert_eq!(s.query(&format!("/l2-networks/{nv}")).await[0]["name"], "pub");
    assert_eq!(s.query("/l2-networks?q=__systemTag__=kvm::bridge::br0").await.len(), 1);

    // the flat provider serves every new L2 network
    let p = s.query("/network-services/providers?q=type=Flat").await;
    assert_eq!(p.len(), 1);
    let mut l2s: Vec<&str> =
        p[0]["attachedL2NetworkUuids"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    l2s.sort();
    let mut want = vec![nv.as_str(), vv.as_str()];
    want.sort();
    assert_eq!(l2s, want);

    // bad inputs
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/l2-networks/no-vlan",
            json!({"zoneUuid": zone, "physicalInterface": "eth0"}),
            "SYS.1007",
            "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
        ),
        ("/l2-networks/no-vlan", json!({"name": "x", "zoneUuid": zone}), "SYS.1007", "field[physicalInterface]"),
        (
            "/l2-networks/no-vlan",
            json!({"name": "x", "zoneUuid": "0123456789abcdef0123456789abcdef", "physicalInterface": "eth0"}),
            "SYS.1003",
            "invalid field[zoneUuid], resource[uuid:0123456789abcdef0123456789abcdef, type:ZoneVO] not found",
        ),
        (
            "/l2-networks/no-vlan",
            json!({"name": "x", "zoneUuid": zone, "physicalInterface": "eth0", "vSwitchType": "Ovs"}),
            "SYS.1007",
            "valid value for field[vSwitchType]",
        ),
        (
            "/l2-networks/no-vlan",
            json!({"name": "x", "zoneUuid": zone, "physicalInterface": "eth0", "vSwitchType": "OvsDpdk"}),
            "SYS.1007",
            "unsupported vSwitch type[OvsDpdk]",
        ),
        (
            "/l2-networks/no-vlan",
            json!({"name": "x", "zoneUuid": zone, "physicalInterface": "eth0", "pvlan": ""}),
            "SYS.1007",
            "field[pvlan] cannot be an empty string",
        ),
        (
            "/l2-networks/vlan",
            json!({"name": "x", "zoneUuid": zone, "physicalInterface": "eth0"}),
            "SYS.1007",
            "field[vlan] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
        ),
        (
            "/l2-networks/vlan",
            json!({"name": "x", "zoneUuid": zone, "physicalInterface": "eth0", "vlan": 0}),
            "SYS.1007",
            "field[vlan] must be in range of [1, 4094]",
        ),
        (
            "/l2-networks/vlan",
            json!({"name": "x", "zoneUuid": zone, "physicalInterface": "eth0", "vlan": 4095}),
            "SYS.1007",
            "field[vlan] must be in range of [1, 4094]",
        ),
    ];
    for (path, params, code, text) in cases {
        let err = s.fails("POST", path, Some(json!({ "params": params }))).await;
        assert_error(&err, code, text);
    }
    assert_eq!(s.query("/l2-networks").await.len(), 2);

    // update
    let u = s
        .ok(
            "PUT",
            &format!("/l2-networks/{nv}/actions"),
            Some(json!({"updateL2Network": {"name": "pub2", "description": "d"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "pub2");
    assert_eq!(u["inventory"]["description"], "d");
    let err = s
        .fails(
            "PUT",
            &format!("/l2-networks/{nv}/actions"),
            Some(json!({"updateL2Network": {"name": "n".repeat(256)}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "exceeds max length of string");
    assert_eq!(s.query(&format!("/l2-networks/{nv}")).await[0]["name"], "pub2");

    // delete takes the L3 networks (and their ranges) along
    let l3n = l3(&s, &vv, "l3", json!({})).await;
    s.ok(
        "POST",
        &format!("/l3-networks/{}/ip-ranges", uuid(&l3n)),
        Some(json!({"params": {"name": "r", "startIp": "10.0.0.10", "endIp": "10.0.0.20", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}})),
    )
    .await;
    assert_eq!(s.ok("DELETE", &format!("/l2-networks/{vv}"), None).await, json!({}));
    assert!(s.query(&format!("/l2-networks/{vv}")).await.is_empty());
    assert!(s.query(&format!("/l3-networks/{}", uuid(&l3n))).await.is_empty());
    assert!(s.query("/l3-networks/ip-ranges").await.is_empty());
    s.ok("DELETE", &format!("/l2-networks/{vv}"), None).await;
    let err = s.fails("DELETE", "/l2-networks/xyz", None).await;
    assert_error(&err, "SYS.1003", "invalid value[xyz] of field [uuid]");
    assert_eq!(s.query("/l2-networks").await.len(), 1);
}

#[tokio::test]
async fn l2_attach_detach_clusters() {
    let s = Server::start().await;
    let zone = uuid(&s.create_zone("z").await);
    let c1 = cluster(&s, &zone, "c1").await;
    let c2 = cluster(&s, &zone, "c2").await;
    let a = uuid(&no_vlan(&s, &zone, "a", "eth0").await);
    let b = uuid(&no_vlan(&s, &zone, "b", "eth0").await);
    let v1 = uuid(&vlan(&s, &zone, "v1", "eth0", 100).await);
    let v2 = uuid(&vlan(&s, &zone, "v2", "eth0", 100).await);
    let v3 = uuid(&vlan(&s, &zone, "v3", "eth0", 101).await);

    // the SDK sends the literal key "null"
    let r = s.ok("POST", &format!("/l2-networks/{a}/clusters/{c1}"), Some(json!({"null": {}}))).await;
    assert_eq!(r["inventory"]["attachedClusterUuids"], json!([c1.clone()]));
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.network.l2.L2NetworkInventory");
    // a POST with no body at all works too
    let r = s.job("POST", &format!("/l2-networks/{a}/clusters/{c2}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut got: Vec<String> = r.body["inventory"]["attachedClusterUuids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = vec![c1.clone(), c2.clone()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(s.query(&format!("/l2-networks?q=attachedClusterUuids={c2}")).await.len(), 1);

    // attached twice
    let err = s.fails("POST", &format!("/l2-networks/{a}/clusters/{c1}"), None).await;
    assert_error(
        &err,
        "SYS.1006",
        &format!("l2Network[uuid:{a}] has attached to cluster[uuid:{c1}], can't attach again"),
    );
    // a second no-VLAN network on the same interface of one cluster
    let err = s.fails("POST", &format!("/l2-networks/{b}/clusters/{c1}"), Some(json!({"null": {}}))).await;
    assert_eq!(err["code"], "L2.1000");
    assert_eq!(err["description"], "Unable to attach L2Network to a cluster");
    assert_error(
        &err["cause"],
        "SYS.1007",
        &format!("There has been a l2Network[uuid:{a}, name:a] attached to cluster[uuid:{c1}] that has physical interface[eth0]. Failed to attach l2Network[uuid:{b}]"),
    );
    assert!(err["details"].as_str().unwrap().starts_with("attach l2 network failed:"));
    assert_eq!(s.query(&format!("/l2-networks/{b}")).await[0]["attachedClusterUuids"], json!([]));
    // VLAN networks: same interface and VLAN id on one cluster refused, another id is fine
    s.ok("POST", &format!("/l2-networks/{v1}/clusters/{c1}"), None).await;
    let err = s.fails("POST", &format!("/l2-networks/{v2}/clusters/{c1}"), None).await;
    assert_eq!(err["code"], "L2.1000");
    assert_error(
        &err["cause"],
        "SYS.1007",
        &format!("There has been a L2VlanNetwork[uuid:{v1}, name:v1] attached to cluster[uuid:{c1}] that has physical interface[eth0], vlan[100]. Failed to attach L2VlanNetwork[uuid:{v2}]"),
    );
    assert_eq!(s.query(&format!("/l2-networks/{v2}")).await[0]["attachedClusterUuids"], json!([]));
    s.ok("POST", &format!("/l2-networks/{v3}/clusters/{c1}"), None).await;
    s.ok("POST", &format!("/l2-networks/{v2}/clusters/{c2}"), None).await;
    // bad references
    let err = s.fails("POST", &format!("/l2-networks/{a}/clusters/0123456789abcdef0123456789abcdef"), None).await;
    assert_error(&err, "SYS.1003", "resource[uuid:0123456789abcdef0123456789abcdef, type:ClusterVO] not found");
    let err = s.fails("POST", &format!("/l2-networks/0123456789abcdef0123456789abcdef/clusters/{c1}"), None).await;
    assert_error(&err, "SYS.1003", "type:L2NetworkVO] not found");
    let err = s
        .fails("POST", &format!("/l2-networks/{b}/clusters/{c2}"), Some(json!({"null": {"l2ProviderType": "Ovs"}})))
        .await;
    assert_error(&err, "SYS.1007", "valid value for field[l2ProviderType]");

    // detach
    let r = s.ok("DELETE", &format!("/l2-networks/{a}/clusters/{c1}"), None).await;
    assert_eq!(r["inventory"]["attachedClusterUuids"], json!([c2.clone()]));
    let err = s.fails("DELETE", &format!("/l2-networks/{a}/clusters/{c1}"), None).await;
    assert_error(&err, "SYS.1006", &format!("l2Network[uuid:{a}] has not attached to cluster[uuid:{c1}]"));
    // now b fits on c1
    s.ok("POST", &format!("/l2-networks/{b}/clusters/{c1}"), None).await;
    assert_eq!(s.query(&format!("/l2-networks?q=attachedClusterUuids={c1}")).await.len(), 3);
}

#[tokio::test]
async fn l3_networks_dns_services() {
    let s = Server::start().await;
    let zone = uuid(&s.create_zone("z").await);
    let l2 = uuid(&no_vlan(&s, &zone, "l2", "eth0").await);

    let r = s
        .job(
            "POST",
            "/l3-networks",
            Some(
                json!({"params": {"name": "priv", "description": "d", "l2NetworkUuid": l2, "dnsDomain": "zstack.org"},
                "userTags": ["web"]}),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let n = &r.body["inventory"];
    let l3u = uuid(n);
    assert_eq!(n["name"], "priv");
    assert_eq!(n["description"], "d");
    assert_eq!(n["type"], "L3BasicNetwork");
    assert_eq!(n["zoneUuid"], zone.as_str());
    assert_eq!(n["l2NetworkUuid"], l2.as_str());
    assert_eq!(n["state"], "Enabled");
    assert_eq!(n["dnsDomain"], "zstack.org");
    assert_eq!(n["system"], false);
    assert_eq!(n["category"], "Private");
    assert_eq!(n["ipVersion"], 4);
    assert_eq!(n["enableIPAM"], true);
    assert_eq!(n["isolated"], false);
    assert_eq!(n["dns"], json!([]));
    assert_eq!(n["ipRanges"], json!([]));
    assert_eq!(n["networkServices"], json!([]));
    assert_eq!(n["hostRoute"], json!([]));
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.network.l3.L3NetworkInventory");
    assert_eq!(s.query("/l3-networks?q=__userTag__=web").await.len(), 1);

    let sys = l3(&s, &l2, "mgmt", json!({"category": "system", "system": true})).await;
    assert_eq!(sys["category"], "System");
    assert_eq!(sys["system"], true);
    let pubn = l3(&s, &l2, "pub", json!({"category": "Public", "enableIPAM": false})).await;
    assert_eq!(pubn["enableIPAM"], false);

    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"l2NetworkUuid": l2}),
            "SYS.1007",
            "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
        ),
        (
            json!({"name": "x"}),
            "SYS.1007",
            "field[l2NetworkUuid] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
        ),
        (
            json!({"name": "x", "l2NetworkUuid": "0123456789abcdef0123456789abcdef"}),
            "SYS.1003",
            "type:L2NetworkVO] not found",
        ),
        (
            json!({"name": "x", "l2NetworkUuid": l2, "type": "L3VpcNetwork"}),
            "SYS.1007",
            "unsupported l3network type[L3VpcNetwork]",
        ),
        (json!({"name": "x", "l2NetworkUuid": l2, "category": "Guest"}), "SYS.1007", "valid value for field[category]"),
        (json!({"name": "x", "l2NetworkUuid": l2, "ipVersion": 5}), "SYS.1007", "valid value for field[ipVersion]"),
        (
            json!({"name": "x", "l2NetworkUuid": l2, "dnsDomain": "nodot"}),
            "SYS.1007",
            "nodot is not a valid domain name",
        ),
        (
            json!({"name": "x", "l2NetworkUuid": l2, "system": true}),
            "SYS.1007",
            "not valid combination of system and category,only {false=[Public, Private], true=[System]} are valid",
        ),
        (
            json!({"name": "x", "l2NetworkUuid": l2, "category": "System"}),
            "SYS.1007",
            "not valid combination of system and category",
        ),
    ];
    for (params, code, text) in cases {
        let err = s.fails("POST", "/l3-networks", Some(json!({ "params": params }))).await;
        assert_error(&err, code, text);
    }
    assert_eq!(s.query("/l3-networks").await.len(), 3);

    // update
    let path = format!("/l3-networks/{l3u}/actions");
    let u = s
        .ok(
            "PUT",
            &path,
            Some(json!({"updateL3Network": {"name": "priv2", "description": "d2", "dnsDomain": "a.example.com"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "priv2");
    assert_eq!(u["inventory"]["description"], "d2");
    assert_eq!(u["inventory"]["dnsDomain"], "a.example.com");
    let u = s.ok("PUT", &path, Some(json!({"updateL3Network": {"category": "Public"}}))).await;
    assert_eq!(u["inventory"]["category"], "Public");
    let err = s.fails("PUT", &path, Some(json!({"updateL3Network": {"system": true}}))).await;
    assert_error(&err, "SYS.1007", "you must update system and category both");
    let err = s.fails("PUT", &path, Some(json!({"updateL3Network": {"system": true, "category": "Private"}}))).await;
    assert_error(&err, "SYS.1007", "not valid combination of system and category");
    let now = &s.query(&format!("/l3-networks/{l3u}")).await[0];
    assert_eq!((now["category"].as_str(), now["system"].as_bool()), (Some("Public"), Some(false)));

    // state
    let c = s.ok("PUT", &path, Some(json!({"changeL3NetworkState": {"stateEvent": "disable"}}))).await;
    assert_eq!(c["inventory"]["state"], "Disabled");
    let err = s.fails("PUT", &path, Some(json!({"changeL3NetworkState": {"stateEvent": "stop"}}))).await;
    assert_error(&err, "SYS.1007", "valid value for field[stateEvent]");
    assert_eq!(s.query(&format!("/l3-networks/{l3u}")).await[0]["state"], "Disabled");

    // DNS
    let dpath = format!("/l3-networks/{l3u}/dns");
    let d = s.ok("POST", &dpath, Some(json!({"params": {"dns": "8.8.8.8"}}))).await;
    assert_eq!(d["inventory"]["dns"], json!(["8.8.8.8"]));
    s.ok("POST", &dpath, Some(json!({"params": {"dns": "2001:db8::1"}}))).await;
    let err = s.fails("POST", &dpath, Some(json!({"params": {"dns": "8.8.8.8"}}))).await;
    assert_error(&err, "SYS.1006", &format!("there has been a DNS[8.8.8.8] on L3 network[uuid:{l3u}]"));
    let err = s.fails("POST", &dpath, Some(json!({"params": {"dns": "2001:db8:0::1"}}))).await;
    assert_error(&err, "SYS.1006", "there has been a DNS[2001:db8:0::1]");
    let err = s.fails("POST", &dpath, Some(json!({"params": {"dns": "dns.google"}}))).await;
    assert_error(&err, "SYS.1007", "dns[dns.google] is not a IP address");
    let err = s.fails("POST", &dpath, Some(json!({"params": {}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        "field[dns] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
    );
    assert_eq!(s.query(&format!("/l3-networks/{l3u}")).await[0]["dns"].as_array().unwrap().len(), 2);
    assert_eq!(s.query("/l3-networks?q=dns=8.8.8.8").await.len(), 1);
    let d = s.ok("DELETE", &format!("/l3-networks/{l3u}/dns/8.8.8.8"), None).await;
    assert_eq!(d["inventory"]["dns"], json!(["2001:db8::1"]));
    // removing a DNS the network does not have succeeds without an inventory
    assert_eq!(s.ok("DELETE", &format!("/l3-networks/{l3u}/dns/1.1.1.1"), None).await, json!({}));

    // network services
    let providers = s.get("/network-services/providers").await;
    assert_eq!(providers.status, 200);
    assert_eq!(
        providers.body["schema"]["inventories[0]"],
        "org.zstack.header.network.service.NetworkServiceProviderInventory"
    );
    let flat = &providers.body["inventories"][0];
    assert_eq!(flat["name"], "Flat Network Service Provider");
    assert_eq!(flat["type"], "Flat");
    let mut types: Vec<&str> =
        flat["networkServiceTypes"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    types.sort();
    assert_eq!(types, ["DHCP", "DNS", "Eip", "Userdata"]);
    let fu = uuid(flat);
    let spath = format!("/l3-networks/{l3u}/network-services");
    let r = s.ok("POST", &spath, Some(json!({"params": {"networkServices": {fu.clone(): ["DHCP", "DNS"]}}}))).await;
    let ns = r["inventory"]["networkServices"].as_array().unwrap();
    assert_eq!(ns.len(), 2);
    assert_eq!(ns[0]["l3NetworkUuid"], l3u.as_str());
    assert_eq!(ns[0]["networkServiceProviderUuid"], fu.as_str());
    assert_eq!(
        r["schema"]["inventory.networkServices[0]"],
        "org.zstack.header.network.service.NetworkServiceL3NetworkRefInventory"
    );
    assert_eq!(s.query("/l3-networks?q=networkServices.networkServiceType=DHCP").await.len(), 1);
    let bad: Vec<(Value, &str, String)> = vec![
        (
            json!({fu.clone(): ["DHCP"]}),
            "SYS.1006",
            format!("there has been a network service[DHCP] attached to L3 network[uuid:{l3u}]"),
        ),
        (
            json!({fu.clone(): ["LoadBalancer"]}),
            "SYS.1007",
            format!("network service provider[uuid:{fu}] doesn't provide services[LoadBalancer]"),
        ),
        (json!({fu.clone(): []}), "SYS.1007", format!("network service for provider[uuid:{fu}] must be specified")),
        (
            json!({"0123456789abcdef0123456789abcdef": ["DHCP"]}),
            "SYS.1007",
            "cannot find network service provider[uuid:0123456789abcdef0123456789abcdef] or it provides no services"
                .into(),
        ),
        (json!({}), "SYS.1007", "networkServices cannot be empty".into()),
    ];
    for (services, code, text) in bad {
        let err = s.fails("POST", &spath, Some(json!({"params": {"networkServices": services}}))).await;
        assert_error(&err, code, &text);
    }
    assert_eq!(s.query(&format!("/l3-networks/{l3u}")).await[0]["networkServices"].as_array().unwrap().len(), 2);

    // delete
    assert_eq!(s.ok("DELETE", &format!("/l3-networks/{l3u}"), None).await, json!({}));
    assert!(s.query(&format!("/l3-networks/{l3u}")).await.is_empty());
    assert!(s.query(&format!("/user-tags?q=resourceUuid={l3u}")).await.is_empty());
    s.ok("DELETE", &format!("/l3-networks/{l3u}"), None).await;
    assert_eq!(s.query("/l3-networks").await.len(), 2);
}

async fn add_range(s: &Server, l3: &str, p: Value) -> Resp {
    s.job("POST", &format!("/l3-networks/{l3}/ip-ranges"), Some(json!({ "params": p }))).await
}

async fn ranges(s: &Server) -> Vec<Value> {
    s.query("/l3-networks/ip-ranges").await
}

#[tokio::test]
async fn ip_ranges_every_upstream_check() {
    let s = Server::start().await;
    let zone = uuid(&s.create_zone("z").await);
    let l2 = uuid(&no_vlan(&s, &zone, "l2", "eth0").await);
    let a = uuid(&l3(&s, &l2, "a", json!({})).await);
    let b = uuid(&l3(&s, &l2, "b", json!({})).await);
    let pubn = uuid(&l3(&s, &l2, "pub", json!({"category": "Public"})).await);

    let r = add_range(
        &s,
        &a,
        json!({"name": "r1", "description": "first", "startIp": "192.168.0.10", "endIp": "192.168.0.100",
            "netmask": "255.255.255.0", "gateway": "192.168.0.1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let inv = &r.body["inventory"];
    let r1 = uuid(inv);
    assert_eq!(inv["l3NetworkUuid"], a.as_str());
    assert_eq!(inv["name"], "r1");
    assert_eq!(inv["description"], "first");
    assert_eq!(inv["startIp"], "192.168.0.10");
    assert_eq!(inv["endIp"], "192.168.0.100");
    assert_eq!(inv["netmask"], "255.255.255.0");
    assert_eq!(inv["gateway"], "192.168.0.1");
    assert_eq!(inv["networkCidr"], "192.168.0.0/24");
    assert_eq!(inv["ipVersion"], 4);
    assert_eq!(inv["prefixLen"], 24);
    assert_eq!(inv["ipRangeType"], "Normal");
    assert!(inv["createDate"].is_string());
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.network.l3.IpRangeInventory");
    let l3inv = &s.query(&format!("/l3-networks/{a}")).await[0];
    assert_eq!(l3inv["ipRanges"][0]["uuid"], r1.as_str());
    let qr = s.get("/l3-networks?q=ipRanges.startIp=192.168.0.10").await;
    assert_eq!(qr.body["inventories"].as_array().unwrap().len(), 1);
    assert_eq!(qr.body["schema"]["inventories[0].ipRanges[0]"], "org.zstack.header.network.l3.IpRangeInventory");

    // a second range in the same CIDR with the same gateway is fine
    let r = add_range(
        &s,
        &a,
        json!({"name": "r2", "startIp": "192.168.0.150", "endIp": "192.168.0.160", "netmask": "255.255.255.0", "gateway": "192.168.0.1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let base = |start: &str, end: &str, mask: &str, gw: &str| json!({"name": "x", "startIp": start, "endIp": end, "netmask": mask, "gateway": gw});
    let cases: Vec<(&str, Value, &str, String)> = vec![
        (&a, json!({"name": "x", "startIp": "10.0.0.2", "endIp": "10.0.0.9", "netmask": "255.255.255.0"}), "SYS.1007",
            "adding normal ip range must specify gateway ip address".into()),
        (&a, json!({"startIp": "10.0.0.2", "endIp": "10.0.0.9", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}), "SYS.1007",
            "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory".into()),
        (&a, json!({"name": "x", "endIp": "10.0.0.9", "netmask": "255.255.255.0", "gateway": "10.0.0.1"}), "SYS.1007",
            "field[startIp] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory".into()),
        (&a, json!({"name": "x", "startIp": "10.0.0.2", "endIp": "10.0.0.9", "netmask": "255.255.255.0", "gateway": "10.0.0.1", "ipRangeType": "Pool"}), "SYS.1007",
            "valid value for field[ipRangeType]".into()),
        (&a, json!({"name": "x", "startIp": "10.0.0.2", "endIp": "10.0.0.9", "netmask": "255.255.255.0", "ipRangeType": "AddressPool"}), "SYS.1007",
            format!("l3 network [uuid {a}: name a] is not a public network, address pool range can not be added")),
        (&a, base("10.0.0.300", "10.0.0.9", "255.255.255.0", "10.0.0.1"), "SYS.1007", "start ip[10.0.0.300] is not a IPv4 address".into()),
        (&a, base("10.0.0.2", "ten", "255.255.255.0", "10.0.0.1"), "SYS.1007", "end ip[ten] is not a IPv4 address".into()),
        (&a, base("10.0.0.2", "10.0.0.9", "255.255.255.0", "10.0.0"), "SYS.1007", "gateway[10.0.0] is not a IPv4 address".into()),
        (&a, base("10.0.0.2", "10.0.0.9", "255.0.255.0", "10.0.0.1"), "SYS.1007",
            "netmask[255.0.255.0] is not a netmask, and the IP range netmask cannot be 0.0.0.0".into()),
        (&a, base("10.0.0.2", "10.0.0.9", "0.0.0.0", "10.0.0.1"), "SYS.1007",
            "netmask[0.0.0.0] is not a netmask, and the IP range netmask cannot be 0.0.0.0".into()),
        (&a, base("224.0.0.2", "224.0.0.9", "255.255.255.0", "224.0.0.1"), "SYS.1007",
            "the IP range[224.0.0.2 ~ 224.0.0.9] contains D class addresses which are for multicast".into()),
        (&a, base("240.0.0.2", "240.0.0.9", "255.255.255.0", "240.0.0.1"), "SYS.1007",
            "the IP range[240.0.0.2 ~ 240.0.0.9] contains E class addresses which are reserved".into()),
        (&a, base("169.254.1.2", "169.254.1.9", "255.255.255.0", "169.254.1.1"), "SYS.1007",
            "the IP range[169.254.1.2 ~ 169.254.1.9] contains link local addresses which are reserved".into()),
        (&a, base("10.0.0.2", "10.0.0.9", "255.255.255.0", "10.0.1.1"), "SYS.1007",
            "the gateway[10.0.1.1] is not in the subnet 10.0.0.2/255.255.255.0".into()),
        (&a, base("10.0.0.0", "10.0.0.9", "255.255.255.0", "10.0.0.100"), "SYS.1007",
            "ip allocation can not contain network address or broadcast address".into()),
        (&a, base("10.0.0.200", "10.0.0.255", "255.255.255.0", "10.0.0.1"), "SYS.1007",
            "ip allocation can not contain network address or broadcast address".into()),
        (&a, base("10.0.0.9", "10.0.0.2", "255.255.255.0", "10.0.0.1"), "SYS.1007", "start ip[10.0.0.9] is behind end ip[10.0.0.2]".into()),
        (&a, base("192.168.0.50", "192.168.0.60", "255.255.255.0", "192.168.0.1"), "SYS.1007",
            format!("overlap with ip range[uuid:{r1}, start ip:192.168.0.10, end ip: 192.168.0.100]")),
        // another L3 network on the same L2 network may not overlap either
        (&b, base("192.168.0.90", "192.168.0.120", "255.255.255.0", "192.168.0.1"), "SYS.1007",
            format!("overlap with ip range[uuid:{r1}, start ip:192.168.0.10, end ip: 192.168.0.100]")),
        (&a, base("192.168.1.10", "192.168.1.20", "255.255.255.0", "192.168.1.1"), "SYS.1007",
            format!("multiple CIDR on the same L3 network is not allowed. There has been a IP range[uuid:{r1}, CIDR:192.168.0.0/24], the new IP range[CIDR:192.168.1.0/24] is not in the CIDR with the existing one")),
        (&b, base("10.0.0.2", "10.0.1.9", "255.255.255.0", "10.0.0.1"), "SYS.1007",
            "the endip[10.0.1.9] is not in the subnet 10.0.0.2/255.255.255.0".into()),
        (&b, base("10.0.0.2", "10.0.0.9", "255.255.255.0", "10.0.0.5"), "SYS.1007",
            "gateway[10.0.0.5] can not be part of range[10.0.0.2, 10.0.0.9]".into()),
        (&a, base("192.168.0.200", "192.168.0.210", "255.255.255.0", "192.168.0.254"), "SYS.1007",
            "new add ip range gateway 192.168.0.254 is different from old gateway 192.168.0.1".into()),
        (&a, base("192.168.0.200", "192.168.0.210", "255.255.255.0", "192.168.0.1").as_object().map(|m| {
            let mut m = m.clone();
            m.insert("l3NetworkUuid".into(), json!("x"));
            Value::Object(m)
        }).unwrap(), "SYS.1003", "".into()),
    ];
    for (l3u, params, code, text) in cases {
        if code == "SYS.1003" {
            // the URL wins over a body l3NetworkUuid: an unknown L3 in the URL is refused
            let r = s
                .job(
                    "POST",
                    "/l3-networks/0123456789abcdef0123456789abcdef/ip-ranges",
                    Some(json!({ "params": params })),
                )
                .await;
            assert_eq!(r.status, 503);
            assert_error(&r.body["error"], "SYS.1003", "type:L3NetworkVO] not found");
            continue;
        }
        let r = add_range(&s, l3u, params.clone()).await;
        assert_eq!(r.status, 503, "{params}: {}", r.text);
        assert_error(&r.body["error"], code, &text);
    }
    assert_eq!(ranges(&s).await.len(), 2, "refused ranges must not exist");

    // address pools: only on public networks, the start address is its gateway
    let r = add_range(
        &s,
        &pubn,
        json!({"name": "pool", "startIp": "172.16.0.10", "endIp": "172.16.0.20", "netmask": "255.255.0.0", "ipRangeType": "AddressPool"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["inventory"]["ipRangeType"], "AddressPool");
    assert_eq!(r.body["inventory"]["gateway"], "172.16.0.10");
    let pool = uuid(&r.body["inventory"]);
    let r = add_range(
        &s,
        &pubn,
        json!({"name": "n", "startIp": "172.16.1.10", "endIp": "172.16.1.20", "netmask": "255.255.0.0", "gateway": "172.16.0.1"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let normal = uuid(&r.body["inventory"]);
    // the last normal range of a network with an address pool stays
    let err = s.fails("DELETE", &format!("/l3-networks/ip-ranges/{normal}"), None).await;
    assert_error(&err, "SYS.1007", "can not delete the last normal ip range because there is still has address pool");
    assert_eq!(s.query(&format!("/l3-networks/ip-ranges/{normal}")).await.len(), 1);
    s.ok("DELETE", &format!("/l3-networks/ip-ranges/{pool}"), None).await;
    s.ok("DELETE", &format!("/l3-networks/ip-ranges/{normal}"), None).await;

    // query and delete
    assert_eq!(s.query(&format!("/l3-networks/ip-ranges?q=l3NetworkUuid={a}")).await.len(), 2);
    assert_eq!(s.query(&format!("/l3-networks/ip-ranges/{r1}")).await[0]["name"], "r1");
    assert_eq!(s.ok("DELETE", &format!("/l3-networks/ip-ranges/{r1}"), None).await, json!({}));
    assert!(s.query(&format!("/l3-networks/ip-ranges/{r1}")).await.is_empty());
    s.ok("DELETE", &format!("/l3-networks/ip-ranges/{r1}"), None).await;
    let err = s.fails("DELETE", "/l3-networks/ip-ranges/nope", None).await;
    assert_error(&err, "SYS.1003", "invalid value[nope] of field [uuid]");
    assert_eq!(ranges(&s).await.len(), 1);
}

#[tokio::test]
async fn ip_ranges_by_cidr_and_capacity() {
    let s = Server::start().await;
    let zone = uuid(&s.create_zone("z").await);
    let l2 = uuid(&no_vlan(&s, &zone, "l2", "eth0").await);
    let a = uuid(&l3(&s, &l2, "a", json!({})).await);
    let b = uuid(&l3(&s, &l2, "b", json!({})).await);
    let c = uuid(&l3(&s, &l2, "c", json!({})).await);

    // no gateway: the first address is the gateway, the rest is the range
    let r = s
        .job(
            "POST",
            &format!("/l3-networks/{a}/ip-ranges/by-cidr"),
            Some(json!({"params": {"name": "c1", "networkCidr": "10.1.0.0/24"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let inv = &r.body["inventory"];
    assert_eq!(
        (inv["startIp"].as_str(), inv["endIp"].as_str(), inv["gateway"].as_str()),
        (Some("10.1.0.2"), Some("10.1.0.254"), Some("10.1.0.1"))
    );
    assert_eq!(inv["netmask"], "255.255.255.0");
    assert_eq!(inv["networkCidr"], "10.1.0.0/24");
    assert_eq!(r.body["inventories"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.network.l3.IpRangeInventory");
    // a gateway in the middle splits the subnet in two ranges
    let r = s
        .job(
            "POST",
            &format!("/l3-networks/{b}/ip-ranges/by-cidr"),
            Some(json!({"params": {"name": "c2", "networkCidr": "10.2.0.0/24", "gateway": "10.2.0.100"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let invs = r.body["inventories"].as_array().unwrap();
    assert_eq!(invs.len(), 2);
    assert_eq!((invs[0]["startIp"].as_str(), invs[0]["endIp"].as_str()), (Some("10.2.0.1"), Some("10.2.0.99")));
    assert_eq!((invs[1]["startIp"].as_str(), invs[1]["endIp"].as_str()), (Some("10.2.0.101"), Some("10.2.0.254")));
    assert_eq!(invs[1]["gateway"], "10.2.0.100");
    assert_eq!(r.body["inventory"]["uuid"], invs[0]["uuid"]);
    // the last address as gateway
    let r = s
        .job(
            "POST",
            &format!("/l3-networks/{c}/ip-ranges/by-cidr"),
            Some(json!({"params": {"name": "c3", "networkCidr": "10.3.0.0/29", "gateway": "10.3.0.6"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.body["inventory"]["startIp"].as_str(), r.body["inventory"]["endIp"].as_str()),
        (Some("10.3.0.1"), Some("10.3.0.5"))
    );

    let before = ranges(&s).await.len();
    let cases: Vec<(Value, String)> = vec![
        (json!({"name": "x", "networkCidr": "10.9.0.0/33"}), "10.9.0.0/33 is not a valid network cidr".into()),
        (json!({"name": "x", "networkCidr": "10.9.0.0"}), "10.9.0.0 is not a valid network cidr".into()),
        (
            json!({"name": "x", "networkCidr": "10.9.0.0/31"}),
            "10.9.0.0/31 is not an allowed network cidr, because it doesn't have usable ip range".into(),
        ),
        (
            json!({"name": "x", "networkCidr": "10.9.0.0/24", "gateway": "10.9.1.1"}),
            "the gateway[10.9.1.1] is not in the subnet 10.9.0.0/24".into(),
        ),
        (
            json!({"name": "x", "networkCidr": "10.9.0.0/24", "gateway": "10.9.0.255"}),
            "the gateway[10.9.0.255] is not in the subnet 10.9.0.0/24".into(),
        ),
        (json!({"name": "x", "networkCidr": "10.1.0.0/25"}), "overlap with ip range".into()),
        (
            json!({"name": "x", "networkCidr": "224.1.0.0/24"}),
            "contains D class addresses which are for multicast".into(),
        ),
    ];
    for (params, text) in cases {
        let err =
            s.fails("POST", &format!("/l3-networks/{c}/ip-ranges/by-cidr"), Some(json!({ "params": params }))).await;
        assert_error(&err, "SYS.1007", &text);
    }
    let err =
        s.fails("POST", &format!("/l3-networks/{c}/ip-ranges/by-cidr"), Some(json!({"params": {"name": "x"}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        "field[networkCidr] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
    );
    assert_eq!(ranges(&s).await.len(), before);

    // capacity: network and broadcast addresses never count, nothing used yet
    let r = s.get(&format!("/ip-capacity?l3NetworkUuids={a}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["totalCapacity"], 253);
    assert_eq!(r.body["availableCapacity"], 253);
    assert_eq!(r.body["usedIpAddressNumber"], 0);
    assert_eq!(r.body["ipv4TotalCapacity"], 253);
    assert_eq!(r.body["ipv6TotalCapacity"], 0);
    assert_eq!(r.body["resourceType"], "L3NetworkVO");
    assert_eq!(r.body["capacityData"][0]["resourceUuid"], a.as_str());
    assert_eq!(r.body["capacityData"][0]["totalCapacity"], 253);
    let r = s.get(&format!("/ip-capacity?l3NetworkUuids={a}&l3NetworkUuids={b}")).await;
    assert_eq!(r.body["totalCapacity"], 253 + 253);
    assert_eq!(r.body["capacityData"].as_array().unwrap().len(), 2);
    let r = s.get(&format!("/ip-capacity?zoneUuids={zone}")).await;
    assert_eq!(r.body["totalCapacity"], 253 + 253 + 5);
    assert_eq!(r.body["resourceType"], "ZoneVO");
    let r = s.get("/ip-capacity?all=true").await;
    assert_eq!(r.body["totalCapacity"], 253 + 253 + 5);
    let first = uuid(&s.query(&format!("/l3-networks/ip-ranges?q=l3NetworkUuid={b}&q=startIp=10.2.0.1")).await[0]);
    let r = s.get(&format!("/ip-capacity?ipRangeUuids={first}")).await;
    assert_eq!(r.body["totalCapacity"], 99);
    assert_eq!(r.body["resourceType"], "IpRangeVO");
    // bad inputs
    let r = s.get("/ip-capacity").await;
    assert_eq!(r.status, 503);
    assert_error(
        &r.body["error"],
        "SYS.1007",
        "ipRangeUuids, L3NetworkUuids, zoneUuids must have at least one be none-empty list, or all is set to true",
    );
    let r = s.get("/ip-capacity?l3NetworkUuids=0123456789abcdef0123456789abcdef").await;
    assert_eq!(r.status, 503);
    assert_error(
        &r.body["error"],
        "SYS.1003",
        "invalid field[l3NetworkUuids], resource[uuids:[0123456789abcdef0123456789abcdef], type:L3NetworkVO] not found",
    );
}

#[tokio::test]
async fn l3_dns_order_host_routes_service_detach_and_ipv6_refused() {
    let s = Server::start().await;
    let zone = uuid(&s.create_zone("z").await);
    let l2 = uuid(&no_vlan(&s, &zone, "l2", "eth0").await);
    let n = l3(&s, &l2, "n", json!({})).await;
    let l3u = uuid(&n);

    // DNS servers come back in the order they were added (not sorted by value)
    let dpath = format!("/l3-networks/{l3u}/dns");
    for d in ["9.9.9.9", "1.1.1.1", "8.8.8.8", "2001:db8::1"] {
        s.ok("POST", &dpath, Some(json!({"params": {"dns": d}}))).await;
    }
    let want = json!(["9.9.9.9", "1.1.1.1", "8.8.8.8", "2001:db8::1"]);
    assert_eq!(s.query(&format!("/l3-networks/{l3u}")).await[0]["dns"], want);
    s.ok("DELETE", &format!("/l3-networks/{l3u}/dns/1.1.1.1"), None).await;
    let d = s.ok("POST", &dpath, Some(json!({"params": {"dns": "1.1.1.1"}}))).await;
    assert_eq!(d["inventory"]["dns"], json!(["9.9.9.9", "8.8.8.8", "2001:db8::1", "1.1.1.1"]));

    // host routes: nested in the L3 inventory as hostRoute
    let hpath = format!("/l3-networks/{l3u}/hostroute");
    let r =
        s.ok("POST", &hpath, Some(json!({"params": {"prefix": "169.254.169.254/32", "nexthop": "10.0.0.1"}}))).await;
    let routes = r["inventory"]["hostRoute"].as_array().unwrap().clone();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["prefix"], "169.254.169.254/32");
    assert_eq!(routes[0]["nexthop"], "10.0.0.1");
    assert_eq!(routes[0]["l3NetworkUuid"], l3u.as_str());
    assert!(routes[0]["id"].as_i64().is_some());
    assert!(routes[0]["createDate"].is_string());
    assert_eq!(r["schema"]["inventory.hostRoute[0]"], "org.zstack.header.network.l3.L3NetworkHostRouteInventory");
    s.ok("POST", &hpath, Some(json!({"params": {"prefix": "10.10.0.0/16", "nexthop": "10.0.0.2"}}))).await;
    let cases: Vec<(Value, &str, String)> = vec![
        (
            json!({"prefix": "169.254.169.254/32", "nexthop": "10.0.0.9"}),
            "SYS.1006",
            format!("there has been a hostroute for prefix[169.254.169.254/32] on L3 network[uuid:{l3u}]"),
        ),
        (
            json!({"prefix": "10.1.0.0", "nexthop": "10.0.0.1"}),
            "SYS.1007",
            "prefix [10.1.0.0] is not a IPv4 network cidr".into(),
        ),
        (json!({"prefix": "10.1.0.0/33", "nexthop": "10.0.0.1"}), "SYS.1007", "is not a IPv4 network cidr".into()),
        (
            json!({"prefix": "10.1.0.0/16", "nexthop": "10.0.0"}),
            "SYS.1007",
            "nexthop[10.0.0] is not a IPv4 address".into(),
        ),
        (json!({"prefix": "2001:db8::/64", "nexthop": "10.0.0.1"}), "SYS.1007", "IPv6 is not supported yet".into()),
        (json!({"prefix": "10.1.0.0/16", "nexthop": "fe80::1"}), "SYS.1007", "IPv6 is not supported yet".into()),
        (
            json!({"nexthop": "10.0.0.1"}),
            "SYS.1007",
            "field[prefix] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory".into(),
        ),
    ];
    for (p, code, text) in cases {
        let err = s.fails("POST", &hpath, Some(json!({ "params": p }))).await;
        assert_error(&err, code, &text);
    }
    let err = s
        .fails(
            "POST",
            "/l3-networks/0123456789abcdef0123456789abcdef/hostroute",
            Some(json!({"params": {"prefix": "10.2.0.0/16", "nexthop": "10.0.0.1"}})),
        )
        .await;
    assert_error(&err, "SYS.1003", "type:L3NetworkVO] not found");
    let now = &s.query(&format!("/l3-networks/{l3u}")).await[0];
    let prefixes: Vec<&str> =
        now["hostRoute"].as_array().unwrap().iter().map(|h| h["prefix"].as_str().unwrap()).collect();
    assert_eq!(prefixes, ["169.254.169.254/32", "10.10.0.0/16"]);
    assert_eq!(s.query("/l3-networks?q=hostRoute.prefix=10.10.0.0/16").await.len(), 1);

    let r = s.ok("DELETE", &format!("{hpath}?prefix=169.254.169.254/32"), None).await;
    let left: Vec<&str> =
        r["inventory"]["hostRoute"].as_array().unwrap().iter().map(|h| h["prefix"].as_str().unwrap()).collect();
    assert_eq!(left, ["10.10.0.0/16"]);
    let err = s.fails("DELETE", &format!("{hpath}?prefix=169.254.169.254/32"), None).await;
    assert_error(
        &err,
        "SYS.1006",
        &format!("there is no hostroute for prefix[169.254.169.254/32] on L3 network[uuid:{l3u}]"),
    );
    let err = s.fails("DELETE", &format!("{hpath}?prefix=nope"), None).await;
    assert_error(&err, "SYS.1007", "prefix [nope] is not a IPv4 network cidr");
    assert_eq!(s.query(&format!("/l3-networks/{l3u}")).await[0]["hostRoute"].as_array().unwrap().len(), 1);

    // network services: attach (provider by type, as upstream allows), detach by map and by service
    let spath = format!("/l3-networks/{l3u}/network-services");
    let flat = uuid(&s.query("/network-services/providers").await[0]);
    let r =
        s.ok("POST", &spath, Some(json!({"params": {"networkServices": {"Flat": ["DHCP", "DNS", "Userdata"]}}}))).await;
    let types = |v: &Value| -> Vec<String> {
        let mut t: Vec<String> = v["inventory"]["networkServices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["networkServiceType"].as_str().unwrap().to_string())
            .collect();
        t.sort();
        t
    };
    assert_eq!(types(&r), ["DHCP", "DNS", "Userdata"]);
    assert_eq!(r["inventory"]["networkServices"][0]["networkServiceProviderUuid"], flat.as_str());
    let r = s.ok("DELETE", &format!("{spath}/DNS"), None).await;
    assert_eq!(types(&r), ["DHCP", "Userdata"]);
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.network.l3.L3NetworkInventory");
    let r = s.ok("DELETE", &format!("{spath}?networkServices.{flat}=Userdata"), None).await;
    assert_eq!(types(&r), ["DHCP"]);
    // a service the network does not have: upstream answers with the unchanged network
    let r = s.ok("DELETE", &format!("{spath}/Eip"), None).await;
    assert_eq!(types(&r), ["DHCP"]);
    let err = s.fails("DELETE", &spath, None).await;
    assert_error(&err, "SYS.1007", "networkServices cannot be empty");
    let err = s.fails("DELETE", "/l3-networks/0123456789abcdef0123456789abcdef/network-services/DHCP", None).await;
    assert_error(&err, "SYS.1003", "type:L3NetworkVO] not found");
    let now = &s.query(&format!("/l3-networks/{l3u}")).await[0];
    assert_eq!(now["networkServices"].as_array().unwrap().len(), 1);

    // IPv6: refused clearly, never accepted and ignored
    let err = s
        .fails("POST", "/l3-networks", Some(json!({"params": {"name": "v6", "l2NetworkUuid": l2, "ipVersion": 6}})))
        .await;
    assert_error(&err, "SYS.1007", "IPv6 is not supported yet");
    assert!(s.query("/l3-networks?q=name=v6").await.is_empty());
    let rpath = format!("/l3-networks/{l3u}/ip-ranges");
    let err = s
        .fails(
            "POST",
            &rpath,
            Some(json!({"params": {"name": "r", "startIp": "2001:db8::10", "endIp": "2001:db8::20",
                "netmask": "255.255.255.0", "gateway": "2001:db8::1"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "IPv6 is not supported yet");
    let err = s
        .fails(
            "POST",
            &format!("{rpath}/by-cidr"),
            Some(json!({"params": {"name": "r", "networkCidr": "2001:db8::/64"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "IPv6 is not supported yet");
    let v6 = format!("/l3-networks/{l3u}/ipv6-ranges");
    let err = s
        .fails(
            "POST",
            &v6,
            Some(json!({"params": {"name": "r", "startIp": "2001:db8::10", "endIp": "2001:db8::20",
                "gateway": "2001:db8::1", "prefixLen": 64, "addressMode": "SLAAC"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "IPv6 is not supported yet");
    let err = s
        .fails(
            "POST",
            &v6,
            Some(json!({"params": {"name": "r", "startIp": "2001:db8::10", "endIp": "2001:db8::20",
                "gateway": "2001:db8::1", "prefixLen": 130, "addressMode": "SLAAC"}})),
        )
        .await;
    assert_eq!(err["code"], "SYS.1007", "{err}");
    let err = s
        .fails(
            "POST",
            &format!("{v6}/by-cidr"),
            Some(json!({"params": {"name": "r", "networkCidr": "2001:db8::/64", "addressMode": "Stateful-DHCP"}})),
        )
        .await;
    assert_error(&err, "SYS.1007", "IPv6 is not supported yet");
    assert!(s.query(&format!("/l3-networks/ip-ranges?q=l3NetworkUuid={l3u}")).await.is_empty());
}
