//! Every API of the facts file's section 7 (prerequisite resources; VM lifecycle excluded)
//! exists at its upstream path and method: none answers 404 `no api mapping`. Creates called
//! with an empty body are accepted (202) and their job fails on the missing or unknown
//! fields (SYS.1007 / SYS.1003); queries answer 200.
mod common;
use common::*;
use serde_json::{json, Value};

const NONE: &str = "0123456789abcdef0123456789abcdef";

#[tokio::test]
async fn every_prerequisite_api_is_mapped_at_its_upstream_path() {
    let s = Server::start().await;
    let n = NONE;
    // (method, path, body key): the async APIs of the table
    let asyncs: Vec<(&str, String, &str)> = vec![
        ("POST", "/zones".into(), "params"),
        ("POST", "/clusters".into(), "params"),
        ("POST", "/hosts/kvm".into(), "params"),
        ("POST", "/l2-networks/no-vlan".into(), "params"),
        ("POST", "/l2-networks/vlan".into(), "params"),
        ("POST", format!("/l2-networks/{n}/clusters/{n}"), "null"),
        ("POST", "/l3-networks".into(), "params"),
        ("POST", format!("/l3-networks/{n}/ip-ranges"), "params"),
        ("POST", format!("/l3-networks/{n}/ip-ranges/by-cidr"), "params"),
        ("POST", format!("/l3-networks/{n}/network-services"), "params"),
        ("POST", "/instance-offerings".into(), "params"),
        ("POST", "/disk-offerings".into(), "params"),
        ("POST", "/backup-storage/sftp".into(), "params"),
        ("POST", "/backup-storage/image-store".into(), "params"),
        ("POST", format!("/zones/{n}/backup-storage/{n}"), "params"),
        ("POST", "/images".into(), "params"),
        ("POST", "/primary-storage/local-storage".into(), "params"),
        ("POST", "/primary-storage/nfs".into(), "params"),
        ("POST", format!("/clusters/{n}/primary-storage/{n}"), "params"),
        ("POST", format!("/volumes/{n}/volume-snapshots"), "params"),
        ("POST", "/ssh-key-pair".into(), "params"),
        ("POST", "/system-tags".into(), "params"),
        ("POST", "/user-tags".into(), "params"),
        ("POST", "/tags".into(), "params"),
        ("POST", format!("/tags/{n}/resources"), "params"),
    ];
    for (method, path, key) in &asyncs {
        let mut body = serde_json::Map::new();
        body.insert(key.to_string(), json!({}));
        let r = s.request(method, path, Some(Value::Object(body)), Some(&s.login().await), &[]).await;
        assert!(!r.text.contains("no api mapping"), "{method} {path}: {} {}", r.status, r.text);
        assert_eq!(r.status, 202, "{method} {path}: {}", r.text);
        let loc = r.body["location"].as_str().expect("location").to_string();
        let done = s.poll(&loc).await;
        assert_eq!(done.status, 503, "{method} {path}: an empty request must fail: {}", done.text);
        let code = done.body["error"]["code"].as_str().unwrap_or_default().to_string();
        assert!(code == "SYS.1007" || code == "SYS.1003", "{method} {path}: {}", done.text);
    }

    // queries: the list form, and the /{uuid} form where upstream has it
    let with_uuid = [
        "/zones",
        "/clusters",
        "/hosts",
        "/l2-networks",
        "/l3-networks",
        "/l3-networks/ip-ranges",
        "/instance-offerings",
        "/disk-offerings",
        "/backup-storage",
        "/images",
        "/volumes",
        "/volume-snapshots",
        "/vm-instances",
        "/vm-instances/nics",
        "/ssh-key-pair",
        "/system-tags",
        "/user-tags",
        "/tags",
        "/accounts",
    ];
    let list_only = ["/primary-storage", "/global-configurations", "/network-services/providers"];
    for p in with_uuid.iter().chain(list_only.iter()) {
        let r = s.get(p).await;
        assert_eq!(r.status, 200, "GET {p}: {}", r.text);
        assert!(r.body["inventories"].is_array(), "GET {p}: {}", r.text);
    }
    for p in with_uuid {
        let r = s.get(&format!("{p}/{n}")).await;
        assert_eq!(r.status, 200, "GET {p}/{{uuid}}: {}", r.text);
        assert_eq!(r.body["inventories"], json!([]), "GET {p}/{{uuid}}: {}", r.text);
    }

    // readiness and version
    let r = s.request("GET", "/management-nodes/ready", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.put("/management-nodes/actions", json!({"getVersion": {}}), Some(&s.login().await)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["version"].is_string(), "{}", r.text);

    // a path that is not an API is still a 404 (the test can fail)
    let r = s.request("POST", "/no-such-things", Some(json!({"params": {}})), Some(&s.login().await), &[]).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("no api mapping"), "{}", r.text);
}
