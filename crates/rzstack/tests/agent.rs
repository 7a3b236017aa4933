//! The real host agent (`rzstack agent`) driven by a real management node (`rzstack serve`):
//! AddKVMHost learns this machine's facts through it, the token guards it, and a stopped
//! agent shows as a Disconnected host.
mod common;
use common::agent::Agent;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// This machine's facts, read here independently of the agent.
fn cpu_count() -> i64 {
    let t = std::fs::read_to_string("/proc/cpuinfo").expect("cpuinfo");
    t.lines().filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor")).count() as i64
}

fn mem_total_bytes() -> i64 {
    let t = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let l = t.lines().find(|l| l.starts_with("MemTotal:")).expect("MemTotal");
    l.split_whitespace().nth(1).expect("value").parse::<i64>().expect("number") * 1024
}

/// What `--accel auto` must pick: KVM only with a usable /dev/kvm that is not PVM.
fn expected_accel() -> &'static str {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if kvm && !Path::new("/sys/module/kvm_pvm").exists() {
        "kvm"
    } else {
        "tcg"
    }
}

fn uuid_of(v: &Value) -> String {
    v["uuid"].as_str().expect("uuid").to_string()
}

#[tokio::test]
async fn kvm_host_through_the_real_agent() {
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::start(agent_dir.path(), 0).await;
    let token = agent.token();
    assert_eq!(token.len(), 64, "a token file is created at first start");
    let s = Server::start_with_env(vec![("RZSTACK_KVM_AGENT_PORT".into(), agent.port.to_string())]).await;
    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = uuid_of(
        &s.ok("POST", "/clusters", Some(json!({"params": {"zoneUuid": zone, "name": "kvm", "hypervisorType": "KVM"}})))
            .await["inventory"],
    );
    let add = |password: &str| {
        json!({"params": {"name": "host1", "managementIp": "127.0.0.1", "clusterUuid": cluster,
            "username": "root", "password": password}})
    };

    // A password that is not the agent's token: refused, nothing recorded.
    let err = s.fails("POST", "/hosts/kvm", Some(add("not-the-token"))).await;
    assert_error(&err, "HOST.1003", "refused the credentials");
    assert!(s.query("/hosts").await.is_empty(), "a refused host leaves no row");
    assert!(!agent_dir.path().join("host-uuid").exists(), "the agent was not connected");

    // The token: Connected with this machine's real facts.
    let r = s.job("POST", "/hosts/kvm", Some(add(&token))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.kvm.KVMHostInventory");
    let h = r.body["inventory"].clone();
    let hu = uuid_of(&h);
    assert_eq!(h["status"], "Connected");
    assert_eq!(h["hypervisorType"], "KVM");
    assert_eq!(h["cpuNum"], cpu_count());
    assert!(h["cpuSockets"].as_i64().is_some_and(|n| n >= 1 && n <= cpu_count()), "{h}");
    assert_eq!(h["totalMemoryCapacity"], mem_total_bytes());
    assert_eq!(h["architecture"], std::env::consts::ARCH);
    assert_eq!(h["accelerator"], expected_accel());
    assert!(h.get("password").is_none(), "the token is never shown: {h}");
    if Path::new("/etc/os-release").exists() {
        assert!(h["osDistribution"].as_str().is_some_and(|d| !d.is_empty()), "{h}");
    }
    assert_eq!(s.query(&format!("/hosts/{hu}")).await[0], h, "the query shows the same inventory");
    assert_eq!(s.query("/hosts?q=accelerator=tcg").await.len(), usize::from(expected_accel() == "tcg"));
    assert_eq!(std::fs::read_to_string(agent_dir.path().join("host-uuid")).expect("host-uuid"), hu);

    // The agent stops: ReconnectHost fails, the host is Disconnected.
    agent.stop();
    let act = format!("/hosts/{hu}/actions");
    let err = s.fails("PUT", &act, Some(json!({"reconnectHost": {}}))).await;
    assert_error(&err, "HOST.1002", "cannot be reached");
    assert_eq!(err["cause"]["code"], "HOST.1003");
    assert_eq!(s.query(&format!("/hosts/{hu}")).await[0]["status"], "Disconnected");

    // Back on the same port and data directory (same token): Connected again.
    let agent = Agent::start(agent_dir.path(), agent.port).await;
    assert_eq!(agent.token(), token, "the token file is kept across restarts");
    let b = s.ok("PUT", &act, Some(json!({"reconnectHost": {}}))).await;
    assert_eq!(b["inventory"]["status"], "Connected");
    assert_eq!(b["inventory"]["cpuNum"], cpu_count());
}

#[tokio::test]
async fn agent_refuses_callers_without_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(dir.path(), 0).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/host/connect", agent.port);
    let cmd = json!({"version": 1, "hostUuid": "h1", "managementNodeUuid": "m1"});
    for auth in [None, Some("Bearer wrong".to_string()), Some(format!("OAuth {}", agent.token()))] {
        let mut rb = http.post(&url).json(&cmd);
        if let Some(a) = &auth {
            rb = rb.header("Authorization", a);
        }
        let r = rb.send().await.expect("send");
        assert_eq!(r.status().as_u16(), 401, "{auth:?}");
        let b: Value = r.json().await.expect("json");
        assert_eq!(b["success"], false);
        assert_eq!(b["version"], 1);
    }
    assert!(!dir.path().join("host-uuid").exists(), "refused calls change nothing");

    // Another protocol version: a refusal in the protocol's own shape.
    let r = http.post(&url).bearer_auth(agent.token()).json(&json!({"version": 2, "hostUuid": "h1"})).send().await;
    let b: Value = r.expect("send").json().await.expect("json");
    assert_eq!(b["success"], false);
    assert!(b["error"].as_str().is_some_and(|e| e.contains("protocol version 1")), "{b}");

    let r = http.post(&url).bearer_auth(agent.token()).json(&cmd).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["success"], true);
    assert_eq!(b["facts"]["cpuNum"], cpu_count());
    assert_eq!(b["facts"]["accelerator"], expected_accel());
}

