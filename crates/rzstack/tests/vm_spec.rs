//! CreateVmInstance / CreateVmInstanceFromVolumeSnapshot against their API page: the
//! parameters and system tags the page documents that other test files do not cover, each
//! through the HTTP API, with the upstream codes and texts and proof that a refusal leaves
//! nothing behind.
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};

/// A create body with VM system tags.
fn tagged(t: &Topo, extra: Value, tags: Value) -> Value {
    let mut b = create(t, extra);
    b["systemTags"] = tags;
    b
}

async fn vm_tags(srv: &Server, vm: &str) -> Vec<String> {
    let mut v: Vec<String> =
        srv.query(&format!("/system-tags?q=resourceUuid={vm}")).await.iter().map(|x| s(&x["tag"])).collect();
    v.sort();
    v
}

/// defaultL3NetworkUuid (upstream VmInstanceApiInterceptor): the only L3 becomes the default
/// when none is named, but a named default that is not in l3NetworkUuids is refused even
/// when the list has one L3 (it was silently replaced by that L3).
#[tokio::test]
async fn default_l3_network_must_be_one_of_the_l3_networks() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let a = network(&srv, &t, "a", 10, 20).await;
    let b = network(&srv, &t, "b", 30, 40).await;
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let e = srv
        .fails("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [a], "defaultL3NetworkUuid": b}))))
        .await;
    assert_error(&e, "SYS.1007", &format!("defaultL3NetworkUuid[uuid:{b}] is not in l3NetworkUuids[{a}]"));
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");

    // no default named: the only L3 is the default
    let vm =
        srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [a]})))).await["inventory"].clone();
    assert_eq!(vm["defaultL3NetworkUuid"], a.as_str());
    // a default named among two
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "two", "l3NetworkUuids": [a, b], "defaultL3NetworkUuid": b}))),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm["defaultL3NetworkUuid"], b.as_str());
    assert_eq!(vm["vmNics"].as_array().unwrap().len(), 2);
}

/// The VM system tags of upstream `VmSystemTags` a create commonly carries: `hostname::`
/// (checked as upstream: a valid domain name, at most one), `sshkey::`, `rootPassword::`
/// kept on the VM for the guest; `createWithoutCdRom::true` makes a VM without the empty CD-ROM.
#[tokio::test]
async fn hostname_sshkey_root_password_and_create_without_cdrom_tags() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let refused: Vec<(Value, &str)> = vec![
        (
            json!(["hostname::web_1"]),
            "hostname[web_1] specified in system tag[hostname::web_1] is not a valid domain name",
        ),
        (
            json!(["hostname::-web"]),
            "hostname[-web] specified in system tag[hostname::-web] is not a valid domain name",
        ),
        (
            json!(["hostname::web.example.c0m"]),
            "hostname[web.example.c0m] specified in system tag[hostname::web.example.c0m] is not a valid domain name",
        ),
        (json!(["hostname::a", "hostname::b"]), "only one hostname system tag is allowed, but 2 got"),
        (json!(["consolePasswd::x"]), "no system tag matches consolePasswd::x"),
    ];
    for (tags, text) in refused {
        let e = srv.fails("POST", "/vm-instances", Some(tagged(&t, json!({"l3NetworkUuids": [l3]}), tags))).await;
        assert_error(&e, "SYS.1007", text);
    }
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");

    let key = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host";
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(
                &t,
                json!({"l3NetworkUuids": [l3]}),
                json!(["hostname::web-1", format!("sshkey::{key}"), "rootPassword::pass123"]),
            )),
        )
        .await["inventory"]
        .clone();
    let u = s(&vm["uuid"]);
    assert_eq!(vm["state"], "Running");
    assert_eq!(vm["vmCdRoms"].as_array().unwrap().len(), 1, "the default empty CD-ROM");
    assert_eq!(
        vm_tags(&srv, &u).await,
        vec![
            "driver::virtio".to_string(),
            "hostname::web-1".into(),
            "rootPassword::pass123".into(),
            format!("sshkey::{key}")
        ]
    );
    // a fully qualified name
    let vm2 = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(tagged(&t, json!({"name": "fq", "l3NetworkUuids": [l3]}), json!(["hostname::db01.example.com"]))),
        )
        .await["inventory"]
        .clone();
    assert!(vm_tags(&srv, &s(&vm2["uuid"])).await.contains(&"hostname::db01.example.com".to_string()));

    // createWithoutCdRom::true: no CD-ROM, now and after a JustCreate VM is started
    for strategy in ["InstantStart", "JustCreate"] {
        let vm = srv
            .ok(
                "POST",
                "/vm-instances",
                Some(tagged(&t, json!({"name": strategy, "strategy": strategy}), json!(["createWithoutCdRom::true"]))),
            )
            .await["inventory"]
            .clone();
        let u = s(&vm["uuid"]);
        if strategy == "JustCreate" {
            let r = srv.ok("PUT", &format!("/vm-instances/{u}/actions"), Some(json!({"startVmInstance": {}}))).await;
            assert_eq!(r["inventory"]["state"], "Running");
        }
        let q = &srv.query(&format!("/vm-instances/{u}")).await[0];
        assert_eq!(q["vmCdRoms"], json!([]), "{strategy}: {q}");
        assert_eq!(q["allVolumes"].as_array().unwrap().len(), 1);
        assert!(vm_tags(&srv, &u).await.contains(&"createWithoutCdRom::true".to_string()));
    }
    // createWithoutCdRom::false: the usual CD-ROM
    let vm = srv
        .ok("POST", "/vm-instances", Some(tagged(&t, json!({"name": "cd"}), json!(["createWithoutCdRom::false"]))))
        .await["inventory"]
        .clone();
    assert_eq!(vm["vmCdRoms"].as_array().unwrap().len(), 1);
}

