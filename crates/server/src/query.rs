//! The generic query engine (upstream `APIQuery*Msg` over ZQL). Each queryable resource is
//! described once by a [`ResourceDef`]: its table, its inventory fields with their columns
//! and types, and its nested inventories. Conditions become SQL (nested fields become
//! `IN (SELECT ...)` subqueries), so filtering, counting, sorting and paging happen in the
//! database; the rows that come back are exactly the page asked for.

use crate::db::{query_with, Db, Val};
use crate::error::{Error, RestError, Result};
use rzstack_api::date;
use serde_json::{Map, Value};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FType {
    Str,
    Int,
    Bool,
    Float,
    /// epoch milliseconds in the database, upstream date text on the wire
    Date,
    /// A list of strings from a reference table (e.g. `attachedClusterUuids`): the field's
    /// column is the parent's key column; the values are `value` of the `table` rows whose
    /// `fk` equals it.
    Refs(&'static Refs),
    /// Like [`FType::Refs`], but the values come in the order of the reference table's
    /// insertion column (the second member), e.g. DNS servers in the order they were added.
    RefsOrdered(&'static Refs, &'static str),
}

impl FType {
    /// The reference table of a [`FType::Refs`]/[`FType::RefsOrdered`] field, with its
    /// insertion-order column if it declares one.
    pub fn refs(self) -> Option<(&'static Refs, Option<&'static str>)> {
        match self {
            FType::Refs(r) => Some((r, None)),
            FType::RefsOrdered(r, order) => Some((r, Some(order))),
            _ => None,
        }
    }
}

/// Where the values of an [`FType::Refs`] field live.
#[derive(Debug, PartialEq, Eq)]
pub struct Refs {
    pub table: &'static str,
    pub fk: &'static str,
    pub value: &'static str,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub col: &'static str,
    pub ty: FType,
}

pub const fn field(name: &'static str, col: &'static str, ty: FType) -> Field {
    Field { name, col, ty }
}

/// A nested inventory: rows of `def` whose column `fk` equals the parent's column `pk`.
#[derive(Debug)]
pub struct Child {
    pub name: &'static str,
    pub def: &'static ResourceDef,
    pub fk: &'static str,
    pub pk: &'static str,
    pub many: bool,
}

/// Picks the inventory class of one row.
pub type ClassOf = fn(&Map<String, Value>) -> &'static str;

/// Rows loaded for a parent key: (key, inventory) pairs.
type Keyed<'a> = futures::future::BoxFuture<'a, Result<Vec<(String, Map<String, Value>)>>>;

#[derive(Debug)]
pub struct ResourceDef {
    /// The inventory's simple name, e.g. `ZoneInventory`.
    pub inventory: &'static str,
    /// Upstream VO name used in not-found messages, e.g. `ZoneVO`.
    pub vo: &'static str,
    /// Upstream inventory class for the `schema` map.
    pub class: &'static str,
    pub table: &'static str,
    pub fields: &'static [Field],
    pub children: &'static [Child],
    /// The class of one row when it depends on the row (subclassed inventories).
    pub class_of: Option<ClassOf>,
    /// Default ORDER BY (SQL over alias `t`), for stable paging.
    pub order: &'static str,
    /// Resource type name used by tags (`resourceType` of tag APIs), e.g. `ZoneVO`.
    pub tag_type: Option<&'static str>,
}

impl ResourceDef {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
    pub fn child(&self, name: &str) -> Option<&'static Child> {
        self.children.iter().find(|c| c.name == name)
    }
    pub fn class_of_row(&self, row: &Map<String, Value>) -> &'static str {
        self.class_of.map(|f| f(row)).unwrap_or(self.class)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ne,
    Ge,
    Le,
    NotIn,
    NotLike,
    Like,
    In,
    Eq,
    Gt,
    Lt,
    IsNull,
    NotNull,
}

