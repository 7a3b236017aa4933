//! Black-box tests of the management-node foundation: the REST transport, durable jobs
//! (polling, job headers, web hooks, crash recovery), sessions and the management-node APIs.

mod common;
use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const VALIDATOR: &str = "org.zstack.header.message.ApiMessageParamValidator";

fn uuid32() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// Parse an upstream (Java 8 `DateFormat.DEFAULT`, en_US) date such as
/// `Nov 14, 2017 2:20:57 PM`, i.e. `^[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} (AM|PM)$`,
/// into seconds (time zone ignored: only differences are compared). `None` if it does not match.
fn date_secs(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let digits = |t: &str, lo: usize, hi: usize| -> Option<i64> {
        if t.len() < lo || t.len() > hi || !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    let parts: Vec<&str> = s.split(' ').collect();
    let [mon, day, year, time, ampm] = parts.as_slice() else {
        return None;
    };
    let month = MONTHS.iter().position(|m| m == mon)? as i64 + 1;
    let day = digits(day.strip_suffix(',')?, 1, 2)?;
    let year = digits(year, 4, 4)?;
    let t: Vec<&str> = time.split(':').collect();
    let [h, m, sec] = t.as_slice() else {
        return None;
    };
    let (h, m, sec) = (digits(h, 1, 2)?, digits(m, 2, 2)?, digits(sec, 2, 2)?);
    if !(1..=12).contains(&h) || m > 59 || sec > 59 || !(1..=31).contains(&day) {
        return None;
    }
    let h24 = match *ampm {
        "AM" => h % 12,
        "PM" => h % 12 + 12,
        _ => return None,
    };
    // days from civil (proleptic Gregorian)
    let (y, mo) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * mo + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h24 * 3600 + m * 60 + sec)
}

fn date_of(v: &Value) -> i64 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a date string: {v}"));
    date_secs(s).unwrap_or_else(|| panic!("not an upstream date: {s:?}"))
}

#[test]
fn date_parser_self_check() {
    assert_eq!(date_secs("Nov 14, 2017 2:20:57 PM"), Some(1510669257));
    assert_eq!(date_secs("Jan 1, 1970 12:00:00 AM"), Some(0));
    assert_eq!(date_secs("Nov 14, 2017, 2:20:57 PM"), None);
    assert_eq!(date_secs("2017-11-14T14:20:57Z"), None);
}

async fn zone_names(s: &Server) -> Vec<String> {
    s.query("/zones").await.iter().map(|z| z["name"].as_str().unwrap_or("").to_string()).collect()
}

/// POST CreateZone with the admin session and extra headers; expect 202; return the body.
async fn post_zone(s: &Server, body: Value, headers: &[(&str, &str)]) -> Value {
    let r = s.request("POST", "/zones", Some(body), Some(&s.session), headers).await;
    assert_eq!(r.status, 202, "{}", r.text);
    r.body
}

fn job_uuid_of(location: &Value) -> String {
    let loc = location.as_str().expect("location");
    let (_, job) = loc.rsplit_once("/api-jobs/").expect("location has /api-jobs/");
    job.to_string()
}

fn delay_env(ms: u64) -> Vec<(String, String)> {
    vec![("RZSTACK_TEST_JOB_DELAY_MS".to_string(), ms.to_string())]
}

