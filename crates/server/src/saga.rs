//! Sagas: multi-step mutations whose every step has its undo beside it.
//!
//! A saga is a fixed list of [`Step`]s over a serializable context `C` that holds every id the
//! saga will create (chosen before the first step, so a replay hits the same rows). Each
//! step's `run` executes in its own write transaction, and the saga's progress (`saga` row:
//! steps done, state, context) is written in that same transaction: a step is either done and
//! recorded, or neither. When a step fails, the steps already done are undone in reverse
//! order, each undo again in one transaction with the progress record. A management node that
//! stops half-way leaves a `saga` row; [`recover`] (at start) and [`unwind_for_job`] (when a
//! job is replayed) undo what it did.
//!
//! Undos are idempotent at the database level (a second run finds nothing to give back).
//!
//! Remote steps ([`Action::Remote`]: calls to a host agent, which can take seconds) run with
//! NO transaction open, so other writers are not held up (SQLite has one writer; PostgreSQL
//! would hold row locks). For such a step the runner records "step i started" (`state =
//! 'started'`, `step = i`) in a small transaction, runs the action, then records its completion
//! (`step = i + 1`, `state = 'running'`) with the context in another. A crash between the two
//! leaves a `started` row, and unwinding then undoes step i as well: a remote undo must be
//! idempotent AND tolerate an action that never happened (or half happened). A remote step
//! that fails is undone too (the runner cannot know how far it got). Remote undos also run
//! outside any transaction; the progress record follows in its own.
//!
//! Test-only fault hooks: `RZSTACK_TEST_FAIL_STEP=<step name>` makes that step fail before
//! it runs (and then every undo is run twice, to prove undos are idempotent);
//! `RZSTACK_TEST_CRASH_AFTER_STEP=<step name>` ends the process right after that step is
//! committed (restart recovery tests); `RZSTACK_TEST_CRASH_IN_STEP=<step name>` ends it after
//! the step's action ran but before its completion is recorded (for a remote step: the host
//! did it, the database does not know).

use crate::db::{DbKind, Val, WriteTx};
use crate::error::{Error, Result};
use crate::util::{new_uuid, now_ms};
use crate::App;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Row;

/// One step's `run` or `undo`: works inside the given transaction, may update the context.
pub type StepFn<C> = for<'a> fn(&'a App, &'a mut WriteTx, &'a mut C) -> BoxFuture<'a, Result<()>>;

/// A remote step's `run` or `undo`: no transaction is open (it may read through `app.db`).
pub type RemoteFn<C> = for<'a> fn(&'a App, &'a mut C) -> BoxFuture<'a, Result<()>>;

/// How a step's `run` or `undo` executes.
pub enum Action<C: 'static> {
    /// Inside a write transaction shared with the saga's progress record.
    Tx(StepFn<C>),
    /// Outside any transaction (a host agent call); see the module documentation.
    Remote(RemoteFn<C>),
}

impl<C> Clone for Action<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Action<C> {}

pub struct Step<C: 'static> {
    pub name: &'static str,
    pub run: Action<C>,
    pub undo: Action<C>,
}

impl<C> Step<C> {
    /// A step whose `run` and `undo` each run in one write transaction.
    pub const fn tx(name: &'static str, run: StepFn<C>, undo: StepFn<C>) -> Self {
        Step { name, run: Action::Tx(run), undo: Action::Tx(undo) }
    }

    /// A step whose `run` and `undo` run with no transaction open (host agent calls).
    pub const fn remote(name: &'static str, run: RemoteFn<C>, undo: RemoteFn<C>) -> Self {
        Step { name, run: Action::Remote(run), undo: Action::Remote(undo) }
    }
}

pub struct SagaDef<C: 'static> {
    /// Stored in the `saga` row; [`recover`] finds the definition by it.
    pub kind: &'static str,
    pub steps: &'static [Step<C>],
}

/// A no-op undo (for steps with nothing to give back).
pub fn nothing<'a, C>(_: &'a App, _: &'a mut WriteTx, _: &'a mut C) -> BoxFuture<'a, Result<()>> {
    Box::pin(async { Ok(()) })
}

fn fail_step() -> Option<String> {
    std::env::var("RZSTACK_TEST_FAIL_STEP").ok().filter(|s| !s.is_empty())
}

fn to_json<C: Serialize>(ctx: &C) -> Result<String> {
    serde_json::to_string(ctx).map_err(|e| Error::Internal(format!("cannot store a saga context: {e}")))
}