/// Upstream's operator order: the first one found in the condition wins.
const OPS: &[(&str, Op)] = &[
    ("!=", Op::Ne),
    (">=", Op::Ge),
    ("<=", Op::Le),
    ("!?=", Op::NotIn),
    ("!~=", Op::NotLike),
    ("~=", Op::Like),
    ("?=", Op::In),
    ("=", Op::Eq),
    (">", Op::Gt),
    ("<", Op::Lt),
    ("is null", Op::IsNull),
    ("not null", Op::NotNull),
];

fn op_list() -> String {
    let names: Vec<&str> = OPS.iter().map(|(s, _)| *s).collect();
    format!("[{}]", names.join(", "))
}

impl Op {
    /// Upstream's `QueryOp` text, used in its messages.
    pub fn sql_name(self) -> &'static str {
        match self {
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::NotIn => "not in",
            Op::NotLike => "not like",
            Op::Like => "like",
            Op::In => "in",
            Op::Eq => "=",
            Op::Gt => ">",
            Op::Lt => "<",
            Op::IsNull => "is null",
            Op::NotNull => "is not null",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cond {
    pub name: String,
    pub op: Op,
    pub value: String,
}

/// Parse one `q=` condition as upstream does. Errors are REST-level 400 texts.
pub fn parse_cond(q: &str) -> Result<Cond, RestError> {
    for (s, op) in OPS {
        let Some(i) = q.find(s) else { continue };
        let name = q[..i].trim().to_string();
        let value = q[i + s.len()..].to_string();
        if matches!(op, Op::IsNull | Op::NotNull) {
            return Ok(Cond { name, op: *op, value: String::new() });
        }
        // Upstream: an empty value is a condition on '' (not an error); an empty name is.
        if name.is_empty() {
            return Err(RestError::bad_request(format!(
                "Invalid query parameter. The '{q}' in parameter[q] is not a key-value pair split by {}",
                op.sql_name()
            )));
        }
        return Ok(Cond { name, op: *op, value });
    }
    Err(RestError::bad_request(format!(
        "Invalid query parameter. The '{q}' in the parameter[q] doesn't contain any query operator. Valid query operators are [{}]",
        op_list()
    )))
}

#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    pub conds: Vec<Cond>,
    pub limit: Option<i64>,
    pub start: Option<i64>,
    pub count: bool,
    pub reply_with_count: bool,
    /// (field, ascending)
    pub sort: Option<(String, bool)>,
    pub fields: Vec<String>,
}

/// Upstream's default page size.
pub const DEFAULT_LIMIT: i64 = 1000;

fn parse_bool(s: &str) -> bool {
    s.eq_ignore_ascii_case("true")
}

/// Parse a query string (`q=`, `limit`, ...) into [`QueryParams`]; REST-level 400 on bad input.
pub fn parse_params(pairs: &[(String, String)]) -> Result<QueryParams, RestError> {
    let mut p = QueryParams::default();
    for (i, (k, _)) in pairs.iter().enumerate() {
        if k != "q" && pairs[..i].iter().any(|(x, _)| x == k) {
            return Err(RestError::bad_request(format!(
                "Invalid query parameter[{k}], only one value is allowed for the parameter but multiple values found"
            )));
        }
    }
    for (k, v) in pairs {
        match k.as_str() {
            "q" => p.conds.push(parse_cond(v)?),
            "limit" => {
                p.limit = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| RestError::bad_request("Invalid query parameter. 'limit' must be an integer"))?,
                )
            }
            "start" => {
                p.start = Some(
                    v.trim()
                        .parse()
                        .map_err(|_| RestError::bad_request("Invalid query parameter. 'start' must be an integer"))?,
                )
            }
            "count" => p.count = parse_bool(v),
            "replyWithCount" => p.reply_with_count = parse_bool(v),
            "sort" => {
                let v = v.trim();
                let (f, asc) = if let Some(f) = v.strip_prefix('-') {
                    (f, false)
                } else {
                    (v.strip_prefix('+').unwrap_or(v), true)
                };
                p.sort = Some((f.trim().to_string(), asc));
            }
            "fields" => {
                p.fields = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                if p.fields.is_empty() {
                    return Err(RestError::bad_request("Invalid query parameter. 'fields' contains zero field"));
                }
            }
            // Accepted parameters are honoured or refused, never ignored: these two are not
            // implemented yet.
            "groupBy" | "filterName" => {
                return Err(RestError::bad_request(format!(
                    "Invalid query parameter. '{k}' is not supported by this management node yet"
                )))
            }
            _ => tracing::debug!(key = %k, "ignoring unknown query parameter"),
        }
    }
    Ok(p)
}