/// Parameters of the page honoured as documented: primaryStorageUuidForRootVolume,
/// dataDiskOfferingUuids (repeatable) then dataDiskSizes, rootDiskOfferingUuid for an ISO
/// image, type ApplianceVm (no default L3 needed); and the interceptor's refusals for a
/// Disabled L3 network, a Disabled disk offering and an ISO without root disk settings.
#[tokio::test]
async fn root_storage_disk_offerings_iso_and_appliance_vm() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let a = network(&srv, &t, "a", 10, 20).await;
    let b = network(&srv, &t, "b", 30, 40).await;
    let ps2 = s(&srv
        .ok(
            "POST",
            "/primary-storage/simulators",
            Some(json!({"params": {"name": "ps2", "url": "/sim-ps2", "zoneUuid": t.zone,
                "totalCapacity": 100 * GB, "availableCapacity": 100 * GB}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/clusters/{}/primary-storage/{ps2}", t.cluster), None).await;
    let off = s(&srv.ok("POST", "/disk-offerings", Some(json!({"params": {"name": "d2", "diskSize": 2 * GB}}))).await
        ["inventory"]["uuid"]);

    // the root volume on the primary storage asked for (both are attached to the cluster)
    for ps in [&ps2, &t.ps] {
        let vm = srv
            .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "r", "primaryStorageUuidForRootVolume": ps}))))
            .await["inventory"]
            .clone();
        let root = vm["allVolumes"].as_array().unwrap().iter().find(|v| v["type"] == "Root").unwrap().clone();
        assert_eq!(root["primaryStorageUuid"], ps.as_str());
        assert_eq!(root["uuid"], vm["rootVolumeUuid"]);
    }

    // data volumes: the offerings (one repeated) then the sizes, device ids in that order
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "d", "dataDiskOfferingUuids": [off, off], "dataDiskSizes": [GB]}))),
        )
        .await["inventory"]
        .clone();
    let mut data: Vec<Value> =
        vm["allVolumes"].as_array().unwrap().iter().filter(|v| v["type"] == "Data").cloned().collect();
    data.sort_by_key(|v| v["deviceId"].as_i64());
    let got: Vec<(i64, i64, Option<String>)> = data
        .iter()
        .map(|v| {
            (
                v["deviceId"].as_i64().unwrap(),
                v["size"].as_i64().unwrap(),
                v["diskOfferingUuid"].as_str().map(String::from),
            )
        })
        .collect();
    assert_eq!(got, vec![(1, 2 * GB, Some(off.clone())), (2, 2 * GB, Some(off.clone())), (3, GB, None)]);

    // an ISO image: the root disk offering sizes the root volume, the ISO is in the CD-ROM
    let bs = s(&srv.query("/backup-storage").await[0]["uuid"]);
    let raw = t._dir.path().join("boot.iso");
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    let iso = s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "iso", "url": raw.display().to_string(), "mediaType": "ISO",
                "backupStorageUuids": [bs], "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"}})),
        )
        .await["inventory"]["uuid"]);
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "iso", "imageUuid": iso, "rootDiskOfferingUuid": off}))),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm["imageUuid"], iso.as_str());
    let root = vm["allVolumes"].as_array().unwrap().iter().find(|v| v["type"] == "Root").unwrap().clone();
    assert_eq!(root["size"], 2 * GB);
    assert_eq!(root["diskOfferingUuid"], off.as_str());
    assert_eq!(vm["vmCdRoms"][0]["isoUuid"], iso.as_str());

    // ApplianceVm: two L3 networks and no default are fine (the default rule is for UserVm)
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "appliance", "type": "ApplianceVm", "l3NetworkUuids": [a, b]}))),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm["type"], "ApplianceVm");
    assert!(vm.get("defaultL3NetworkUuid").is_none(), "{vm}");
    assert_eq!(vm["vmNics"].as_array().unwrap().len(), 2);

    // refusals, nothing changed by any
    srv.ok(
        "PUT",
        &format!("/l3-networks/{b}/actions"),
        Some(json!({"changeL3NetworkState": {"stateEvent": "disable"}})),
    )
    .await;
    let off_disabled = s(&srv
        .ok("POST", "/disk-offerings", Some(json!({"params": {"name": "x", "diskSize": GB}})))
        .await["inventory"]["uuid"]);
    srv.ok(
        "PUT",
        &format!("/disk-offerings/{off_disabled}/actions"),
        Some(json!({"changeDiskOfferingState": {"stateEvent": "disable"}})),
    )
    .await;
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let cases: Vec<(Value, &str, String)> = vec![
        (
            json!({"l3NetworkUuids": [a, b], "defaultL3NetworkUuid": a}),
            "SYS.1006",
            format!("l3Network[uuid:{b}] is Disabled, can not create vm on it"),
        ),
        (
            json!({"dataDiskOfferingUuids": [off, off_disabled]}),
            "SYS.1006",
            format!("disk offerings[uuids:[{off_disabled}]] are Disabled, can not create vm from it"),
        ),
        (json!({"imageUuid": iso}), "SYS.1007", "image mediaType is ISO but missing root disk settings".into()),
        (
            json!({"primaryStorageUuidForRootVolume": "0123456789ab4def8123456789abcdef"}),
            "SYS.1003",
            "invalid field[primaryStorageUuidForRootVolume], resource[uuid:0123456789ab4def8123456789abcdef, type:PrimaryStorageVO] not found".into(),
        ),
    ];
    for (extra, code, text) in cases {
        let e = srv.fails("POST", "/vm-instances", Some(create(&t, extra))).await;
        assert_error(&e, code, &text);
    }
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");
}

