//! An rzstack agent in the test process, driven over HTTP like the management node does.
#![allow(dead_code)]

use rzstack_api::agent::{AgentRsp, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const TOKEN: &str = "test-token";

pub struct Agent {
    pub base: String,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Agent {
    pub async fn start(data_dir: &Path) -> Agent {
        let port = free_port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let config = rzstack_agent::Config {
            listen: format!("127.0.0.1:{port}"),
            data_dir: data_dir.to_path_buf(),
            accel: rzstack_agent::Accel::Tcg,
            token: Some(TOKEN.into()),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = rzstack_agent::run(config, async move {
                let _ = rx.await;
            })
            .await
            {
                eprintln!("agent failed: {e}");
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        Agent { base, data_dir: data_dir.to_path_buf(), stop: Some(tx), task: Some(task) }
    }

    /// Stop the agent (VMs keep running).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// POST `body` (with `version` added) to `path`; the whole answer.
    pub async fn raw(&self, path: &str, mut body: Value) -> Value {
        body["version"] = PROTOCOL_VERSION.into();
        let rsp = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("agent reachable");
        assert!(rsp.status().is_success(), "HTTP {}", rsp.status());
        rsp.json().await.expect("JSON answer")
    }

    /// A command that must succeed; its result.
    pub async fn ok<R: DeserializeOwned>(&self, path: &str, body: Value) -> R {
        let v = self.raw(path, body.clone()).await;
        let r: AgentRsp<R> = serde_json::from_value(v.clone()).expect("an AgentRsp");
        assert!(r.success, "{path} {body} failed: {v}");
        r.result.expect("a result")
    }

    /// A command that must fail; its error text.
    pub async fn fails(&self, path: &str, body: Value) -> String {
        let v = self.raw(path, body.clone()).await;
        assert_eq!(v["success"], false, "{path} {body} should fail: {v}");
        v["error"].as_str().unwrap_or_default().to_string()
    }
}

pub fn have(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Whether tools exist; prints the skip reason when not.
pub fn require(test: &str, tools: &[(&str, &str)]) -> bool {
    for (bin, pkg) in tools {
        if !have(bin, &["--version"]) {
            eprintln!("SKIP {test}: {bin} is not installed (apt-get install {pkg})");
            return false;
        }
    }
    true
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

pub fn uuid() -> String {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).expect("urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn qemu_img(args: &[&str]) {
    let st = std::process::Command::new("qemu-img").args(args).status().expect("qemu-img");
    assert!(st.success(), "qemu-img {args:?}");
}

/// A process is alive (not a zombie).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
        .is_some_and(|c| c != 'Z' && c != 'X')
}

pub fn actual_size(p: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// On drop (also when a test fails), kill every QEMU, swtpm and dnsmasq an agent started
/// under `dir`.
pub struct KillLeftovers(pub PathBuf);

impl Drop for KillLeftovers {
    fn drop(&mut self) {
        let mut pidfiles = Vec::new();
        for (sub, files) in [("vms", &["qemu.pid", "swtpm.pid"][..]), ("dhcp", &["dnsmasq.pid"][..])] {
            if let Ok(rd) = std::fs::read_dir(self.0.join(sub)) {
                for e in rd.flatten() {
                    pidfiles.extend(files.iter().map(|f| e.path().join(f)));
                }
            }
        }
        for f in pidfiles {
            let Some(pid) = std::fs::read_to_string(&f).ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
                continue;
            };
            let cl = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cl).contains(&*self.0.to_string_lossy()) {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}