/// A condition on a field the inventory does not have: upstream fails the query as an internal
/// error with this text.
fn no_field(def: &ResourceDef, name: &str) -> Error {
    Error::code(
        rzstack_api::codes::SYS_1000,
        format!(
            "org.zstack.header.exception.CloudRuntimeException: inventory class[class {}] not having field[{name}]",
            def.class
        ),
    )
}

fn no_sort_field(def: &ResourceDef, name: &str) -> Error {
    Error::code(
        rzstack_api::codes::SYS_1000,
        format!(
            "org.zstack.zql.ast.visitors.ZQLError: invalid order by clause, inventory[{}] doesn't have field[{name}]",
            def.inventory
        ),
    )
}

fn no_projection_field(def: &ResourceDef, name: &str) -> Error {
    Error::code(
        rzstack_api::codes::SYS_1000,
        format!("org.zstack.header.exception.CloudRuntimeException: inventory[{}] has no field[{name}]", def.class),
    )
}

fn convert(def: &ResourceDef, f: &Field, v: &str) -> Result<Val> {
    let bad = || {
        Error::argerr(format!(
            "the value[{v}] of field[{}] of entity[{}] cannot be converted to the type of the field",
            f.name, def.inventory
        ))
    };
    Ok(match f.ty {
        FType::Str | FType::Refs(_) | FType::RefsOrdered(..) => Val::S(v.to_string()),
        FType::Int => Val::I(v.trim().parse().map_err(|_| bad())?),
        FType::Float => Val::F(v.trim().parse().map_err(|_| bad())?),
        FType::Bool => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Val::I(1),
            "false" | "0" => Val::I(0),
            _ => return Err(bad()),
        },
        FType::Date => Val::I(date::parse_millis(v).ok_or_else(bad)?),
    })
}

struct SqlBuilder<'a> {
    db: &'a Db,
    vals: Vec<Val>,
}

