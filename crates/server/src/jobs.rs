//! Durable API jobs (upstream `AsyncRestVO`): an async API is written to the `api_job` table
//! before its 202 goes out, run in the background, and its result stored for polling and
//! sent to the caller's web hook. Jobs left `processing` by a crash are resumed at the next
//! start (handlers are idempotent: a job's resource uuids are fixed when it is accepted) and
//! failed after three attempts, so no accepted job stays 202 forever.

use crate::api::{ApiDef, Msg, Reply};
use crate::db::{is_unique_violation, Val};
use crate::error::{Error, Result};
use crate::util::now_ms;
use crate::{globals, pipeline, App};
use futures::FutureExt;
use rzstack_api::{codes, ErrorCode};
use serde_json::{json, Map, Value};
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How many times a job is started before a crash loop gives up on it.
pub const MAX_ATTEMPTS: i64 = 3;

pub enum AcceptError {
    Duplicate,
    Other(Error),
}

/// How long a poll of a job that runs in this process waits for the job's end before it
/// answers 202: a waiting poll costs nothing, while a client polling again and again costs a
/// request and a database read each time (a long poll; the answers are those of upstream).
const LONG_POLL: Duration = Duration::from_millis(500);

/// A job in process: the signal of its end, and its stored result (success, body, schema
/// map, as written to its row) so that the polls it wakes need not read the row back.
#[derive(Default)]
struct Running {
    done: Notify,
    result: std::sync::OnceLock<(bool, String, String)>,
}

type InProcessMap = std::collections::BTreeMap<String, Arc<Running>>;

/// Jobs accepted or running in this process, each with the signal of its end (for polls).
/// The periodic takeover in [`recover`] must not start these a second time (they are
/// `processing` rows with this node's uuid too).
static IN_PROCESS: std::sync::Mutex<InProcessMap> = std::sync::Mutex::new(std::collections::BTreeMap::new());

fn in_process() -> std::sync::MutexGuard<'static, InProcessMap> {
    IN_PROCESS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a job as in process; true when it was not marked yet.
fn mark(job: &str) -> bool {
    let mut m = in_process();
    if m.contains_key(job) {
        return false;
    }
    m.insert(job.to_string(), Arc::new(Running::default()));
    true
}

/// Removes a job from [`IN_PROCESS`] when its task ends (also on panic), after its result is
/// stored, and wakes the polls waiting for it.
struct InProcess(String);

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(running) = in_process().remove(&self.0) {
            running.done.notify_waiters();
        }
    }
}

/// Persist a new job. Fails with `Duplicate` when the uuid was used before.
pub async fn accept(app: &App, msg: &Msg, timeout_ms: u64, webhook: Option<&str>) -> Result<(), AcceptError> {
    let request = serde_json::to_string(msg).map_err(|e| AcceptError::Other(Error::Internal(e.to_string())))?;
    // Marked before the row exists, so a concurrent takeover never sees it unmarked.
    let fresh = mark(&msg.job_uuid);
    let r = app
        .jobs
        .execute_grouped(
            "INSERT INTO api_job (uuid, api, request, state, webhook, timeout_ms, attempts, mn_uuid, create_date) \
             VALUES ($1, $2, $3, 'processing', $4, $5, 1, $6, $7)",
            vec![
                Val::from(msg.job_uuid.as_str()),
                Val::from(msg.api.as_str()),
                Val::S(request),
                Val::from(webhook.map(str::to_string)),
                Val::I(timeout_ms as i64),
                Val::from(app.mn_uuid.as_str()),
                Val::I(now_ms()),
            ],
        )
        .await;
    if r.is_err() && fresh {
        in_process().remove(&msg.job_uuid);
    }
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(AcceptError::Duplicate),
        Err(e) => Err(AcceptError::Other(e)),
    }
}

