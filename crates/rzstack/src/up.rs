//! `rzstack up`: an all-in-one cloud on this machine. One process runs the management node
//! (SQLite in the data directory) and the host agent as two tasks, then makes (or finds again,
//! by name) a default topology through the HTTP API, prints a ready `curl` sequence that creates
//! a VM, and runs until SIGINT/SIGTERM.
//!
//! Layout of the data directory: `rzstack.db` (the management node, as `rzstack serve
//! --data-dir` would use it), `agent/` (the agent's token, guests `agent/vms/<uuid>/serial.log`,
//! DHCP servers), `primary-storage/` (local primary storage), `image-store/` (backup storage).
//!
//! On a signal the management node stops first (it lets running jobs finish), then the agent.
//! Guests and their per-L3 dnsmasq keep running, detached, as with any agent restart; the next
//! `rzstack up` on the same data directory re-adopts them.

use serde_json::{json, Value};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// SHA-512 of `password`: what the admin logs in with (ZStack clients hash the password).
const ADMIN_PASSWORD_SHA512: &str = "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb980b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86";

const ZONE: &str = "rzstack-zone";
const CLUSTER: &str = "rzstack-cluster";
const HOST: &str = "rzstack-host";
const PRIMARY_STORAGE: &str = "rzstack-local";
const BACKUP_STORAGE: &str = "rzstack-image-store";
const IMAGE: &str = "rzstack-test-guest";
const L2: &str = "rzstack-l2";
const L3: &str = "rzstack-l3";
const OFFERING: &str = "rzstack-tiny";

pub struct UpConfig {
    pub listen: String,
    pub agent_listen: String,
    pub data_dir: PathBuf,
    pub image: PathBuf,
    pub accel: rzstack_agent::Accel,
}

type Res<T> = std::result::Result<T, String>;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
}

/// Checks that need no runtime; returns the absolute data directory and image path.
fn preflight(cfg: &UpConfig) -> Res<(PathBuf, PathBuf)> {
    if !is_root() {
        return Err("must run as root (it makes bridges, taps and DHCP servers)".into());
    }
    for cmd in ["qemu-system-x86_64", "qemu-img", "dnsmasq", "ip"] {
        if !on_path(cmd) {
            return Err(format!("{cmd} is not installed (bash scripts/run.sh installs what rzstack needs)"));
        }
    }
    let image = std::fs::canonicalize(&cfg.image).map_err(|e| {
        format!(
            "the guest image {} is missing ({e}); build it with bash scripts/make-test-image.sh",
            cfg.image.display()
        )
    })?;
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", cfg.data_dir.display()))?;
    let data = std::fs::canonicalize(&cfg.data_dir).map_err(|e| format!("{}: {e}", cfg.data_dir.display()))?;
    Ok((data, image))
}

fn port_of(listen: &str) -> Res<u16> {
    listen.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).ok_or_else(|| format!("{listen} is not HOST:PORT"))
}

/// `http://HOST:PORT` a local client can reach for a listen address (0.0.0.0 → 127.0.0.1).
fn local_url(listen: &str) -> Res<String> {
    let port = port_of(listen)?;
    let host = listen.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    Ok(format!("http://{host}:{port}"))
}

/// Waits until `rx` says stop (or its sender is gone).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