/// The DHCP lease on a real KVM host carries the guest's host name (upstream VmHostNameHelper):
/// the `hostname::` tag, else the default NIC's IPv4 address with dashes. Skips (like
/// kvm_vm.rs) when not root or QEMU / dnsmasq / the test image are unavailable.
#[tokio::test]
async fn kvm_dhcp_lease_carries_the_hostname() {
    use common::kvm::{uuid as u, walk, KvmCloud};
    let Some(c) = KvmCloud::setup("vm_spec", "h").await else { return };
    let lease = |mac: &str| -> Vec<String> {
        walk(&c.agent_dir.path().join("dhcp"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "hosts"))
            .flat_map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>())
            .filter(|l| l.to_ascii_lowercase().contains(&mac.to_ascii_lowercase()))
            .collect()
    };
    let body = |name: &str, tags: Value| {
        json!({"params": {"name": name, "instanceOfferingUuid": c.offering, "imageUuid": c.image,
            "l3NetworkUuids": [c.l3]}, "systemTags": tags})
    };
    let vm =
        c.s.ok("POST", "/vm-instances", Some(body("named", json!(["hostname::web-1"])))).await["inventory"].clone();
    let nic = &vm["vmNics"][0];
    let (mac, ip) = (s(&nic["mac"]), s(&nic["ip"]));
    assert_eq!(lease(&mac), vec![format!("{mac},{ip},web-1")]);
    let vm2 = c.s.ok("POST", "/vm-instances", Some(body("plain", json!([])))).await["inventory"].clone();
    let nic = &vm2["vmNics"][0];
    let (mac2, ip2) = (s(&nic["mac"]), s(&nic["ip"]));
    assert_eq!(lease(&mac2), vec![format!("{mac2},{ip2},{}", ip2.replace('.', "-"))]);
    for v in [&vm, &vm2] {
        let vu = u(v);
        c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
        c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    }
    assert!(lease(&mac).is_empty() && lease(&mac2).is_empty(), "the leases go with the VMs");
}

