//! VM actions after creation, through the public API on simulator hosts:
//! ChangeInstanceOffering, AttachL3NetworkToVm, DetachL3NetworkFromVm, GetVmAttachableL3Network.
mod common;

use common::kvm::qmp;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};

async fn action(srv: &Server, vm: &str, body: Value) -> Value {
    srv.ok("PUT", &format!("/vm-instances/{vm}/actions"), Some(body)).await
}

async fn refused(srv: &Server, vm: &str, body: Value) -> Value {
    srv.fails("PUT", &format!("/vm-instances/{vm}/actions"), Some(body)).await
}

async fn vm_inv(srv: &Server, vm: &str) -> Value {
    srv.query(&format!("/vm-instances/{vm}")).await[0].clone()
}

fn nic_on<'a>(vm: &'a Value, l3: &str) -> Option<&'a Value> {
    vm["vmNics"].as_array().unwrap().iter().find(|n| n["l3NetworkUuid"] == l3)
}

/// Stopped: the new offering's CPU/memory/strategy are stored, no host capacity moves until
/// the next start, which reserves the new size. Running (no online modification): refused
/// with upstream's text, nothing changed; a Created (never started) VM likewise.
#[tokio::test]
async fn change_instance_offering() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let big = s(&srv
        .ok(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "big", "cpuNum": 2, "memorySize": 2 * GB,
                "allocatorStrategy": "LastHostPreferredAllocatorStrategy"}})),
        )
        .await["inventory"]["uuid"]);
    let idle = usage(&srv, &t).await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"]
            ["uuid"]);
    let running = usage(&srv, &t).await;
    assert_eq!(running.0[0], (idle.0[0].0 - 1, idle.0[0].1 - GB));

    // Running: refused, nothing changed
    let body = json!({"changeInstanceOffering": {"instanceOfferingUuid": big}});
    let e = refused(&srv, &vm, body.clone()).await;
    assert_error(
        &e,
        "SYS.1007",
        "the VM cannot do online cpu/memory update because of disabling Instance Offering Online Modification. Please stop the VM then do the cpu/memory update again",
    );
    let inv = vm_inv(&srv, &vm).await;
    assert_eq!((inv["cpuNum"].clone(), inv["memorySize"].clone()), (json!(1), json!(GB)));
    assert_eq!(inv["instanceOfferingUuid"], t.offering.as_str());
    assert_eq!(usage(&srv, &t).await, running);

    // an unknown offering: SYS.1003
    let e = refused(&srv, &vm, json!({"changeInstanceOffering": {"instanceOfferingUuid": "0".repeat(32)}})).await;
    assert_eq!(e["code"], "SYS.1003", "{e}");

    // Stopped: changed, no capacity moves
    action(&srv, &vm, json!({"stopVmInstance": {}})).await;
    let stopped = usage(&srv, &t).await;
    assert_eq!(stopped.0, idle.0, "a stopped VM holds no host capacity");
    let r = action(&srv, &vm, body.clone()).await;
    let inv = &r["inventory"];
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
    assert_eq!(inv["uuid"], vm.as_str());
    assert_eq!(inv["state"], "Stopped");
    assert_eq!(inv["cpuNum"], 2);
    assert_eq!(inv["memorySize"], 2 * GB);
    assert_eq!(inv["instanceOfferingUuid"], big.as_str());
    assert_eq!(inv["allocatorStrategy"], "LastHostPreferredAllocatorStrategy");
    assert_eq!(usage(&srv, &t).await, stopped);
    assert_eq!(vm_inv(&srv, &vm).await["cpuNum"], 2);

    // the next start reserves the new size
    action(&srv, &vm, json!({"startVmInstance": {}})).await;
    assert_eq!(usage(&srv, &t).await.0[0], (idle.0[0].0 - 2, idle.0[0].1 - 2 * GB));
    action(&srv, &vm, json!({"stopVmInstance": {}})).await;
    assert_eq!(usage(&srv, &t).await, stopped);

    // a VM never started (Created): not Stopped, so refused as upstream, unchanged
    let later = s(&srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "later", "strategy": "JustCreate", "l3NetworkUuids": [l3]}))),
        )
        .await["inventory"]["uuid"]);
    let e = refused(&srv, &later, body).await;
    assert_error(&e, "SYS.1007", "Please stop the VM then do the cpu/memory update again");
    let inv = vm_inv(&srv, &later).await;
    assert_eq!(inv["cpuNum"], 1);
    assert_eq!(inv["instanceOfferingUuid"], t.offering.as_str());
}

