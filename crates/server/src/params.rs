//! Declarative parameter rules (upstream `@APIParam`) and the validator that applies them,
//! with upstream's SYS.1007 / SYS.1003 messages. Each API lists its `Param`s once in the API
//! table; nothing is validated by hand in handlers.

use crate::db::Val;
use crate::error::{Error, RestError, Result};
use crate::query::ResourceDef;
use crate::App;
use serde_json::{Map, Value};

/// Upstream reports its own validator class as the message name (a known quirk).
pub const VALIDATOR_CLASS: &str = "org.zstack.header.message.ApiMessageParamValidator";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PType {
    Str,
    /// int or long
    Int,
    Float,
    Bool,
    StrList,
    /// a JSON object (`@MapField` or a nested structure)
    Map,
    /// a list of JSON objects
    ObjList,
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub ty: PType,
    pub required: bool,
    pub max_len: Option<usize>,
    pub min_len: Option<usize>,
    pub valid_values: &'static [&'static str],
    pub valid_regex: Option<&'static str>,
    /// The regex as upstream writes it in messages, when ours is spelled differently
    /// (Rust's regex has no look-around).
    pub regex_shown: Option<&'static str>,
    pub range: Option<(i64, i64)>,
    /// Units printed in the range message (upstream `numberRangeUnit`), e.g. ("byte", "bytes").
    pub range_unit: Option<(&'static str, &'static str)>,
    pub resource: Option<&'static ResourceDef>,
    pub success_if_missing: bool,
    pub non_empty: bool,
    pub no_trim: bool,
    /// Whether an empty string is allowed (upstream `emptyString`, default true).
    pub empty_string: bool,
}

impl Param {
    pub const fn new(name: &'static str, ty: PType) -> Param {
        Param {
            name,
            ty,
            required: false,
            max_len: None,
            min_len: None,
            valid_values: &[],
            valid_regex: None,
            regex_shown: None,
            range: None,
            range_unit: None,
            resource: None,
            success_if_missing: false,
            non_empty: false,
            no_trim: false,
            empty_string: true,
        }
    }
    pub const fn str(name: &'static str) -> Param {
        Param::new(name, PType::Str)
    }
    pub const fn int(name: &'static str) -> Param {
        Param::new(name, PType::Int)
    }
    pub const fn float(name: &'static str) -> Param {
        Param::new(name, PType::Float)
    }
    pub const fn bool(name: &'static str) -> Param {
        Param::new(name, PType::Bool)
    }
    pub const fn list(name: &'static str) -> Param {
        Param::new(name, PType::StrList)
    }
    pub const fn map(name: &'static str) -> Param {
        Param::new(name, PType::Map)
    }
    pub const fn objects(name: &'static str) -> Param {
        Param::new(name, PType::ObjList)
    }
    pub const fn required(mut self) -> Param {
        self.required = true;
        self
    }
    pub const fn max(mut self, n: usize) -> Param {
        self.max_len = Some(n);
        self
    }
    pub const fn min(mut self, n: usize) -> Param {
        self.min_len = Some(n);
        self
    }
    pub const fn values(mut self, v: &'static [&'static str]) -> Param {
        self.valid_values = v;
        self
    }
    pub const fn regex(mut self, r: &'static str) -> Param {
        self.valid_regex = Some(r);
        self
    }
    /// A regex whose upstream spelling (shown in messages) differs from ours.
    pub const fn regex_as(mut self, r: &'static str, shown: &'static str) -> Param {
        self.valid_regex = Some(r);
        self.regex_shown = Some(shown);
        self
    }
    pub const fn range(mut self, lo: i64, hi: i64) -> Param {
        self.range = Some((lo, hi));
        self
    }
    pub const fn unit(mut self, lo: &'static str, hi: &'static str) -> Param {
        self.range_unit = Some((lo, hi));
        self
    }
    pub const fn resource(mut self, def: &'static ResourceDef) -> Param {
        self.resource = Some(def);
        self
    }
    pub const fn success_if_missing(mut self) -> Param {
        self.success_if_missing = true;
        self
    }
    pub const fn non_empty(mut self) -> Param {
        self.non_empty = true;
        self
    }
    pub const fn no_trim(mut self) -> Param {
        self.no_trim = true;
        self
    }
    pub const fn no_empty_string(mut self) -> Param {
        self.empty_string = false;
        self
    }
}

