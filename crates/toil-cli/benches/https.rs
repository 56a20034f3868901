//! The HTTPS-over-TCP benchmark: `cargo bench -p toil-cli --bench https`.
//!
//! A real `toil dev` (release build, its own process) serves
//! `examples/hello` on `hello.test` with a certificate from files, issued
//! by a test CA the bench makes; a native hyper + rustls server in this
//! process serves the same certificate and key, on a runtime of as many
//! threads as toil's. In alternating rounds of the same run it prints:
//!
//! 1. full TLS handshakes per second: clients connect, handshake (TLS 1.3,
//!    no session resumption, ALPN `http/1.1`) and close, `--clients` at a
//!    time (default 32); the wasm is not involved;
//! 2. HTTP/1.1-over-TLS keep-alive requests per second: `--connections`
//!    connections (default 16) each sending `GET /` in turn; toil runs the
//!    hello app's wasm (a fresh instance per request), the native server
//!    answers the same bytes from Rust.
//!
//! Flags (after `--`): `--rounds N --seconds N --clients N --connections N`.
//! Machines are noisy: medians of the rounds, and their ratio.

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::tls::{client_config, connect_with, TestCa};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;

const BODY: &str = "Hello from Toil Edge!\n";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (rounds, seconds, clients, connections) = (arg("--rounds", 3), arg("--seconds", 5), arg("--clients", 32), arg("--connections", 16));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(rounds, Duration::from_secs(seconds as u64), clients, connections));
}

async fn run(rounds: usize, seconds: Duration, clients: usize, connections: usize) {
    let dir = repo_root().join(format!("target/e2e/bench-https-{}", std::process::id()));
    let ca = TestCa::new(&dir.join("ca"));
    let (cert, key, _) = ca.write("hello", &["hello.test"]);
    let server = start_server(
        "bench-https",
        serde_json::json!({
            "apps": [{"domain": "hello", "dir": repo_root().join("examples/hello"), "hosts": ["hello.test"]}],
            "defaultDomain": "hello",
            "tls": {"certificates": [{"hosts": ["hello.test"], "cert": cert, "key": key}]},
            "limits": {"maxConnections": 100_000, "maxConnectionsPerAddress": 100_000},
        }),
    );
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let native = native_https(&cert, &key, threads);
    let config = client_config(&ca.pem, &[b"http/1.1"]);

    let (mut toil_hs, mut native_hs) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let t = handshakes_per_second(&config, server.http, clients, seconds).await;
        let n = handshakes_per_second(&config, native, clients, seconds).await;
        eprintln!("round {round}: handshakes/s toil {t:.0}, native {n:.0}");
        toil_hs.push(t);
        native_hs.push(n);
    }
    let (mut toil_rps, mut native_rps) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let t = keep_alive_requests_per_second(&config, server.http, connections, seconds).await;
        let n = keep_alive_requests_per_second(&config, native, connections, seconds).await;
        eprintln!("round {round}: keep-alive requests/s toil {t:.0}, native {n:.0}");
        toil_rps.push(t);
        native_rps.push(n);
    }

    let (ths, nhs, trps, nrps) = (median(&mut toil_hs), median(&mut native_hs), median(&mut toil_rps), median(&mut native_rps));
    println!();
    println!("| measurement (median of {rounds} rounds × {} s) | toil | native hyper + rustls | ratio |", seconds.as_secs());
    println!("|---|---|---|---|");
    println!("| full TLS 1.3 handshakes per second ({clients} clients, connect + handshake + close) | {ths:.0} | {nhs:.0} | {:.2}× |", ths / nhs);
    println!(
        "| HTTP/1.1 over TLS keep-alive requests per second ({connections} connections; toil runs the wasm per request) | {trps:.0} | {nrps:.0} | {:.2}× |",
        trps / nrps
    );
}

/// Full handshakes per second: `clients` tasks, each connecting,
/// handshaking and closing in a loop for `seconds`.
async fn handshakes_per_second(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, clients: usize, seconds: Duration) -> f64 {
    per_second(clients, seconds, |until, done| {
        let config = config.clone();
        async move {
            while Instant::now() < until {
                let mut stream = connect_with(&config, addr, "hello.test").await.expect("handshake");
                // close_notify, then FIN: a clean end, as a browser's.
                let _ = stream.shutdown().await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await
}

/// Requests per second on `connections` kept-alive HTTP/1.1-over-TLS
/// connections, each sending `GET /` and reading the answer in turn.
async fn keep_alive_requests_per_second(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, connections: usize, seconds: Duration) -> f64 {
    per_second(connections, seconds, |until, done| {
        let config = config.clone();
        async move {
            let stream = connect_with(&config, addr, "hello.test").await.expect("handshake");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            while Instant::now() < until {
                let resp = send.send_request(get("hello.test", "/")).await.expect("response");
                assert_eq!(resp.status(), 200);
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, BODY.as_bytes());
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await
}

/// Runs `tasks` tasks made by `task` (given the end time and the counter
/// each adds what it completed to) and returns completions per second.
async fn per_second<F, Fut>(tasks: usize, seconds: Duration, task: F) -> f64
where
    F: Fn(Instant, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let done = Arc::new(AtomicU64::new(0));
    let (started, until) = (Instant::now(), Instant::now() + seconds);
    let running: Vec<_> = (0..tasks).map(|_| tokio::spawn(task(until, done.clone()))).collect();
    for t in running {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// The native baseline: hyper's HTTP/1.1 and HTTP/2 over tokio-rustls,
/// the same certificate and key, TLS 1.2 and 1.3 and ALPN as toil's, on
/// a runtime of its own with `threads` workers. Answers every request
/// with the hello app's bytes.
fn native_https(cert: &Path, key: &Path, threads: usize) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let http = Arc::new(hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()));
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, http) = (acceptor.clone(), http.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(|_req| async {
                        let mut resp = http::Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
                        resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
    });
    addr
}
