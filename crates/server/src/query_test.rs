use super::*;
use crate::db::{Db, Val};

static NIC: ResourceDef = ResourceDef {
    inventory: "NicInventory",
    vo: "NicVO",
    class: "test.NicInventory",
    table: "t_nic",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("vmUuid", "vm_uuid", FType::Str),
        field("ip", "ip", FType::Str),
        field("deviceId", "device_id", FType::Int),
    ],
    children: &[],
    class_of: None,
    order: "t.device_id, t.uuid",
    tag_type: None,
};

static VM: ResourceDef = ResourceDef {
    inventory: "VmInventory",
    vo: "VmVO",
    class: "test.VmInventory",
    table: "t_vm",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("cpuNum", "cpu_num", FType::Int),
        field("ratio", "ratio", FType::Float),
        field("ha", "ha", FType::Bool),
        field("createDate", "create_date", FType::Date),
    ],
    children: &[Child { name: "vmNics", def: &NIC, fk: "vm_uuid", pk: "uuid", many: true }],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: None,
};

/// A fresh database: PostgreSQL when RZSTACK_TEST_DATABASE_URL is set, else SQLite.
async fn setup() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let url = match std::env::var("RZSTACK_TEST_DATABASE_URL").ok().filter(|s| !s.is_empty()) {
        Some(base) => {
            let admin = Db::connect(&base).await.unwrap();
            let name = format!("rzq_{}", crate::util::new_uuid());
            admin.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
            admin.close().await;
            format!("{}/{name}", base.rsplit_once('/').unwrap().0)
        }
        None => format!("sqlite://{}/q.db", dir.path().display()),
    };
    let db = Db::connect(&url).await.unwrap();
    db.execute(
        "CREATE TABLE t_vm (uuid TEXT PRIMARY KEY, name TEXT, description TEXT, cpu_num BIGINT, ratio DOUBLE PRECISION, ha BIGINT, create_date BIGINT)",
        &[],
    )
    .await
    .unwrap();
    db.execute("CREATE TABLE t_nic (uuid TEXT PRIMARY KEY, vm_uuid TEXT, ip TEXT, device_id BIGINT)", &[])
        .await
        .unwrap();
    for i in 0..10i64 {
        db.execute(
            "INSERT INTO t_vm VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                Val::S(format!("vm{i}")),
                Val::S(format!("name-{i}")),
                if i % 2 == 0 { Val::Null } else { Val::S("odd".into()) },
                Val::I(i),
                Val::F(i as f64 / 2.0),
                Val::from(i % 3 == 0),
                Val::I(1_510_669_257_000 + i * 1000),
            ],
        )
        .await
        .unwrap();
        for d in 0..2i64 {
            db.execute(
                "INSERT INTO t_nic VALUES ($1, $2, $3, $4)",
                &[Val::S(format!("nic{i}-{d}")), Val::S(format!("vm{i}")), Val::S(format!("10.0.{d}.{i}")), Val::I(d)],
            )
            .await
            .unwrap();
        }
    }
    (dir, db)
}

