//! Offerings, tags and SSH key pairs through the public API.
mod common;
use common::*;
use serde_json::{json, Value};

const GIB: i64 = 1024 * 1024 * 1024;

async fn create_io(s: &Server, params: Value) -> Value {
    s.ok("POST", "/instance-offerings", Some(json!({ "params": params }))).await["inventory"].clone()
}

#[tokio::test]
async fn instance_offering_lifecycle() {
    let s = Server::start().await;
    let r = s
        .job(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "small", "description": "1c1g", "cpuNum": 1, "memorySize": GIB,
                "reservedMemorySize": 1024, "sortKey": 7},
                "systemTags": ["instanceOfferingUserConfig::{}"], "userTags": ["web"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let o = &r.body["inventory"];
    let uuid = o["uuid"].as_str().unwrap().to_string();
    assert_eq!(o["name"], "small");
    assert_eq!(o["description"], "1c1g");
    assert_eq!(o["cpuNum"], 1);
    assert_eq!(o["cpuSpeed"], 0);
    assert_eq!(o["memorySize"], GIB);
    assert_eq!(o["reservedMemorySize"], 1024);
    assert_eq!(o["type"], "UserVm");
    assert_eq!(o["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
    // upstream does not take sortKey from the create message
    assert_eq!(o["sortKey"], 0);
    assert_eq!(o["state"], "Enabled");
    assert!(o["createDate"].as_str().unwrap().ends_with('M'));
    assert!(o["lastOpDate"].is_string());
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.configuration.InstanceOfferingInventory");

    // the create message's tags are on the offering
    let st = s.query(&format!("/system-tags?q=resourceUuid={uuid}")).await;
    assert_eq!(st.len(), 1);
    assert_eq!(st[0]["tag"], "instanceOfferingUserConfig::{}");
    assert_eq!(st[0]["resourceType"], "InstanceOfferingVO");
    assert_eq!(st[0]["inherent"], false);
    let ut = s.query(&format!("/user-tags?q=resourceUuid={uuid}")).await;
    assert_eq!(ut.len(), 1);
    assert_eq!(ut[0]["tag"], "web");
    assert_eq!(s.query("/instance-offerings?q=__userTag__=web").await.len(), 1);

    let big = create_io(
        &s,
        json!({"name": "big", "cpuNum": 8, "memorySize": 16 * GIB, "allocatorStrategy": "DefaultHostAllocatorStrategy"}),
    )
    .await;
    assert_eq!(big["allocatorStrategy"], "DefaultHostAllocatorStrategy");
    assert_eq!(big["reservedMemorySize"], 0);

    // query forms
    assert_eq!(s.query("/instance-offerings").await.len(), 2);
    assert_eq!(s.query("/instance-offerings?q=cpuNum>4").await[0]["name"], "big");
    assert_eq!(s.query(&format!("/instance-offerings/{uuid}")).await[0]["name"], "small");
    let r = s.get("/instance-offerings?q=memorySize>=1073741824&replyWithCount=true").await;
    assert_eq!(r.body["total"], 2);
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.configuration.InstanceOfferingInventory");

    // update
    let path = format!("/instance-offerings/{uuid}/actions");
    let u = s
        .ok(
            "PUT",
            &path,
            Some(json!({"updateInstanceOffering": {"name": "small2", "description": "d",
                "allocatorStrategy": "LastHostPreferredAllocatorStrategy"}})),
        )
        .await;
    assert_eq!(u["inventory"]["name"], "small2");
    assert_eq!(u["inventory"]["description"], "d");
    assert_eq!(u["inventory"]["allocatorStrategy"], "LastHostPreferredAllocatorStrategy");
    let err = s.fails("PUT", &path, Some(json!({"updateInstanceOffering": {"allocatorStrategy": "Nope"}}))).await;
    assert_error(&err, "SYS.1007", "unsupported host allocation strategy[Nope]");
    assert_eq!(
        s.query(&format!("/instance-offerings/{uuid}")).await[0]["allocatorStrategy"],
        "LastHostPreferredAllocatorStrategy"
    );

    // state
    let c = s.ok("PUT", &path, Some(json!({"changeInstanceOfferingState": {"stateEvent": "disable"}}))).await;
    assert_eq!(c["inventory"]["state"], "Disabled");
    let err = s.fails("PUT", &path, Some(json!({"changeInstanceOfferingState": {"stateEvent": "off"}}))).await;
    assert_error(&err, "SYS.1007", "valid value for field[stateEvent]");
    assert_eq!(s.query(&format!("/instance-offerings/{uuid}")).await[0]["state"], "Disabled");
    let c = s.ok("PUT", &path, Some(json!({"changeInstanceOfferingState": {"stateEvent": "enable"}}))).await;
    assert_eq!(c["inventory"]["state"], "Enabled");

    // unknown uuid
    let err = s
        .fails(
            "PUT",
            "/instance-offerings/00000000000000000000000000000001/actions",
            Some(json!({"updateInstanceOffering": {"name": "x"}})),
        )
        .await;
    assert_error(&err, "SYS.1003", "type:InstanceOfferingVO] not found");

    // delete: its tags go with it; deleting again succeeds
    assert_eq!(s.ok("DELETE", &format!("/instance-offerings/{uuid}"), None).await, json!({}));
    assert!(s.query(&format!("/instance-offerings/{uuid}")).await.is_empty());
    assert!(s.query(&format!("/system-tags?q=resourceUuid={uuid}")).await.is_empty());
    assert!(s.query(&format!("/user-tags?q=resourceUuid={uuid}")).await.is_empty());
    s.ok("DELETE", &format!("/instance-offerings/{uuid}"), None).await;
    assert_eq!(s.query("/instance-offerings").await.len(), 1);
}

#[tokio::test]
async fn instance_offering_bad_inputs_change_nothing() {
    let s = Server::start().await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"cpuNum": 1, "memorySize": GIB}), "SYS.1007", "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory"),
        (json!({"name": "x", "memorySize": GIB}), "SYS.1007", "field[cpuNum] must be in range of [1, 1024]"),
        (json!({"name": "x", "cpuNum": 0, "memorySize": GIB}), "SYS.1007", "field[cpuNum] must be in range of [1, 1024]"),
        (json!({"name": "x", "cpuNum": 1025, "memorySize": GIB}), "SYS.1007", "field[cpuNum] must be in range of [1, 1024]"),
        (json!({"name": "x", "cpuNum": 1}), "SYS.1007", "field[memorySize] must be in range of [1 byte, 9223372036854775807 bytes]"),
        (json!({"name": "x", "cpuNum": 1, "memorySize": 0}), "SYS.1007", "field[memorySize] must be in range of [1 byte, 9223372036854775807 bytes]"),
        (json!({"name": "x", "cpuNum": 1, "memorySize": GIB, "reservedMemorySize": -1}), "SYS.1007", "field[reservedMemorySize] must be in range of [0 byte, 9223372036854775807 bytes]"),
        (json!({"name": "x", "cpuNum": 1, "memorySize": 1024}), "SYS.1007", "memory size[1024 bytes] is less than 16M, no modern operating system is likely able to boot with such small memory size"),
        (json!({"name": "x", "cpuNum": 1, "memorySize": GIB, "reservedMemorySize": 2 * GIB}), "SYS.1007", "reserved memory size[2147483648 bytes] is greater than memory size[1073741824 bytes]"),
        (json!({"name": "x", "cpuNum": 1, "memorySize": GIB, "allocatorStrategy": "Best"}), "SYS.1007", "unsupported host allocation strategy[Best]"),
        (json!({"name": "x", "cpuNum": 1, "memorySize": GIB, "type": "Pod"}), "SYS.1007", "unsupported instance offering type[Pod]"),
        (json!({"name": "x".repeat(256), "cpuNum": 1, "memorySize": GIB}), "SYS.1007", "exceeds max length of string. expected was <= 255, actual was 256"),
    ];
    for (params, code, text) in cases {
        let err = s.fails("POST", "/instance-offerings", Some(json!({ "params": params }))).await;
        assert_error(&err, code, text);
    }
    let err = s
        .fails(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "x", "cpuNum": 1, "memorySize": GIB}, "systemTags": ["bogus::tag"]})),
        )
        .await;
    assert_error(&err, "SYS.1007", "no system tag matches bogus::tag");
    // REST-level type check
    let r = s
        .request(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "x", "cpuNum": "two", "memorySize": GIB}})),
            Some(&s.session),
            &[],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text, "[cpuNum] field is excepted an int or long, but was [two].");
    assert!(s.query("/instance-offerings").await.is_empty());
    assert!(s.query("/system-tags?q=resourceType=InstanceOfferingVO").await.is_empty());
}

