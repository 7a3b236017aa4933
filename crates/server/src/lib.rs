//! rzstack management node: a ZStack v1 REST API server.
//!
//! Request path: HTTP (axum, [`rest`]) → [`pipeline`] (parameter rules, session, tags) →
//! resource services ([`resources`]) → SQL ([`db`]). Async APIs run as durable [`jobs`].

pub mod api;
pub mod db;
pub mod error;
pub mod globals;
pub mod hostagent;
pub mod identity;
pub mod jobs;
pub mod mn;
pub mod params;
pub mod pattern;
pub mod pipeline;
pub mod query;
pub mod resources;
pub mod rest;
pub mod routes;
pub mod saga;
pub mod tags;
pub mod util;

use crate::db::Db;
use crate::error::{Error, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How the management node is started.
#[derive(Debug, Clone)]
pub struct Config {
    /// `HOST:PORT` to listen on.
    pub listen: String,
    /// `sqlite:///path` or `postgres://...`; default `<data_dir>/rzstack.db`.
    pub database: Option<String>,
    pub data_dir: PathBuf,
}

impl Config {
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(u) => u.clone(),
            None => {
                let p = self.data_dir.join("rzstack.db");
                let abs = std::path::absolute(&p).unwrap_or(p);
                format!("sqlite://{}", abs.display())
            }
        }
    }
}

/// Counts the jobs running in this process, so shutdown can wait for them.
#[derive(Default)]
pub struct Running {
    count: AtomicUsize,
    idle: Notify,
}

impl Running {
    pub fn enter(self: &Arc<Self>) -> RunningGuardOwned {
        self.count.fetch_add(1, Ordering::SeqCst);
        RunningGuardOwned(self.clone())
    }
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    /// Wait until no job runs, or `limit` passes.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.count() > 0 {
                let n = self.idle.notified();
                if self.count() == 0 {
                    break;
                }
                n.await;
            }
        })
        .await;
    }
}

pub struct RunningGuardOwned(Arc<Running>);

impl Drop for RunningGuardOwned {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub struct AppState {
    pub config: Config,
    pub db: Db,
    /// The API jobs' database: on SQLite a file of its own (see [`Db::open_jobs`]).
    pub jobs: Db,
    pub globals: globals::Globals,
    pub routes: routes::Routes,
    pub http: reqwest::Client,
    /// This node's persistent identity (kept in the data directory).
    pub mn_uuid: String,
    pub running: Arc<Running>,
    /// How many jobs may run at once (see `jobs::spawn`).
    pub job_slots: Arc<tokio::sync::Semaphore>,
}

pub type App = Arc<AppState>;

fn node_uuid(data_dir: &std::path::Path) -> Result<String> {
    let path = data_dir.join("management-node-uuid");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if util::is_hex32(s) {
            return Ok(s.to_string());
        }
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Internal(format!("cannot create {}: {e}", data_dir.display())))?;
    let u = util::new_uuid();
    std::fs::write(&path, &u).map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
    Ok(u)
}

/// Open the database, run migrations, create the admin account; the app without a listener.
pub async fn build(config: Config) -> Result<App> {
    let url = config.database_url();
    let db = Db::connect(&url).await?;
    let jobs = db.open_jobs(&url).await?;
    identity::ensure_admin(&db).await?;
    resources::global_config::ensure(&db).await?;
    let globals = globals::Globals::load(&db).await?;
    let routes = routes::Routes::new(&rest::all_apis());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    let mn_uuid = node_uuid(&config.data_dir)?;
    let job_slots = Arc::new(tokio::sync::Semaphore::new(db.job_slots()));
    Ok(Arc::new(AppState { config, db, jobs, globals, routes, http, mn_uuid, running: Default::default(), job_slots }))
}

/// The axum router for an app.
pub fn router(app: App) -> axum::Router {
    axum::Router::new().fallback(rest::handle).with_state(app)
}

/// Run the management node until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
    let started = std::time::Instant::now();
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| Error::Internal(format!("cannot listen on {}: {e}", config.listen)))?;
    let mut config = config;
    if let Ok(addr) = listener.local_addr() {
        config.listen = addr.to_string();
    }
    let app = build(config).await?;
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    mn::join(&app).await?;
    saga::recover(&app).await?;
    let resumed = jobs::recover(&app).await?;
    resources::host::recover_cleanups(&app).await?;
    background(app.clone());
    resources::host::start_tracker(app.clone());
    resources::vm::start_expunge_task(app.clone());
    tracing::info!(
        listen = ?addr,
        database = ?app.db.kind,
        node = %app.mn_uuid,
        resumed_jobs = resumed,
        ms = started.elapsed().as_millis() as u64,
        "management node ready"
    );
    // Answers go out as soon as they are written (no Nagle delay behind an unacknowledged
    // segment of the same connection).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(app.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    tracing::info!(running = app.running.count(), "shutting down: waiting for running jobs");
    app.running.wait_idle(Duration::from_secs(30)).await;
    let _ = mn::leave(&app).await;
    app.db.close().await;
    app.jobs.close().await;
    tracing::info!("management node stopped");
    Ok(())
}

/// Periodic work: heart beat, purge of old job results and expired sessions, takeover of
/// jobs from dead nodes.
fn background(app: App) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let mut last_purge = std::time::Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = mn::heart_beat(&app).await {
                tracing::warn!(error = %e, "heart beat failed");
            }
            let scan = app.globals.get_i64(&globals::EXPIRED_API_SCAN_INTERVAL).max(1) as u64;
            if last_purge.elapsed() >= Duration::from_secs(scan) {
                last_purge = std::time::Instant::now();
                match jobs::purge_expired(&app).await {
                    Ok(n) if n > 0 => tracing::info!(purged = n, "purged expired job results"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "job purge failed"),
                }
                if let Err(e) = identity::purge_expired(&app.db).await {
                    tracing::warn!(error = %e, "session purge failed");
                }
            }
            if let Err(e) = jobs::recover(&app).await {
                tracing::warn!(error = %e, "job takeover failed");
            }
        }
    });
}