/// Attach an L3 to a running simulator VM: a new NIC (next device id, `fa:` MAC, an address of
/// the range, one used IP more); attaching it again, a static IP out of range or one in use:
/// refused with upstream's texts, nothing allocated. Detach frees the NIC and its IP; the
/// default L3 moves to the remaining NIC. Stopped VMs too. The candidates list follows.
#[tokio::test]
async fn attach_detach_l3() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3a = network(&srv, &t, "a", 10, 20).await;
    let l3b = network(&srv, &t, "b", 30, 40).await;
    let created = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3a]})))).await;
    let vm = s(&created["inventory"]["uuid"]);
    let ips0 = used_ips(&srv).await;
    assert_eq!(ips0, 1);

    // candidates: b only (a is attached)
    let r = srv.get(&format!("/vm-instances/{vm}/l3-networks-candidates")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c: Vec<String> = r.body["inventories"].as_array().unwrap().iter().map(|l| s(&l["uuid"])).collect();
    assert_eq!(c, vec![l3b.clone()]);

    // vmNicParams cannot be honoured by this node: refused, nothing changed
    let e = srv
        .fails(
            "POST",
            &format!("/vm-instances/{vm}/l3-networks/{l3b}"),
            Some(json!({"params": {"vmNicParams": json!([{"l3NetworkUuid": l3b}]).to_string()}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "vmNicParams is not supported by AttachL3NetworkToVm");
    assert_eq!(used_ips(&srv).await, ips0);
    assert_eq!(vm_inv(&srv, &vm).await["vmNics"].as_array().unwrap().len(), 1);

    // attach b
    let r = srv.ok("POST", &format!("/vm-instances/{vm}/l3-networks/{l3b}"), Some(json!({"params": {}}))).await;
    let inv = &r["inventory"];
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
    assert_eq!(inv["vmNics"].as_array().unwrap().len(), 2);
    assert_eq!(inv["defaultL3NetworkUuid"], l3a.as_str());
    let nic = nic_on(inv, &l3b).expect("nic on b").clone();
    assert_eq!(nic["deviceId"], 1);
    assert_eq!(nic["vmInstanceUuid"], vm.as_str());
    assert_eq!(nic["hypervisorType"], "Simulator");
    assert_eq!(nic["netmask"], "255.255.255.0");
    assert_eq!(nic["gateway"], "192.168.10.1");
    let mac = s(&nic["mac"]);
    assert!(mac.starts_with("fa:") && mac.len() == 17, "{mac}");
    let ip = s(&nic["ip"]);
    let last: u8 = ip.strip_prefix("192.168.10.").unwrap().parse().unwrap();
    assert!((30..=40).contains(&last), "{ip}");
    assert_eq!(nic["usedIps"][0]["ip"], ip.as_str());
    assert_eq!(nic["usedIps"][0]["l3NetworkUuid"], l3b.as_str());
    assert_eq!(used_ips(&srv).await, ips0 + 1);
    let r = srv.get(&format!("/vm-instances/{vm}/l3-networks-candidates")).await;
    assert_eq!(r.body["inventories"].as_array().unwrap().len(), 0, "{}", r.text);

    // again: refused, nothing allocated
    let before = rows(&srv).await;
    let e = srv.fails("POST", &format!("/vm-instances/{vm}/l3-networks/{l3b}"), Some(json!({"params": {}}))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "unable to attach a L3 network. The L3 network[uuid:[{l3b}]] is already attached to the vm[uuid: {vm}]"
        ),
    );
    assert_eq!(rows(&srv).await, before);
    assert_eq!(used_ips(&srv).await, ips0 + 1);

    // detach a (the default): the default moves to b, a's IP is freed
    let nic_a = s(&nic_on(inv, &l3a).unwrap()["uuid"]);
    let r = srv.ok("DELETE", &format!("/vm-instances/nics/{nic_a}"), None).await;
    let inv = &r["inventory"];
    assert_eq!(inv["vmNics"].as_array().unwrap().len(), 1);
    assert!(nic_on(inv, &l3a).is_none());
    assert_eq!(inv["defaultL3NetworkUuid"], l3b.as_str());
    assert_eq!(used_ips(&srv).await, ips0);
    assert!(srv.query(&format!("/vm-instances/nics/{nic_a}")).await.is_empty());

    // stopped VM: a static IP out of range and one in use are refused, then a free one works
    action(&srv, &vm, json!({"stopVmInstance": {}})).await;
    let before = rows(&srv).await;
    let e = srv
        .fails(
            "POST",
            &format!("/vm-instances/{vm}/l3-networks/{l3a}"),
            Some(json!({"params": {"staticIp": "192.168.10.99"}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1007",
        &format!("the static IP[192.168.10.99] is not in any IP range of the L3 network[uuid:{l3a}]"),
    );
    let other = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "o", "l3NetworkUuids": [l3a]})))).await;
    let taken = s(&other["inventory"]["vmNics"][0]["ip"]);
    let before2 = rows(&srv).await;
    assert_eq!(before2.2, before.2 + 1);
    let ips1 = used_ips(&srv).await;
    let e = srv
        .fails("POST", &format!("/vm-instances/{vm}/l3-networks/{l3a}"), Some(json!({"params": {"staticIp": taken}})))
        .await;
    assert_error(&e, "SYS.1006", &format!("the static IP[{taken}] has been occupied on the L3 network[uuid:{l3a}]"));
    assert_eq!(rows(&srv).await, before2);
    assert_eq!(used_ips(&srv).await, ips1);
    let free = if taken == "192.168.10.15" { "192.168.10.16" } else { "192.168.10.15" };
    let r = srv
        .ok("POST", &format!("/vm-instances/{vm}/l3-networks/{l3a}"), Some(json!({"params": {"staticIp": free}})))
        .await;
    let nic = nic_on(&r["inventory"], &l3a).expect("nic on a").clone();
    assert_eq!(nic["ip"], free);
    assert_eq!(nic["deviceId"], 0, "the lowest free device id");
    assert_eq!(used_ips(&srv).await, ips1 + 1);

    // a detach while the VM is being destroyed is refused: destroyed VM
    action(&srv, &vm, json!({"startVmInstance": {}})).await;
    srv.ok("DELETE", &format!("/vm-instances/{vm}"), None).await;
    let nic_uuid = s(&nic["uuid"]);
    let e = srv.fails("DELETE", &format!("/vm-instances/nics/{nic_uuid}"), None).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("unable to detach a L3 network. The vm[uuid: {vm}] is not Running or Stopped; the current state is Destroyed"),
    );
    let e = srv.fails("POST", &format!("/vm-instances/{vm}/l3-networks/{l3b}"), Some(json!({"params": {}}))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!("unable to attach a L3 network. The vm[uuid: {vm}] is not Running or Stopped; the current state is Destroyed"),
    );
    assert_eq!(srv.query(&format!("/vm-instances/nics/{nic_uuid}")).await.len(), 1);
}

