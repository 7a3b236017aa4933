//! More VM behaviour through the public API, on simulator hosts: the first-available IP
//! strategy, LastHostPreferred host allocation on start, the `vm.deletionPolicy` global
//! config with the periodic expunge, per-VM action queueing, LocalStorage placement of VMs
//! made from snapshots or existing volumes, and the `userdata::` tag's checks.
mod common;

use common::sim::*;
use common::{assert_error, Server};
use serde_json::{json, Value};

async fn sql(srv: &Server, stmt: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = match &srv.database {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", srv.data_dir.path().join("rzstack.db").display()),
    };
    let mut c = sqlx::AnyConnection::connect(&url).await.expect("connect to the test database");
    sqlx::query(stmt).execute(&mut c).await.expect("sql");
}

async fn set_config(srv: &Server, category: &str, name: &str, value: &str) -> Value {
    srv.ok(
        "PUT",
        &format!("/global-configurations/{category}/{name}/actions"),
        Some(json!({"updateGlobalConfig": {"value": value}})),
    )
    .await["inventory"]
        .clone()
}

async fn config_value(srv: &Server, category: &str, name: &str) -> Value {
    srv.query(&format!("/global-configurations?q=category={category}&q=name={name}")).await[0]["value"].clone()
}

fn ip_of(vm: &Value) -> String {
    s(&vm["vmNics"][0]["ip"])
}

async fn action(srv: &Server, vm: &str, body: Value) -> Value {
    srv.ok("PUT", &format!("/vm-instances/{vm}/actions"), Some(body)).await
}

async fn refused(srv: &Server, vm: &str, body: Value) -> Value {
    srv.fails("PUT", &format!("/vm-instances/{vm}/actions"), Some(body)).await
}

/// `l3Network.ipAllocateStrategy` = FirstAvailableIpAllocatorStrategy: sequential creates get
/// the lowest free addresses in order (the gateway and reserved ranges skipped), a freed
/// address is handed out again first; the random default does not; bad values are refused.
#[tokio::test]
async fn first_available_ip_strategy() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    assert_eq!(config_value(&srv, "l3Network", "ipAllocateStrategy").await, "RandomIpAllocatorStrategy");
    // .4-.5 are reserved: never handed out
    let l3 = network(&srv, &t, "n", 2, 30).await;
    sql(
        &srv,
        &format!(
            "INSERT INTO reserved_ip_range (uuid, l3_network_uuid, start_ip, end_ip, ip_version, create_date, last_op_date) \
             VALUES ('0123456789abcdef0123456789abcdef', '{l3}', '192.168.10.4', '192.168.10.5', 4, 0, 0)"
        ),
    )
    .await;

    // bad values: refused, nothing changed
    let e = srv
        .fails(
            "PUT",
            "/global-configurations/l3Network/ipAllocateStrategy/actions",
            Some(json!({"updateGlobalConfig": {"value": "Sequential"}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1007",
        "Sequential is not a valid value. Valid values are [FirstAvailableIpAllocatorStrategy, RandomIpAllocatorStrategy, AscDelayRecycleIpAllocatorStrategy]",
    );
    let e = srv
        .fails(
            "PUT",
            "/global-configurations/l3Network/ipAllocateStrategy/actions",
            Some(json!({"updateGlobalConfig": {"value": "AscDelayRecycleIpAllocatorStrategy"}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "AscDelayRecycleIpAllocatorStrategy is not supported by this management node");
    assert_eq!(config_value(&srv, "l3Network", "ipAllocateStrategy").await, "RandomIpAllocatorStrategy");

    let inv = set_config(&srv, "l3Network", "ipAllocateStrategy", "FirstAvailableIpAllocatorStrategy").await;
    assert_eq!(inv["value"], "FirstAvailableIpAllocatorStrategy");
    assert_eq!(inv["defaultValue"], "RandomIpAllocatorStrategy");
    let mut vms = Vec::new();
    for (i, want) in [2, 3, 6, 7, 8].iter().enumerate() {
        let vm = srv
            .ok("POST", "/vm-instances", Some(create(&t, json!({"name": format!("v{i}"), "l3NetworkUuids": [l3]}))))
            .await["inventory"]
            .clone();
        assert_eq!(ip_of(&vm), format!("192.168.10.{want}"), "create {i}");
        assert_eq!(vm["vmNics"][0]["usedIps"][0]["ipInLong"], (0xc0a80a00i64 + want), "{vm}");
        vms.push(vm);
    }
    // free .3 (destroy gives the address back): the next VM gets it again
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&vms[1]["uuid"])), None).await;
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "again", "l3NetworkUuids": [l3]})))).await
        ["inventory"]
        .clone();
    assert_eq!(ip_of(&vm), "192.168.10.3");
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "next", "l3NetworkUuids": [l3]})))).await
        ["inventory"]
        .clone();
    assert_eq!(ip_of(&vm), "192.168.10.9");

    // a static IP is still honoured under the strategy; the lowest free one comes next
    let vm = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"name": "st", "l3NetworkUuids": [l3], "systemTags": [format!("staticIp::{l3}::192.168.10.20")]}),
            )),
        )
        .await["inventory"]
        .clone();
    assert_eq!(ip_of(&vm), "192.168.10.20");
    let vm = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "low", "l3NetworkUuids": [l3]})))).await
        ["inventory"]
        .clone();
    assert_eq!(ip_of(&vm), "192.168.10.10");

    // back to random: a fresh L3 of 30 addresses does not hand out .2, .3, .4 in order every time
    set_config(&srv, "l3Network", "ipAllocateStrategy", "RandomIpAllocatorStrategy").await;
    let l3b = network(&srv, &t, "r", 3, 200).await;
    let mut ips = Vec::new();
    for i in 0..4 {
        let vm = srv
            .ok("POST", "/vm-instances", Some(create(&t, json!({"name": format!("r{i}"), "l3NetworkUuids": [l3b]}))))
            .await["inventory"]
            .clone();
        ips.push(ip_of(&vm));
    }
    assert_ne!(ips, vec!["192.168.10.3", "192.168.10.4", "192.168.10.5", "192.168.10.6"], "random strategy");
}