impl SqlBuilder<'_> {
    fn ph(&mut self, v: Val) -> String {
        self.vals.push(v);
        format!("${}", self.vals.len())
    }

    /// SQL for one condition on `def` aliased `alias` (depth for nested aliases).
    fn cond(&mut self, def: &ResourceDef, alias: &str, depth: usize, name: &str, c: &Cond) -> Result<String> {
        if let Some((head, rest)) = name.split_once('.') {
            let Some(child) = def.child(head) else {
                return Err(no_field(def, name));
            };
            let a = format!("t{}", depth + 1);
            let inner = self.cond(child.def, &a, depth + 1, rest, c)?;
            return Ok(format!(
                "{alias}.{} IN (SELECT {a}.{} FROM {} {a} WHERE {inner})",
                child.pk, child.fk, child.def.table
            ));
        }
        if name == "__systemTag__" || name == "__userTag__" || name == "__tagUuid__" {
            let table = if name == "__systemTag__" { "system_tag" } else { "user_tag" };
            // `__tagUuid__` (upstream ZQLMetadata.TAG_PATTERN_UUID): the tag patterns put on it.
            let col = if name == "__tagUuid__" { "tag_pattern_uuid" } else { "tag" };
            let f = Field { name: "tag", col, ty: FType::Str };
            // Upstream (TagZQLExtension): a negative operator selects the resources that do
            // NOT have a matching tag, i.e. NOT IN over the positive operator.
            let positive = match c.op {
                Op::Ne => Some(Op::Eq),
                Op::NotIn => Some(Op::In),
                Op::NotLike => Some(Op::Like),
                _ => None,
            };
            if let Some(op) = positive {
                let inner = self.leaf(def, "tg", &f, &Cond { op, ..c.clone() })?;
                return Ok(format!("{alias}.uuid NOT IN (SELECT tg.resource_uuid FROM {table} tg WHERE {inner})"));
            }
            let inner = self.leaf(def, "tg", &f, c)?;
            return Ok(format!("{alias}.uuid IN (SELECT tg.resource_uuid FROM {table} tg WHERE {inner})"));
        }
        let Some(f) = def.field(name) else {
            return Err(no_field(def, name));
        };
        if let Some((r, _)) = f.ty.refs() {
            let a = format!("r{depth}");
            let vf = Field { name: f.name, col: r.value, ty: FType::Str };
            let inner = self.leaf(def, &a, &vf, c)?;
            return Ok(format!("{alias}.{} IN (SELECT {a}.{} FROM {} {a} WHERE {inner})", f.col, r.fk, r.table));
        }
        self.leaf(def, alias, f, c)
    }

    fn leaf(&mut self, def: &ResourceDef, alias: &str, f: &Field, c: &Cond) -> Result<String> {
        let col = format!("{alias}.{}", f.col);
        let like = if self.db.kind == crate::db::DbKind::Postgres { "ILIKE" } else { "LIKE" };
        Ok(match c.op {
            Op::IsNull => format!("{col} IS NULL"),
            Op::NotNull => format!("{col} IS NOT NULL"),
            Op::In | Op::NotIn => {
                let mut phs = Vec::new();
                for item in c.value.split(',') {
                    let v = convert(def, f, item)?;
                    phs.push(self.ph(v));
                }
                let not = if c.op == Op::NotIn { "NOT " } else { "" };
                format!("{col} {not}IN ({})", phs.join(", "))
            }
            Op::Like | Op::NotLike => {
                let not = if c.op == Op::NotLike { "NOT " } else { "" };
                let p = self.ph(Val::S(c.value.clone()));
                if f.ty == FType::Str {
                    format!("{col} {not}{like} {p}")
                } else {
                    format!("CAST({col} AS TEXT) {not}{like} {p}")
                }
            }
            op => {
                let sym = match op {
                    Op::Ne => "!=",
                    Op::Ge => ">=",
                    Op::Le => "<=",
                    Op::Eq => "=",
                    Op::Gt => ">",
                    _ => "<",
                };
                let v = convert(def, f, &c.value)?;
                let p = self.ph(v);
                format!("{col} {sym} {p}")
            }
        })
    }
}

/// A query's answer before it is rendered.
pub struct QueryResult {
    pub inventories: Option<Vec<Map<String, Value>>>,
    pub total: Option<i64>,
}

