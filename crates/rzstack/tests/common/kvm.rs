//! A small all-in-one KVM cloud for black-box tests: a real `rzstack agent` and a real
//! `rzstack serve`, a zone, a KVM cluster and host, local primary storage, an image store with
//! the test guest image, an L2 on a veth end (never eth0; this kernel has no dummy interfaces),
//! an L3 with an IP range and Flat DHCP/DNS, and an instance offering. `KvmCloud::setup`
//! returns `None` (after printing why) where such tests cannot run: not root, or QEMU, dnsmasq
//! or the test image missing.

use super::agent::Agent;
use super::Server;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn have(cmd: &str) -> bool {
    sh(&["sh", "-c", &format!("command -v {cmd}")])
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Network interfaces deleted (last first) when dropped.
pub struct Links(pub Vec<String>);
impl Drop for Links {
    fn drop(&mut self) {
        for l in self.0.iter().rev() {
            if Path::new("/sys/class/net").join(l).exists() {
                sh(&["ip", "link", "del", "dev", l]);
            }
        }
    }
}

/// The test guest image (scripts/make-test-image.sh, cached in target/test-guest).
pub fn guest_image(test: &str) -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root");
    let out = root.join("target/test-guest");
    let o = Command::new("bash").arg(root.join("scripts/make-test-image.sh")).arg(&out).output().expect("bash");
    if !o.status.success() {
        eprintln!("SKIP {test}: scripts/make-test-image.sh failed: {}", String::from_utf8_lossy(&o.stderr));
        return None;
    }
    Some(out.join("guest.qcow2"))
}

/// Whether KVM guest tests can run here; prints why not.
pub fn can_run(test: &str) -> bool {
    if !is_root() {
        eprintln!("SKIP {test}: needs root (bridges, taps, dnsmasq)");
        return false;
    }
    for t in ["qemu-system-x86_64", "qemu-img", "dnsmasq", "ip"] {
        if !have(t) {
            eprintln!("SKIP {test}: {t} is not installed");
            return false;
        }
    }
    true
}

/// QEMU processes whose command line names `vm`.
pub fn qemu_pids(vm: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("qemu-system") && cmd.contains(vm) {
            pids.push(pid);
        }
    }
    pids
}

/// The files under `d`.
pub fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn uuid(v: &Value) -> String {
    v["uuid"].as_str().expect("uuid").to_string()
}

pub struct KvmCloud {
    pub s: Server,
    pub agent: Agent,
    pub agent_dir: tempfile::TempDir,
    pub ps_dir: tempfile::TempDir,
    pub bs_dir: tempfile::TempDir,
    pub links: Links,
    /// The physical interface of the L2 (one end of a veth pair).
    pub interface: String,
    pub zone: String,
    pub cluster: String,
    pub host: String,
    pub ps: String,
    pub bs: String,
    pub image: String,
    pub l2: String,
    pub l3: String,
    /// The first three octets of the L3's range (`<net>.10` – `<net>.20`, gateway `<net>.1`).
    pub net: String,
    pub offering: String,
}

