//! Persistence: one sqlx `Any` pool that is SQLite (the embedded default) or PostgreSQL.
//! All SQL is written once in the dialect both accept (`$n` placeholders, `TEXT`,
//! `BIGINT`, `DOUBLE PRECISION`, `ON CONFLICT`, `RETURNING`). Booleans are `BIGINT` 0/1.
//!
//! SQLite allows one writer at a time; write transactions therefore take a process-wide
//! lock first, so they queue instead of failing with `SQLITE_BUSY` on upgrade.

use crate::error::{Error, Result};
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Executor, Transaction};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    /// The connections writes use. On SQLite a pool of its own, so a writer holding the
    /// writer lock never waits for a connection behind the readers (polls, queries); on
    /// PostgreSQL the same pool.
    writer: AnyPool,
    pub kind: DbKind,
    /// SQLite only: the writer lock (one writer at a time) ...
    write_lock: Option<Arc<Mutex<()>>>,
    /// ... and the queue that multi-statement transactions wait in before they may take it.
    /// Single statements (a job row, a session renewal) skip the queue: they wait for at most
    /// the transaction that is running, not for every saga step queued behind it.
    tx_queue: Option<Arc<Mutex<()>>>,
}

/// A bindable SQL value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    S(String),
    I(i64),
    F(f64),
    /// A NULL typed as text.
    Null,
    /// A NULL typed as an integer (PostgreSQL needs NULLs typed for e.g. `COALESCE`).
    NullI,
    /// A NULL typed as a float.
    NullF,
}

impl From<&str> for Val {
    fn from(s: &str) -> Self {
        Val::S(s.to_string())
    }
}
impl From<String> for Val {
    fn from(s: String) -> Self {
        Val::S(s)
    }
}
impl From<i64> for Val {
    fn from(i: i64) -> Self {
        Val::I(i)
    }
}
impl From<bool> for Val {
    fn from(b: bool) -> Self {
        Val::I(b as i64)
    }
}
impl From<f64> for Val {
    fn from(f: f64) -> Self {
        Val::F(f)
    }
}
impl From<Option<String>> for Val {
    fn from(o: Option<String>) -> Self {
        o.map(Val::S).unwrap_or(Val::Null)
    }
}
impl From<Option<&str>> for Val {
    fn from(o: Option<&str>) -> Self {
        o.map(Val::from).unwrap_or(Val::Null)
    }
}
impl From<Option<i64>> for Val {
    fn from(o: Option<i64>) -> Self {
        o.map(Val::I).unwrap_or(Val::NullI)
    }
}
impl From<Option<bool>> for Val {
    fn from(o: Option<bool>) -> Self {
        o.map(Val::from).unwrap_or(Val::NullI)
    }
}
impl From<Option<f64>> for Val {
    fn from(o: Option<f64>) -> Self {
        o.map(Val::F).unwrap_or(Val::NullF)
    }
}

pub type AnyQuery<'q> = Query<'q, Any, AnyArguments<'q>>;

/// Bind one value to a query.
pub fn bind<'q>(q: AnyQuery<'q>, v: &Val) -> AnyQuery<'q> {
    match v {
        Val::S(s) => q.bind(s.clone()),
        Val::I(i) => q.bind(*i),
        Val::F(f) => q.bind(*f),
        Val::Null => q.bind(None::<String>),
        Val::NullI => q.bind(None::<i64>),
        Val::NullF => q.bind(None::<f64>),
    }
}

/// Build a query with all values bound in order.
pub fn query_with<'q>(sql: &'q str, vals: &[Val]) -> AnyQuery<'q> {
    vals.iter().fold(sqlx::query(sql), bind)
}

const SQLITE_POOL: u32 = 8;
const POSTGRES_POOL: u32 = 32;

/// A write transaction; holds the SQLite writer lock for its lifetime.
pub struct WriteTx {
    pub tx: Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
    _queued: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }

    pub async fn execute(&mut self, sql: &str, vals: &[Val]) -> Result<u64> {
        let r = query_with(sql, vals).execute(&mut *self.tx).await?;
        Ok(r.rows_affected())
    }

    pub async fn fetch_optional(&mut self, sql: &str, vals: &[Val]) -> Result<Option<AnyRow>> {
        Ok(query_with(sql, vals).fetch_optional(&mut *self.tx).await?)
    }

    pub async fn fetch_all(&mut self, sql: &str, vals: &[Val]) -> Result<Vec<AnyRow>> {
        Ok(query_with(sql, vals).fetch_all(&mut *self.tx).await?)
    }
}

/// Schema migrations, applied in order once each. One file per area so that areas can grow
/// independently; a released migration is never edited, only followed by a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_foundation.sql")),
    (2, include_str!("migrations/0002_compute.sql")),
    (3, include_str!("migrations/0003_storage.sql")),
    (4, include_str!("migrations/0004_network.sql")),
    (5, include_str!("migrations/0005_config.sql")),
    (6, include_str!("migrations/0006_vm.sql")),
    (7, include_str!("migrations/0007_issue3_fixes.sql")),
    (8, include_str!("migrations/0008_vm_more.sql")),
    (9, include_str!("migrations/0009_vm_create_request.sql")),
    (10, include_str!("migrations/0010_query_indexes.sql")),
    (12, include_str!("migrations/0012_tag_pattern.sql")),
    (13, include_str!("migrations/0013_scale_indexes.sql")),
];

