//! rzstack benchmarks, run through the real HTTP API as an SDK would (202 + polling).
//!
//! `cargo run --release -p rzstack-bench -- <scenario> [options]` starts its own management node
//! (the `rzstack` binary next to this one) on a fresh database, builds a simulated topology
//! through the API, runs the scenario and prints a Markdown table. Scenarios:
//! - `create`: N CreateVmInstance calls from C concurrent clients on simulated hosts; then checks
//!   that used IPs = NICs, allocated host capacity = the VMs' sum, and no job is left running.
//! - `query`: p50/p99 of typical queries over the VMs that `create` made. With `--api-vms K`,
//!   only K VMs are created through the API; the node is then stopped, their rows are copied
//!   in the database until N VMs exist (see `seed.rs`), and the node is started again.
//! - `scale`: `create`, then destroys and expunges every VM and checks that every IP, NIC,
//!   volume and unit of host and primary-storage capacity is free again.
//! - `idle`: the management node's start time and idle RSS.
//!
//! Figures are printed, never asserted: a slow machine is not a failure. Correctness is asserted.

mod boot;
mod seed;

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Scenario {
    Idle,
    Create,
    Query,
    Scale,
    /// Real guests under QEMU on this machine (needs root): see boot.rs.
    Boot,
}

#[derive(Parser, Debug)]
struct Args {
    scenario: Scenario,
    /// VMs to create.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Simulated hosts.
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Query repetitions per query kind.
    #[arg(long, default_value_t = 200)]
    repeat: usize,
    /// Database URL for the management node (default: SQLite in a temporary directory).
    #[arg(long)]
    database: Option<String>,
    /// `boot` only: guests booted per root-volume kind (linked clone, thick).
    #[arg(long, default_value_t = 10)]
    boots: usize,
    /// `boot` only: the guest image (default: scripts/make-test-image.sh's, built on demand).
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// `query` only: create this many VMs through the API and make the rest of the N by copying
    /// their rows in the database with the node stopped (N must be a multiple of it). Default:
    /// all N through the API.
    #[arg(long)]
    api_vms: Option<usize>,
}

const ADMIN_PASSWORD: &str = "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb980b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86";
const GB: i64 = 1 << 30;

type Res<T> = Result<T, String>;

