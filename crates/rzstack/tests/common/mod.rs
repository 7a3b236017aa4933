//! Black-box test harness: starts the real `rzstack serve` binary on a free port with a fresh
//! database (a temporary SQLite file, or a fresh PostgreSQL database when
//! `RZSTACK_TEST_DATABASE_URL` is set) and talks to it over HTTP as a ZStack client would.
#![allow(dead_code)]

pub mod agent;
pub mod kvm;
pub mod sim;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_PASSWORD: &str = "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb980b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86";

pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    pub data_dir: tempfile::TempDir,
    pub database: Option<String>,
    pub http: reqwest::Client,
    pub session: String,
    pub extra_env: Vec<(String, String)>,
}

/// A response: status and body (JSON when it parses, else a JSON string of the text).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A fresh PostgreSQL database for this test when RZSTACK_TEST_DATABASE_URL is set.
async fn fresh_database() -> Option<String> {
    let base = std::env::var("RZSTACK_TEST_DATABASE_URL").ok().filter(|s| !s.is_empty())?;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("connect to RZSTACK_TEST_DATABASE_URL");
    let name = format!("rzt_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("database url has a path");
    Some(format!("{prefix}/{name}"))
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with_env(vec![]).await
    }

    pub async fn start_with_env(extra_env: Vec<(String, String)>) -> Server {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let database = fresh_database().await;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        let mut s = Server {
            child: None,
            port: 0,
            base: String::new(),
            data_dir,
            database,
            http,
            session: String::new(),
            extra_env,
        };
        s.spawn().await;
        s.session = s.login().await;
        s
    }

    async fn spawn(&mut self) {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_rzstack"));
            cmd.arg("serve")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(self.data_dir.path())
                .env("RZSTACK_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            if let Some(db) = &self.database {
                cmd.arg("--database").arg(db);
            }
            for (k, v) in &self.extra_env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn rzstack");
            self.port = port;
            self.base = format!("http://127.0.0.1:{port}/zstack/v1");
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(r) = self.http.get(format!("{}/management-nodes/ready", self.base)).send().await {
                    if r.status().as_u16() == 200 {
                        self.child = Some(child);
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("rzstack serve did not start");
    }

    /// Stop with SIGKILL (a crash).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop with SIGTERM and wait for the process to exit; returns its exit success.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(40);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = c.try_wait() {
                    return st.success();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        false
    }

    /// Start again on the same data directory and database.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Write a global config value straight into the database (SQLite file or PostgreSQL).
    /// The server reads `global_config` at start: call `restart()` afterwards.
    pub async fn write_global_config(&self, category: &str, name: &str, value: &str) {
        use sqlx::Connection;
        let sql = "INSERT INTO global_config (category, name, value) VALUES ($1, $2, $3) \
                   ON CONFLICT (category, name) DO UPDATE SET value = excluded.value";
        match &self.database {
            Some(url) => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("connect to postgres");
                sqlx::query(sql).bind(category).bind(name).bind(value).execute(&mut c).await.expect("write config");
            }
            None => {
                let url = format!("sqlite://{}", self.data_dir.path().join("rzstack.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
                sqlx::query(sql).bind(category).bind(name).bind(value).execute(&mut c).await.expect("write config");
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub async fn login(&self) -> String {
        let r = self
            .put(
                "/accounts/login",
                json!({"logInByAccount": {"accountName": "admin", "password": ADMIN_PASSWORD}}),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "login: {}", r.text);
        r.body["inventory"]["uuid"].as_str().expect("session uuid").to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        session: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let url = if path.starts_with("http") { path.to_string() } else { self.url(path) };
        let mut rb = self.http.request(m, url);
        if let Some(s) = session {
            rb = rb.header("Authorization", format!("OAuth {s}"));
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb.header("Content-Type", "application/json; charset=utf-8").body(b.to_string());
        }
        let r = rb.send().await.expect("send");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
        Resp { status, body, text }
    }

    pub async fn put(&self, path: &str, body: Value, session: Option<&str>) -> Resp {
        self.request("PUT", path, Some(body), session, &[]).await
    }

    /// GET with the admin session.
    pub async fn get(&self, path: &str) -> Resp {
        self.request("GET", path, None, Some(&self.session), &[]).await
    }

    /// Poll a job location until it is no longer 202.
    pub async fn poll(&self, location: &str) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.request("GET", location, None, None, &[("X-JSON-Schema", "true")]).await;
            if r.status != 202 || Instant::now() > deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Call an async API with the admin session: expect 202, poll to the end.
    pub async fn job(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let r = self.request(method, path, body, Some(&self.session), &[]).await;
        assert_eq!(r.status, 202, "{method} {path}: expected 202, got {} {}", r.status, r.text);
        let loc = r.body["location"].as_str().expect("location").to_string();
        self.poll(&loc).await
    }

    /// An async API that must succeed; returns the body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.job(method, path, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text);
        r.body
    }

    /// An async API that must fail; returns the error object.
    pub async fn fails(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.job(method, path, body).await;
        assert_eq!(r.status, 503, "{method} {path}: expected failure, got {} {}", r.status, r.text);
        r.body["error"].clone()
    }

    /// Query and return `inventories`.
    pub async fn query(&self, path: &str) -> Vec<Value> {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.body["inventories"].as_array().cloned().unwrap_or_default()
    }

    pub async fn create_zone(&self, name: &str) -> Value {
        self.ok("POST", "/zones", Some(json!({"params": {"name": name}}))).await["inventory"].clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Assert an error object's code and that its details contain `needle`.
pub fn assert_error(err: &Value, code: &str, needle: &str) {
    assert_eq!(err["code"], code, "error: {err}");
    assert!(err["description"].as_str().is_some_and(|d| !d.is_empty()), "error without description: {err}");
    let details = err["details"].as_str().unwrap_or("");
    assert!(details.contains(needle), "details {details:?} do not contain {needle:?}");
}
