//! Accounts and sessions (upstream identity): the initial `admin` account, login by account,
//! session validation with sliding expiry, logout, renew, and the account query.

use crate::api::{boxed, ApiDef, Msg, Reply};
use crate::db::{Db, Val};
use crate::error::{Error, Result};
use crate::globals;
use crate::params::Param;
use crate::query::{field, FType, ResourceDef};
use crate::util::{new_uuid, now_ms};
use crate::App;
use rzstack_api::codes;
use serde::Deserialize;
use serde_json::{Map, Value};
use sqlx::Row;

/// Upstream's fixed uuid of the initial admin account.
pub const ADMIN_UUID: &str = "36c27e8ff05c4780bf6d2fa65700f22e";
/// SHA-512 of "password", the initial admin password as clients send it.
pub const ADMIN_PASSWORD_SHA512: &str = "b109f3bbbc244eb82441917ed06d618b9008dd09b3befd1b5e07394c706a8bb980b1d7785e5976ec049b46df5f1326af5a2ea6d103fd07c95385ffab0cacbc86";

/// A checked session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub uuid: String,
    pub account_uuid: String,
    pub user_uuid: String,
}

/// Sessions are not queryable; this describes them for the existence check of RenewSession.
pub static SESSION: ResourceDef = ResourceDef {
    inventory: "SessionInventory",
    vo: "SessionVO",
    class: "org.zstack.header.identity.SessionInventory",
    table: "session",
    fields: &[field("uuid", "uuid", FType::Str)],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: None,
};

pub static ACCOUNT: ResourceDef = ResourceDef {
    inventory: "AccountInventory",
    vo: "AccountVO",
    class: "org.zstack.header.identity.AccountInventory",
    table: "account",
    fields: &[
        field("uuid", "uuid", FType::Str),
        field("name", "name", FType::Str),
        field("description", "description", FType::Str),
        field("type", "type", FType::Str),
        field("createDate", "create_date", FType::Date),
        field("lastOpDate", "last_op_date", FType::Date),
    ],
    children: &[],
    class_of: None,
    order: "t.create_date, t.uuid",
    tag_type: Some("AccountVO"),
};

/// Create the initial admin account on first start.
pub async fn ensure_admin(db: &Db) -> Result<()> {
    let now = now_ms();
    db.execute(
        "INSERT INTO account (uuid, name, password, type, description, create_date, last_op_date) \
         VALUES ($1, 'admin', $2, 'SystemAdmin', NULL, $3, $3) ON CONFLICT (uuid) DO NOTHING",
        &[Val::from(ADMIN_UUID), Val::from(ADMIN_PASSWORD_SHA512), Val::I(now)],
    )
    .await?;
    Ok(())
}

fn session_invalid() -> Error {
    Error::code(codes::ID_1001, "Session expired")
}

/// Sessions checked lately, on SQLite only (one management node: every logout, renewal and
/// expiry goes through this process): (node, session) → (account, user, expiry, when read).
/// An entry answers for [`CACHE_MS`] while its expiry needs no sliding; logout and renewal
/// drop it at once. With several nodes (PostgreSQL) a logout on another node must be seen at
/// once, so every check reads the row there.
type SessionCache = std::collections::HashMap<(String, String), (String, String, i64, i64)>;
static CACHE: std::sync::Mutex<Option<SessionCache>> = std::sync::Mutex::new(None);
const CACHE_MS: i64 = 2_000;
const CACHE_MAX: usize = 10_000;

fn cache() -> std::sync::MutexGuard<'static, Option<SessionCache>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bumped (under the cache lock) by every logout and renewal: a check that read its row
/// before one of them does not remember what it read.
static EPOCH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Called after a session's row changed or went: drop what the cache holds of it.
fn forget(app: &App, uuid: &str) {
    let mut c = cache();
    EPOCH.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if let Some(m) = c.as_mut() {
        m.remove(&(app.mn_uuid.clone(), uuid.to_string()));
    }
}