fn crash_hook(var: &str, step: &str) {
    if std::env::var(var).ok().as_deref() == Some(step) {
        tracing::warn!(step, hook = var, "test hook: stopping the process in a saga");
        std::process::exit(137);
    }
}

/// Open step `i`'s transaction: the saga row is created by the first step; later steps write
/// to it first, so the transaction holds the write lock from its start and a step's reads
/// never need upgrading to a write (SQLite).
async fn open_step<C: Serialize>(
    app: &App,
    kind: &str,
    id: &str,
    i: usize,
    job_uuid: &str,
    resource_uuid: &str,
    ctx: &C,
) -> Result<WriteTx> {
    let mut tx = app.db.begin_write().await?;
    let now = now_ms();
    if i == 0 {
        tx.execute(
            "INSERT INTO saga (id, kind, job_uuid, resource_uuid, mn_uuid, step, state, data, create_date, last_op_date) \
             VALUES ($1, $2, $3, $4, $5, 0, 'running', $6, $7, $7)",
            &[
                Val::from(id),
                Val::from(kind),
                Val::from(job_uuid),
                Val::from(resource_uuid),
                Val::from(app.mn_uuid.as_str()),
                Val::S(to_json(ctx)?),
                Val::I(now),
            ],
        )
        .await?;
    } else {
        tx.execute("UPDATE saga SET last_op_date = $1 WHERE id = $2", &[Val::I(now), Val::from(id)]).await?;
    }
    Ok(tx)
}

/// Record that the first `done` steps are done (state `running`), with the context.
async fn record_done<C: Serialize>(tx: &mut WriteTx, id: &str, done: usize, ctx: &C) -> Result<()> {
    tx.execute(
        "UPDATE saga SET step = $1, state = 'running', data = $2, last_op_date = $3 WHERE id = $4",
        &[Val::I(done as i64), Val::S(to_json(ctx)?), Val::I(now_ms()), Val::from(id)],
    )
    .await?;
    Ok(())
}

