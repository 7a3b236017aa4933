//! The VM system tags `consolePassword::` and `bootOrder::` (upstream VmSystemTags
//! CONSOLE_PASSWORD / BOOT_ORDER): accepted at CreateVmInstance (boot devices checked as
//! upstream's validator does), kept on the VM, and read by SetVmConsolePassword /
//! DeleteVmConsolePassword / GetVmConsolePassword / SetVmBootOrder / GetVmBootOrder; on a real
//! KVM guest QEMU's VNC console asks for the password (RFB security type 2) and the disks and
//! CD-ROM boot in the tag's order.
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};

async fn vm_tags(srv: &Server, vm: &str) -> Vec<String> {
    let mut t: Vec<String> =
        srv.query(&format!("/system-tags?q=resourceUuid={vm}")).await.iter().map(|x| s(&x["tag"])).collect();
    t.sort();
    t
}

/// A sync GET that must succeed: its body.
async fn get_ok(srv: &Server, path: &str) -> Value {
    let r = srv.get(path).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    r.body
}

async fn new_vm(srv: &Server, t: &Topo, l3: &str, name: &str, tags: Value) -> Value {
    let mut b = create(t, json!({"name": name, "l3NetworkUuids": [l3]}));
    b["systemTags"] = tags;
    srv.ok("POST", "/vm-instances", Some(b)).await["inventory"].clone()
}

/// CreateVmInstance with both tags: the VM keeps them, the Get APIs answer them.
#[tokio::test]
async fn create_keeps_console_password_and_boot_order() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let vm = new_vm(&srv, &t, &l3, "tagged", json!(["consolePassword::s3cret", "bootOrder::CdRom,HardDisk"])).await;
    let u = s(&vm["uuid"]);
    assert_eq!(vm["state"], "Running", "{vm}");
    let tags = vm_tags(&srv, &u).await;
    assert!(tags.contains(&"consolePassword::s3cret".to_string()), "{tags:?}");
    assert!(tags.contains(&"bootOrder::CdRom,HardDisk".to_string()), "{tags:?}");
    let pw = get_ok(&srv, &format!("/vm-instances/{u}/console-passwords")).await;
    assert_eq!(pw, json!({"password": "s3cret"}));
    let order = get_ok(&srv, &format!("/vm-instances/{u}/boot-orders")).await;
    assert_eq!(order, json!({"orders": ["CdRom", "HardDisk"]}));

    // a VM without the tags: no password, upstream's default order (no ISO attached)
    let plain = s(&new_vm(&srv, &t, &l3, "plain", json!([])).await["uuid"]);
    assert_eq!(get_ok(&srv, &format!("/vm-instances/{plain}/console-passwords")).await, json!({}));
    let order = get_ok(&srv, &format!("/vm-instances/{plain}/boot-orders")).await;
    assert_eq!(order, json!({"orders": ["HardDisk", "Network"]}));
}

/// CreateSystemTag on a VM: the tags this node reads at start are kept; a tag upstream acts on
/// and this node does not is refused (SYS.1007), never stored without effect.
#[tokio::test]
async fn create_system_tag_refuses_tags_without_effect() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let u = s(&new_vm(&srv, &t, &l3, "vm", json!([])).await["uuid"]);
    let tag = |tag: &str| json!({"params": {"resourceType": "VmInstanceVO", "resourceUuid": u, "tag": tag}});
    srv.ok("POST", "/system-tags", Some(tag("bootOrder::HardDisk,Network"))).await;
    for bad in ["usbRedirect::true", "soundType::ich6", "maxInstancePerHost::2", "bootMode::UEFI", "vmPriority::High"] {
        let e = srv.fails("POST", "/system-tags", Some(tag(bad))).await;
        assert_error(
            &e,
            "SYS.1007",
            &format!("system tag[{bad}] is not supported by this management node: it would be kept without any effect"),
        );
    }
    assert_eq!(vm_tags(&srv, &u).await, ["bootOrder::HardDisk,Network", "driver::virtio"]);
}

