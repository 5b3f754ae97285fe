//! `docs/openapi.json`, the API document for client developers, checked
//! against the server: every admin route of the router is a path of the
//! document and the other way round, each with the methods the router
//! gives it and the role the one access table asks
//! (`access::required_role`); the error codes it lists are those the
//! server answers; and real answers carry the fields its schemas require
//! (here, and in every test through `support::openapi::check`).

use serde_json::Value;

mod support;

use support::{CODE, TestServer};

const DOC: &str = include_str!("../docs/openapi.json");
const ADMIN_SOURCE: &str = include_str!("../src/net/admin.rs");
const ERROR_SOURCE: &str = include_str!("../src/net/error.rs");

fn doc() -> Value {
    serde_json::from_str(DOC).expect("docs/openapi.json is JSON")
}

/// The router's routes (axum templates) and the methods each takes, read
/// from its source: `.route("path", get(a).put(b))`.
fn routes() -> Vec<(String, Vec<String>)> {
    ADMIN_SOURCE
        .split(".route(")
        .skip(1)
        .filter_map(|rest| {
            let path = rest
                .trim_start()
                .strip_prefix('"')?
                .split('"')
                .next()?
                .to_owned();
            let call = rest.split_once("\n        .").map_or(rest, |(c, _)| c);
            let methods = ["get", "put", "post", "delete"]
                .into_iter()
                .filter(|m| {
                    call.contains(&format!("{m}(")) && !call.contains(&format!("_{m}("))
                        || call.contains(&format!(".{m}("))
                        || call.contains(&format!("routing::{m}("))
                })
                .map(str::to_owned)
                .collect();
            Some((path, methods))
        })
        .collect()
}

/// An axum template as OpenAPI writes it: `{*ip}` is `{ip}`.
fn openapi_path(route: &str) -> String {
    route.replace("{*", "{")
}

/// The committed document is the one the code generates
/// (`homecmp::net::openapi`); `HOMECMP_BLESS=1` writes it again.
#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = homecmp::net::openapi::json();
    if std::env::var_os("HOMECMP_BLESS").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        std::fs::write(path, generated).expect("docs/openapi.json written");
        return;
    }
    assert!(
        DOC == generated,
        "docs/openapi.json is not what the code generates: run \
         `HOMECMP_BLESS=1 cargo test --test openapi the_committed_document` and commit it"
    );
}

#[test]
fn every_route_is_documented_with_its_methods_and_role() {
    let doc = doc();
    let paths = doc["paths"].as_object().unwrap();
    let routes = routes();
    assert!(routes.len() >= 10, "{routes:?}");
    for (route, methods) in &routes {
        let path = openapi_path(route);
        let item = paths
            .get(&path)
            .unwrap_or_else(|| panic!("{path} is not in docs/openapi.json"));
        assert!(
            !methods.is_empty(),
            "{route}: no method read from the source"
        );
        for method in methods {
            let op = item
                .get(method.as_str())
                .unwrap_or_else(|| panic!("{method} {path} is not documented"));
            let http_method: http::Method = method.to_uppercase().parse().unwrap();
            let role = homecmp::access::required_role(&http_method, route).map(|r| r.name());
            let documented = op["x-required-role"].as_str();
            match route.as_str() {
                open if homecmp::access::OPEN_ROUTES.contains(&open) => {
                    assert_eq!(documented, None, "{method} {path}");
                    assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
                }
                _ => assert_eq!(documented, role, "{method} {path}"),
            }
        }
        for documented in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&documented.as_str()) {
                assert!(
                    methods.contains(documented),
                    "{documented} {path} is documented but not routed"
                );
            }
        }
    }
    for path in paths.keys() {
        let routed =
            path == "/mc/v1/resolve" || routes.iter().any(|(r, _)| openapi_path(r) == *path);
        assert!(routed, "{path} is documented but not routed");
    }
}

