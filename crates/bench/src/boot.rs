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

/// Wait until `log` contains [`MARKER`]; the time it appeared (polled every 5 ms).
async fn wait_marker(log: &Path, t0: Instant) -> Res<Duration> {
    loop {
        if std::fs::read(log).is_ok_and(|b| b.windows(MARKER.len()).any(|w| w == MARKER.as_bytes())) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!("no {MARKER} in {} after {BOOT_LIMIT:?}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The guest's own uptime (s) on its `RZSTACK-GUEST-BOOTED uptime=<s>` line: kernel start to
/// the marker, without firmware and QEMU set-up.
fn guest_uptime(log: &Path) -> Option<f64> {
    let t = String::from_utf8_lossy(&std::fs::read(log).ok()?).into_owned();
    let rest = &t[t.find(MARKER)? + MARKER.len()..];
    rest.trim_start().strip_prefix("uptime=")?.split_whitespace().next()?.parse().ok()
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
) -> Res<(Duration, Option<f64>)> {
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
    let t0 = Instant::now();
    let st = Command::new(rzstack_agent::facts::qemu_binary())
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let pid = std::fs::read_to_string(dir.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<u32>().ok());
    let took = if st.success() {
        wait_marker(&dir.path().join("serial.log"), t0).await
    } else {
        Err("bare QEMU did not start".into())
    };
    if let Some(p) = pid {
        sh(&["kill", "-9", &p.to_string()]);
        let t = Instant::now();
        while Path::new(&format!("/proc/{p}")).exists() && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let log = dir.path().join("serial.log");
    took.map(|t| (t, guest_uptime(&log)))
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

    println!("Machine: {}; database: SQLite\n", machine());
    println!("| figure | value |\n|---|---|");
    let mut accel_seen = String::new();
    let mut image_cache: Option<String> = None;
    for thick in [false, true] {
        let kind = if thick { "thick" } else { "linked clone" };
        let (mut ours, mut bare, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        // Per boot: ours minus the bare boot that followed it (ms); less sensitive to a busy
        // machine than the difference of the two medians.
        let mut paired: Vec<f64> = Vec::new();
        // The guests' own uptimes at the marker (s): ours, bare.
        let mut uptimes: (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
        for _ in 0..boots {
            let vm = uuid::Uuid::new_v4().simple().to_string();
            let mut p = json!({"name": "boot", "instanceOfferingUuid": offering, "imageUuid": image,
                "l3NetworkUuids": [l3], "resourceUuid": vm});
            if thick {
                p["rootVolumeSystemTags"] = json!(["volumeProvisioningStrategy::ThickProvisioning"]);
            }
            let log = agent_dir.join("vms").join(&vm).join("serial.log");
            let t0 = Instant::now();
            let (took, created) = tokio::join!(
                wait_marker(&log, t0),
                c.job(reqwest::Method::POST, "/vm-instances", json!({"params": p}))
            );
            let (_, _, inv) = created?;
            ours.push(took?);
            uptimes.0.extend(guest_uptime(&log));
            // The command the agent started the guest with, its QEMU, and the image it runs.
            let state: Value = serde_json::from_slice(
                &std::fs::read(agent_dir.join("vms").join(&vm).join("state.json")).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
            let cmd: VmStartCmd = serde_json::from_value(state["cmd"].clone()).map_err(|e| e.to_string())?;
            let pid = state["pid"].as_u64().ok_or("no QEMU pid")? as u32;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
            let accel: &'static str =
                if String::from_utf8_lossy(&cmdline).contains("accel=kvm") { "kvm" } else { "tcg" };
            accel_seen = accel.to_string();
            rss.push(rss_kib(pid).unwrap_or(0));
            let root = inv["inventory"]["allVolumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["type"] == "Root"))
                .and_then(|v| v["installPath"].as_str())
                .ok_or("no root volume")?
                .to_string();
            if !thick {
                // Every root volume of the image is a linked clone of the same image cache file.
                let info = qemu_img(&["info", "--output=json", "-U", &root])?;
                let backing = info["full-backing-filename"].as_str().or(info["backing-filename"].as_str());
                image_cache = Some(backing.ok_or("a linked clone without a backing file")?.to_string());
            }
            // Ends the guest before the bare run, so both boot on an otherwise idle machine.
            c.job(reqwest::Method::DELETE, &format!("/vm-instances/{vm}"), json!({})).await?;
            c.job(reqwest::Method::PUT, &format!("/vm-instances/{vm}/actions"), json!({"expungeVmInstance": {}}))
                .await?;
            // The bare QEMU's root disk is made from the same image cache before its clock starts.
            let src = image_cache.as_deref().ok_or("no image cache")?;
            let (b, up) = bare_boot(&cmd, accel, src, thick, &tap).await?;
            bare.push(b);
            uptimes.1.extend(up);
            if let (Some(o), Some(b)) = (ours.last(), bare.last()) {
                paired.push((o.as_secs_f64() - b.as_secs_f64()) * 1e3);
            }
        }
        let o50 = stats(&format!("{kind}: POST → {MARKER}"), &mut ours);
        let b50 = stats(&format!("{kind}: bare QEMU start → {MARKER}"), &mut bare);
        println!("| {kind}: rzstack overhead (median difference) | {:.0} ms |", o50 - b50);
        paired.sort_by(f64::total_cmp);
        println!(
            "| {kind}: rzstack overhead (median of per-boot differences) | {:.0} ms |",
            paired.get(paired.len() / 2).copied().unwrap_or(0.0)
        );
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0) * 1e3
        };
        println!(
            "| {kind}: guest's own uptime at the marker, rzstack / bare (median) | {:.0} / {:.0} ms |",
            med(&mut uptimes.0),
            med(&mut uptimes.1)
        );
        println!("| {kind}: ratio (median) | {:.2} |", if b50 > 0.0 { o50 / b50 } else { 0.0 });
        rss.sort();
        println!(
            "| {kind}: QEMU RSS per guest (median) | {:.0} MiB |",
            rss.get(rss.len() / 2).copied().unwrap_or(0) as f64 / 1024.0
        );
    }
    println!("| accelerator | {accel_seen} |");
    println!("| boots per kind | {boots} |");
    drop(clean);
    Ok(())
}