/// A boot device upstream does not know is refused at CreateVmInstance (SYS.1007, upstream's
/// text) and nothing is created.
#[tokio::test]
async fn create_refuses_an_unknown_boot_device() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let before = rows(&srv).await;
    let mut b = create(&t, json!({"name": "bad", "l3NetworkUuids": [l3]}));
    b["systemTags"] = json!(["bootOrder::CdRom,Floppy"]);
    let e = srv.fails("POST", "/vm-instances", Some(b)).await;
    assert_error(&e, "SYS.1007", "invalid boot device[Floppy] in boot order[CdRom,Floppy]");
    assert!(srv.query("/vm-instances?q=name=bad").await.is_empty());
    assert_eq!(rows(&srv).await, before);
    assert_eq!(used_ips(&srv).await, 0);
}

/// SetVmConsolePassword replaces the password (the VM's inventory back); one starting with
/// `password` is refused (upstream's text) and the old one stays; a missing password is
/// mandatory; DeleteVmConsolePassword removes it (`{}`); an unknown VM is SYS.1003.
#[tokio::test]
async fn set_get_delete_console_password() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let u = s(&new_vm(&srv, &t, &l3, "vm", json!(["consolePassword::first"])).await["uuid"]);
    let actions = format!("/vm-instances/{u}/actions");
    let get = format!("/vm-instances/{u}/console-passwords");

    let r = srv.ok("PUT", &actions, Some(json!({"setVmConsolePassword": {"consolePassword": "second"}}))).await;
    assert_eq!(r["inventory"]["uuid"], u.as_str(), "{r}");
    assert_eq!(r["inventory"]["state"], "Running", "{r}");
    assert_eq!(get_ok(&srv, &get).await, json!({"password": "second"}));
    let tags = vm_tags(&srv, &u).await;
    assert_eq!(tags.iter().filter(|x| x.starts_with("consolePassword::")).count(), 1, "{tags:?}");

    let e = srv.fails("PUT", &actions, Some(json!({"setVmConsolePassword": {"consolePassword": "password1"}}))).await;
    assert_error(
        &e,
        "SYS.1007",
        "The console password cannot start with 'password' which may trigger a VNC security issue",
    );
    let e = srv.fails("PUT", &actions, Some(json!({"setVmConsolePassword": {}}))).await;
    assert_error(&e, "SYS.1007", "field[consolePassword]");
    assert_eq!(get_ok(&srv, &get).await, json!({"password": "second"}));

    let r = srv.ok("DELETE", &format!("/vm-instances/{u}/console-password"), None).await;
    assert_eq!(r, json!({}));
    assert_eq!(get_ok(&srv, &get).await, json!({}));
    assert!(!vm_tags(&srv, &u).await.iter().any(|x| x.starts_with("consolePassword::")));

    let missing = "0123456789abcdef0123456789abcdef";
    let r = srv.get(&format!("/vm-instances/{missing}/console-passwords")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(&r.body["error"], "SYS.1003", missing);
    let e = srv
        .fails(
            "PUT",
            &format!("/vm-instances/{missing}/actions"),
            Some(json!({"setVmConsolePassword": {"consolePassword": "x"}})),
        )
        .await;
    assert_error(&e, "SYS.1003", missing);
}