/// Wait (up to `limit`) until host `hu` shows `status`; the host as last seen.
async fn wait_status(s: &Server, hu: &str, status: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let h = s.query(&format!("/hosts/{hu}")).await[0].clone();
        if h["status"] == status || Instant::now() > deadline {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn periodic_ping_keeps_host_status_true() {
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::start(agent_dir.path(), 0).await;
    let token = agent.token();
    let s = Server::start_with_env(vec![("RZSTACK_KVM_AGENT_PORT".into(), agent.port.to_string())]).await;

    // The ping configs are listed with upstream's defaults.
    let all = s.query("/global-configurations?q=category=host").await;
    for (name, default) in
        [("ping.interval", "60"), ("ping.timeout", "10"), ("ping.maxFailure", "3"), ("ping.parallelismDegree", "100")]
    {
        let c = all.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("host/{name} listed"));
        assert_eq!(c["value"], default, "{name}");
        assert_eq!(c["defaultValue"], default, "{name}");
        assert!(c["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}");
    }
    // A value that is not a number is refused and changes nothing.
    let err = s
        .fails(
            "PUT",
            "/global-configurations/host/ping.interval/actions",
            Some(json!({"updateGlobalConfig": {"value": "often"}})),
        )
        .await;
    assert_error(
        &err,
        "SYS.1007",
        "GlobalConfig[category:host, name:ping.interval] is of type java.lang.Integer, the value[often] cannot be converted to that type",
    );
    let err = s
        .fails(
            "PUT",
            "/global-configurations/host/ping.interval/actions",
            Some(json!({"updateGlobalConfig": {"value": "0"}})),
        )
        .await;
    assert_error(
        &err,
        "SYS.1007",
        "Global config[category: host, name: ping.interval] should not less than 1, but got 0",
    );
    let r = s.get("/global-configurations?q=category=host&q=name=ping.interval").await;
    assert_eq!(r.body["inventories"][0]["value"], "60");

    let zone = uuid_of(&s.create_zone("zone1").await);
    let cluster = |name: &str, hv: &str| json!({"params": {"zoneUuid": zone, "name": name, "hypervisorType": hv}});
    let kvm = uuid_of(&s.ok("POST", "/clusters", Some(cluster("kvm", "KVM"))).await["inventory"]);
    let simc = uuid_of(&s.ok("POST", "/clusters", Some(cluster("sim", "Simulator"))).await["inventory"]);
    let h = s
        .ok(
            "POST",
            "/hosts/kvm",
            Some(json!({"params": {"name": "host1", "managementIp": "127.0.0.1", "clusterUuid": kvm,
                "username": "root", "password": token}})),
        )
        .await;
    let hu = uuid_of(&h["inventory"]);
    assert_eq!(h["inventory"]["status"], "Connected");
    let sim = s
        .ok(
            "POST",
            "/hosts/simulators",
            Some(json!({"params": {"name": "sim1", "managementIp": "10.0.0.9", "clusterUuid": simc}})),
        )
        .await;
    let su = uuid_of(&sim["inventory"]);

    // Ping every second, Disconnected after 2 failures in a row.
    for (name, value) in [("ping.interval", "1"), ("ping.timeout", "2"), ("ping.maxFailure", "2")] {
        let b = s
            .ok(
                "PUT",
                &format!("/global-configurations/host/{name}/actions"),
                Some(json!({"updateGlobalConfig": {"value": value}})),
            )
            .await;
        assert_eq!(b["inventory"]["value"], value);
    }
    // A live agent keeps its host Connected through several rounds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.query(&format!("/hosts/{hu}")).await[0]["status"], "Connected");

    // The agent stops: without any host API call the host becomes Disconnected.
    agent.stop();
    let h = wait_status(&s, &hu, "Disconnected", Duration::from_secs(60)).await;
    assert_eq!(h["status"], "Disconnected", "{h}");
    assert_eq!(h["state"], "Enabled");
    // Simulator hosts are not pinged: still Connected.
    assert_eq!(s.query(&format!("/hosts/{su}")).await[0]["status"], "Connected");

    // Back on the same port and data directory (same token): Connected again, facts refreshed.
    let _agent = Agent::start(agent_dir.path(), agent.port).await;
    let h = wait_status(&s, &hu, "Connected", Duration::from_secs(60)).await;
    assert_eq!(h["status"], "Connected", "{h}");
    assert_eq!(h["cpuNum"], cpu_count());
    assert_eq!(h["totalMemoryCapacity"], mem_total_bytes());
    assert_eq!(s.query(&format!("/hosts/{su}")).await[0]["status"], "Connected");
}