/// Run an accepted job in the background until it is done.
pub fn spawn(app: App, api: &'static ApiDef, msg: Msg, timeout_ms: u64, webhook: Option<String>) {
    let guard = app.running.enter();
    mark(&msg.job_uuid);
    let mark = InProcess(msg.job_uuid.clone());
    job_runtime().spawn(async move {
        let _mark = mark;
        let job = msg.job_uuid.clone();
        let span = tracing::info_span!("job", job = %job, api = api.name);
        let _e = span.enter();
        drop(_e);
        // Test-only hook: keep jobs in the running state for a while (crash/poll tests).
        if let Some(ms) = std::env::var("RZSTACK_TEST_JOB_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let started = std::time::Instant::now();
        // A job may hold a write transaction and read through the pool at the same time, so at
        // most `job_slots` jobs run at once: the pool can never be drained by half-done jobs.
        let slots = app.job_slots.clone();
        let work = async {
            let _slot = slots.acquire().await;
            pipeline::process(&app, api, msg).await
        };
        let fut = std::panic::AssertUnwindSafe(work).catch_unwind();
        let result = match tokio::time::timeout(Duration::from_millis(timeout_ms), fut).await {
            Ok(Ok(r)) => r,
            Ok(Err(_panic)) => Err(Error::Internal(format!("the API {} panicked", api.name))),
            Err(_) => Err(Error::code(codes::SYS_1001, format!("API[{}] timeout after {timeout_ms} ms", api.name))),
        };
        match &result {
            Ok(_) => tracing::info!(job = %job, api = api.name, ms = started.elapsed().as_millis() as u64, "job done"),
            Err(e) => tracing::info!(job = %job, api = api.name, error = %e, "job failed"),
        }
        finish(&app, &job, result, webhook).await;
        drop(guard);
    });
}

/// How much lower than the HTTP side the job threads run (a `nice` increment).
const JOB_NICENESS: i32 = 10;

/// The runtime jobs run on: threads of their own, at a lower CPU priority than the threads
/// that answer HTTP requests. On a saturated machine an accept (parse, one INSERT, 202) then
/// waits neither for job tasks on the same worker threads nor for the CPU they take: the
/// 202 stays fast while the jobs use what is left. One per process, for the life of the
/// process (a runtime cannot be dropped from async code).
fn job_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("rzstack-job")
            .enable_all()
            .on_thread_start(|| {
                // Linux keeps a nice value per thread: this lowers this worker only, relative
                // to the process's own (no privilege needed to lower it).
                // SAFETY: gettid, getpriority and setpriority take plain integers and touch
                // no memory.
                unsafe {
                    let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                    let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
                    libc::setpriority(libc::PRIO_PROCESS, tid, (nice + JOB_NICENESS).min(19));
                }
            })
            .build()
            .unwrap_or_else(|e| panic!("cannot start the job runtime: {e}"))
    })
}

/// Run `work` on the job runtime: threads it starts (a SQLite connection's worker, say) have
/// the job threads' lower priority.
pub(crate) async fn on_job_threads<F>(work: F) -> Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    job_runtime().spawn(work).await.map_err(|e| Error::Internal(format!("a task on the job runtime failed: {e}")))
}

