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
