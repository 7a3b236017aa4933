//! Tag patterns (upstream `TagPatternVO`, the "tag2" APIs) through the public API: CreateTag,
//! QueryTag, UpdateTag, DeleteTag, AttachTagToResources, DetachTagFromResources, and the
//! `tagUuids` of create APIs (CreateZone, CreateVmInstance) putting patterns on the new resource
//! as user tags that QueryUserTag and `__userTag__` see.
mod common;

use common::sim::topology_in;
use common::{assert_error, Server};
use serde_json::{json, Value};

const NONE: &str = "0123456789abcdef0123456789abcdef";
const ADMIN: &str = "36c27e8ff05c4780bf6d2fa65700f22e";

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).to_string()
}

async fn create_tag(srv: &Server, params: Value) -> Value {
    srv.ok("POST", "/tags", Some(json!({ "params": params }))).await["inventory"].clone()
}

async fn attach(srv: &Server, tag: &str, params: Value) -> Value {
    srv.ok("POST", &format!("/tags/{tag}/resources"), Some(json!({ "params": params }))).await
}

#[tokio::test]
async fn create_query_update_delete_tag_patterns() {
    let srv = Server::start().await;
    let web =
        create_tag(&srv, json!({"name": "web", "value": "web", "description": "web tier", "color": "#186EAE"})).await;
    let keys: Vec<&str> = web.as_object().unwrap().keys().map(String::as_str).collect();
    for k in ["uuid", "name", "value", "description", "color", "type", "createDate", "lastOpDate"] {
        assert!(keys.contains(&k), "missing {k}: {web}");
    }
    assert_eq!(web["name"], "web");
    assert_eq!(web["value"], "web");
    assert_eq!(web["description"], "web tier");
    assert_eq!(web["color"], "#186EAE");
    assert_eq!(web["type"], "simple");
    assert!(web["createDate"].is_string() && web["lastOpDate"].is_string(), "{web}");
    let wu = s(&web["uuid"]);
    assert_eq!(wu.len(), 32);

    let owner = create_tag(&srv, json!({"name": "owner", "value": "owner::{name}", "type": "withToken"})).await;
    assert_eq!(owner["type"], "withToken");
    assert_eq!(owner["value"], "owner::{name}");
    let ou = s(&owner["uuid"]);

    // resourceUuid names the new pattern
    let fixed = "0011223344554677a899aabbccddeeff";
    let t = create_tag(&srv, json!({"name": "fixed", "value": "fixed", "resourceUuid": fixed})).await;
    assert_eq!(t["uuid"], fixed);

    // queries: list, by uuid, by condition
    assert_eq!(srv.query("/tags").await.len(), 3);
    let one = srv.query(&format!("/tags/{wu}")).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["name"], "web");
    assert_eq!(one[0]["description"], "web tier");
    assert_eq!(srv.query("/tags?q=type=withToken").await.len(), 1);
    assert_eq!(srv.query("/tags?q=name=owner").await[0]["uuid"], ou.as_str());
    let r = srv.get("/tags?q=type=simple").await;
    assert_eq!(r.body["inventories"].as_array().unwrap().len(), 2);

    // bad creates: upstream codes and texts, nothing made
    let bad: Vec<(Value, &str, String)> = vec![
        (json!({"value": "x"}), "SYS.1007", "name".into()),
        (json!({"name": "x"}), "SYS.1007", "value".into()),
        (json!({"name": "x".repeat(129), "value": "x"}), "SYS.1007", "name".into()),
        (json!({"name": "x", "value": "x", "type": "fancy"}), "SYS.1007", "fancy".into()),
        (
            json!({"name": "x", "value": "x", "color": "red"}),
            "SYS.1007",
            "Invalid color specification[red], must like #FF00FF".into(),
        ),
        (
            json!({"name": "x", "value": "owner", "type": "withToken"}),
            "SYS.1007",
            "Get format[owner], format must like that name::{tokenName1}".into(),
        ),
        (json!({"name": "x", "value": "a::b::{c}", "type": "withToken"}), "SYS.1007", "Get format[a::b::{c}]".into()),
        (
            json!({"name": "x", "value": "x", "tagUuids": [NONE]}),
            "SYS.1003",
            format!("invalid field[tagUuids], resource[uuids:[{NONE}], type:TagPatternVO] not found"),
        ),
    ];
    for (params, code, text) in bad {
        let e = srv.fails("POST", "/tags", Some(json!({ "params": params }))).await;
        assert_error(&e, code, &text);
    }
    // a reused resourceUuid
    let e =
        srv.fails("POST", "/tags", Some(json!({"params": {"name": "y", "value": "y", "resourceUuid": fixed}}))).await;
    assert_error(&e, "SYS.1007", "is already used");
    assert_eq!(srv.query("/tags").await.len(), 3);

    // update: name, description, color
    let u = srv
        .ok(
            "PUT",
            &format!("/tags/{wu}/actions"),
            Some(json!({"updateTag": {"name": "web2", "description": "front", "color": "#00FF00"}})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(
        (u["name"].clone(), u["description"].clone(), u["color"].clone()),
        (json!("web2"), json!("front"), json!("#00FF00"))
    );
    assert_eq!(u["value"], "web");
    assert_eq!(u["createDate"], web["createDate"]);
    // the same value of a simple pattern is no change; a different one is refused
    srv.ok("PUT", &format!("/tags/{wu}/actions"), Some(json!({"updateTag": {"value": "web"}}))).await;
    let e = srv.fails("PUT", &format!("/tags/{wu}/actions"), Some(json!({"updateTag": {"value": "db"}}))).await;
    assert_error(&e, "SYS.1007", "cannot update simple tag pattern format");
    let e = srv.fails("PUT", &format!("/tags/{wu}/actions"), Some(json!({"updateTag": {"color": "#12345"}}))).await;
    assert_error(&e, "SYS.1007", "Invalid color specification[#12345], must like #FF00FF");
    // a withToken pattern: only its token names may change
    let e =
        srv.fails("PUT", &format!("/tags/{ou}/actions"), Some(json!({"updateTag": {"value": "boss::{name}"}}))).await;
    assert_error(&e, "SYS.1007", "you can only update token name");
    let e = srv
        .fails("PUT", &format!("/tags/{ou}/actions"), Some(json!({"updateTag": {"value": "owner::{a}::{b}"}})))
        .await;
    assert_error(&e, "SYS.1007", "you can only update token name");
    let e = srv.fails("PUT", &format!("/tags/{ou}/actions"), Some(json!({"updateTag": {"value": "owner"}}))).await;
    assert_error(&e, "SYS.1007", "Get format[owner]");
    let e = srv.fails("PUT", &format!("/tags/{NONE}/actions"), Some(json!({"updateTag": {"name": "z"}}))).await;
    assert_error(&e, "SYS.1003", &format!("invalid field[uuid], resource[uuid:{NONE}, type:TagPatternVO] not found"));
    let after = srv.query(&format!("/tags/{wu}")).await[0].clone();
    assert_eq!(
        (after["name"].clone(), after["value"].clone(), after["color"].clone()),
        (json!("web2"), json!("web"), json!("#00FF00"))
    );
    assert_eq!(srv.query(&format!("/tags/{ou}")).await[0]["value"], "owner::{name}");
    let u = srv.ok("PUT", &format!("/tags/{ou}/actions"), Some(json!({"updateTag": {"value": "owner::{who}"}}))).await;
    assert_eq!(u["inventory"]["value"], "owner::{who}");

    // delete
    assert_eq!(srv.ok("DELETE", &format!("/tags/{wu}"), None).await, json!({}));
    assert!(srv.query(&format!("/tags/{wu}")).await.is_empty());
    assert_eq!(srv.query("/tags").await.len(), 2);
}

#[tokio::test]
async fn attach_and_detach_patterns_as_user_tags() {
    let srv = Server::start().await;
    let zone = s(&srv.create_zone("z1").await["uuid"]);
    let zone2 = s(&srv.create_zone("z2").await["uuid"]);
    let cluster = s(&srv
        .ok(
            "POST",
            "/clusters",
            Some(json!({"params": {"name": "c", "zoneUuid": zone, "hypervisorType": "Simulator"}})),
        )
        .await["inventory"]["uuid"]);
    let web = s(&create_tag(&srv, json!({"name": "web", "value": "web"})).await["uuid"]);
    let owner =
        s(&create_tag(&srv, json!({"name": "owner", "value": "owner::{name}", "type": "withToken"})).await["uuid"]);

    let r = attach(&srv, &web, json!({"resourceUuids": [zone, cluster]})).await;
    let results = r["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 2, "{r}");
    // the schema names the SDK's classes, each object before its children
    let schema: Vec<(String, Value)> = r["schema"].as_object().expect("schema").clone().into_iter().collect();
    let expect = |k: &str, class: &str| (k.to_string(), json!(class));
    assert_eq!(
        schema,
        vec![
            expect("results[0]", "org.zstack.tag2.AttachTagResult"),
            expect("results[0].inventory", "org.zstack.header.tag.UserTagInventory"),
            expect("results[1]", "org.zstack.tag2.AttachTagResult"),
            expect("results[1].inventory", "org.zstack.header.tag.UserTagInventory"),
        ]
    );
    for (res, (uuid, ty)) in results.iter().zip([(&zone, "ZoneVO"), (&cluster, "ClusterVO")]) {
        assert_eq!(res["success"], true, "{r}");
        let inv = &res["inventory"];
        assert_eq!(inv["resourceUuid"], uuid.as_str(), "{r}");
        assert_eq!(inv["resourceType"], ty);
        assert_eq!(inv["tag"], "web");
        assert_eq!(inv["type"], "User");
        assert_eq!(inv["tagPatternUuid"], web.as_str());
        assert!(inv["uuid"].is_string() && inv["createDate"].is_string(), "{r}");
    }
    // the attachments are user tags
    assert_eq!(srv.query(&format!("/user-tags?q=tagPatternUuid={web}")).await.len(), 2);
    let zones = srv.query("/zones?q=__userTag__=web").await;
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0]["uuid"], zone.as_str());
    assert_eq!(srv.query("/clusters?q=__userTag__=web").await.len(), 1);
    // attaching again changes nothing
    let again = attach(&srv, &web, json!({"resourceUuids": [zone]})).await;
    assert_eq!(again["results"][0]["inventory"]["uuid"], results[0]["inventory"]["uuid"]);
    assert_eq!(srv.query(&format!("/user-tags?q=tagPatternUuid={web}")).await.len(), 2);

    // a withToken pattern takes its tokens
    let r = attach(&srv, &owner, json!({"resourceUuids": [zone2], "tokens": {"name": "alice"}})).await;
    assert_eq!(r["results"][0]["inventory"]["tag"], "owner::alice", "{r}");
    assert_eq!(srv.query("/zones?q=__userTag__=owner::alice").await[0]["uuid"], zone2.as_str());

    // bad attaches: nothing changes
    let before = srv.query("/user-tags").await.len();
    let cases: Vec<(String, Value, &str, String)> = vec![
        (
            web.clone(),
            json!({"resourceUuids": [zone2], "tokens": {"name": "x"}}),
            "SYS.1007",
            "simple tag pattern has no tokens".into(),
        ),
        (owner.clone(), json!({"resourceUuids": [zone]}), "SYS.1007", "all tokens [name] must be specify".into()),
        (
            owner.clone(),
            json!({"resourceUuids": [zone], "tokens": {"other": "x"}}),
            "SYS.1007",
            "all tokens [name] must be specify".into(),
        ),
        (
            web.clone(),
            json!({"resourceUuids": [zone2, NONE]}),
            "SYS.1007",
            format!("resource[uuids:[{NONE}]] is not owned by account[uuid:{ADMIN}]"),
        ),
        (web.clone(), json!({"resourceUuids": []}), "SYS.1007", "resourceUuids".into()),
        (web.clone(), json!({}), "SYS.1007", "resourceUuids".into()),
        (
            NONE.to_string(),
            json!({"resourceUuids": [zone2]}),
            "SYS.1003",
            format!("invalid field[tagUuid], resource[uuid:{NONE}, type:TagPatternVO] not found"),
        ),
    ];
    for (tag, params, code, text) in cases {
        let e = srv.fails("POST", &format!("/tags/{tag}/resources"), Some(json!({ "params": params }))).await;
        assert_error(&e, code, &text);
    }
    assert_eq!(srv.query("/user-tags").await.len(), before);

    // detach one resource
    assert_eq!(srv.ok("DELETE", &format!("/tags/{web}/resources?resourceUuids={zone}"), None).await, json!({}));
    let left = srv.query(&format!("/user-tags?q=tagPatternUuid={web}")).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["resourceUuid"], cluster.as_str());
    assert!(srv.query("/zones?q=__userTag__=web").await.is_empty());
    let e = srv.fails("DELETE", &format!("/tags/{NONE}/resources?resourceUuids={zone}"), None).await;
    assert_error(&e, "SYS.1003", "type:TagPatternVO] not found");
    let e = srv.fails("DELETE", &format!("/tags/{web}/resources"), None).await;
    assert_error(&e, "SYS.1007", "resourceUuids");
    assert_eq!(srv.query(&format!("/user-tags?q=tagPatternUuid={web}")).await.len(), 1);

    // deleting a pattern removes its attachments, not other user tags
    srv.ok(
        "POST",
        "/user-tags",
        Some(json!({"params": {"resourceType": "ClusterVO", "resourceUuid": cluster, "tag": "plain"}})),
    )
    .await;
    srv.ok("DELETE", &format!("/tags/{web}"), None).await;
    assert!(srv.query(&format!("/user-tags?q=tagPatternUuid={web}")).await.is_empty());
    assert_eq!(srv.query(&format!("/user-tags?q=resourceUuid={cluster}")).await[0]["tag"], "plain");
    assert_eq!(srv.query("/zones?q=__userTag__=owner::alice").await.len(), 1);
}