/// Run a query against `def`. `extra` is an SQL condition on alias `t` with its values
/// (e.g. an ownership filter); it is ANDed with the user's conditions.
pub async fn run(db: &Db, def: &'static ResourceDef, qp: &QueryParams) -> Result<QueryResult> {
    let mut b = SqlBuilder { db, vals: Vec::new() };
    let mut wheres = Vec::with_capacity(qp.conds.len());
    for c in &qp.conds {
        wheres.push(b.cond(def, "t", 0, &c.name, c)?);
    }
    let where_sql = if wheres.is_empty() { String::new() } else { format!(" WHERE {}", wheres.join(" AND ")) };

    let mut total = None;
    if qp.count || qp.reply_with_count {
        let sql = format!("SELECT COUNT(*) FROM {} t{where_sql}", def.table);
        let row = query_with(&sql, &b.vals).fetch_one(&db.pool).await?;
        total = Some(row.try_get::<i64, _>(0)?);
    }
    if qp.count {
        return Ok(QueryResult { inventories: None, total });
    }

    // Projection: only the named fields (and children) when `fields=` is given.
    let (cols, kids): (Vec<&'static Field>, Vec<&'static Child>) = if qp.fields.is_empty() {
        (def.fields.iter().collect(), def.children.iter().collect())
    } else {
        let mut cols = Vec::new();
        let mut kids = Vec::new();
        for n in &qp.fields {
            if let Some(f) = def.field(n) {
                cols.push(f);
            } else if let Some(c) = def.child(n) {
                kids.push(c);
            } else {
                return Err(no_projection_field(def, n));
            }
        }
        (cols, kids)
    };

    let order = match &qp.sort {
        Some((name, asc)) => {
            let f = def.field(name).filter(|f| f.ty.refs().is_none()).ok_or_else(|| no_sort_field(def, name))?;
            format!(" ORDER BY t.{} {}", f.col, if *asc { "ASC" } else { "DESC" })
        }
        None => format!(" ORDER BY {}", def.order),
    };
    let limit = qp.limit.unwrap_or(DEFAULT_LIMIT).max(0);
    let start = qp.start.unwrap_or(0).max(0);
    let lp = b.ph(Val::I(limit));
    let sp = b.ph(Val::I(start));
    // Key columns of children are always fetched (as extra columns) so children can attach.
    let mut select: Vec<String> = cols.iter().map(|f| format!("t.{}", f.col)).collect();
    for k in &kids {
        select.push(format!("t.{} AS k_{}", k.pk, k.name));
    }
    if select.is_empty() {
        select.push("t.uuid".into());
    }
    let sql = format!("SELECT {} FROM {} t{where_sql}{order} LIMIT {lp} OFFSET {sp}", select.join(", "), def.table);
    let rows = query_with(&sql, &b.vals).fetch_all(&db.pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    let mut keys: Vec<Vec<String>> = vec![Vec::with_capacity(rows.len()); kids.len()];
    for row in &rows {
        out.push(row_to_json(row, &cols)?);
        for (i, _) in kids.iter().enumerate() {
            let key: Option<String> = row.try_get(cols.len() + i)?;
            keys[i].push(key.unwrap_or_default());
        }
    }
    for (i, k) in kids.iter().enumerate() {
        attach_children(db, k, &keys[i], &mut out).await?;
    }
    fill_refs(db, &cols, &mut out).await?;
    Ok(QueryResult { inventories: Some(out), total })
}

/// Load the children of `parents` (whose keys are `keys`, in the same order) and attach them.
fn attach_children<'a>(
    db: &'a Db,
    child: &'static Child,
    keys: &'a [String],
    parents: &'a mut [Map<String, Value>],
) -> futures::future::BoxFuture<'a, Result<()>> {
    Box::pin(async move {
        let mut by_key: HashMap<String, Vec<Map<String, Value>>> = HashMap::new();
        let mut distinct: Vec<&String> = keys.iter().filter(|k| !k.is_empty()).collect();
        distinct.sort();
        distinct.dedup();
        for chunk in distinct.chunks(500) {
            let loaded = load_where_in(db, child.def, child.fk, chunk).await?;
            for (fk, row) in loaded {
                by_key.entry(fk).or_default().push(row);
            }
        }
        for (p, k) in parents.iter_mut().zip(keys) {
            let rows = by_key.get(k).cloned().unwrap_or_default();
            if child.many {
                p.insert(child.name.to_string(), Value::Array(rows.into_iter().map(Value::Object).collect()));
            } else if let Some(r) = rows.into_iter().next() {
                p.insert(child.name.to_string(), Value::Object(r));
            }
        }
        Ok(())
    })
}

