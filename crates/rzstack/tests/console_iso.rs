//! The console and the CD-ROM of a Running KVM VM, on real QEMU guests: GetVmConsoleAddress
//! answers the host's address and the port of the VM's VNC display (which greets with RFB), a
//! Stopped VM's console is refused by state; AttachIsoToVmInstance / DetachIsoFromVmInstance
//! change the medium of the VM's CD-ROM drive over QMP; a VM created without CD-ROM has no
//! drive and is refused as upstream refuses it.
mod common;

use common::kvm::qmp;

use common::assert_error;
use common::kvm::{uuid, KvmCloud};
use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

/// QEMU's view of the CD-ROM drive `cdrom0` (`query-block`), None when the VM has no such drive.
fn cdrom(sock: &std::path::Path) -> Option<Value> {
    let blocks = qmp(sock, "query-block", json!({})).expect("query-block");
    blocks
        .as_array()
        .expect("blocks")
        .iter()
        .find(|b| b["qdev"].as_str().is_some_and(|q| q.contains("cdrom0")))
        .cloned()
}

/// The first 12 bytes a TCP client gets from `127.0.0.1:port`.
fn greeting(port: u16) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 12];
    c.read_exact(&mut buf).unwrap_or_else(|e| panic!("read from {port}: {e}"));
    String::from_utf8_lossy(&buf).into_owned()
}

/// An ISO image (1 MiB of zeros: QEMU takes any raw file as a CD) on the cloud's image store,
/// added from a file in `dir` (not under a hidden directory: upstream's path black list).
async fn iso_image(c: &KvmCloud, dir: &std::path::Path, name: &str) -> Value {
    let raw = dir.join(format!("{name}.iso"));
    std::fs::write(&raw, vec![0u8; 1 << 20]).expect("iso file");
    c.s.ok(
        "POST",
        "/images",
        Some(json!({"params": {"name": name, "url": format!("file://{}", raw.display()), "mediaType": "ISO",
            "format": "iso", "backupStorageUuids": [c.bs], "platform": "Linux", "architecture": "x86_64"}})),
    )
    .await["inventory"]
        .clone()
}

