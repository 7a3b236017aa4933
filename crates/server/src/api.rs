//! The declarative API table: one [`ApiDef`] per upstream API. Routing, body-key handling,
//! parameter validation, job wrapping and the `schema` map are all driven from it; a handler
//! only receives a validated [`Msg`] and returns a [`Reply`].

use crate::error::{Error, Result};
use crate::identity::SessionInfo;
use crate::params::Param;
use crate::query::ResourceDef;
use crate::App;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn parse(m: &str) -> Option<Method> {
        Some(match m {
            "GET" | "HEAD" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => return None,
        })
    }
}

/// Where the message's fields are in a POST/PUT body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `{"params": {...}}`
    Params,
    /// `{"<actionName>": {...}}`
    Action,
    /// any other fixed key, e.g. the literal `"null"` of AttachL2NetworkToCluster
    Key(&'static str),
    /// parameters come from the query string (GET/DELETE)
    Query,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Answered inline: 200 or 503.
    Sync,
    /// 202 + job; the default timeout in milliseconds.
    Async { timeout_ms: u64 },
    /// A query over a resource (always sync).
    Query(&'static ResourceDef),
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Reply>> + Send>>;
pub type Handler = fn(App, Msg) -> HandlerFuture;

pub struct ApiDef {
    /// Upstream API name, e.g. `CreateZone` (action name derives from it).
    pub name: &'static str,
    pub method: Method,
    pub path: &'static str,
    pub optional_paths: &'static [&'static str],
    pub body: Body,
    pub kind: Kind,
    /// Whether a session is needed (`false` = upstream `@SuppressCredentialCheck`).
    pub auth: bool,
    /// Whether this is an `APICreateMessage` (accepts `resourceUuid`).
    pub create: bool,
    pub params: &'static [Param],
    /// System-tag patterns this API accepts (`name::{var}` form); others are refused.
    pub tags: &'static [&'static str],
    pub handler: Option<Handler>,
}

impl ApiDef {
    /// `StartVmInstance` → `startVmInstance`.
    pub fn action_name(&self) -> String {
        let mut c = self.name.chars();
        match c.next() {
            Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
            None => String::new(),
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        match self.kind {
            Kind::Async { timeout_ms } => timeout_ms,
            _ => DEFAULT_API_TIMEOUT_MS,
        }
    }

    pub fn is_async(&self) -> bool {
        matches!(self.kind, Kind::Async { .. })
    }

    /// An entry with the common defaults: async with the default timeout, a session needed,
    /// not a create, no optional paths, parameters, tags or handler. The constructors below
    /// and the `const` builder methods keep the tables `static`.
    pub const fn new(name: &'static str, method: Method, path: &'static str, body: Body) -> ApiDef {
        ApiDef {
            name,
            method,
            path,
            optional_paths: &[],
            body,
            kind: Kind::Async { timeout_ms: DEFAULT_API_TIMEOUT_MS },
            auth: true,
            create: false,
            params: &[],
            tags: &[],
            handler: None,
        }
    }

    /// An `APICreateMessage`: POST, body `params`, accepts `resourceUuid`.
    pub const fn create(name: &'static str, path: &'static str) -> ApiDef {
        ApiDef { create: true, ..ApiDef::new(name, Method::Post, path, Body::Params) }
    }

    /// A POST that creates nothing (attachments and the like), body `params`.
    pub const fn post(name: &'static str, path: &'static str) -> ApiDef {
        ApiDef::new(name, Method::Post, path, Body::Params)
    }

    /// A PUT `.../actions` call, body `{"<actionName>": {...}}`.
    pub const fn action(name: &'static str, path: &'static str) -> ApiDef {
        ApiDef::new(name, Method::Put, path, Body::Action)
    }

    /// A DELETE, parameters from the query string.
    pub const fn delete(name: &'static str, path: &'static str) -> ApiDef {
        ApiDef::new(name, Method::Delete, path, Body::Query)
    }

    /// A synchronous GET (not a query), parameters from the query string.
    pub const fn get(name: &'static str, path: &'static str) -> ApiDef {
        ApiDef { kind: Kind::Sync, ..ApiDef::new(name, Method::Get, path, Body::Query) }
    }

    /// A query over `def`.
    pub const fn query(name: &'static str, path: &'static str, def: &'static ResourceDef) -> ApiDef {
        ApiDef { kind: Kind::Query(def), ..ApiDef::new(name, Method::Get, path, Body::Query) }
    }

    pub const fn optional_paths(self, optional_paths: &'static [&'static str]) -> ApiDef {
        ApiDef { optional_paths, ..self }
    }