impl KvmCloud {
    /// A second network for the tests' VMs: a NoVlan L2 on a veth pair of its own (`rz<tag>..`;
    /// its bridge made by the agent), attached to the cluster, an L3 with the range
    /// `10.<octet>.<n>.10`–`.20` (`n` from the process id, so parallel runs do not collide)
    /// and, with `dhcp`, Flat DHCP/DNS. Returns the L3, the range's first three octets and the
    /// links, removed when dropped.
    pub async fn second_l3(&self, tag: &str, octet: u8, dhcp: bool) -> (String, String, Links) {
        let srv = &self.s;
        let pid = std::process::id() % 1000;
        let (up, peer) = (format!("rz{tag}{pid}u"), format!("rz{tag}{pid}p"));
        let links = Links(vec![up.clone(), peer.clone(), format!("br_{up}")]);
        assert!(sh(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &peer]), "veth pair {up}");
        let l2 = uuid(
            &srv.ok(
                "POST",
                "/l2-networks/no-vlan",
                Some(json!({"params": {"name": tag, "zoneUuid": self.zone, "physicalInterface": up}})),
            )
            .await["inventory"],
        );
        srv.ok("POST", &format!("/l2-networks/{l2}/clusters/{}", self.cluster), None).await;
        let l3 = uuid(
            &srv.ok("POST", "/l3-networks", Some(json!({"params": {"name": tag, "l2NetworkUuid": l2}}))).await
                ["inventory"],
        );
        let net = format!("10.{octet}.{}", std::process::id() % 200 + 20);
        srv.ok(
            "POST",
            &format!("/l3-networks/{l3}/ip-ranges"),
            Some(json!({"params": {"name": "r", "startIp": format!("{net}.10"), "endIp": format!("{net}.20"),
                "netmask": "255.255.255.0", "gateway": format!("{net}.1")}})),
        )
        .await;
        if dhcp {
            let flat = uuid(&srv.query("/network-services/providers?q=type=Flat").await[0]);
            srv.ok(
                "POST",
                &format!("/l3-networks/{l3}/network-services"),
                Some(json!({"params": {"networkServices": {flat: ["DHCP", "DNS"]}}})),
            )
            .await;
        }
        (l3, net, links)
    }

    /// Build the cloud; `tag` (1–2 characters, unique per test) keeps the interface names and
    /// subnets of concurrent tests apart. `None` where KVM guest tests cannot run (the reason is printed).
    pub async fn setup(test: &str, tag: &str) -> Option<KvmCloud> {
        if !can_run(test) {
            return None;
        }
        let image_file = guest_image(test)?;
        let agent_dir = tempfile::tempdir().expect("tempdir");
        let ps_dir = tempfile::tempdir().expect("tempdir");
        let bs_dir = tempfile::tempdir().expect("tempdir");
        let agent = Agent::start(agent_dir.path(), 0).await;
        let s = Server::start_with_env(vec![("RZSTACK_KVM_AGENT_PORT".into(), agent.port.to_string())]).await;

        let n = std::process::id() % 1000;
        let up = format!("rz{tag}{n}u");
        let peer = format!("rz{tag}{n}p");
        let mut links = Links(vec![format!("br_{up}")]);
        assert!(sh(&["ip", "link", "add", &up, "type", "veth", "peer", "name", &peer]), "veth pair {up}");
        links.0.insert(0, peer);
        links.0.insert(0, up.clone());

        let zone = uuid(&s.create_zone("z").await);
        let cluster = uuid(
            &s.ok(
                "POST",
                "/clusters",
                Some(json!({"params": {"zoneUuid": zone, "name": "kvm", "hypervisorType": "KVM"}})),
            )
            .await["inventory"],
        );
        let h = s
            .ok(
                "POST",
                "/hosts/kvm",
                Some(json!({"params": {"name": "h", "managementIp": "127.0.0.1", "clusterUuid": cluster,
                    "username": "root", "password": agent.token()}})),
            )
            .await;
        assert_eq!(h["inventory"]["status"], "Connected", "{h}");
        let host = uuid(&h["inventory"]);
        let ps = uuid(
            &s.ok(
                "POST",
                "/primary-storage/local-storage",
                Some(json!({"params": {"name": "local", "url": ps_dir.path(), "zoneUuid": zone}})),
            )
            .await["inventory"],
        );
        s.ok("POST", &format!("/clusters/{cluster}/primary-storage/{ps}"), None).await;
        let bs = uuid(
            &s.ok(
                "POST",
                "/backup-storage/image-store",
                Some(json!({"params": {"name": "store", "url": bs_dir.path(), "hostname": "127.0.0.1",
                    "username": "root", "password": "p", "sshPort": 22}})),
            )
            .await["inventory"],
        );
        s.ok("POST", &format!("/zones/{zone}/backup-storage/{bs}"), None).await;
        let image = uuid(
            &s.ok(
                "POST",
                "/images",
                Some(json!({"params": {"name": "guest", "url": format!("file://{}", image_file.display()),
                    "format": "qcow2", "backupStorageUuids": [bs], "platform": "Linux", "architecture": "x86_64"}})),
            )
            .await["inventory"],
        );
        let l2 = uuid(
            &s.ok(
                "POST",
                "/l2-networks/no-vlan",
                Some(json!({"params": {"name": "l2", "zoneUuid": zone, "physicalInterface": up}})),
            )
            .await["inventory"],
        );
        s.ok("POST", &format!("/l2-networks/{l2}/clusters/{cluster}"), None).await;
        let l3 = uuid(
            &s.ok("POST", "/l3-networks", Some(json!({"params": {"name": "l3", "l2NetworkUuid": l2}}))).await
                ["inventory"],
        );
        let octet = 200 + tag.bytes().map(u32::from).sum::<u32>() % 50;
        let net = format!("10.{octet}.{}", n % 250);
        s.ok(
            "POST",
            &format!("/l3-networks/{l3}/ip-ranges"),
            Some(json!({"params": {"name": "r", "startIp": format!("{net}.10"), "endIp": format!("{net}.20"),
                "netmask": "255.255.255.0", "gateway": format!("{net}.1")}})),
        )
        .await;
        let flat = uuid(&s.query("/network-services/providers?q=type=Flat").await[0]);
        s.ok(
            "POST",
            &format!("/l3-networks/{l3}/network-services"),
            Some(json!({"params": {"networkServices": {flat: ["DHCP", "DNS"]}}})),
        )
        .await;
        let offering = uuid(
            &s.ok(
                "POST",
                "/instance-offerings",
                Some(json!({"params": {"name": "tiny", "cpuNum": 1, "memorySize": 256u64 << 20}})),
            )
            .await["inventory"],
        );
        Some(KvmCloud {
            s,
            agent,
            agent_dir,
            ps_dir,
            bs_dir,
            links,
            interface: up,
            zone,
            cluster,
            host,
            ps,
            bs,
            image,
            l2,
            l3,
            net,
            offering,
        })
    }

    /// CreateVmInstance (InstantStart) from the test image on the L3, with `extra` params.
    pub async fn create_vm(&self, name: &str, extra: Value) -> Value {
        let mut p = json!({"name": name, "instanceOfferingUuid": self.offering, "imageUuid": self.image,
            "l3NetworkUuids": [self.l3]});
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        self.s.ok("POST", "/vm-instances", Some(json!({ "params": p }))).await["inventory"].clone()
    }

    /// The VM's serial console log, as the agent reports it.
    pub async fn serial_log(&self, vm: &str) -> PathBuf {
        let st = self.agent.vm_status(vm).await;
        PathBuf::from(st["serialLog"].as_str().unwrap_or_else(|| panic!("no serial log for {vm}: {st}")))
    }

    /// Wait until the VM's serial console shows `marker` (TCG boots are slow on a loaded
    /// machine: a generous limit); returns the log.
    pub async fn wait_serial(&self, vm: &str, marker: &str) -> String {
        let log = self.serial_log(vm).await;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            if t.contains(marker) {
                return t;
            }
            assert!(Instant::now() < deadline, "no {marker} on the serial console of {vm}:\n{t}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the VM's state (through the API) is `state`.
    pub async fn wait_state(&self, vm: &str, state: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.s.query(&format!("/vm-instances/{vm}")).await;
            if v.first().is_some_and(|v| v["state"] == state) {
                return v[0].clone();
            }
            assert!(Instant::now() < deadline, "VM {vm} is not {state}: {v:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One QMP command on a VM's socket (the agent opens it per operation only): its `return`, or
/// QEMU's `error`.
pub fn qmp(sock: &Path, command: &str, args: Value) -> Result<Value, Value> {
    use std::io::{BufRead, BufReader, Write};
    let mut w = std::os::unix::net::UnixStream::connect(sock).expect("QMP socket");
    w.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut r = BufReader::new(w.try_clone().expect("clone"));
    let mut greeting = String::new();
    r.read_line(&mut greeting).expect("QMP greeting");
    let mut answer = |w: &mut std::os::unix::net::UnixStream, msg: Value| -> Result<Value, Value> {
        w.write_all(format!("{msg}\n").as_bytes()).expect("QMP write");
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).expect("QMP read") > 0, "QMP closed");
            let v: Value = serde_json::from_str(&line).expect("QMP json");
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.clone());
            }
        }
    };
    answer(&mut w, json!({"execute": "qmp_capabilities"})).expect("qmp_capabilities");
    answer(&mut w, json!({"execute": command, "arguments": args}))
}