/// Check a session and slide its expiry (upstream renews on every authenticated call).
/// The row is only rewritten when at least a minute of its lifetime has been used, so a busy
/// client does not turn every read into a write.
pub async fn check(app: &App, session_uuid: Option<&str>) -> Result<SessionInfo> {
    let Some(uuid) = session_uuid else {
        return Err(session_invalid());
    };
    let now = now_ms();
    let timeout_ms = app.globals.get_i64(&globals::SESSION_TIMEOUT) * 1000;
    let cached = app.db.kind == crate::db::DbKind::Sqlite;
    let epoch = EPOCH.load(std::sync::atomic::Ordering::SeqCst);
    if cached {
        let key = (app.mn_uuid.clone(), uuid.to_string());
        if let Some((account, user, expired, read)) = cache().as_ref().and_then(|m| m.get(&key)) {
            if *expired > now && *expired >= now + timeout_ms - 60_000 && now - *read < CACHE_MS {
                return Ok(SessionInfo {
                    uuid: uuid.to_string(),
                    account_uuid: account.clone(),
                    user_uuid: user.clone(),
                });
            }
        }
    }
    let row = app
        .db
        .fetch_optional("SELECT account_uuid, user_uuid, expired_date FROM session WHERE uuid = $1", &[Val::from(uuid)])
        .await?;
    let Some(row) = row else {
        return Err(session_invalid());
    };
    let expired: i64 = row.try_get(2)?;
    if expired <= now {
        return Err(session_invalid());
    }
    let mut expiry = expired;
    if expired < now + timeout_ms - 60_000 {
        let n = app
            .db
            .execute(
                "UPDATE session SET expired_date = $1 WHERE uuid = $2 AND expired_date > $3",
                &[Val::I(now + timeout_ms), Val::from(uuid), Val::I(now)],
            )
            .await?;
        // not slid (logged out meanwhile): nothing to remember
        expiry = if n == 1 { now + timeout_ms } else { 0 };
    }
    let info = SessionInfo { uuid: uuid.to_string(), account_uuid: row.try_get(0)?, user_uuid: row.try_get(1)? };
    if cached && expiry > now {
        let mut c = cache();
        if EPOCH.load(std::sync::atomic::Ordering::SeqCst) != epoch {
            return Ok(info);
        }
        let m = c.get_or_insert_with(Default::default);
        if m.len() >= CACHE_MAX {
            m.retain(|_, v| now - v.3 < CACHE_MS);
        }
        m.insert(
            (app.mn_uuid.clone(), uuid.to_string()),
            (info.account_uuid.clone(), info.user_uuid.clone(), expiry, now),
        );
    }
    Ok(info)
}

fn session_inventory(uuid: &str, account: &str, user: &str, expired: i64, created: i64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("uuid".into(), uuid.into());
    m.insert("accountUuid".into(), account.into());
    m.insert("userUuid".into(), user.into());
    m.insert("expiredDate".into(), rzstack_api::date::format_millis(expired).into());
    m.insert("createDate".into(), rzstack_api::date::format_millis(created).into());
    m.insert("noSessionEvaluation".into(), false.into());
    m
}

