//! VMs through the public API: CreateVmInstance on simulator hosts (strategies, allocation,
//! failures that leave nothing behind, the saga's fault hook), QueryVmInstance.
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};
use std::process::Command;

#[tokio::test]
async fn create_instant_start_inventory() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let before = usage(&srv, &t).await;
    let r = srv
        .job("POST", "/vm-instances", Some(create(&t, json!({"description": "web", "dataDiskSizes": [GB, 2 * GB]}))))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let vm = &r.body["inventory"];
    let u = s(&vm["uuid"]);
    assert_eq!(u.len(), 32);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
    assert_eq!(vm["name"], "vm1");
    assert_eq!(vm["description"], "web");
    assert_eq!(vm["zoneUuid"], t.zone.as_str());
    assert_eq!(vm["clusterUuid"], t.cluster.as_str());
    assert_eq!(vm["imageUuid"], t.image.as_str());
    assert_eq!(vm["hostUuid"], t.hosts[0].as_str());
    assert_eq!(vm["lastHostUuid"], t.hosts[0].as_str());
    assert_eq!(vm["instanceOfferingUuid"], t.offering.as_str());
    assert_eq!(vm["platform"], "Linux");
    assert_eq!(vm["guestOsType"], "Ubuntu");
    assert_eq!(vm["architecture"], "x86_64");
    assert_eq!(vm["type"], "UserVm");
    assert_eq!(vm["hypervisorType"], "Simulator");
    assert_eq!(vm["cpuNum"], 1);
    assert_eq!(vm["cpuSpeed"], 0);
    assert_eq!(vm["memorySize"], GB);
    assert!(vm.get("reservedMemorySize").is_none(), "omitted when 0: {vm}");
    assert_eq!(vm["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
    assert_eq!(vm["state"], "Running");
    assert!(vm["internalId"].as_i64().unwrap() >= 1);
    assert!(s(&vm["createDate"]).ends_with('M'));
    assert!(s(&vm["lastOpDate"]).ends_with('M'));
    assert!(vm.get("defaultL3NetworkUuid").is_none());
    assert_eq!(vm["vmNics"], json!([]));

    // volumes: root from the image, two data volumes, all on the PS, rows of /volumes
    let vols = vm["allVolumes"].as_array().unwrap();
    assert_eq!(vols.len(), 3);
    let root = vols.iter().find(|v| v["type"] == "Root").unwrap();
    assert_eq!(vm["rootVolumeUuid"], root["uuid"]);
    assert_eq!(root["name"], "ROOT-for-vm1");
    assert_eq!(root["size"], 64 * MB);
    assert_eq!(root["rootImageUuid"], t.image.as_str());
    assert_eq!(root["deviceId"], 0);
    assert_eq!(root["vmInstanceUuid"], u.as_str());
    assert_eq!(root["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(root["format"], "qcow2");
    assert_eq!(root["state"], "Enabled");
    assert_eq!(root["status"], "Ready");
    assert_eq!(root["isShareable"], false);
    let rp = s(&root["installPath"]);
    assert!(
        rp.starts_with("/sim-ps/rootVolumes/acct-") && rp.ends_with(&format!("/vol-{0}/{0}.qcow2", s(&root["uuid"]))),
        "{rp}"
    );
    let mut data: Vec<&Value> = vols.iter().filter(|v| v["type"] == "Data").collect();
    data.sort_by_key(|v| v["deviceId"].as_i64());
    assert_eq!(data[0]["size"], GB);
    assert_eq!(data[0]["deviceId"], 1);
    assert_eq!(data[1]["size"], 2 * GB);
    assert_eq!(data[1]["deviceId"], 2);
    assert_eq!(data[0]["name"], "DATA-for-vm1");
    assert_eq!(srv.query(&format!("/volumes?q=vmInstanceUuid={u}")).await.len(), 3);

    // one empty CD-ROM
    let cd = &vm["vmCdRoms"][0];
    assert_eq!(vm["vmCdRoms"].as_array().unwrap().len(), 1);
    assert_eq!(cd["deviceId"], 0);
    assert_eq!(cd["name"], format!("vm-{u}-cdRom"));
    assert!(cd.get("isoUuid").is_none());

    // capacity taken: 1 CPU, 1 GiB on the host; 64 MiB + 3 GiB on the PS
    let after = usage(&srv, &t).await;
    assert_eq!(after.0[0], (before.0[0].0 - 1, before.0[0].1 - GB));
    assert_eq!(after.1, before.1 - 64 * MB - 3 * GB);

    // query, by uuid and by nested fields
    let q = srv.query(&format!("/vm-instances/{u}")).await;
    assert_eq!(q[0]["state"], "Running");
    assert_eq!(srv.query(&format!("/vm-instances?q=allVolumes.primaryStorageUuid={}", t.ps)).await.len(), 1);
    assert_eq!(srv.query("/vm-instances?q=state=Stopped").await.len(), 0);
}

#[tokio::test]
async fn nics_with_ips_and_macs() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3a = network(&srv, &t, "a", 10, 20).await;
    let l3b = network(&srv, &t, "b", 30, 40).await;
    let r = srv
        .job(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"clusterUuid": null, "l3NetworkUuids": [l3a, l3b], "defaultL3NetworkUuid": l3b}))),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let vm = &r.body["inventory"];
    let u = s(&vm["uuid"]);
    assert_eq!(vm["defaultL3NetworkUuid"], l3b.as_str());
    assert_eq!(vm["zoneUuid"], t.zone.as_str());
    let nics = vm["vmNics"].as_array().unwrap();
    assert_eq!(nics.len(), 2);
    let internal = vm["internalId"].as_i64().unwrap();
    for (i, (nic, l3)) in nics.iter().zip([&l3a, &l3b]).enumerate() {
        assert_eq!(nic["deviceId"], i as i64);
        assert_eq!(nic["l3NetworkUuid"], l3.as_str());
        assert_eq!(nic["vmInstanceUuid"], u.as_str());
        let mac = s(&nic["mac"]);
        assert!(mac.starts_with("fa:") && mac.ends_with(&format!(":0{i}")) && mac.len() == 17, "{mac}");
        assert_eq!(nic["internalName"], format!("vnic{internal}.{i}"));
        assert_eq!(nic["type"], "VNIC");
        assert_eq!(nic["state"], "enable");
        assert_eq!(nic["hypervisorType"], "Simulator");
        assert_eq!(nic["netmask"], "255.255.255.0");
        assert_eq!(nic["gateway"], "192.168.10.1");
        assert_eq!(nic["ipVersion"], 4);
        let ip = s(&nic["ip"]);
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!(if i == 0 { (10..=20).contains(&last) } else { (30..=40).contains(&last) }, "{ip}");
        let used = &nic["usedIps"][0];
        assert_eq!(nic["usedIpUuid"], used["uuid"]);
        assert_eq!(used["ip"], ip.as_str());
        assert_eq!(used["ipInLong"], (192i64 << 24) + (168 << 16) + (10 << 8) + last as i64);
        assert_eq!(used["vmNicUuid"], nic["uuid"]);
        assert_eq!(used["l3NetworkUuid"], l3.as_str());
    }
    // nested query
    let ip0 = s(&nics[0]["ip"]);
    assert_eq!(srv.query(&format!("/vm-instances?q=vmNics.ip={ip0}")).await.len(), 1);
    assert_eq!(srv.query(&format!("/vm-instances/nics?q=l3NetworkUuid={l3a}")).await.len(), 1);

    // checks on L3 networks
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3a, l3b]})))).await;
    assert_error(
        &e,
        "SYS.1007",
        "there are more than one L3 network specified in l3NetworkUuids, but defaultL3NetworkUuid is null",
    );
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3a, l3a]})))).await;
    assert_error(&e, "SYS.1006", &format!("Can't add same uuid in the l3Network,uuid: {l3a}"));
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"l3NetworkUuids": [l3a, l3b], "defaultL3NetworkUuid": "0123456789ab4def8123456789abcdef"}),
            )),
        )
        .await;
    assert_error(
        &e,
        "SYS.1007",
        "defaultL3NetworkUuid[uuid:0123456789ab4def8123456789abcdef] is not in l3NetworkUuids",
    );
    assert_eq!(srv.query("/vm-instances").await.len(), 1);
}

#[tokio::test]
async fn ip_exhaustion_is_an_l3_error_and_concurrent_creates_never_share() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "small", 10, 19).await; // 10 addresses
    let before = (usage(&srv, &t).await, rows(&srv).await);
    let mut tasks = Vec::new();
    for i in 0..14 {
        let srv = srv.clone();
        let body = create(&t, json!({"name": format!("n{i}"), "l3NetworkUuids": [l3]}));
        tasks.push(tokio::spawn(async move { srv.job("POST", "/vm-instances", Some(body)).await }));
    }
    let mut ok = 0;
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == 200 {
            ok += 1;
        } else {
            assert_error(&r.body["error"]["cause"], "L3.1000", "no ip is available in this l3Network[name:small");
        }
    }
    assert_eq!(ok, 10);
    let nics = srv.query("/vm-instances/nics").await;
    let ips: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["ip"])).collect();
    let macs: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["mac"])).collect();
    assert_eq!((nics.len(), ips.len(), macs.len()), (10, 10, 10));
    assert_eq!(used_ips(&srv).await, 10);
    // the 4 failures left nothing: exactly 10 VMs' worth of capacity is in use
    let (h, ps) = usage(&srv, &t).await;
    let cpu_used: i64 = before.0 .0.iter().zip(&h).map(|(b, a)| b.0 - a.0).sum();
    assert_eq!(cpu_used, 10);
    assert_eq!(ps, before.0 .1 - 10 * 64 * MB);
    assert_eq!(rows(&srv).await, (10, 10, 10));
}

