//! Scoped admin tokens over the real server: tokens made with `homecmp
//! token create`, one role each, walked over every admin route; a token
//! without the route's role is refused 403 naming the role, one with it
//! gets through; the data dir's admin token has every role; a revoked
//! token is refused from the next request.

use std::process::Command;

use reqwest::Method;
use serde_json::Value;

mod support;

use homecmp::access::Role;
use support::TestServer;

/// `homecmp token <args> --data-dir <dir>`: exit code, stdout, stderr.
fn token(args: &[&str], data_dir: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_homecmp"))
        .arg("token")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One call per method of every admin route, with the role it needs.
fn calls() -> Vec<(Method, &'static str, Option<Value>, Role)> {
    let code = "/admin/v1/codes/2001000001promo";
    let target = serde_json::json!({ "target": "https://example.org/" });
    let session = serde_json::json!({ "msisdn": "+447700900001" });
    vec![
        (Method::GET, code, None, Role::CodesRead),
        (Method::PUT, code, Some(target), Role::CodesWrite),
        (Method::DELETE, code, None, Role::CodesWrite),
        (
            Method::GET,
            "/admin/v1/codes/2001000001promo/stats",
            None,
            Role::CodesRead,
        ),
        (Method::GET, "/admin/v1/codes:export", None, Role::CodesRead),
        (
            Method::POST,
            "/admin/v1/codes:import",
            None,
            Role::CodesWrite,
        ),
        (
            Method::GET,
            "/admin/v1/associations/app-1",
            None,
            Role::SubscribersRead,
        ),
        (
            Method::DELETE,
            "/admin/v1/associations/app-1",
            None,
            Role::SubscribersErase,
        ),
        (
            Method::DELETE,
            "/admin/v1/subscribers/+447700900009",
            None,
            Role::SubscribersErase,
        ),
        (
            Method::GET,
            "/admin/v1/sessions/127.1.0.1",
            None,
            Role::SessionsRead,
        ),
        (
            Method::PUT,
            "/admin/v1/sessions/127.1.0.1",
            Some(session),
            Role::SessionsWrite,
        ),
        (
            Method::DELETE,
            "/admin/v1/sessions/127.1.0.1",
            None,
            Role::SessionsWrite,
        ),
        (Method::POST, "/admin/v1/reload", None, Role::Ops),
        (Method::GET, "/metrics", None, Role::Ops),
    ]
}

async fn call(
    server: &TestServer,
    bearer: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let base = format!("http://{}", server.running.admin_addr);
    support::admin_call(&base, bearer, method, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_opens_its_routes_and_no_other() {
    let server = TestServer::ready("").await;
    let mut tokens = Vec::new();
    for role in Role::ALL {
        let name = role.name().replace(':', "-");
        let (code, out, err) = token(
            &["create", "--name", &name, "--role", role.name()],
            &server.data_dir,
        );
        assert_eq!(code, 0, "{err}");
        tokens.push((role, out.trim().to_owned()));
    }
    for (method, path, body, needed) in calls() {
        for (role, bearer) in &tokens {
            let (status, answer) = call(&server, bearer, method.clone(), path, body.clone()).await;
            match *role == needed {
                true => assert!(
                    status != 401 && status != 403,
                    "{method} {path} with {role}: {status} {answer}"
                ),
                false => {
                    assert_eq!(status, 403, "{method} {path} with {role}: {answer}");
                    assert_eq!(answer["code"], "FORBIDDEN");
                    let message = answer["message"].as_str().unwrap();
                    assert!(message.contains(needed.name()), "{message}");
                }
            }
        }
        // The data dir's admin token has every role.
        let admin = server.running.admin_token.expose();
        let (status, answer) = call(&server, admin, method.clone(), path, body.clone()).await;
        assert!(status != 401 && status != 403, "{method} {path}: {answer}");
    }
    // No token, a wrong one: 401, as before.
    let (status, _) = call(&server, "", Method::GET, "/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = call(&server, "hcmp_00", Method::GET, "/metrics", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_by_name_and_a_revoked_one_is_refused_at_once() {
    let server = TestServer::ready("").await;
    let dir = &server.data_dir;
    let (code, out, err) = token(
        &[
            "create",
            "--name",
            "marketing",
            "--role",
            "codes:read",
            "--role",
            "codes:write",
        ],
        dir,
    );
    assert_eq!(code, 0, "{err}");
    let marketing = out.trim().to_owned();
    assert!(marketing.starts_with("hcmp_"), "{marketing}");
    let (status, _) = call(
        &server,
        &marketing,
        Method::GET,
        "/admin/v1/codes/2001000001promo",
        None,
    )
    .await;
    assert_eq!(status, 200);

    let (code, out, _) = token(&["list"], dir);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("marketing\tcodes:read,codes:write\t"),
        "{out}"
    );
    let (code, out, _) = token(&["list", "--json"], dir);
    assert_eq!(code, 0);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        listed[0]["roles"],
        serde_json::json!(["codes:read", "codes:write"])
    );
    assert!(!out.contains(&marketing), "the token itself is never kept");

    // Refused: a second token of the same name, an unknown role, no role.
    let (code, _, err) = token(&["create", "--name", "marketing", "--role", "ops"], dir);
    assert_eq!(code, 1);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = token(&["create", "--name", "x", "--role", "codes:delete"], dir);
    assert_ne!(code, 0);
    assert!(err.contains("unknown role"), "{err}");
    let (code, _, _) = token(&["create", "--name", "x"], dir);
    assert_ne!(code, 0);

    let (code, out, _) = token(&["revoke", "marketing"], dir);
    assert_eq!((code, out.as_str()), (0, "revoked marketing\n"));
    let (status, _) = call(
        &server,
        &marketing,
        Method::GET,
        "/admin/v1/codes/2001000001promo",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (code, _, err) = token(&["revoke", "marketing"], dir);
    assert_eq!(code, 1);
    assert!(err.contains("no token named"), "{err}");
}