#[tokio::test]
async fn disk_offering_lifecycle_and_bad_inputs() {
    let s = Server::start().await;
    let r = s
        .job(
            "POST",
            "/disk-offerings",
            Some(json!({"params": {"name": "data", "description": "10G", "diskSize": 10 * GIB, "sortKey": 3}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let d = &r.body["inventory"];
    let uuid = d["uuid"].as_str().unwrap().to_string();
    assert_eq!(d["name"], "data");
    assert_eq!(d["description"], "10G");
    assert_eq!(d["diskSize"], 10 * GIB);
    assert_eq!(d["sortKey"], 3);
    assert_eq!(d["state"], "Enabled");
    assert_eq!(d["type"], "DefaultDiskOfferingType");
    assert_eq!(d["allocatorStrategy"], "DefaultPrimaryStorageAllocationStrategy");
    assert!(d["createDate"].is_string() && d["lastOpDate"].is_string());
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.configuration.DiskOfferingInventory");

    let d2 = s
        .ok(
            "POST",
            "/disk-offerings",
            Some(json!({"params": {"name": "one-byte", "diskSize": 1,
                "allocationStrategy": "LeastVolumePrimaryStorageAllocationStrategy", "type": "zstack"}})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(d2["allocatorStrategy"], "LeastVolumePrimaryStorageAllocationStrategy");
    assert_eq!(d2["type"], "zstack");

    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"diskSize": 1}), "SYS.1007", "field[name] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory"),
        (json!({"name": "x"}), "SYS.1007", "field[diskSize] must be in range of [1 byte, 9223372036854775807 bytes]"),
        (json!({"name": "x", "diskSize": 0}), "SYS.1007", "field[diskSize] must be in range of [1 byte, 9223372036854775807 bytes]"),
        (json!({"name": "x", "diskSize": 1, "type": "ceph"}), "SYS.1007", "valid value for field[type] of message[org.zstack.header.message.ApiMessageParamValidator] are [zstack], but ceph found"),
        (json!({"name": "x", "diskSize": 1, "allocationStrategy": "Any"}), "SYS.1007", "unsupported primary storage allocation strategy[Any]"),
    ];
    for (params, code, text) in cases {
        let err = s.fails("POST", "/disk-offerings", Some(json!({ "params": params }))).await;
        assert_error(&err, code, text);
    }
    assert_eq!(s.query("/disk-offerings").await.len(), 2);

    let path = format!("/disk-offerings/{uuid}/actions");
    let u = s.ok("PUT", &path, Some(json!({"updateDiskOffering": {"name": "data2", "description": "x"}}))).await;
    assert_eq!(u["inventory"]["name"], "data2");
    assert_eq!(u["inventory"]["description"], "x");
    assert_eq!(u["inventory"]["diskSize"], 10 * GIB);
    let err = s.fails("PUT", &path, Some(json!({"updateDiskOffering": {"name": "n".repeat(256)}}))).await;
    assert_error(&err, "SYS.1007", "exceeds max length of string");
    assert_eq!(s.query(&format!("/disk-offerings/{uuid}")).await[0]["name"], "data2");

    let c = s.ok("PUT", &path, Some(json!({"changeDiskOfferingState": {"stateEvent": "disable"}}))).await;
    assert_eq!(c["inventory"]["state"], "Disabled");
    assert_eq!(s.query("/disk-offerings?q=state=Disabled").await.len(), 1);
    let err = s.fails("PUT", &path, Some(json!({"changeDiskOfferingState": {}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        "field[stateEvent] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
    );

    assert_eq!(s.ok("DELETE", &format!("/disk-offerings/{uuid}"), None).await, json!({}));
    assert!(s.query(&format!("/disk-offerings/{uuid}")).await.is_empty());
    s.ok("DELETE", &format!("/disk-offerings/{uuid}"), None).await;
    let err = s.fails("DELETE", "/disk-offerings/bad-uuid", None).await;
    assert_error(&err, "SYS.1003", "invalid value[bad-uuid] of field [uuid]");
    assert_eq!(s.query("/disk-offerings").await.len(), 1);
}

const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOxFeyLzCdEdY1Fym2CiRd7M/lSH9rq4Bf3CCv8FtZty u@h";
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDDDxlV6Lr7GF4QXu0LcTdKwFXUTvftAaic3/jepCfkj3ioNc5rurGT2PwNxPvw1v36Ty4yoTiwcHOj7MAuYQD4aPVWXebQXDjJ+8u76vbr+kZ8XNQZmvoz/Kd7Y2ePH9/pfZgRYPwo3+e66STv5oaJtT3hGF1CgdQ16ahaDywGCw== r@h";

#[tokio::test]
async fn ssh_key_pairs() {
    let s = Server::start().await;
    let r = s
        .job(
            "POST",
            "/ssh-key-pair",
            Some(json!({"params": {"name": "my key (1)", "description": "laptop", "publicKey": ED25519}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let k = &r.body["inventory"];
    let uuid = k["uuid"].as_str().unwrap().to_string();
    assert_eq!(k["name"], "my key (1)");
    assert_eq!(k["description"], "laptop");
    assert_eq!(k["publicKey"], ED25519);
    assert!(k["createDate"].is_string() && k["lastOpDate"].is_string());
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.sshkeypair.SshKeyPairInventory");
    let rsa = s.ok("POST", "/ssh-key-pair", Some(json!({"params": {"name": "rsa", "publicKey": RSA}}))).await;
    assert_eq!(rsa["inventory"]["publicKey"], RSA);

    let cases: Vec<(Value, &str, String)> = vec![
        (json!({"name": "again", "publicKey": ED25519}), "SYS.1007", "The sshKeyPair already upload".into()),
        (json!({"name": "bad", "publicKey": "ssh-rsa not-base64"}), "SYS.1006", "failed to load the public key: ssh-rsa not-base64, err: ".into()),
        (json!({"name": "bad", "publicKey": "hello world"}), "SYS.1006", "failed to load the public key: hello world".into()),
        (json!({"name": "a/b", "publicKey": RSA}), "SYS.1007",
            "valid regex value for field[name] of message[org.zstack.header.message.ApiMessageParamValidator] are ^[\\u4e00-\\u9fa5a-zA-Z0-9\\s()（）【】@._+-]+$, but a/b found".into()),
        (json!({"name": "x"}), "SYS.1007", "field[publicKey] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory".into()),
        (json!({"name": "x", "publicKey": "k".repeat(4097)}), "SYS.1007", "field[publicKey] of message[org.zstack.header.message.ApiMessageParamValidator] exceeds max length of string. expected was <= 4096, actual was 4097".into()),
    ];
    for (params, code, text) in cases {
        let err = s.fails("POST", "/ssh-key-pair", Some(json!({ "params": params }))).await;
        assert_error(&err, code, &text);
    }
    assert_eq!(s.query("/ssh-key-pair").await.len(), 2);
    assert_eq!(s.query("/ssh-key-pair?q=name=rsa").await.len(), 1);
    assert_eq!(s.query(&format!("/ssh-key-pair/{uuid}")).await[0]["publicKey"], ED25519);

    let path = format!("/ssh-key-pair/{uuid}/actions");
    let u = s.ok("PUT", &path, Some(json!({"updateSshKeyPair": {"name": "renamed", "description": "d"}}))).await;
    assert_eq!(u["inventory"]["name"], "renamed");
    assert_eq!(u["inventory"]["description"], "d");
    let err = s.fails("PUT", &path, Some(json!({"updateSshKeyPair": {"name": "no/slash"}}))).await;
    assert_error(&err, "SYS.1007", "valid regex value for field[name]");
    assert_eq!(s.query(&format!("/ssh-key-pair/{uuid}")).await[0]["name"], "renamed");

    assert_eq!(s.ok("DELETE", &format!("/ssh-key-pair/{uuid}"), None).await, json!({}));
    assert!(s.query(&format!("/ssh-key-pair/{uuid}")).await.is_empty());
    // upstream has no successIfResourceNotExisting here
    let err = s.fails("DELETE", &format!("/ssh-key-pair/{uuid}"), None).await;
    assert_error(&err, "SYS.1003", &format!("invalid field[uuid], resource[uuid:{uuid}, type:SshKeyPairVO] not found"));
    // the key can be uploaded again once deleted
    s.ok("POST", "/ssh-key-pair", Some(json!({"params": {"name": "back", "publicKey": ED25519}}))).await;
    assert_eq!(s.query("/ssh-key-pair").await.len(), 2);
}

#[tokio::test]
async fn system_and_user_tags() {
    let s = Server::start().await;
    let zone = s.create_zone("z").await["uuid"].as_str().unwrap().to_string();
    let z2 = s.create_zone("z2").await["uuid"].as_str().unwrap().to_string();
    let disk = s.ok("POST", "/disk-offerings", Some(json!({"params": {"name": "d", "diskSize": GIB}}))).await
        ["inventory"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();

    // user tags: any managed resource type
    let r = s
        .job(
            "POST",
            "/user-tags",
            Some(json!({"params": {"resourceType": "ZoneVO", "resourceUuid": zone, "tag": "prod"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = &r.body["inventory"];
    let ut = t["uuid"].as_str().unwrap().to_string();
    assert_eq!(t["resourceUuid"], zone.as_str());
    assert_eq!(t["resourceType"], "ZoneVO");
    assert_eq!(t["tag"], "prod");
    assert_eq!(t["type"], "User");
    assert!(t["createDate"].is_string() && t["lastOpDate"].is_string());
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.tag.UserTagInventory");
    let zones = s.query("/zones?q=__userTag__=prod").await;
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0]["uuid"], zone.as_str());
    assert_eq!(s.query("/zones?q=__userTag__~=pr%").await.len(), 1);
    // a negative tag condition selects the resources without such a tag (upstream NOT IN)
    let untagged = s.query("/zones?q=__userTag__!=prod").await;
    assert_eq!(untagged.len(), 1);
    assert_eq!(untagged[0]["uuid"], z2.as_str());
    assert_eq!(s.query("/zones?q=__userTag__!?=prod,dev").await.len(), 1);
    assert_eq!(s.query("/zones?q=__userTag__!~=pr%").await[0]["uuid"], z2.as_str());
    let r = s.get("/user-tags?q=tag=prod").await;
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.tag.UserTagInventory");

    let bad: Vec<(Value, &str, String)> = vec![
        (
            json!({"resourceType": "ZoneVO", "resourceUuid": zone, "tag": "prod"}),
            "SYS.1006",
            format!("Duplicated Tag[tag:prod, type:User, resourceType:ZoneVO, resourceUuid:{zone}]"),
        ),
        (
            json!({"resourceType": "NopeVO", "resourceUuid": zone, "tag": "x"}),
            "SYS.1007",
            "no resource type[NopeVO] found in tag system".into(),
        ),
        (
            json!({"resourceType": "ZoneVO", "resourceUuid": "0123456789abcdef0123456789abcdef", "tag": "x"}),
            "SYS.1003",
            "invalid field[resourceUuid], resource[uuid:0123456789abcdef0123456789abcdef, type:ResourceVO] not found"
                .into(),
        ),
        (
            json!({"resourceType": "ZoneVO", "resourceUuid": zone}),
            "SYS.1007",
            "field[tag] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory".into(),
        ),
        (
            json!({"resourceUuid": zone, "tag": "x"}),
            "SYS.1007",
            "field[resourceType] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory".into(),
        ),
    ];
    for (params, code, text) in bad {
        let err = s.fails("POST", "/user-tags", Some(json!({ "params": params }))).await;
        assert_error(&err, code, &text);
    }
    assert_eq!(s.query("/user-tags").await.len(), 1);

    // system tags: only patterns registered for the type, on a resource of that type
    let r = s
        .job(
            "POST",
            "/system-tags",
            Some(json!({"params": {"resourceType": "DiskOfferingVO", "resourceUuid": disk, "tag": "diskOfferingUserConfig::{\"a\":1}"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = &r.body["inventory"];
    let st = t["uuid"].as_str().unwrap().to_string();
    assert_eq!(t["resourceType"], "DiskOfferingVO");
    assert_eq!(t["type"], "System");
    assert_eq!(t["inherent"], false);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.tag.SystemTagInventory");
    assert_eq!(s.query("/disk-offerings?q=__systemTag__~=diskOfferingUserConfig::%").await.len(), 1);
    // the same tag again: upstream answers without an inventory and adds nothing
    let again = s
        .ok(
            "POST",
            "/system-tags",
            Some(json!({"params": {"resourceType": "DiskOfferingVO", "resourceUuid": disk, "tag": "diskOfferingUserConfig::{\"a\":1}"}})),
        )
        .await;
    assert!(again.get("inventory").is_none(), "{again}");
    let bad: Vec<(Value, &str, String)> = vec![
        (
            json!({"resourceType": "DiskOfferingVO", "resourceUuid": disk, "tag": "color::red"}),
            "SYS.1007",
            "no system tag matches[color::red] for resourceType[DiskOfferingVO]".into(),
        ),
        (
            json!({"resourceType": "ZoneVO", "resourceUuid": zone, "tag": "diskOfferingUserConfig::x"}),
            "SYS.1007",
            "no system tag matches[diskOfferingUserConfig::x] for resourceType[ZoneVO]".into(),
        ),
        (
            json!({"resourceType": "InstanceOfferingVO", "resourceUuid": disk, "tag": "instanceOfferingUserConfig::x"}),
            "SYS.1007",
            "The argument :'resourceType' doesn't match uuid".into(),
        ),
        (
            json!({"resourceType": "BogusVO", "resourceUuid": disk, "tag": "x"}),
            "SYS.1007",
            "no resource type[BogusVO] found in tag system".into(),
        ),
    ];
    for (params, code, text) in bad {
        let err = s.fails("POST", "/system-tags", Some(json!({ "params": params }))).await;
        assert_error(&err, code, &text);
    }
    assert_eq!(s.query("/system-tags?q=resourceType=DiskOfferingVO").await.len(), 1);
    assert!(s.query(&format!("/system-tags?q=resourceUuid={z2}")).await.is_empty());

    // update a system tag
    let path = format!("/system-tags/{st}/actions");
    let u = s.ok("PUT", &path, Some(json!({"updateSystemTag": {"tag": "diskOfferingUserConfig::{}"}}))).await;
    assert_eq!(u["inventory"]["tag"], "diskOfferingUserConfig::{}");
    let err = s.fails("PUT", &path, Some(json!({"updateSystemTag": {"tag": "nothing"}}))).await;
    assert_error(&err, "SYS.1007", "no system tag matches[nothing] for resourceType[DiskOfferingVO]");
    let err = s.fails("PUT", &path, Some(json!({"updateSystemTag": {}}))).await;
    assert_error(
        &err,
        "SYS.1007",
        "field[tag] of message[org.zstack.header.message.ApiMessageParamValidator] is mandatory",
    );
    let err = s
        .fails(
            "PUT",
            &format!("/system-tags/{ut}/actions"),
            Some(json!({"updateSystemTag": {"tag": "diskOfferingUserConfig::{}"}})),
        )
        .await;
    assert_error(&err, "SYS.1003", "type:SystemTagVO] not found");
    assert_eq!(s.query(&format!("/system-tags?q=uuid={st}")).await[0]["tag"], "diskOfferingUserConfig::{}");

    // delete: user and system tags through one API; an unknown uuid succeeds
    assert_eq!(s.ok("DELETE", &format!("/tags/{ut}"), None).await, json!({}));
    assert!(s.query("/user-tags").await.is_empty());
    assert!(s.query("/zones?q=__userTag__=prod").await.is_empty());
    s.ok("DELETE", &format!("/tags/{st}"), None).await;
    assert!(s.query("/system-tags?q=resourceType=DiskOfferingVO").await.is_empty());
    s.ok("DELETE", &format!("/tags/{st}"), None).await;
    let err = s.fails("DELETE", "/tags/x?deleteMode=Sometimes", None).await;
    assert_error(&err, "SYS.1007", "valid value for field[deleteMode]");
}
