//! Single sign-on over the real server: access tokens signed in the test
//! with RS256 and ES256 keys the test generates, published as a JWKS by a
//! small HTTP server on loopback (the identity provider); the token's
//! roles open their routes and its subject is the actor in the audit
//! trail; expired, wrong-audience, wrong-issuer, badly signed and HS256
//! tokens are refused 401 with the reason; after a key rotation the new
//! key's tokens pass (one fetch), the old key's do not, and a flood of
//! tokens naming unknown keys costs no fetch.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{Value, json};

mod support;

use support::TestServer;

const ISSUER: &str = "https://idp.mno.example";
const AUDIENCE: &str = "homecmp-admin";

/// A signing key of the test's identity provider, and its public JWK.
struct Signer {
    alg: Algorithm,
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

fn pem(label: &str, der: &[u8]) -> String {
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        STANDARD.encode(der)
    )
}

fn rsa(kid: &str) -> Signer {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let der: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().unwrap();
    let public = pair.public_key();
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    Signer {
        alg: Algorithm::RS256,
        kid: kid.into(),
        key: EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes()).unwrap(),
        jwk: json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        }),
    }
}

fn ec(kid: &str) -> Signer {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let der = pair.to_pkcs8v1().unwrap();
    let point = pair.public_key().as_ref().to_vec();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    Signer {
        alg: Algorithm::ES256,
        kid: kid.into(),
        key: EncodingKey::from_ec_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes()).unwrap(),
        jwk: json!({
            "kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        }),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token by `signer` for `sub` with `roles`; `change` edits the claims.
fn token(signer: &Signer, sub: &str, roles: &[&str], change: impl FnOnce(&mut Value)) -> String {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles,
        "iat": now(), "exp": now() + 600,
    });
    change(&mut claims);
    let mut header = Header::new(signer.alg);
    header.kid = Some(signer.kid.clone());
    jsonwebtoken::encode(&header, &claims, &signer.key).unwrap()
}

/// The identity provider's JWKS endpoint: serves `keys`, counts fetches.
struct Provider {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

async fn provider(keys: Vec<Value>) -> Provider {
    let keys = Arc::new(Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let set = json!({ "keys": *served.lock().unwrap() });
            async move { axum::Json(set) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Provider { url, keys, fetches }
}

async fn call(server: &TestServer, bearer: &str, method: Method, path: &str) -> (u16, Value) {
    let body = (method == Method::PUT).then(|| json!({"target": "https://example.org/sso"}));
    let base = format!("http://{}", server.running.admin_addr);
    support::admin_call(&base, bearer, method, path, body).await
}

fn oidc_section(jwks: &str) -> String {
    format!(
        "[admin.oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{jwks}\nrefresh_secs = 3600\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_provider_tokens_grant_their_roles_and_name_the_actor() {
    let (k1, e1) = (rsa("k1"), ec("e1"));
    let idp = provider(vec![k1.jwk.clone(), e1.jwk.clone()]).await;
    let server =
        TestServer::with_config(&oidc_section(&format!("jwks_url = \"{}\"", idp.url))).await;
    let code = "/admin/v1/codes/2001000001sso";

    // RS256: alice edits codes; the audit trail names her.
    let alice = token(
        &k1,
        "alice@mno.example",
        &["codes:read", "codes:write"],
        |_| {},
    );
    assert_eq!(call(&server, &alice, Method::PUT, code).await.0, 200);
    // ES256: bob reads the audit trail, and may not edit codes.
    let bob = token(&e1, "bob@mno.example", &["audit:read"], |_| {});
    let (status, body) = call(
        &server,
        &bob,
        Method::GET,
        "/admin/v1/audit?code=2001000001sso",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["actor"], "alice@mno.example");
    let (status, body) = call(&server, &bob, Method::PUT, code).await;
    assert_eq!(status, 403);
    assert!(
        body["message"].as_str().unwrap().contains("codes:write"),
        "{body}"
    );

    // Refused, each with its reason.
    let stranger = rsa("k1"); // same kid, a key the provider does not hold
    let hs = Signer {
        alg: Algorithm::HS256,
        kid: "k1".into(),
        key: EncodingKey::from_secret(b"a shared secret"),
        jwk: Value::Null,
    };
    let refused = [
        (
            token(&k1, "alice", &["codes:read"], |c| {
                c["exp"] = json!(now() - 3600)
            }),
            "expired",
        ),
        (
            token(&k1, "alice", &["codes:read"], |c| {
                c["aud"] = json!("someone-else")
            }),
            "another audience",
        ),
        (
            token(&k1, "alice", &["codes:read"], |c| {
                c["iss"] = json!("https://evil.example")
            }),
            "another issuer",
        ),
        (
            token(&k1, "alice", &["codes:read"], |c| {
                c["nbf"] = json!(now() + 3600)
            }),
            "not valid yet",
        ),
        (
            token(&stranger, "alice", &["codes:read"], |_| {}),
            "does not verify",
        ),
        (token(&hs, "alice", &["codes:read"], |_| {}), "not allowed"),
    ];
    for (jwt, reason) in &refused {
        let (status, body) = call(&server, jwt, Method::GET, code).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("INVALID_TOKEN")),
            "{reason}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "fetched once, at start"
    );

    // Rotation: the provider now publishes k2 only. A k2 token makes the
    // server fetch again, once (not sooner than 10 s after the last fetch);
    // k1's tokens no longer pass.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    let k2 = rsa("k2");
    *idp.keys.lock().unwrap() = vec![k2.jwk.clone()];
    let carol = token(&k2, "carol@mno.example", &["codes:read"], |_| {});
    let (status, body) = call(&server, &carol, Method::GET, code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    let (status, body) = call(&server, &alice, Method::GET, code).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not publish"),
        "{body}"
    );
    // Tokens naming keys nobody has cost no fetch (at most one per 10 s).
    let mut mallory = rsa("nope");
    for i in 0..20 {
        mallory.kid = format!("nope-{i}");
        let unknown = token(&mallory, "mallory", &["ops"], |_| {});
        assert_eq!(
            call(&server, &unknown, Method::GET, "/metrics").await.0,
            401
        );
    }
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // The book's block (docs/book/src/admin-api.md), as printed, with
    // carol's token.
    let chapter = include_str!("../docs/book/src/admin-api.md");
    let block = chapter
        .split_once("\n### Single sign-on\n")
        .and_then(|(_, rest)| rest.split_once("```sh\n"))
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .expect("docs/book/src/admin-api.md's single sign-on block")
        .0;
    let run = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .env("JWT", &carol)
        .env("ADMIN", format!("http://{}", server.running.admin_addr))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && out.contains(r#""code":"2001000001sso""#),
        "{out}"
    );
    // The data dir's token still works beside the provider's.
    let admin = server.running.admin_token.expose().to_owned();
    assert_eq!(call(&server, &admin, Method::GET, code).await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_file_works_as_the_url_does() {
    let dir = tempfile::tempdir().unwrap();
    let e1 = ec("e1");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, json!({"keys": [e1.jwk]}).to_string()).unwrap();
    let section = oidc_section(&format!("jwks_file = \"{}\"", file.display()));
    let server = TestServer::with_config(&section).await;
    let ops = token(&e1, "noc", &["ops"], |_| {});
    assert_eq!(call(&server, &ops, Method::GET, "/metrics").await.0, 200);
    let (status, _) = call(&server, &ops, Method::GET, "/admin/v1/codes/2001000001x").await;
    assert_eq!(status, 403);
    server.stop().await;
}