/// Rows of `def` whose `col` is one of `keys`, as (key, inventory) pairs, with their own
/// children attached.
fn load_where_in<'a>(db: &'a Db, def: &'static ResourceDef, col: &'static str, keys: &'a [&'a String]) -> Keyed<'a> {
    Box::pin(async move {
        let cols: Vec<&'static Field> = def.fields.iter().collect();
        let mut select: Vec<String> = cols.iter().map(|f| format!("t.{}", f.col)).collect();
        select.push(format!("t.{col} AS k_parent"));
        for k in def.children {
            select.push(format!("t.{} AS k_{}", k.pk, k.name));
        }
        let phs: Vec<String> = (1..=keys.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {} FROM {} t WHERE t.{col} IN ({}) ORDER BY {}",
            select.join(", "),
            def.table,
            phs.join(", "),
            def.order
        );
        let vals: Vec<Val> = keys.iter().map(|k| Val::S((*k).clone())).collect();
        let rows = query_with(&sql, &vals).fetch_all(&db.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut sub: Vec<Vec<String>> = vec![Vec::with_capacity(rows.len()); def.children.len()];
        let mut objs = Vec::with_capacity(rows.len());
        for row in &rows {
            objs.push(row_to_json(row, &cols)?);
            let pk: Option<String> = row.try_get(cols.len())?;
            out.push(pk.unwrap_or_default());
            for (i, _) in def.children.iter().enumerate() {
                let key: Option<String> = row.try_get(cols.len() + 1 + i)?;
                sub[i].push(key.unwrap_or_default());
            }
        }
        for (i, k) in def.children.iter().enumerate() {
            attach_children(db, k, &sub[i], &mut objs).await?;
        }
        fill_refs(db, &cols, &mut objs).await?;
        Ok(out.into_iter().zip(objs).collect())
    })
}

/// Replace the key of every [`FType::Refs`]/[`FType::RefsOrdered`] field of `rows` by its list of values.
async fn fill_refs(db: &Db, cols: &[&'static Field], rows: &mut [Map<String, Value>]) -> Result<()> {
    for f in cols {
        let Some((r, order)) = f.ty.refs() else { continue };
        // Values in insertion order where the reference table declares it, else by value.
        let by = order.unwrap_or(r.value);
        let mut keys: Vec<String> = rows.iter().filter_map(|m| m.get(f.name)?.as_str().map(String::from)).collect();
        keys.sort();
        keys.dedup();
        let mut by_key: HashMap<String, Vec<Value>> = HashMap::new();
        for chunk in keys.chunks(500) {
            let phs: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {fk}, {v} FROM {t} WHERE {fk} IN ({}) ORDER BY {fk}, {by}, {v}",
                phs.join(", "),
                fk = r.fk,
                v = r.value,
                t = r.table
            );
            let vals: Vec<Val> = chunk.iter().map(|k| Val::S(k.clone())).collect();
            for row in query_with(&sql, &vals).fetch_all(&db.pool).await? {
                let k: String = row.try_get(0)?;
                let v: String = row.try_get(1)?;
                by_key.entry(k).or_default().push(Value::String(v));
            }
        }
        for m in rows.iter_mut() {
            let k = m.get(f.name).and_then(Value::as_str).unwrap_or_default().to_string();
            m.insert(f.name.to_string(), Value::Array(by_key.get(&k).cloned().unwrap_or_default()));
        }
    }
    Ok(())
}

/// One database row → an inventory object (null columns omitted, as Gson does).
pub fn row_to_json(row: &AnyRow, cols: &[&'static Field]) -> Result<Map<String, Value>> {
    let mut m = Map::with_capacity(cols.len());
    for (i, f) in cols.iter().enumerate() {
        let v = match f.ty {
            FType::Str | FType::Refs(_) | FType::RefsOrdered(..) => {
                row.try_get::<Option<String>, _>(i)?.map(Value::String)
            }
            FType::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::from),
            FType::Bool => row.try_get::<Option<i64>, _>(i)?.map(|b| Value::Bool(b != 0)),
            FType::Float => row.try_get::<Option<f64>, _>(i)?.map(Value::from),
            FType::Date => row.try_get::<Option<i64>, _>(i)?.map(|ms| Value::String(date::format_millis(ms))),
        };
        if let Some(v) = v {
            m.insert(f.name.to_string(), v);
        }
    }
    Ok(m)
}