const RSA_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDDDxlV6Lr7GF4QXu0LcTdKwFXUTvftAaic3/jepCfkj3ioNc5rurGT2PwNxPvw1v36Ty4yoTiwcHOj7MAuYQD4aPVWXebQXDjJ+8u76vbr+kZ8XNQZmvoz/Kd7Y2ePH9/pfZgRYPwo3+e66STv5oaJtT3hGF1CgdQ16ahaDywGCw== r@h";

/// The guest's user data on a real KVM host (upstream UserdataBuilder): the key pairs of
/// `sshKeyPairUuids`, then the `sshkey::` tag, and `rootPassword::` in a `#cloud-config` part;
/// with a `userdata::` tag too, both parts in one MIME multipart document. Skips like kvm_vm.rs.
#[tokio::test]
async fn kvm_user_data_carries_ssh_keys_and_root_password() {
    use common::kvm::{uuid as u, walk, KvmCloud};
    let Some(c) = KvmCloud::setup("vm_spec", "u").await else { return };
    let key = s(&c.s.ok("POST", "/ssh-key-pair", Some(json!({"params": {"name": "k", "publicKey": RSA_KEY}}))).await
        ["inventory"]["uuid"]);
    let user_data = |vm: &str| -> String {
        let f = walk(c.agent_dir.path())
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == "userdata") && p.to_string_lossy().contains(vm))
            .unwrap_or_else(|| panic!("no userdata file for {vm}: {:?}", walk(c.agent_dir.path())));
        std::fs::read_to_string(f).expect("userdata")
    };
    let body = |name: &str, keys: Value, tags: Value| {
        json!({"params": {"name": name, "instanceOfferingUuid": c.offering, "imageUuid": c.image,
            "l3NetworkUuids": [c.l3], "sshKeyPairUuids": keys}, "systemTags": tags})
    };
    let config = format!(
        "#cloud-config\nssh_authorized_keys:\n  - {RSA_KEY}\n  - ssh-ed25519 AAAAC3Nz x@y\ndisable_root: false\n\
         chpasswd:\n  list: |\n    root:pass123\n  expire: False"
    );
    let vm =
        c.s.ok(
            "POST",
            "/vm-instances",
            Some(body("k", json!([key]), json!(["sshkey::ssh-ed25519 AAAAC3Nz x@y", "rootPassword::pass123"]))),
        )
        .await["inventory"]
            .clone();
    assert_eq!(user_data(&u(&vm)), config);
    // with userdata:: as well ("#!/bin/sh\necho hi" in base64)
    let vm2 =
        c.s.ok(
            "POST",
            "/vm-instances",
            Some(body(
                "u",
                json!([key]),
                json!([
                    "sshkey::ssh-ed25519 AAAAC3Nz x@y",
                    "rootPassword::pass123",
                    "userdata::IyEvYmluL3NoCmVjaG8gaGk="
                ]),
            )),
        )
        .await["inventory"]
            .clone();
    let both = user_data(&u(&vm2));
    assert!(both.starts_with("Content-Type: multipart/mixed; boundary="), "{both}");
    assert!(both.contains("Content-Type: text/x-shellscript") && both.contains("#!/bin/sh\necho hi\n"), "{both}");
    assert!(
        both.contains(&format!("Content-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\n\n{config}\n"))
    );
    for v in [&vm, &vm2] {
        let vu = u(v);
        c.s.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
        c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    }
}

