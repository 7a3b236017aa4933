//! The `boot` scenario: real guests on this machine as an all-in-one KVM host.
//!
//! It starts `rzstack agent` and `rzstack serve`, builds a topology through the API (zone, KVM
//! cluster, this machine as host, local primary storage, an image store with the test guest of
//! `scripts/make-test-image.sh`, an L2 on a veth end of its own, an L3 with Flat DHCP, a
//! 1 CPU / 256 MiB offering) and, for linked-clone (thin) and thick root volumes in turn,
//! boots `--boots` guests one after the other: the time from the POST of CreateVmInstance to
//! the guest's `RZSTACK-GUEST-BOOTED` line on its serial console. After each, the same guest
//! is booted by a bare `qemu-system-x86_64` with the command line the agent used for it
//! (same accelerator, machine, devices; a fresh root disk of the same kind; a tap of its own on
//! no bridge) from process start to the same line, so the report shows rzstack's own overhead
//! as a difference and a ratio. Also QEMU's RSS per guest. Needs root, QEMU and dnsmasq;
//! otherwise it says why and stops without failing.
//!
//! Pairs alternate their order (rzstack then bare, bare then rzstack, ...) and every boot
//! starts after the same pause (`sync`, 300 ms), so neither kind always follows the other's
//! teardown. Besides the end-to-end clocks, each boot is cut into stages that a busy machine
//! disturbs less: clock start → QEMU's process start (its `/proc` start time), → the first
//! byte on the serial console (the boot loader), → the marker; and at the marker QEMU's CPU
//! time, the time its threads waited for a CPU (schedstat), and the CPU time the management
//! node, agent, dnsmasq and this benchmark used while QEMU ran. One line per boot pair goes to
//! stderr. `RZSTACK_BENCH_AUTOGROUP_NICE` (see [`autogroup_nice`]) keeps other sessions'
//! work from taking the CPUs during the boots on a shared machine.

use super::{machine, pct, rss_kib, Client, Res};
use rzstack_api::agent::VmStartCmd;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "RZSTACK-GUEST-BOOTED";
const BOOT_LIMIT: Duration = Duration::from_secs(300);

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> Res<u16> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

/// Why guests cannot boot here, if they cannot.
fn cannot_run() -> Option<String> {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Some("needs root (bridges, taps, dnsmasq)".into());
    }
    for t in ["qemu-system-x86_64", "qemu-img", "dnsmasq", "ip"] {
        if !sh(&["sh", "-c", &format!("command -v {t}")]) {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

/// Processes, interfaces and directories of the run, ended and removed when dropped.
struct Cleanup {
    children: Vec<Child>,
    links: Vec<String>,
    agent_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = self.agent_dir.to_str() {
            for prog in ["qemu-system", "dnsmasq", "swtpm"] {
                let _ = Command::new("pkill").arg("-f").arg(format!("{prog}.*{d}")).status();
            }
        }
        for l in self.links.iter().rev() {
            if Path::new("/sys/class/net").join(l).exists() {
                sh(&["ip", "link", "del", "dev", l]);
            }
        }
    }
}

/// `/proc/<pid>/stat` fields after the command name: index 0 is field 3 (state).
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(t[t.rfind(')')? + 1..].split_whitespace().map(String::from).collect())
}

/// CPU time (user + system, all threads, ms) of a process.
fn cpu_ms(pid: u32) -> Option<f64> {
    let f = proc_stat(pid)?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 1e3 / CLK_TCK)
}