/// GetVmConsoleAddress (a synchronous API) that must succeed: the reply.
async fn console(c: &KvmCloud, vm: &str) -> Value {
    let r = c.s.get(&format!("/vm-instances/{vm}/console-addresses")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

async fn vm_inv(c: &KvmCloud, vm: &str) -> Value {
    c.s.query(&format!("/vm-instances/{vm}")).await[0].clone()
}

/// GetVmConsoleAddress on Running KVM VMs: the host's management IP, a port of each VM's own
/// (also in vdiPortInfo.vncPort), protocol vnc; QEMU's VNC server greets on that port. After
/// StopVmInstance the console is refused with upstream's state error (VM.1010 in SYS.1006).
#[tokio::test]
async fn console_of_a_running_kvm_vm() {
    let Some(c) = KvmCloud::setup("console_iso", "cv").await else { return };
    let vm = c.create_vm("console", json!({})).await;
    let vu = uuid(&vm);
    assert_eq!(vm["state"], "Running", "{vm}");
    let r = console(&c, &vu).await;
    assert_eq!(r["hostIp"], "127.0.0.1", "{r}");
    assert_eq!(r["protocol"], "vnc", "{r}");
    let port = r["port"].as_u64().unwrap_or_else(|| panic!("port: {r}"));
    assert!((5900..=6900).contains(&port), "{r}");
    assert_eq!(r["vdiPortInfo"]["vncPort"].as_u64(), Some(port), "{r}");
    assert_eq!(greeting(port as u16), "RFB 003.008\n");
    // asked again: the same port
    let again = console(&c, &vu).await;
    assert_eq!(again["port"].as_u64(), Some(port), "{again}");

    // a second VM listens on a port of its own
    let vm2 = uuid(&c.create_vm("console2", json!({})).await);
    let r2 = console(&c, &vm2).await;
    let port2 = r2["port"].as_u64().unwrap_or_else(|| panic!("port: {r2}"));
    assert_ne!(port, port2);
    assert_eq!(greeting(port2 as u16), "RFB 003.008\n");

    c.s.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    let r = c.s.get(&format!("/vm-instances/{vu}/console-addresses")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1006",
        "current vm instance state[Stopped] doesn't allow to proceed message[org.zstack.header.vm.APIGetVmConsoleAddressMsg]",
    );
    assert_eq!(r.body["error"]["cause"]["code"], "VM.1010", "{}", r.text);
    // its QEMU (and so its VNC server) is gone; the port may serve another VM by now
    assert!(common::kvm::qemu_pids(&vu).is_empty(), "the stopped VM's QEMU is gone");
    assert_eq!(vm_inv(&c, &vu).await["state"], "Stopped");
    // the other VM's console is untouched
    assert_eq!(greeting(port2 as u16), "RFB 003.008\n");
}

/// AttachIsoToVmInstance on a Running KVM VM inserts the ISO (cached on the host, read-only) into
/// the VM's empty CD-ROM drive, the inventory's CD-ROM shows it; a second ISO is refused
/// (upstream's text), the drive unchanged; DetachIsoFromVmInstance ejects it; an ISO the host
/// cannot get is refused and nothing is recorded. A VM created with `createWithoutCdRom::true`
/// has no drive and AttachIso is refused as upstream refuses it.
#[tokio::test]
async fn iso_on_a_running_kvm_vm() {
    let Some(c) = KvmCloud::setup("console_iso", "ci").await else { return };
    let src = tempfile::Builder::new().prefix("rziso").tempdir().expect("tempdir");
    let iso = iso_image(&c, src.path(), "a").await;
    let iso_u = uuid(&iso);
    let iso2 = uuid(&iso_image(&c, src.path(), "b").await);
    let vm = c.create_vm("iso", json!({})).await;
    let vu = uuid(&vm);
    let sock = c.serial_log(&vu).await.parent().expect("vm dir").join("qmp.sock");
    // an empty drive from the start
    let cd = cdrom(&sock).expect("the VM has a CD-ROM drive");
    assert!(cd.get("inserted").is_none(), "{cd}");
    let cds = vm["vmCdRoms"].as_array().expect("cdroms");
    assert_eq!(cds.len(), 1, "{vm}");
    assert!(cds[0].get("isoUuid").is_none(), "{vm}");

    let r = c.s.ok("POST", &format!("/vm-instances/{vu}/iso/{iso_u}"), Some(json!({"params": {}}))).await;
    let inv = &r["inventory"];
    assert_eq!(inv["state"], "Running");
    assert_eq!(inv["vmCdRoms"][0]["isoUuid"], iso_u.as_str(), "{inv}");
    let cd = cdrom(&sock).expect("drive");
    let ins = &cd["inserted"];
    assert_eq!(ins["ro"], true, "{cd}");
    assert_eq!(cd["tray_open"], false, "{cd}");
    let file = s(&ins["file"]);
    assert_eq!(std::fs::metadata(&file).map(|m| m.len()).ok(), Some(1 << 20), "{file}");
    assert!(file.starts_with(&c.ps_dir.path().display().to_string()), "cached on the host: {file}");

    // the only drive is taken: a second ISO is refused, nothing changes
    let e = c.s.fails("POST", &format!("/vm-instances/{vu}/iso/{iso2}"), Some(json!({"params": {}}))).await;
    assert_error(&e, "SYS.1006", &format!("All vm[uuid:{vu}] CD-ROMs have mounted ISO"));
    assert_eq!(s(&cdrom(&sock).expect("drive")["inserted"]["file"]), file);
    assert_eq!(vm_inv(&c, &vu).await["vmCdRoms"][0]["isoUuid"], iso_u.as_str());

    let r = c.s.ok("DELETE", &format!("/vm-instances/{vu}/iso?isoUuid={iso_u}"), None).await;
    assert!(r["inventory"]["vmCdRoms"][0].get("isoUuid").is_none(), "{r}");
    let cd = cdrom(&sock).expect("drive");
    assert!(cd.get("inserted").is_none(), "the medium is gone: {cd}");
    assert_eq!(cd["tray_open"], false, "{cd}");
    // again: nothing to do
    c.s.ok("DELETE", &format!("/vm-instances/{vu}/iso?isoUuid={iso_u}"), None).await;

    // an ISO whose file left the image store: the host cannot cache it, nothing is recorded
    let src = s(&c.s.query(&format!("/images/{iso2}")).await[0]["backupStorageRefs"][0]["installPath"]);
    std::fs::remove_file(&src).unwrap_or_else(|e| panic!("remove {src}: {e}"));
    let e = c.s.fails("POST", &format!("/vm-instances/{vu}/iso/{iso2}"), Some(json!({"params": {}}))).await;
    assert_eq!(e["code"], "SYS.1006", "{e}");
    assert!(vm_inv(&c, &vu).await["vmCdRoms"][0].get("isoUuid").is_none());
    assert!(cdrom(&sock).expect("drive").get("inserted").is_none());

    // the first ISO goes in again
    let r = c.s.ok("POST", &format!("/vm-instances/{vu}/iso/{iso_u}"), Some(json!({"params": {}}))).await;
    assert_eq!(r["inventory"]["vmCdRoms"][0]["isoUuid"], iso_u.as_str());
    assert_eq!(s(&cdrom(&sock).expect("drive")["inserted"]["file"]), file);

    // the record holds: stopped and started again, QEMU starts with the ISO in the drive; it
    // is ejected from a drive QEMU started with (its node goes too) and inserted again
    let act = format!("/vm-instances/{vu}/actions");
    c.s.ok("PUT", &act, Some(json!({"stopVmInstance": {"type": "cold"}}))).await;
    assert_eq!(c.s.ok("PUT", &act, Some(json!({"startVmInstance": {}}))).await["inventory"]["state"], "Running");
    let cd = cdrom(&sock).expect("drive");
    assert_eq!(s(&cd["inserted"]["file"]), file, "{cd}");
    assert_eq!(cd["inserted"]["node-name"], "cd0", "{cd}");
    let r = c.s.ok("DELETE", &format!("/vm-instances/{vu}/iso"), None).await;
    assert!(r["inventory"]["vmCdRoms"][0].get("isoUuid").is_none(), "{r}");
    assert!(cdrom(&sock).expect("drive").get("inserted").is_none());
    let nodes = qmp(&sock, "query-named-block-nodes", json!({})).expect("nodes");
    assert!(!nodes.as_array().expect("nodes").iter().any(|n| n["node-name"] == "cd0"), "{nodes}");
    let r = c.s.ok("POST", &format!("/vm-instances/{vu}/iso/{iso_u}"), Some(json!({"params": {}}))).await;
    assert_eq!(r["inventory"]["vmCdRoms"][0]["isoUuid"], iso_u.as_str());
    assert_eq!(s(&cdrom(&sock).expect("drive")["inserted"]["file"]), file);

    // a VM without CD-ROM: no drive in QEMU, AttachIso refused as upstream does, nothing changed
    let bare = c.create_vm("bare", json!({"systemTags": ["createWithoutCdRom::true"]})).await;
    let bu = uuid(&bare);
    assert_eq!(bare["vmCdRoms"].as_array().map(Vec::len), Some(0), "{bare}");
    let bsock = c.serial_log(&bu).await.parent().expect("vm dir").join("qmp.sock");
    assert!(cdrom(&bsock).is_none(), "no CD-ROM drive");
    let e = c.s.fails("POST", &format!("/vm-instances/{bu}/iso/{iso_u}"), Some(json!({"params": {}}))).await;
    assert_error(&e, "SYS.1006", &format!("All vm[uuid:{bu}] CD-ROMs have mounted ISO"));
    assert_eq!(vm_inv(&c, &bu).await["vmCdRoms"].as_array().map(Vec::len), Some(0));
    assert!(cdrom(&bsock).is_none());
}