// ---------------------------------------------------------------------------------------
// REST transport
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rest_base_paths_zstack_v1_and_v1() {
    let s = Server::start().await;
    s.create_zone("z1").await;
    let r = s.request("GET", "/zones", None, Some(&s.session), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["inventories"].as_array().map(Vec::len), Some(1));
    let bare = format!("http://127.0.0.1:{}/v1/zones", s.port);
    let r = s.request("GET", &bare, None, Some(&s.session), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["inventories"][0]["name"], "z1");
    // An async API under /v1 answers with the canonical /zstack/v1 job location.
    let r = s
        .request(
            "POST",
            &format!("http://127.0.0.1:{}/v1/zones", s.port),
            Some(json!({"params": {"name": "z2"}})),
            Some(&s.session),
            &[],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let loc = r.body["location"].as_str().unwrap();
    assert!(loc.contains("/zstack/v1/api-jobs/"), "{loc}");
    assert_eq!(s.poll(loc).await.status, 200);
    assert_eq!(zone_names(&s).await, ["z1", "z2"]);
}

#[tokio::test]
async fn rest_unknown_path_is_404_plain_text() {
    let s = Server::start().await;
    let r = s.request("GET", "/no-such-things", None, Some(&s.session), &[]).await;
    assert_eq!(r.status, 404);
    // Upstream prints the path below the /zstack context.
    assert_eq!(r.text, "no api mapping to /v1/no-such-things");
    let r = s.request("POST", "/zones/x/y/z", Some(json!({})), Some(&s.session), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text, "no api mapping to /v1/zones/x/y/z");
    let bare = format!("http://127.0.0.1:{}/v1/nothing-here", s.port);
    let r = s.request("GET", &bare, None, Some(&s.session), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text, "no api mapping to /v1/nothing-here");
}

#[tokio::test]
async fn rest_put_on_shared_actions_path_without_action_key_is_400() {
    let s = Server::start().await;
    let z = s.create_zone("z1").await;
    let u = z["uuid"].as_str().unwrap();
    let path = format!("/zones/{u}/actions");
    for body in [json!({"noSuchAction": {}}), json!({}), json!({"params": {"name": "x"}})] {
        let r = s.request("PUT", &path, Some(body), Some(&s.session), &[]).await;
        assert_eq!(r.status, 400);
        assert_eq!(r.text, format!("the body doesn't contain action mapping to the URL[/v1/zones/{u}/actions]"));
    }
    // A known action key picks its API.
    let r = s.ok("PUT", &path, Some(json!({"changeZoneState": {"stateEvent": "disable"}}))).await;
    assert_eq!(r["inventory"]["state"], "Disabled");
    let r = s.ok("PUT", &path, Some(json!({"updateZone": {"name": "renamed"}}))).await;
    assert_eq!(r["inventory"]["name"], "renamed");
    assert_eq!(r["inventory"]["state"], "Disabled");
}

#[tokio::test]
async fn rest_wrong_method_on_shared_path_is_405() {
    let s = Server::start().await;
    let z = s.create_zone("z1").await;
    let u = z["uuid"].as_str().unwrap();
    // /zones/{uuid}/actions is shared by PUT actions only.
    for m in ["POST", "PATCH", "GET", "DELETE"] {
        let r = s
            .request(
                m,
                &format!("/zones/{u}/actions"),
                Some(json!({"updateZone": {"name": "x"}})),
                Some(&s.session),
                &[],
            )
            .await;
        assert_eq!(r.status, 405, "{m}: {}", r.text);
        assert_eq!(r.text, format!("The method[{m}] is not allowed for the path[/zstack/v1/zones/{u}/actions]"));
    }
    let r = s.request("PATCH", "/zones", Some(json!({"params": {"name": "x"}})), Some(&s.session), &[]).await;
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(zone_names(&s).await, ["z1"]);
}

#[tokio::test]
async fn rest_params_body_key() {
    let s = Server::start().await;
    let r = s.ok("POST", "/zones", Some(json!({"params": {"name": "z1", "description": "d1"}}))).await;
    assert_eq!(r["inventory"]["name"], "z1");
    assert_eq!(r["inventory"]["description"], "d1");
    // Fields outside `params` are not message fields: name is then missing.
    let err = s.fails("POST", "/zones", Some(json!({"name": "z2"}))).await;
    assert_error(&err, "SYS.1007", &format!("field[name] of message[{VALIDATOR}] is mandatory, can not be null"));
    // An empty body is a message with all fields unset.
    let r = s.request("POST", "/zones", None, Some(&s.session), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let p = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_eq!(p.status, 503);
    assert_error(&p.body["error"], "SYS.1007", "field[name]");
    assert_eq!(zone_names(&s).await, ["z1"]);
}

#[tokio::test]
async fn rest_validation_only_tag_top_level_and_inside_params() {
    let s = Server::start().await;
    // Top level.
    let r = s.ok("POST", "/zones", Some(json!({"params": {"name": "v1"}, "systemTags": ["validationOnly"]}))).await;
    assert_eq!(r, json!({}));
    // Inside params (as the Java SDK sends it), userTags alongside.
    let r = s
        .ok(
            "POST",
            "/zones",
            Some(json!({"params": {"name": "v2", "systemTags": ["validationOnly"], "userTags": ["u1"]}})),
        )
        .await;
    assert_eq!(r, json!({}));
    assert!(zone_names(&s).await.is_empty(), "validationOnly must not create anything");
    // validationOnly still runs the parameter checks.
    let err = s.fails("POST", "/zones", Some(json!({"params": {}, "systemTags": ["validationOnly"]}))).await;
    assert_error(&err, "SYS.1007", "field[name]");
    // userTags at the top level are accepted.
    let r = s.ok("POST", "/zones", Some(json!({"params": {"name": "real"}, "userTags": ["u1"]}))).await;
    assert_eq!(r["inventory"]["name"], "real");
    assert_eq!(zone_names(&s).await, ["real"]);
}

#[tokio::test]
async fn rest_top_level_tags_win_over_params_tags() {
    let s = Server::start().await;
    // params carries an unknown tag, the top level validationOnly: the top level wins.
    let r = s
        .ok(
            "POST",
            "/zones",
            Some(json!({"params": {"name": "a", "systemTags": ["bogusTag"]}, "systemTags": ["validationOnly"]})),
        )
        .await;
    assert_eq!(r, json!({}));
    // And the other way round: the unknown top-level tag is what is checked.
    let err = s
        .fails(
            "POST",
            "/zones",
            Some(json!({"params": {"name": "b", "systemTags": ["validationOnly"]}, "systemTags": ["bogusTag"]})),
        )
        .await;
    assert_error(&err, "SYS.1007", "no system tag matches bogusTag");
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn rest_unknown_system_tag_is_sys_1007() {
    let s = Server::start().await;
    let err = s.fails("POST", "/zones", Some(json!({"params": {"name": "z"}, "systemTags": ["noSuchTag::x"]}))).await;
    assert_error(&err, "SYS.1007", "no system tag matches noSuchTag::x");
    assert_eq!(err["details"], "no system tag matches noSuchTag::x");
    let err = s.fails("POST", "/zones", Some(json!({"params": {"name": "z", "systemTags": ["other"]}}))).await;
    assert_eq!(err["details"], "no system tag matches other");
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn rest_invalid_json_body_is_400() {
    let s = Server::start().await;
    for text in ["{\"params\": {\"name\": ", "not json", "[1, 2]"] {
        let r = s
            .http
            .post(s.url("/zones"))
            .header("Authorization", format!("OAuth {}", s.session))
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{text}");
    }
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn rest_boolean_type_check_is_400() {
    let s = Server::start().await;
    for (v, shown) in [(json!("maybe"), "maybe"), (json!("yes"), "yes"), (json!(1.5), "1.5")] {
        let r = s
            .request("POST", "/zones", Some(json!({"params": {"name": "z", "isDefault": v}})), Some(&s.session), &[])
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(
            r.text,
            format!(
                "Invalid value for boolean field [isDefault], [{shown}] is not a valid boolean string[true, false]."
            )
        );
    }
    assert!(zone_names(&s).await.is_empty());
    // true/false in any case are fine.
    let r = s.ok("POST", "/zones", Some(json!({"params": {"name": "z", "isDefault": "TRUE"}}))).await;
    assert_eq!(r["inventory"]["isDefault"], true);
    let r = s.ok("POST", "/zones", Some(json!({"params": {"name": "y", "isDefault": "false"}}))).await;
    assert_eq!(r["inventory"]["isDefault"], false);
}

#[tokio::test]
async fn rest_integer_type_check_is_400() {
    let s = Server::start().await;
    let path = format!("/accounts/sessions/{}/renew", s.session);
    for (v, shown) in [(json!("abc"), "abc"), (json!(1.5), "1.5"), (json!("600.5"), "600.5")] {
        let r = s.request("PUT", &path, Some(json!({"renewSession": {"duration": v}})), Some(&s.session), &[]).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.text, format!("[duration] field is excepted an int or long, but was [{shown}]."));
    }
    // An integral value, also as a string, is accepted.
    let r = s.ok("PUT", &path, Some(json!({"renewSession": {"duration": "600"}}))).await;
    let inv = &r["inventory"];
    assert!(date_of(&inv["expiredDate"]) - date_of(&inv["createDate"]) >= 600);
}

#[tokio::test]
async fn rest_delete_params_from_query_string() {
    let s = Server::start().await;
    let a = s.create_zone("a").await;
    let b = s.create_zone("b").await;
    let (ua, ub) = (a["uuid"].as_str().unwrap(), b["uuid"].as_str().unwrap());
    // An invalid deleteMode in the query string is checked like a body field.
    let err = s.fails("DELETE", &format!("/zones/{ua}?deleteMode=Bogus"), None).await;
    assert_error(
        &err,
        "SYS.1007",
        &format!(
            "valid value for field[deleteMode] of message[{VALIDATOR}] are [Permissive, Enforcing], but Bogus found"
        ),
    );
    assert_eq!(zone_names(&s).await, ["a", "b"]);
    let r = s.ok("DELETE", &format!("/zones/{ua}?deleteMode=Permissive"), None).await;
    assert_eq!(r, json!({}));
    assert_eq!(zone_names(&s).await, ["b"]);
    let r = s.ok("DELETE", &format!("/zones/{ub}?deleteMode=Enforcing&unknownKey=1"), None).await;
    assert_eq!(r, json!({}));
    assert!(zone_names(&s).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn job_location_echoes_host_header_and_default_timeout() {
    let s = Server::start().await;
    let r = post_zone(&s, json!({"params": {"name": "z"}}), &[("Host", "mn.example.com:8080")]).await;
    let loc = r["location"].as_str().unwrap();
    let job = job_uuid_of(&r["location"]);
    assert!(is_hex32(&job), "{loc}");
    assert_eq!(loc, format!("http://mn.example.com:8080/zstack/v1/api-jobs/{job}"));
    assert_eq!(r["apiTimeout"], json!(1800000));
    assert!(r["apiTimeout"].is_u64());
    assert_eq!(r.as_object().unwrap().len(), 2, "{r}");
    // Without a custom Host header the location is this server's address.
    let r = post_zone(&s, json!({"params": {"name": "y"}}), &[]).await;
    let job2 = job_uuid_of(&r["location"]);
    assert_eq!(r["location"], format!("http://127.0.0.1:{}/zstack/v1/api-jobs/{job2}", s.port));
    assert_ne!(job, job2);
    assert_eq!(s.poll(&s.url(&format!("/api-jobs/{job}"))).await.status, 200);
    assert_eq!(s.poll(r["location"].as_str().unwrap()).await.status, 200);
}

#[tokio::test]
async fn job_api_timeout_header() {
    let s = Server::start().await;
    let r = post_zone(&s, json!({"params": {"name": "z"}}), &[("X-API-Timeout", "60")]).await;
    assert_eq!(r["apiTimeout"], json!(60000));
    assert_eq!(s.poll(r["location"].as_str().unwrap()).await.status, 200);
}

#[tokio::test]
async fn job_poll_202_while_running_then_200() {
    let s = Server::start_with_env(delay_env(3000)).await;
    let r = post_zone(&s, json!({"params": {"name": "slow"}}), &[]).await;
    let loc = r["location"].as_str().unwrap().to_string();
    let p = s.request("GET", &loc, None, None, &[]).await;
    assert_eq!(p.status, 202, "{}", p.text);
    assert_eq!(p.body, json!({}));
    let done = s.poll(&loc).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert_eq!(done.body["inventory"]["name"], "slow");
    assert_eq!(zone_names(&s).await, ["slow"]);
}

#[tokio::test]
async fn job_poll_schema_only_with_header() {
    let s = Server::start().await;
    let r = post_zone(&s, json!({"params": {"name": "z"}}), &[]).await;
    let loc = r["location"].as_str().unwrap().to_string();
    let with = s.poll(&loc).await; // the harness poll sends X-JSON-Schema
    assert_eq!(with.status, 200);
    assert_eq!(with.body["schema"]["inventory"], "org.zstack.header.zone.ZoneInventory");
    let without = s.request("GET", &loc, None, None, &[]).await;
    assert_eq!(without.status, 200);
    assert!(without.body.get("schema").is_none(), "{}", without.text);
    assert_eq!(without.body["inventory"], with.body["inventory"]);
    assert_eq!(without.body.as_object().unwrap().len(), 1);
    // The job result can be polled again (with the session header too).
    let again = s.request("GET", &loc, None, Some(&s.session), &[]).await;
    assert_eq!(again.body, without.body);
}

#[tokio::test]
async fn job_failure_is_503_with_error_object() {
    let s = Server::start().await;
    let r = post_zone(&s, json!({"params": {"description": "no name"}}), &[]).await;
    let p = s.request("GET", r["location"].as_str().unwrap(), None, None, &[("X-JSON-Schema", "true")]).await;
    let p = if p.status == 202 { s.poll(r["location"].as_str().unwrap()).await } else { p };
    assert_eq!(p.status, 503, "{}", p.text);
    let obj = p.body.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["error"]);
    let e = &p.body["error"];
    assert_eq!(e["code"], "SYS.1007");
    assert_eq!(e["description"], "One or more API argument is invalid");
    assert_eq!(e["details"], format!("field[name] of message[{VALIDATOR}] is mandatory, can not be null"));
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn job_unknown_uuid_is_404_and_non_get_is_405() {
    let s = Server::start().await;
    let r = s.request("GET", &format!("/api-jobs/{}", uuid32()), None, None, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text, "the job has been expired");
    let r = s.request("GET", "/api-jobs/not-a-uuid", None, None, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text, "the job has been expired");
    let r = post_zone(&s, json!({"params": {"name": "z"}}), &[]).await;
    let loc = r["location"].as_str().unwrap().to_string();
    for m in ["PUT", "POST", "DELETE"] {
        let r = s.request(m, &loc, Some(json!({})), Some(&s.session), &[]).await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.text, "only GET method is allowed for querying job status");
    }
    // Polling needs no Authorization.
    let p = s.poll(&loc).await;
    assert_eq!(p.status, 200);
    assert_eq!(zone_names(&s).await, ["z"]);
}

#[tokio::test]
async fn job_x_job_uuid_header() {
    let s = Server::start().await;
    let job = uuid32();
    let r = post_zone(&s, json!({"params": {"name": "z"}}), &[("X-Job-UUID", &job)]).await;
    assert_eq!(r["location"], format!("http://127.0.0.1:{}/zstack/v1/api-jobs/{job}", s.port));
    let p = s.poll(&s.url(&format!("/api-jobs/{job}"))).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.body["inventory"]["name"], "z");

    // Reused → 400, nothing done.
    let r = s
        .request(
            "POST",
            "/zones",
            Some(json!({"params": {"name": "again"}})),
            Some(&s.session),
            &[("X-Job-UUID", &job)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text, format!("Duplicate job uuid[{job}]"));
    // Also on DELETE and PUT.
    let u = p.body["inventory"]["uuid"].as_str().unwrap().to_string();
    let r = s.request("DELETE", &format!("/zones/{u}"), None, Some(&s.session), &[("X-Job-UUID", &job)]).await;
    assert_eq!((r.status, r.text.as_str()), (400, format!("Duplicate job uuid[{job}]").as_str()));
    let r = s
        .request(
            "PUT",
            &format!("/zones/{u}/actions"),
            Some(json!({"updateZone": {"name": "n"}})),
            Some(&s.session),
            &[("X-Job-UUID", &job)],
        )
        .await;
    assert_eq!(r.status, 400);

    // Not 32 characters → 400.
    for bad in ["abc", "36c27e8f-f05c-4780-bf6d-2fa65700f22e", &format!("{job}0")] {
        let r = s
            .request(
                "POST",
                "/zones",
                Some(json!({"params": {"name": "bad"}})),
                Some(&s.session),
                &[("X-Job-UUID", bad)],
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.text, "Invalid header[X-Job-UUID], it must be a UUID with '-' stripped");
    }
    assert_eq!(zone_names(&s).await, ["z"]);
    // The first job's result is unchanged.
    assert_eq!(s.poll(&s.url(&format!("/api-jobs/{job}"))).await.body, p.body);
}

// --- web hooks --------------------------------------------------------------------------

struct Hook {
    /// Answer 500 to this many first calls.
    fail_first: usize,
    calls: AtomicUsize,
    tx: tokio::sync::mpsc::UnboundedSender<(axum::http::HeaderMap, String)>,
}

async fn hook_handler(
    axum::extract::State(h): axum::extract::State<Arc<Hook>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    let n = h.calls.fetch_add(1, Ordering::SeqCst);
    let _ = h.tx.send((headers, body));
    if n < h.fail_first {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        axum::http::StatusCode::OK
    }
}

/// A web-hook receiver on 127.0.0.1:0; returns its URL and the stream of calls.
async fn start_hook(
    fail_first: usize,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, String)>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let h = Arc::new(Hook { fail_first, calls: AtomicUsize::new(0), tx });
    let app = axum::Router::new().route("/hook", axum::routing::post(hook_handler)).with_state(h);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (format!("http://{addr}/hook"), rx)
}

async fn next_call(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(axum::http::HeaderMap, String)>,
) -> (axum::http::HeaderMap, String) {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("web hook not called in time")
        .expect("hook channel closed")
}

fn hdr<'a>(h: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn webhook_success_and_failure() {
    let s = Server::start().await;
    let (url, mut rx) = start_hook(0).await;

    let job = uuid32();
    let r = post_zone(&s, json!({"params": {"name": "hooked"}}), &[("X-Web-Hook", &url), ("X-Job-UUID", &job)]).await;
    let (h, body) = next_call(&mut rx).await;
    assert_eq!(hdr(&h, "x-job-uuid"), job);
    assert_eq!(hdr(&h, "x-job-success"), "true");
    assert!(hdr(&h, "content-type").starts_with("application/json"), "{:?}", h);
    let p = s.request("GET", r["location"].as_str().unwrap(), None, None, &[]).await;
    assert_eq!(p.status, 200);
    let hook_body: Value = serde_json::from_str(&body).expect("hook body is JSON");
    assert_eq!(hook_body, p.body);
    assert_eq!(hook_body["inventory"]["name"], "hooked");

    let job = uuid32();
    let r = post_zone(&s, json!({"params": {}}), &[("X-Web-Hook", &url), ("X-Job-UUID", &job)]).await;
    let (h, body) = next_call(&mut rx).await;
    assert_eq!(hdr(&h, "x-job-uuid"), job);
    assert_eq!(hdr(&h, "x-job-success"), "false");
    let p = s.request("GET", r["location"].as_str().unwrap(), None, None, &[]).await;
    assert_eq!(p.status, 503);
    let hook_body: Value = serde_json::from_str(&body).expect("hook body is JSON");
    assert_eq!(hook_body, p.body);
    assert_error(&hook_body["error"], "SYS.1007", "field[name]");
    assert_eq!(zone_names(&s).await, ["hooked"]);
}

#[tokio::test]
async fn webhook_retried_after_error_answer() {
    let s = Server::start().await;
    let (url, mut rx) = start_hook(1).await;
    let job = uuid32();
    let r = post_zone(&s, json!({"params": {"name": "retry"}}), &[("X-Web-Hook", &url), ("X-Job-UUID", &job)]).await;
    let (h1, b1) = next_call(&mut rx).await; // answered 500
    let (h2, b2) = next_call(&mut rx).await; // the retry, answered 200
    assert_eq!(hdr(&h1, "x-job-uuid"), job);
    assert_eq!(hdr(&h2, "x-job-uuid"), job);
    assert_eq!(hdr(&h2, "x-job-success"), "true");
    assert_eq!(b1, b2);
    // The job stays pollable and the body is the poll result.
    let p = s.request("GET", r["location"].as_str().unwrap(), None, None, &[]).await;
    assert_eq!(p.status, 200);
    assert_eq!(serde_json::from_str::<Value>(&b2).unwrap(), p.body);
    // No more calls after a 2xx.
    assert!(tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.is_err(), "called again after a 200");
}

// ---------------------------------------------------------------------------------------
// Crashes and shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn crash_during_job_resumes_after_restart() {
    let mut s = Server::start_with_env(delay_env(3000)).await;
    let job = uuid32();
    post_zone(&s, json!({"params": {"name": "crash"}}), &[("X-Job-UUID", &job)]).await;
    let path = format!("/api-jobs/{job}");
    assert_eq!(s.request("GET", &path, None, None, &[]).await.status, 202);
    s.kill9();
    s.restart().await;
    let p = s.poll(&s.url(&path)).await; // 60 s deadline
    assert!(p.status == 200 || p.status == 503, "job stayed {}: {}", p.status, p.text);
    let zones = s.query("/zones").await;
    if p.status == 200 {
        assert_eq!(zones.len(), 1, "{zones:?}");
        assert_eq!(zones[0]["name"], "crash");
        assert_eq!(zones[0]["uuid"], p.body["inventory"]["uuid"]);
    } else {
        assert!(zones.len() <= 1);
    }
    // After the crash the session is still good and the job uuid still taken.
    let r = s
        .request("POST", "/zones", Some(json!({"params": {"name": "x"}})), Some(&s.session), &[("X-Job-UUID", &job)])
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn crash_resumed_create_keeps_resource_uuid() {
    // resourceUuid fixed by the caller: the resumed job makes exactly that zone, once.
    let mut s = Server::start_with_env(delay_env(3000)).await;
    let ru = uuid32(); // a UUID4: matches upstream's resourceUuid pattern
    let r = post_zone(&s, json!({"params": {"name": "fixed", "resourceUuid": ru}}), &[]).await;
    let job = job_uuid_of(&r["location"]);
    s.kill9();
    s.restart().await;
    let p = s.poll(&s.url(&format!("/api-jobs/{job}"))).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert_eq!(p.body["inventory"]["uuid"], ru.as_str());
    let zones = s.query("/zones").await;
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0]["uuid"], ru.as_str());
}

#[tokio::test]
async fn crash_three_times_fails_job_with_sys_1000() {
    let mut s = Server::start_with_env(delay_env(6000)).await;
    let job = uuid32();
    post_zone(&s, json!({"params": {"name": "doomed"}}), &[("X-Job-UUID", &job)]).await;
    let path = format!("/api-jobs/{job}");
    assert_eq!(s.request("GET", &path, None, None, &[]).await.status, 202);
    for attempt in 2..=3 {
        s.restart().await; // kill -9, start again: the job is resumed
        let r = s.request("GET", &path, None, None, &[]).await;
        assert_eq!(r.status, 202, "attempt {attempt} should be running: {}", r.text);
    }
    s.restart().await;
    let p = s.poll(&s.url(&path)).await;
    assert_eq!(p.status, 503, "{}", p.text);
    assert_error(&p.body["error"], "SYS.1000", &format!("job[uuid:{job}]"));
    assert_eq!(p.body["error"]["description"], "An internal error happened in system");
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn sigterm_is_clean_and_data_survives() {
    let mut s = Server::start().await;
    let z = s.create_zone("kept").await;
    assert!(s.terminate(), "SIGTERM must end the server with exit status 0");
    s.restart().await;
    let zones = s.query("/zones").await;
    assert_eq!(zones.len(), 1);
    assert_eq!(zones[0], z);
    // The session made before the restart still works.
    let v = s.request("GET", &format!("/accounts/sessions/{}/valid", s.session), None, None, &[]).await;
    assert_eq!(v.body, json!({"valid": true}));
}

#[tokio::test]
async fn sigterm_waits_for_running_job() {
    let mut s = Server::start_with_env(delay_env(2000)).await;
    let job = uuid32();
    post_zone(&s, json!({"params": {"name": "finishing"}}), &[("X-Job-UUID", &job)]).await;
    assert!(s.terminate(), "SIGTERM must end the server with exit status 0");
    s.restart().await;
    let p = s.request("GET", &format!("/api-jobs/{job}"), None, None, &[]).await;
    assert_eq!(p.status, 200, "the running job should have finished before exit: {}", p.text);
    assert_eq!(zone_names(&s).await, ["finishing"]);
}

// ---------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------

async fn login_raw(s: &Server, password: &str, headers: &[(&str, &str)]) -> Resp {
    s.request(
        "PUT",
        "/accounts/login",
        Some(json!({"logInByAccount": {"accountName": "admin", "password": password}})),
        None,
        headers,
    )
    .await
}

#[tokio::test]
async fn session_login_inventory() {
    let s = Server::start().await;
    let r = login_raw(&s, ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body.as_object().unwrap().keys().collect::<Vec<_>>(), ["inventory"]);
    let inv = &r.body["inventory"];
    assert!(is_hex32(inv["uuid"].as_str().unwrap()));
    assert_ne!(inv["uuid"], s.session.as_str());
    assert_eq!(inv["accountUuid"], "36c27e8ff05c4780bf6d2fa65700f22e");
    assert_eq!(inv["userUuid"], "36c27e8ff05c4780bf6d2fa65700f22e");
    assert_eq!(inv["noSessionEvaluation"], false);
    // Default identity.session.timeout is 7200 s.
    assert_eq!(date_of(&inv["expiredDate"]) - date_of(&inv["createDate"]), 7200);
    // With X-JSON-Schema the reply carries the schema.
    let r = login_raw(&s, ADMIN_PASSWORD, &[("X-JSON-Schema", "true")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["schema"]["inventory"], "org.zstack.header.identity.SessionInventory");
    // The new session works.
    let u = r.body["inventory"]["uuid"].as_str().unwrap();
    let q = s.request("GET", "/zones", None, Some(u), &[]).await;
    assert_eq!(q.status, 200);
}

#[tokio::test]
async fn session_wrong_password_is_id_1000() {
    let s = Server::start().await;
    let r = login_raw(&s, "5f4dcc3b5aa765d61d8327deb882cf99", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let e = &r.body["error"];
    assert_eq!(e["code"], "ID.1000");
    assert_eq!(e["description"], "Unable to authenticate a user");
    assert_eq!(e["details"], "wrong account name or password");
    let r = s
        .request(
            "PUT",
            "/accounts/login",
            Some(json!({"logInByAccount": {"accountName": "nobody", "password": ADMIN_PASSWORD}})),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.body["error"]["code"], "ID.1000");
    // Missing password: a parameter error.
    let r =
        s.request("PUT", "/accounts/login", Some(json!({"logInByAccount": {"accountName": "admin"}})), None, &[]).await;
    assert_eq!(r.status, 503);
    assert_error(&r.body["error"], "SYS.1007", "field[password]");
}

#[tokio::test]
async fn session_authorization_header_checks() {
    let s = Server::start().await;
    let r = s.request("GET", "/zones", None, None, &[]).await;
    assert_eq!((r.status, r.text.as_str()), (400, "missing header 'Authorization'"));
    let r = s.request("POST", "/zones", Some(json!({"params": {"name": "z"}})), None, &[]).await;
    assert_eq!((r.status, r.text.as_str()), (400, "missing header 'Authorization'"));
    for auth in ["Basic x", "Bearer abc", &format!("ZStacky {}", s.session)] {
        let r = s.request("GET", "/zones", None, None, &[("Authorization", auth)]).await;
        assert_eq!((r.status, r.text.as_str()), (400, "Authorization type must be 'OAuth'"), "{auth}");
        let r =
            s.request("POST", "/zones", Some(json!({"params": {"name": "z"}})), None, &[("Authorization", auth)]).await;
        assert_eq!((r.status, r.text.as_str()), (400, "Authorization type must be 'OAuth'"), "{auth}");
    }
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn session_unknown_on_query_and_async() {
    let s = Server::start().await;
    let bogus = uuid32();
    let r = s.request("GET", "/zones", None, Some(&bogus), &[]).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let e = &r.body["error"];
    assert_eq!(e["code"], "ID.1001");
    assert_eq!(e["description"], "The session is invalid, either wrong session id or the session has been expired");
    assert_eq!(e["details"], "Session expired");
    // Async: accepted, then the job fails.
    let r = s.request("POST", "/zones", Some(json!({"params": {"name": "z"}})), Some(&bogus), &[]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let p = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_eq!(p.status, 503);
    assert_error(&p.body["error"], "ID.1001", "Session expired");
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn session_parameter_errors_come_before_session_errors() {
    let s = Server::start().await;
    let bogus = uuid32();
    let r = s.request("POST", "/zones", Some(json!({"params": {}})), Some(&bogus), &[]).await;
    assert_eq!(r.status, 202);
    let p = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_eq!(p.status, 503);
    assert_error(&p.body["error"], "SYS.1007", "field[name]");
    // Same on an action API with an invalid value.
    let z = s.create_zone("z").await;
    let r = s
        .request(
            "PUT",
            &format!("/zones/{}/actions", z["uuid"].as_str().unwrap()),
            Some(json!({"changeZoneState": {"stateEvent": "explode"}})),
            Some(&bogus),
            &[],
        )
        .await;
    assert_eq!(r.status, 202);
    let p = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_error(&p.body["error"], "SYS.1007", "stateEvent");
    assert_eq!(s.query("/zones").await[0]["state"], "Enabled");
}

#[tokio::test]
async fn session_validate_and_logout() {
    let s = Server::start().await;
    let other = s.login().await;
    let valid = |u: String| {
        let s = &s;
        async move { s.request("GET", &format!("/accounts/sessions/{u}/valid"), None, None, &[]).await }
    };
    let r = valid(other.clone()).await;
    assert_eq!((r.status, &r.body), (200, &json!({"valid": true})));
    let r = valid(uuid32()).await;
    assert_eq!((r.status, &r.body), (200, &json!({"valid": false})));

    // Logout needs no Authorization.
    let r = s.request("DELETE", &format!("/accounts/sessions/{other}"), None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({}));
    assert_eq!(valid(other.clone()).await.body, json!({"valid": false}));
    let q = s.request("GET", "/zones", None, Some(&other), &[]).await;
    assert_eq!(q.status, 503);
    assert_eq!(q.body["error"]["code"], "ID.1001");
    // Logging out twice is fine; the admin session is untouched.
    let r = s.request("DELETE", &format!("/accounts/sessions/{other}"), None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(valid(s.session.clone()).await.body, json!({"valid": true}));
}

#[tokio::test]
async fn session_renew() {
    let s = Server::start().await;
    let other = s.login().await;
    let path = format!("/accounts/sessions/{other}/renew");
    let r = s.request("PUT", &path, Some(json!({"renewSession": {"duration": 600}})), Some(&other), &[]).await;
    assert_eq!(r.status, 202, "renew is async: {}", r.text);
    let p = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_eq!(p.status, 200, "{}", p.text);
    let inv = &p.body["inventory"];
    assert_eq!(inv["uuid"], other.as_str());
    assert_eq!(inv["accountUuid"], "36c27e8ff05c4780bf6d2fa65700f22e");
    // expiredDate ≈ now + 600 s (createDate is the login time, a moment ago).
    let d = date_of(&inv["expiredDate"]) - date_of(&inv["createDate"]);
    assert!((600..=660).contains(&d), "expiredDate - createDate = {d}");
    assert_eq!(p.body["schema"]["inventory"], "org.zstack.header.identity.SessionInventory");
    let v = s.request("GET", &format!("/accounts/sessions/{other}/valid"), None, None, &[]).await;
    assert_eq!(v.body, json!({"valid": true}));

    // Out of range: SYS.1007, expiry unchanged.
    for bad in [10, 59, 31536001i64] {
        let r = s.request("PUT", &path, Some(json!({"renewSession": {"duration": bad}})), Some(&other), &[]).await;
        assert_eq!(r.status, 202);
        let p = s.poll(r.body["location"].as_str().unwrap()).await;
        assert_eq!(p.status, 503);
        assert_error(&p.body["error"], "SYS.1007", "field[duration] must be in range of [60, 31536000]");
    }
    let again = s.ok("PUT", &path, Some(json!({"renewSession": {"duration": 60}}))).await;
    let d = date_of(&again["inventory"]["expiredDate"]) - date_of(&again["inventory"]["createDate"]);
    assert!((60..=120).contains(&d), "{d}");
}

#[tokio::test]
async fn session_expires_after_identity_session_timeout() {
    let mut s = Server::start().await;
    // UpdateGlobalConfig is not available yet: write the config and restart.
    s.write_global_config("identity", "session.timeout", "3").await;
    s.restart().await;
    let r = login_raw(&s, ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status, 200);
    let inv = &r.body["inventory"];
    assert_eq!(date_of(&inv["expiredDate"]) - date_of(&inv["createDate"]), 3);
    let short = inv["uuid"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let v = s.request("GET", &format!("/accounts/sessions/{short}/valid"), None, None, &[]).await;
    assert_eq!(v.body, json!({"valid": false}));
    let q = s.request("GET", "/zones", None, Some(&short), &[]).await;
    assert_eq!(q.status, 503);
    assert_error(&q.body["error"], "ID.1001", "Session expired");
    let r = s.request("POST", "/zones", Some(json!({"params": {"name": "z"}})), Some(&short), &[]).await;
    assert_eq!(r.status, 202);
    let p = s.poll(r.body["location"].as_str().unwrap()).await;
    assert_error(&p.body["error"], "ID.1001", "Session expired");
    // The admin session from before the change (7200 s) still works.
    assert!(zone_names(&s).await.is_empty());
}

#[tokio::test]
async fn session_max_concurrent_is_id_1006() {
    let mut s = Server::start().await;
    s.write_global_config("identity", "session.maxConcurrent", "2").await;
    s.restart().await;
    // The harness session is the first; one more fits.
    let second = s.login().await;
    let r = login_raw(&s, ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_error(&r.body["error"], "ID.1006", "Login sessions hit limit of max allowed concurrent login sessions");
    // Logging one out makes room again.
    let r = s.request("DELETE", &format!("/accounts/sessions/{second}"), None, None, &[]).await;
    assert_eq!(r.status, 200);
    let r = login_raw(&s, ADMIN_PASSWORD, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

// ---------------------------------------------------------------------------------------
// Management node
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn mn_get_version() {
    let s = Server::start().await;
    let r = s.request("PUT", "/management-nodes/actions", Some(json!({"getVersion": {}})), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.body["version"].as_str().expect("version string");
    assert!(!v.is_empty() && v.split('.').all(|p| p.parse::<u32>().is_ok()), "{v}");
    // upstream maps every reply field: {"success": true, "version": ...}
    assert_eq!(r.body["success"], true);
    assert_eq!(r.body.as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn mn_ready_and_query() {
    let s = Server::start().await;
    let r = s.request("GET", "/management-nodes/ready", None, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({}));
    let r = s.request("GET", "/management-nodes", None, None, &[]).await;
    assert_eq!((r.status, r.text.as_str()), (400, "missing header 'Authorization'"));
    let r = s.get("/management-nodes").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let nodes = r.body["inventories"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let n = &nodes[0];
    assert!(is_hex32(n["uuid"].as_str().unwrap()));
    assert_eq!(n["hostName"], "127.0.0.1");
    let join = date_of(&n["joinDate"]);
    let beat = date_of(&n["heartBeat"]);
    assert!(beat >= join);
    assert_eq!(r.body["schema"]["inventories[0]"], "org.zstack.header.managementnode.ManagementNodeInventory");
}

// ---------------------------------------------------------------------------------------
// schema order (official Java SDK)
// ---------------------------------------------------------------------------------------

/// Every schema key that extends another key of the map (`a.b[0]` extends `a`) comes after it.
fn assert_parents_first(schema: &Value) {
    let keys: Vec<&String> = schema.as_object().expect("schema map").keys().collect();
    for (i, k) in keys.iter().enumerate() {
        for (j, p) in keys.iter().enumerate() {
            if k.starts_with(&format!("{p}.")) {
                assert!(j < i, "{p} must come before {k}: {keys:?}");
            }
        }
    }
}

/// The Java SDK (`ApiResult.getResult`) walks `schema` in map order and rebuilds each path from
/// the raw JSON with its SDK class: a child listed before its parent is lost when the parent is
/// rebuilt (found with the SDK: `vmNics[0].usedIps` and a query's `inventories[0].vmNics` stayed
/// raw maps). Upstream lists every parent before its children, in single and query replies.
#[tokio::test]
async fn schema_lists_parents_before_children() {
    let s = Server::start().await;
    let zone = s.create_zone("z").await["uuid"].as_str().unwrap().to_string();
    let l2 = s
        .ok(
            "POST",
            "/l2-networks/no-vlan",
            Some(json!({"params": {"name": "l2", "zoneUuid": zone, "physicalInterface": "eth0"}})),
        )
        .await["inventory"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let l3 = s.ok("POST", "/l3-networks", Some(json!({"params": {"name": "l3", "l2NetworkUuid": l2}}))).await
        ["inventory"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    for (a, b) in [("10", "20"), ("30", "40")] {
        s.ok(
            "POST",
            &format!("/l3-networks/{l3}/ip-ranges"),
            Some(
                json!({"params": {"name": "r", "startIp": format!("192.168.7.{a}"), "endIp": format!("192.168.7.{b}"),
                "netmask": "255.255.255.0", "gateway": "192.168.7.1"}}),
            ),
        )
        .await;
    }
    // single inventory (async job reply)
    let body =
        s.ok("PUT", &format!("/l3-networks/{l3}/actions"), Some(json!({"updateL3Network": {"name": "l3b"}}))).await;
    let schema = &body["schema"];
    assert_eq!(schema["inventory"], "org.zstack.header.network.l3.L3NetworkInventory", "{schema}");
    assert_eq!(schema["inventory.ipRanges[1]"], "org.zstack.header.network.l3.IpRangeInventory", "{schema}");
    assert_eq!(schema.as_object().unwrap().keys().next().map(String::as_str), Some("inventory"), "{schema}");
    assert_parents_first(schema);
    // query reply
    let r = s.get(&format!("/l3-networks?q=uuid={l3}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let schema = &r.body["schema"];
    assert_eq!(schema["inventories[0].ipRanges[0]"], "org.zstack.header.network.l3.IpRangeInventory", "{schema}");
    assert_eq!(schema.as_object().unwrap().keys().next().map(String::as_str), Some("inventories[0]"), "{schema}");
    assert_parents_first(schema);
}