#[tokio::test]
async fn create_apis_put_tag_uuids_on_the_new_resource() {
    let srv = Server::start().await;
    let web = s(&create_tag(&srv, json!({"name": "web", "value": "web"})).await["uuid"]);
    let prod = s(&create_tag(&srv, json!({"name": "prod", "value": "prod"})).await["uuid"]);
    let owner =
        s(&create_tag(&srv, json!({"name": "owner", "value": "owner::{name}", "type": "withToken"})).await["uuid"]);

    // any create API: a zone
    let zone = srv.ok("POST", "/zones", Some(json!({"params": {"name": "z", "tagUuids": [web, prod]}}))).await;
    let zu = s(&zone["inventory"]["uuid"]);
    let tags = srv.query(&format!("/user-tags?q=resourceUuid={zu}")).await;
    let mut got: Vec<(String, String, String)> =
        tags.iter().map(|t| (s(&t["tag"]), s(&t["tagPatternUuid"]), s(&t["resourceType"]))).collect();
    got.sort();
    assert_eq!(got, vec![("prod".into(), prod.clone(), "ZoneVO".into()), ("web".into(), web.clone(), "ZoneVO".into())]);
    assert_eq!(srv.query("/zones?q=__userTag__=prod").await[0]["uuid"], zu.as_str());

    // refused tagUuids: nothing created
    let e = srv.fails("POST", "/zones", Some(json!({"params": {"name": "z2", "tagUuids": [web, NONE]}}))).await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[tagUuids], resource[uuids:[{NONE}], type:TagPatternVO] not found"),
    );
    let e = srv.fails("POST", "/zones", Some(json!({"params": {"name": "z2", "tagUuids": [owner]}}))).await;
    assert_error(&e, "SYS.1007", &format!("illegal tag uuids [{owner}], tag type must be simple,"));
    assert_eq!(srv.query("/zones").await.len(), 1);
    assert_eq!(srv.query("/user-tags").await.len(), 2);

    // CreateVmInstance
    let t = topology_in(&srv, &zu, 1).await;
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm1", "instanceOfferingUuid": t.offering, "imageUuid": t.image,
                "clusterUuid": t.cluster, "tagUuids": [web]}})),
        )
        .await["inventory"]
        .clone();
    let vu = s(&vm["uuid"]);
    assert_eq!(vm["state"], "Running");
    let tags = srv.query(&format!("/user-tags?q=resourceUuid={vu}")).await;
    assert_eq!(tags.len(), 1, "{tags:?}");
    assert_eq!(tags[0]["tag"], "web");
    assert_eq!(tags[0]["resourceType"], "VmInstanceVO");
    assert_eq!(tags[0]["tagPatternUuid"], web.as_str());
    let vms = srv.query("/vm-instances?q=__userTag__=web").await;
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["uuid"], vu.as_str());
    // upstream's `__tagUuid__` condition: the resources carrying a pattern
    let vms = srv.query(&format!("/vm-instances?q=__tagUuid__={web}")).await;
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0]["uuid"], vu.as_str());
    assert!(srv.query(&format!("/vm-instances?q=__tagUuid__={prod}")).await.is_empty());
    assert_eq!(srv.query(&format!("/zones?q=__tagUuid__={prod}")).await[0]["uuid"], zu.as_str());
    assert_eq!(srv.query(&format!("/vm-instances?q=__tagUuid__!={prod}")).await.len(), 1);
    assert!(srv.query(&format!("/vm-instances?q=__tagUuid__!={web}")).await.is_empty());

    // a VM creation that fails leaves no attachment behind
    let user_tags = srv.query("/user-tags").await.len();
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm2", "instanceOfferingUuid": t.offering, "imageUuid": t.image,
                "clusterUuid": t.cluster, "dataDiskSizes": [0], "tagUuids": [prod]}})),
        )
        .await;
    assert_eq!(e["code"], "SYS.1006", "{e}");
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "vm3", "instanceOfferingUuid": t.offering, "imageUuid": t.image,
                "clusterUuid": t.cluster, "tagUuids": [NONE]}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1003",
        &format!("invalid field[tagUuids], resource[uuids:[{NONE}], type:TagPatternVO] not found"),
    );
    assert_eq!(srv.query("/vm-instances").await.len(), 1);
    assert_eq!(srv.query("/user-tags").await.len(), user_tags);
    assert!(srv.query(&format!("/user-tags?q=tagPatternUuid={prod}&q=resourceType=VmInstanceVO")).await.is_empty());

    // the VM's tags go when the VM is expunged
    srv.ok("DELETE", &format!("/vm-instances/{vu}"), None).await;
    srv.ok("PUT", &format!("/vm-instances/{vu}/actions"), Some(json!({"expungeVmInstance": {}}))).await;
    assert!(srv.query(&format!("/user-tags?q=resourceUuid={vu}")).await.is_empty());
}