/// CreateVmInstanceFromVolumeSnapshot with the page's other parameters: resourceUuid,
/// hostUuid, two L3 networks with defaultL3NetworkUuid, rootVolumeSystemTags, VM system and
/// user tags; and CreateVmInstance's refusals of a system L3 network for a UserVm and of a
/// Disabled image (upstream VmInstanceApiInterceptor texts), nothing changed by either.
#[tokio::test]
async fn from_snapshot_parameters_and_more_interceptor_refusals() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let a = network(&srv, &t, "a", 10, 20).await;
    let b = network(&srv, &t, "b", 30, 40).await;
    let src = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "src"})))).await["inventory"].clone();
    let root = s(&src["rootVolumeUuid"]);
    let snap = s(&srv
        .ok("POST", &format!("/volumes/{root}/volume-snapshots"), Some(json!({"params": {"name": "s1"}})))
        .await["inventory"]["uuid"]);
    let ru = "0a1b2c3d4e5f40718293a4b5c6d7e8f9";
    let vm = srv
        .ok(
            "POST",
            &format!("/vm-instances/from/volume-snapshots/{snap}"),
            Some(json!({"params": {"name": "fs", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [a, b],
                "defaultL3NetworkUuid": b, "hostUuid": t.hosts[1], "resourceUuid": ru,
                "rootVolumeSystemTags": ["volumeProvisioningStrategy::ThickProvisioning"]},
                "systemTags": ["hostname::from-snap"], "userTags": ["web"]})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(vm["uuid"], ru);
    assert_eq!(vm["hostUuid"], t.hosts[1].as_str());
    assert_eq!(vm["clusterUuid"], t.cluster.as_str());
    assert_eq!(vm["defaultL3NetworkUuid"], b.as_str());
    let nics: Vec<&str> =
        vm["vmNics"].as_array().unwrap().iter().map(|n| n["l3NetworkUuid"].as_str().unwrap()).collect();
    assert_eq!(nics, vec![a.as_str(), b.as_str()]);
    let nroot = s(&vm["rootVolumeUuid"]);
    let tags = |r: String| {
        let srv = &srv;
        async move {
            let mut v: Vec<String> =
                srv.query(&format!("/system-tags?q=resourceUuid={r}")).await.iter().map(|x| s(&x["tag"])).collect();
            v.sort();
            v
        }
    };
    assert_eq!(tags(nroot).await, vec!["volumeProvisioningStrategy::ThickProvisioning"]);
    assert!(tags(ru.to_string()).await.contains(&"hostname::from-snap".to_string()));
    let users: Vec<String> =
        srv.query(&format!("/user-tags?q=resourceUuid={ru}")).await.iter().map(|x| s(&x["tag"])).collect();
    assert_eq!(users, vec!["web"]);

    // refusals
    let sys_l2 = s(&srv
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "sys", "zoneUuid": t.zone, "physicalInterface": "eth9"}})),
        )
        .await["inventory"]["uuid"]);
    let sys_l3 = s(&srv
        .ok(
            "POST",
            "/l3-networks",
            Some(json!({"params": {"name": "sys", "l2NetworkUuid": sys_l2, "system": true, "category": "System"}})),
        )
        .await["inventory"]["uuid"]);
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [sys_l3]})))).await;
    assert_error(&e, "SYS.1006", &format!("l3Network[uuid:{sys_l3}] is system network, can not create user vm on it"));
    srv.ok(
        "PUT",
        &format!("/images/{}/actions", t.image),
        Some(json!({"changeImageState": {"stateEvent": "disable"}})),
    )
    .await;
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({})))).await;
    assert_error(&e, "SYS.1006", &format!("image[uuid:{}] is Disabled, can't create vm from it", t.image));
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");
}