/// Two concurrent attaches of the same L3 to the same VM: exactly one NIC and one IP.
#[tokio::test]
async fn concurrent_attach_same_l3() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3a = network(&srv, &t, "a", 10, 20).await;
    let l3b = network(&srv, &t, "b", 30, 40).await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3a]})))).await["inventory"]
            ["uuid"]);
    let ips0 = used_ips(&srv).await;
    let path = format!("/vm-instances/{vm}/l3-networks/{l3b}");
    let (r1, r2) = tokio::join!(
        srv.job("POST", &path, Some(json!({"params": {}}))),
        srv.job("POST", &path, Some(json!({"params": {}})))
    );
    let ok = [r1.status, r2.status].iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 1, "{} / {}", r1.text, r2.text);
    let failed = if r1.status == 200 { &r2 } else { &r1 };
    assert_error(&failed.body["error"], "SYS.1006", "is already attached to the vm");
    let inv = vm_inv(&srv, &vm).await;
    let on_b = inv["vmNics"].as_array().unwrap().iter().filter(|n| n["l3NetworkUuid"] == l3b.as_str()).count();
    assert_eq!(on_b, 1);
    assert_eq!(used_ips(&srv).await, ips0 + 1);
}

/// SetVmStaticIp on a simulator VM: the NIC gets the address (the old one freed, one used IP
/// still), the VM gets `staticIp::<l3>::<ip>`; refusals with upstream's texts change nothing.
#[tokio::test]
async fn set_static_ip() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3a = network(&srv, &t, "a", 10, 20).await;
    let l3b = network(&srv, &t, "b", 30, 40).await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3a]})))).await["inventory"]
            ["uuid"]);
    let other = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "o", "l3NetworkUuids": [l3a]})))).await;
    let taken = s(&other["inventory"]["vmNics"][0]["ip"]);
    let old = s(&vm_inv(&srv, &vm).await["vmNics"][0]["ip"]);
    let free = (10..=20).map(|i| format!("192.168.10.{i}")).find(|i| *i != taken && *i != old).unwrap();
    let ips0 = used_ips(&srv).await;
    let set = |ip: Value, l3: &str| json!({"setVmStaticIp": {"l3NetworkUuid": l3, "ip": ip}});

    // refusals, nothing changed
    let e = refused(&srv, &vm, json!({"setVmStaticIp": {"l3NetworkUuid": l3a}})).await;
    assert_error(&e, "SYS.1007", "could not set ip address, due to no ip address is specified");
    let e = refused(&srv, &vm, set(json!(old), &l3a)).await;
    assert_error(&e, "SYS.1007", &format!("ip address [{old}] already set to vmNic [uuid:"));
    let e = refused(&srv, &vm, set(json!("10.9.9.9"), &l3a)).await;
    assert_error(&e, "SYS.1007", "ip address [10.9.9.9] is not in ip range [192.168.10.0/24]");
    let e = refused(&srv, &vm, set(json!(taken), &l3a)).await;
    assert_error(&e, "L3.1000", &format!("because IP[{taken}] is not available"));
    let e = refused(&srv, &vm, set(json!("192.168.10.33"), &l3b)).await;
    assert_error(&e, "SYS.1006", &format!("the vm[uuid:{vm}] has no nic on the L3 network[uuid:{l3b}]"));
    assert_eq!(s(&vm_inv(&srv, &vm).await["vmNics"][0]["ip"]), old);
    assert_eq!(used_ips(&srv).await, ips0);
    assert!(srv.query(&format!("/system-tags?q=resourceUuid={vm}&q=tag~=staticIp%25")).await.is_empty());

    // success
    let r = action(&srv, &vm, set(json!(free), &l3a)).await;
    assert!(r.get("inventory").is_none(), "the event has no inventory: {r}");
    let inv = vm_inv(&srv, &vm).await;
    let nic = &inv["vmNics"][0];
    assert_eq!(nic["ip"], free.as_str());
    assert_eq!(nic["usedIps"].as_array().unwrap().len(), 1);
    assert_eq!(nic["usedIps"][0]["ip"], free.as_str());
    assert_eq!(nic["usedIpUuid"], nic["usedIps"][0]["uuid"]);
    assert_eq!(used_ips(&srv).await, ips0);
    let tags: Vec<String> =
        srv.query(&format!("/system-tags?q=resourceUuid={vm}")).await.iter().map(|t| s(&t["tag"])).collect();
    assert!(tags.contains(&format!("staticIp::{l3a}::{free}")), "{tags:?}");
    // the old address is free again: another VM may take it; the new one is held
    let o = s(&other["inventory"]["uuid"]);
    let e = refused(&srv, &o, set(json!(free), &l3a)).await;
    assert_error(&e, "L3.1000", &format!("because IP[{free}] is not available"));
    action(&srv, &o, set(json!(old), &l3a)).await;
    assert_eq!(s(&vm_inv(&srv, &o).await["vmNics"][0]["ip"]), old);
    assert_eq!(used_ips(&srv).await, ips0);

    // a destroyed VM: refused by state
    srv.ok("DELETE", &format!("/vm-instances/{vm}"), None).await;
    let e = refused(&srv, &vm, set(json!(old), &l3a)).await;
    assert_error(
        &e,
        "SYS.1006",
        "current vm instance state[Destroyed] doesn't allow to proceed message[org.zstack.header.vm.APISetVmStaticIpMsg]",
    );
}