/// Parameters every message has (upstream `APIMessage`/`APICreateMessage` superclass fields).
pub const COMMON: &[Param] =
    &[Param::list("systemTags"), Param::list("userTags"), Param::str("resourceUuid"), Param::list("tagUuids")];

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The REST-level type check (upstream `TypeVerifier`): ints must be integral, booleans
/// `true`/`false`. Runs before a job is accepted; failures are plain-text 400s.
/// Also normalizes accepted spellings (`"5"` → 5, `"TRUE"` → true).
pub fn type_check(params: &[Param], fields: &mut Map<String, Value>) -> Result<(), RestError> {
    for p in params.iter().chain(COMMON) {
        let Some(v) = fields.get_mut(p.name) else { continue };
        match p.ty {
            PType::Int => {
                let ok = match v {
                    Value::Null => true,
                    Value::Number(n) => {
                        if n.is_i64() || n.is_u64() {
                            true
                        } else if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18) {
                            *v = Value::from(f as i64);
                            true
                        } else {
                            false
                        }
                    }
                    Value::String(s) => match s.trim().parse::<i64>() {
                        Ok(i) => {
                            *v = Value::from(i);
                            true
                        }
                        Err(_) => false,
                    },
                    _ => false,
                };
                if !ok {
                    return Err(RestError::bad_request(format!(
                        "[{}] field is excepted an int or long, but was [{}].",
                        p.name,
                        show(v)
                    )));
                }
            }
            PType::Bool => {
                let ok = match v {
                    Value::Null | Value::Bool(_) => true,
                    Value::String(s) => match s.to_ascii_lowercase().as_str() {
                        "true" => {
                            *v = Value::Bool(true);
                            true
                        }
                        "false" => {
                            *v = Value::Bool(false);
                            true
                        }
                        _ => false,
                    },
                    _ => false,
                };
                if !ok {
                    return Err(RestError::bad_request(format!(
                        "Invalid value for boolean field [{}], [{}] is not a valid boolean string[true, false].",
                        p.name,
                        show(v)
                    )));
                }
            }
            PType::Float => {
                if let Value::String(s) = v {
                    if let Ok(f) = s.trim().parse::<f64>() {
                        *v = Value::from(f);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Turn GET/DELETE query-string pairs into message fields using the declared types:
/// repeated keys and `name.0=` become lists, `map.key=v` becomes a map.
pub fn from_query_string(params: &[Param], pairs: &[(String, String)]) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in pairs {
        let (base, sub) = match k.split_once('.') {
            Some((b, s)) => (b, Some(s)),
            None => (k.as_str(), None),
        };
        let Some(p) = params.iter().chain(COMMON).find(|p| p.name == base) else {
            tracing::debug!(key = %k, "ignoring unknown query parameter");
            continue;
        };
        match p.ty {
            PType::StrList => {
                let e = out.entry(p.name).or_insert_with(|| Value::Array(vec![]));
                if let Value::Array(a) = e {
                    a.push(Value::String(v.clone()));
                }
            }
            PType::Map => {
                let e = out.entry(p.name).or_insert_with(|| Value::Object(Map::new()));
                if let (Value::Object(m), Some(sub)) = (e, sub) {
                    m.insert(sub.to_string(), Value::String(v.clone()));
                }
            }
            _ => {
                out.insert(p.name.to_string(), Value::String(v.clone()));
            }
        }
    }
    out
}

fn mandatory(name: &str) -> Error {
    Error::argerr(format!("field[{name}] of message[{VALIDATOR_CLASS}] is mandatory, can not be null"))
}

/// What the validator decided.
pub enum Validated {
    Ok,
    /// A `successIfResourceNotExisting` field named a resource that does not exist:
    /// the API succeeds without doing anything.
    SucceedEmpty,
}

/// Apply the API's parameter rules to `fields` (trimming strings in place), in upstream
/// order: required, types, lengths, valid values, ranges, then resource existence.
pub async fn validate(app: &App, params: &[Param], fields: &mut Map<String, Value>) -> Result<Validated> {
    for p in params.iter().chain(COMMON) {
        match fields.get_mut(p.name) {
            None | Some(Value::Null) if p.required => return Err(mandatory(p.name)),
            None | Some(Value::Null) => {}
            Some(v) => check_one(p, v)?,
        }
    }
    // Every existence the checks below ask about, read at once (one statement, not one per uuid).
    let mut asks: Vec<(&'static str, &str)> = Vec::new();
    for p in params {
        let Some(def) = p.resource else { continue };
        match fields.get(p.name) {
            Some(Value::String(u)) => asks.push((def.table, u.as_str())),
            Some(Value::Array(items)) => asks.extend(items.iter().filter_map(Value::as_str).map(|u| (def.table, u))),
            _ => {}
        }
    }
    let known = existing(app, &asks).await?;
    let resource_exists = |def: &ResourceDef, u: &str| known.contains(&(def.table, u));
    for p in params {
        let Some(def) = p.resource else { continue };
        let Some(v) = fields.get(p.name) else { continue };
        match v {
            Value::String(u) => {
                if resource_exists(def, u) {
                    continue;
                }
                if !p.success_if_missing {
                    return Err(Error::not_found(format!(
                        "invalid field[{}], resource[uuid:{u}, type:{}] not found",
                        p.name, def.vo
                    )));
                }
                if crate::util::is_hex32(u) {
                    return Ok(Validated::SucceedEmpty);
                }
                return Err(Error::not_found(format!("invalid value[{u}] of field [{}]", p.name)));
            }
            Value::Array(items) => {
                let mut missing = Vec::new();
                for u in items.iter().filter_map(Value::as_str) {
                    if !resource_exists(def, u) {
                        missing.push(u.to_string());
                    }
                }
                if !missing.is_empty() {
                    return Err(Error::not_found(format!(
                        "invalid field[{}], resource[uuids:[{}], type:{}] not found",
                        p.name,
                        missing.join(", "),
                        def.vo
                    )));
                }
            }
            _ => {}
        }
    }
    Ok(Validated::Ok)
}

/// Which of the (table, uuid) pairs `asks` name an existing row: one statement per 64 pairs,
/// `SELECT (SELECT COUNT(*) FROM <table> WHERE uuid = $1), ...` (valid on both databases).
async fn existing<'a>(
    app: &App,
    asks: &[(&'static str, &'a str)],
) -> Result<std::collections::HashSet<(&'static str, &'a str)>> {
    use sqlx::Row;
    let mut found = std::collections::HashSet::new();
    for chunk in asks.chunks(64) {
        let cols: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, (t, _))| format!("(SELECT COUNT(*) FROM {t} WHERE uuid = ${})", i + 1))
            .collect();
        let vals: Vec<Val> = chunk.iter().map(|(_, u)| Val::S(u.to_string())).collect();
        let Some(row) = app.db.fetch_optional(&format!("SELECT {}", cols.join(", ")), &vals).await? else {
            continue;
        };
        for (i, ask) in chunk.iter().enumerate() {
            if row.try_get::<i64, _>(i)? > 0 {
                found.insert(*ask);
            }
        }
    }
    Ok(found)
}

fn wrong_type(p: &Param, what: &str) -> Error {
    Error::argerr(format!("field[{}] of message[{VALIDATOR_CLASS}] must be {what}", p.name))
}

fn check_one(p: &Param, v: &mut Value) -> Result<()> {
    match p.ty {
        PType::Str => {
            let s = match v {
                Value::String(s) => s,
                Value::Number(_) | Value::Bool(_) => {
                    *v = Value::String(show(v));
                    match v {
                        Value::String(s) => s,
                        _ => unreachable!(),
                    }
                }
                _ => return Err(wrong_type(p, "a string")),
            };
            if !p.no_trim {
                let t = s.trim();
                if t.len() != s.len() {
                    *s = t.to_string();
                }
            }
            check_string(p, s)?;
        }
        PType::StrList => {
            let items = match v {
                Value::Array(a) => a,
                Value::String(s) => {
                    // A single value where a list is expected: upstream Gson would fail; we
                    // accept it as a one-element list only from query strings (already lists).
                    let s = s.clone();
                    *v = Value::Array(vec![Value::String(s)]);
                    match v {
                        Value::Array(a) => a,
                        _ => unreachable!(),
                    }
                }
                _ => return Err(wrong_type(p, "a list of strings")),
            };
            if p.non_empty && items.is_empty() {
                return Err(Error::argerr(format!("field[{}] must be a nonempty list", p.name)));
            }
            for item in items.iter_mut() {
                match item {
                    Value::Null => {
                        return Err(Error::argerr(format!("field[{}] cannot contain a NULL element", p.name)))
                    }
                    Value::String(s) => {
                        if !p.no_trim {
                            let t = s.trim();
                            if t.len() != s.len() {
                                *s = t.to_string();
                            }
                        }
                        check_string(p, s)?;
                    }
                    Value::Number(_) | Value::Bool(_) => *item = Value::String(show(item)),
                    _ => return Err(wrong_type(p, "a list of strings")),
                }
            }
        }
        PType::Int | PType::Float => {
            let n = match v {
                Value::Number(n) => n.as_f64().unwrap_or(0.0),
                Value::String(s) => match s.trim().parse::<f64>() {
                    Ok(f) => {
                        *v = if p.ty == PType::Int { Value::from(f as i64) } else { Value::from(f) };
                        f
                    }
                    Err(_) => return Err(wrong_type(p, "a number")),
                },
                _ => return Err(wrong_type(p, "a number")),
            };
            if let Some((lo, hi)) = p.range {
                if n < lo as f64 || n > hi as f64 {
                    return Err(Error::argerr(match p.range_unit {
                        Some((lu, hu)) => format!("field[{}] must be in range of [{lo} {lu}, {hi} {hu}]", p.name),
                        None => format!("field[{}] must be in range of [{lo}, {hi}]", p.name),
                    }));
                }
            }
            if !p.valid_values.is_empty() && !p.valid_values.iter().any(|x| x.parse::<f64>().ok() == Some(n)) {
                return Err(Error::argerr(format!(
                    "valid value for field[{}] of message[{VALIDATOR_CLASS}] are [{}], but {} found",
                    p.name,
                    p.valid_values.join(", "),
                    show(v)
                )));
            }
        }
        PType::Bool => {
            if !v.is_boolean() {
                return Err(wrong_type(p, "a boolean"));
            }
        }
        PType::Map => {
            if !v.is_object() {
                return Err(wrong_type(p, "a map"));
            }
        }
        PType::ObjList => match v {
            Value::Array(a) => {
                if p.non_empty && a.is_empty() {
                    return Err(Error::argerr(format!("field[{}] must be a nonempty list", p.name)));
                }
                if a.iter().any(Value::is_null) {
                    return Err(Error::argerr(format!("field[{}] cannot contain a NULL element", p.name)));
                }
            }
            _ => return Err(wrong_type(p, "a list")),
        },
    }
    Ok(())
}

fn check_string(p: &Param, s: &str) -> Result<()> {
    if !p.empty_string && s.is_empty() {
        return Err(Error::argerr(format!("field[{}] cannot be an empty string", p.name)));
    }
    let len = s.chars().count();
    if let Some(max) = p.max_len {
        if len > max {
            return Err(Error::argerr(format!(
                "field[{}] of message[{VALIDATOR_CLASS}] exceeds max length of string. expected was <= {max}, actual was {len}",
                p.name
            )));
        }
    }
    if let Some(min) = p.min_len {
        if len < min {
            return Err(Error::argerr(format!(
                "field[{}] of message[{VALIDATOR_CLASS}] less than min length of string. expected was >= {min}, actual was {len}",
                p.name
            )));
        }
    }
    if !p.valid_values.is_empty() && !p.valid_values.iter().any(|x| x.eq_ignore_ascii_case(s)) {
        return Err(Error::argerr(format!(
            "valid value for field[{}] of message[{VALIDATOR_CLASS}] are [{}], but {s} found",
            p.name,
            p.valid_values.join(", ")
        )));
    }
    if let Some(re) = p.valid_regex {
        if !crate::pattern::matches(re, s) {
            return Err(Error::argerr(format!(
                "valid regex value for field[{}] of message[{VALIDATOR_CLASS}] are {}, but {s} found",
                p.name,
                p.regex_shown.unwrap_or(re)
            )));
        }
    }
    Ok(())
}