#[tokio::test]
async fn strategies_create_stopped_and_just_create() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let before = usage(&srv, &t).await;

    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"strategy": "CreateStopped"})))).await["inventory"]
        .clone();
    assert_eq!(vm["state"], "Stopped");
    assert!(vm.get("hostUuid").is_none());
    assert_eq!(vm["lastHostUuid"], t.hosts[0].as_str());
    assert_eq!(vm["allVolumes"].as_array().unwrap().len(), 1);
    // a stopped VM holds no host capacity, its volume holds PS capacity
    let after = usage(&srv, &t).await;
    assert_eq!(after.0, before.0);
    assert_eq!(after.1, before.1 - 64 * MB);

    let vm = srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "later", "strategy": "JustCreate"}))))
        .await["inventory"]
        .clone();
    assert_eq!(vm["state"], "Created");
    assert_eq!(vm["clusterUuid"], t.cluster.as_str());
    assert_eq!(vm["zoneUuid"], t.zone.as_str());
    for absent in ["hostUuid", "lastHostUuid", "rootVolumeUuid", "hypervisorType"] {
        assert!(vm.get(absent).is_none(), "{absent} in {vm}");
    }
    assert_eq!(vm["vmNics"], json!([]));
    assert_eq!(vm["allVolumes"], json!([]));
    assert_eq!(usage(&srv, &t).await, after, "JustCreate allocates nothing");

    // CPU/memory without an offering: Designated strategy; resourceUuid is the uuid
    let ru = "0123456789ab4def8123456789abcdef";
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"instanceOfferingUuid": null, "cpuNum": 2, "memorySize": 2 * GB, "reservedMemorySize": GB, "resourceUuid": ru}))),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm["uuid"], ru);
    assert_eq!(vm["cpuNum"], 2);
    assert_eq!(vm["reservedMemorySize"], GB);
    assert!(vm.get("allocatorStrategy").is_none(), "no offering, no strategy (upstream)");
    assert!(vm.get("instanceOfferingUuid").is_none());
}

#[tokio::test]
async fn host_allocation_strategies_and_designation() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    // LeastVmPreferred: the second VM goes to the other host
    let a =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "a"})))).await["inventory"]["hostUuid"].clone();
    let b =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "b"})))).await["inventory"]["hostUuid"].clone();
    assert_ne!(a, b);
    // designated host wins over cluster and zone
    for _ in 0..2 {
        let vm = srv
            .ok("POST", "/vm-instances", Some(create(&t, json!({"hostUuid": t.hosts[1], "zoneUuid": t.zone}))))
            .await["inventory"]
            .clone();
        assert_eq!(vm["hostUuid"], t.hosts[1].as_str());
        assert_eq!(vm["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy", "the offering's");
    }
    // the zone alone is enough
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"clusterUuid": null, "zoneUuid": t.zone})))).await;
    assert_eq!(vm["inventory"]["clusterUuid"], t.cluster.as_str());
    // a Default-strategy offering
    let off = s(&srv
        .ok(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "d", "cpuNum": 1, "memorySize": GB, "allocatorStrategy": "DefaultHostAllocatorStrategy"}})),
        )
        .await["inventory"]["uuid"]);
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"instanceOfferingUuid": off})))).await;
    assert_eq!(vm["inventory"]["allocatorStrategy"], "DefaultHostAllocatorStrategy");
    assert_eq!(srv.query("/vm-instances?q=state=Running").await.len(), 6);
    // a disabled designated host is refused by the interceptor
    srv.ok(
        "PUT",
        &format!("/hosts/{}/actions", t.hosts[0]),
        Some(json!({"changeHostState": {"stateEvent": "disable"}})),
    )
    .await;
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"hostUuid": t.hosts[0]})))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("host[uuid:{}] is specified but it's Disabled, can not create vm from it", t.hosts[0]),
    );
}

#[tokio::test]
async fn interceptor_checks_leave_nothing() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let before = (usage(&srv, &t).await, rows(&srv).await);
    let cases: Vec<(Value, &str, String)> = vec![
        (json!({"instanceOfferingUuid": null}), "SYS.1006", "Missing CPU/memory settings".into()),
        (json!({"instanceOfferingUuid": null, "cpuNum": 0, "memorySize": GB}), "SYS.1006", "Unexpected CPU/memory settings".into()),
        (
            json!({"instanceOfferingUuid": null, "cpuNum": 1, "memorySize": GB, "reservedMemorySize": 2 * GB}),
            "SYS.1006",
            format!("reserved memory[{}] is greater than memory size[{}]", 2 * GB, GB),
        ),
        (
            json!({"clusterUuid": null}),
            "SYS.1006",
            "could not create vm, because at least one of field (l3NetworkUuids,zoneUuid,clusterUuid,hostUuid) should be set".into(),
        ),
        (
            json!({"imageUuid": null}),
            "SYS.1007",
            "when imageUuid is null, [platform] is required".into(),
        ),
        (json!({"dataDiskSizes": [0]}), "SYS.1006", "Unexpected data disk settings. dataDiskSizes need to be greater than 0".into()),
        (json!({"strategy": "CreatedPaused"}), "SYS.1007", "CreatedPaused".into()),
        (json!({"imageUuid": "0123456789abcdef0123456789abcdef"}), "SYS.1003", "type:ImageVO] not found".into()),
        (json!({"diskAOs": [{"boot": false, "size": GB}]}), "SYS.1007", "missing root disk".into()),
    ];
    for (extra, code, text) in cases {
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, extra.clone()))).await;
        assert_error(&e, code, &text);
    }
    // a disabled offering
    srv.ok(
        "PUT",
        &format!("/instance-offerings/{}/actions", t.offering),
        Some(json!({"changeInstanceOfferingState": {"stateEvent": "disable"}})),
    )
    .await;
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({})))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("instance offering[uuid:{}] is Disabled, can't create vm from it", t.offering),
    );
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
}

#[tokio::test]
async fn no_capacity_is_a_host_allocation_error_and_leaves_nothing() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let before = (usage(&srv, &t).await, rows(&srv).await);
    // 9 GiB fits no 8 GiB host
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"instanceOfferingUuid": null, "cpuNum": 1, "memorySize": 9 * GB}))),
        )
        .await;
    assert_error(&e, "SYS.1006", &format!("no host having cpu[1], memory[{} bytes] found", 9 * GB));
    assert_error(&e["cause"], "HOST_ALLOCATION.1000", "no host having cpu[1]");
    // the disk does not fit the primary storage
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"dataDiskSizes": [200 * GB]})))).await;
    assert_error(&e, "SYS.1006", "cannot find available primary storage");
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000");
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
    // fill both hosts (4 CPUs x 10 over-provisioning = 40 each; 8 GiB = 8 x 1 GiB VMs each)
    for i in 0..16 {
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": format!("f{i}")})))).await;
    }
    let full = (usage(&srv, &t).await, rows(&srv).await);
    assert_eq!(full.0 .0, vec![(39 - 7, 0), (39 - 7, 0)]);
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({})))).await;
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000");
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), full);
}

/// The fault hook fails each saga step in turn (undos then run twice): nothing is left.
#[tokio::test]
async fn every_saga_step_failure_is_undone() {
    let steps = [
        "create-vm-record",
        "allocate-host",
        "allocate-primary-storage",
        "create-volumes",
        "allocate-nics",
        "create-cdrom",
        "instantiate-on-host",
        "finish",
    ];
    for step in steps {
        let srv = Server::start_with_env(vec![("RZSTACK_TEST_FAIL_STEP".into(), step.into())]).await;
        let t = topology(&srv, 1).await;
        let l3 = network(&srv, &t, "n", 10, 20).await;
        let before = (usage(&srv, &t).await, rows(&srv).await);
        let e = srv
            .fails(
                "POST",
                "/vm-instances",
                Some(create(&t, json!({"dataDiskSizes": [GB], "l3NetworkUuids": [l3], "devices": {"tpm": {}}}))),
            )
            .await;
        assert_error(&e, "SYS.1006", &format!("test fault injected at saga step[{step}]"));
        assert!(srv.query("/tpms").await.is_empty(), "no TPM left after a failure at {step}");
        assert_eq!(e["cause"]["code"], "SYS.1006", "{e}");
        assert_eq!((usage(&srv, &t).await, rows(&srv).await), before, "after a failure at {step}");
        assert_eq!(used_ips(&srv).await, 0);
        let cap = srv.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
        assert_eq!(cap.body["usedIpAddressNumber"], 0, "{}", cap.text);
        assert_eq!(cap.body["availableCapacity"], 11, "{}", cap.text);
        // the same resourceUuid can be used again: the failed VM left no row
        assert_eq!(srv.query("/vm-instances").await.len(), 0);
    }
}

#[tokio::test]
async fn crash_mid_saga_is_unwound_at_restart() {
    let mut srv = Server::start_with_env(vec![("RZSTACK_TEST_CRASH_AFTER_STEP".into(), "create-volumes".into())]).await;
    let t = topology(&srv, 1).await;
    let before = usage(&srv, &t).await;
    let r = srv.request("POST", "/vm-instances", Some(create(&t, json!({}))), Some(&srv.session.clone()), &[]).await;
    assert_eq!(r.status, 202);
    let job = s(&r.body["location"]).rsplit('/').next().unwrap().to_string();
    let loc = format!("/api-jobs/{job}");
    // the process ends right after the volumes step commits
    let mut gone = false;
    for _ in 0..400 {
        if srv.http.get(format!("{}/management-nodes/ready", srv.base)).send().await.is_err() {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(gone, "the crash hook did not stop the server");
    srv.extra_env.clear();
    srv.restart().await;
    // the replayed job unwinds the half-done saga and creates the VM again
    let done = srv.poll(&loc).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["inventory"]["state"], "Running");
    assert_eq!(srv.query("/vm-instances").await.len(), 1);
    assert_eq!(srv.query("/volumes").await.len(), 1);
    let after = usage(&srv, &t).await;
    assert_eq!(after.0[0], (before.0[0].0 - 1, before.0[0].1 - GB), "host capacity taken once");
    assert_eq!(after.1, before.1 - 64 * MB, "PS capacity taken once");
}

#[tokio::test]
async fn concurrent_creates_never_overcommit() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let mut tasks = Vec::new();
    let srv = std::sync::Arc::new(srv);
    for i in 0..24 {
        let srv = srv.clone();
        let body = create(&t, json!({"name": format!("c{i}")}));
        tasks.push(tokio::spawn(async move { srv.job("POST", "/vm-instances", Some(body)).await }));
    }
    let mut ok = 0;
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == 200 {
            ok += 1;
        } else {
            assert_eq!(r.body["error"]["cause"]["code"], "HOST_ALLOCATION.1000", "{}", r.text);
        }
    }
    // 2 hosts x 8 GiB / 1 GiB per VM
    assert_eq!(ok, 16);
    let (h, ps) = usage(&srv, &t).await;
    assert_eq!(h, vec![(32, 0), (32, 0)]);
    assert_eq!(ps, 100 * GB - 16 * 64 * MB);
    assert_eq!(srv.query("/vm-instances").await.len(), 16);
}

const RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDDDxlV6Lr7GF4QXu0LcTdKwFXUTvftAaic3/jepCfkj3ioNc5rurGT2PwNxPvw1v36Ty4yoTiwcHOj7MAuYQD4aPVWXebQXDjJ+8u76vbr+kZ8XNQZmvoz/Kd7Y2ePH9/pfZgRYPwo3+e66STv5oaJtT3hGF1CgdQ16ahaDywGCw== r@h";

fn with_tags(t: &Topo, extra: Value, tags: Value) -> Value {
    let mut b = create(t, extra);
    b["systemTags"] = tags;
    b
}

/// staticIp / customMac / volume provisioning tags, sshKeyPairUuids, rootDiskSize: honoured,
/// and every bad value refused with upstream's text, leaving nothing.
#[tokio::test]
async fn create_parameters_tags_keys_and_root_size() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let other = network(&srv, &t, "o", 30, 40).await;
    let key = s(&srv.ok("POST", "/ssh-key-pair", Some(json!({"params": {"name": "k", "publicKey": RSA_KEY}}))).await
        ["inventory"]["uuid"]);
    let before = usage(&srv, &t).await;
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(with_tags(
                &t,
                json!({"l3NetworkUuids": [l3], "rootDiskSize": 2 * GB, "dataDiskSizes": [GB],
                    "rootVolumeSystemTags": ["volumeProvisioningStrategy::ThickProvisioning"],
                    "dataVolumeSystemTags": ["volumeProvisioningStrategy::ThinProvisioning"],
                    "sshKeyPairUuids": [key]}),
                json!([format!("staticIp::{l3}::192.168.10.15"), format!("customMac::{l3}::FA:16:3E:00:00:01")]),
            )),
        )
        .await["inventory"]
        .clone();
    let u = s(&vm["uuid"]);
    let nic = &vm["vmNics"][0];
    assert_eq!(nic["ip"], "192.168.10.15");
    assert_eq!(nic["usedIps"][0]["ipInLong"], (192i64 << 24) + (168 << 16) + (10 << 8) + 15);
    assert_eq!(nic["mac"], "fa:16:3e:00:00:01");
    let root = vm["allVolumes"].as_array().unwrap().iter().find(|v| v["type"] == "Root").unwrap().clone();
    let data = vm["allVolumes"].as_array().unwrap().iter().find(|v| v["type"] == "Data").unwrap().clone();
    assert_eq!(root["size"], 2 * GB, "rootDiskSize sizes the root volume");
    assert_eq!(usage(&srv, &t).await.1, before.1 - 3 * GB);
    let tags_of = |r: String| {
        let srv = &srv;
        async move {
            let mut v: Vec<String> =
                srv.query(&format!("/system-tags?q=resourceUuid={r}")).await.iter().map(|x| s(&x["tag"])).collect();
            v.sort();
            v
        }
    };
    assert_eq!(tags_of(s(&root["uuid"])).await, vec!["volumeProvisioningStrategy::ThickProvisioning"]);
    assert_eq!(tags_of(s(&data["uuid"])).await, vec!["volumeProvisioningStrategy::ThinProvisioning"]);
    // the VM keeps its static IP tag; the custom MAC tag is consumed by the NIC (as upstream)
    // (and `driver::virtio`: the image is virtio)
    assert_eq!(tags_of(u.clone()).await, vec!["driver::virtio".to_string(), format!("staticIp::{l3}::192.168.10.15")]);

    // a root disk smaller than the image: the volume keeps the image's size
    let vm2 = srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "small", "rootDiskSize": 32 * MB}))))
        .await["inventory"]
        .clone();
    assert_eq!(vm2["allVolumes"][0]["size"], 64 * MB);

    let snapshot = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let l3v = json!({"l3NetworkUuids": [l3]});
    let cases: Vec<(Value, Value, &str, String)> = vec![
        (
            l3v.clone(),
            json!([format!("staticIp::{l3}::192.168.10.15")]),
            "SYS.1007",
            format!("IP[192.168.10.15] is not available on the L3 network[uuid:{l3}] because: it is used"),
        ),
        (
            l3v.clone(),
            json!([format!("staticIp::{l3}::192.168.10.1")]),
            "SYS.1007",
            format!("IP[192.168.10.1] is not available on the L3 network[uuid:{l3}] because: it is gateway"),
        ),
        (
            l3v.clone(),
            json!([format!("staticIp::{l3}::192.168.10.50")]),
            "SYS.1007",
            format!("IP[192.168.10.50] is not available on the L3 network[uuid:{l3}] because: it is not in this range"),
        ),
        (
            l3v.clone(),
            json!([format!("staticIp::{l3}::10.0.0.999")]),
            "SYS.1007",
            "the static IP[10.0.0.999] format error".into(),
        ),
        (
            l3v.clone(),
            json!([format!("staticIp::{l3}::192.168.10.16"), format!("ipv4Netmask::{l3}::255.255.0.0")]),
            "SYS.1006",
            "netmask error, expect: 255.255.255.0, got: 255.255.0.0".into(),
        ),
        (
            l3v.clone(),
            json!([format!("staticIp::{l3}::192.168.10.16"), format!("ipv4Gateway::{l3}::192.168.10.2")]),
            "SYS.1006",
            "gateway error, expect: 192.168.10.1, got: 192.168.10.2".into(),
        ),
        (
            l3v.clone(),
            json!([format!("staticIp::{other}::192.168.10.31")]),
            "SYS.1007",
            format!("l3Network[uuid:{other}], which is not in l3NetworkUuids"),
        ),
        (
            json!({"l3NetworkUuids": [l3, other], "defaultL3NetworkUuid": l3}),
            json!([format!("customMac::{l3}::fa:16:3e:00:00:09"), format!("customMac::{other}::FA:16:3E:00:00:09")]),
            "SYS.1006",
            "Not allowed same mac [fa:16:3e:00:00:09]".into(),
        ),
        (
            l3v.clone(),
            json!([format!("customMac::{l3}::fa:16:3e:00:00:01")]),
            "SYS.1007",
            "Duplicate mac address [fa:16:3e:00:00:01]".into(),
        ),
        (
            l3v.clone(),
            json!([format!("customMac::{l3}::zz:16:3e:00:00:01")]),
            "SYS.1006",
            "Not a valid MAC address [zz:16:3e:00:00:01]".into(),
        ),
        (
            l3v.clone(),
            json!([format!("customMac::{l3}::01:00:5e:00:00:01")]),
            "SYS.1006",
            "Expected unicast mac address, found multicast MAC address [01:00:5e:00:00:01]".into(),
        ),
        (l3v.clone(), json!([format!("customMac::{l3}::00:00:00:00:00:00")]), "SYS.1006", "Disallowed address".into()),
        (l3v.clone(), json!(["bootFromMars::true"]), "SYS.1007", "no system tag matches bootFromMars::true".into()),
        (
            json!({"rootVolumeSystemTags": ["volumeProvisioningStrategy::Sparse"]}),
            json!([]),
            "SYS.1007",
            "volume system tag[volumeProvisioningStrategy::Sparse] is not supported".into(),
        ),
        (
            json!({"dataVolumeSystemTags": ["capability::virtio-scsi"]}),
            json!([]),
            "SYS.1007",
            "volume system tag[capability::virtio-scsi] is not supported".into(),
        ),
        (
            json!({"sshKeyPairUuids": ["0123456789ab4def8123456789abcdef"]}),
            json!([]),
            "SYS.1003",
            "SshKeyPairVO".into(),
        ),
        (json!({"rootDiskSize": 0}), json!([]), "SYS.1006", "Unexpected root disk settings".into()),
        (
            json!({"tagUuids": ["0123456789ab4def8123456789abcdef"]}),
            json!([]),
            "SYS.1003",
            "invalid field[tagUuids], resource[uuids:[0123456789ab4def8123456789abcdef], type:TagPatternVO] not found"
                .into(),
        ),
    ];
    for (extra, tags, code, text) in cases {
        let e = srv.fails("POST", "/vm-instances", Some(with_tags(&t, extra.clone(), tags.clone()))).await;
        assert_error(&e, code, &text);
        assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), snapshot, "after {extra} {tags}");
    }
}

async fn action(srv: &Server, vm: &str, body: Value) -> Value {
    srv.ok("PUT", &format!("/vm-instances/{vm}/actions"), Some(body)).await
}

async fn refused(srv: &Server, vm: &str, body: Value) -> Value {
    srv.fails("PUT", &format!("/vm-instances/{vm}/actions"), Some(body)).await
}

fn vm1010(e: &Value, wrapper: &str, state: &str, class: &str, allowed: &str) {
    let text = format!(
        "current vm instance state[{state}] doesn't allow to proceed message[org.zstack.header.vm.{class}], allowed states are [{allowed}]"
    );
    assert_error(e, wrapper, &text);
    assert_error(&e["cause"], "VM.1010", &text);
}