/// First-available under concurrency: 30 concurrent creates on an L3 with 20 free addresses:
/// exactly 20 succeed, with exactly the 20 addresses, no address twice; the rest fail with
/// L3.1000 naming the strategy.
#[tokio::test]
async fn first_available_concurrent_creates_never_share() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 29).await;
    set_config(&srv, "l3Network", "ipAllocateStrategy", "FirstAvailableIpAllocatorStrategy").await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let srv = srv.clone();
        let body = create(
            &t,
            json!({"name": format!("v{i}"), "instanceOfferingUuid": null, "cpuNum": 1, "memorySize": 64 * MB,
                "l3NetworkUuids": [l3]}),
        );
        tasks.push(tokio::spawn(async move { srv.job("POST", "/vm-instances", Some(body)).await }));
    }
    let mut ips = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let r = task.await.unwrap();
        if r.status == 200 {
            ips.push(ip_of(&r.body["inventory"]));
        } else {
            assert_eq!(r.status, 503, "{}", r.text);
            assert_error(
                &r.body["error"]["cause"],
                "L3.1000",
                "IP allocator strategy[FirstAvailableIpAllocatorStrategy] failed, because no ip is available",
            );
            failed += 1;
        }
    }
    assert_eq!((ips.len(), failed), (20, 10));
    ips.sort_by_key(|ip| ip.rsplit('.').next().unwrap().parse::<u32>().unwrap());
    let want: Vec<String> = (10..=29).map(|n| format!("192.168.10.{n}")).collect();
    assert_eq!(ips, want);
    assert_eq!(used_ips(&srv).await, 20);
}

async fn host_of(srv: &Server, vm: &str) -> String {
    s(&srv.query(&format!("/vm-instances/{vm}")).await[0]["hostUuid"])
}