async fn iso_image(srv: &Server, t: &Topo, name: &str) -> String {
    let bs = s(&srv.query("/backup-storage").await[0]["uuid"]);
    let raw = t._dir.path().join(format!("{name}.iso"));
    std::fs::write(&raw, vec![0u8; 1 << 20]).unwrap();
    s(&srv
        .ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": name, "url": raw.display().to_string(), "mediaType": "ISO",
                "backupStorageUuids": [bs], "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"}})),
        )
        .await["inventory"]["uuid"])
}

/// AttachIsoToVmInstance / DetachIsoFromVmInstance on simulator VMs (Running and Stopped):
/// the ISO goes into the empty CD-ROM and out again; a second ISO (one CD-ROM), the same ISO
/// again, a non-ISO image and a Destroyed VM are refused with upstream's texts, unchanged.
#[tokio::test]
async fn attach_detach_iso() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let iso = iso_image(&srv, &t, "a").await;
    let iso2 = iso_image(&srv, &t, "b").await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"]
            ["uuid"]);
    let cdrom = vm_inv(&srv, &vm).await["vmCdRoms"][0].clone();
    assert!(cdrom.get("isoUuid").is_none(), "{cdrom}");

    // a non-ISO image: refused
    let e = srv.fails("POST", &format!("/vm-instances/{vm}/iso/{}", t.image), Some(json!({"params": {}}))).await;
    assert_error(&e, "SYS.1007", "Unsupported Image Media Type: [RootVolumeTemplate] ");

    // Running simulator VM: attached
    let r = srv.ok("POST", &format!("/vm-instances/{vm}/iso/{iso}"), Some(json!({"params": {}}))).await;
    assert_eq!(r["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
    let cds = r["inventory"]["vmCdRoms"].as_array().unwrap();
    assert_eq!(cds.len(), 1);
    assert_eq!(cds[0]["uuid"], cdrom["uuid"]);
    assert_eq!(cds[0]["isoUuid"], iso.as_str());

    // again / another one: refused, unchanged
    let e = srv.fails("POST", &format!("/vm-instances/{vm}/iso/{iso}"), Some(json!({"params": {}}))).await;
    assert_error(&e, "SYS.1006", &format!("VM[uuid:{vm}] already has an ISO[uuid:{iso}] attached"));
    let e = srv.fails("POST", &format!("/vm-instances/{vm}/iso/{iso2}"), Some(json!({"params": {}}))).await;
    assert_error(&e, "SYS.1006", &format!("All vm[uuid:{vm}] CD-ROMs have mounted ISO"));
    assert_eq!(vm_inv(&srv, &vm).await["vmCdRoms"][0]["isoUuid"], iso.as_str());

    // detach without isoUuid (the only one), then again: nothing to do, fine
    let r = srv.ok("DELETE", &format!("/vm-instances/{vm}/iso"), None).await;
    assert!(r["inventory"]["vmCdRoms"][0].get("isoUuid").is_none(), "{r}");
    let r = srv.ok("DELETE", &format!("/vm-instances/{vm}/iso?isoUuid={iso}"), None).await;
    assert_eq!(r["inventory"]["uuid"], vm.as_str());

    // Stopped: attach and detach by uuid
    action(&srv, &vm, json!({"stopVmInstance": {}})).await;
    let r = srv.ok("POST", &format!("/vm-instances/{vm}/iso/{iso2}"), Some(json!({"params": {}}))).await;
    assert_eq!(r["inventory"]["vmCdRoms"][0]["isoUuid"], iso2.as_str());
    let r = srv.ok("DELETE", &format!("/vm-instances/{vm}/iso?isoUuid={iso2}"), None).await;
    assert!(r["inventory"]["vmCdRoms"][0].get("isoUuid").is_none(), "{r}");

    // Destroyed: refused by state
    srv.ok("DELETE", &format!("/vm-instances/{vm}"), None).await;
    let e = srv.fails("POST", &format!("/vm-instances/{vm}/iso/{iso}"), Some(json!({"params": {}}))).await;
    assert_error(
        &e,
        "SYS.1006",
        "current vm instance state[Destroyed] doesn't allow to proceed message[org.zstack.header.vm.AttachIsoToVmInstanceMsg]",
    );
    assert!(vm_inv(&srv, &vm).await["vmCdRoms"][0].get("isoUuid").is_none());
}

/// GetVmConsoleAddress: a Running simulator VM has no console (no guest runs): refused
/// clearly, never a made-up address; a Stopped VM is refused by state (VM.1010 in SYS.1006),
/// an unknown VM with SYS.1003.
#[tokio::test]
async fn console_address() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let vm =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"]
            ["uuid"]);
    let r = srv.get(&format!("/vm-instances/{vm}/console-addresses")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1006",
        &format!("the vm[uuid:{vm}] has no console: a simulator host runs no guest"),
    );

    action(&srv, &vm, json!({"stopVmInstance": {}})).await;
    let r = srv.get(&format!("/vm-instances/{vm}/console-addresses")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1006",
        "current vm instance state[Stopped] doesn't allow to proceed message[org.zstack.header.vm.APIGetVmConsoleAddressMsg]",
    );
    assert_eq!(r.body["error"]["cause"]["code"], "VM.1010", "{}", r.text);
    let missing = "0123456789abcdef0123456789abcdef";
    let r = srv.get(&format!("/vm-instances/{missing}/console-addresses")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "SYS.1003", "{}", r.text);
    assert_eq!(vm_inv(&srv, &vm).await["state"], "Stopped");
}