async fn names(db: &Db, qs: &str) -> Vec<String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(qs.as_bytes()).into_owned().collect();
    let qp = parse_params(&pairs).unwrap();
    run(db, &VM, &qp)
        .await
        .unwrap()
        .inventories
        .unwrap()
        .iter()
        .map(|v| v["uuid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_operator_and_option() {
    let (_d, db) = setup().await;
    assert_eq!(names(&db, "q=name=name-3").await, ["vm3"]);
    assert_eq!(names(&db, "q=cpuNum!=0&q=cpuNum<3").await, ["vm1", "vm2"]);
    assert_eq!(names(&db, "q=cpuNum>=8").await, ["vm8", "vm9"]);
    assert_eq!(names(&db, "q=cpuNum<=1").await, ["vm0", "vm1"]);
    assert_eq!(names(&db, "q=cpuNum>8").await, ["vm9"]);
    assert_eq!(names(&db, "q=uuid?=vm1,vm4").await, ["vm1", "vm4"]);
    assert_eq!(names(&db, "q=cpuNum!?=0,1,2,3,4,5,6,7").await, ["vm8", "vm9"]);
    assert_eq!(names(&db, "q=name~=name-1%").await, ["vm1"]);
    assert_eq!(names(&db, "q=name!~=name-%").await, Vec::<String>::new());
    assert_eq!(names(&db, "q=description is null&q=cpuNum<4").await, ["vm0", "vm2"]);
    assert_eq!(names(&db, "q=description not null&q=cpuNum<4").await, ["vm1", "vm3"]);
    assert_eq!(names(&db, "q=ha=true").await, ["vm0", "vm3", "vm6", "vm9"]);
    assert_eq!(names(&db, "q=ratio>4").await, ["vm9"]);
    assert_eq!(names(&db, "q=createDate>Nov 14, 2017 2:21:05 PM").await, ["vm9"]);
    // nested: a condition on a child inventory
    assert_eq!(names(&db, "q=vmNics.ip=10.0.1.7").await, ["vm7"]);
    assert_eq!(names(&db, "q=vmNics.deviceId>0&q=cpuNum<2").await, ["vm0", "vm1"]);
    // paging and sorting
    assert_eq!(names(&db, "limit=2&start=3").await, ["vm3", "vm4"]);
    assert_eq!(names(&db, "sort=-cpuNum&limit=2").await, ["vm9", "vm8"]);
    assert_eq!(names(&db, "sort=%2BcpuNum&limit=1").await, ["vm0"]);
    assert_eq!(names(&db, "sort=+cpuNum&limit=1").await, ["vm0"]);
}

#[tokio::test]
async fn count_fields_children_and_errors() {
    let (_d, db) = setup().await;
    let pairs = vec![("q".to_string(), "cpuNum>4".to_string()), ("count".to_string(), "true".to_string())];
    let r = run(&db, &VM, &parse_params(&pairs).unwrap()).await.unwrap();
    assert_eq!(r.total, Some(5));
    assert!(r.inventories.is_none());

    let pairs = vec![
        ("q".to_string(), "cpuNum>4".to_string()),
        ("replyWithCount".to_string(), "true".to_string()),
        ("limit".to_string(), "1".to_string()),
    ];
    let r = run(&db, &VM, &parse_params(&pairs).unwrap()).await.unwrap();
    assert_eq!(r.total, Some(5));
    let invs = r.inventories.unwrap();
    assert_eq!(invs.len(), 1);
    // children attached, in their order; nulls omitted; types rendered
    let nics = invs[0]["vmNics"].as_array().unwrap();
    assert_eq!(nics.len(), 2);
    assert_eq!(nics[0]["deviceId"], 0);
    assert_eq!(invs[0]["ha"], false);
    assert_eq!(invs[0]["createDate"], "Nov 14, 2017 2:21:02 PM");
    let mut schema = Map::new();
    schema_for(&VM, "inventories[0]", &invs[0], &mut schema);
    let keys: Vec<&String> = schema.keys().collect();
    assert_eq!(keys, ["inventories[0]", "inventories[0].vmNics[0]", "inventories[0].vmNics[1]"]);

    let pairs = vec![("fields".to_string(), "uuid, name".to_string()), ("limit".to_string(), "1".to_string())];
    let r = run(&db, &VM, &parse_params(&pairs).unwrap()).await.unwrap();
    let inv = &r.inventories.unwrap()[0];
    assert_eq!(inv.keys().collect::<Vec<_>>(), ["uuid", "name"]);

    for bad in ["nope=1", "vmNics.nope=1", "cpuNum=abc", "ha=maybe"] {
        let pairs = vec![("q".to_string(), bad.to_string())];
        let e = run(&db, &VM, &parse_params(&pairs).unwrap()).await.err().unwrap();
        let code = if bad.starts_with("cpuNum") || bad.starts_with("ha") { "SYS.1007" } else { "SYS.1000" };
        assert_eq!(e.to_error_code().code, code, "{bad}: {e}");
    }
    let pairs = vec![("sort".to_string(), "-nope".to_string())];
    assert!(run(&db, &VM, &parse_params(&pairs).unwrap()).await.is_err());
    assert!(parse_params(&[("limit".to_string(), "x".to_string())]).is_err());
    assert!(parse_params(&[("start".to_string(), "1.5".to_string())]).is_err());
}