struct Node {
    child: Child,
    base: String,
    dir: Option<tempfile::TempDir>,
    started: Duration,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Stop the node; its data directory stays.
    fn stop(mut self) -> Option<tempfile::TempDir> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir.take()
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

async fn start_node(http: &reqwest::Client, database: Option<&str>, dir: Option<tempfile::TempDir>) -> Res<Node> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let rzstack = exe.with_file_name("rzstack");
    if !rzstack.exists() {
        return Err(format!("{} not found: build it with `cargo build --release -p rzstack`", rzstack.display()));
    }
    let dir = match dir {
        Some(d) => d,
        None => tempfile::tempdir().map_err(|e| e.to_string())?,
    };
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let mut cmd = Command::new(rzstack);
    cmd.arg("serve").arg("--listen").arg(format!("127.0.0.1:{port}")).arg("--data-dir").arg(dir.path());
    if let Some(db) = database {
        cmd.arg("--database").arg(db);
    }
    cmd.env("RZSTACK_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::inherit());
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    let base = format!("http://127.0.0.1:{port}/zstack/v1");
    loop {
        if let Ok(r) = http.get(format!("{base}/management-nodes/ready")).send().await {
            if r.status().as_u16() == 200 {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("management node did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Node { child, base, dir: Some(dir), started: t0.elapsed() })
}

struct Client {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Client {
    async fn login(http: reqwest::Client, base: String) -> Res<Client> {
        let r = http
            .put(format!("{base}/accounts/login"))
            .body(json!({"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}}).to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        let session = v["inventory"]["uuid"].as_str().ok_or("login failed")?.to_string();
        Ok(Client { http, base, session })
    }

    /// Submit an async API; returns (time to the 202, time to the job's end, result).
    async fn job(&self, method: reqwest::Method, path: &str, body: Value) -> Res<(Duration, Duration, Value)> {
        let t0 = Instant::now();
        let r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("Authorization", format!("OAuth {}", self.session))
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let accepted = t0.elapsed();
        if r.status().as_u16() != 202 {
            return Err(format!("{path}: status {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        let loc = v["location"].as_str().ok_or("no location")?.to_string();
        let mut wait = Duration::from_millis(2);
        loop {
            let r = self.http.get(&loc).send().await.map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                202 => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
                200 => return Ok((accepted, t0.elapsed(), r.json().await.map_err(|e| e.to_string())?)),
                s => return Err(format!("{path}: job ended {s}: {}", r.text().await.unwrap_or_default())),
            }
        }
    }

    async fn ok(&self, path: &str, body: Value) -> Res<String> {
        let (_, _, v) = self.job(reqwest::Method::POST, path, body).await?;
        Ok(v["inventory"]["uuid"].as_str().unwrap_or_default().to_string())
    }

    /// A GET; the time is until the last byte of the answer arrived (parsing it is the client's).
    async fn get(&self, path: &str) -> Res<(Duration, Value)> {
        let t0 = Instant::now();
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("OAuth {}", self.session))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(|e| e.to_string())?;
        let took = t0.elapsed();
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if status != 200 {
            return Err(format!("GET {path}: {status} {v}"));
        }
        Ok((took, v))
    }
}

struct Topology {
    offering: String,
    image: String,
    l3: String,
    _dir: tempfile::TempDir,
}

async fn build_topology(c: &Client, hosts: usize, vms: usize, host_cpu: usize) -> Res<Topology> {
    let dir = tempfile::Builder::new().prefix("rzbench").tempdir().map_err(|e| e.to_string())?;
    let zone = c.ok("/zones", json!({"params": {"name": "bench"}})).await?;
    let cluster =
        c.ok("/clusters", json!({"params": {"zoneUuid": zone, "name": "c", "hypervisorType": "Simulator"}})).await?;
    for i in 0..hosts {
        c.ok(
            "/hosts/simulators",
            json!({"params": {"name": format!("h{i}"), "managementIp": format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256),
                "clusterUuid": cluster, "cpuCapacity": host_cpu, "memoryCapacity": 1024 * GB}}),
        )
        .await?;
    }
    let ps = c
        .ok(
            "/primary-storage/simulators",
            json!({"params": {"name": "ps", "url": "/ps", "zoneUuid": zone, "totalCapacity": 1i64 << 60, "availableCapacity": 1i64 << 60}}),
        )
        .await?;
    c.job(reqwest::Method::POST, &format!("/clusters/{cluster}/primary-storage/{ps}"), json!({})).await?;
    let bs = c
        .ok(
            "/backup-storage/image-store",
            json!({"params": {"name": "bs", "url": dir.path().join("bs").display().to_string(), "hostname": "127.0.0.1", "username": "root", "password": "p"}}),
        )
        .await?;
    c.job(reqwest::Method::POST, &format!("/zones/{zone}/backup-storage/{bs}"), json!({})).await?;
    let img = dir.path().join("img.qcow2");
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&img).arg("1G").status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        return Err("qemu-img create failed".into());
    }
    let image = c
        .ok(
            "/images",
            json!({"params": {"name": "img", "url": format!("file://{}", img.display()), "format": "qcow2", "backupStorageUuids": [bs]}}),
        )
        .await?;
    let offering =
        c.ok("/instance-offerings", json!({"params": {"name": "o", "cpuNum": 1, "memorySize": 64 << 20}})).await?;
    let l2 = c
        .ok("/l2-networks/no-vlan", json!({"params": {"name": "l2", "zoneUuid": zone, "physicalInterface": "bench0"}}))
        .await?;
    c.job(reqwest::Method::POST, &format!("/l2-networks/{l2}/clusters/{cluster}"), json!({"null": {}})).await?;
    let l3 = c.ok("/l3-networks", json!({"params": {"name": "l3", "l2NetworkUuid": l2}})).await?;
    // a /16 holds 65k addresses; more VMs need a wider range
    let prefix = if vms < 60_000 { 16 } else { 12 };
    c.ok(
        &format!("/l3-networks/{l3}/ip-ranges/by-cidr"),
        json!({"params": {"name": "r", "networkCidr": format!("172.16.0.0/{prefix}"), "gateway": "172.16.0.1"}}),
    )
    .await?;
    Ok(Topology { offering, image, l3, _dir: dir })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

/// What `create` measured.
struct Created {
    wall: Duration,
    accepted: Vec<Duration>,
    done: Vec<Duration>,
    errors: usize,
    /// each client's login (its own session, on a connection of its own), before the clock
    logins: Vec<Duration>,
}

/// `n` creates by `conc` clients. Each client first logs in with a session of its own, as an
/// SDK client does before its first call; that also opens the client's HTTP connection, kept
/// alive for its calls. The clock starts after the logins (reported on their own), so that the
/// 202 figures are the API's answer, not TCP connection set-up on the same 2 cores.
async fn create(c: &Client, t: &Topology, n: usize, conc: usize) -> Res<Created> {
    let mut logins = Vec::with_capacity(conc);
    let mut clients = Vec::with_capacity(conc);
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let (http, base) = (c.http.clone(), c.base.clone());
            tokio::spawn(async move {
                let t0 = Instant::now();
                let c = Client::login(http, base).await?;
                Ok::<_, String>((t0.elapsed(), c))
            })
        })
        .collect();
    for t in tasks {
        let (took, c) = t.await.map_err(|e| e.to_string())??;
        logins.push(took);
        clients.push(Arc::new(c));
    }
    logins.sort();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in clients {
        let next = next.clone();
        let body =
            json!({"params": {"instanceOfferingUuid": t.offering, "imageUuid": t.image, "l3NetworkUuids": [t.l3]}});
        tasks.push(tokio::spawn(async move {
            let mut acc = Vec::new();
            let mut done = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let mut b = body.clone();
                b["params"]["name"] = json!(format!("vm-{i}"));
                match c.job(reqwest::Method::POST, "/vm-instances", b).await {
                    Ok((a, d, _)) => {
                        acc.push(a);
                        done.push(d);
                    }
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("create failed: {e}");
                        }
                    }
                }
            }
            (acc, done, errors)
        }));
    }
    let (mut acc, mut done, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        let (a, d, e) = t.await.map_err(|e| e.to_string())?;
        acc.extend(a);
        done.extend(d);
        errors += e;
    }
    let wall = t0.elapsed();
    acc.sort();
    done.sort();
    Ok(Created { wall, accepted: acc, done, errors, logins })
}

/// Correctness after `create`: used IPs = NICs, host capacity used = the VMs' sum.
async fn verify(c: &Client, expect_vms: usize) -> Res<()> {
    let (_, v) = c.get("/vm-instances?count=true").await?;
    let vms = v["total"].as_u64().unwrap_or(0) as usize;
    if vms != expect_vms {
        return Err(format!("{vms} VMs exist, {expect_vms} expected"));
    }
    let (_, v) = c.get("/vm-instances/nics?count=true").await?;
    let nics = v["total"].as_u64().unwrap_or(0);
    let (_, cap) = c.get("/ip-capacity?all=true").await?;
    let used = cap["usedIpAddressNumber"].as_u64().unwrap_or(u64::MAX);
    if used != nics {
        return Err(format!("{used} used IPs but {nics} NICs"));
    }
    let (_, h) = c.get("/hosts/capacities/cpu-memory?all=true").await?;
    let used_cpu = h["totalCpu"].as_i64().unwrap_or(0) - h["availableCpu"].as_i64().unwrap_or(0);
    let (_, running) = c.get("/vm-instances?q=state=Running&count=true").await?;
    let running = running["total"].as_i64().unwrap_or(-1);
    if used_cpu != running {
        return Err(format!("{used_cpu} CPUs allocated for {running} running 1-CPU VMs"));
    }
    Ok(())
}

/// Destroy and expunge every VM from `conc` clients, then check that nothing is left allocated.
async fn teardown(c: Arc<Client>, conc: usize, before: &Value) -> Res<()> {
    let (_, all) = c.get("/vm-instances?fields=uuid&limit=1000000").await?;
    let uuids: Vec<String> = all["inventories"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v["uuid"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let n = uuids.len();
    let queue = Arc::new(std::sync::Mutex::new(uuids));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (c, queue) = (c.clone(), queue.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                let Some(u) = next else { return Ok::<(), String>(()) };
                c.job(reqwest::Method::DELETE, &format!("/vm-instances/{u}?deleteMode=Permissive"), json!({})).await?;
                c.job(reqwest::Method::PUT, &format!("/vm-instances/{u}/actions"), json!({"expungeVmInstance": {}}))
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let wall = t0.elapsed();
    println!("| destroy + expunge | {n} VMs in {:.2} s ({:.0}/s) |", wall.as_secs_f64(), n as f64 / wall.as_secs_f64());
    let count = |v: &Value| v["total"].as_i64().unwrap_or(-1);
    for (what, path) in [
        ("VMs", "/vm-instances?count=true"),
        ("NICs", "/vm-instances/nics?count=true"),
        ("volumes", "/volumes?count=true"),
    ] {
        let (_, v) = c.get(path).await?;
        if count(&v) != 0 {
            return Err(format!("{} {what} left after expunging every VM", count(&v)));
        }
    }
    let (_, cap) = c.get("/ip-capacity?all=true").await?;
    if cap["usedIpAddressNumber"].as_i64() != Some(0) {
        return Err(format!("IPs still used after expunge: {cap}"));
    }
    let (_, h) = c.get("/hosts/capacities/cpu-memory?all=true").await?;
    if h["availableCpu"] != before["availableCpu"] || h["availableMemory"] != before["availableMemory"] {
        return Err(format!("host capacity not free after expunge: {h}"));
    }
    let (_, ps) = c.get("/primary-storage").await?;
    for p in ps["inventories"].as_array().cloned().unwrap_or_default() {
        if p["availableCapacity"] != p["totalCapacity"] {
            return Err(format!("primary storage capacity not free after expunge: {p}"));
        }
    }
    println!("| leaks after expunge | none (0 VMs, NICs, volumes, used IPs; host CPU and PS capacity all free) |");
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Res<()> {
    if args.scenario == Scenario::Boot {
        return boot::run(args.boots, args.image).await;
    }
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().map_err(|e| e.to_string())?;
    let mut node = start_node(&http, args.database.as_deref(), None).await?;
    let db = if args.database.as_deref().is_some_and(|d| d.starts_with("postgres")) { "PostgreSQL" } else { "SQLite" };
    println!("Machine: {}; database: {db}\n", machine());
    let mut pid = node.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(pid).unwrap_or(0);
    println!("| figure | value |\n|---|---|");
    println!("| start to ready | {:.0} ms |", node.started.as_secs_f64() * 1000.0);
    println!("| RSS idle | {:.1} MiB |", idle_rss as f64 / 1024.0);
    if args.scenario == Scenario::Idle {
        return Ok(());
    }
    let api_vms = match args.api_vms {
        Some(k) if args.scenario == Scenario::Query && k < args.n => {
            if k == 0 || !args.n.is_multiple_of(k) {
                return Err(format!("--n {} must be a multiple of --api-vms {k}", args.n));
            }
            k
        }
        _ => args.n,
    };
    // Copies sit on their template's host: leave room for them.
    let host_cpu = if api_vms < args.n { (4 * args.n / args.hosts.max(1)).max(256) } else { 256 };
    let mut c = Arc::new(Client::login(http.clone(), node.base.clone()).await?);
    let t = build_topology(&c, args.hosts, args.n, host_cpu).await?;
    let (_, free_capacity) = c.get("/hosts/capacities/cpu-memory?all=true").await?;
    let (_, hosts_before) =
        c.get("/hosts?fields=uuid,availableCpuCapacity,availableMemoryCapacity&limit=1000000").await?;
    let (_, ps_before) = c.get("/primary-storage?fields=uuid,availableCapacity").await?;
    let Created { wall, accepted: acc, done, errors, logins } = create(&c, &t, api_vms, args.concurrency).await?;
    println!(
        "| client logins before the clock | {} at once, each a new connection: p50 / max {:.1} / {:.1} ms |",
        logins.len(),
        pct(&logins, 0.5),
        logins.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    println!("| creates | {} by {} clients on {} hosts |", api_vms, args.concurrency, args.hosts);
    println!("| wall time | {:.2} s |", wall.as_secs_f64());
    println!("| creates/s | {:.0} |", acc.len() as f64 / wall.as_secs_f64());
    println!("| 202 answer p50 / p99 | {:.1} / {:.1} ms |", pct(&acc, 0.5), pct(&acc, 0.99));
    println!("| job done p50 / p99 | {:.1} / {:.1} ms |", pct(&done, 0.5), pct(&done, 0.99));
    println!("| errors | {errors} |");
    println!("| RSS after creates | {:.1} MiB |", rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    if errors > 0 {
        return Err(format!("{errors} creates failed"));
    }
    verify(&c, api_vms).await?;
    println!("| leaks | none (used IPs = NICs, CPU allocated = running VMs) |");
    if args.scenario == Scenario::Scale {
        teardown(c.clone(), args.concurrency, &free_capacity).await?;
    }
    if api_vms < args.n {
        let list = |v: &Value, keys: &[&str]| -> Vec<Vec<Value>> {
            v["inventories"]
                .as_array()
                .map(|a| a.iter().map(|i| keys.iter().map(|k| i[*k].clone()).collect()).collect())
                .unwrap_or_default()
        };
        let taken = seed::Taken {
            hosts: list(&hosts_before, &["uuid", "availableCpuCapacity", "availableMemoryCapacity"])
                .into_iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap_or_default().to_string(),
                        r[1].as_i64().unwrap_or(0),
                        r[2].as_i64().unwrap_or(0),
                    )
                })
                .collect(),
            ps: list(&ps_before, &["uuid", "availableCapacity"])
                .into_iter()
                .map(|r| (r[0].as_str().unwrap_or_default().to_string(), r[1].as_i64().unwrap_or(0)))
                .collect(),
        };
        let dir = node.stop().ok_or("no data directory")?;
        let url = match &args.database {
            Some(d) => d.clone(),
            None => format!("sqlite://{}", dir.path().join("rzstack.db").display()),
        };
        let t0 = Instant::now();
        let r = seed::copy_vms(&url, args.n, &taken).await?;
        println!(
            "| bulk copy | {} copies of the {api_vms} VMs, {} rows in {:.1} s, node stopped |",
            r.copies,
            r.rows,
            t0.elapsed().as_secs_f64()
        );
        node = start_node(&http, args.database.as_deref(), Some(dir)).await?;
        pid = node.child.id();
        println!("| restart with {} VMs | {:.0} ms to ready |", args.n, node.started.as_secs_f64() * 1000.0);
        c = Arc::new(Client::login(http.clone(), node.base.clone()).await?);
        verify(&c, args.n).await?;
        println!("| after the copy | {} VMs; used IPs = NICs, CPU allocated = running VMs |", args.n);
        println!("| RSS after restart | {:.1} MiB |", rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    }
    if args.scenario == Scenario::Query {
        let (_, one) = c.get("/vm-instances?limit=1").await?;
        let uuid = one["inventories"][0]["uuid"].as_str().unwrap_or_default().to_string();
        let ip = one["inventories"][0]["vmNics"][0]["ip"].as_str().unwrap_or_default().to_string();
        for (label, path) in [
            ("state=Running, limit 1000", "/vm-instances?q=state=Running&limit=1000".to_string()),
            ("nested vmNics.ip", format!("/vm-instances?q=vmNics.ip={ip}")),
            ("count", "/vm-instances?count=true".to_string()),
            ("/{uuid}", format!("/vm-instances/{uuid}")),
        ] {
            let mut times = Vec::with_capacity(args.repeat);
            for _ in 0..args.repeat {
                times.push(c.get(&path).await?.0);
            }
            times.sort();
            println!("| query {label} p50 / p99 | {:.1} / {:.1} ms |", pct(&times, 0.5), pct(&times, 0.99));
        }
        println!("| RSS after queries | {:.1} MiB |", rss_kib(pid).unwrap_or(0) as f64 / 1024.0);
    }
    // RZSTACK_BENCH_KEEP=1 keeps the data directory (e.g. to profile queries on the same data).
    if let Some(dir) = node.stop() {
        if std::env::var_os("RZSTACK_BENCH_KEEP").is_some() {
            #[allow(deprecated)]
            let kept = dir.into_path();
            println!("\ndata directory kept: {}", kept.display());
        }
    }
    Ok(())
}