/// Concurrent attaches of two L3s to one VM get distinct device ids, and of one L3 to two VMs
/// distinct addresses; a customMac in use is refused with nothing left behind.
#[tokio::test]
async fn concurrent_attach_distinct() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3a = network(&srv, &t, "a", 10, 20).await;
    let l3b = network(&srv, &t, "b", 30, 40).await;
    let l3c = network(&srv, &t, "c", 50, 60).await;
    let vm1 =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3a]})))).await["inventory"]
            ["uuid"]);
    let vm2 = s(&srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "v2", "l3NetworkUuids": [l3a]}))))
        .await["inventory"]["uuid"]);
    let (p1, p2) = (format!("/vm-instances/{vm1}/l3-networks/{l3b}"), format!("/vm-instances/{vm1}/l3-networks/{l3c}"));
    let (r1, r2) = tokio::join!(
        srv.job("POST", &p1, Some(json!({"params": {}}))),
        srv.job("POST", &p2, Some(json!({"params": {}})))
    );
    assert_eq!((r1.status, r2.status), (200, 200), "{} / {}", r1.text, r2.text);
    let inv = vm_inv(&srv, &vm1).await;
    let mut devs: Vec<i64> =
        inv["vmNics"].as_array().unwrap().iter().map(|n| n["deviceId"].as_i64().unwrap()).collect();
    devs.sort();
    assert_eq!(devs, vec![0, 1, 2]);

    let (q1, q2) = (format!("/vm-instances/{vm2}/l3-networks/{l3b}"), format!("/vm-instances/{vm2}/l3-networks/{l3c}"));
    let (r1, r2) = tokio::join!(
        srv.job("POST", &q1, Some(json!({"params": {}}))),
        srv.job("POST", &q2, Some(json!({"params": {}})))
    );
    assert_eq!((r1.status, r2.status), (200, 200), "{} / {}", r1.text, r2.text);
    let nics = srv.query("/vm-instances/nics").await;
    let mut ips: Vec<String> = nics.iter().map(|n| s(&n["ip"])).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "{ips:?}");
    assert_eq!(used_ips(&srv).await, 6);

    // a MAC in use: refused, nothing left
    let mac = s(&nics[0]["mac"]);
    let vm3 = s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "v3"})))).await["inventory"]["uuid"]);
    let before = rows(&srv).await;
    let e = srv
        .fails("POST", &format!("/vm-instances/{vm3}/l3-networks/{l3a}"), Some(json!({"params": {"customMac": mac}})))
        .await;
    assert_error(&e, "SYS.1006", &format!("Duplicate mac address [{mac}]"));
    assert_eq!(rows(&srv).await, before);
    assert_eq!(used_ips(&srv).await, 6);
    assert!(vm_inv(&srv, &vm3).await.get("defaultL3NetworkUuid").is_none());
}