/// An L3 network whose L2 network is not attached to any cluster: the host allocator's first
/// filter (upstream AttachedL2NetworkAllocatorFlow) names it, HOST_ALLOCATION.1000 under SYS.1006,
/// nothing left; once the L2 is attached the same request succeeds.
#[tokio::test]
async fn l3_whose_l2_is_not_attached_names_the_l2_filter() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let a = network(&srv, &t, "a", 10, 20).await;
    let l2 = s(&srv
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "x", "zoneUuid": t.zone, "physicalInterface": "eth7"}})),
        )
        .await["inventory"]["uuid"]);
    let b = s(&srv.ok("POST", "/l3-networks", Some(json!({"params": {"name": "x", "l2NetworkUuid": l2}}))).await
        ["inventory"]["uuid"]);
    srv.ok(
        "POST",
        &format!("/l3-networks/{b}/ip-ranges"),
        Some(json!({"params": {"name": "r", "startIp": "192.168.20.10", "endIp": "192.168.20.20",
            "netmask": "255.255.255.0", "gateway": "192.168.20.1"}})),
    )
    .await;
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let body = create(&t, json!({"clusterUuid": null, "l3NetworkUuids": [a, b], "defaultL3NetworkUuid": a}));
    let e = srv.fails("POST", "/vm-instances", Some(body.clone())).await;
    let text = format!("no host found in clusters that has attached to L2Networks which have L3Networks[{a}, {b}]");
    assert_error(&e, "SYS.1006", &text);
    assert_error(&e["cause"], "HOST_ALLOCATION.1000", &text);
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");
    srv.ok("POST", &format!("/l2-networks/{l2}/clusters/{}", t.cluster), None).await;
    let vm = srv.ok("POST", "/vm-instances", Some(body)).await["inventory"].clone();
    assert_eq!(vm["vmNics"].as_array().unwrap().len(), 2);
}

/// An image only on a backup storage of another zone: the allocator's image filter (upstream
/// ImageBackupStorageAllocatorFlow) names the zones that backup storage serves, nothing left.
#[tokio::test]
async fn image_on_another_zones_backup_storage_names_its_zones() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let z2 = s(&srv.create_zone("z2").await["uuid"]);
    let bs2 = s(&srv
        .ok(
            "POST",
            "/backup-storage/simulators",
            Some(json!({"params": {"name": "bs2", "url": "/sim-bs2", "totalCapacity": 100 * GB, "availableCapacity": 100 * GB}})),
        )
        .await["inventory"]["uuid"]);
    srv.ok("POST", &format!("/zones/{z2}/backup-storage/{bs2}"), None).await;
    let qcow = t._dir.path().join("t2.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "64M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let img2 = s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "img2", "url": format!("file://{}", qcow.display()), "format": "qcow2",
                "backupStorageUuids": [bs2], "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"}})),
        )
        .await["inventory"]["uuid"]);
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"imageUuid": img2})))).await;
    let text =
        format!("no host found in zones[uuids:[{z2}]] that attaches to backup storage where image[{img2}] is on");
    assert_error(&e, "SYS.1006", &text);
    assert_error(&e["cause"], "HOST_ALLOCATION.1000", &text);
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");
    // once that backup storage serves the VM's zone too, the same request succeeds
    srv.ok("POST", &format!("/zones/{}/backup-storage/{bs2}", t.zone), None).await;
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"imageUuid": img2})))).await["inventory"].clone();
    assert_eq!(vm["imageUuid"], img2.as_str());
}

/// dataVolumeSystemTagsOnIndex counts from 0; as upstream (VmAllocateVolumeFlow looks up the
/// key of each data volume's index), keys that name no data volume are ignored, not refused.
/// And vmNicParams without l3NetworkUuids is refused with upstream's text.
#[tokio::test]
async fn data_volume_tags_on_index_and_nic_params_without_l3() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let thick = "volumeProvisioningStrategy::ThickProvisioning";
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"l3NetworkUuids": [l3], "dataDiskSizes": [1u64 << 30],
                    "dataVolumeSystemTagsOnIndex": {"0": [thick], "1": [thick], "x": [thick]}}),
            )),
        )
        .await["inventory"]
        .clone();
    let data: Vec<&Value> = vm["allVolumes"].as_array().unwrap().iter().filter(|v| v["type"] == "Data").collect();
    assert_eq!(data.len(), 1);
    let tags: Vec<String> = srv
        .query(&format!("/system-tags?q=resourceUuid={}", s(&data[0]["uuid"])))
        .await
        .iter()
        .map(|x| s(&x["tag"]))
        .collect();
    assert_eq!(tags, vec![thick.to_string()]);

    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    let nic = json!([{"l3NetworkUuid": l3}]).to_string();
    let e = srv.fails("POST", "/vm-instances", Some(create(&t, json!({"name": "nic", "vmNicParams": nic})))).await;
    assert_error(&e, "SYS.1007", "l3NetworkUuids and vmNicInventories mustn't both be empty or both be set");
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before, "nothing changed");
}
