//! The agent work of a host deletion survives its agent being unreachable and a crash of the
//! management node: the deletion's transaction records it (`host_cleanup`), the node runs it
//! after the commit and deletes the row once the agent did it; a row left pending (agent
//! unreachable, or the node killed during the calls) is run again when the node starts, and the
//! guest's QEMU ends then (real agent, real QEMU guest under TCG).

mod common;

use common::agent::Agent;
use common::kvm::{qemu_pids, sh, uuid, KvmCloud};
use common::Server;
use serde_json::json;
use std::time::{Duration, Instant};

/// One `host_cleanup` row as the test reads it straight from the database.
#[derive(Debug)]
struct Pending {
    host: String,
    attempts: i64,
    last_error: Option<String>,
    claimed_by: Option<String>,
    work: String,
}

/// The pending rows (SQLite file of the data directory, or the test's PostgreSQL database).
async fn pending(s: &Server) -> Vec<Pending> {
    use sqlx::{Connection, Row};
    let sql = "SELECT host_uuid, attempts, last_error, claimed_by, work FROM host_cleanup ORDER BY create_date";
    let rows: Vec<Pending> = match &s.database {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect to postgres");
            let rows = sqlx::query(sql).fetch_all(&mut c).await.expect("read host_cleanup");
            rows.iter()
                .map(|r| Pending {
                    host: r.get(0),
                    attempts: r.get(1),
                    last_error: r.get(2),
                    claimed_by: r.get(3),
                    work: r.get(4),
                })
                .collect()
        }
        None => {
            let url = format!("sqlite://{}", s.data_dir.path().join("rzstack.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
            let rows = sqlx::query(sql).fetch_all(&mut c).await.expect("read host_cleanup");
            rows.iter()
                .map(|r| Pending {
                    host: r.get(0),
                    attempts: r.get(1),
                    last_error: r.get(2),
                    claimed_by: r.get(3),
                    work: r.get(4),
                })
                .collect()
        }
    };
    rows
}

/// Run one statement on the node's database, as another management node sharing it would.
async fn exec(s: &Server, sql: &str) {
    use sqlx::Connection;
    match &s.database {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect to postgres");
            sqlx::query(sql).execute(&mut c).await.expect(sql);
        }
        None => {
            let url = format!("sqlite://{}", s.data_dir.path().join("rzstack.db").display());
            let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
            sqlx::query(sql).execute(&mut c).await.expect(sql);
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

fn link_exists(name: &str) -> bool {
    sh(&["ip", "link", "show", name])
}

fn tap_of(vm: &str) -> String {
    format!("tap{}0", &vm[..8])
}

/// Wait until the guest's QEMU ended and the row is gone.
async fn wait_cleaned(s: &Server, vm: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = pending(s).await;
        if qemu_pids(vm).is_empty() && rows.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "not cleaned up: QEMU {:?}, rows {rows:?}", qemu_pids(vm));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The agent is unreachable at deletion time (its port accepts and answers nothing): the
/// deletion succeeds, the work stays pending with one failed attempt and the error; once the
/// agent is back, the restarted node runs it: the guest's QEMU and tap are gone, so is the row.
#[tokio::test]
async fn pending_cleanup_runs_after_a_restart() {
    let Some(mut c) = KvmCloud::setup("host_cleanup_crash", "cp").await else { return };
    let vm = c.create_vm("p", json!({})).await;
    let vu = uuid(&vm);
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} runs");
    assert!(link_exists(&tap_of(&vu)), "the tap of {vu} exists");
    assert!(pending(&c.s).await.is_empty(), "no pending cleanup before the deletion");
    c.agent.stop();
    let silent = std::net::TcpListener::bind(("127.0.0.1", c.agent.port)).expect("bind the agent's port");

    assert_eq!(c.s.ok("DELETE", &format!("/hosts/{}", c.host), None).await, json!({}));
    assert!(c.s.query(&format!("/hosts/{}", c.host)).await.is_empty());
    let rows = pending(&c.s).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].host, c.host);
    assert_eq!(rows[0].attempts, 1, "{rows:?}");
    assert!(rows[0].last_error.as_deref().unwrap_or_default().contains(&vu), "{rows:?}");
    assert_eq!(rows[0].claimed_by, None, "released after the failed attempt: {rows:?}");
    assert!(rows[0].work.contains(&vu) && rows[0].work.contains(&tap_of(&vu)), "{rows:?}");
    assert!(!qemu_pids(&vu).is_empty(), "nobody could reach the host: QEMU of {vu} still runs");

    // the agent comes back on its port (the stopped one keeps the guests' clean-up at drop)
    drop(silent);
    let _back = Agent::start(&c.agent.data_dir, c.agent.port).await;
    c.s.restart().await;
    wait_cleaned(&c.s, &vu).await;
    assert!(!link_exists(&tap_of(&vu)), "the tap of {vu} is gone");
    assert!(c.s.query(&format!("/vm-instances/{vu}")).await.is_empty());
}

