//! `rzstack up`, black-box: on a temporary data directory and free ports it starts the management
//! node and the agent, makes the default topology and prints a curl sequence; running that
//! sequence creates a VM that becomes Running and whose guest reports the NIC's IP on its serial
//! console. SIGINT stops `up` cleanly (the guest keeps running); a second `up` on the same data
//! directory finds everything again (no duplicates, the same uuids, the same printed commands).
//! Skips with a reason unless root with QEMU, dnsmasq, curl and the test image.
mod common;
use common::kvm::{guest_image, have, is_root, sh};
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb980b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86";

/// Two distinct free ports (both bound at once while chosen).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    (a.local_addr().expect("addr").port(), b.local_addr().expect("addr").port())
}

/// Processes whose command line contains `needle` (and `prog`).
fn pids_with(prog: &str, needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(prog) && cmd.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// A running `rzstack up` and the lines it printed.
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Up {
    fn start(data: &Path, port: u16, agent_port: u16, image: &Path) -> Up {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rzstack"))
            .arg("up")
            .arg("--data-dir")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--agent-listen")
            .arg(format!("127.0.0.1:{agent_port}"))
            .arg("--image")
            .arg(image)
            .env("RZSTACK_LOG", "warn")
            .env_remove("RZSTACK_KVM_AGENT_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rzstack up");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Up { child, lines: rx }
    }

    /// Everything printed up to the closing "Ctrl-C stops" line.
    fn banner(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut got = Vec::new();
        loop {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(l) => {
                    let end = l.starts_with("Ctrl-C stops");
                    got.push(l);
                    if end {
                        return got;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.wait();
                    panic!("rzstack up ended ({st:?}) before it was up; it printed:\n{}", got.join("\n"));
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("rzstack up exited with {st} before it was up; it printed:\n{}", got.join("\n"));
            }
            assert!(Instant::now() < deadline, "rzstack up not up after 300 s; it printed:\n{}", got.join("\n"));
        }
    }

    /// SIGINT (Ctrl-C) and wait; returns whether it exited with success.
    fn interrupt(&mut self) -> bool {
        assert!(sh(&["kill", "-INT", &self.child.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rzstack up did not stop within 90 s of SIGINT");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The shell commands of the printed banner: from `SESSION=` to the poll loop.
fn commands(banner: &[String]) -> String {
    let start = banner.iter().position(|l| l.starts_with("SESSION=")).expect("a SESSION= line");
    let end = banner.iter().position(|l| l.starts_with("while ")).expect("a poll loop line");
    assert!(start < end, "{banner:?}");
    banner[start..=end].join("\n")
}

/// What the test leaves behind otherwise: guests and dnsmasq of the data directory (ended by
/// pid), the L2 interface (a veth pair: deleting one end deletes both) and its bridge.
struct Cleanup {
    data: PathBuf,
    links: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let d = self.data.to_string_lossy().into_owned();
        for prog in ["qemu-system", "dnsmasq", "swtpm"] {
            for pid in pids_with(prog, &d) {
                sh(&["kill", "-KILL", &pid.to_string()]);
            }
        }
        for l in &self.links {
            if Path::new("/sys/class/net").join(l).exists() {
                sh(&["ip", "link", "del", "dev", l]);
            }
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Api {
    async fn login(port: u16) -> Api {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let base = format!("http://127.0.0.1:{port}/zstack/v1");
        let r: Value = http
            .put(format!("{base}/accounts/login"))
            .body(json!({"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}}).to_string())
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("json");
        let session = r["inventory"]["uuid"].as_str().expect("session").to_string();
        Api { http, base, session }
    }

    async fn query(&self, path: &str) -> Vec<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("OAuth {}", self.session))
            .send()
            .await
            .expect("query");
        assert_eq!(r.status().as_u16(), 200, "GET {path}");
        let v: Value = r.json().await.expect("json");
        v["inventories"].as_array().cloned().unwrap_or_default()
    }

    /// An async call that must succeed.
    async fn ok(&self, method: &str, path: &str) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self
            .http
            .request(m, format!("{}{path}", self.base))
            .header("Authorization", format!("OAuth {}", self.session))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 202, "{method} {path}");
        let v: Value = r.json().await.expect("json");
        let loc = v["location"].as_str().expect("location").to_string();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = self.http.get(&loc).send().await.expect("poll");
            let st = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if st != 202 {
                assert_eq!(st, 200, "{method} {path}: {body}");
                return body;
            }
            assert!(Instant::now() < deadline, "{method} {path} still running");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Uuids of every resource of the default topology, by kind.
    async fn topology(&self) -> Vec<(&'static str, Vec<String>)> {
        let mut out = Vec::new();
        for (kind, path) in [
            ("zones", "/zones"),
            ("clusters", "/clusters"),
            ("hosts", "/hosts"),
            ("primary storage", "/primary-storage"),
            ("backup storage", "/backup-storage"),
            ("images", "/images"),
            ("L2 networks", "/l2-networks"),
            ("L3 networks", "/l3-networks"),
            ("instance offerings", "/instance-offerings"),
        ] {
            let mut u: Vec<String> =
                self.query(path).await.iter().map(|v| v["uuid"].as_str().expect("uuid").to_string()).collect();
            u.sort();
            out.push((kind, u));
        }
        out
    }
}

#[tokio::test]
async fn up_makes_a_cloud_whose_printed_curl_boots_a_vm_and_a_second_up_reuses_it() {
    if !is_root() {
        eprintln!("SKIP up: needs root (bridges, taps, dnsmasq)");
        return;
    }
    for t in ["qemu-system-x86_64", "qemu-img", "dnsmasq", "ip", "curl"] {
        if !have(t) {
            eprintln!("SKIP up: {t} is not installed");
            return;
        }
    }
    let Some(image) = guest_image("up") else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut cleanup = Cleanup { data: data.clone(), links: Vec::new() };
    let (port, agent_port) = free_ports();

    // First run: the topology is made; the printed commands create a VM that boots.
    let mut up = Up::start(&data, port, agent_port, &image);
    let banner = up.banner();
    let text = banner.join("\n");
    assert!(text.contains(&format!("rzstack is up: http://127.0.0.1:{port}/zstack")), "{text}");
    assert!(text.contains("admin / password"), "{text}");
    assert!(text.contains("created:     zone, cluster, host,"), "{text}");
    let api = Api::login(port).await;
    let l2 = api.query("/l2-networks").await;
    let iface = l2[0]["physicalInterface"].as_str().expect("physicalInterface").to_string();
    assert_ne!(iface, "eth0");
    cleanup.links = vec![iface.clone(), format!("br_{iface}")];
    assert!(Path::new("/sys/class/net").join(&iface).exists(), "the L2's interface {iface} exists");
    let topo1 = api.topology().await;
    for (kind, uuids) in &topo1 {
        assert_eq!(uuids.len(), 1, "one of the {kind}: {uuids:?}");
    }
    let hosts = api.query("/hosts").await;
    assert_eq!(hosts[0]["status"], "Connected", "{:?}", hosts[0]);
    assert_eq!(hosts[0]["managementIp"], "127.0.0.1");
    let l3 = &api.query("/l3-networks").await[0];
    assert_eq!(l3["ipRanges"].as_array().map(Vec::len), Some(1), "{l3}");
    assert!(
        l3["networkServices"].as_array().is_some_and(|a| a.iter().any(|s| s["networkServiceType"] == "DHCP")),
        "{l3}"
    );
    let offering = &api.query("/instance-offerings").await[0];
    assert_eq!((offering["cpuNum"].as_i64(), offering["memorySize"].as_i64()), (Some(1), Some(256 << 20)));

    let cmds = commands(&banner);
    for (_, uuids) in topo1.iter().filter(|(k, _)| ["images", "L3 networks", "instance offerings"].contains(k)) {
        assert!(cmds.contains(&uuids[0]), "the printed commands name {}: {cmds}", uuids[0]);
    }
    let o = tokio::task::spawn_blocking({
        let cmds = cmds.clone();
        move || Command::new("bash").arg("-c").arg(&cmds).output().expect("bash")
    })
    .await
    .expect("join");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "the printed commands failed: {out} {}", String::from_utf8_lossy(&o.stderr));
    let reply: Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("the poll's answer is not JSON ({e}): {out}"));
    let vm = reply["inventory"].clone();
    assert_eq!(vm["state"], "Running", "{reply}");
    assert_eq!(vm["name"], "vm1");
    let vm_uuid = vm["uuid"].as_str().expect("vm uuid").to_string();
    let ip = vm["vmNics"][0]["ip"].as_str().expect("nic ip").to_string();
    assert_eq!(api.query(&format!("/vm-instances/{vm_uuid}")).await[0]["state"], "Running");
    let log = data.join("agent/vms").join(&vm_uuid).join("serial.log");
    let marker = format!("RZSTACK-GUEST-UP ip={ip}");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains(&marker) {
            break;
        }
        assert!(Instant::now() < deadline, "no {marker} in {}:\n{t}", log.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let qemu = pids_with("qemu-system", &vm_uuid);
    assert_eq!(qemu.len(), 1, "one QEMU runs the VM");

    // Ctrl-C: a clean exit; the guest keeps running (documented), detached from `up`.
    assert!(up.interrupt(), "rzstack up exits with success on SIGINT");
    drop(up);
    assert_eq!(pids_with("qemu-system", &vm_uuid), qemu, "the guest keeps running after Ctrl-C");

    // Second run: nothing new, the same uuids and the same printed commands; the VM is still
    // Running on the re-adopted QEMU.
    let mut up = Up::start(&data, port, agent_port, &image);
    let banner2 = up.banner();
    let text2 = banner2.join("\n");
    assert!(text2.contains("created:     nothing (all found again)"), "{text2}");
    assert_eq!(commands(&banner2), cmds, "the second run prints the same commands");
    let api = Api::login(port).await;
    assert_eq!(api.topology().await, topo1, "no duplicates: the same resources as after the first run");
    let l3 = &api.query("/l3-networks").await[0];
    assert_eq!(l3["ipRanges"].as_array().map(Vec::len), Some(1), "{l3}");
    assert_eq!(api.query("/hosts").await[0]["status"], "Connected");
    assert_eq!(api.query(&format!("/vm-instances/{vm_uuid}")).await[0]["state"], "Running");
    assert_eq!(pids_with("qemu-system", &vm_uuid), qemu, "the same QEMU process");

    // Destroy the VM through the API: its QEMU ends; then Ctrl-C again.
    api.ok("DELETE", &format!("/vm-instances/{vm_uuid}")).await;
    assert!(pids_with("qemu-system", &vm_uuid).is_empty(), "destroy ends the guest");
    assert!(up.interrupt(), "the second rzstack up exits with success on SIGINT");
    drop(up);
    drop(cleanup);
    assert!(!Path::new("/sys/class/net").join(&iface).exists());
}
