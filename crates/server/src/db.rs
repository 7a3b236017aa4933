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
use tokio::sync::{mpsc, oneshot, Mutex, OwnedMutexGuard};

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
    /// The group writer of [`Db::execute_grouped`], where there is one (the SQLite jobs file).
    group: Option<mpsc::UnboundedSender<Grouped>>,
}

/// A statement waiting for the next group commit.
struct Grouped {
    sql: &'static str,
    vals: Vec<Val>,
    done: oneshot::Sender<Result<u64>>,
}

/// The most statements one group commit takes.
const GROUP_MAX: usize = 256;

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
    (14, include_str!("migrations/0014_local_storage_ref.sql")),
    (15, include_str!("migrations/0015_local_storage_host_ref.sql")),
    (16, include_str!("migrations/0016_host_cleanup.sql")),
];

/// The schema of the API job database (see [`Db::open_jobs`]) when it is a SQLite file of its
/// own; the same table as `api_job` of migration 1 of the main database.
const JOB_MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("migrations/jobs_0001.sql"))];

/// The SQLite file of the API jobs beside the main one (`rzstack.db` → `rzstack-jobs.db`), as
/// a URL with the main URL's options; `None` for PostgreSQL and in-memory SQLite.
pub fn jobs_sqlite_url(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let (file, opts) = match rest.split_once('?') {
        Some((f, o)) => (f, Some(o)),
        None => (rest, None),
    };
    if file.is_empty() || file == ":memory:" || opts.is_some_and(|o| o.contains("mode=memory")) {
        return None;
    }
    let jobs = match file.strip_suffix(".db") {
        Some(stem) => format!("{stem}-jobs.db"),
        None => format!("{file}-jobs"),
    };
    Some(match opts {
        Some(o) => format!("sqlite://{jobs}?{o}"),
        None => format!("sqlite://{jobs}"),
    })
}

impl Db {
    /// Connect to `url` (`sqlite://...` or `postgres://...`), creating the SQLite file and
    /// its directory when missing.
    pub async fn connect(url: &str) -> Result<Db> {
        Self::connect_with(url, MIGRATIONS, true).await
    }

    /// The database of the API jobs (`api_job`). On SQLite a file of its own beside the main
    /// one, with its own writer: accepting a job (one INSERT before the 202) never waits for
    /// the writer lock behind a saga's transaction on the main file. Rows a former version
    /// left in the main file's `api_job` are moved over first (insert, then delete: a crash
    /// in between repeats the move without duplicates). On PostgreSQL (row locks, many
    /// writers) and for an in-memory SQLite database, the main database itself.
    pub async fn open_jobs(&self, url: &str) -> Result<Db> {
        let Some(jobs_url) = jobs_sqlite_url(url).filter(|_| self.kind == DbKind::Sqlite) else {
            return Ok(self.clone());
        };
        let mut jobs = Self::connect_with(&jobs_url, JOB_MIGRATIONS, false).await?;
        jobs.start_group_writer();
        let old = self.fetch_all(&format!("SELECT {JOB_COLUMNS} FROM api_job"), &[]).await?;
        if !old.is_empty() {
            let mut tx = jobs.begin_write().await?;
            for row in &old {
                let vals =
                    (0..JOB_COLUMNS.split(',').count()).map(|i| any_to_val(row, i)).collect::<Result<Vec<_>>>()?;
                tx.execute(
                    &format!(
                        "INSERT INTO api_job ({JOB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                         ON CONFLICT (uuid) DO NOTHING"
                    ),
                    &vals,
                )
                .await?;
            }
            tx.commit().await?;
            self.execute("DELETE FROM api_job", &[]).await?;
            tracing::info!(jobs = old.len(), "moved API jobs to their own database file");
        }
        Ok(jobs)
    }