/// The node is killed while the deletion's agent calls are under way (the agent's port answers
/// nothing, so the first call waits): the committed deletion left its row, claimed by the dead
/// node; at the next start the node takes it back and runs it once the agent answers again.
#[tokio::test]
async fn cleanup_interrupted_by_a_crash_runs_at_the_next_start() {
    let Some(mut c) = KvmCloud::setup("host_cleanup_crash", "ck").await else { return };
    let vm = c.create_vm("k", json!({})).await;
    let vu = uuid(&vm);
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} runs");
    c.agent.stop();
    let silent = std::net::TcpListener::bind(("127.0.0.1", c.agent.port)).expect("bind the agent's port");

    let r = c.s.request("DELETE", &format!("/hosts/{}", c.host), None, Some(&c.s.session), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    // the rows are committed and the node runs the clean-up (its row claimed), waiting for
    // the silent agent: crash it now
    let deadline = Instant::now() + Duration::from_secs(8);
    while !pending(&c.s).await.iter().any(|r| r.claimed_by.is_some()) {
        assert!(Instant::now() < deadline, "the host deletion did not commit and claim its clean-up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.s.kill9();
    let rows = pending(&c.s).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].host, c.host);
    assert_eq!(rows[0].attempts, 0, "the attempt was cut short: {rows:?}");
    assert!(rows[0].claimed_by.is_some(), "held by the killed node: {rows:?}");
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} still runs");

    drop(silent);
    let _back = Agent::start(&c.agent.data_dir, c.agent.port).await;
    c.s.restart().await;
    wait_cleaned(&c.s, &vu).await;
    assert!(!link_exists(&tap_of(&vu)), "the tap of {vu} is gone");
    assert!(c.s.query(&format!("/hosts/{}", c.host)).await.is_empty());
}

/// A reachable agent: the cluster deletion's clean-up runs at once and leaves no row.
#[tokio::test]
async fn a_done_cleanup_leaves_no_row() {
    let Some(c) = KvmCloud::setup("host_cleanup_crash", "cd").await else { return };
    let vm = c.create_vm("d", json!({})).await;
    let vu = uuid(&vm);
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} runs");
    assert_eq!(c.s.ok("DELETE", &format!("/clusters/{}", c.cluster), None).await, json!({}));
    assert!(pending(&c.s).await.is_empty(), "{:?}", pending(&c.s).await);
    wait_cleaned(&c.s, &vu).await;
}

/// Several nodes share the database: a row another (live) node claimed is not run, while a
/// free one is (at start) and one older than a day is dropped; once that claim is stale (its
/// node died), the periodic retry of this node takes the row over and runs it, without a restart.
#[tokio::test]
async fn a_claim_of_another_node_is_respected_until_stale() {
    let Some(mut c) = KvmCloud::setup("host_cleanup_crash", "cc").await else { return };
    let vm = c.create_vm("c", json!({})).await;
    let vu = uuid(&vm);
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} runs");
    c.agent.stop();
    let silent = std::net::TcpListener::bind(("127.0.0.1", c.agent.port)).expect("bind the agent's port");
    assert_eq!(c.s.ok("DELETE", &format!("/hosts/{}", c.host), None).await, json!({}));
    assert_eq!(pending(&c.s).await.len(), 1);
    drop(silent);
    let _back = Agent::start(&c.agent.data_dir, c.agent.port).await;

    // another node holds the real row; a free row with nothing to do is there too
    let now = now_ms();
    exec(&c.s, &format!("UPDATE host_cleanup SET claimed_by = 'other-node', claimed_at = {now}")).await;
    exec(
        &c.s,
        &format!(
            "INSERT INTO host_cleanup (uuid, host_uuid, management_ip, token, work, create_date, attempts, \
             last_error, last_op_date, claimed_by, claimed_at) VALUES ('probe', 'probe-host', '127.0.0.1', '', \
             '{{\"vms\":[],\"network\":{{\"version\":1}},\"files\":[]}}', {now}, 0, NULL, {now}, NULL, NULL)"
        ),
    )
    .await;
    // and a row a day old whose agent does not answer (nothing listens on 127.0.0.2): dropped
    let old = now - 25 * 3600 * 1000;
    exec(
        &c.s,
        &format!(
            "INSERT INTO host_cleanup (uuid, host_uuid, management_ip, token, work, create_date, attempts, \
             last_error, last_op_date, claimed_by, claimed_at) VALUES ('old', 'old-host', '127.0.0.2', '', \
             '{{\"vms\":[\"{vu}\"],\"network\":{{\"version\":1}},\"files\":[]}}', {old}, 2000, 'x', {old}, \
             NULL, NULL)"
        ),
    )
    .await;
    c.s.restart().await;
    // the start round ran the free row and dropped the old one...
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending(&c.s).await.iter().any(|r| r.host == "probe-host") {
        assert!(Instant::now() < deadline, "the free row was not run at start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pending(&c.s).await.iter().any(|r| r.host == "old-host"), "the day-old row was dropped");
    // ...and left the held one alone
    let rows = pending(&c.s).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].host, c.host);
    assert_eq!(rows[0].claimed_by.as_deref(), Some("other-node"), "{rows:?}");
    assert_eq!(rows[0].attempts, 1, "{rows:?}");
    assert!(!qemu_pids(&vu).is_empty(), "QEMU of {vu} still runs: the other node holds its clean-up");

    // the other node's claim goes stale (11 minutes old): the periodic retry takes it over
    exec(&c.s, &format!("UPDATE host_cleanup SET claimed_at = {}", now - 11 * 60 * 1000)).await;
    wait_cleaned(&c.s, &vu).await;
    assert!(!link_exists(&tap_of(&vu)), "the tap of {vu} is gone");
}