    pub const fn body(self, body: Body) -> ApiDef {
        ApiDef { body, ..self }
    }

    /// Async with this default timeout (upstream `@DefaultTimeout`).
    pub const fn timeout(self, timeout_ms: u64) -> ApiDef {
        ApiDef { kind: Kind::Async { timeout_ms }, ..self }
    }

    /// Answered inline.
    pub const fn sync(self) -> ApiDef {
        ApiDef { kind: Kind::Sync, ..self }
    }

    /// No session needed (upstream `@SuppressCredentialCheck`).
    pub const fn no_auth(self) -> ApiDef {
        ApiDef { auth: false, ..self }
    }

    pub const fn params(self, params: &'static [Param]) -> ApiDef {
        ApiDef { params, ..self }
    }

    pub const fn tags(self, tags: &'static [&'static str]) -> ApiDef {
        ApiDef { tags, ..self }
    }

    pub const fn handler(self, handler: Handler) -> ApiDef {
        ApiDef { handler: Some(handler), ..self }
    }
}

/// Upstream `apiTimeout` global config default, 30 minutes.
pub const DEFAULT_API_TIMEOUT_MS: u64 = 30 * 60 * 1000;
pub const HOURS: u64 = 3600 * 1000;

/// A validated API message as handlers see it. Serializable: it is what a job stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Msg {
    pub api: String,
    pub job_uuid: String,
    /// All fields: body fields, URL variables, systemTags/userTags/resourceUuid.
    pub fields: Map<String, Value>,
    /// The uuid fixed for the resource a create API makes (the user's `resourceUuid` or
    /// one chosen when the job was accepted), so a replay makes the same resource.
    pub assigned_uuid: Option<String>,
    pub session_uuid: Option<String>,
    #[serde(skip)]
    pub session: Option<SessionInfo>,
    /// True when the job is run again after a management-node restart.
    #[serde(skip)]
    pub replay: bool,
}

impl Msg {
    /// The typed request, deserialized from the validated fields.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(Value::Object(self.fields.clone()))
            .map_err(|e| Error::argerr(format!("invalid message {}: {e}", self.api)))
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    pub fn system_tags(&self) -> Vec<String> {
        string_list(self.fields.get("systemTags"))
    }

    pub fn user_tags(&self) -> Vec<String> {
        string_list(self.fields.get("userTags"))
    }

    /// The uuid of the resource a create API makes.
    pub fn resource_uuid(&self) -> String {
        self.assigned_uuid.clone().unwrap_or_else(crate::util::new_uuid)
    }

    /// The account the caller acts as.
    pub fn account_uuid(&self) -> &str {
        self.session.as_ref().map(|s| s.account_uuid.as_str()).unwrap_or(crate::identity::ADMIN_UUID)
    }
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => Vec::new(),
    }
}

/// What an API answers on success: the mapped body and its `schema` entries.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub body: Map<String, Value>,
    pub schema: Map<String, Value>,
}

impl Reply {
    pub fn empty() -> Reply {
        Reply::default()
    }

    /// `{"inventory": <inv>}` with its schema (upstream `@RestResponse(allTo="inventory")`).
    pub fn inventory(def: &ResourceDef, inv: Map<String, Value>) -> Reply {
        let mut schema = Map::new();
        crate::query::schema_for(def, "inventory", &inv, &mut schema);
        let mut body = Map::new();
        body.insert("inventory".into(), Value::Object(inv));
        Reply { body, schema }
    }

    /// A body of plain fields (`fieldsTo`), no schema.
    pub fn fields(pairs: impl IntoIterator<Item = (&'static str, Value)>) -> Reply {
        let body = pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Reply { body, schema: Map::new() }
    }
}

/// Box a handler future (keeps the API table's `handler:` entries short).
pub fn boxed<F>(f: F) -> HandlerFuture
where
    F: Future<Output = Result<Reply>> + Send + 'static,
{
    Box::pin(f)
}
