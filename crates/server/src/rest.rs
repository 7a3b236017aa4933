//! The REST layer (upstream `RestServer`): base path, routing, body keys, headers, the
//! plain-text REST-level refusals, sync answers, and 202 + job for async APIs. Nothing below
//! this module knows about HTTP.

use crate::api::{ApiDef, Body, Kind, Method, Msg};
use crate::error::{RestError, Result};
use crate::jobs::{self, AcceptError};
use crate::params;
use crate::query;
use crate::routes::Matched;
use crate::{identity, pipeline, App};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

const JSON: &str = "application/json; charset=utf-8";

fn json_response(status: u16, body: &Value) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body.to_string()).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static(JSON));
    r
}

/// A JSON answer whose text is already made (a stored job result).
fn json_text_response(status: u16, body: String) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), body).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static(JSON));
    r
}

fn text_response(e: RestError) -> Response {
    let mut r = (StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), e.text).into_response();
    r.headers_mut().insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn error_response(e: &crate::error::Error) -> Response {
    json_response(503, &json!({ "error": e.to_error_code() }))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The axum fallback: every request goes through here.
pub async fn handle(
    State(app): State<App>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match handle_inner(&app, &method, &uri, &headers, &body).await {
        Ok(r) => r,
        Err(e) => text_response(e),
    }
}

async fn handle_inner(
    app: &App,
    method: &axum::http::Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, RestError> {
    let raw_path = percent_encoding::percent_decode_str(uri.path()).decode_utf8_lossy().to_string();
    // The canonical base is /zstack/v1; /v1 is what the Java SDK uses without a context path.
    let Some(path) = raw_path.strip_prefix("/zstack/v1").or_else(|| raw_path.strip_prefix("/v1")) else {
        return Err(RestError::not_found(format!("no api mapping to {raw_path}")));
    };
    // Upstream prints the decoded URL below the `/zstack` context path.
    let shown = format!("/v1{path}");
    if let Some(job) = path.strip_prefix("/api-jobs/") {
        if method != axum::http::Method::GET {
            return Err(RestError::method_not_allowed("only GET method is allowed for querying job status"));
        }
        return poll_job(app, job.trim_matches('/'), headers).await;
    }
    let Some(m) = Method::parse(method.as_str()) else {
        return Err(RestError::method_not_allowed(format!(
            "The method[{method}] is not allowed for the path[{}]",
            uri.path()
        )));
    };
    let pairs: Vec<(String, String)> =
        uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();

    // POST/PUT bodies are JSON objects; an empty body is an empty message.
    let body_json: Map<String, Value> =
        if matches!(m, Method::Post | Method::Put) && !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(o)) => o,
                Ok(_) => return Err(RestError::bad_request("the body must be a JSON object")),
                Err(e) => return Err(RestError::bad_request(format!("Invalid JSON body: {e}"))),
            }
        } else {
            Map::new()
        };

    let (api, vars) = match app.routes.find(m, path, &|k| body_json.contains_key(k)) {
        Matched::Api(api, vars) => (api, vars),
        Matched::NoMapping => return Err(RestError::not_found(format!("no api mapping to {shown}"))),
        Matched::NoAction => {
            return Err(RestError::bad_request(format!("the body doesn't contain action mapping to the URL[{shown}]")))
        }
        Matched::MethodNotAllowed => {
            return Err(RestError::method_not_allowed(format!(
                "The method[{method}] is not allowed for the path[{}]",
                uri.path()
            )))
        }
    };

    let session_uuid = if api.auth {
        let Some(auth) = header(headers, "authorization") else {
            return Err(RestError::bad_request("missing header 'Authorization'"));
        };
        let Some(rest) = auth.trim().strip_prefix("OAuth") else {
            return Err(RestError::bad_request("Authorization type must be 'OAuth'"));
        };
        Some(rest.trim().to_string())
    } else {
        None
    };
    let want_schema = headers.contains_key("x-json-schema");

    if let Kind::Query(def) = api.kind {
        return run_query(app, def, &vars, &pairs, session_uuid.as_deref()).await;
    }

    // Build the message fields.
    let mut fields = match m {
        Method::Get | Method::Delete => params::from_query_string(api.params, &pairs),
        Method::Post | Method::Put => {
            let key = match api.body {
                Body::Params => "params".to_string(),
                Body::Action => api.action_name(),
                Body::Key(k) => k.to_string(),
                Body::Query => String::new(),
            };
            let mut f = match body_json.get(&key) {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            for t in ["systemTags", "userTags"] {
                if let Some(v) = body_json.get(t) {
                    if !v.is_null() {
                        f.insert(t.to_string(), v.clone());
                    }
                }
            }
            f
        }
    };
    for (k, v) in vars {
        fields.insert(k.to_string(), Value::String(v));
    }
    params::type_check(api.params, &mut fields)?;

    let mut msg = Msg {
        api: api.name.to_string(),
        job_uuid: String::new(),
        fields,
        assigned_uuid: None,
        session_uuid,
        session: None,
        replay: false,
    };

    // Upstream checks the job uuid header on every API, sync ones included.
    msg.job_uuid = match header(headers, "x-job-uuid") {
        Some(j) if j.len() == 32 => j.to_string(),
        Some(_) => {
            return Err(RestError::bad_request("Invalid header[X-Job-UUID], it must be a UUID with '-' stripped"))
        }
        None => crate::util::new_uuid(),
    };

    if !api.is_async() {
        return Ok(match pipeline::process(app, api, msg).await {
            Ok(reply) => {
                let mut b = reply.body;
                if want_schema && !reply.schema.is_empty() {
                    b.insert("schema".into(), Value::Object(reply.schema));
                }
                json_response(200, &Value::Object(b))
            }
            Err(e) => error_response(&e),
        });
    }

    // Async: persist the job, answer 202.
    let timeout_ms = match header(headers, "x-api-timeout") {
        Some(t) => match t.trim().parse::<u64>() {
            Ok(s) if s > 0 => s.saturating_mul(1000),
            _ => {
                return Err(RestError::bad_request(format!(
                    "Invalid header[X-API-Timeout], {t} is not a positive integer"
                )))
            }
        },
        None => api.timeout_ms(),
    };
    let webhook = header(headers, "x-web-hook").map(str::to_string);
    if api.create {
        msg.assigned_uuid = Some(match msg.fields.get("resourceUuid") {
            Some(Value::String(u)) => u.clone(),
            _ => crate::util::new_uuid(),
        });
    }
    match jobs::accept(app, &msg, timeout_ms, webhook.as_deref()).await {
        Ok(()) => {}
        Err(AcceptError::Duplicate) => {
            return Err(RestError::bad_request(format!("Duplicate job uuid[{}]", msg.job_uuid)))
        }
        Err(AcceptError::Other(e)) => return Err(RestError::internal(e.to_string())),
    }
    let host = header(headers, "host").map(str::to_string).unwrap_or_else(|| app.config.listen.clone());
    let location = format!("http://{host}/zstack/v1/api-jobs/{}", msg.job_uuid);
    jobs::spawn(app.clone(), api, msg, timeout_ms, webhook);
    Ok(json_response(202, &json!({ "location": location, "apiTimeout": timeout_ms })))
}