/// An instance offering with LastHostPreferredAllocatorStrategy: a stopped VM starts again on
/// its last host even when that host runs more VMs; when the last host has no room left it
/// starts on another host. A LeastVmPreferred VM in the same spot goes to the emptier host.
#[tokio::test]
async fn last_host_preferred_on_start() {
    let srv = Server::start().await;
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let off = s(&srv
        .ok(
            "POST",
            "/instance-offerings",
            Some(json!({"params": {"name": "lh", "cpuNum": 1, "memorySize": GB,
                "allocatorStrategy": "LastHostPreferredAllocatorStrategy"}})),
        )
        .await["inventory"]["uuid"]);
    let a = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "a", "instanceOfferingUuid": off, "l3NetworkUuids": [l3]}))),
        )
        .await["inventory"]
        .clone();
    assert_eq!(a["allocatorStrategy"], "LastHostPreferredAllocatorStrategy");
    let a = s(&a["uuid"]);
    let h = host_of(&srv, &a).await;
    let other = t.hosts.iter().find(|x| **x != h).unwrap().clone();
    // a LeastVmPreferred VM on the same host
    let b = s(&srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "b", "hostUuid": h, "l3NetworkUuids": [l3]}))))
        .await["inventory"]["uuid"]);
    assert_eq!(host_of(&srv, &b).await, h);
    // two more VMs on h: it is the busier host
    for i in 0..2 {
        srv.ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"name": format!("busy{i}"), "hostUuid": h, "instanceOfferingUuid": null,
                "cpuNum": 1, "memorySize": 64 * MB}),
            )),
        )
        .await;
    }
    // LastHostPreferred: back on h, every time
    for _ in 0..3 {
        let r = action(&srv, &a, json!({"stopVmInstance": {}})).await;
        assert_eq!(r["inventory"]["lastHostUuid"], h.as_str());
        let r = action(&srv, &a, json!({"startVmInstance": {}})).await;
        assert_eq!(r["inventory"]["state"], "Running");
        assert_eq!(r["inventory"]["hostUuid"], h.as_str(), "the last host is preferred");
    }
    // b was created on a designated host, but keeps its offering's strategy (upstream): it
    // starts again on the host with fewer VMs
    let r = action(&srv, &b, json!({"stopVmInstance": {}})).await;
    assert_eq!(r["inventory"]["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
    assert_eq!(action(&srv, &b, json!({"startVmInstance": {}})).await["inventory"]["hostUuid"], other.as_str());
    // a LeastVmPreferred VM whose last host is the busy one starts on the emptier host
    let c = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "c", "l3NetworkUuids": [l3]})))).await
        ["inventory"]
        .clone();
    assert_eq!(c["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
    let c = s(&c["uuid"]);
    // move c's last host to h: stop, start designated on h, stop
    action(&srv, &c, json!({"stopVmInstance": {}})).await;
    assert_eq!(
        action(&srv, &c, json!({"startVmInstance": {"hostUuid": h}})).await["inventory"]["hostUuid"],
        h.as_str()
    );
    let r = action(&srv, &c, json!({"stopVmInstance": {}})).await;
    assert_eq!(r["inventory"]["lastHostUuid"], h.as_str());
    assert_eq!(
        action(&srv, &c, json!({"startVmInstance": {}})).await["inventory"]["hostUuid"],
        other.as_str(),
        "LeastVmPreferred: the host with fewer VMs"
    );

    // the last host full: a LastHostPreferred VM starts on another host
    action(&srv, &a, json!({"stopVmInstance": {}})).await;
    let hinv = srv.query(&format!("/hosts/{h}")).await[0].clone();
    let avail = hinv["availableMemoryCapacity"].as_i64().unwrap();
    srv.ok(
        "POST",
        "/vm-instances",
        Some(create(
            &t,
            json!({"name": "filler", "hostUuid": h, "instanceOfferingUuid": null, "cpuNum": 1,
            "memorySize": avail - 512 * MB}),
        )),
    )
    .await;
    let r = action(&srv, &a, json!({"startVmInstance": {}})).await;
    assert_eq!(r["inventory"]["state"], "Running");
    assert_eq!(r["inventory"]["hostUuid"], other.as_str(), "no room on the last host");
    // both hosts' capacity accounts for it
    let (hosts, _) = usage(&srv, &t).await;
    let oi = t.hosts.iter().position(|x| *x == other).unwrap();
    assert!(hosts[oi].1 <= 8 * GB - 2 * GB, "{hosts:?}");
}

/// Poll until `f` holds (at most 60 s): for work done by the periodic expunge task.
async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `vm.deletionPolicy`: values checked; Direct expunges at once (no Destroyed row, every
/// address, NIC, volume and unit of capacity back); Delay leaves a Destroyed VM that the
/// periodic task expunges after `vm.expungePeriod`; Never leaves it Destroyed for good (until
/// ExpungeVmInstance, or until the policy changes).
#[tokio::test]
async fn deletion_policy_direct_delay_never() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let before = (usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await);
    assert_eq!(config_value(&srv, "vm", "deletionPolicy").await, "Delay");
    assert_eq!(config_value(&srv, "vm", "expungePeriod").await, "604800");
    assert_eq!(config_value(&srv, "vm", "expungeInterval").await, "3600");
    let e = srv
        .fails(
            "PUT",
            "/global-configurations/vm/deletionPolicy/actions",
            Some(json!({"updateGlobalConfig": {"value": "Later"}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "Later is not a valid value. Valid values are [Direct, Delay, Never]");
    let e = srv
        .fails(
            "PUT",
            "/global-configurations/vm/expungePeriod/actions",
            Some(json!({"updateGlobalConfig": {"value": "-1"}})),
        )
        .await;
    assert_error(&e, "SYS.1007", "Global config[category: vm, name: expungePeriod] should not less than 0, but got -1");
    assert_eq!(config_value(&srv, "vm", "deletionPolicy").await, "Delay");
    assert_eq!(config_value(&srv, "vm", "expungePeriod").await, "604800");

    let new_vm = |name: &str| create(&t, json!({"name": name, "l3NetworkUuids": [l3]}));

    // Direct
    set_config(&srv, "vm", "deletionPolicy", "Direct").await;
    let u = s(&srv.ok("POST", "/vm-instances", Some(new_vm("direct"))).await["inventory"]["uuid"]);
    assert_ne!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
    let r = srv.ok("DELETE", &format!("/vm-instances/{u}"), None).await;
    assert_eq!(r.as_object().map(|o| o.keys().filter(|k| *k != "schema").count()), Some(0), "{r}");
    assert_eq!(srv.query(&format!("/vm-instances/{u}")).await.len(), 0, "no Destroyed row under Direct");
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
    // a stopped VM too
    let u = s(&srv.ok("POST", "/vm-instances", Some(new_vm("direct2"))).await["inventory"]["uuid"]);
    action(&srv, &u, json!({"stopVmInstance": {}})).await;
    srv.ok("DELETE", &format!("/vm-instances/{u}"), None).await;
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
    // expunge of the gone VM: SYS.1003
    assert_eq!(refused(&srv, &u, json!({"expungeVmInstance": {}})).await["code"], "SYS.1003");

    // Never: Destroyed and kept by the task, however short the period
    set_config(&srv, "vm", "deletionPolicy", "Never").await;
    let never = s(&srv.ok("POST", "/vm-instances", Some(new_vm("never"))).await["inventory"]["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{never}"), None).await;
    set_config(&srv, "vm", "expungePeriod", "0").await;
    set_config(&srv, "vm", "expungeInterval", "1").await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await; // several task rounds
    let inv = srv.query(&format!("/vm-instances/{never}")).await;
    assert_eq!(inv[0]["state"], "Destroyed", "Never: not expunged by the task");
    // ExpungeVmInstance still works under Never
    action(&srv, &never, json!({"expungeVmInstance": {}})).await;
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);
    // a VM destroyed under Never goes once the policy is Delay (the task reads the policy)
    let kept = s(&srv.ok("POST", "/vm-instances", Some(new_vm("kept"))).await["inventory"]["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{kept}"), None).await;
    assert_eq!(srv.query(&format!("/vm-instances/{kept}")).await[0]["state"], "Destroyed");

    // Delay: Destroyed, then expunged by the periodic task once the period has passed
    set_config(&srv, "vm", "deletionPolicy", "Delay").await;
    let delay = s(&srv.ok("POST", "/vm-instances", Some(new_vm("delay"))).await["inventory"]["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{delay}"), None).await;
    wait_for("the expunge task", || async { srv.query("/vm-instances").await.is_empty() }).await;
    assert_eq!((usage(&srv, &t).await, rows(&srv).await, used_ips(&srv).await), before);

    // Delay with the default period: a destroyed VM stays Destroyed (and recoverable)
    set_config(&srv, "vm", "expungePeriod", "604800").await;
    let d = s(&srv.ok("POST", "/vm-instances", Some(new_vm("d"))).await["inventory"]["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{d}"), None).await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await; // several task rounds
    assert_eq!(srv.query(&format!("/vm-instances/{d}")).await[0]["state"], "Destroyed");
    assert_eq!(action(&srv, &d, json!({"recoverVmInstance": {}})).await["inventory"]["state"], "Stopped");
}

/// Actions on one VM are queued, not refused: 10 concurrent reboots all succeed; concurrent
/// stops and starts all succeed and leave a consistent VM; a settled state that forbids the
/// action is still VM.1010.
#[tokio::test]
async fn concurrent_actions_on_one_vm_are_queued() {
    let srv = std::sync::Arc::new(Server::start().await);
    let t = topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 20).await;
    let u =
        s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"l3NetworkUuids": [l3]})))).await["inventory"]
            ["uuid"]);
    let path = format!("/vm-instances/{u}/actions");
    let run = |bodies: Vec<Value>| {
        let srv = srv.clone();
        let path = path.clone();
        async move {
            let mut tasks = Vec::new();
            for b in bodies {
                let srv = srv.clone();
                let path = path.clone();
                tasks.push(tokio::spawn(async move { srv.job("PUT", &path, Some(b)).await }));
            }
            let mut out = Vec::new();
            for task in tasks {
                out.push(task.await.unwrap());
            }
            out
        }
    };
    for r in run(vec![json!({"rebootVmInstance": {}}); 10]).await {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["inventory"]["state"], "Running");
    }
    for round in 0..3 {
        let mut bodies = Vec::new();
        for _ in 0..4 {
            bodies.push(json!({"stopVmInstance": {}}));
            bodies.push(json!({"startVmInstance": {}}));
        }
        for r in run(bodies).await {
            assert_eq!(r.status, 200, "round {round}: {}", r.text);
        }
        let inv = srv.query(&format!("/vm-instances/{u}")).await[0].clone();
        let (hosts, _) = usage(&srv, &t).await;
        let busy = hosts.iter().filter(|(cpu, _)| *cpu < 40).count();
        match inv["state"].as_str() {
            Some("Running") => {
                assert!(inv["hostUuid"].is_string());
                assert_eq!(busy, 1, "{hosts:?}");
            }
            Some("Stopped") => {
                assert!(inv.get("hostUuid").is_none());
                assert_eq!(busy, 0, "{hosts:?}");
            }
            other => panic!("unsettled state {other:?}"),
        }
        assert_eq!(inv["vmNics"][0]["usedIps"].as_array().unwrap().len(), 1);
    }
    // destroy + start at once: whichever runs second sees a settled state; a start after the
    // destroy is VM.1010 for Destroyed, never for a transitional state
    action(&srv, &u, json!({"startVmInstance": {}})).await;
    let del = {
        let srv = srv.clone();
        let u = u.clone();
        tokio::spawn(async move { srv.job("DELETE", &format!("/vm-instances/{u}"), None).await })
    };
    let starts = run(vec![json!({"startVmInstance": {}}); 3]).await;
    assert_eq!(del.await.unwrap().status, 200);
    for r in starts {
        if r.status != 200 {
            assert_eq!(r.status, 503, "{}", r.text);
            assert_error(&r.body["error"]["cause"], "VM.1010", "current vm instance state[Destroyed]");
        }
    }
    assert_eq!(srv.query(&format!("/vm-instances/{u}")).await[0]["state"], "Destroyed");
}

