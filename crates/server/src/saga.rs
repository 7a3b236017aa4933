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
//! Test-only fault hooks: `RZSTACK_TEST_FAIL_STEP=<step name>` makes that step fail before
//! it runs (and then every undo is run twice, to prove undos are idempotent);
//! `RZSTACK_TEST_CRASH_AFTER_STEP=<step name>` ends the process right after that step is
//! committed (restart recovery tests).

use crate::db::{Val, WriteTx};
use crate::error::{Error, Result};
use crate::util::{new_uuid, now_ms};
use crate::App;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::Row;

/// One step's `run` or `undo`: works inside the given transaction, may update the context.
pub type StepFn<C> = for<'a> fn(&'a App, &'a mut WriteTx, &'a mut C) -> BoxFuture<'a, Result<()>>;

pub struct Step<C: 'static> {
    pub name: &'static str,
    pub run: StepFn<C>,
    pub undo: StepFn<C>,
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

/// Run a saga to its end. On a step failure every completed step is undone (in reverse) and
/// the step's error is returned. `until` limits the steps run (a prefix of the definition).
pub async fn run<C>(app: &App, def: &SagaDef<C>, job_uuid: &str, resource_uuid: &str, mut ctx: C) -> Result<C>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let id = new_uuid();
    let fault = fail_step();
    for (i, step) in def.steps.iter().enumerate() {
        let outcome: Result<()> = async {
            if fault.as_deref() == Some(step.name) {
                return Err(Error::operr(format!("test fault injected at saga step[{}]", step.name)));
            }
            let mut tx = app.db.begin_write().await?;
            let now = now_ms();
            if i == 0 {
                tx.execute(
                    "INSERT INTO saga (id, kind, job_uuid, resource_uuid, mn_uuid, step, state, data, create_date, last_op_date) \
                     VALUES ($1, $2, $3, $4, $5, 0, 'running', $6, $7, $7)",
                    &[
                        Val::from(id.as_str()),
                        Val::from(def.kind),
                        Val::from(job_uuid),
                        Val::from(resource_uuid),
                        Val::from(app.mn_uuid.as_str()),
                        Val::S(to_json(&ctx)?),
                        Val::I(now),
                    ],
                )
                .await?;
            } else {
                // A write first: the transaction holds the write lock from its start, so a
                // step's reads never need upgrading to a write (SQLite).
                tx.execute("UPDATE saga SET last_op_date = $1 WHERE id = $2", &[Val::I(now), Val::from(id.as_str())])
                    .await?;
            }
            (step.run)(app, &mut tx, &mut ctx).await?;
            tx.execute(
                "UPDATE saga SET step = $1, data = $2, last_op_date = $3 WHERE id = $4",
                &[Val::I(i as i64 + 1), Val::S(to_json(&ctx)?), Val::I(now), Val::from(id.as_str())],
            )
            .await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = outcome {
            tracing::info!(saga = %id, kind = def.kind, step = step.name, error = %e, "saga step failed: unwinding");
            if let Err(u) = unwind(app, def, &id, i, ctx).await {
                tracing::error!(saga = %id, kind = def.kind, error = %u, "saga unwinding failed; left for recovery");
            }
            return Err(e);
        }
        if std::env::var("RZSTACK_TEST_CRASH_AFTER_STEP").ok().as_deref() == Some(step.name) {
            tracing::warn!(step = step.name, "test hook: stopping the process after a saga step");
            std::process::exit(137);
        }
    }
    app.db.execute("DELETE FROM saga WHERE id = $1", &[Val::from(id.as_str())]).await?;
    Ok(ctx)
}

/// Undo the first `done` steps of saga `id`, last first. Each undo and the progress record
/// share a transaction; the row is deleted at the end.
async fn unwind<C>(app: &App, def: &SagaDef<C>, id: &str, done: usize, mut ctx: C) -> Result<()>
where
    C: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let twice = fail_step().is_some();
    for i in (0..done.min(def.steps.len())).rev() {
        let step = &def.steps[i];
        let mut tx = app.db.begin_write().await?;
        tx.execute("UPDATE saga SET state = 'unwinding' WHERE id = $1", &[Val::from(id)]).await?;
        let before = ctx.clone();
        (step.undo)(app, &mut tx, &mut ctx).await?;
        if twice {
            // Idempotency check: the same undo again, from the same starting context.
            let mut again = before;
            (step.undo)(app, &mut tx, &mut again).await?;
        }
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

/// Unwind one stored saga row of a known definition (a completed saga is just forgotten).
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
    tracing::warn!(saga = %id, kind = def.kind, steps = step, "unwinding an unfinished saga");
    unwind(app, def, id, step, ctx).await
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