fn session_reply(inv: Map<String, Value>) -> Reply {
    let mut r = Reply::fields([("inventory", Value::Object(inv))]);
    r.schema.insert("inventory".into(), "org.zstack.header.identity.SessionInventory".into());
    r
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogInByAccount {
    account_name: String,
    password: String,
}

async fn log_in_by_account(app: App, msg: Msg) -> Result<Reply> {
    let req: LogInByAccount = msg.parse()?;
    let row = app
        .db
        .fetch_optional(
            "SELECT uuid FROM account WHERE name = $1 AND password = $2",
            &[Val::from(req.account_name.as_str()), Val::from(req.password.as_str())],
        )
        .await?;
    let Some(row) = row else {
        return Err(Error::code(codes::ID_1000, "wrong account name or password"));
    };
    let account: String = row.try_get(0)?;
    let now = now_ms();
    let max = app.globals.get_i64(&globals::SESSION_MAX_CONCURRENT);
    let live: i64 = app
        .db
        .fetch_optional(
            "SELECT COUNT(*) FROM session WHERE user_uuid = $1 AND expired_date > $2",
            &[Val::from(account.as_str()), Val::I(now)],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or(0);
    if live >= max {
        return Err(Error::code(
            codes::ID_1006,
            format!("Login sessions hit limit of max allowed concurrent login sessions, max allowed: {max}"),
        ));
    }
    let uuid = new_uuid();
    let expired = now + app.globals.get_i64(&globals::SESSION_TIMEOUT) * 1000;
    app.db
        .execute(
            "INSERT INTO session (uuid, account_uuid, user_uuid, expired_date, create_date) VALUES ($1, $2, $2, $3, $4)",
            &[Val::from(uuid.as_str()), Val::from(account.as_str()), Val::I(expired), Val::I(now)],
        )
        .await?;
    Ok(session_reply(session_inventory(&uuid, &account, &account, expired, now)))
}

async fn validate_session(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("sessionUuid").unwrap_or_default().to_string();
    let valid = app
        .db
        .fetch_optional(
            "SELECT 1 FROM session WHERE uuid = $1 AND expired_date > $2",
            &[Val::from(uuid), Val::I(now_ms())],
        )
        .await?
        .is_some();
    Ok(Reply::fields([("valid", Value::Bool(valid))]))
}

async fn log_out(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("sessionUuid").unwrap_or_default().to_string();
    app.db.execute("DELETE FROM session WHERE uuid = $1", &[Val::from(uuid.as_str())]).await?;
    forget(&app, &uuid);
    Ok(Reply::empty())
}

async fn renew_session(app: App, msg: Msg) -> Result<Reply> {
    let uuid = msg.str("sessionUuid").unwrap_or_default().to_string();
    let duration_s = msg
        .fields
        .get("duration")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| app.globals.get_i64(&globals::SESSION_TIMEOUT));
    let now = now_ms();
    let row = app
        .db
        .execute_returning(
            "UPDATE session SET expired_date = $1 WHERE uuid = $2 AND expired_date > $3 \
             RETURNING account_uuid, user_uuid, expired_date, create_date",
            &[Val::I(now + duration_s * 1000), Val::from(uuid.as_str()), Val::I(now)],
        )
        .await?;
    forget(&app, &uuid);
    let Some(row) = row else {
        return Err(session_invalid());
    };
    let inv = session_inventory(
        &uuid,
        &row.try_get::<String, _>(0)?,
        &row.try_get::<String, _>(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
    );
    Ok(session_reply(inv))
}

/// Remove expired sessions (upstream's periodic cleanup).
pub async fn purge_expired(db: &Db) -> Result<u64> {
    db.execute("DELETE FROM session WHERE expired_date <= $1", &[Val::I(now_ms())]).await
}

pub static APIS: &[ApiDef] = &[
    ApiDef::action("LogInByAccount", "/accounts/login")
        .sync()
        .no_auth()
        .params(&[
            Param::str("accountName").required(),
            Param::str("password").required().no_trim(),
            Param::str("accountType"),
            Param::str("captchaUuid"),
            Param::str("verifyCode"),
            Param::map("clientInfo"),
        ])
        .handler(|a, m| boxed(log_in_by_account(a, m))),
    ApiDef::get("ValidateSession", "/accounts/sessions/{sessionUuid}/valid")
        .no_auth()
        .params(&[Param::str("sessionUuid").required()])
        .handler(|a, m| boxed(validate_session(a, m))),
    ApiDef::delete("LogOut", "/accounts/sessions/{sessionUuid}")
        .sync()
        .no_auth()
        .params(&[Param::str("sessionUuid"), Param::map("clientInfo")])
        .handler(|a, m| boxed(log_out(a, m))),
    ApiDef::action("RenewSession", "/accounts/sessions/{sessionUuid}/renew")
        .params(&[Param::str("sessionUuid").required().resource(&SESSION), Param::int("duration").range(60, 31536000)])
        .handler(|a, m| boxed(renew_session(a, m))),
    ApiDef::query("QueryAccount", "/accounts", &ACCOUNT).optional_paths(&["/accounts/{uuid}"]),
];