/// A KVM host (QEMU under TCG here): attaching an L3 to the running guest hot-plugs a
/// virtio-net device on a new tap (the guest's driver takes it: DRIVER_OK), detaching unplugs
/// it and removes the tap.
#[tokio::test]
async fn nic_hot_plug_on_a_kvm_host() {
    use common::kvm::{qemu_pids, uuid, KvmCloud};
    let Some(c) = KvmCloud::setup("vm_actions", "na").await else { return };
    let srv = &c.s;
    // a second network (its own bridge)
    let (l3, net, _links) = c.second_l3("n2", 237, false).await;

    let vm = c.create_vm("hn", json!({})).await;
    let vu = uuid(&vm);
    c.wait_serial(&vu, "RZSTACK-GUEST-UP").await;
    let sock = c.serial_log(&vu).await.parent().expect("vm dir").join("qmp.sock");

    // (the NIC of the start is unplugged too: tests/nic_unplug.rs)
    assert_eq!(vm_inv(srv, &vu).await["vmNics"].as_array().unwrap().len(), 1);
    assert_eq!(used_ips(srv).await, 1);

    // hot-plug
    let r = srv.ok("POST", &format!("/vm-instances/{vu}/l3-networks/{l3}"), Some(json!({"params": {}}))).await;
    let nic = nic_on(&r["inventory"], &l3).expect("nic on the vlan").clone();
    assert_eq!(nic["deviceId"], 1);
    assert!(s(&nic["ip"]).starts_with(&format!("{net}.")), "{nic}");
    let tap = format!("tap{}1", &vu[..8]);
    assert!(common::kvm::sh(&["ip", "link", "show", &tap]), "the tap {tap} exists");
    let filters = qmp(&sock, "query-rx-filter", json!({})).expect("rx filters");
    assert!(filters.to_string().contains(&s(&nic["mac"])), "QEMU has the NIC: {filters}");
    let virtio = json!({"path": "/machine/peripheral/hnic1/virtio-backend"});
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let st = qmp(&sock, "x-query-virtio-status", virtio.clone()).expect("hnic1 is plugged");
        if st.to_string().contains("DRIVER_OK") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the guest never took hnic1: {st}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert_eq!(used_ips(srv).await, 2);

    // SetVmStaticIp on the running VM: the host's DHCP server serves the NIC's MAC the new address
    let hosts = c.agent_dir.path().join("dhcp").join(&l3).join("hosts");
    let mac = s(&nic["mac"]);
    let old_ip = s(&nic["ip"]);
    assert!(std::fs::read_to_string(&hosts).unwrap().contains(&format!("{mac},{old_ip}")));
    let new_ip = (10..=20).map(|i| format!("{net}.{i}")).find(|i| *i != old_ip).unwrap();
    action(srv, &vu, json!({"setVmStaticIp": {"l3NetworkUuid": l3, "ip": new_ip}})).await;
    let leases = std::fs::read_to_string(&hosts).unwrap();
    assert!(leases.contains(&format!("{mac},{new_ip}")), "{leases}");
    assert!(!leases.contains(&format!(",{old_ip}")), "{leases}");
    assert_eq!(s(&nic_on(&vm_inv(srv, &vu).await, &l3).unwrap()["ip"]), new_ip);
    assert_eq!(used_ips(srv).await, 2);

    // hot-unplug: the device, its tap and its address go
    let r = srv.ok("DELETE", &format!("/vm-instances/nics/{}", s(&nic["uuid"])), None).await;
    assert_eq!(r["inventory"]["vmNics"].as_array().unwrap().len(), 1);
    assert!(qmp(&sock, "x-query-virtio-status", virtio).is_err(), "hnic1 is gone");
    let filters = qmp(&sock, "query-rx-filter", json!({})).expect("rx filters");
    assert!(!filters.to_string().contains(&s(&nic["mac"])), "{filters}");
    assert!(!common::kvm::sh(&["ip", "link", "show", &tap]), "the tap {tap} is gone");
    assert_eq!(used_ips(srv).await, 1);

    srv.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    if !srv.query(&format!("/vm-instances/{vu}")).await.is_empty() {
        srv.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    }
    assert!(qemu_pids(&vu).is_empty(), "no QEMU left for {vu}");
}
