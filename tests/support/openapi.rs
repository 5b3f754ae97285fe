//! Every admin answer an integration test receives through the support
//! helpers ([`crate::support::TestServer::admin`], `binary::Served::admin`)
//! is held to `docs/openapi.json`: its route and method are documented,
//! its status is one the operation lists, and a JSON body has every field
//! the listed schema requires. A handler that answers what the document
//! does not say fails the test that met it.

use std::sync::LazyLock;

use serde_json::Value;

static DOC: LazyLock<Value> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../../docs/openapi.json")).expect("docs/openapi.json")
});

/// Whether the OpenAPI template `template` (`/admin/v1/codes/{code}`)
/// names `path`: the same segments, a `{...}` standing for any one, or,
/// last and when `rest` says so, for the rest (the router's `{*ip}` takes
/// `::/64`).
fn names(template: &str, path: &str, rest: bool) -> bool {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    let param = |t: &str| t.starts_with('{') && t.ends_with('}');
    let last = template.len() - 1;
    let fits = |(i, t): (usize, &&str)| match path.get(i) {
        Some(p) if param(t) => !p.is_empty(),
        Some(p) => p == t,
        None => false,
    };
    let rest_taken = rest && param(template[last]) && path.len() > template.len();
    template.iter().enumerate().all(fits) && (path.len() == template.len() || rest_taken)
}

/// Panics, naming the disagreement, when `status` and `body` are not what
/// `docs/openapi.json` says `method path` answers.
pub fn check(method: &reqwest::Method, path: &str, status: u16, body: &Value) {
    let path = path.split('?').next().unwrap_or(path);
    let paths = DOC["paths"].as_object().expect("paths");
    let found = (paths.iter().find(|(t, _)| names(t, path, false)))
        .or_else(|| paths.iter().find(|(t, _)| names(t, path, true)));
    // What no operation documents, the router answers alike: a path it
    // does not have 404 NOT_FOUND, a method it does not take 405
    // METHOD_NOT_ALLOWED, each an error body.
    let refused = |code: &str| {
        assert_eq!(
            body["code"], code,
            "{method} {path} answered {status}: {body}"
        );
        for key in required("Error") {
            assert!(
                body.get(&key).is_some(),
                "{method} {path}: {body} without {key}"
            );
        }
    };
    let Some((template, item)) = found else {
        assert_eq!(
            status, 404,
            "{method} {path}: no such path in docs/openapi.json"
        );
        return refused("NOT_FOUND");
    };
    let operation = &item[method.as_str().to_ascii_lowercase()];
    if !operation.is_object() {
        assert_eq!(
            status, 405,
            "{method} {template}: no such operation in docs/openapi.json"
        );
        return refused("METHOD_NOT_ALLOWED");
    }
    let responses = &operation["responses"];
    let Some(response) = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
    else {
        panic!(
            "{method} {template} answered {status}, which docs/openapi.json does not list: {body}"
        );
    };
    // Text (not JSON) is for an operation that lists a content type other
    // than JSON, or none; JSON for one that lists JSON.
    let content = response["content"].as_object();
    if let Value::String(_) = body {
        let text = content.is_none_or(|c| c.keys().any(|t| t != "application/json"));
        assert!(
            text,
            "{method} {template} answered {status} with text, not the JSON it documents: {body}"
        );
        return;
    }
    let schema = &response["content"]["application/json"]["schema"]["$ref"];
    let Some(name) = schema.as_str().and_then(|s| s.rsplit('/').next()) else {
        return;
    };
    for key in required(name) {
        assert!(
            body.get(&key).is_some(),
            "{method} {template} answered {status} without {key}, which {name} requires: {body}"
        );
    }
}

/// The fields the schema `name` requires, with those of the schemas it is
/// made of (`allOf`: an error body and more).
pub fn required(name: &str) -> Vec<String> {
    let schema = &DOC["components"]["schemas"][name];
    let mut fields: Vec<String> = (schema["required"].as_array().into_iter().flatten())
        .filter_map(|key| key.as_str().map(str::to_owned))
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        match part["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
            Some(inner) => fields.extend(required(inner)),
            None => fields.extend(
                (part["required"].as_array().into_iter().flatten())
                    .filter_map(|key| key.as_str().map(str::to_owned)),
            ),
        }
    }
    fields
}