/// An action on a VM whose creation is still running waits for the creation to end instead of
/// being refused for the transitional state: the creation's instantiate step is held by the
/// simulator's test gate while a stop is submitted; once the gate opens both succeed.
#[tokio::test]
async fn action_during_creation_waits_for_it() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let srv = Server::start_with_env(vec![("RZSTACK_TEST_AGENT_GATE".into(), gate.display().to_string())]).await;
    let t = topology(&srv, 1).await;
    let uuid = "5e1f0c3a9b2d4e6f8a7b6c5d4e3f2a1b";
    let mut body = create(&t, json!({}));
    body["params"]["resourceUuid"] = json!(uuid);
    let r = srv.request("POST", "/vm-instances", Some(body), Some(&srv.session), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let create_loc = s(&r.body["location"]);
    wait_for("the VM row", || async { srv.query(&format!("/vm-instances/{uuid}")).await.len() == 1 }).await;
    assert_ne!(srv.query(&format!("/vm-instances/{uuid}")).await[0]["state"], "Running");
    let r = srv
        .request(
            "PUT",
            &format!("/vm-instances/{uuid}/actions"),
            Some(json!({"stopVmInstance": {}})),
            Some(&srv.session),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let stop_loc = s(&r.body["location"]);
    // the creation cannot end before the gate opens, so neither can the queued stop
    assert_eq!(srv.request("GET", &stop_loc, None, None, &[]).await.status, 202);
    std::fs::write(&gate, b"").unwrap();
    let c = srv.poll(&create_loc).await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.body["inventory"]["state"], "Running");
    let st = srv.poll(&stop_loc).await;
    assert_eq!(st.status, 200, "{}", st.text);
    assert_eq!(st.body["inventory"]["state"], "Stopped");
    assert_eq!(srv.query(&format!("/vm-instances/{uuid}")).await[0]["state"], "Stopped");
}