/// Start, stop, reboot, destroy, recover, expunge, update; every refused transition is VM.1010
/// with upstream's text; after destroy + expunge everything is free again.
#[tokio::test]
async fn lifecycle_transitions_refusals_and_release() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let before = (usage(&srv, &t).await, rows(&srv).await);
    let vm = srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3], "dataDiskSizes": [GB]}))))
        .await["inventory"]
        .clone();
    let u = s(&vm["uuid"]);
    let host = s(&vm["hostUuid"]);
    let hi = t.hosts.iter().position(|h| *h == host).unwrap();
    let running = usage(&srv, &t).await;
    assert_eq!(running.0[hi].0, before.0 .0[hi].0 - 1);

    // reboot: Running again
    let r = action(&srv, &u, json!({"rebootVmInstance": {}})).await;
    assert_eq!(r["inventory"]["state"], "Running");
    // start on Running: allowed, nothing changes
    assert_eq!(action(&srv, &u, json!({"startVmInstance": {}})).await["inventory"]["hostUuid"], host.as_str());
    assert_eq!(usage(&srv, &t).await, running);

    // stop (cold): host capacity back, lastHostUuid kept
    let r = action(&srv, &u, json!({"stopVmInstance": {"type": "cold"}})).await;
    assert_eq!(r["inventory"]["state"], "Stopped");
    assert!(r["inventory"].get("hostUuid").is_none());
    assert_eq!(r["inventory"]["lastHostUuid"], host.as_str());
    assert_eq!(usage(&srv, &t).await.0, before.0 .0);
    assert_eq!(r["inventory"]["vmNics"][0]["ip"], vm["vmNics"][0]["ip"], "a stopped VM keeps its IP");
    // stop again: success; a bad stop type is refused by the parameter rules
    assert_eq!(action(&srv, &u, json!({"stopVmInstance": {}})).await["inventory"]["state"], "Stopped");
    let e = refused(&srv, &u, json!({"stopVmInstance": {"type": "hard"}})).await;
    assert_eq!(e["code"], "SYS.1007");
    // refused on Stopped
    let e = refused(&srv, &u, json!({"rebootVmInstance": {}})).await;
    vm1010(&e, "VM.1003", "Stopped", "APIRebootVmInstanceMsg", "Crashed, Running");
    let e = refused(&srv, &u, json!({"recoverVmInstance": {}})).await;
    vm1010(&e, "SYS.1006", "Stopped", "APIRecoverVmInstanceMsg", "Destroyed");
    let e = refused(&srv, &u, json!({"expungeVmInstance": {}})).await;
    vm1010(&e, "SYS.1006", "Stopped", "APIExpungeVmInstanceMsg", "Destroyed");

    // update while stopped: CPU and memory too
    let r = action(
        &srv,
        &u,
        json!({"updateVmInstance": {"name": "renamed", "description": "d", "cpuNum": 2, "memorySize": 2 * GB, "guestOsType": "Debian"}}),
    )
    .await;
    let inv = &r["inventory"];
    assert_eq!((inv["name"].clone(), inv["description"].clone()), (json!("renamed"), json!("d")));
    assert_eq!((inv["cpuNum"].clone(), inv["memorySize"].clone()), (json!(2), json!(2 * GB)));
    assert_eq!(inv["guestOsType"], "Debian");
    let e =
        refused(&srv, &u, json!({"updateVmInstance": {"defaultL3NetworkUuid": "0123456789ab4def8123456789abcdef"}}))
            .await;
    assert_eq!(e["code"], "SYS.1003");
    let e = refused(&srv, &u, json!({"updateVmInstance": {"reservedMemorySize": 3 * GB}})).await;
    assert_error(&e, "SYS.1007", &format!("reservedMemorySize[{}] is greater than memorySize[{}]", 3 * GB, 2 * GB));

    // start on the last host with the new size
    let r = action(&srv, &u, json!({"startVmInstance": {}})).await;
    assert_eq!(r["inventory"]["state"], "Running");
    assert_eq!(r["inventory"]["hostUuid"], host.as_str());
    let now = usage(&srv, &t).await;
    assert_eq!(now.0[hi], (before.0 .0[hi].0 - 2, before.0 .0[hi].1 - 2 * GB));
    let e = refused(&srv, &u, json!({"updateVmInstance": {"cpuNum": 3}})).await;
    assert_error(&e, "SYS.1007", "the VM cannot do cpu hot plug because of disabling cpu hot plug");
    assert_eq!(srv.query(&format!("/vm-instances/{u}")).await[0]["cpuNum"], 2);

    // destroy (Delay): Destroyed, IP and host capacity back, root Deleted, data detached
    let r = srv.job("DELETE", &format!("/vm-instances/{u}?deleteMode=Permissive"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_object().map(|o| o.keys().filter(|k| *k != "schema").count()), Some(0), "{}", r.text);
    let inv = srv.query(&format!("/vm-instances/{u}")).await[0].clone();
    assert_eq!(inv["state"], "Destroyed");
    assert!(inv.get("hostUuid").is_none());
    assert_eq!(inv["lastHostUuid"], host.as_str());
    assert!(inv["vmNics"][0].get("ip").is_none(), "{inv}");
    assert_eq!(used_ips(&srv).await, 0);
    assert_eq!(usage(&srv, &t).await.0, before.0 .0);
    let root = &inv["allVolumes"][0];
    assert_eq!((root["type"].clone(), root["status"].clone()), (json!("Root"), json!("Deleted")));
    assert_eq!(inv["allVolumes"].as_array().unwrap().len(), 1);
    let data = srv.query("/volumes?q=type=Data").await[0].clone();
    assert!(data.get("vmInstanceUuid").is_none());
    assert_eq!(data["lastVmInstanceUuid"], u.as_str());
    // destroying again succeeds; an unknown uuid too
    srv.ok("DELETE", &format!("/vm-instances/{u}"), None).await;
    srv.ok("DELETE", "/vm-instances/0123456789ab4def8123456789abcdef", None).await;
    // refused on Destroyed
    let e = refused(&srv, &u, json!({"startVmInstance": {}})).await;
    vm1010(&e, "VM.1001", "Destroyed", "APIStartVmInstanceMsg", "Crashed, Stopped, Running, Created");
    let e = refused(&srv, &u, json!({"stopVmInstance": {}})).await;
    vm1010(&e, "VM.1002", "Destroyed", "APIStopVmInstanceMsg", "Crashed, Unknown, Stopped, Running, Paused");

    // recover: Stopped, root Ready; start gets an address again
    let r = action(&srv, &u, json!({"recoverVmInstance": {}})).await;
    assert_eq!(r["inventory"]["state"], "Stopped");
    assert_eq!(r["inventory"]["allVolumes"][0]["status"], "Ready");
    let r = action(&srv, &u, json!({"startVmInstance": {"hostUuid": t.hosts[1 - hi]}})).await;
    assert_eq!(r["inventory"]["hostUuid"], t.hosts[1 - hi].as_str(), "a designated host wins over the last host");
    let ip = s(&r["inventory"]["vmNics"][0]["ip"]);
    assert!(ip.starts_with("192.168.10."), "{ip}");
    assert_eq!(used_ips(&srv).await, 1);

    // a JustCreate VM: stop refused, start allocates everything, destroy of another removes it
    let jc = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "jc", "strategy": "JustCreate", "l3NetworkUuids": [l3]}))),
        )
        .await["inventory"]
        .clone();
    let j = s(&jc["uuid"]);
    let e = refused(&srv, &j, json!({"stopVmInstance": {}})).await;
    vm1010(&e, "VM.1002", "Created", "APIStopVmInstanceMsg", "Crashed, Unknown, Stopped, Running, Paused");
    let r = action(&srv, &j, json!({"startVmInstance": {}})).await;
    let inv = &r["inventory"];
    assert_eq!(inv["state"], "Running");
    assert!(inv["hostUuid"].is_string());
    assert_eq!(inv["vmNics"].as_array().unwrap().len(), 1);
    assert_eq!(inv["allVolumes"].as_array().unwrap().len(), 1);
    assert_eq!(inv["vmCdRoms"].as_array().unwrap().len(), 1);
    let jc2 = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "jc2", "strategy": "JustCreate"})))).await
        ["inventory"]["uuid"]
        .clone();
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&jc2)), None).await;
    assert_eq!(srv.query(&format!("/vm-instances/{}", s(&jc2))).await.len(), 0, "a Created VM is removed at once");

    // destroy + expunge everything: all free again
    for v in [&u, &j] {
        srv.ok("DELETE", &format!("/vm-instances/{v}"), None).await;
        let r = action(&srv, v, json!({"expungeVmInstance": {}})).await;
        assert_eq!(r.as_object().map(|o| o.keys().filter(|k| *k != "schema").count()), Some(0), "{r}");
    }
    let dv = s(&data["uuid"]);
    srv.ok("DELETE", &format!("/volumes/{dv}"), None).await;
    srv.ok("PUT", &format!("/volumes/{dv}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
    assert_eq!(used_ips(&srv).await, 0);
    let cap = srv.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
    assert_eq!(cap.body["usedIpAddressNumber"], 0, "{}", cap.text);
    assert_eq!(srv.query("/vm-instances/nics").await.len(), 0);
    // an expunged VM is gone: its actions are SYS.1003
    let e = refused(&srv, &u, json!({"startVmInstance": {}})).await;
    assert_eq!(e["code"], "SYS.1003");
}

/// 50 concurrent creates never share an IP or a MAC; destroying and expunging them all gives
/// every address, MAC, volume and unit of capacity back.
#[tokio::test]
async fn fifty_concurrent_creates_then_destroy_and_expunge_all() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "big", 10, 80).await;
    let before = (usage(&srv, &t).await, rows(&srv).await);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let srv = srv.clone();
        let body = create(
            &t,
            json!({"name": format!("c{i}"), "instanceOfferingUuid": null, "cpuNum": 1, "memorySize": 64 * MB,
                "l3NetworkUuids": [l3]}),
        );
        tasks.push(tokio::spawn(async move { srv.ok("POST", "/vm-instances", Some(body)).await }));
    }
    let mut uuids = Vec::new();
    for task in tasks {
        uuids.push(s(&task.await.unwrap()["inventory"]["uuid"]));
    }
    let nics = srv.query("/vm-instances/nics").await;
    let ips: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["ip"])).collect();
    let macs: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["mac"])).collect();
    assert_eq!((nics.len(), ips.len(), macs.len()), (50, 50, 50));
    let mut tasks = Vec::new();
    for u in uuids {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            srv.ok("DELETE", &format!("/vm-instances/{u}"), None).await;
            srv.ok("PUT", &format!("/vm-instances/{u}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
    assert_eq!(used_ips(&srv).await, 0);
    let cap = srv.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
    assert_eq!(cap.body["usedIpAddressNumber"], 0, "{}", cap.text);
}

/// Run one SQL statement on the server's database (for rows no API creates yet).
async fn sql(srv: &Server, stmt: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = match &srv.database {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", srv.data_dir.path().join("rzstack.db").display()),
    };
    let mut c = sqlx::AnyConnection::connect(&url).await.expect("connect to the test database");
    sqlx::query(stmt).execute(&mut c).await.expect("sql");
}

#[tokio::test]
async fn allocator_skips_reserved_ip_ranges() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    // .10-.19 reserved: the allocator can only hand out .20
    sql(
        &srv,
        &format!(
            "INSERT INTO reserved_ip_range (uuid, l3_network_uuid, start_ip, end_ip, ip_version, create_date, last_op_date) \
             VALUES ('0123456789abcdef0123456789abcdef', '{l3}', '192.168.10.10', '192.168.10.19', 4, 0, 0)"
        ),
    )
    .await;
    for i in 0..3 {
        let vm = srv
            .ok("POST", "/vm-instances", Some(create(&t, json!({"name": format!("r{i}"), "l3NetworkUuids": [l3]}))))
            .await;
        assert_eq!(vm["inventory"]["vmNics"][0]["ip"], "192.168.10.20");
        let u = s(&vm["inventory"]["uuid"]);
        srv.ok("DELETE", &format!("/vm-instances/{u}"), None).await;
        srv.ok("PUT", &format!("/vm-instances/{u}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    }
    srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "last", "l3NetworkUuids": [l3]})))).await;
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"name": "none", "l3NetworkUuids": [l3]})))).await;
    assert_error(&e["cause"], "L3.1000", "because no ip is available in this l3Network");
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
    // a static IP may name a reserved address
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(with_tags(
                &t,
                json!({"name": "st", "l3NetworkUuids": [l3]}),
                json!([format!("staticIp::{l3}::192.168.10.12")]),
            )),
        )
        .await;
    assert_eq!(vm["inventory"]["vmNics"][0]["ip"], "192.168.10.12");
}