async fn finish(app: &App, job: &str, result: Result<Reply>, webhook: Option<String>) {
    let (success, body, schema) = match result {
        Ok(r) => (true, Value::Object(r.body), Value::Object(r.schema)),
        Err(e) => (false, json!({ "error": e.to_error_code() }), Value::Object(Map::new())),
    };
    let body_text = body.to_string();
    let schema_text = schema.to_string();
    let vals = [
        Val::I(success as i64),
        Val::S(body_text.clone()),
        Val::S(schema_text.clone()),
        Val::I(now_ms()),
        Val::from(job),
    ];
    // The result must reach the table; retry briefly on transient database errors.
    for attempt in 0..10u64 {
        match app
            .jobs
            .execute_grouped(
                "UPDATE api_job SET state = 'done', success = $1, result = $2, schema_map = $3, finish_date = $4 \
                 WHERE uuid = $5",
                vals.to_vec(),
            )
            .await
        {
            Ok(_) => {
                if let Some(running) = in_process().get(job) {
                    let _ = running.result.set((success, body_text.clone(), schema_text));
                }
                break;
            }
            Err(e) => {
                tracing::error!(job, error = %e, attempt, "cannot store job result");
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    if let Some(url) = webhook {
        let http = app.http.clone();
        let job = job.to_string();
        tokio::spawn(async move { call_web_hook(http, url, job, success, body_text).await });
    }
}

/// POST the job's result to its web hook: 15 tries, 2 s apart, as upstream.
async fn call_web_hook(http: reqwest::Client, url: String, job: String, success: bool, body: String) {
    for attempt in 1..=15 {
        let r = http
            .post(&url)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Job-UUID", &job)
            .header("X-Job-Success", if success { "true" } else { "false" })
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => tracing::warn!(%url, job, attempt, status = resp.status().as_u16(), "web hook refused"),
            Err(e) => tracing::warn!(%url, job, attempt, error = %e, "web hook failed"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The answer to `GET /api-jobs/{uuid}`: (status, JSON text of the body).
pub async fn poll(app: &App, uuid: &str, want_schema: bool) -> Result<Option<(u16, String)>> {
    let running = in_process().get(uuid).cloned();
    if let Some(running) = running {
        let done = running.done.notified();
        tokio::pin!(done);
        // registered before the second look, so an end in between is not missed
        done.as_mut().enable();
        if in_process().contains_key(uuid) && tokio::time::timeout(LONG_POLL, done).await.is_err() {
            return Ok(Some((202, "{}".into())));
        }
        // the job ended in this process: its result as stored in its row
        if let Some((success, text, schema)) = running.result.get() {
            return Ok(Some(answer(*success, text, Some(schema), want_schema)));
        }
    }
    let row = app
        .jobs
        .fetch_optional("SELECT state, success, result, schema_map FROM api_job WHERE uuid = $1", &[Val::from(uuid)])
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state: String = row.try_get(0)?;
    if state != "done" {
        return Ok(Some((202, "{}".into())));
    }
    let success: i64 = row.try_get::<Option<i64>, _>(1)?.unwrap_or(0);
    let text: String = row.try_get::<Option<String>, _>(2)?.unwrap_or_else(|| "{}".into());
    let schema: Option<String> = if success != 0 && want_schema { row.try_get(3)? } else { None };
    Ok(Some(answer(success != 0, &text, schema.as_deref(), want_schema)))
}

/// A done job's answer from its stored result: the stored JSON text itself, with the `schema`
/// map spliced in as the last key when asked for (no parse and re-serialization of the
/// inventory on every poll).
fn answer(success: bool, text: &str, schema: Option<&str>, want_schema: bool) -> (u16, String) {
    let status = if success { 200 } else { 503 };
    let body = text.trim();
    let schema = schema.map(str::trim).filter(|m| success && want_schema && m.len() > 2 && m.starts_with('{'));
    match (schema, body.strip_suffix('}')) {
        (Some(m), Some(open)) if body.starts_with('{') => {
            let sep = if open.trim_end() == "{" { "" } else { "," };
            (status, format!("{open}{sep}\"schema\":{m}}}"))
        }
        _ => (status, body.to_string()),
    }
}

/// Resume the jobs this node left unfinished (a crash or a kill), or fail those that have
/// already been tried [`MAX_ATTEMPTS`] times. Also take over jobs of nodes whose heart beat
/// stopped long ago.
pub async fn recover(app: &App) -> Result<usize> {
    let stale = now_ms() - 60_000;
    // The nodes alive (the jobs may be in another database than the nodes: two reads).
    let alive: std::collections::HashSet<String> = app
        .db
        .fetch_all("SELECT uuid FROM management_node WHERE heart_beat > $1", &[Val::I(stale)])
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let rows = app
        .jobs
        .fetch_all(
            "SELECT uuid, request, timeout_ms, webhook, attempts, mn_uuid FROM api_job WHERE state = 'processing'",
            &[],
        )
        .await?;
    let mut n = 0;
    for row in rows {
        let owner: String = row.try_get(5)?;
        if owner != app.mn_uuid && alive.contains(&owner) {
            continue; // a live node's job
        }
        let uuid: String = row.try_get(0)?;
        let request: String = row.try_get(1)?;
        let timeout_ms: i64 = row.try_get(2)?;
        let webhook: Option<String> = row.try_get(3)?;
        let attempts: i64 = row.try_get(4)?;
        if in_process().contains_key(&uuid) {
            continue; // running here right now, not left over
        }
        let claimed = app
            .jobs
            .execute_grouped(
                "UPDATE api_job SET attempts = attempts + 1, mn_uuid = $1 WHERE uuid = $2 AND state = 'processing' AND attempts = $3",
                vec![Val::from(app.mn_uuid.as_str()), Val::from(uuid.as_str()), Val::I(attempts)],
            )
            .await?;
        if claimed == 0 {
            continue;
        }
        n += 1;
        let msg: Option<Msg> = serde_json::from_str(&request).ok();
        let api = msg.as_ref().and_then(|m| app.routes.api(&m.api));
        match (msg, api) {
            (Some(mut msg), Some(api)) if attempts < MAX_ATTEMPTS => {
                msg.replay = true;
                tracing::warn!(job = %uuid, api = api.name, attempt = attempts + 1, "resuming job after restart");
                spawn(app.clone(), api, msg, timeout_ms.max(0) as u64, webhook);
            }
            _ => {
                tracing::error!(job = %uuid, attempts, "failing job that did not finish");
                let err = Error::Api(ErrorCode::new(
                    codes::SYS_1000,
                    format!(
                        "the management node stopped while job[uuid:{uuid}] was running and the job did not finish after {attempts} attempts"
                    ),
                ));
                finish(app, &uuid, Err(err), webhook).await;
            }
        }
    }
    Ok(n)
}

/// Delete finished jobs older than `rest.completedApi.expiredPeriod`.
pub async fn purge_expired(app: &App) -> Result<u64> {
    let period = app.globals.get_i64(&globals::COMPLETED_API_EXPIRED_PERIOD) * 1000;
    app.jobs
        .execute("DELETE FROM api_job WHERE state = 'done' AND finish_date < $1", &[Val::I(now_ms() - period)])
        .await
}

#[cfg(test)]
mod tests {
    fn own_nice() -> i32 {
        // SAFETY: plain integer system calls.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
    }

    #[test]
    fn answers_splice_the_schema_into_the_stored_text() {
        let inv = r#"{"inventory":{"uuid":"a"}}"#;
        let schema = r#"{"inventory":"org.zstack.header.vm.VmInstanceInventory"}"#;
        let (st, body) = super::answer(true, inv, Some(schema), true);
        assert_eq!(st, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["inventory"]["uuid"], "a");
        assert_eq!(v["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
        assert!(body.ends_with(r#""schema":{"inventory":"org.zstack.header.vm.VmInstanceInventory"}}"#), "{body}");
        // no schema asked, an empty map, or a failure: the stored text as it is
        assert_eq!(super::answer(true, inv, Some(schema), false).1, inv);
        assert_eq!(super::answer(true, inv, Some("{}"), true).1, inv);
        let err = r#"{"error":{"code":"SYS.1000"}}"#;
        assert_eq!(super::answer(false, err, Some(schema), true), (503, err.to_string()));
        // an empty body with a schema
        let (_, b) = super::answer(true, "{}", Some(schema), true);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["schema"]["inventory"], "org.zstack.header.vm.VmInstanceInventory");
    }

    /// The nice values of this process's SQLite connection threads.
    fn sqlite_thread_nices() -> Vec<i32> {
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let Some((head, rest)) = stat.rsplit_once(')') else { continue };
            if head.contains("(sqlx-sqlite-wor") {
                // after the name: state is field 3, nice field 19
                out.push(rest.split_whitespace().nth(16).unwrap().parse().unwrap());
            }
        }
        out
    }

    /// The main file's SQLite writer (the sagas' SQL) runs at the jobs' priority; the readers
    /// that answer HTTP requests at the node's.
    #[tokio::test]
    async fn sagas_sqlite_writer_runs_at_the_job_priority() {
        let here = own_nice();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rzstack.db").display());
        let _db = crate::db::Db::connect(&url).await.unwrap();
        let nices = sqlite_thread_nices();
        let low = nices.iter().filter(|n| **n == (here + super::JOB_NICENESS).min(19)).count();
        let normal = nices.iter().filter(|n| **n == here).count();
        assert!(low >= 2, "writer threads at the job priority: {nices:?}");
        assert!(normal >= 8, "reader threads at the node's priority: {nices:?}");
    }

    /// Jobs run on threads below the HTTP side's CPU priority.
    #[test]
    fn job_threads_run_at_a_lower_priority() {
        let here = own_nice();
        let (tx, rx) = std::sync::mpsc::channel();
        super::job_runtime().spawn(async move {
            let _ = tx.send(own_nice());
        });
        let there = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(there, (here + super::JOB_NICENESS).min(19));
    }
}