/// deleteMode: upstream runs a deletion check before a Permissive destroy and skips it for
/// Enforcing; no open-source check refuses a VM's destruction, so both end the same way.
/// Another value is refused by the parameter rules and changes nothing.
#[tokio::test]
async fn destroy_delete_modes() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let a = s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "a"})))).await["inventory"]["uuid"]);
    let b = s(&srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "b"})))).await["inventory"]["uuid"]);
    let r = srv.request("DELETE", &format!("/vm-instances/{a}?deleteMode=Force"), None, Some(&srv.session), &[]).await;
    let e = if r.status == 202 {
        srv.poll(&s(&r.body["location"])).await.body["error"].clone()
    } else {
        r.body["error"].clone()
    };
    assert_eq!(e["code"], "SYS.1007", "{e}");
    assert_eq!(srv.query(&format!("/vm-instances/{a}")).await[0]["state"], "Running");
    srv.ok("DELETE", &format!("/vm-instances/{a}?deleteMode=Permissive"), None).await;
    srv.ok("DELETE", &format!("/vm-instances/{b}?deleteMode=Enforcing"), None).await;
    for v in [&a, &b] {
        let inv = srv.query(&format!("/vm-instances/{v}")).await[0].clone();
        assert_eq!(inv["state"], "Destroyed");
        assert!(inv.get("hostUuid").is_none());
    }
    let (hosts, _) = usage(&srv, &t).await;
    assert_eq!(hosts[0].0, srv.query(&format!("/hosts/{}", t.hosts[0])).await[0]["totalCpuCapacity"].as_i64().unwrap());
}

fn volume_of<'a>(vm: &'a Value, ty: &str) -> &'a Value {
    vm["allVolumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} volume: {vm}"))
}

/// What a failed create must leave as it was: rows, host and storage capacity, used IPs.
async fn state(srv: &Server, t: &Topo) -> ((usize, usize, usize), (Vec<(i64, i64)>, i64), usize) {
    (rows(srv).await, usage(srv, t).await, used_ips(srv).await)
}

/// LocalStorage with two hosts: a VM made from a volume snapshot, from an existing volume as
/// its root disk, or with an existing data volume, runs on the host whose disk holds those files
/// (the LeastVmPreferred offering would pick the other, emptier host). A designated host
/// elsewhere is refused as upstream refuses it: the local-storage host filter's error for the
/// snapshot, the local-storage attach error for the data volume; nothing is left behind.
#[tokio::test]
async fn local_storage_files_pin_the_host() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    set_config(&srv, "vm", "deletionPolicy", "Delay").await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    let h0_free = usage(&srv, &t).await.0[0];
    let a = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "a", "hostUuid": h1, "l3NetworkUuids": [l3], "dataDiskSizes": [GB]}))),
        )
        .await["inventory"]
        .clone();
    assert_eq!(a["hostUuid"], h1.as_str());
    assert_eq!(volume_of(&a, "Root")["primaryStorageUuid"], t.ps.as_str());
    let data = s(&volume_of(&a, "Data")["uuid"]);
    let root = s(&a["rootVolumeUuid"]);
    let snap = s(&srv
        .ok("POST", &format!("/volumes/{root}/volume-snapshots"), Some(json!({"params": {"name": "sn"}})))
        .await["inventory"]["uuid"]);
    let from_snap = format!("/vm-instances/from/volume-snapshots/{snap}");

    // the snapshot's files are on h1: a VM from it cannot be made on h0
    let before = state(&srv, &t).await;
    let bad = "0123456789ab4def8123456789abcd01";
    let e = srv
        .fails(
            "POST",
            &from_snap,
            Some(json!({"params": {"name": "bad", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3],
                "hostUuid": h0, "resourceUuid": bad}})),
        )
        .await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "the vm[uuid: {bad}] using local primary storage can only be started on the host[uuid: {h1}], but the host \
             is either not having enough CPU/memory/GPU/VFNIC or in the state[Enabled] or status[Connected] to start the vm"
        ),
    );
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000", "{e}");
    assert_eq!(state(&srv, &t).await, before);
    assert!(srv.query(&format!("/vm-instances/{bad}")).await.is_empty());

    // without a host: on h1, every time, although h0 runs no VM
    for i in 0..2 {
        let v = srv
            .ok(
                "POST",
                &from_snap,
                Some(json!({"params": {"name": format!("s{i}"), "instanceOfferingUuid": t.offering,
                    "l3NetworkUuids": [l3], "clusterUuid": t.cluster}})),
            )
            .await["inventory"]
            .clone();
        assert_eq!(v["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
        assert_eq!(v["state"], "Running");
        assert_eq!(v["hostUuid"], h1.as_str(), "the host holding the snapshot");
        assert_eq!(v["lastHostUuid"], h1.as_str());
        assert_eq!(host_of(&srv, &s(&v["uuid"])).await, h1);
        assert_eq!(volume_of(&v, "Root")["primaryStorageUuid"], t.ps.as_str());
    }

    // a's data volume, detached by the destroy, stays on h1's disk
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&a["uuid"])), None).await;
    assert!(srv.query(&format!("/volumes/{data}")).await[0].get("vmInstanceUuid").is_none());
    let with_data = |extra: Value| {
        let mut b = create(
            &t,
            json!({"l3NetworkUuids": [l3], "diskAOs": [
                {"boot": true, "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"},
                {"sourceType": "VolumeVO", "sourceUuid": data}]}),
        );
        for (k, v) in extra.as_object().unwrap() {
            b["params"][k] = v.clone();
        }
        b
    };
    let before = state(&srv, &t).await;
    let bad = "0123456789ab4def8123456789abcd02";
    let e = srv.fails("POST", "/vm-instances", Some(with_data(json!({"hostUuid": h0, "resourceUuid": bad})))).await;
    assert_error(
        &e,
        "SYS.1006",
        &format!(
            "cannot attach the data volume[uuid:{data}] to the vm[uuid:{bad}]. Both vm's root volume and the data volume \
             are on local primary storage, but they are on different hosts. The root volume[uuid:"
        ),
    );
    assert_error(
        &e,
        "SYS.1006",
        &format!("is on the host[uuid:{h0}] but the data volume[uuid: {data}] is on the host[uuid: {h1}]"),
    );
    assert_eq!(state(&srv, &t).await, before);
    assert!(srv.query(&format!("/volumes/{data}")).await[0].get("vmInstanceUuid").is_none());

    let b = srv.ok("POST", "/vm-instances", Some(with_data(json!({"name": "b"})))).await["inventory"].clone();
    assert_eq!(b["hostUuid"], h1.as_str(), "the host holding the data volume");
    assert_eq!(host_of(&srv, &s(&b["uuid"])).await, h1);
    assert_eq!(volume_of(&b, "Data")["uuid"], data.as_str());
    assert_eq!(volume_of(&b, "Root")["primaryStorageUuid"], t.ps.as_str());
    // the designated host that holds it is fine
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&b["uuid"])), None).await;
    let c = srv.ok("POST", "/vm-instances", Some(with_data(json!({"name": "c", "hostUuid": h1})))).await["inventory"]
        .clone();
    assert_eq!(c["hostUuid"], h1.as_str());

    // the same volume as the root disk of a VM without an image
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&c["uuid"])), None).await;
    let d = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(json!({"params": {"name": "d", "instanceOfferingUuid": t.offering, "l3NetworkUuids": [l3],
                "clusterUuid": t.cluster, "diskAOs": [{"boot": true, "platform": "Linux", "guestOsType": "Ubuntu",
                "architecture": "x86_64", "sourceType": "VolumeVO", "sourceUuid": data}]}})),
        )
        .await["inventory"]
        .clone();
    assert_eq!(d["rootVolumeUuid"], data.as_str());
    assert_eq!(d["hostUuid"], h1.as_str(), "the host holding the root volume");
    assert_eq!(host_of(&srv, &s(&d["uuid"])).await, h1);
    // h0 took nothing
    let (hosts, _) = usage(&srv, &t).await;
    assert_eq!(hosts[0], h0_free, "{hosts:?}");
}

