//! DetachL3NetworkFromVm on a Running KVM VM for the NICs QEMU started with: each virtio NIC
//! of the start sits on a PCIe root port of its own (after the 6 free hot-plug ports), so it
//! is unplugged like a hot-plugged one: the device, its tap, its DHCP lease and its address go,
//! the VM keeps running, and the free hot-plug ports stay free for later attaches.
mod common;

use common::kvm::qmp;

use common::kvm::{qemu_pids, uuid, KvmCloud};
use common::{assert_error, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

/// The ids of QEMU's user-created devices.
fn peripherals(sock: &std::path::Path) -> Vec<String> {
    let l = qmp(sock, "qom-list", json!({"path": "/machine/peripheral"})).expect("qom-list");
    l.as_array()
        .expect("list")
        .iter()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .map(|p| s(&p["name"]))
        .collect()
}

/// The root port a device sits on (`hp<i>`), from its parent bus (`hp<i>.0`).
fn port_of(sock: &std::path::Path, id: &str) -> String {
    let b = qmp(sock, "qom-get", json!({"path": format!("/machine/peripheral/{id}"), "property": "parent_bus"}))
        .unwrap_or_else(|e| panic!("parent bus of {id}: {e}"));
    let b = s(&b);
    b.rsplit('/').next().unwrap_or_default().trim_end_matches(".0").to_string()
}

async fn used(srv: &Server, l3: &str) -> i64 {
    let r = srv.get(&format!("/ip-capacity?l3NetworkUuids={l3}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["usedIpAddressNumber"].as_i64().expect("usedIpAddressNumber")
}

async fn vm_inv(srv: &Server, vm: &str) -> Value {
    srv.query(&format!("/vm-instances/{vm}")).await[0].clone()
}

/// Wait until the guest's virtio driver took the device `id` (DRIVER_OK).
async fn driver_ok(sock: &std::path::Path, id: &str) {
    let path = json!({"path": format!("/machine/peripheral/{id}/virtio-backend")});
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = qmp(sock, "x-query-virtio-status", path.clone()).unwrap_or_else(|e| panic!("{id} is plugged: {e}"));
        if st.to_string().contains("DRIVER_OK") {
            return;
        }
        assert!(Instant::now() < deadline, "the guest never took {id}: {st}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A VM started with two NICs (virtio): both on root ports of their own after the 6 free ones,
/// the guest names them in device-id order and gets both addresses over DHCP. Detaching the
/// second (a NIC of the start) unplugs it: 200, gone from the inventory, its address free, no
/// QEMU device, no tap, no lease, the VM Running. The last NIC (the default L3's) goes too, as
/// upstream allows (no default L3 left). Attaching again hot-plugs on the first free hot-plug
/// port, and that NIC is detached again.
#[tokio::test]
async fn nics_of_the_start_are_unplugged() {
    let Some(c) = KvmCloud::setup("nic_unplug", "nu").await else { return };
    let srv = &c.s;
    // a second network, with Flat DHCP
    let (l3b, _, _links) = c.second_l3("u2", 236, true).await;

    let vm = c.create_vm("two", json!({"l3NetworkUuids": [c.l3, l3b], "defaultL3NetworkUuid": c.l3})).await;
    let vu = uuid(&vm);
    let nic_of = |v: &Value, l3: &str| -> Value {
        v["vmNics"].as_array().expect("nics").iter().find(|x| x["l3NetworkUuid"] == l3).expect("nic").clone()
    };
    let (a, b) = (nic_of(&vm, &c.l3), nic_of(&vm, &l3b));
    assert_eq!((a["deviceId"].as_i64(), b["deviceId"].as_i64()), (Some(0), Some(1)));
    let (mac_a, mac_b) = (s(&a["mac"]), s(&b["mac"]));
    let log = c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    // the guest's names follow the device ids, both NICs got their address from dnsmasq
    assert!(log.contains(&format!("RZSTACK-GUEST-NIC eth0 mac={mac_a} ip={}", s(&a["ip"]))), "{log}");
    assert!(log.contains(&format!("RZSTACK-GUEST-NIC eth1 mac={mac_b} ip={}", s(&b["ip"]))), "{log}");
    let sock = c.serial_log(&vu).await.parent().expect("vm dir").join("qmp.sock");
    // the free hot-plug ports hp0..hp5 are empty, the NICs sit on hp6 and hp7
    assert_eq!((port_of(&sock, "nic0"), port_of(&sock, "nic1")), ("hp6".to_string(), "hp7".to_string()));
    let devs = peripherals(&sock);
    for i in 0..8 {
        assert!(devs.contains(&format!("hp{i}")), "{devs:?}");
    }
    assert_eq!(used(srv, &l3b).await, 1);
    let hosts_b = c.agent_dir.path().join("dhcp").join(&l3b).join("hosts");
    assert!(std::fs::read_to_string(&hosts_b).unwrap_or_default().contains(&mac_b));
    let tap_b = format!("tap{}1", &vu[..8]);
    assert!(common::kvm::sh(&["ip", "link", "show", &tap_b]), "the tap {tap_b} exists");

    // detach the second NIC of the start
    let r = srv.ok("DELETE", &format!("/vm-instances/nics/{}", s(&b["uuid"])), None).await;
    let inv = &r["inventory"];
    assert_eq!(inv["uuid"], vu.as_str());
    assert_eq!(inv["state"], "Running");
    let nics = inv["vmNics"].as_array().expect("nics");
    assert_eq!(nics.len(), 1, "{inv}");
    assert_eq!(nics[0]["uuid"], a["uuid"]);
    assert_eq!(inv["defaultL3NetworkUuid"], c.l3.as_str());
    assert!(srv.query(&format!("/vm-instances/nics/{}", s(&b["uuid"]))).await.is_empty());
    assert_eq!(used(srv, &l3b).await, 0, "the address of the detached NIC is free again");
    assert_eq!(used(srv, &c.l3).await, 1);
    let devs = peripherals(&sock);
    assert!(!devs.contains(&"nic1".to_string()) && devs.contains(&"nic0".to_string()), "{devs:?}");
    let filters = qmp(&sock, "query-rx-filter", json!({})).expect("rx filters").to_string();
    assert!(!filters.contains(&mac_b) && filters.contains(&mac_a), "{filters}");
    assert!(!common::kvm::sh(&["ip", "link", "show", &tap_b]), "the tap {tap_b} is gone");
    assert!(!std::fs::read_to_string(&hosts_b).unwrap_or_default().contains(&mac_b), "the lease is gone");
    assert_eq!(c.agent.vm_status(&vu).await["state"], "Running");
    assert_eq!(vm_inv(srv, &vu).await["state"], "Running");

    // a reboot (a new QEMU from the VM's NICs now): the remaining NIC on hp6, eth0, its address
    let serial = c.serial_log(&vu).await;
    let r = srv.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"rebootVmInstance": {}}))).await;
    assert_eq!(r["inventory"]["state"], "Running", "{r}");
    let deadline = Instant::now() + Duration::from_secs(180);
    let boot = loop {
        let t = std::fs::read_to_string(&serial).unwrap_or_default();
        if t.matches("RZSTACK-GUEST-UP").count() >= 2 {
            break t.rsplit("RZSTACK-GUEST-BOOTED").next().unwrap_or_default().to_string();
        }
        assert!(Instant::now() < deadline, "the guest did not come up again:\n{t}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(boot.contains(&format!("RZSTACK-GUEST-NIC eth0 mac={mac_a} ip={}", s(&a["ip"]))), "{boot}");
    assert!(!boot.contains(&mac_b) && !boot.contains("eth1"), "{boot}");
    assert_eq!(port_of(&sock, "nic0"), "hp6");

    // the last NIC, the default L3's: detached as well (upstream has no rule against it)
    let r = srv.ok("DELETE", &format!("/vm-instances/nics/{}", s(&a["uuid"])), None).await;
    let inv = &r["inventory"];
    assert_eq!(inv["vmNics"].as_array().map(Vec::len), Some(0), "{inv}");
    assert!(inv.get("defaultL3NetworkUuid").is_none_or(Value::is_null), "{inv}");
    assert_eq!(used(srv, &c.l3).await, 0);
    assert!(!peripherals(&sock).contains(&"nic0".to_string()));
    assert_eq!(qmp(&sock, "query-rx-filter", json!({})).expect("rx filters"), json!([]));
    assert_eq!(c.agent.vm_status(&vu).await["state"], "Running");

    // the free hot-plug ports are still free: an attach lands on hp0 and is detached again
    let r = srv.ok("POST", &format!("/vm-instances/{vu}/l3-networks/{l3b}"), Some(json!({"params": {}}))).await;
    let h = nic_of(&r["inventory"], &l3b);
    assert_eq!(h["deviceId"], 0);
    assert_eq!(r["inventory"]["defaultL3NetworkUuid"], l3b.as_str());
    driver_ok(&sock, "hnic0").await;
    assert_eq!(port_of(&sock, "hnic0"), "hp0");
    assert_eq!(used(srv, &l3b).await, 1);
    let r = srv.ok("DELETE", &format!("/vm-instances/nics/{}", s(&h["uuid"])), None).await;
    assert_eq!(r["inventory"]["vmNics"].as_array().map(Vec::len), Some(0));
    assert!(!peripherals(&sock).contains(&"hnic0".to_string()));
    assert_eq!(used(srv, &l3b).await, 0);

    // a NIC that is gone: SYS.1003, nothing changed
    let e = srv.fails("DELETE", &format!("/vm-instances/nics/{}", s(&b["uuid"])), None).await;
    assert_error(&e, "SYS.1003", &format!("resource[uuid:{}, type:VmNicVO] not found", s(&b["uuid"])));
    assert_eq!(vm_inv(srv, &vu).await["state"], "Running");

    srv.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    if !srv.query(&format!("/vm-instances/{vu}")).await.is_empty() {
        srv.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    }
    assert!(qemu_pids(&vu).is_empty(), "no QEMU left for {vu}");
}

/// NICs that cannot be unplugged are refused, nothing changes: an e1000 NIC (an image without
/// virtio: QEMU puts it on the root bus) of a Linux VM is refused by the host, a VM whose
/// platform is not paravirtualized (Other) by upstream's rule before any host work.
#[tokio::test]
async fn emulated_nics_are_refused() {
    let Some(c) = KvmCloud::setup("nic_unplug", "ne").await else { return };
    let srv = &c.s;
    let file = common::kvm::guest_image("nic_unplug").expect("test image");
    let image = |platform: &'static str| {
        let p = json!({"params": {"name": format!("emu-{platform}"), "url": format!("file://{}", file.display()),
            "format": "qcow2", "backupStorageUuids": [c.bs], "platform": platform, "architecture": "x86_64",
            "virtio": false}});
        async move { uuid(&srv.ok("POST", "/images", Some(p)).await["inventory"]) }
    };
    for (platform, needle) in [
        ("Linux", "is an e1000 device (the VM has no virtio devices) on the PCI root bus".to_string()),
        ("Other", String::new()),
    ] {
        let img = image(platform).await;
        let vm = c.create_vm(&format!("emu-{platform}"), json!({"imageUuid": img})).await;
        let vu = uuid(&vm);
        assert_eq!(vm["state"], "Running", "{vm}");
        let nic = vm["vmNics"][0].clone();
        let pid = qemu_pids(&vu)[0];
        let cmdline = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline"))
            .replace('\0', " ");
        // (second in upstream's default boot order, after the disk)
        assert!(
            cmdline.contains(&format!("e1000,netdev=net0,mac={},id=nic0,bootindex=2 ", s(&nic["mac"]))),
            "{cmdline}"
        );
        assert!(!cmdline.contains("pcie-root-port"), "{cmdline}");
        let tap = format!("tap{}0", &vu[..8]);
        let e = srv.fails("DELETE", &format!("/vm-instances/nics/{}", s(&nic["uuid"])), None).await;
        if platform == "Other" {
            assert_error(
                &e,
                "SYS.1006",
                &format!("unable to detach a L3 network on kvm host because platform of vm[uuid: {vu}] is Other"),
            );
        } else {
            assert_error(&e, "SYS.1006", &format!("failed to hot-unplug the nic[uuid:{}]", s(&nic["uuid"])));
            assert_error(&e, "SYS.1006", &needle);
        }
        // nothing changed: the NIC, its address, its tap, the VM Running
        let inv = vm_inv(srv, &vu).await;
        assert_eq!(inv["vmNics"], vm["vmNics"]);
        assert_eq!(inv["state"], "Running");
        assert_eq!(inv["defaultL3NetworkUuid"], c.l3.as_str());
        assert_eq!(used(srv, &c.l3).await, 1);
        assert!(common::kvm::sh(&["ip", "link", "show", &tap]), "the tap {tap} is kept");
        if platform == "Other" {
            // upstream's platform rule holds for a Stopped VM as well
            srv.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}})))
                .await;
            let e = srv.fails("DELETE", &format!("/vm-instances/nics/{}", s(&nic["uuid"])), None).await;
            assert_error(&e, "SYS.1006", "because platform of vm");
            let inv = vm_inv(srv, &vu).await;
            assert_eq!((inv["state"].clone(), inv["vmNics"].clone()), (json!("Stopped"), vm["vmNics"].clone()));
        }
        srv.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
        if !srv.query(&format!("/vm-instances/{vu}")).await.is_empty() {
            srv.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
        }
        assert!(qemu_pids(&vu).is_empty(), "no QEMU left for {vu}");
    }
}