    /// `background_writer`: on SQLite, the writer's connections run at the job threads' lower
    /// CPU priority (see [`crate::jobs::on_job_threads`]).
    async fn connect_with(url: &str, migrations: &[(i64, &str)], background_writer: bool) -> Result<Db> {
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
            // SQLite: every connection opened now, by the thread that starts the node (each runs
            // on a thread of its own that keeps the opener's CPU priority: one opened later by a
            // job would serve HTTP requests at the jobs' lower priority)
            .min_connections(match kind {
                DbKind::Sqlite => SQLITE_POOL,
                DbKind::Postgres => 1,
            })
            // An embedded SQLite connection cannot have been dropped by a server: no ping (a
            // round trip to the connection's worker thread) before every use.
            .test_before_acquire(kind != DbKind::Sqlite)
            // ... nor go stale: kept open, so that a request never waits for one to be opened
            // (file, worker thread, PRAGMAs: 4 ms and more under load)
            .idle_timeout((kind == DbKind::Postgres).then_some(std::time::Duration::from_secs(600)))
            .max_lifetime((kind == DbKind::Postgres).then_some(std::time::Duration::from_secs(1800)))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DbKind::Sqlite {
                        // a page cache of up to 8 MiB per reader (SQLite's default is 2 MiB;
                        // every reader is kept open and the pool hands them out in turn, so
                        // their caches add up); 32 MiB for each writer, below
                        sqlite_setup(conn, 8 << 10).await?;
                    }
                    Ok(())
                })
            });
        if kind == DbKind::Sqlite {
            // WAL mode is kept in the file: switched once, on one connection, before the pools
            // open theirs at once (a switch racing other connections answers "database is
            // locked" without waiting).
            let mut first = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await?;
            first.execute("PRAGMA busy_timeout=30000").await?;
            first.execute("PRAGMA journal_mode=WAL").await?;
            sqlx::Connection::close(first).await?;
        }
        let pool = opts.clone().connect(&url).await?;
        // Writers hold the writer lock while they wait for a connection: two connections of
        // their own (one may still be on its way back to the pool when the next writer starts),
        // both opened now rather than by the first burst of writes.
        // The main file's writer runs the sagas' SQL: its connections' threads (SQLite runs each
        // connection on a thread of its own, which inherits the nice value of the thread that
        // opens it) are opened from the job runtime, so that they too yield the CPU to the
        // threads answering HTTP requests.
        let writer = match kind {
            DbKind::Sqlite => {
                // at 10,000 VMs the sagas' hot pages no longer come from the OS
                let opts = opts
                    .max_connections(2)
                    .min_connections(2)
                    .after_connect(|conn, _meta| Box::pin(sqlite_setup(conn, 32 << 10)));
                if background_writer {
                    let url = url.clone();
                    crate::jobs::on_job_threads(async move { opts.connect(&url).await }).await??
                } else {
                    opts.connect(&url).await?
                }
            }
            DbKind::Postgres => pool.clone(),
        };
        let write_lock = (kind == DbKind::Sqlite).then(|| Arc::new(Mutex::new(())));
        let tx_queue = (kind == DbKind::Sqlite).then(|| Arc::new(Mutex::new(())));
        if kind == DbKind::Sqlite {
            start_checkpointer(pool.clone());
        }
        let db = Db { pool, writer, kind, write_lock, tx_queue, group: None };
        db.migrate(migrations).await?;
        Ok(db)
    }

    async fn migrate(&self, migrations: &[(i64, &str)]) -> Result<()> {
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
        for (version, sql) in migrations {
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
        let tx = begin(&self.writer, self.kind).await?;
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

    /// One write statement; where the database has a group writer (the SQLite jobs file), run
    /// in one transaction with the statements other tasks send meanwhile: one commit for many
    /// small writes, so a job's accept waits for one batch instead of a queue of commits.
    /// Elsewhere the same as [`Db::execute`].
    pub async fn execute_grouped(&self, sql: &'static str, vals: Vec<Val>) -> Result<u64> {
        let Some(group) = &self.group else { return self.execute(sql, &vals).await };
        let stopped = || Error::Internal("the database's group writer stopped".into());
        let (done, answer) = oneshot::channel();
        group.send(Grouped { sql, vals, done }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Start the task behind [`Db::execute_grouped`]: it takes what is waiting (up to
    /// [`GROUP_MAX`]), then the writer lock, then what came meanwhile, and commits it all.
    fn start_group_writer(&mut self) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Grouped>();
        let writer = self.writer.clone();
        let lock = self.write_lock.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, GROUP_MAX).await > 0 {
                let _guard = match &lock {
                    Some(l) => Some(l.lock().await),
                    None => None,
                };
                while batch.len() < GROUP_MAX {
                    match rx.try_recv() {
                        Ok(g) => batch.push(g),
                        Err(_) => break,
                    }
                }
                run_group(&writer, std::mem::take(&mut batch)).await;
            }
        });
        self.group = Some(tx);
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

/// Begin a transaction on a writer pool. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`), waiting for it under the busy timeout: a deferred transaction that has
/// read and then writes cannot wait (SQLite answers SQLITE_BUSY at once) and the transaction
/// dropped by the writer before may still hold the lock (sqlx rolls a dropped transaction back
/// after the connection went back to the pool, when our writer lock is already free).
async fn begin(writer: &AnyPool, kind: DbKind) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
    Ok(match kind {
        DbKind::Sqlite => writer.begin_with("BEGIN IMMEDIATE").await?,
        DbKind::Postgres => writer.begin().await?,
    })
}

/// The settings of every SQLite connection (the file's WAL mode is set once, before): a page
/// cache of up to `cache_kib` KiB.
async fn sqlite_setup(conn: &mut sqlx::AnyConnection, cache_kib: i64) -> std::result::Result<(), sqlx::Error> {
    conn.execute("PRAGMA busy_timeout=30000").await?;
    conn.execute("PRAGMA synchronous=NORMAL").await?;
    conn.execute("PRAGMA foreign_keys=ON").await?;
    conn.execute(format!("PRAGMA cache_size=-{cache_kib}").as_str()).await?;
    // No checkpoint inside a writer's commit (its fsyncs took 10 ms and more there): the
    // checkpointer task copies the log back instead.
    conn.execute("PRAGMA wal_autocheckpoint=0").await?;
    Ok(())
}

/// The most rows one grouped multi-row INSERT writes.
const MULTI_ROW_MAX: usize = 16;

/// Commit a group of statements in one transaction and answer each. When one of them fails
/// (a duplicate job uuid, say) or the commit does, the group is rolled back and each statement
/// runs on its own, so that each gets its own answer.
async fn run_group(writer: &AnyPool, batch: Vec<Grouped>) {
    let together: Result<Vec<u64>> = async {
        if batch.len() == 1 {
            return Ok(vec![query_with(batch[0].sql, &batch[0].vals).execute(writer).await?.rows_affected()]);
        }
        let mut tx = begin(writer, DbKind::Sqlite).await?;
        let mut n = Vec::with_capacity(batch.len());
        let mut i = 0;
        while i < batch.len() {
            // a run of the same `INSERT ... VALUES (...)` goes as multi-row statements: one
            // hand-off to the database thread for many rows. Their sizes are powers of two (at
            // most MULTI_ROW_MAX rows), so that a few statements, each prepared once and kept
            // in the connection's cache, serve every run: preparing a new text of hundreds
            // of placeholders for each run cost more than it saved.
            let run = batch[i..].iter().take_while(|g| std::ptr::eq(g.sql, batch[i].sql)).count();
            if let (true, Some(tuple)) = (run > 1, values_tuple(batch[i].sql)) {
                let head = &batch[i].sql[..batch[i].sql.len() - tuple.len()];
                let mut left = run;
                while left > 0 {
                    let size = 1usize << (usize::BITS - 1 - left.min(MULTI_ROW_MAX).leading_zeros());
                    let chunk = &batch[i..i + size];
                    let mut sql = String::with_capacity(head.len() + size * (tuple.len() + 8));
                    sql.push_str(head);
                    let mut vals = Vec::with_capacity(size * chunk[0].vals.len());
                    for (k, g) in chunk.iter().enumerate() {
                        if k > 0 {
                            sql.push_str(", ");
                        }
                        renumber(&mut sql, tuple, vals.len());
                        vals.extend(g.vals.iter().cloned());
                    }
                    let done = query_with(&sql, &vals).execute(&mut *tx).await?.rows_affected();
                    if done != size as u64 {
                        return Err(Error::Internal(format!("a grouped insert wrote {done} of {size} rows")));
                    }
                    i += size;
                    left -= size;
                }
                n.extend(std::iter::repeat_n(1, run));
                continue;
            }
            n.push(query_with(batch[i].sql, &batch[i].vals).execute(&mut *tx).await?.rows_affected());
            i += 1;
        }
        tx.commit().await?;
        Ok(n)
    }
    .await;
    match together {
        Ok(n) => {
            for (g, n) in batch.into_iter().zip(n) {
                let _ = g.done.send(Ok(n));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(g) = batch.into_iter().next() {
                let _ = g.done.send(Err(e));
            }
        }
        Err(_) => {
            for g in batch {
                let r = query_with(g.sql, &g.vals).execute(writer).await.map(|r| r.rows_affected());
                let _ = g.done.send(r.map_err(Error::from));
            }
        }
    }
}

/// The `(...)` tuple that ends a plain `INSERT ... VALUES (...)` (no `ON CONFLICT`, no
/// `RETURNING`, no `SELECT`), which can be repeated for more rows.
fn values_tuple(sql: &str) -> Option<&str> {
    if !sql.starts_with("INSERT INTO") || sql.contains("ON CONFLICT") || sql.contains("RETURNING") {
        return None;
    }
    let at = sql.rfind(" VALUES (")?;
    let tuple = &sql[at + " VALUES ".len()..];
    (tuple.ends_with(')') && !tuple.contains("SELECT")).then_some(tuple)
}

/// Append `tuple` to `sql` with every `$n` placeholder moved up by `offset`.
fn renumber(sql: &mut String, tuple: &str, offset: usize) {
    let mut rest = tuple;
    while let Some(at) = rest.find('$') {
        sql.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => sql.push_str(&(n + offset).to_string()),
            Err(_) => sql.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    sql.push_str(rest);
}

/// How often the checkpointer copies a SQLite write-ahead log back into its database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copy the write-ahead log back into the database file every [`CHECKPOINT_EVERY`], from a
/// reader connection (`PASSIVE`: it neither waits for nor blocks writers or readers), instead
/// of SQLite's automatic checkpoint, which runs inside the commit that crosses 1,000 pages of
/// log and makes that writer (a job's accept, say) wait for the copy and its fsyncs. Ends
/// when the pool is closed.
fn start_checkpointer(pool: AnyPool) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if pool.is_closed() {
                return;
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_all(&pool).await {
                if pool.is_closed() {
                    return;
                }
                tracing::warn!(error = %e, "checkpoint of the write-ahead log failed");
            }
        }
    });
}