/// True when a test hook is set (they name single steps: those runs go step by step).
fn test_hooks() -> bool {
    ["RZSTACK_TEST_FAIL_STEP", "RZSTACK_TEST_CRASH_IN_STEP", "RZSTACK_TEST_CRASH_AFTER_STEP"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// Run a saga to its end. On a step failure every completed step is undone (in reverse) and
/// the step's error is returned (a remote step that started is undone as well).
///
/// On SQLite (one writer at a time anyway) consecutive transactional steps share ONE write
/// transaction, see [`run_batched`]; on PostgreSQL each step has its own, so row locks (host,
/// primary storage, IP range) are held for one step only.
pub async fn run<C>(app: &App, def: &SagaDef<C>, job_uuid: &str, resource_uuid: &str, ctx: C) -> Result<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    if app.db.kind == DbKind::Sqlite && !test_hooks() {
        run_batched(app, def, job_uuid, resource_uuid, ctx).await
    } else {
        run_stepwise(app, def, job_uuid, resource_uuid, ctx).await
    }
}

/// The run of transactional steps from `from` up to the next remote step (or the end).
fn segment_end<C>(def: &SagaDef<C>, from: usize) -> usize {
    def.steps[from..].iter().position(|s| matches!(s.run, Action::Remote(_))).map_or(def.steps.len(), |p| from + p)
}

/// [`run`] with consecutive transactional steps in one transaction, which ends with the
/// progress record: either "remote step k started" (the saga row is inserted then, with the
/// context), or, for the last run of steps, the saga row's deletion. A saga without remote
/// steps is one transaction and needs no saga row at all: a crash rolls all of it back.
/// A remote step's completion is recorded by the next transaction (a crash before it leaves
/// the `started` row, which unwinds the remote step too, as in [`run_stepwise`]).
///
/// When a transactional step fails, its transaction is rolled back (the steps before it in
/// the same transaction leave nothing behind: transactional steps only touch the database),
/// the context goes back to what it was when that transaction began, and the steps committed
/// before are undone.
async fn run_batched<C>(app: &App, def: &SagaDef<C>, job_uuid: &str, resource_uuid: &str, mut ctx: C) -> Result<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let id = new_uuid();
    let n = def.steps.len();
    // the saga row is committed
    let mut row = false;
    // steps committed (or remote and run): what a failure must undo
    let mut done = 0usize;
    let mut from = 0usize;
    while from < n {
        let end = segment_end(def, from);
        let last = end == n;
        let before = ctx.clone();
        let outcome: Result<()> = async {
            let mut tx = app.db.begin_write().await?;
            for step in &def.steps[from..end] {
                if let Action::Tx(f) = step.run {
                    f(app, &mut tx, &mut ctx).await?;
                }
            }
            if last {
                if row {
                    tx.execute("DELETE FROM saga WHERE id = $1", &[Val::from(id.as_str())]).await?;
                }
            } else if row {
                tx.execute(
                    "UPDATE saga SET step = $1, state = 'started', data = $2, last_op_date = $3 WHERE id = $4",
                    &[Val::I(end as i64), Val::S(to_json(&ctx)?), Val::I(now_ms()), Val::from(id.as_str())],
                )
                .await?;
            } else {
                tx.execute(
                    "INSERT INTO saga (id, kind, job_uuid, resource_uuid, mn_uuid, step, state, data, create_date, last_op_date) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'started', $7, $8, $8)",
                    &[
                        Val::from(id.as_str()),
                        Val::from(def.kind),
                        Val::from(job_uuid),
                        Val::from(resource_uuid),
                        Val::from(app.mn_uuid.as_str()),
                        Val::I(end as i64),
                        Val::S(to_json(&ctx)?),
                        Val::I(now_ms()),
                    ],
                )
                .await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(e) = outcome {
            let name = def.steps.get(from).map_or("", |s| s.name);
            tracing::info!(saga = %id, kind = def.kind, from = name, error = %e, "saga steps failed: unwinding");
            if row {
                if let Err(u) = unwind(app, def, &id, done, before).await {
                    tracing::error!(saga = %id, kind = def.kind, error = %u, "saga unwinding failed; left for recovery");
                }
            }
            return Err(e);
        }
        if last {
            return Ok(ctx);
        }
        row = true;
        done = end + 1;
        if let Action::Remote(f) = def.steps[end].run {
            if let Err(e) = f(app, &mut ctx).await {
                let name = def.steps[end].name;
                tracing::info!(saga = %id, kind = def.kind, step = name, error = %e, "saga step failed: unwinding");
                if let Err(u) = unwind(app, def, &id, done, ctx).await {
                    tracing::error!(saga = %id, kind = def.kind, error = %u, "saga unwinding failed; left for recovery");
                }
                return Err(e);
            }
        }
        from = end + 1;
    }
    // the last step was remote: its completion ends the saga
    app.db.execute("DELETE FROM saga WHERE id = $1", &[Val::from(id.as_str())]).await?;
    Ok(ctx)
}

/// [`run`] one step per transaction, each with its progress record.
async fn run_stepwise<C>(app: &App, def: &SagaDef<C>, job_uuid: &str, resource_uuid: &str, mut ctx: C) -> Result<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let id = new_uuid();
    let fault = fail_step();
    for (i, step) in def.steps.iter().enumerate() {
        // steps to undo when this one fails: a remote step counts from its "started" record
        let mut to_undo = i;
        let outcome: Result<()> = async {
            if fault.as_deref() == Some(step.name) {
                return Err(Error::operr(format!("test fault injected at saga step[{}]", step.name)));
            }
            let mut tx = open_step(app, def.kind, &id, i, job_uuid, resource_uuid, &ctx).await?;
            match step.run {
                Action::Tx(f) => {
                    f(app, &mut tx, &mut ctx).await?;
                    crash_hook("RZSTACK_TEST_CRASH_IN_STEP", step.name);
                    record_done(&mut tx, &id, i + 1, &ctx).await?;
                    tx.commit().await
                }
                Action::Remote(f) => {
                    tx.execute(
                        "UPDATE saga SET step = $1, state = 'started', data = $2 WHERE id = $3",
                        &[Val::I(i as i64), Val::S(to_json(&ctx)?), Val::from(id.as_str())],
                    )
                    .await?;
                    tx.commit().await?;
                    to_undo = i + 1;
                    f(app, &mut ctx).await?;
                    crash_hook("RZSTACK_TEST_CRASH_IN_STEP", step.name);
                    let mut tx = app.db.begin_write().await?;
                    record_done(&mut tx, &id, i + 1, &ctx).await?;
                    tx.commit().await
                }
            }
        }
        .await;
        if let Err(e) = outcome {
            tracing::info!(saga = %id, kind = def.kind, step = step.name, error = %e, "saga step failed: unwinding");
            if let Err(u) = unwind(app, def, &id, to_undo, ctx).await {
                tracing::error!(saga = %id, kind = def.kind, error = %u, "saga unwinding failed; left for recovery");
            }
            return Err(e);
        }
        crash_hook("RZSTACK_TEST_CRASH_AFTER_STEP", step.name);
    }
    app.db.execute("DELETE FROM saga WHERE id = $1", &[Val::from(id.as_str())]).await?;
    Ok(ctx)
}

/// Undo the first `done` steps of saga `id`, last first. Each transactional undo and the
/// progress record share a transaction; a remote undo runs first, its record follows. The
/// row is deleted at the end.
async fn unwind<C>(app: &App, def: &SagaDef<C>, id: &str, done: usize, mut ctx: C) -> Result<()>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let twice = fail_step().is_some();
    for i in (0..done.min(def.steps.len())).rev() {
        let step = &def.steps[i];
        let before = ctx.clone();
        let mut tx = match step.undo {
            Action::Tx(f) => {
                let mut tx = app.db.begin_write().await?;
                tx.execute("UPDATE saga SET state = 'unwinding' WHERE id = $1", &[Val::from(id)]).await?;
                f(app, &mut tx, &mut ctx).await?;
                if twice {
                    // Idempotency check: the same undo again, from the same starting context.
                    let mut again = before;
                    f(app, &mut tx, &mut again).await?;
                }
                tx
            }
            Action::Remote(f) => {
                f(app, &mut ctx).await?;
                if twice {
                    let mut again = before;
                    f(app, &mut again).await?;
                }
                app.db.begin_write().await?
            }
        };
        tx.execute(
            "UPDATE saga SET step = $1, state = 'unwinding', data = $2, last_op_date = $3 WHERE id = $4",
            &[Val::I(i as i64), Val::S(to_json(&ctx)?), Val::I(now_ms()), Val::from(id)],
        )
        .await?;
        tx.commit().await?;
    }
    app.db.execute("DELETE FROM saga WHERE id = $1", &[Val::from(id)]).await?;
    Ok(())
}