/// The `userdata::` system tag is checked as upstream's validator does: one tag at most
/// (SYS.1007), its value decodable by Java's Base64 decoder; the decoder's refusal escapes
/// upstream's interceptor as SYS.1000 with the decoder's message. Nothing is created then.
/// Valid values (padded or not) are kept on the VM as given.
#[tokio::test]
async fn userdata_must_be_base64() {
    let srv = Server::start().await;
    let t = topology(&srv, 1).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let with_tags = |tags: Value| {
        let mut b = create(&t, json!({"l3NetworkUuids": [l3]}));
        b["systemTags"] = tags;
        b
    };
    let before = state(&srv, &t).await;
    for (value, details) in [
        ("not base64!", "Illegal base64 character 20"),
        ("w6k_", "Illegal base64 character 5f"),
        ("é", "Illegal base64 character -3d"),
        ("Y", "Input byte[] should at least have 2 bytes for base64 bytes"),
        ("YWJjZ", "Last unit does not have enough valid bits"),
        ("YWJjZA=", "Input byte array has wrong 4-byte ending unit"),
        ("=YWJj", "Input byte array has wrong 4-byte ending unit"),
        ("YQ==YQ==", "Input byte array has incorrect ending byte at 4"),
    ] {
        let e = srv.fails("POST", "/vm-instances", Some(with_tags(json!([format!("userdata::{value}")])))).await;
        assert_eq!(e["code"], "SYS.1000", "{value}: {e}");
        assert_eq!(e["details"], details, "{value}");
    }
    let e = srv.fails("POST", "/vm-instances", Some(with_tags(json!(["userdata::YWJj", "userdata::ZGVm"])))).await;
    assert_error(&e, "SYS.1007", "Shouldn't be more than one userdata systemTag for one vm.");
    assert_eq!(state(&srv, &t).await, before);

    for value in ["I2Nsb3VkLWNvbmZpZwpob3N0bmFtZTogdAo=", "YWI"] {
        let vm = s(&srv.ok("POST", "/vm-instances", Some(with_tags(json!([format!("userdata::{value}")])))).await
            ["inventory"]["uuid"]);
        let tags: Vec<String> =
            srv.query(&format!("/system-tags?q=resourceUuid={vm}")).await.iter().map(|x| s(&x["tag"])).collect();
        assert!(tags.contains(&format!("userdata::{value}")), "{tags:?}");
    }
}

/// The LocalStorage resource refs (QueryLocalStorageResourceRef) of a primary storage, by resource.
async fn local_refs(srv: &Server, ps: &str) -> std::collections::BTreeMap<String, Value> {
    srv.query(&format!("/primary-storage/local-storage/resource-refs?q=primaryStorageUuid={ps}"))
        .await
        .into_iter()
        .map(|r| (s(&r["resourceUuid"]), r))
        .collect()
}

