//! The API document (OpenAPI 3.1), generated from the code: each
//! operation from its handler's `#[utoipa::path]`, each answer's schema
//! from the type the handler serializes ([`super::admin::answers`],
//! [`super::error::ErrorBody`] with every [`super::error::ErrorCode`]),
//! and each admin operation's role, security and common refusals from the
//! one access table ([`crate::access::required_role`]).
//!
//! The admin listener serves it at `/admin/v1/openapi.json`;
//! `docs/openapi.json` is the same document, committed for client
//! developers (`tests/openapi.rs` fails when the two differ, and
//! `HOMECMP_BLESS=1` writes it again).

use std::sync::LazyLock;

use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

use super::{admin, console, error, resolve};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "homecmp",
        description = "The Home CMP's resolution API (public listener: HTTPS with HTTP/1.1 and \
            HTTP/2 on TCP, HTTP/3 on UDP) and its admin API (admin listener, plain HTTP, bearer \
            token). Every error is application/json {status, code, message}. The admin routes \
            name the role they need in x-required-role. Generated from the server's code \
            (src/net/openapi.rs)."
    ),
    servers(
        (url = "https://127.0.0.1:8443", description = "public listener (embedded defaults)"),
        (url = "http://127.0.0.1:8444", description = "admin listener (embedded defaults)"),
    ),
    tags(
        (name = "resolve", description = "What a scanning app (the MCC) calls."),
        (name = "codes", description = "Codes, their targets and rules; bulk import and export."),
        (name = "subscribers", description = "Associations, erasure and retention."),
        (name = "sessions", description = "Session bindings: which subscriber an address is."),
        (name = "audit", description = "Who changed what, when; the live event log."),
        (name = "operations", description = "Probes, metrics, status, reload, the console."),
    ),
    paths(
        resolve::handle_on,
        admin::get_code,
        admin::put_code,
        admin::delete_code,
        admin::code_stats,
        admin::import_codes,
        admin::export_codes,
        admin::get_association,
        admin::delete_association,
        admin::get_subscriber,
        admin::delete_subscriber,
        admin::get_session,
        admin::put_session,
        admin::delete_session,
        admin::audit,
        admin::events,
        admin::status,
        admin::reload,
        admin::retention,
        admin::openapi,
        admin::metrics,
        admin::healthz,
        admin::readyz,
        console::page,
        console::asset,
    ),
    modifiers(&Access),
)]
struct Document;

/// Adds to each admin operation what the access table says of it: the
/// role (`x-required-role`), the bearer token, and the refusals every
/// guarded route may answer (401, 403, and 503 while the log replays).
/// The open routes and the resolve API carry `security: []`.
struct Access;

impl utoipa::Modify for Access {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "data_dir/admin.token (every role), a scoped token (hcmp_...), or an access \
                 token (JWT) of the identity provider configured in [admin.oidc].",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(bearer));
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Delete, &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    guard(path, method, operation);
                }
            }
        }
    }
}

/// The axum route of a documented path: the router takes the sessions'
/// address as `{*ip}` (a prefix has a slash), which OpenAPI writes `{ip}`.
pub fn route_of(path: &str) -> String {
    match path.rsplit_once("/{") {
        Some((head, "ip}")) => format!("{head}/{{*ip}}"),
        _ => path.to_owned(),
    }
}

fn guard(path: &str, method: HttpMethod, operation: &mut Operation) {
    let route = route_of(path);
    if path == "/mc/v1/resolve" || crate::access::OPEN_ROUTES.contains(&route.as_str()) {
        operation.security = Some(Vec::new());
        return;
    }
    let method = match method {
        HttpMethod::Get => http::Method::GET,
        HttpMethod::Put => http::Method::PUT,
        HttpMethod::Post => http::Method::POST,
        _ => http::Method::DELETE,
    };
    let role = crate::access::required_role(&method, &route)
        .map_or("(none grants it)", crate::access::Role::name);
    let extensions = operation.extensions.get_or_insert_with(Default::default);
    extensions.merge(
        utoipa::openapi::extensions::ExtensionsBuilder::new()
            .add("x-required-role", role)
            .build(),
    );
    operation.security = Some(vec![SecurityRequirement::new("bearer", [""; 0])]);
    let refusals = [
        (
            "401",
            "No token, or one that no one holds (UNAUTHORIZED); a JWT that does not pass \
             (INVALID_TOKEN, with the reason).",
        ),
        (
            "403",
            "The token lacks the role this route needs (FORBIDDEN, the role named).",
        ),
        (
            "503",
            "Replaying the event log (NOT_READY), the log refuses writes (LOG_UNAVAILABLE), or \
             a write failed (UNAVAILABLE).",
        ),
    ];
    let responses = &mut operation.responses.responses;
    for (status, description) in refusals {
        // A handler's own description of a status stays.
        responses.entry(status.to_owned()).or_insert_with(|| {
            let body = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(
                    <error::ErrorBody as utoipa::ToSchema>::name(),
                )))
                .build();
            ResponseBuilder::new()
                .description(description)
                .content("application/json", body)
                .into()
        });
    }
}

/// The document, as JSON (pretty, with a final newline: the committed
/// file's form).
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        let mut text = Document::openapi()
            .to_pretty_json()
            .expect("the API document serializes");
        text.push('\n');
        text
    });
    &JSON
}