/// Unwind one stored saga row of a known definition (a completed saga is just forgotten; a
/// `started` one is unwound from its started remote step).
pub async fn unwind_row<C>(app: &App, def: &SagaDef<C>, id: &str, step: i64, state: &str, data: &str) -> Result<()>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let ctx: C = serde_json::from_str(data)
        .map_err(|e| Error::Internal(format!("saga[{id}] has an unreadable context: {e}")))?;
    let step = step.max(0) as usize;
    if state == "running" && step >= def.steps.len() {
        app.db.execute("DELETE FROM saga WHERE id = $1", &[Val::from(id)]).await?;
        return Ok(());
    }
    // `started`: remote step `step` may have acted (or half acted) without its record
    let done = if state == "started" { step + 1 } else { step };
    tracing::warn!(saga = %id, kind = def.kind, steps = done, state, "unwinding an unfinished saga");
    unwind(app, def, id, done, ctx).await
}

/// Unwind the unfinished sagas selected by `where_sql` (over `saga`, one `$1` parameter).
async fn unwind_where(app: &App, where_sql: &str, vals: &[Val]) -> Result<usize> {
    let sql = format!("SELECT id, kind, step, state, data FROM saga WHERE {where_sql} ORDER BY create_date");
    let rows = app.db.fetch_all(&sql, vals).await?;
    let mut n = 0;
    for row in rows {
        let id: String = row.try_get(0)?;
        let kind: String = row.try_get(1)?;
        let step: i64 = row.try_get(2)?;
        let state: String = row.try_get(3)?;
        let data: String = row.try_get(4)?;
        match crate::resources::vm::unwind_saga(app, &kind, &id, step, &state, &data).await {
            Ok(true) => n += 1,
            Ok(false) => tracing::error!(saga = %id, kind, "unknown saga kind: left as is"),
            Err(e) => tracing::error!(saga = %id, kind, error = %e, "cannot unwind saga"),
        }
    }
    Ok(n)
}

/// At start: unwind the sagas this node left unfinished (a crash or kill), and those of
/// nodes whose heart beat stopped long ago. Their jobs are replayed afterwards.
pub async fn recover(app: &App) -> Result<usize> {
    let stale = now_ms() - 60_000;
    unwind_where(
        app,
        "mn_uuid = $1 OR NOT EXISTS (SELECT 1 FROM management_node m WHERE m.uuid = saga.mn_uuid AND m.heart_beat > $2)",
        &[Val::from(app.mn_uuid.as_str()), Val::I(stale)],
    )
    .await
}

/// Before a replayed job runs again: unwind whatever its earlier attempt left.
pub async fn unwind_for_job(app: &App, job_uuid: &str) -> Result<usize> {
    unwind_where(app, "job_uuid = $1", &[Val::from(job_uuid)]).await
}