/// LocalStorage resource refs: every volume and snapshot made on LocalStorage records the host
/// holding its file (QueryLocalStorageResourceRef, upstream field order); deleting a snapshot
/// or expunging a volume (with the VM, or a data volume) removes its ref; a data volume keeps
/// its ref after its VM is expunged, so a VM made with it later runs on that host although
/// the LeastVmPreferred offering would pick the other; a create that fails after its volumes
/// were made leaves no ref.
#[tokio::test]
async fn local_storage_resource_refs() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    assert!(local_refs(&srv, &t.ps).await.is_empty());
    let a = srv
        .ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "a", "hostUuid": h1, "l3NetworkUuids": [l3], "dataDiskSizes": [GB]}))),
        )
        .await["inventory"]
        .clone();
    let (root, data) = (s(&a["rootVolumeUuid"]), s(&volume_of(&a, "Data")["uuid"]));
    let refs = local_refs(&srv, &t.ps).await;
    assert_eq!(refs.len(), 2, "{refs:?}");
    for (vol, size) in [(&root, volume_of(&a, "Root")["size"].clone()), (&data, json!(GB))] {
        let r = &refs[vol.as_str()];
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            ["resourceUuid", "primaryStorageUuid", "hostUuid", "size", "resourceType", "createDate", "lastOpDate"]
        );
        assert_eq!(r["primaryStorageUuid"], t.ps.as_str());
        assert_eq!(r["hostUuid"], h1.as_str());
        assert_eq!(r["resourceType"], "VolumeVO");
        assert_eq!(r["size"], size);
        assert!(r["createDate"].is_string() && r["lastOpDate"].is_string(), "{r}");
    }
    // queries by host and type, and one resource
    let on_h1 = srv.query(&format!("/primary-storage/local-storage/resource-refs?q=hostUuid={h1}")).await;
    assert_eq!(on_h1.len(), 2);
    assert!(srv.query(&format!("/primary-storage/local-storage/resource-refs?q=hostUuid={h0}")).await.is_empty());
    let one = srv.query(&format!("/primary-storage/local-storage/resource-refs?q=resourceUuid={data}")).await;
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["resourceUuid"], data.as_str());
    // the inventory has no uuid: a condition on it fails as upstream's query does
    let r = srv.get(&format!("/primary-storage/local-storage/resource-refs?q=uuid={data}")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(
        &r.body["error"],
        "SYS.1000",
        "inventory class[class org.zstack.storage.primary.local.LocalStorageResourceRefInventory] not having field[uuid]",
    );
    let sorted = srv.query("/primary-storage/local-storage/resource-refs?sort=-size").await;
    assert_eq!(sorted[0]["resourceUuid"], data.as_str(), "the largest first");

    // snapshots: a ref on the volume's host; deleting the snapshot deletes it
    let snap = srv
        .ok("POST", &format!("/volumes/{root}/volume-snapshots"), Some(json!({"params": {"name": "sn"}})))
        .await["inventory"]
        .clone();
    let sref = local_refs(&srv, &t.ps).await[s(&snap["uuid"]).as_str()].clone();
    assert_eq!(sref["resourceType"], "VolumeSnapshotVO");
    assert_eq!(sref["hostUuid"], h1.as_str());
    assert_eq!(sref["size"], snap["size"]);
    srv.ok("DELETE", &format!("/volume-snapshots/{}", s(&snap["uuid"])), None).await;
    assert_eq!(local_refs(&srv, &t.ps).await.len(), 2);
    let dsnap = s(&srv
        .ok("POST", &format!("/volumes/{data}/volume-snapshots"), Some(json!({"params": {"name": "ds"}})))
        .await["inventory"]["uuid"]);
    assert_eq!(local_refs(&srv, &t.ps).await[dsnap.as_str()]["hostUuid"], h1.as_str());

    // destroy (Delay) keeps them; expunge takes the root volume's, the data volume keeps its own
    let a = s(&a["uuid"]);
    srv.ok("DELETE", &format!("/vm-instances/{a}"), None).await;
    assert_eq!(local_refs(&srv, &t.ps).await.len(), 3);
    action(&srv, &a, json!({"expungeVmInstance": {}})).await;
    assert!(srv.query(&format!("/vm-instances/{a}")).await.is_empty());
    let refs = local_refs(&srv, &t.ps).await;
    assert_eq!(refs.keys().cloned().collect::<Vec<_>>(), {
        let mut k = vec![data.clone(), dsnap.clone()];
        k.sort();
        k
    });
    let data_ref = refs[data.as_str()].clone();

    // a busy h1: LeastVmPreferred would pick h0, the data volume's file pins the VM to h1
    let busy = srv
        .ok("POST", "/vm-instances", Some(create(&t, json!({"name": "busy", "hostUuid": h1, "l3NetworkUuids": [l3]}))))
        .await["inventory"]
        .clone();
    let with_data = json!({"name": "b", "l3NetworkUuids": [l3], "diskAOs": [
        {"boot": true, "platform": "Linux", "guestOsType": "Ubuntu", "architecture": "x86_64"},
        {"sourceType": "VolumeVO", "sourceUuid": data}]});
    let b = srv.ok("POST", "/vm-instances", Some(create(&t, with_data))).await["inventory"].clone();
    assert_eq!(b["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
    assert_eq!(b["hostUuid"], h1.as_str(), "the host holding the data volume");
    assert_eq!(host_of(&srv, &s(&b["uuid"])).await, h1);
    let refs = local_refs(&srv, &t.ps).await;
    assert_eq!(refs.len(), 4, "busy's root, b's root, data, its snapshot: {refs:?}");
    assert_eq!(refs[data.as_str()], data_ref, "the data volume's ref is kept as it was");
    assert_eq!(refs[s(&b["rootVolumeUuid"]).as_str()]["hostUuid"], h1.as_str());
    assert_eq!(refs[s(&busy["rootVolumeUuid"]).as_str()]["hostUuid"], h1.as_str());

    // a create failing after its volumes were made (no address left) leaves no ref behind
    let tiny = network(&srv, &t, "tiny", 70, 70).await;
    srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "t1", "l3NetworkUuids": [tiny]})))).await;
    let before = (local_refs(&srv, &t.ps).await, rows(&srv).await, usage(&srv, &t).await);
    let e = srv
        .fails(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": "t2", "l3NetworkUuids": [tiny], "dataDiskSizes": [GB]}))),
        )
        .await;
    assert_error(&e, "SYS.1006", "because no ip is available in this l3Network[name:tiny");
    assert_eq!(e["cause"]["code"], "L3.1000", "{e}");
    assert_eq!((local_refs(&srv, &t.ps).await, rows(&srv).await, usage(&srv, &t).await), before);

    // the data volume expunged: its ref and its snapshot's go
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&b["uuid"])), None).await;
    srv.ok("DELETE", &format!("/volumes/{data}"), None).await;
    srv.ok("PUT", &format!("/volumes/{data}/actions"), Some(json!({"expungeDataVolume": {}}))).await;
    let refs = local_refs(&srv, &t.ps).await;
    assert!(!refs.contains_key(data.as_str()) && !refs.contains_key(dsnap.as_str()), "{refs:?}");
}