pub fn main(cfg: UpConfig, signal: impl Future<Output = ()> + Send + 'static) -> ExitCode {
    let (data, image) = match preflight(&cfg) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("rzstack up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let agent_port = match port_of(&cfg.agent_listen) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rzstack up: --agent-listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The management node reaches KVM hosts' agents on this port (read when it calls them).
    // Set before the runtime starts any thread.
    std::env::set_var("RZSTACK_KVM_AGENT_PORT", agent_port.to_string());
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg, data, image, signal)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rzstack up: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    cfg: UpConfig,
    data: PathBuf,
    image: PathBuf,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Res<()> {
    let agent_dir = data.join("agent");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let (agent_stop_tx, agent_stop_rx) = tokio::sync::watch::channel(false);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        signal.await;
        on_signal.send_replace(true);
    });

    let mut agent = tokio::spawn(rzstack_agent::run(
        rzstack_agent::Config {
            listen: cfg.agent_listen.clone(),
            data_dir: agent_dir.clone(),
            accel: cfg.accel,
            token: None,
        },
        stopped(agent_stop_rx),
    ));
    let mut server = tokio::spawn(rzstack_server::serve(
        rzstack_server::Config { listen: cfg.listen.clone(), database: None, data_dir: data.clone() },
        stopped(stop_rx.clone()),
    ));

    let url = local_url(&cfg.listen)?;
    let agent_url = local_url(&cfg.agent_listen)?;
    let setup = async {
        wait_ready(&url, &agent_url).await?;
        let token = std::fs::read_to_string(agent_dir.join("token"))
            .map_err(|e| format!("cannot read the agent token: {e}"))?
            .trim()
            .to_string();
        let api = Api::login(&url).await?;
        let topo = topology(&api, &data, &image, &token).await?;
        print_banner(&url, &data, &topo);
        Ok::<(), String>(())
    };

    // Set-up races the signal and an early end of either task (e.g. a port already in use).
    let mut result = Ok(());
    let mut server_done = None;
    let mut agent_done = None;
    tokio::select! {
        r = setup => {
            if let Err(e) = r {
                result = Err(e);
            }
        }
        _ = stopped(stop_rx.clone()) => {}
        r = &mut server => server_done = Some(r),
        r = &mut agent => agent_done = Some(r),
    }
    if result.is_ok() && server_done.is_none() && agent_done.is_none() {
        // Up: run until a signal or until one of them fails.
        tokio::select! {
            _ = stopped(stop_rx.clone()) => {}
            r = &mut server => server_done = Some(r),
            r = &mut agent => agent_done = Some(r),
        }
    }
    // Stop: the management node first (it finishes running jobs, which may call the agent),
    // then the agent.
    eprintln!("rzstack up: stopping");
    stop_tx.send_replace(true);
    let server_res = match server_done {
        Some(r) => r,
        None => server.await,
    };
    agent_stop_tx.send_replace(true);
    let agent_res = match agent_done {
        Some(r) => r,
        None => agent.await,
    };
    match server_res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result = result.and(Err(format!("management node: {e}"))),
        Err(e) => result = result.and(Err(format!("management node task: {e}"))),
    }
    match agent_res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => result = result.and(Err(format!("host agent: {e}"))),
        Err(e) => result = result.and(Err(format!("host agent task: {e}"))),
    }
    if result.is_ok() {
        eprintln!(
            "rzstack up: stopped (guests and their DHCP servers keep running; the next `rzstack up` re-adopts them)"
        );
    }
    result
}