#[tokio::test]
async fn virtio_tag_and_nic_driver() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 30).await;
    let tags = |u: String| {
        let srv = &srv;
        async move {
            srv.query(&format!("/system-tags?q=resourceUuid={u}"))
                .await
                .iter()
                .map(|x| s(&x["tag"]))
                .collect::<Vec<_>>()
        }
    };
    // a virtio Linux image: virtio from the image, the tag recorded, virtio NICs
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "a", "l3NetworkUuids": [l3]})))).await;
    assert_eq!(vm["inventory"]["vmNics"][0]["driverType"], "virtio");
    assert_eq!(tags(s(&vm["inventory"]["uuid"])).await, vec!["driver::virtio"]);
    // a Windows image without virtio: e1000 NICs, no tag
    let qcow = t._dir.path().join("t.qcow2");
    let bs = s(&srv.query("/backup-storage").await[0]["uuid"]);
    let win = s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "win", "url": format!("file://{}", qcow.display()), "format": "qcow2",
                "backupStorageUuids": [bs], "platform": "Windows", "guestOsType": "Windows 10", "architecture": "x86_64",
                "virtio": false}})),
        )
        .await["inventory"]["uuid"]);
    let vm = srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "w", "imageUuid": win, "l3NetworkUuids": [l3]}))))
        .await;
    assert_eq!(vm["inventory"]["platform"], "Windows");
    assert_eq!(vm["inventory"]["vmNics"][0]["driverType"], "e1000");
    assert!(tags(s(&vm["inventory"]["uuid"])).await.is_empty());
    // the same image with virtio: true: the tag and virtio NICs
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "wv", "imageUuid": win, "l3NetworkUuids": [l3], "virtio": true}))),
        )
        .await;
    assert_eq!(vm["inventory"]["vmNics"][0]["driverType"], "virtio");
    assert_eq!(tags(s(&vm["inventory"]["uuid"])).await, vec!["driver::virtio"]);
    // virtio: false on a virtio Linux image: no tag; the NIC stays paravirtual (image and platform support it)
    let vm = srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "nv", "l3NetworkUuids": [l3], "virtio": false}))))
        .await;
    assert_eq!(vm["inventory"]["vmNics"][0]["driverType"], "virtio");
    assert!(tags(s(&vm["inventory"]["uuid"])).await.is_empty());
    // a bad value
    let before = rows(&srv).await;
    let r = srv
        .request("POST", "/vm-instances", Some(create(&t, json!({"virtio": "maybe"}))), Some(&srv.session.clone()), &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("Invalid value for boolean field [virtio]"), "{}", r.text);
    assert_eq!(rows(&srv).await, before);
}