async fn poll_job(app: &App, uuid: &str, headers: &HeaderMap) -> Result<Response, RestError> {
    match jobs::poll(app, uuid, headers.contains_key("x-json-schema")).await {
        Ok(Some((status, body))) => Ok(json_text_response(status, body)),
        Ok(None) => Err(RestError::not_found("the job has been expired")),
        Err(e) => Err(RestError::internal(e.to_string())),
    }
}

async fn run_query(
    app: &App,
    def: &'static query::ResourceDef,
    vars: &[(&'static str, String)],
    pairs: &[(String, String)],
    session_uuid: Option<&str>,
) -> Result<Response, RestError> {
    let qp = match vars.iter().find(|(k, _)| *k == "uuid") {
        // The /{uuid} form: only that condition, other parameters ignored.
        Some((_, u)) => query::QueryParams {
            conds: vec![query::Cond { name: "uuid".into(), op: query::Op::Eq, value: u.clone() }],
            ..Default::default()
        },
        None => query::parse_params(pairs)?,
    };
    if let Err(e) = identity::check(app, session_uuid).await {
        return Ok(error_response(&e));
    }
    // Fast path (issue 6): the reply text written straight from the rows, same bytes.
    match query::run_json(&app.db, def, &qp).await {
        Ok(Some(text)) => {
            let mut r = (StatusCode::OK, text).into_response();
            r.headers_mut().insert("content-type", HeaderValue::from_static(JSON));
            return Ok(r);
        }
        Ok(None) => {}
        Err(e) => return Ok(error_response(&e)),
    }
    let r = match query::run(&app.db, def, &qp).await {
        Ok(r) => r,
        Err(e) => return Ok(error_response(&e)),
    };
    let mut body = Map::new();
    let mut schema = Map::new();
    if let Some(invs) = r.inventories {
        for (i, inv) in invs.iter().enumerate() {
            query::schema_for(def, &format!("inventories[{i}]"), inv, &mut schema);
        }
        body.insert("inventories".into(), Value::Array(invs.into_iter().map(Value::Object).collect()));
    }
    if let Some(t) = r.total {
        body.insert("total".into(), Value::from(t));
    }
    body.insert("schema".into(), Value::Object(schema));
    Ok(json_response(200, &Value::Object(body)))
}

/// Every API this node serves.
pub fn all_apis() -> Vec<&'static ApiDef> {
    use crate::resources::*;
    let tables: &[&'static [ApiDef]] = &[
        identity::APIS,
        crate::mn::APIS,
        zone::APIS,
        cluster::APIS,
        host::APIS,
        primary_storage::APIS,
        backup_storage::APIS,
        image::APIS,
        volume::APIS,
        volume_ops::APIS,
        l2::APIS,
        l3::APIS,
        offering::APIS,
        ssh_key::APIS,
        tag::APIS,
        global_config::APIS,
        vm::APIS,
    ];
    tables.iter().flat_map(|t| t.iter()).collect()
}