/// The columns of `api_job`, in the order of the table.
const JOB_COLUMNS: &str = "uuid, api, request, state, success, result, schema_map, webhook, timeout_ms, attempts, \
     mn_uuid, create_date, finish_date";

/// Column `i` of a row as a bindable value (text, integer or NULL).
fn any_to_val(row: &AnyRow, i: usize) -> Result<Val> {
    use sqlx::Row;
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return Ok(v.map(Val::I).unwrap_or(Val::NullI));
    }
    Ok(row.try_get::<Option<String>, _>(i)?.map(Val::S).unwrap_or(Val::Null))
}

/// True when a database error is a unique-constraint violation.
pub fn is_unique_violation(e: &Error) -> bool {
    match e {
        Error::Db(sqlx::Error::Database(d)) => d.is_unique_violation(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    #[test]
    fn jobs_file_beside_the_main_one() {
        assert_eq!(
            jobs_sqlite_url("sqlite:///var/lib/rz/rzstack.db").as_deref(),
            Some("sqlite:///var/lib/rz/rzstack-jobs.db")
        );
        assert_eq!(
            jobs_sqlite_url("sqlite:///d/x.sqlite?mode=rwc").as_deref(),
            Some("sqlite:///d/x.sqlite-jobs?mode=rwc")
        );
        assert_eq!(jobs_sqlite_url("sqlite::memory:"), None);
        assert_eq!(jobs_sqlite_url("sqlite://file.db?mode=memory"), None);
        assert_eq!(jobs_sqlite_url("postgres://u:p@h/db"), None);
    }

    #[tokio::test]
    async fn grouped_runs_of_any_length_land_in_multi_row_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rzstack.db").display());
        let jobs = Db::connect(&url).await.unwrap().open_jobs(&url).await.unwrap();
        for (round, n) in [1usize, 2, 3, 63, 64, 65, 100, 255].into_iter().enumerate() {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let jobs = jobs.clone();
                    tokio::spawn(async move {
                        jobs.execute_grouped(
                            "INSERT INTO api_job (uuid, api, request, state, timeout_ms, attempts, mn_uuid, create_date) \
                             VALUES ($1, $2, '{}', 'processing', 1000, 1, 'mn', $3)",
                            vec![Val::S(format!("r{round}-{i}")), Val::S(format!("API{i}")), Val::I(i as i64)],
                        )
                        .await
                    })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap(), 1);
            }
            // every row with its own values (placeholders renumbered right in each piece)
            let rows = jobs
                .fetch_all(
                    "SELECT uuid, api, create_date FROM api_job WHERE uuid LIKE $1",
                    &[Val::S(format!("r{round}-%"))],
                )
                .await
                .unwrap();
            assert_eq!(rows.len(), n);
            for r in rows {
                let uuid: String = r.get(0);
                let i: i64 = uuid.rsplit('-').next().unwrap().parse().unwrap();
                assert_eq!(r.get::<String, _>(1), format!("API{i}"));
                assert_eq!(r.get::<i64, _>(2), i);
            }
        }
    }

    #[tokio::test]
    async fn jobs_left_in_the_main_file_move_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rzstack.db").display());
        let db = Db::connect(&url).await.unwrap();
        for (uuid, state, finish) in [("a", "processing", Val::NullI), ("b", "done", Val::I(7))] {
            db.execute(
                "INSERT INTO api_job (uuid, api, request, state, webhook, timeout_ms, attempts, mn_uuid, create_date, \
                 finish_date) VALUES ($1, 'APIX', '{}', $2, NULL, 1000, 1, 'mn', 5, $3)",
                &[Val::from(uuid), Val::from(state), finish],
            )
            .await
            .unwrap();
        }
        for _ in 0..2 {
            let jobs = db.open_jobs(&url).await.unwrap();
            let rows = jobs
                .fetch_all("SELECT uuid, state, finish_date, webhook FROM api_job ORDER BY uuid", &[])
                .await
                .unwrap();
            let got: Vec<(String, String, Option<i64>, Option<String>)> =
                rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
            assert_eq!(
                got,
                vec![("a".into(), "processing".into(), None, None), ("b".into(), "done".into(), Some(7), None)]
            );
            let left = db.fetch_all("SELECT uuid FROM api_job", &[]).await.unwrap();
            assert!(left.is_empty(), "the rows stay in the main file");
            jobs.close().await;
        }
        assert!(dir.path().join("rzstack-jobs.db").exists());
    }

    #[test]
    fn multi_row_inserts() {
        let sql = "INSERT INTO t (a, b, c) VALUES ($1, 'x', $2)";
        let tuple = values_tuple(sql).unwrap();
        assert_eq!(tuple, "($1, 'x', $2)");
        let mut out = String::from("INSERT INTO t (a, b, c) VALUES ");
        renumber(&mut out, tuple, 0);
        out.push_str(", ");
        renumber(&mut out, tuple, 2);
        assert_eq!(out, "INSERT INTO t (a, b, c) VALUES ($1, 'x', $2), ($3, 'x', $4)");
        assert!(values_tuple("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO NOTHING").is_none());
        assert!(values_tuple("INSERT INTO t (a) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM t)").is_none());
        assert!(values_tuple("UPDATE t SET a = $1").is_none());
    }

    /// Statements sent at the same moment share commits; a duplicate among them fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn grouped_writes_answer_each_statement() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("rzstack.db").display());
        let jobs = Db::connect(&url).await.unwrap().open_jobs(&url).await.unwrap();
        assert!(jobs.group.is_some(), "the SQLite jobs file has a group writer");
        let insert = |uuid: String| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                jobs.execute_grouped(
                    "INSERT INTO api_job (uuid, api, request, state, timeout_ms, attempts, mn_uuid, create_date) \
                     VALUES ($1, 'APIX', '{}', 'processing', 1000, 1, 'mn', 5)",
                    vec![Val::S(uuid)],
                )
                .await
            })
        };
        let tasks: Vec<_> = (0..100).map(|i| insert(format!("job{}", i % 99))).collect();
        let (mut ok, mut dup) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(1) => ok += 1,
                Err(e) if is_unique_violation(&e) => dup += 1,
                other => panic!("unexpected answer {other:?}"),
            }
        }
        assert_eq!((ok, dup), (99, 1));
        let n: i64 = jobs.fetch_optional("SELECT COUNT(*) FROM api_job", &[]).await.unwrap().unwrap().get(0);
        assert_eq!(n, 99);
        let done = jobs
            .execute_grouped("UPDATE api_job SET state = 'done' WHERE uuid = $1", vec![Val::from("job7")])
            .await
            .unwrap();
        assert_eq!(done, 1);
    }
}