#[tokio::test]
async fn create_vm_from_volume_snapshot() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 30).await;
    let src = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "src", "dataDiskSizes": [2 * GB], "l3NetworkUuids": [l3]}))),
        )
        .await["inventory"]
        .clone();
    let vols = src["allVolumes"].as_array().unwrap();
    let root = s(&vols.iter().find(|v| v["type"] == "Root").unwrap()["uuid"]);
    let data = s(&vols.iter().find(|v| v["type"] == "Data").unwrap()["uuid"]);
    let snap = s(&srv
        .ok("POST", &format!("/volumes/{root}/volume-snapshots"), Some(json!({"params": {"name": "s1"}})))
        .await["inventory"]["uuid"]);
    let before = usage(&srv, &t).await;

    // the spec's request body, uuids replaced by real ones
    let body = json!({"params": {"name": "vm1", "description": "this is a vm", "instanceOfferingUuid": t.offering,
        "l3NetworkUuids": [l3], "clusterUuid": t.cluster, "strategy": "InstantStart"}, "systemTags": [], "userTags": []});
    let r = srv.job("POST", &format!("/vm-instances/from/volume-snapshots/{snap}"), Some(body.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
    let vm = &r.body["inventory"];
    let u = s(&vm["uuid"]);
    assert_ne!(u, s(&src["uuid"]));
    assert_eq!(vm["name"], "vm1");
    assert_eq!(vm["description"], "this is a vm");
    assert_eq!(vm["state"], "Running");
    assert_eq!(vm["hostUuid"], t.hosts[0].as_str());
    assert_eq!(vm["lastHostUuid"], t.hosts[0].as_str());
    assert_eq!(vm["clusterUuid"], t.cluster.as_str());
    assert_eq!(vm["zoneUuid"], t.zone.as_str());
    assert_eq!(vm["imageUuid"], t.image.as_str());
    assert_eq!(vm["platform"], "Linux");
    assert_eq!(vm["guestOsType"], "Ubuntu");
    assert_eq!(vm["architecture"], "x86_64");
    assert_eq!(vm["instanceOfferingUuid"], t.offering.as_str());
    assert_eq!(vm["cpuNum"], 1);
    assert_eq!(vm["memorySize"], GB);
    assert_eq!(vm["vmNics"].as_array().unwrap().len(), 1);
    assert_eq!(vm["vmNics"][0]["l3NetworkUuid"], l3.as_str());
    assert_eq!(vm["vmNics"][0]["driverType"], "virtio");
    let vols = vm["allVolumes"].as_array().unwrap();
    assert_eq!(vols.len(), 1, "only the root volume: {vm}");
    let nroot = &vols[0];
    assert_eq!(vm["rootVolumeUuid"], nroot["uuid"]);
    assert_ne!(s(&nroot["uuid"]), root);
    assert_eq!(nroot["type"], "Root");
    assert_eq!(nroot["size"], 64 * MB, "sized as the snapshotted volume");
    assert_eq!(nroot["rootImageUuid"], t.image.as_str());
    assert_eq!(nroot["primaryStorageUuid"], t.ps.as_str());
    assert_eq!(nroot["status"], "Ready");
    assert_eq!(nroot["vmInstanceUuid"], u.as_str());
    let after = usage(&srv, &t).await;
    assert_eq!(after.1, before.1 - 64 * MB, "the copy's capacity is reserved");
    assert_eq!(after.0[0], (before.0[0].0 - 1, before.0[0].1 - GB));

    // the snapshot stays usable: still Ready, and a second VM from it (CreateStopped, a data
    // volume's snapshot: the root copy is 2 GiB)
    let snaps = srv.query(&format!("/volume-snapshots/{snap}")).await;
    assert_eq!(snaps[0]["status"], "Ready");
    assert_eq!(snaps[0]["volumeUuid"], root.as_str());
    let vm2 = srv
        .ok(
            "POST",
            &format!("/vm-instances/from/volume-snapshots/{snap}"),
            Some(json!({"params": {"name": "vm2", "cpuNum": 2, "memorySize": GB, "l3NetworkUuids": [l3],
                "strategy": "CreateStopped", "primaryStorageUuid": t.ps, "platform": "Other"}})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm2["state"], "Stopped");
    assert_eq!(vm2["platform"], "Other");
    assert_eq!(vm2["cpuNum"], 2);
    assert!(vm2.get("hostUuid").is_none());
    assert_eq!(vm2["lastHostUuid"], t.hosts[0].as_str());
    let dsnap = s(&srv
        .ok("POST", &format!("/volumes/{data}/volume-snapshots"), Some(json!({"params": {"name": "d1"}})))
        .await["inventory"]["uuid"]);
    let ps_before = usage(&srv, &t).await.1;
    let vm3 = srv
        .ok(
            "POST",
            &format!("/vm-instances/from/volume-snapshots/{dsnap}"),
            Some(json!({"params": {"name": "vm3", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3]}})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm3["allVolumes"][0]["size"], 2 * GB);
    assert_eq!(vm3["platform"], "Linux", "from the snapshotted volume's VM");
    assert_eq!(usage(&srv, &t).await.1, ps_before - 2 * GB);

    // refusals leave nothing behind
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let path = format!("/vm-instances/from/volume-snapshots/{snap}");
    let cases: Vec<(String, Value, &str, String)> = vec![
        (
            path.clone(),
            json!({"params": {"name": "x", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3],
            "strategy": "JustCreate"}}),
            "SYS.1007",
            "JustCreate".into(),
        ),
        (
            "/vm-instances/from/volume-snapshots/0123456789abcdef0123456789abcdef".into(),
            json!({"params": {"name": "x", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3]}}),
            "SYS.1003",
            "type:VolumeSnapshotVO] not found".into(),
        ),
        (
            path.clone(),
            json!({"params": {"name": "x", "l3NetworkUuids": [l3]}}),
            "SYS.1006",
            "Missing CPU/memory settings".into(),
        ),
        (
            path.clone(),
            json!({"params": {"instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3]}}),
            "SYS.1007",
            "name".into(),
        ),
        (
            path.clone(),
            json!({"params": {"name": "x", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3],
                "vmNicParams": "[{"}}),
            "SYS.1006",
            "invalid json format, causes:".into(),
        ),
    ];
    for (p, b, code, text) in cases {
        let e = srv.fails("POST", &p, Some(b)).await;
        assert_error(&e, code, &text);
    }
    // a failure inside the saga (no host has the memory) is undone: nothing left, snapshot untouched
    let e = srv
        .fails(
            "POST",
            &format!("/vm-instances/from/volume-snapshots/{dsnap}"),
            Some(json!({"params": {"name": "big", "cpuNum": 1, "memorySize": 200 * GB, "l3NetworkUuids": [l3]}})),
        )
        .await;
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000", "{e}");
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
    assert_eq!(srv.query(&format!("/volume-snapshots/{snap}")).await[0]["status"], "Ready");
}

#[tokio::test]
async fn devices_tpm_recorded_and_queryable() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let kp = "ff03c7091617357eb4022d11c6860e00";
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"devices": {"tpm": {"enable": true, "keyProviderUuid": kp, "resourceKeyCreatedNew": false}}}),
            )),
        )
        .await["inventory"]
        .clone();
    let u = s(&vm["uuid"]);
    let r = srv.get(&format!("/tpms?q=vmInstanceUuid={u}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let tpms = r.body["inventories"].as_array().unwrap().clone();
    assert_eq!(tpms.len(), 1, "{}", r.text);
    assert_eq!(tpms[0]["name"], format!("TPM-for-VM-{u}"));
    assert_eq!(tpms[0]["vmInstanceUuid"], u.as_str());
    assert_eq!(tpms[0]["keyProviderUuid"], kp);
    assert_eq!(s(&tpms[0]["uuid"]).len(), 32);
    assert!(s(&tpms[0]["createDate"]).ends_with('M'));
    assert_eq!(srv.query(&format!("/tpms/{}", s(&tpms[0]["uuid"]))).await.len(), 1);
    // enable: false, or no devices: no TPM; JustCreate records it with the VM
    srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "off", "devices": {"tpm": {"enable": false}}}))))
        .await;
    srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "none"})))).await;
    let jc = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "jc", "strategy": "JustCreate", "devices": {"tpm": {}}}))),
        )
        .await;
    assert_eq!(srv.query("/tpms").await.len(), 2);
    assert_eq!(
        srv.query(&format!("/tpms?q=vmInstanceUuid={}", s(&jc["inventory"]["uuid"]))).await[0]["keyProviderUuid"],
        Value::Null
    );
    // unknown device or TPM fields are refused, nothing created
    let before = (usage(&srv, &t).await, rows(&srv).await, srv.query("/tpms").await.len());
    for d in [json!({"gpu": {}}), json!({"tpm": {"tpmUuid": "0123456789abcdef0123456789abcdef"}})] {
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"name": "bad", "devices": d})))).await;
        assert_error(&e, "SYS.1007", "unknown field");
    }
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, srv.query("/tpms").await.len()), before);
    // expunging the VM removes its TPM
    srv.ok("DELETE", &format!("/vm-instances/{u}"), None).await;
    assert_eq!(srv.query("/tpms").await.len(), 2, "a destroyed VM keeps its TPM");
    srv.ok("PUT", &format!("/vm-instances/{u}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(srv.query(&format!("/tpms?q=vmInstanceUuid={u}")).await.is_empty());
    // destroying a Created VM removes it at once, with its TPM
    let jcu = s(&jc["inventory"]["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{jcu}"), None).await;
    assert!(srv.query(&format!("/tpms?q=vmInstanceUuid={jcu}")).await.is_empty());
    assert_eq!(srv.query("/tpms").await.len(), 0);
}

#[tokio::test]
async fn vm_nic_params_per_nic_ip_mac_driver_state() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let a = network(&srv, &t, "a", 10, 20).await;
    let b = network(&srv, &t, "b", 30, 40).await;
    let params = json!([
        {"l3NetworkUuid": a, "ip": "192.168.10.15", "netmask": "255.255.255.0", "gateway": "192.168.10.1",
         "mac": "FA:16:3E:00:00:02", "driverType": "e1000", "state": "disable", "metaData": "m1"},
        {"l3NetworkUuid": b, "driverType": "rtl8139"}
    ])
    .to_string();
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"l3NetworkUuids": [a, b], "defaultL3NetworkUuid": a, "vmNicParams": params}))),
        )
        .await["inventory"]
        .clone();
    let nics = vm["vmNics"].as_array().unwrap();
    let na = nics.iter().find(|n| n["l3NetworkUuid"] == a.as_str()).unwrap();
    let nb = nics.iter().find(|n| n["l3NetworkUuid"] == b.as_str()).unwrap();
    assert_eq!(na["ip"], "192.168.10.15");
    assert_eq!(na["mac"], "fa:16:3e:00:00:02");
    assert_eq!(na["driverType"], "e1000");
    assert_eq!(na["state"], "disable");
    assert_eq!(na["metaData"], "m1");
    assert_eq!(na["deviceId"], 0);
    assert_eq!(nb["driverType"], "rtl8139");
    assert_eq!(nb["state"], "enable");
    assert!(s(&nb["mac"]).starts_with("fa:") && s(&nb["mac"]).ends_with(":01"), "{nb}");
    let ipb = s(&nb["ip"]);
    let last: u8 = ipb.rsplit('.').next().unwrap().parse().unwrap();
    assert!((30..=40).contains(&last), "{ipb}");

    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let two = json!([a, b]);
    let p = |v: Value| v.to_string();
    let cases: Vec<(Value, &str, String)> = vec![
        (
            json!({"vmNicParams": p(json!([{"l3NetworkUuid": a}]))}),
            "SYS.1007",
            "l3NetworkUuids and vmNicInventories mustn't both be empty or both be set".into(),
        ),
        (json!({"l3NetworkUuids": [a], "vmNicParams": "[{"}), "SYS.1006", "invalid json format, causes:".into()),
        (
            json!({"l3NetworkUuids": two, "defaultL3NetworkUuid": a, "vmNicParams": p(json!([{"l3NetworkUuid": a}, {"l3NetworkUuid": a}]))}),
            "SYS.1007",
            "duplicate nic params".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"ip": "192.168.10.16"}]))}),
            "SYS.1007",
            "l3NetworkUuid of vm nic can not be null".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": b}]))}),
            "SYS.1007",
            format!("l3NetworkUuid of vm nic is not in l3[{a}]"),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "outboundBandwidth": 1}]))}),
            "SYS.1007",
            "outbound bandwidth[1] of vm nic is out of [8192, 32212254720]".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "multiQueueNum": 300}]))}),
            "SYS.1007",
            "multi queue num[300] of vm nic is out of [1,256]".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "state": "on"}]))}),
            "SYS.1007",
            format!("vm nic of l3[uuid:{a}] state[on] is not enable or disable"),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "driverType": "ne2k"}]))}),
            "SYS.1007",
            "vm nic driver ne2k not support yet".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "inboundBandwidth": 10000}]))}),
            "SYS.1007",
            "vmNicParams field[inboundBandwidth] is not supported by this management node yet".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "ip": "192.168.10.15"}]))}),
            "SYS.1007",
            format!("IP[192.168.10.15] is not available on the L3 network[uuid:{a}] because: it is used"),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "ip": "192.168.10.16", "netmask": "255.255.0.0"}]))}),
            "SYS.1006",
            "netmask error, expect: 255.255.255.0, got: 255.255.0.0".into(),
        ),
        (
            json!({"l3NetworkUuids": [a], "vmNicParams": p(json!([{"l3NetworkUuid": a, "mac": "fa:16:3e:00:00:02"}]))}),
            "SYS.1007",
            "Duplicate mac address [fa:16:3e:00:00:02]".into(),
        ),
    ];
    for (extra, code, text) in cases {
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, extra.clone()))).await;
        assert_error(&e, code, &text);
    }
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
}

#[tokio::test]
async fn data_volume_templates_and_tags_on_index() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let bs = s(&srv.query("/backup-storage").await[0]["uuid"]);
    let qcow = t._dir.path().join("d.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "128M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let tpl = s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "dtpl", "url": format!("file://{}", qcow.display()), "format": "qcow2",
                "mediaType": "DataVolumeTemplate", "backupStorageUuids": [bs]}})),
        )
        .await["inventory"]["uuid"]);
    let off = s(&srv.ok("POST", "/disk-offerings", Some(json!({"params": {"name": "d5", "diskSize": 5 * GB}}))).await
        ["inventory"]["uuid"]);
    let before = usage(&srv, &t).await;
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"dataDiskSizes": [GB], "dataDiskOfferingUuids": [off], "dataVolumeTemplateUuids": [tpl],
                    "dataVolumeSystemTags": ["volumeProvisioningStrategy::ThinProvisioning"],
                    "dataVolumeSystemTagsOnIndex": {"1": ["volumeProvisioningStrategy::ThickProvisioning"]}}),
            )),
        )
        .await["inventory"]
        .clone();
    let mut data: Vec<Value> =
        vm["allVolumes"].as_array().unwrap().iter().filter(|v| v["type"] == "Data").cloned().collect();
    data.sort_by_key(|v| v["deviceId"].as_i64());
    assert_eq!(data.len(), 3);
    // upstream order: disk offerings, then sizes, then templates
    assert_eq!(data[0]["diskOfferingUuid"], off.as_str());
    assert_eq!(data[0]["size"], 5 * GB);
    assert_eq!(data[1]["size"], GB);
    assert!(data[1].get("diskOfferingUuid").is_none());
    assert_eq!(data[2]["size"], 128 * MB, "sized as the template image");
    assert_eq!(data[2]["rootImageUuid"], tpl.as_str());
    assert_eq!(data[2]["deviceId"], 3);
    assert_eq!(usage(&srv, &t).await.1, before.1 - 64 * MB - 5 * GB - GB - 128 * MB);
    let tags_of = |r: String| {
        let srv = &srv;
        async move {
            srv.query(&format!("/system-tags?q=resourceUuid={r}"))
                .await
                .iter()
                .map(|x| s(&x["tag"]))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(tags_of(s(&data[0]["uuid"])).await, vec!["volumeProvisioningStrategy::ThinProvisioning"]);
    assert_eq!(
        tags_of(s(&data[1]["uuid"])).await,
        vec!["volumeProvisioningStrategy::ThickProvisioning"],
        "index 1 wins"
    );
    assert_eq!(tags_of(s(&data[2]["uuid"])).await, vec!["volumeProvisioningStrategy::ThinProvisioning"]);

    let before = (usage(&srv, &t).await, rows(&srv).await);
    let cases: Vec<(Value, &str, String)> = vec![
        (
            json!({"dataVolumeTemplateUuids": [t.image]}),
            "SYS.1007",
            format!("image[uuid:{}] is of mediaType: RootVolumeTemplate, only DataVolumeTemplate can be used", t.image),
        ),
        (
            json!({"dataVolumeTemplateUuids": ["0123456789abcdef0123456789abcdef"]}),
            "SYS.1003",
            "type:ImageVO] not found".into(),
        ),
        (
            json!({"dataDiskSizes": [GB], "dataVolumeSystemTagsOnIndex": {"0": ["capability::virtio-scsi"]}}),
            "SYS.1007",
            "volume system tag[capability::virtio-scsi] is not supported".into(),
        ),
    ];
    for (extra, code, text) in cases {
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, extra.clone()))).await;
        assert_error(&e, code, &text);
    }
    srv.ok("PUT", &format!("/images/{tpl}/actions"), Some(json!({"changeImageState": {"stateEvent": "disable"}})))
        .await;
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"dataVolumeTemplateUuids": [tpl]})))).await;
    assert_error(&e, "SYS.1006", &format!("image[uuid:{tpl}] is Disabled, can't create vm from it"));
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
}

