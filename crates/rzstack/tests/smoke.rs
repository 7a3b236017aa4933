mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn zone_round_trip() {
    let s = Server::start().await;
    let z = s.create_zone("zone1").await;
    assert_eq!(z["name"], "zone1");
    assert_eq!(z["state"], "Enabled");
    let found = s.query(&format!("/zones/{}", z["uuid"].as_str().unwrap())).await;
    assert_eq!(found.len(), 1);
    let err = s.fails("POST", "/zones", Some(json!({"params": {}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory, can not be null",
    );
    assert_eq!(s.query("/zones").await.len(), 1);
}