impl Db {
    /// Connect to `url` (`sqlite://...` or `postgres://...`), creating the SQLite file and
    /// its directory when missing.
    pub async fn connect(url: &str) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let (kind, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            let file = path.split('?').next().unwrap_or("");
            if !file.is_empty() && file != ":memory:" {
                if let Some(dir) = std::path::Path::new(file).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
                    }
                }
            }
            let url = if path.contains('?') { format!("sqlite://{path}") } else { format!("sqlite://{path}?mode=rwc") };
            (DbKind::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (DbKind::Postgres, url.to_string())
        } else {
            return Err(Error::Internal(format!(
                "unsupported database url {url:?}: use sqlite:///path/to/file.db or postgres://user:pass@host:port/db"
            )));
        };
        let opts = AnyPoolOptions::new()
            .max_connections(match kind {
                DbKind::Sqlite => SQLITE_POOL,
                DbKind::Postgres => POSTGRES_POOL,
            })
            .min_connections(1)
            // An embedded SQLite connection cannot have been dropped by a server: no ping (a
            // round trip to the connection's worker thread) before every use.
            .test_before_acquire(kind != DbKind::Sqlite)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        conn.execute("PRAGMA journal_mode=WAL").await?;
                        conn.execute("PRAGMA busy_timeout=30000").await?;
                        conn.execute("PRAGMA synchronous=NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys=ON").await?;
                        // a page cache of up to 32 MiB per connection (SQLite's default is
                        // 2 MiB): at 10,000 VMs the hot pages no longer come from the OS
                        conn.execute("PRAGMA cache_size=-32768").await?;
                    }
                    Ok(())
                })
            });
        let pool = opts.clone().connect(&url).await?;
        // Writers hold the writer lock while they wait for a connection: two connections of
        // their own (one may still be on its way back to the pool when the next writer starts).
        let writer = match kind {
            DbKind::Sqlite => opts.max_connections(2).connect(&url).await?,
            DbKind::Postgres => pool.clone(),
        };
        let write_lock = (kind == DbKind::Sqlite).then(|| Arc::new(Mutex::new(())));
        let tx_queue = (kind == DbKind::Sqlite).then(|| Arc::new(Mutex::new(())));
        let db = Db { pool, writer, kind, write_lock, tx_queue };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if self.kind == DbKind::Postgres {
            // Several management nodes may start at once on one database: one migrates at a time.
            tx.execute("SELECT pg_advisory_xact_lock(7707070)", &[]).await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS rzstack_migration (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)",
            &[],
        )
        .await?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .fetch_optional("SELECT version FROM rzstack_migration WHERE version = $1", &[Val::I(*version)])
                .await?
                .is_some();
            if done {
                continue;
            }
            // Comment lines go first, so a `;` inside a comment does not split a statement.
            let sql: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(stmt, &[]).await.map_err(|e| Error::Migrate(format!("migration {version}: {e}: {stmt}")))?;
            }
            tx.execute(
                "INSERT INTO rzstack_migration (version, applied) VALUES ($1, $2)",
                &[Val::I(*version), Val::I(crate::util::now_ms())],
            )
            .await?;
            tracing::info!(version, "applied migration");
        }
        tx.commit().await
    }

    /// How many API jobs may run at once. A job can hold one connection in a transaction and
    /// ask the pool for one more; on PostgreSQL at most half the pool may be held that way. On
    /// SQLite writers queue on the writer lock before taking a connection, so the pool cannot
    /// be drained by them.
    pub fn job_slots(&self) -> usize {
        match self.kind {
            DbKind::Sqlite => 64,
            DbKind::Postgres => (POSTGRES_POOL / 2) as usize,
        }
    }

    /// Begin a write transaction (queued behind other writers on SQLite).
    pub async fn begin_write(&self) -> Result<WriteTx> {
        let queued = match &self.tx_queue {
            Some(q) => Some(q.clone().lock_owned().await),
            None => None,
        };
        let guard = match &self.write_lock {
            Some(l) => Some(l.clone().lock_owned().await),
            None => None,
        };
        let tx = self.writer.begin().await?;
        Ok(WriteTx { tx, _guard: guard, _queued: queued })
    }

    /// One statement in its own write transaction.
    pub async fn execute(&self, sql: &str, vals: &[Val]) -> Result<u64> {
        let _guard = match &self.write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let r = query_with(sql, vals).execute(&self.writer).await?;
        Ok(r.rows_affected())
    }

    /// A write statement that returns rows (`... RETURNING`).
    pub async fn execute_returning(&self, sql: &str, vals: &[Val]) -> Result<Option<AnyRow>> {
        let _guard = match &self.write_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        Ok(query_with(sql, vals).fetch_optional(&self.writer).await?)
    }

    pub async fn fetch_optional(&self, sql: &str, vals: &[Val]) -> Result<Option<AnyRow>> {
        Ok(query_with(sql, vals).fetch_optional(&self.pool).await?)
    }

    pub async fn fetch_all(&self, sql: &str, vals: &[Val]) -> Result<Vec<AnyRow>> {
        Ok(query_with(sql, vals).fetch_all(&self.pool).await?)
    }

    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// True when a database error is a unique-constraint violation.
pub fn is_unique_violation(e: &Error) -> bool {
    match e {
        Error::Db(sqlx::Error::Database(d)) => d.is_unique_violation(),
        _ => false,
    }
}