#[tokio::test]
async fn disk_aos_boot_from_volume_and_other_disks() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 30).await;
    let vol = |name: &'static str| {
        let srv = &srv;
        let ps = t.ps.clone();
        async move {
            s(&srv
                .ok(
                    "POST",
                    "/volumes/data",
                    Some(json!({"params": {"name": name, "diskSize": 2 * GB, "primaryStorageUuid": ps}})),
                )
                .await["inventory"]["uuid"])
        }
    };
    let boot_vol = vol("boot").await;
    let kp = "ff03c7091617357eb4022d11c6860e00";
    // the spec's first request body, uuids replaced: it names no CPU/memory (upstream's first
    // check), and its second disk sets none of size / templateUuid / diskOfferingUuid / sourceUuid
    let mut body = json!({"params": {"name": "vm1", "l3NetworkUuids": [l3], "clusterUuid": t.cluster,
        "description": "this is a vm", "strategy": "InstantStart",
        "diskAOs": [
            {"boot": true, "platform": "Linux", "guestOsType": "Helix 8", "architecture": "x86_64",
             "primaryStorageUuid": t.ps, "size": 0, "sourceType": "VolumeVO", "sourceUuid": boot_vol,
             "systemTags": ["volumeProvisioningStrategy::ThickProvisioning"], "name": "root-volume"},
            {"boot": false, "primaryStorageUuid": t.ps, "size": 0, "name": "data-volume"}],
        "devices": {"tpm": {"enable": true, "keyProviderUuid": kp, "resourceKeyCreatedNew": false}}},
        "systemTags": [], "userTags": []});
    let before = (usage(&srv, &t).await, rows(&srv).await);
    let e = srv.fails("POST", "/vm-instances", Some(body.clone())).await;
    assert_error(&e, "SYS.1006", "Missing CPU/memory settings");
    body["params"]["cpuNum"] = json!(1);
    body["params"]["memorySize"] = json!(GB);
    let e = srv.fails("POST", "/vm-instances", Some(body.clone())).await;
    assert_error(
        &e,
        "SYS.1006",
        "Need to set one of the following properties, and can only be one of them: templateUuid, diskOfferingUuid, size, sourceUuid",
    );
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
    body["params"]["diskAOs"][1]["size"] = json!(GB);
    let vm = srv.ok("POST", "/vm-instances", Some(body.clone())).await["inventory"].clone();
    let u = s(&vm["uuid"]);
    assert_eq!(vm["state"], "Running");
    assert_eq!(vm["platform"], "Linux");
    assert_eq!(vm["guestOsType"], "Helix 8");
    assert_eq!(vm["architecture"], "x86_64");
    assert!(vm.get("imageUuid").is_none());
    assert_eq!(vm["rootVolumeUuid"], boot_vol.as_str(), "the boot disk is the existing volume");
    let vols = vm["allVolumes"].as_array().unwrap();
    assert_eq!(vols.len(), 2);
    let root = vols.iter().find(|v| v["uuid"] == boot_vol.as_str()).unwrap();
    assert_eq!(root["type"], "Root");
    assert_eq!(root["deviceId"], 0);
    assert_eq!(root["size"], 2 * GB);
    assert_eq!(root["name"], "boot");
    let data = vols.iter().find(|v| v["type"] == "Data").unwrap();
    assert_eq!(data["name"], "data-volume");
    assert_eq!(data["size"], GB);
    assert_eq!(data["deviceId"], 1);
    assert_eq!(data["primaryStorageUuid"], t.ps.as_str());
    // only the new disk took capacity (the boot volume had its own)
    let after = usage(&srv, &t).await;
    assert_eq!(after.1, before.0 .1 - GB);
    assert_eq!(srv.query(&format!("/tpms?q=vmInstanceUuid={u}")).await[0]["keyProviderUuid"], kp);
    // no driver::virtio on the boot disk: virtio false (no tag); the Linux platform keeps virtio NICs
    let tags: Vec<String> =
        srv.query(&format!("/system-tags?q=resourceUuid={u}")).await.iter().map(|x| s(&x["tag"])).collect();
    assert!(tags.is_empty(), "{tags:?}");

    // non-boot disks from an offering, a template-less size, an existing volume; boot from the image
    let off = s(&srv.ok("POST", "/disk-offerings", Some(json!({"params": {"name": "d3", "diskSize": 3 * GB}}))).await
        ["inventory"]["uuid"]);
    let extra = vol("extra").await;
    let vm2 = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"name": "vm2", "diskAOs": [
                    {"boot": true, "platform": "Windows", "guestOsType": "Windows 10", "architecture": "x86_64",
                     "systemTags": ["driver::virtio"]},
                    {"diskOfferingUuid": off, "systemTags": ["volumeProvisioningStrategy::ThinProvisioning"]},
                    {"sourceType": "VolumeVO", "sourceUuid": extra}]}),
            )),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm2["platform"], "Windows");
    assert_eq!(vm2["imageUuid"], t.image.as_str());
    let mut d: Vec<Value> =
        vm2["allVolumes"].as_array().unwrap().iter().filter(|v| v["type"] == "Data").cloned().collect();
    d.sort_by_key(|v| v["deviceId"].as_i64());
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["diskOfferingUuid"], off.as_str());
    assert_eq!(d[0]["size"], 3 * GB);
    assert_eq!(d[1]["uuid"], extra.as_str());
    assert_eq!(d[1]["vmInstanceUuid"], vm2["uuid"]);
    let u2 = s(&vm2["uuid"]);
    let tags: Vec<String> =
        srv.query(&format!("/system-tags?q=resourceUuid={u2}")).await.iter().map(|x| s(&x["tag"])).collect();
    assert_eq!(tags, vec!["driver::virtio"]);

    // refusals, nothing changed
    let free = vol("free").await;
    let before = (usage(&srv, &t).await, rows(&srv).await);
    let cases: Vec<(Value, &str, String)> = vec![
        (
            json!({"diskAOs": [{"boot": true}, {"size": GB, "diskOfferingUuid": off}]}),
            "SYS.1006",
            "Cannot set the following properties at the same time: diskOfferingUuid, size, ".into(),
        ),
        (
            json!({"diskAOs": [{"boot": true, "sourceType": "VolumeVO", "sourceUuid": extra}]}),
            "SYS.1006",
            "could not create vm instance from a attached volume.".into(),
        ),
        (
            json!({"diskAOs": [{"boot": true, "sourceType": "VolumeSnapshotVO", "sourceUuid": free}]}),
            "SYS.1007",
            "diskAOs sourceType[VolumeSnapshotVO] is not supported".into(),
        ),
        (json!({"diskAOs": [{"boot": true, "bus": "scsi"}]}), "SYS.1007", "unknown field".into()),
        (
            json!({"diskAOs": [{"boot": true, "systemTags": ["capability::virtio-scsi"]}]}),
            "SYS.1007",
            "diskAOs system tag[capability::virtio-scsi] is not supported".into(),
        ),
        (
            json!({"diskAOs": [{"boot": true}, {"sourceUuid": free}, {"sourceUuid": free}]}),
            "SYS.1007",
            format!("duplicated diskAOs.sourceUuid: {free}"),
        ),
    ];
    for (extra, code, text) in cases {
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, extra.clone()))).await;
        assert_error(&e, code, &text);
    }
    assert_eq!((usage(&srv, &t).await, rows(&srv).await), before);
    assert!(srv.query(&format!("/volumes/{free}")).await[0].get("vmInstanceUuid").is_none());
}

/// A saga failure after the volumes step gives adopted volumes back, detached and as they were.
#[tokio::test]
async fn disk_aos_source_volumes_are_given_back_on_failure() {
    let srv = Server::start_with_env(vec![("RZSTACK_TEST_FAIL_STEP".into(), "create-cdrom".into())]).await;
    let t = topology(&srv, 1).await;
    let mk = |name: &'static str| {
        let srv = &srv;
        let ps = t.ps.clone();
        async move {
            s(&srv
                .ok(
                    "POST",
                    "/volumes/data",
                    Some(json!({"params": {"name": name, "diskSize": GB, "primaryStorageUuid": ps}})),
                )
                .await["inventory"]["uuid"])
        }
    };
    let b = mk("b").await;
    let d = mk("d").await;
    let before = (usage(&srv, &t).await, srv.query("/volumes").await);
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"imageUuid": null, "instanceOfferingUuid": t.offering, "diskAOs": [
                    {"boot": true, "platform": "Linux", "guestOsType": "x", "architecture": "x86_64", "sourceUuid": b, "sourceType": "VolumeVO"},
                    {"sourceUuid": d, "sourceType": "VolumeVO"}, {"size": GB}]}),
            )),
        )
        .await;
    assert_error(&e, "SYS.1006", "test fault injected at saga step[create-cdrom]");
    let after = (usage(&srv, &t).await, srv.query("/volumes").await);
    assert_eq!(after.0, before.0);
    let strip = |v: &Vec<Value>| {
        v.iter()
            .map(|x| {
                (x["uuid"].clone(), x["type"].clone(), x.get("vmInstanceUuid").cloned(), x.get("deviceId").cloned())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&after.1), strip(&before.1));
    assert!(srv.query("/vm-instances").await.is_empty());
}