/// SetVmBootOrder keeps each device once, in order; an unknown device is refused (upstream's
/// text, the list as Java prints it) and the order stays; no list removes the tag (upstream's
/// default again, with CdRom when an ISO is attached).
#[tokio::test]
async fn set_get_boot_order() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "a", 10, 20).await;
    let u = s(&new_vm(&srv, &t, &l3, "vm", json!([])).await["uuid"]);
    let actions = format!("/vm-instances/{u}/actions");
    let get = format!("/vm-instances/{u}/boot-orders");
    assert_eq!(get_ok(&srv, &get).await, json!({"orders": ["HardDisk", "Network"]}));

    let r = srv
        .ok(
            "PUT",
            &actions,
            Some(json!({"setVmBootOrder": {"bootOrder": ["Network", "HardDisk", "Network", "CdRom"]}})),
        )
        .await;
    assert_eq!(r["inventory"]["uuid"], u.as_str(), "{r}");
    assert_eq!(get_ok(&srv, &get).await, json!({"orders": ["Network", "HardDisk", "CdRom"]}));
    assert!(vm_tags(&srv, &u).await.contains(&"bootOrder::Network,HardDisk,CdRom".to_string()));

    let e = srv.fails("PUT", &actions, Some(json!({"setVmBootOrder": {"bootOrder": ["HardDisk", "Floppy"]}}))).await;
    assert_error(&e, "SYS.1007", "invalid boot device[Floppy] in boot order[HardDisk, Floppy]");
    assert_eq!(get_ok(&srv, &get).await, json!({"orders": ["Network", "HardDisk", "CdRom"]}));

    srv.ok("PUT", &actions, Some(json!({"setVmBootOrder": {}}))).await;
    assert_eq!(get_ok(&srv, &get).await, json!({"orders": ["HardDisk", "Network"]}));
    assert!(!vm_tags(&srv, &u).await.iter().any(|x| x.starts_with("bootOrder::")));

    let missing = "0123456789abcdef0123456789abcdef";
    let r = srv.get(&format!("/vm-instances/{missing}/boot-orders")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(&r.body["error"], "SYS.1003", missing);
}

/// The VNC port of a Running KVM VM (GetVmConsoleAddress).
async fn console_port(srv: &Server, vm: &str) -> u16 {
    let r = srv.get(&format!("/vm-instances/{vm}/console-addresses")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["port"].as_u64().unwrap_or_else(|| panic!("port: {}", r.text)) as u16
}

/// The security types QEMU's VNC server offers on `port` (RFB 3.8: after the version
/// exchange, a count and the types; 1 = None, 2 = VNC authentication).
fn rfb_security_types(port: u16) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    c.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("timeout");
    let mut version = [0u8; 12];
    c.read_exact(&mut version).expect("RFB version");
    assert_eq!(&version, b"RFB 003.008\n");
    c.write_all(b"RFB 003.008\n").expect("RFB version reply");
    let mut n = [0u8; 1];
    c.read_exact(&mut n).expect("security type count");
    assert!(n[0] > 0, "the server refused the connection");
    let mut types = vec![0u8; n[0] as usize];
    c.read_exact(&mut types).expect("security types");
    types
}

/// The `bootindex` of the first device starting with `prefix` on the VM's QEMU command line.
fn bootindex(vm: &str, prefix: &str) -> Option<String> {
    let pids = common::kvm::qemu_pids(vm);
    assert_eq!(pids.len(), 1, "one QEMU for {vm}: {pids:?}");
    let cmd = std::fs::read(format!("/proc/{}/cmdline", pids[0])).expect("cmdline");
    let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let dev = args.iter().find(|a| a.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix}: {args:?}"));
    dev.split(',').find_map(|o| o.strip_prefix("bootindex=")).map(str::to_string)
}

/// The `bootindex` of the CD-ROM drive on the VM's QEMU command line.
fn cdrom_bootindex(vm: &str) -> String {
    bootindex(vm, "ide-cd,").unwrap_or_else(|| panic!("no bootindex on the CD-ROM of {vm}"))
}