/// One inventory by uuid (with children), or None.
pub async fn get(db: &Db, def: &'static ResourceDef, uuid: &str) -> Result<Option<Map<String, Value>>> {
    let qp = QueryParams {
        conds: vec![Cond { name: "uuid".into(), op: Op::Eq, value: uuid.to_string() }],
        limit: Some(1),
        ..Default::default()
    };
    Ok(run(db, def, &qp).await?.inventories.and_then(|mut v| v.pop()))
}

/// Add `schema` entries for one inventory at `path`: the inventory itself BEFORE its children
/// (upstream reverses a post-order walk, so every parent precedes its children). The Java SDK
/// rebuilds each path in map order from the raw JSON; a child listed before its parent is
/// undone when the parent is rebuilt, leaving e.g. `vmNics[0].usedIps` as raw maps.
pub fn schema_for(def: &ResourceDef, path: &str, inv: &Map<String, Value>, out: &mut Map<String, Value>) {
    out.insert(path.to_string(), Value::String(def.class_of_row(inv).to_string()));
    for c in def.children {
        match inv.get(c.name) {
            Some(Value::Array(items)) => {
                for (j, item) in items.iter().enumerate() {
                    if let Value::Object(o) = item {
                        schema_for(c.def, &format!("{path}.{}[{j}]", c.name), o, out);
                    }
                }
            }
            Some(Value::Object(o)) => schema_for(c.def, &format!("{path}.{}", c.name), o, out),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_precedence() {
        let c = parse_cond("name!=vm1").unwrap();
        assert_eq!((c.name.as_str(), c.op, c.value.as_str()), ("name", Op::Ne, "vm1"));
        let c = parse_cond("state?=Running,Stopped").unwrap();
        assert_eq!(c.op, Op::In);
        let c = parse_cond("state!?=Running").unwrap();
        assert_eq!(c.op, Op::NotIn);
        let c = parse_cond("name!~=vm%").unwrap();
        assert_eq!(c.op, Op::NotLike);
        let c = parse_cond("name~=vm%").unwrap();
        assert_eq!(c.op, Op::Like);
        let c = parse_cond("cpuNum>=2").unwrap();
        assert_eq!(c.op, Op::Ge);
        let c = parse_cond("cpuNum<2").unwrap();
        assert_eq!(c.op, Op::Lt);
        let c = parse_cond("description is null").unwrap();
        assert_eq!((c.name.as_str(), c.op), ("description", Op::IsNull));
        let c = parse_cond("hostUuid not null").unwrap();
        assert_eq!((c.name.as_str(), c.op), ("hostUuid", Op::NotNull));
        let c = parse_cond(" name =a b").unwrap();
        assert_eq!((c.name.as_str(), c.value.as_str()), ("name", "a b"));
        assert!(parse_cond("name").unwrap_err().text.contains("doesn't contain any query operator"));
        for k in ["groupBy", "filterName"] {
            let e = parse_params(&[(k.to_string(), "type:x".to_string())]).unwrap_err();
            assert_eq!((e.status, e.text.contains("not supported")), (400, true), "{k}");
        }
        assert!(parse_cond("=x").unwrap_err().text.contains("is not a key-value pair split by ="));
        assert!(parse_cond("~=x").unwrap_err().text.contains("is not a key-value pair split by like"));
        let c = parse_cond("name=").unwrap();
        assert_eq!((c.name.as_str(), c.value.as_str()), ("name", ""));
    }
}

#[cfg(test)]
#[path = "query_test.rs"]
mod engine_tests;