/// Retrying CreateVmInstance with the VM's resourceUuid: the same request (keys in any order)
/// answers with the VM as it is now, taking nothing more; another request is refused.
#[tokio::test]
async fn resource_uuid_retry_returns_the_vm_or_is_refused() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "net", 10, 19).await;
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let body = create(&t, json!({"l3NetworkUuids": [l3], "resourceUuid": uuid, "description": "d"}));
    let first = srv.ok("POST", "/vm-instances", Some(body.clone())).await["inventory"].clone();
    assert_eq!(first["uuid"], uuid.as_str());
    let ip = s(&first["vmNics"][0]["ip"]);
    let snap = || async { (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await) };
    let before = snap().await;
    assert_eq!(before.1, (1, 1, 1));

    // the same parameters, keys in another order: the same VM, nothing more taken
    let mut p: Vec<(String, Value)> = body["params"].as_object().unwrap().clone().into_iter().collect();
    p.reverse();
    let reordered = json!({"params": p.into_iter().collect::<serde_json::Map<String, Value>>()});
    let again = srv.ok("POST", "/vm-instances", Some(reordered)).await["inventory"].clone();
    assert_eq!(again["uuid"], uuid.as_str());
    assert_eq!(s(&again["vmNics"][0]["ip"]), ip);
    assert_eq!(again["state"], "Running");
    assert_eq!(snap().await, before);

    // different parameters with the same resourceUuid: refused, nothing changed
    for extra in [
        json!({"l3NetworkUuids": [l3], "resourceUuid": uuid, "description": "other"}),
        json!({"l3NetworkUuids": [l3], "resourceUuid": uuid, "description": "d", "strategy": "CreateStopped"}),
        json!({"l3NetworkUuids": [l3], "resourceUuid": uuid}),
    ] {
        let err = srv.fails("POST", "/vm-instances", Some(create(&t, extra))).await;
        assert_error(&err, "SYS.1007", &format!("resourceUuid[{uuid}] is already used by vm instance[uuid:{uuid}]"));
        assert_error(&err, "SYS.1007", "created with different parameters");
        assert_eq!(snap().await, before);
    }
    let vm = &srv.query(&format!("/vm-instances/{uuid}")).await[0];
    assert_eq!((vm["description"].clone(), vm["state"].clone()), (json!("d"), json!("Running")));

    // a retry answers with the VM's current inventory
    srv.ok("PUT", &format!("/vm-instances/{uuid}/actions"), Some(json!({"stopVmInstance": {}}))).await;
    let stopped = srv.ok("POST", "/vm-instances", Some(body.clone())).await["inventory"].clone();
    assert_eq!((stopped["uuid"].clone(), stopped["state"].clone()), (json!(uuid), json!("Stopped")));
    assert_eq!(srv.query("/vm-instances").await.len(), 1);

    // another resourceUuid with the same parameters is a second VM
    let other = uuid::Uuid::new_v4().simple().to_string();
    let second =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3], "resourceUuid": other})))).await;
    assert_eq!(second["inventory"]["uuid"], other.as_str());
    assert_eq!(rows(&srv).await, (2, 2, 2));
}

/// Submit an async API call (expect 202) and return its job location.
async fn submit(srv: &Server, path: &str, body: Value) -> String {
    let r = srv.request("POST", path, Some(body), Some(&srv.session), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    s(&r.body["location"])
}

/// Poll a job location gently until it ends (or the deadline passes).
async fn poll_until(srv: &Server, loc: &str, deadline: std::time::Instant) -> common::Resp {
    loop {
        let r = srv.request("GET", loc, None, None, &[]).await;
        if r.status != 202 {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "job {loc} did not end in time");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Capacity taken, as the inventories say: (host CPU, host memory, PS) used.
async fn taken(srv: &Server, t: &Topo) -> (i64, i64, i64) {
    let (mut cpu, mut mem) = (0, 0);
    for u in &t.hosts {
        let h = &srv.query(&format!("/hosts/{u}")).await[0];
        cpu += h["totalCpuCapacity"].as_i64().unwrap() - h["availableCpuCapacity"].as_i64().unwrap();
        mem += h["totalMemoryCapacity"].as_i64().unwrap() - h["availableMemoryCapacity"].as_i64().unwrap();
    }
    let ps = &srv.query(&format!("/primary-storage/{}", t.ps)).await[0];
    (cpu, mem, ps["totalCapacity"].as_i64().unwrap() - ps["availableCapacity"].as_i64().unwrap())
}

#[tokio::test]
async fn two_hundred_concurrent_creates_on_ten_free_ips() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "ten", 10, 19).await; // exactly 10 addresses
    assert_eq!(taken(&srv, &t).await, (0, 0, 0));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let srv = srv.clone();
        // 64 MiB, 1 CPU: host capacity is ample for all 200, only IPs run out
        let body = create(
            &t,
            json!({"name": format!("v{i}"), "instanceOfferingUuid": null, "cpuNum": 1, "memorySize": 64 * MB,
                "l3NetworkUuids": [l3]}),
        );
        tasks.push(tokio::spawn(async move {
            let loc = submit(&srv, "/vm-instances", body).await;
            poll_until(&srv, &loc, std::time::Instant::now() + std::time::Duration::from_secs(90)).await
        }));
    }
    let mut ok = std::collections::HashSet::new();
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == 200 {
            ok.insert(s(&r.body["inventory"]["uuid"]));
        } else {
            assert_eq!(r.status, 503, "{}", r.text);
            assert_eq!(r.body["error"]["code"], "SYS.1006", "{}", r.text);
            assert_error(&r.body["error"]["cause"], "L3.1000", "no ip is available in this l3Network[name:ten");
        }
    }
    assert_eq!(ok.len(), 10);
    let vms: std::collections::HashSet<String> =
        srv.query("/vm-instances").await.iter().map(|v| s(&v["uuid"])).collect();
    assert_eq!(vms, ok);
    let nics = srv.query("/vm-instances/nics").await;
    let ips: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["ip"])).collect();
    let macs: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["mac"])).collect();
    assert_eq!((nics.len(), ips.len(), macs.len()), (10, 10, 10));
    assert_eq!(used_ips(&srv).await, 10);
    let cap = srv.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
    assert_eq!(cap.body["usedIpAddressNumber"], 10, "{}", cap.text);
    assert_eq!(cap.body["availableCapacity"], 0, "{}", cap.text);
    assert_eq!(taken(&srv, &t).await, (10, 10 * 64 * MB, 10 * 64 * MB));
    assert_eq!(rows(&srv).await, (10, 10, 10));
}

#[tokio::test]
async fn kill9_during_fifty_concurrent_creates_leaks_nothing() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "big", 10, 90).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let srv = srv.clone();
        let body = create(
            &t,
            json!({"name": format!("k{i}"), "instanceOfferingUuid": null, "cpuNum": 1, "memorySize": 64 * MB,
                "l3NetworkUuids": [l3]}),
        );
        tasks.push(tokio::spawn(async move { submit(&srv, "/vm-instances", body).await }));
    }
    let mut locs = Vec::new();
    for task in tasks {
        // the restarted server listens on another port: keep the job path only
        let loc = task.await.unwrap();
        locs.push(format!("/api-jobs/{}", loc.rsplit('/').next().unwrap()));
    }
    // kill while the creations are under way: some VMs exist, not all jobs ended
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while srv.query("/vm-instances").await.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut srv = std::sync::Arc::try_unwrap(srv).unwrap_or_else(|_| panic!("server still shared"));
    srv.kill9();
    srv.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut ok = std::collections::HashSet::new();
    for loc in &locs {
        let r = poll_until(&srv, loc, deadline).await;
        match r.status {
            200 => {
                ok.insert(s(&r.body["inventory"]["uuid"]));
            }
            503 => {}
            other => panic!("job {loc} ended with {other}: {}", r.text),
        }
    }
    let vms = srv.query("/vm-instances").await;
    let uuids: std::collections::HashSet<String> = vms.iter().map(|v| s(&v["uuid"])).collect();
    assert_eq!(uuids, ok, "the VMs are exactly those of the jobs that succeeded");
    for v in &vms {
        assert_eq!(v["state"], "Running", "no VM is left in a transient state: {v}");
    }
    let nics = srv.query("/vm-instances/nics").await;
    let ips: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["ip"])).collect();
    let macs: std::collections::HashSet<String> = nics.iter().map(|n| s(&n["mac"])).collect();
    assert_eq!((nics.len(), ips.len(), macs.len()), (vms.len(), vms.len(), vms.len()));
    assert_eq!(used_ips(&srv).await, nics.len());
    let cap = srv.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
    assert_eq!(cap.body["usedIpAddressNumber"].as_u64(), Some(nics.len() as u64), "{}", cap.text);
    let volumes = srv.query("/volumes").await;
    assert_eq!(volumes.len(), vms.len());
    let volume_bytes: i64 = volumes.iter().map(|v| v["size"].as_i64().unwrap()).sum();
    let running = vms.len() as i64;
    assert_eq!(taken(&srv, &t).await, (running, running * 64 * MB, volume_bytes));
}

/// The same request sent concurrently with one resourceUuid: one VM, every job answers with it.
#[tokio::test]
async fn concurrent_retries_with_one_resource_uuid_make_one_vm() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "net", 10, 19).await;
    let uuid = uuid::Uuid::new_v4().simple().to_string();
    let body = create(&t, json!({"l3NetworkUuids": [l3], "resourceUuid": uuid}));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (srv, body) = (srv.clone(), body.clone());
        tasks.push(tokio::spawn(async move { srv.ok("POST", "/vm-instances", Some(body)).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap()["inventory"]["uuid"], uuid.as_str());
    }
    assert_eq!(rows(&srv).await, (1, 1, 1));
    assert_eq!(used_ips(&srv).await, 1);
    assert_eq!(taken(&srv, &t).await, (1, GB, 64 * MB));
}
