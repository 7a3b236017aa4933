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
