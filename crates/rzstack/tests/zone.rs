//! Zones: the first full resource, through the public API.
mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn create_query_update_state_delete() {
    let s = Server::start().await;
    let r = s
        .job("POST", "/zones", Some(json!({"params": {"name": "zone1", "description": "first", "isDefault": true}})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let z = &r.body["inventory"];
    let uuid = z["uuid"].as_str().unwrap().to_string();
    assert_eq!(uuid.len(), 32);
    assert_eq!(z["name"], "zone1");
    assert_eq!(z["description"], "first");
    assert_eq!(z["state"], "Enabled");
    assert_eq!(z["type"], "zstack");
    assert_eq!(z["isDefault"], true);
    assert!(z["createDate"].as_str().unwrap().ends_with("M"), "{z}");
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.zone.ZoneInventory");

    // A second default zone takes the flag from the first.
    let z2 = s.ok("POST", "/zones", Some(json!({"params": {"name": "zone2", "isDefault": true}}))).await;
    let z2u = z2["inventory"]["uuid"].as_str().unwrap().to_string();
    let defaults = s.query("/zones?q=isDefault=true").await;
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["uuid"], z2u.as_str());

    // Update
    let u = s
        .ok(
            "PUT",
            &format!("/zones/{uuid}/actions"),
            Some(json!({"updateZone": {"name": "renamed", "description": "d2"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "renamed");
    assert_eq!(u["inventory"]["description"], "d2");

    // Change state
    let c = s
        .ok("PUT", &format!("/zones/{uuid}/actions"), Some(json!({"changeZoneState": {"stateEvent": "disable"}})))
        .await;
    assert_eq!(c["inventory"]["state"], "Disabled");
    let err = s
        .fails("PUT", &format!("/zones/{uuid}/actions"), Some(json!({"changeZoneState": {"stateEvent": "pause"}})))
        .await;
    assert_error(&err, "SYS.1007", "valid value for field[stateEvent]");
    assert_eq!(s.query(&format!("/zones/{uuid}")).await[0]["state"], "Disabled");

    // Query forms
    assert_eq!(s.query("/zones?q=name=renamed").await.len(), 1);
    assert_eq!(s.query("/zones?q=state=Enabled").await.len(), 1);
    assert_eq!(s.query("/zones/00000000000000000000000000000000").await.len(), 0);
    let r = s.get("/zones?count=true").await;
    assert_eq!(r.body["total"], 2);
    assert!(r.body.get("inventories").is_none());
    let r = s.get("/zones?replyWithCount=true&limit=1&sort=-createDate").await;
    assert_eq!(r.body["total"], 2);
    assert_eq!(r.body["inventories"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["inventories"][0]["uuid"], z2u.as_str());
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.zone.ZoneInventory");
    let r = s.get("/zones?q=nosuchfield=1").await;
    assert_eq!(r.status, 503);
    assert_error(
        &r.body["error"],
        "SYS.1000",
        "inventory class[class org.zstack.header.zone.ZoneInventory] not having field[nosuchfield]",
    );
    let r = s.get("/zones?sort=-nosuchfield").await;
    assert_error(
        &r.body["error"],
        "SYS.1000",
        "invalid order by clause, inventory[ZoneInventory] doesn't have field[nosuchfield]",
    );
    let r = s.get("/zones?limit=1&limit=2").await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text,
        "Invalid query parameter[limit], only one value is allowed for the parameter but multiple values found"
    );
    // An empty value is a condition on the empty string, not an error.
    assert_eq!(s.query("/zones?q=name=").await.len(), 0);
    let err = s.fails("POST", "/zones", Some(json!({"params": {"name": "bad/name"}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        r#"valid regex value for field[name] of message[org.zstack.header.message.ApiMessageParamValidator] are ^(?! )[\u4e00-\u9fa5a-zA-Z0-9\-_.():+" ]*(?<! )$, but bad/name found"#,
    );

    // Delete, then deleting again succeeds (the resource is gone), and a malformed uuid does not.
    let d = s.ok("DELETE", &format!("/zones/{uuid}?deleteMode=Permissive"), None).await;
    assert_eq!(d, json!({}));
    assert_eq!(s.query(&format!("/zones/{uuid}")).await.len(), 0);
    s.ok("DELETE", &format!("/zones/{uuid}"), None).await;
    let err = s.fails("DELETE", "/zones/not-a-uuid", None).await;
    assert_error(&err, "SYS.1003", "invalid value[not-a-uuid] of field [uuid]");
}

#[tokio::test]
async fn bad_inputs_change_nothing() {
    let s = Server::start().await;
    let z = s.create_zone("zone1").await;
    let uuid = z["uuid"].as_str().unwrap();

    let err = s.fails("POST", "/zones", Some(json!({"params": {"description": "no name"}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory, can not be null",
    );
    let long = "x".repeat(256);
    let err = s.fails("POST", "/zones", Some(json!({"params": {"name": long}}))).await;
    assert_error(&err, "SYS.1007", "exceeds max length of string. expected was <= 255, actual was 256");
    let err = s.fails("POST", "/zones", Some(json!({"params": {"name": "z", "resourceUuid": "not-valid"}}))).await;
    assert_error(&err, "SYS.1007", "resourceUuid[not-valid] is not a valid uuid");
    let err = s
        .fails("PUT", "/zones/0123456789abcdef0123456789abcdef/actions", Some(json!({"updateZone": {"name": "x"}})))
        .await;
    assert_error(
        &err,
        "SYS.1003",
        "invalid field[uuid], resource[uuid:0123456789abcdef0123456789abcdef, type:ZoneVO] not found",
    );
    let r = s
        .request(
            "POST",
            "/zones",
            Some(json!({"params": {"name": "z", "isDefault": "perhaps"}})),
            Some(&s.session),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text,
        "Invalid value for boolean field [isDefault], [perhaps] is not a valid boolean string[true, false]."
    );

    let zones = s.query("/zones").await;
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0]["name"], "zone1");
    assert_eq!(zones[0]["uuid"], uuid);
}

#[tokio::test]
async fn resource_uuid_is_honoured() {
    let s = Server::start().await;
    let want = "3f1e2d4c5b6a47889a0b1c2d3e4f5a6b";
    let z = s.ok("POST", "/zones", Some(json!({"params": {"name": "z", "resourceUuid": want}}))).await;
    assert_eq!(z["inventory"]["uuid"], want);
}

#[tokio::test]
async fn reused_resource_uuid_is_refused() {
    let s = Server::start().await;
    let want = "4f1e2d4c5b6a47889a0b1c2d3e4f5a6b";
    s.ok("POST", "/zones", Some(json!({"params": {"name": "a", "resourceUuid": want}}))).await;
    let err = s.fails("POST", "/zones", Some(json!({"params": {"name": "b", "resourceUuid": want}}))).await;
    assert_error(&err, "SYS.1007", "is already used");
    let zones = s.query("/zones").await;
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0]["name"], "a");
}