async fn wait_ready(url: &str, agent_url: &str) -> Res<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut server_up = false;
    let mut agent_up = false;
    while !(server_up && agent_up) {
        if Instant::now() > deadline {
            return Err(format!("not ready after 120 s (management node: {server_up}, agent: {agent_up})"));
        }
        if !server_up {
            server_up = http
                .get(format!("{url}/zstack/v1/management-nodes/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 200);
        }
        if !agent_up {
            // Without its token the agent answers 401: it is up.
            agent_up = http
                .post(format!("{agent_url}/v1/host/ping"))
                .body("{}")
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 401);
        }
        if !(server_up && agent_up) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A ZStack REST client for the set-up (admin session, async job polling).
struct Api {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Api {
    async fn login(url: &str) -> Res<Api> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().map_err(|e| e.to_string())?;
        let mut api = Api { http, base: format!("{url}/zstack/v1"), session: String::new() };
        let r = api
            .send(
                "PUT",
                "/accounts/login",
                Some(json!({"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD_SHA512}})),
            )
            .await?;
        api.session = r["inventory"]["uuid"].as_str().ok_or_else(|| format!("login: {r}"))?.to_string();
        Ok(api)
    }

    async fn raw(&self, method: &str, url: &str, body: Option<Value>) -> Res<(u16, Value)> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut rb = self.http.request(m, url);
        if !self.session.is_empty() {
            rb = rb.header("Authorization", format!("OAuth {}", self.session));
        }
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json;charset=UTF-8").body(b.to_string());
        }
        let r = rb.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| format!("{method} {url}: {e}"))?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// A call: 200 answers at once; 202 is polled to its end; anything else is an error.
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Res<Value> {
        let (status, v) = self.raw(method, &format!("{}{path}", self.base), body).await?;
        match status {
            200 => Ok(v),
            202 => {
                let loc = v["location"].as_str().ok_or_else(|| format!("{method} {path}: no location in {v}"))?;
                let deadline = Instant::now() + Duration::from_secs(600);
                loop {
                    let (st, r) = self.raw("GET", loc, None).await?;
                    match st {
                        202 if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                        200 => return Ok(r),
                        _ => return Err(format!("{method} {path}: {st} {r}")),
                    }
                }
            }
            _ => Err(format!("{method} {path}: {status} {v}")),
        }
    }

    async fn query(&self, path: &str) -> Res<Vec<Value>> {
        let r = self.send("GET", path, None).await?;
        Ok(r["inventories"].as_array().cloned().unwrap_or_default())
    }

    /// The one inventory named `name` at `path`, if any.
    async fn by_name(&self, path: &str, name: &str) -> Res<Option<Value>> {
        Ok(self.query(&format!("{path}?q=name={name}")).await?.into_iter().next())
    }

    /// Finds `name` at `query_path`, else creates it with `create_path` + `params`.
    async fn ensure(&self, query_path: &str, name: &str, create_path: &str, params: Value) -> Res<(Value, bool)> {
        if let Some(v) = self.by_name(query_path, name).await? {
            return Ok((v, false));
        }
        let r = self.send("POST", create_path, Some(json!({ "params": params }))).await?;
        Ok((r["inventory"].clone(), true))
    }
}

fn uuid(v: &Value) -> Res<String> {
    v["uuid"].as_str().map(str::to_string).ok_or_else(|| format!("no uuid in {v}"))
}

fn contains(list: &Value, s: &str) -> bool {
    list.as_array().is_some_and(|a| a.iter().any(|x| x.as_str() == Some(s)))
}

struct Topology {
    cluster: String,
    image: String,
    l3: String,
    offering: String,
    interface: String,
    range: String,
    created: Vec<String>,
}

/// A stable interface name for this data directory (two `up`s on two directories get two).
fn interface_for(data: &Path) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in data.to_string_lossy().bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    format!("rzs{:06x}", h & 0xff_ffff)
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The L2's interface: a dummy interface where the kernel has them, else one end of a veth pair
/// (`<name>p` is the other end). Never the uplink.
fn ensure_interface(name: &str) -> Res<()> {
    if name == "eth0" || name == "lo" {
        return Err(format!("refusing to use {name} as the L2 interface"));
    }
    if Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    if sh(&["ip", "link", "add", name, "type", "dummy"]) {
        return Ok(());
    }
    let peer = format!("{name}p");
    if !sh(&["ip", "link", "add", name, "type", "veth", "peer", "name", &peer]) {
        return Err(format!("cannot create the interface {name} (neither dummy nor veth)"));
    }
    sh(&["ip", "link", "set", "dev", &peer, "up"]);
    Ok(())
}

fn parse_v4(s: &str) -> Option<u32> {
    s.parse::<std::net::Ipv4Addr>().ok().map(u32::from)
}

/// IPv4 prefixes routed on this machine (every table), without the default routes.
fn routed_prefixes() -> Vec<(u32, u32)> {
    let out = Command::new("ip").args(["-4", "route", "show", "table", "all"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines() {
        let mut t = line.split_whitespace();
        let mut dst = t.next().unwrap_or("");
        if ["local", "broadcast", "unicast", "multicast", "blackhole", "unreachable", "prohibit", "throw", "anycast"]
            .contains(&dst)
        {
            dst = t.next().unwrap_or("");
        }
        if dst == "default" {
            continue;
        }
        let (a, len) = match dst.split_once('/') {
            Some((a, l)) => (a, l.parse::<u32>().unwrap_or(32)),
            None => (dst, 32),
        };
        if let Some(ip) = parse_v4(a) {
            if len > 0 && len <= 32 {
                v.push((ip, len));
            }
        }
    }
    v
}

/// The first 10.251.N.0/24 that no route on this machine overlaps.
fn free_range() -> Res<String> {
    let routes = routed_prefixes();
    for n in 0..=255u32 {
        let net = (10 << 24) | (251 << 16) | (n << 8);
        let overlaps = routes.iter().any(|&(ip, len)| {
            let l = len.min(24);
            let mask = if l == 0 { 0 } else { u32::MAX << (32 - l) };
            ip & mask == net & mask
        });
        if !overlaps {
            return Ok(format!("10.251.{n}"));
        }
    }
    Err("no free 10.251.N.0/24 network on this machine".into())
}

async fn topology(api: &Api, data: &Path, image_file: &Path, token: &str) -> Res<Topology> {
    let mut created = Vec::new();
    let mut note = |what: &str, made: bool| {
        if made {
            created.push(what.to_string());
        }
    };

    let (zone, made) = api.ensure("/zones", ZONE, "/zones", json!({"name": ZONE})).await?;
    note("zone", made);
    let zone = uuid(&zone)?;
    let (cluster, made) = api
        .ensure("/clusters", CLUSTER, "/clusters", json!({"name": CLUSTER, "zoneUuid": zone, "hypervisorType": "KVM"}))
        .await?;
    note("cluster", made);
    let cluster = uuid(&cluster)?;

    // This machine as a KVM host: the agent of this process, its token as the password.
    match api.query("/hosts?q=managementIp=127.0.0.1").await?.into_iter().next() {
        Some(h) => {
            let h = uuid(&h)?;
            api.send("PUT", &format!("/hosts/kvm/{h}/actions"), Some(json!({"updateKVMHost": {"password": token}})))
                .await?;
            api.send("PUT", &format!("/hosts/{h}/actions"), Some(json!({"reconnectHost": {}}))).await?;
        }
        None => {
            api.send(
                "POST",
                "/hosts/kvm",
                Some(json!({"params": {"name": HOST, "managementIp": "127.0.0.1", "clusterUuid": cluster,
                    "username": "root", "password": token}})),
            )
            .await?;
            note("host", true);
        }
    }

    let ps_dir = data.join("primary-storage");
    let bs_dir = data.join("image-store");
    for d in [&ps_dir, &bs_dir] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let (ps, made) = api
        .ensure(
            "/primary-storage",
            PRIMARY_STORAGE,
            "/primary-storage/local-storage",
            json!({"name": PRIMARY_STORAGE, "url": ps_dir, "zoneUuid": zone}),
        )
        .await?;
    note("local primary storage", made);
    if !contains(&ps["attachedClusterUuids"], &cluster) {
        api.send("POST", &format!("/clusters/{cluster}/primary-storage/{}", uuid(&ps)?), None).await?;
    }
    let (bs, made) = api
        .ensure(
            "/backup-storage",
            BACKUP_STORAGE,
            "/backup-storage/image-store",
            json!({"name": BACKUP_STORAGE, "url": bs_dir, "hostname": "127.0.0.1", "username": "root",
                "password": "password", "sshPort": 22}),
        )
        .await?;
    note("image store backup storage", made);
    let bs = uuid(&bs)?;
    let attached = api.query(&format!("/backup-storage/{bs}")).await?;
    if !attached.first().is_some_and(|b| contains(&b["attachedZoneUuids"], &zone)) {
        api.send("POST", &format!("/zones/{zone}/backup-storage/{bs}"), None).await?;
    }
    let (image, made) = api
        .ensure(
            "/images",
            IMAGE,
            "/images",
            json!({"name": IMAGE, "url": format!("file://{}", image_file.display()), "format": "qcow2",
                "backupStorageUuids": [bs], "platform": "Linux", "architecture": "x86_64",
                "description": "the rzstack test guest (scripts/make-test-image.sh)"}),
        )
        .await?;
    note("image", made);
    if image["status"] != "Ready" {
        return Err(format!("the image {IMAGE} is not Ready: {image}"));
    }
    let image = uuid(&image)?;

    // L2 NoVlan on an interface of its own.
    let existing_l2 = api.by_name("/l2-networks", L2).await?;
    let interface = match &existing_l2 {
        Some(l2) => l2["physicalInterface"].as_str().unwrap_or_default().to_string(),
        None => interface_for(data),
    };
    ensure_interface(&interface)?;
    let (l2, made) = api
        .ensure(
            "/l2-networks",
            L2,
            "/l2-networks/no-vlan",
            json!({"name": L2, "zoneUuid": zone, "physicalInterface": interface}),
        )
        .await?;
    note("L2 network", made);
    if !contains(&l2["attachedClusterUuids"], &cluster) {
        api.send("POST", &format!("/l2-networks/{}/clusters/{cluster}", uuid(&l2)?), None).await?;
    }
    let (l3v, made) =
        api.ensure("/l3-networks", L3, "/l3-networks", json!({"name": L3, "l2NetworkUuid": uuid(&l2)?})).await?;
    note("L3 network", made);
    let l3 = uuid(&l3v)?;
    let range = match l3v["ipRanges"].as_array().and_then(|a| a.first()) {
        Some(r) => format!(
            "{}-{} gateway {}",
            r["startIp"].as_str().unwrap_or("?"),
            r["endIp"].as_str().unwrap_or("?"),
            r["gateway"].as_str().unwrap_or("?")
        ),
        None => {
            let net = free_range()?;
            api.send(
                "POST",
                &format!("/l3-networks/{l3}/ip-ranges"),
                Some(json!({"params": {"name": "rzstack-range", "startIp": format!("{net}.100"),
                    "endIp": format!("{net}.250"), "netmask": "255.255.255.0", "gateway": format!("{net}.1")}})),
            )
            .await?;
            note("IP range", true);
            format!("{net}.100-{net}.250 gateway {net}.1")
        }
    };
    let has_dhcp =
        l3v["networkServices"].as_array().is_some_and(|a| a.iter().any(|s| s["networkServiceType"] == "DHCP"));
    if !has_dhcp {
        let flat = api.query("/network-services/providers?q=type=Flat").await?;
        let flat = uuid(flat.first().ok_or("no Flat network service provider")?)?;
        api.send(
            "POST",
            &format!("/l3-networks/{l3}/network-services"),
            Some(json!({"params": {"networkServices": {flat: ["DHCP", "DNS"]}}})),
        )
        .await?;
        note("Flat DHCP", true);
    }
    let (offering, made) = api
        .ensure(
            "/instance-offerings",
            OFFERING,
            "/instance-offerings",
            json!({"name": OFFERING, "cpuNum": 1, "memorySize": 256u64 << 20}),
        )
        .await?;
    note("instance offering", made);
    let offering = uuid(&offering)?;
    Ok(Topology { cluster, image, l3, offering, interface, range, created })
}

fn print_banner(url: &str, data: &Path, t: &Topology) {
    let api = format!("{url}/zstack/v1");
    let body = json!({"params": {"name": "vm1", "instanceOfferingUuid": t.offering, "imageUuid": t.image,
        "l3NetworkUuids": [t.l3], "clusterUuid": t.cluster, "description": "this is a vm",
        "strategy": "InstantStart"}});
    let login = json!({"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD_SHA512}});
    let created = if t.created.is_empty() { "nothing (all found again)".to_string() } else { t.created.join(", ") };
    println!();
    println!("rzstack is up: {url}/zstack");
    println!("  admin login: admin / password (the API takes its SHA-512, as ZStack clients send it)");
    println!("  data:        {}", data.display());
    println!("  network:     {L3} on {} (bridge br_{}), IPs {}", t.interface, t.interface, t.range);
    println!("  created:     {created}");
    println!("  guests' serial consoles: {}/agent/vms/<vm uuid>/serial.log", data.display());
    println!();
    println!("Create a VM (log in, POST /zstack/v1/vm-instances, poll the job):");
    println!();
    println!(
        "SESSION=$(curl -s -X PUT -H 'Content-Type: application/json;charset=UTF-8' -d '{login}' {api}/accounts/login \
         | grep -o '\"uuid\":\"[0-9a-f]*\"' | head -n 1 | cut -d '\"' -f 4)"
    );
    println!(
        "LOCATION=$(curl -s -X POST -H \"Authorization: OAuth $SESSION\" -H 'Content-Type: application/json;charset=UTF-8' \
         -d '{body}' {api}/vm-instances | grep -o '\"location\":\"[^\"]*\"' | cut -d '\"' -f 4)"
    );
    println!(
        "while [ \"$(curl -s -o /dev/null -w '%{{http_code}}' \"$LOCATION\")\" = 202 ]; do sleep 1; done; curl -s \"$LOCATION\"; echo"
    );
    println!();
    println!("Ctrl-C stops rzstack; guests keep running and the next `rzstack up` re-adopts them.");
    use std::io::Write;
    let _ = std::io::stdout().flush();
}