/// Starting a stopped VM whose volumes are on LocalStorage: only on the host holding them
/// (upstream's local-storage host filter on start), though its LeastVmPreferred strategy
/// would pick the emptier host; a designated host elsewhere, or that host without room,
/// is refused with HOST_ALLOCATION.1000 and nothing changes.
#[tokio::test]
async fn local_storage_start_on_the_host_holding_the_volumes() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let c = srv.ok("POST", "/vm-instances", Some(create(&t, json!({"name": "c", "l3NetworkUuids": [l3]})))).await
        ["inventory"]
        .clone();
    assert_eq!(c["allocatorStrategy"], "LeastVmPreferredHostAllocatorStrategy");
    let c = s(&c["uuid"]);
    let h = host_of(&srv, &c).await;
    let other = t.hosts.iter().find(|x| **x != h).unwrap().clone();
    // two more VMs on h: the busier host
    for i in 0..2 {
        srv.ok(
            "POST",
            "/vm-instances",
            Some(create(
                &t,
                json!({"name": format!("busy{i}"), "hostUuid": h, "instanceOfferingUuid": null,
                "cpuNum": 1, "memorySize": 64 * MB, "l3NetworkUuids": [l3]}),
            )),
        )
        .await;
    }
    for _ in 0..3 {
        action(&srv, &c, json!({"stopVmInstance": {}})).await;
        let r = action(&srv, &c, json!({"startVmInstance": {}})).await;
        assert_eq!(r["inventory"]["state"], "Running");
        assert_eq!(r["inventory"]["hostUuid"], h.as_str(), "the host holding the root volume");
    }
    // a VM on simulator storage in the same spot does go to the emptier host (the pin is the
    // local storage's doing): not testable in this cluster, see last_host_preferred_on_start

    let pinned = format!(
        "the vm[uuid: {c}] using local primary storage can only be started on the host[uuid: {h}], but the host is \
         either not having enough CPU/memory/GPU/VFNIC or in the state[Enabled] or status[Connected] to start the vm"
    );
    let vm_state = |v: Value| (v["state"].clone(), v["hostUuid"].clone(), v["lastHostUuid"].clone());
    action(&srv, &c, json!({"stopVmInstance": {}})).await;
    let before = (usage(&srv, &t).await, used_ips(&srv).await);
    let stopped = vm_state(srv.query(&format!("/vm-instances/{c}")).await[0].clone());
    // the other host designated
    let e = refused(&srv, &c, json!({"startVmInstance": {"hostUuid": other}})).await;
    assert_error(&e, "VM.1001", &pinned);
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000", "{e}");
    assert_eq!((usage(&srv, &t).await, used_ips(&srv).await), before);
    assert_eq!(vm_state(srv.query(&format!("/vm-instances/{c}")).await[0].clone()), stopped);

    // h without room for it: refused, though the other host has room
    let avail = srv.query(&format!("/hosts/{h}")).await[0]["availableMemoryCapacity"].as_i64().unwrap();
    srv.ok(
        "POST",
        "/vm-instances",
        Some(create(
            &t,
            json!({"name": "filler", "hostUuid": h, "instanceOfferingUuid": null, "cpuNum": 1,
            "memorySize": avail - 512 * MB, "l3NetworkUuids": [l3]}),
        )),
    )
    .await;
    let before = (usage(&srv, &t).await, used_ips(&srv).await);
    let e = refused(&srv, &c, json!({"startVmInstance": {}})).await;
    assert_error(&e, "VM.1001", &pinned);
    assert_eq!(e["cause"]["code"], "HOST_ALLOCATION.1000", "{e}");
    assert_eq!(e["cause"]["details"], pinned.as_str());
    assert_eq!((usage(&srv, &t).await, used_ips(&srv).await), before);
    assert_eq!(vm_state(srv.query(&format!("/vm-instances/{c}")).await[0].clone()), stopped);
    // room again on h: it starts there
    let filler = srv.query("/vm-instances?q=name=filler").await;
    srv.ok("DELETE", &format!("/vm-instances/{}", s(&filler[0]["uuid"])), None).await;
    let r = action(&srv, &c, json!({"startVmInstance": {}})).await;
    assert_eq!(r["inventory"]["hostUuid"], h.as_str());
}

/// Deleting a host drops the LocalStorage refs that name it, and only those.
#[tokio::test]
async fn local_storage_refs_go_with_their_host() {
    let srv = Server::start().await;
    let t = local_topology(&srv, 2).await;
    let l3 = network(&srv, &t, "n", 10, 60).await;
    let (h0, h1) = (t.hosts[0].clone(), t.hosts[1].clone());
    for (name, host) in [("a", &h0), ("b", &h1)] {
        srv.ok(
            "POST",
            "/vm-instances",
            Some(create(&t, json!({"name": name, "hostUuid": host, "l3NetworkUuids": [l3]}))),
        )
        .await;
    }
    let on = |h: &str| format!("/primary-storage/local-storage/resource-refs?q=hostUuid={h}");
    assert_eq!(srv.query(&on(&h0)).await.len(), 1);
    assert_eq!(srv.query(&on(&h1)).await.len(), 1);
    srv.ok("DELETE", &format!("/hosts/{h1}"), None).await;
    assert!(srv.query(&on(&h1)).await.is_empty());
    assert_eq!(srv.query(&on(&h0)).await.len(), 1, "the other host's refs stay");
}
