//! A real `rzstack agent` on a loopback port, for black-box tests of KVM hosts.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Agent {
    /// Start on `port` (0 = a free one) with the token file of `data_dir`.
    pub async fn start(data_dir: &Path, port: u16) -> Agent {
        let http = reqwest::Client::new();
        for _ in 0..5 {
            let port = if port == 0 { free_port() } else { port };
            let mut child = Command::new(env!("CARGO_BIN_EXE_rzstack"))
                .arg("agent")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(data_dir)
                .env("RZSTACK_LOG", "warn")
                .env_remove("RZSTACK_AGENT_TOKEN")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn rzstack agent");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                // Without a token the agent answers 401: it is up.
                let r = http.post(format!("http://127.0.0.1:{port}/v1/host/ping")).body("{}").send().await;
                if r.is_ok_and(|r| r.status().as_u16() == 401) {
                    return Agent { child: Some(child), port, data_dir: data_dir.to_path_buf() };
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("rzstack agent did not start");
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("token")).expect("token file").trim().to_string()
    }

    /// The agent's `vm/status` answer for one VM.
    pub async fn vm_status(&self, vm: &str) -> Value {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/v1/vm/status", self.port))
            .bearer_auth(self.token())
            .json(&json!({"version": 1, "vmUuids": [vm]}))
            .send()
            .await
            .expect("vm status");
        let b: Value = r.json().await.expect("json");
        assert_eq!(b["success"], true, "{b}");
        b["result"]["vms"][0].clone()
    }

    /// Stop the agent process only (guests it started keep running, as after a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        // Guests, dnsmasq and swtpm run detached from the agent (they survive its restarts by
        // design); the test ends them: each has the agent's data directory on its command line.
        // A newer agent on the same directory is not one of them.
        if let Some(dir) = self.data_dir.to_str() {
            for prog in ["qemu-system", "dnsmasq", "swtpm"] {
                let pattern = format!("{prog}.*{}", regex_escape(dir));
                let _ =
                    Command::new("pkill").arg("-f").arg(pattern).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars().flat_map(|c| if ".[]()*+?^$|\\{}".contains(c) { vec!['\\', c] } else { vec![c] }).collect()
}