/// Time (ms) the live threads of a process spent runnable but waiting for a CPU.
fn run_wait_ms(pid: u32) -> Option<f64> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    for e in rd.flatten() {
        let t = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        ns += t.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(ns as f64 / 1e6)
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Seconds since boot (`/proc/uptime`: the clock of `/proc/<pid>/stat` start times).
fn uptime_s() -> f64 {
    std::fs::read_to_string("/proc/uptime").ok().and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

/// The processes besides QEMU that may compete with it for the CPUs during a boot: the
/// management node, the agent, dnsmasq (by its pid files) and this benchmark.
#[derive(Clone)]
struct Helpers {
    pids: Vec<u32>,
    dhcp_dir: PathBuf,
}

impl Helpers {
    fn cpu_ms(&self) -> f64 {
        let mut pids = self.pids.clone();
        pids.push(std::process::id());
        if let Ok(rd) = std::fs::read_dir(&self.dhcp_dir) {
            for e in rd.flatten() {
                if let Some(p) = std::fs::read_to_string(e.path().join("dnsmasq.pid"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                {
                    pids.push(p);
                }
            }
        }
        pids.iter().filter_map(|p| cpu_ms(*p)).sum()
    }
}

/// `RZSTACK_BENCH_AUTOGROUP_NICE` (e.g. `-10`, root only): the scheduler weight of this benchmark's
/// autogroup (its own processes, the management node, the agent and the programs they run) and
/// of each guest's QEMU, whose `-daemonize` puts it in an autogroup of its own. On a machine
/// shared with other work it keeps the other sessions from taking the CPUs during the boots, the
/// same way for rzstack's and the bare QEMU. Unset: the autogroups keep their default weight.
fn autogroup_nice() -> Option<i32> {
    std::env::var("RZSTACK_BENCH_AUTOGROUP_NICE").ok()?.trim().parse().ok()
}

fn set_autogroup_nice(pid: &str, nice: i32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/autogroup"), nice.to_string()) {
        eprintln!("boot: cannot set the autogroup nice of {pid}: {e}");
    }
}

/// One boot as the watcher saw it; times from the boot's clock start.
#[derive(Default, Clone)]
struct Boot {
    /// To the marker: the figure of the issue.
    total: Duration,
    /// To the start of QEMU's (daemonized) process, from its `/proc` start time (10 ms ticks).
    spawn: Option<f64>,
    /// To the first byte on the serial console (the boot loader; the firmware prints nothing).
    first_byte: Option<Duration>,
    /// QEMU's CPU time at the marker (ms).
    qemu_cpu: Option<f64>,
    /// Time QEMU's threads waited for a CPU until the marker (ms).
    qemu_wait: Option<f64>,
    /// CPU time of the other processes ([`Helpers`]) from QEMU's serial file to the marker (ms).
    helpers_cpu: Option<f64>,
    /// The guest's own uptime at the marker (s).
    uptime: Option<f64>,
}

/// Watch `log` (QEMU's serial file; `qemu.pid` next to it) until it contains [`MARKER`],
/// polled every 5 ms reading only what was appended.
async fn watch(log: &Path, t0: Instant, up0: f64, helpers: &Helpers) -> Res<Boot> {
    use std::io::Read;
    let mut b = Boot::default();
    let mut file: Option<std::fs::File> = None;
    let mut buf: Vec<u8> = Vec::new();
    let mut h0 = None;
    let (boost, mut boosted) = (autogroup_nice(), false);
    loop {
        if let (Some(n), false) = (boost, boosted) {
            if let Some(p) =
                std::fs::read_to_string(log.with_file_name("qemu.pid")).ok().and_then(|t| t.trim().parse::<u32>().ok())
            {
                set_autogroup_nice(&p.to_string(), n);
                boosted = true;
            }
        }
        if file.is_none() {
            file = std::fs::File::open(log).ok();
            if file.is_some() {
                h0 = Some(helpers.cpu_ms());
            }
        }
        if let Some(f) = &mut file {
            let from = buf.len().saturating_sub(MARKER.len() - 1);
            let _ = f.read_to_end(&mut buf);
            if b.first_byte.is_none() && !buf.is_empty() {
                b.first_byte = Some(t0.elapsed());
            }
            if buf[from..].windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
                b.total = t0.elapsed();
                let pid = std::fs::read_to_string(log.with_file_name("qemu.pid"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok());
                if let Some(p) = pid {
                    b.qemu_cpu = cpu_ms(p);
                    b.qemu_wait = run_wait_ms(p);
                    b.spawn = proc_stat(p)
                        .and_then(|f| f.get(19)?.parse::<f64>().ok())
                        .map(|ticks| ticks * 1e3 / CLK_TCK - up0 * 1e3);
                }
                b.helpers_cpu = h0.map(|h| helpers.cpu_ms() - h);
                return Ok(b);
            }
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!("no {MARKER} in {} after {BOOT_LIMIT:?}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Before each measured boot, of either kind: the same starting conditions. Dirty pages of the
/// previous boot's files are written out and deferred work of its teardown (dnsmasq restart,
/// freed guest memory) has time to end.
async fn settle() {
    sh(&["sync"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// The guest's own uptime (s) on its `RZSTACK-GUEST-BOOTED uptime=<s>` line: kernel start to
/// the marker, without firmware and QEMU set-up.
fn guest_uptime(log: &Path) -> Option<f64> {
    let t = String::from_utf8_lossy(&std::fs::read(log).ok()?).into_owned();
    let rest = &t[t.find(MARKER)? + MARKER.len()..];
    // The serial port writes byte by byte: only a whole line is read.
    let line = &rest[..rest.find('\n')?];
    line.trim_start().strip_prefix("uptime=")?.split_whitespace().next()?.parse().ok()
}

/// [`guest_uptime`], waiting up to a second for the marker's line to end.
async fn guest_uptime_wait(log: &Path) -> Option<f64> {
    for _ in 0..100 {
        if let Some(u) = guest_uptime(log) {
            return Some(u);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn qemu_img(args: &[&str]) -> Res<Value> {
    let o = Command::new("qemu-img").args(args).output().map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!("qemu-img {args:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(serde_json::from_slice(&o.stdout).unwrap_or(Value::Null))
}

/// Boot the guest of `cmd` with a bare QEMU: the agent's own command line for it, with a
/// fresh root disk (a linked clone of `cache`, or a full copy when `thick`) and `tap`.
async fn bare_boot(
    cmd: &VmStartCmd,
    accel: &'static str,
    cache: &str,
    thick: bool,
    tap: &str,
    helpers: &Helpers,
) -> Res<Boot> {
    let dir = tempfile::Builder::new().prefix("rzb").tempdir_in("/tmp").map_err(|e| e.to_string())?;
    let root = dir.path().join("root.qcow2");
    let root_s = root.to_string_lossy().into_owned();
    if thick {
        qemu_img(&["convert", "-O", "qcow2", "-o", "preallocation=falloc", cache, &root_s])?;
    } else {
        qemu_img(&["create", "-q", "-f", "qcow2", "-b", cache, "-F", "qcow2", &root_s])?;
    }
    let mut c = cmd.clone();
    c.vm_uuid = uuid::Uuid::new_v4().simple().to_string();
    c.root_volume.install_path = root_s;
    for n in &mut c.nics {
        n.tap_name = tap.to_string();
    }
    let vms = rzstack_agent::vms::Vms::new(dir.path(), accel);
    let args = vms.qemu_args(&c, dir.path());
    let log = dir.path().join("serial.log");
    settle().await;
    let up0 = uptime_s();
    let t0 = Instant::now();
    // QEMU runs beside the watcher from its start: `-daemonize` returns once it is set up.
    let started = tokio::process::Command::new(rzstack_agent::facts::qemu_binary())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let watched = watch(&log, t0, up0, helpers);
    tokio::pin!(watched);
    let took = tokio::select! {
        st = started => match st {
            Ok(s) if s.success() => watched.await,
            _ => Err("bare QEMU did not start".into()),
        },
        w = &mut watched => w,
    };
    let uptime = guest_uptime_wait(&log).await;
    let pid = std::fs::read_to_string(dir.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
    if let Some(p) = pid {
        sh(&["kill", "-9", &p.to_string()]);
        let t = Instant::now();
        while Path::new(&format!("/proc/{p}")).exists() && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    took.map(|b| Boot { uptime, ..b })
}

fn spawn(args: &[&str], envs: &[(&str, String)]) -> Res<Child> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("rzstack");
    let mut c = Command::new(&exe);
    // RZSTACK_BENCH_LOG (e.g. `info`) sets the children's log filter, for diagnostics.
    let filter = std::env::var("RZSTACK_BENCH_LOG").unwrap_or_else(|_| "warn".into());
    c.args(args).env("RZSTACK_LOG", filter).stdout(Stdio::null()).stderr(Stdio::inherit());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().map_err(|e| format!("{}: {e}", exe.display()))
}

/// Print median / p90 of `v`; returns the median (ms).
fn stats(name: &str, v: &mut [Duration]) -> f64 {
    v.sort();
    let (p50, p90) = (pct(v, 0.5), pct(v, 0.9));
    println!("| {name} median / p90 | {p50:.0} / {p90:.0} ms |");
    p50
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// An rzstack boot and what the bare boot of the same guest needs from it.
struct Ours {
    boot: Boot,
    cmd: VmStartCmd,
    accel: &'static str,
    rss: u64,
    /// The image cache file behind a linked clone.
    cache: Option<String>,
}

/// Create a VM through the API (POST → marker), then destroy and expunge it.
async fn ours_boot(
    c: &Client,
    offering: &str,
    image: &str,
    l3: &str,
    thick: bool,
    agent_dir: &Path,
    helpers: &Helpers,
) -> Res<Ours> {
    let vm = uuid::Uuid::new_v4().simple().to_string();
    let mut p = json!({"name": "boot", "instanceOfferingUuid": offering, "imageUuid": image,
        "l3NetworkUuids": [l3], "resourceUuid": vm});
    if thick {
        p["rootVolumeSystemTags"] = json!(["volumeProvisioningStrategy::ThickProvisioning"]);
    }
    let log = agent_dir.join("vms").join(&vm).join("serial.log");
    settle().await;
    let up0 = uptime_s();
    let t0 = Instant::now();
    let (boot, created) = tokio::join!(
        watch(&log, t0, up0, helpers),
        c.job(reqwest::Method::POST, "/vm-instances", json!({"params": p}))
    );
    let (_, _, inv) = created?;
    let mut boot = boot?;
    boot.uptime = guest_uptime_wait(&log).await;
    // The command the agent started the guest with, its QEMU, and the image it runs.
    let state: Value = serde_json::from_slice(
        &std::fs::read(agent_dir.join("vms").join(&vm).join("state.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let cmd: VmStartCmd = serde_json::from_value(state["cmd"].clone()).map_err(|e| e.to_string())?;
    let pid = state["pid"].as_u64().ok_or("no QEMU pid")? as u32;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
    let accel: &'static str = if String::from_utf8_lossy(&cmdline).contains("accel=kvm") { "kvm" } else { "tcg" };
    let rss = rss_kib(pid).unwrap_or(0);
    let mut cache = None;
    if !thick {
        // Every root volume of the image is a linked clone of the same image cache file.
        let root = inv["inventory"]["allVolumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["type"] == "Root"))
            .and_then(|v| v["installPath"].as_str())
            .ok_or("no root volume")?
            .to_string();
        let info = qemu_img(&["info", "--output=json", "-U", &root])?;
        let backing = info["full-backing-filename"].as_str().or(info["backing-filename"].as_str());
        cache = Some(backing.ok_or("a linked clone without a backing file")?.to_string());
    }
    // Ends the guest before the next boot, so each boots on an otherwise idle machine.
    c.job(reqwest::Method::DELETE, &format!("/vm-instances/{vm}"), json!({})).await?;
    c.job(reqwest::Method::PUT, &format!("/vm-instances/{vm}/actions"), json!({"expungeVmInstance": {}})).await?;
    Ok(Ours { boot, cmd, accel, rss, cache })
}

pub async fn run(boots: usize, image: Option<PathBuf>) -> Res<()> {
    if boots == 0 {
        return Err("--boots must be at least 1".into());
    }
    if let Some(why) = cannot_run() {
        println!("boot: skipped: {why}");
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let workspace = exe.ancestors().nth(3).ok_or("no workspace above the binary")?.to_path_buf();
    let image = match image {
        Some(i) => i,
        None => {
            let out = workspace.join("target/test-guest");
            let st = Command::new("bash")
                .arg(workspace.join("scripts/make-test-image.sh"))
                .arg(&out)
                .stdout(Stdio::null())
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                println!("boot: skipped: scripts/make-test-image.sh failed");
                return Ok(());
            }
            out.join("guest.qcow2")
        }
    };
    let work = tempfile::Builder::new().prefix("rzboot").tempdir_in("/tmp").map_err(|e| e.to_string())?;
    let (agent_dir, mn_dir, ps_dir, bs_dir) =
        (work.path().join("agent"), work.path().join("mn"), work.path().join("ps"), work.path().join("bs"));
    for d in [&agent_dir, &mn_dir, &ps_dir, &bs_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let n = std::process::id() % 1000;
    let (up, peer, tap) = (format!("rzb{n}u"), format!("rzb{n}p"), format!("rzbt{n}"));
    let mut clean = Cleanup {
        children: Vec::new(),
        links: vec![up.clone(), peer.clone(), format!("br_{up}")],
        agent_dir: agent_dir.clone(),
    };
    if !sh(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &peer]) {
        return Err(format!("cannot create the veth pair {up}"));
    }
    if !sh(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]) {
        return Err(format!("cannot create the tap {tap}"));
    }
    clean.links.push(tap.clone());

    let http = reqwest::Client::new();
    let agent_port = free_port()?;
    let a = agent_dir.to_string_lossy().into_owned();
    clean.children.push(spawn(&["agent", "--listen", &format!("127.0.0.1:{agent_port}"), "--data-dir", &a], &[])?);
    let t0 = Instant::now();
    while !http
        .post(format!("http://127.0.0.1:{agent_port}/v1/host/ping"))
        .body("{}")
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 401)
    {
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("the agent did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = std::fs::read_to_string(agent_dir.join("token")).map_err(|e| e.to_string())?.trim().to_string();
    let port = free_port()?;
    let m = mn_dir.to_string_lossy().into_owned();
    clean.children.push(spawn(
        &["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", &m],
        &[("RZSTACK_KVM_AGENT_PORT", agent_port.to_string())],
    )?);
    let base = format!("http://127.0.0.1:{port}/zstack/v1");
    while !http.get(format!("{base}/management-nodes/ready")).send().await.is_ok_and(|r| r.status().as_u16() == 200) {
        if t0.elapsed() > Duration::from_secs(60) {
            return Err("the management node did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = Client::login(http, base).await?;

    // The topology, through the API.
    let zone = c.ok("/zones", json!({"params": {"name": "boot"}})).await?;
    let cluster =
        c.ok("/clusters", json!({"params": {"zoneUuid": zone, "name": "kvm", "hypervisorType": "KVM"}})).await?;
    c.ok(
        "/hosts/kvm",
        json!({"params": {"name": "this", "managementIp": "127.0.0.1", "clusterUuid": cluster,
            "username": "root", "password": token}}),
    )
    .await?;
    let ps = c
        .ok("/primary-storage/local-storage", json!({"params": {"name": "local", "url": ps_dir, "zoneUuid": zone}}))
        .await?;
    c.ok(&format!("/clusters/{cluster}/primary-storage/{ps}"), json!({})).await?;
    let bs = c
        .ok(
            "/backup-storage/image-store",
            json!({"params": {"name": "store", "url": bs_dir, "hostname": "127.0.0.1", "username": "root",
                "password": "p", "sshPort": 22}}),
        )
        .await?;
    c.ok(&format!("/zones/{zone}/backup-storage/{bs}"), json!({})).await?;
    let image = c
        .ok(
            "/images",
            json!({"params": {"name": "guest", "url": format!("file://{}", image.display()), "format": "qcow2",
                "backupStorageUuids": [bs], "platform": "Linux", "architecture": "x86_64"}}),
        )
        .await?;
    let l2 = c
        .ok("/l2-networks/no-vlan", json!({"params": {"name": "l2", "zoneUuid": zone, "physicalInterface": up}}))
        .await?;
    c.ok(&format!("/l2-networks/{l2}/clusters/{cluster}"), json!({})).await?;
    let l3 = c.ok("/l3-networks", json!({"params": {"name": "l3", "l2NetworkUuid": l2}})).await?;
    let net = format!("10.249.{}", n % 250);
    c.ok(
        &format!("/l3-networks/{l3}/ip-ranges"),
        json!({"params": {"name": "r", "startIp": format!("{net}.10"), "endIp": format!("{net}.200"),
            "netmask": "255.255.255.0", "gateway": format!("{net}.1")}}),
    )
    .await?;
    let (_, providers) = c.get("/network-services/providers?q=type=Flat").await?;
    let flat = providers["inventories"][0]["uuid"].as_str().ok_or("no Flat provider")?.to_string();
    c.ok(&format!("/l3-networks/{l3}/network-services"), json!({"params": {"networkServices": {flat: ["DHCP"]}}}))
        .await?;
    let offering = c
        .ok("/instance-offerings", json!({"params": {"name": "tiny", "cpuNum": 1, "memorySize": 256u64 << 20}}))
        .await?;

    if let Some(n) = autogroup_nice() {
        // The weight belongs to the autogroup: the agent and the node share this session's.
        set_autogroup_nice("self", n);
    }
    let helpers = Helpers { pids: clean.children.iter().map(|c| c.id()).collect(), dhcp_dir: agent_dir.join("dhcp") };
    println!("Machine: {}; database: SQLite\n", machine());
    println!("| figure | value |\n|---|---|");
    let mut accel_seen = String::new();
    let mut image_cache: Option<String> = None;
    for thick in [false, true] {
        let kind = if thick { "thick" } else { "linked clone" };
        let (mut ours, mut bare, mut rss): (Vec<Boot>, Vec<Boot>, Vec<u64>) = (Vec::new(), Vec::new(), Vec::new());
        // The last start command of an rzstack boot, for a bare boot that comes first.
        let mut last: Option<(VmStartCmd, &'static str)> = None;
        for i in 0..boots {
            // Pairs alternate their order (rzstack, bare; bare, rzstack; ...), so neither kind
            // always follows the other's teardown.
            let bare_first = i % 2 == 1 && last.is_some();
            let mut b = None;
            if bare_first {
                if let Some((cmd, accel)) = &last {
                    let src = image_cache.as_deref().ok_or("no image cache")?;
                    b = Some(bare_boot(cmd, accel, src, thick, &tap, &helpers).await?);
                }
            }
            let o = ours_boot(&c, &offering, &image, &l3, thick, &agent_dir, &helpers).await?;
            accel_seen = o.accel.to_string();
            rss.push(o.rss);
            if let Some(cache) = o.cache {
                image_cache = Some(cache);
            }
            let b = match b {
                Some(b) => b,
                None => {
                    let src = image_cache.as_deref().ok_or("no image cache")?;
                    bare_boot(&o.cmd, o.accel, src, thick, &tap, &helpers).await?
                }
            };
            let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
            let d = |x: Option<Duration>| f(x.map(|v| v.as_secs_f64() * 1e3));
            let line = |who: &str, x: &Boot| {
                format!(
                    "{who} {:.0} ms (spawn {}, first byte {}; QEMU cpu {} wait {}; others cpu {}; guest uptime {})",
                    x.total.as_secs_f64() * 1e3,
                    f(x.spawn),
                    d(x.first_byte),
                    f(x.qemu_cpu),
                    f(x.qemu_wait),
                    f(x.helpers_cpu),
                    f(x.uptime.map(|u| u * 1e3))
                )
            };
            eprintln!(
                "boot {kind} #{i} ({}): {} | {}",
                if bare_first { "bare first" } else { "rzstack first" },
                line("rzstack", &o.boot),
                line("bare", &b)
            );
            last = Some((o.cmd, o.accel));
            ours.push(o.boot);
            bare.push(b);
        }
        let mut o_tot: Vec<Duration> = ours.iter().map(|b| b.total).collect();
        let mut b_tot: Vec<Duration> = bare.iter().map(|b| b.total).collect();
        let o50 = stats(&format!("{kind}: POST → {MARKER}"), &mut o_tot);
        let b50 = stats(&format!("{kind}: bare QEMU start → {MARKER}"), &mut b_tot);
        println!("| {kind}: rzstack overhead (median difference) | {:.0} ms |", o50 - b50);
        // Per boot: rzstack minus the bare boot of its pair (ms); less sensitive to a busy
        // machine than the difference of the two medians.
        let paired = |g: &dyn Fn(&Boot) -> Option<f64>| {
            median(ours.iter().zip(&bare).filter_map(|(o, b)| Some(g(o)? - g(b)?)).collect())
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| {kind}: rzstack overhead (median of per-boot differences) | {:.0} ms |",
            paired(&|b: &Boot| Some(ms(b.total)))
        );
        let both = |name: &str, g: &dyn Fn(&Boot) -> Option<f64>| {
            let (o, b) = (median(ours.iter().filter_map(g).collect()), median(bare.iter().filter_map(g).collect()));
            println!("| {kind}: {name}, rzstack / bare (median) | {o:.0} / {b:.0} ms |");
        };
        both("guest's own uptime at the marker", &|b: &Boot| b.uptime.map(|u| u * 1e3));
        both("clock start → QEMU process start", &|b: &Boot| b.spawn);
        both("clock start → first serial byte", &|b: &Boot| b.first_byte.map(ms));
        both("first serial byte → marker", &|b: &Boot| b.first_byte.map(|f| ms(b.total) - ms(f)));
        println!(
            "| {kind}: per-boot differences (median): to QEMU's start / QEMU's start → first serial byte / \
             first serial byte → marker | {:.0} / {:.0} / {:.0} ms |",
            paired(&|b: &Boot| b.spawn),
            paired(&|b: &Boot| Some(ms(b.first_byte?) - b.spawn?)),
            paired(&|b: &Boot| Some(ms(b.total) - ms(b.first_byte?)))
        );
        both("QEMU's CPU time at the marker", &|b: &Boot| b.qemu_cpu);
        both("QEMU's wait for a CPU until the marker", &|b: &Boot| b.qemu_wait);
        both("CPU of the node, agent, dnsmasq and bench from QEMU's serial file to the marker", &|b: &Boot| {
            b.helpers_cpu
        });
        println!("| {kind}: ratio (median) | {:.2} |", if b50 > 0.0 { o50 / b50 } else { 0.0 });
        rss.sort();
        println!(
            "| {kind}: QEMU RSS per guest (median) | {:.0} MiB |",
            rss.get(rss.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
        );
    }
    println!("| accelerator | {accel_seen} |");
    println!("| boots per kind | {boots} (pairs in alternating order) |");
    if let Some(n) = autogroup_nice() {
        println!("| autogroup nice of the benchmark and each QEMU | {n} |");
    }
    drop(clean);
    Ok(())
}