/// On a real KVM guest: created with `consolePassword::`, the VM's VNC console offers only VNC
/// authentication; with `bootOrder::HardDisk,CdRom` and an ISO inserted, the next start boots
/// the disk before the CD-ROM (without the tag the ISO goes first); after
/// DeleteVmConsolePassword and SetVmBootOrder [CdRom] the next start offers no authentication
/// and boots the CD-ROM first.
#[tokio::test]
async fn kvm_console_password_and_boot_order() {
    use common::kvm::{uuid, KvmCloud};
    let Some(c) = KvmCloud::setup("vm_tags", "vt").await else { return };
    let vm = c.create_vm("tags", json!({"systemTags": ["consolePassword::s3cret", "bootOrder::HardDisk,CdRom"]})).await;
    let vu = uuid(&vm);
    assert_eq!(vm["state"], "Running", "{vm}");
    assert_eq!(rfb_security_types(console_port(&c.s, &vu).await), [2]);
    // the password QEMU's secret reads, the owner's only
    let secret = c.serial_log(&vu).await.parent().expect("vm dir").join("vncpw");
    assert_eq!(std::fs::read_to_string(&secret).expect("secret file"), "s3cret");
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&secret).expect("secret").permissions().mode() & 0o777, 0o600);
    }

    // a VM without the tag: upstream's default order (GetVmBootOrder's), the disk, then the NIC
    let plain = uuid(&c.create_vm("plain", json!({})).await);
    assert_eq!(bootindex(&plain, "virtio-blk-pci,drive=disk0").as_deref(), Some("1"));
    assert_eq!(bootindex(&plain, "virtio-net-pci,").as_deref(), Some("2"));
    assert_eq!(
        get_ok(&c.s, &format!("/vm-instances/{plain}/boot-orders")).await,
        json!({"orders": ["HardDisk", "Network"]})
    );

    // an ISO in the drive, then a restart: the tag's order, the disk first
    let src = tempfile::Builder::new().prefix("rziso").tempdir().expect("tempdir");
    let raw = src.path().join("boot.iso");
    std::fs::write(&raw, vec![0u8; 1 << 20]).expect("iso file");
    let iso = uuid(
        &c.s.ok(
            "POST",
            "/images",
            Some(json!({"params": {"name": "boot", "url": format!("file://{}", raw.display()), "mediaType": "ISO",
                "format": "iso", "backupStorageUuids": [c.bs], "platform": "Linux", "architecture": "x86_64"}})),
        )
        .await["inventory"],
    );
    c.s.ok("POST", &format!("/vm-instances/{vu}/iso/{iso}"), Some(json!({"params": {}}))).await;
    let act = format!("/vm-instances/{vu}/actions");
    c.s.ok("PUT", &act, Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(c.s.ok("PUT", &act, Some(json!({"startVmInstance": {}}))).await["inventory"]["state"], "Running");
    assert_eq!(cdrom_bootindex(&vu), "2");
    assert_eq!(rfb_security_types(console_port(&c.s, &vu).await), [2]);

    // no password, the CD-ROM first: taken at the next start
    c.s.ok("DELETE", &format!("/vm-instances/{vu}/console-password"), None).await;
    c.s.ok("PUT", &act, Some(json!({"setVmBootOrder": {"bootOrder": ["CdRom"]}}))).await;
    c.s.ok("PUT", &act, Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(c.s.ok("PUT", &act, Some(json!({"startVmInstance": {}}))).await["inventory"]["state"], "Running");
    assert_eq!(cdrom_bootindex(&vu), "1");
    assert_eq!(rfb_security_types(console_port(&c.s, &vu).await), [1]);
    assert!(!secret.exists(), "the secret file is gone");

    // the network after the disk: the NIC gets its place (QEMU's iPXE ROM boots it); the guest
    // still comes up from its disk
    c.s.ok("PUT", &act, Some(json!({"setVmBootOrder": {"bootOrder": ["HardDisk", "Network"]}}))).await;
    c.s.ok("PUT", &act, Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(c.s.ok("PUT", &act, Some(json!({"startVmInstance": {}}))).await["inventory"]["state"], "Running");
    assert_eq!(bootindex(&vu, "virtio-blk-pci,drive=disk0").as_deref(), Some("1"));
    assert_eq!(bootindex(&vu, "virtio-net-pci,").as_deref(), Some("2"));
    assert_eq!(cdrom_bootindex(&vu), "3");

    // a reboot takes the boot order as it is now (upstream's reboot sends it); the guest is
    // let come up first, so that it powers off on the reboot's ACPI request
    c.wait_serial(&vu, "RZSTACK-GUEST-BOOTED").await;
    c.s.ok("PUT", &act, Some(json!({"setVmBootOrder": {"bootOrder": ["Network", "HardDisk"]}}))).await;
    assert_eq!(c.s.ok("PUT", &act, Some(json!({"rebootVmInstance": {}}))).await["inventory"]["state"], "Running");
    assert_eq!(bootindex(&vu, "virtio-net-pci,").as_deref(), Some("1"));
    assert_eq!(bootindex(&vu, "virtio-blk-pci,drive=disk0").as_deref(), Some("2"));
}
