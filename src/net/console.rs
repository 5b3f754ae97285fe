//! The operator console: one page served by the admin listener
//! (`/admin/console`), for what an operator does by hand: look up a
//! clientid or a subscriber, register and edit codes, watch a code's scans
//! as a chart, watch the event log live, see the node, cluster and RADIUS
//! health.
//!
//! The page and its two files hold no data and are served without a token;
//! the page asks for one (an admin token or an identity provider's access
//! token, kept in the tab's `sessionStorage`) and calls the admin API with
//! it, so every answer passes the same roles as a script's would. The files
//! are compiled in (`src/net/console/`): no build step, no CDN, nothing
//! fetched from elsewhere (the Content-Security-Policy says so).

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::AdminError;

/// Same origin only, no framing, no inline script.
const SECURITY_POLICY: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";

/// `GET /admin/console`.
#[utoipa::path(get, path = "/admin/console", tag = "operations", operation_id = "console",
    summary = "The operator console (a web page; it asks for a token and calls this API \
        with it)",
    responses((status = 200, description = "The page.", body = String,
        content_type = "text/html")))]
pub async fn page() -> Response {
    file(
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    )
}

/// `GET /admin/console/{asset}`: the script and the style sheet.
#[utoipa::path(get, path = "/admin/console/{asset}", tag = "operations",
    operation_id = "console_asset",
    summary = "The console's script and style sheet",
    params(("asset" = String, Path, description = "app.js or style.css.")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript"),
            (String = "text/css"))),
        (status = 404, description = "NOT_FOUND.", body = crate::net::error::ErrorBody),
    ))]
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => file(
            "text/javascript; charset=utf-8",
            include_str!("console/app.js"),
        ),
        "style.css" => file("text/css; charset=utf-8", include_str!("console/style.css")),
        _ => AdminError::NotFound.into_response(),
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