#[test]
fn the_error_codes_are_the_servers() {
    let doc = doc();
    let documented: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let codes = homecmp::net::error::ErrorCode::ALL;
    let declared: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    assert_eq!(documented, declared);
    // Each code is one some refusal answers: `=> (StatusCode::X, ErrorCode::Y)`
    // in one of the two tables of src/net/error.rs.
    let tables = ERROR_SOURCE.split("fn wire").skip(1).collect::<String>();
    for code in codes {
        let variant = format!("ErrorCode::{code:?}");
        let answered = tables.match_indices(&variant).any(|(at, _)| {
            let next = tables[at + variant.len()..].chars().next();
            !next.is_some_and(char::is_alphanumeric)
        });
        assert!(
            answered,
            "{} is declared but no refusal answers it",
            code.as_str()
        );
    }
}

/// The keys `schema` (a `$ref` into the document) requires are in `value`.
fn conforms(schema: &str, value: &Value) {
    let required = support::openapi::required(schema);
    assert!(!required.is_empty(), "{schema} requires nothing");
    for key in required {
        assert!(
            value.get(&key).is_some(),
            "{schema} requires {key}: {value}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_have_what_the_schemas_require() {
    let doc = doc();
    let server = TestServer::ready("").await;
    let (_, code) = server
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/codes/{CODE}"),
            None,
        )
        .await;
    conforms("Code", &code);
    let (_, stats) = server
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/codes/{CODE}/stats"),
            None,
        )
        .await;
    conforms("CodeStats", &stats);
    let (_, page) = server
        .admin(reqwest::Method::GET, "/admin/v1/audit", None)
        .await;
    conforms("AuditPage", &page);
    let mno = server.client("http2", "127.1.0.1");
    let (status, resolved) = server
        .resolve(&mno, &format!("code={CODE}&clientid=openapi-app"))
        .await;
    assert_eq!(status, 200);
    conforms("Resolved", &resolved);
    let (_, association) = server
        .admin(
            reqwest::Method::GET,
            "/admin/v1/associations/openapi-app",
            None,
        )
        .await;
    conforms("Association", &association);
    let (_, subscriber) = server
        .admin(
            reqwest::Method::GET,
            "/admin/v1/subscribers/+447700900001",
            None,
        )
        .await;
    conforms("Subscriber", &subscriber);
    let (_, status) = server
        .admin(reqwest::Method::GET, "/admin/v1/status", None)
        .await;
    conforms("Status", &status);
    // The document is served as committed.
    let (_, served) = server
        .admin(reqwest::Method::GET, "/admin/v1/openapi.json", None)
        .await;
    assert_eq!(served, doc);
    let (status, refusal) = server.resolve(&mno, &format!("code={CODE}")).await;
    assert_eq!(status, 401);
    conforms("Error", &refusal);
    server.stop().await;
}

/// The check every admin answer of the integration tests goes through
/// (`support::openapi::check`, called by the support helpers) fails on a
/// status the document does not list, and on a body without a field its
/// schema requires.
#[test]
#[should_panic(expected = "which docs/openapi.json does not list")]
fn an_undocumented_status_fails_the_test_that_met_it() {
    let body = serde_json::json!({});
    support::openapi::check(&reqwest::Method::GET, "/admin/v1/status", 418, &body);
}

#[test]
#[should_panic(expected = "without target, which Code requires")]
fn an_answer_missing_a_required_field_fails_the_test_that_met_it() {
    let body = serde_json::json!({"code": CODE, "seq": 1});
    support::openapi::check(
        &reqwest::Method::GET,
        "/admin/v1/codes/2001000001x",
        200,
        &body,
    );
}

#[test]
fn an_ipv6_prefix_is_one_path_parameter_and_stats_are_not_the_code() {
    let none = serde_json::json!({"status": 404, "code": "NO_SESSION", "message": "no session"});
    support::openapi::check(
        &reqwest::Method::GET,
        "/admin/v1/sessions/::/64",
        404,
        &none,
    );
    let zero = serde_json::json!({"associated": 0, "first_scan": 0});
    let stats = serde_json::json!({
        "code": CODE, "resolutions": 1, "http1": zero, "http2": zero, "http3": zero
    });
    let path = format!("/admin/v1/codes/{CODE}/stats");
    support::openapi::check(&reqwest::Method::GET, &path, 200, &stats);
}

#[test]
#[should_panic(expected = "with text, not the JSON it documents")]
fn a_text_answer_where_json_is_documented_fails_the_test_that_met_it() {
    let text = Value::String("ok".into());
    support::openapi::check(&reqwest::Method::GET, "/admin/v1/status", 200, &text);
}
