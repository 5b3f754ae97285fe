//! The floor for `scripts/vs-nginx`: homecmp's own HTTP stack answering a
//! fixed body, with nothing of the product behind it. The same TLS config
//! (`tls::server_config`: aws-lc-rs, tickets, session cache, ALPN h2 and
//! http/1.1), the same connection code (`net::conn::serve`: hyper's auto
//! builder with the default limits, timeouts and coalesced writes), the
//! same runtime; no admission, identity, index, resolution or metrics. The
//! ratio homecmp / floor is how much of the budget the product itself
//! spends.
//!
//! `floor CERT KEY LISTEN BODY`: serves `BODY` (a file) as JSON on every
//! path; prints `floor ready <address>` once it listens.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, cert, key, listen, body] = &args[..] else {
        eprintln!("usage: floor CERT KEY LISTEN BODY");
        std::process::exit(64);
    };
    let (certs, key) =
        homecmp::tls::load(cert.as_ref(), key.as_ref()).expect("certificate and key");
    let tls = homecmp::tls::server_config(certs, key, &[b"h2", b"http/1.1"]).expect("TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let body = Bytes::from(std::fs::read(body).expect("body file"));
    let limits = Arc::new(
        homecmp::config::Config::parse("", Vec::new())
            .expect("the embedded defaults")
            .limits,
    );
    let listener = tokio::net::TcpListener::bind(listen).await.expect("listen");
    println!("floor ready {}", listener.local_addr().expect("bound"));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, body, limits) = (acceptor.clone(), body.clone(), limits.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let answer = move |_request: hyper::Request<hyper::body::Incoming>| {
                let response = hyper::Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(body.clone()))
                    .expect("a fixed response");
                std::future::ready(response)
            };
            let conduct = homecmp::net::conn::Conduct::new();
            homecmp::net::conn::serve(stream, &limits, CancellationToken::new(), conduct, answer)
                .await;
        });
    }
}
