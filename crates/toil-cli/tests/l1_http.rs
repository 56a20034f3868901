//! End to end: the examples built by the real guest toolchain, served by a
//! real `toil dev`, driven over real HTTP/1.1, HTTP/2 and HTTP/3.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use toil_runtime::artifact::inspect;
use toil_runtime::{LoadError, Tier};

const HELLO: &str = "hello.localhost";
const BAD: &str = "misbehave.localhost";

#[tokio::test]
async fn http1_serves_every_route_of_hello() {
    let s = server();
    let r = http1(s.http, get(HELLO, "/")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello from Toil Edge!\n"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert!(r.header("alt-svc").unwrap().contains(&format!("h3=\":{}\"", s.http.port())));

    let r = http1(s.http, get(HELLO, "/hello/Ana%20Li?greeting=Hi")).await;
    assert_eq!(r.text(), "Hi, Ana Li!\n");

    let r = http1(s.http, get(HELLO, "/users/42")).await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!({"id": "42", "name": "user-42"}));

    let mut req = request("POST", HELLO, "/echo", Bytes::from_static(b"\x00binary\xffbody"));
    req.headers_mut().insert("content-type", "application/x-test".parse().unwrap());
    let r = http1(s.http, req).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"\x00binary\xffbody"[..]));
    assert_eq!(r.header("content-type"), Some("application/x-test"));

    let r = http1(s.http, request("POST", HELLO, "/greet", r#"{"to":"Bo"}"#)).await;
    assert_eq!(r.text(), r#"{"to":"Hello, Bo!"}"#);
    let r = http1(s.http, request("POST", HELLO, "/greet", "not json")).await;
    assert_eq!(r.status, 400);

    let r = http1(s.http, get(HELLO, "/files/a/b/c.txt")).await;
    assert_eq!(r.text(), "you asked for \"a/b/c.txt\"\n");
}

#[tokio::test]
async fn routing_errors_come_from_the_manifest() {
    let s = server();
    let r = http1(s.http, get(HELLO, "/nope")).await;
    assert_eq!(r.status, 404);
    let r = http1(s.http, get(HELLO, "/echo")).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = http1(s.http, request("HEAD", HELLO, "/", Bytes::new())).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    // Host routing: each example is its own domain; unknown hosts go to the default.
    let r = http1(s.http, get("echo.localhost", "/")).await;
    assert!(r.text().contains("<title>Toil Edge echo</title>"));
    let r = http1(s.http, get("unknown.example", "/")).await;
    assert_eq!(r.text(), "Hello from Toil Edge!\n");
}

#[tokio::test]
async fn http2_serves_the_same_app() {
    let s = server();
    let r = http2(s.http, get(HELLO, "/hello/h2")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, h2!\n"));
    let r = http2(s.http, request("POST", HELLO, "/echo", "over h2")).await;
    assert_eq!(r.text(), "over h2");
    let r = http2(s.http, get(HELLO, "/users/7")).await;
    assert!(r.text().contains("user-7"));
}

#[tokio::test]
async fn http3_serves_the_same_app() {
    let s = server();
    let r = http3(s.http, &s.cert, get(HELLO, "/hello/h3")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, h3!\n"));
    let r = http3(s.http, &s.cert, request("POST", HELLO, "/echo", "over h3")).await;
    assert_eq!(r.text(), "over h3");
    let r = http3(s.http, &s.cert, get(HELLO, "/nope")).await;
    assert_eq!(r.status, 404);
    // HTTP/3 answers renew the client's record of where HTTP/3 is.
    assert_eq!(r.header("alt-svc"), Some(format!("h3=\":{}\"; ma=86400", s.http.port()).as_str()));
}

/// After any guest failure the node keeps serving, on every protocol.
async fn still_serving() {
    let s = server();
    assert_eq!(http1(s.http, get(BAD, "/ok")).await.text(), "ok");
    assert_eq!(http2(s.http, get(HELLO, "/")).await.status, 200);
}

#[tokio::test]
async fn guest_trap_is_a_500_and_the_host_keeps_serving() {
    let s = server();
    let r = http1(s.http, get(BAD, "/trap")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-toil-fault"), Some("trap"));
    still_serving().await;
    let log = s.log();
    assert!(log.contains("misbehave: deliberate panic"), "guest stderr reaches the host log");
    assert!(log.contains("request failed: guest trapped"), "{log}");
}

#[tokio::test]
async fn infinite_loop_is_cut_off_by_the_deadline() {
    let s = server();
    let started = Instant::now();
    let r = http1(s.http, get(BAD, "/loop")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-toil-fault"), Some("deadline"));
    assert!(took >= Duration::from_millis(DEADLINE_MS), "interrupted only after the deadline ({took:?})");
    assert!(took < Duration::from_secs(5), "interrupted ({took:?})");
    let r = http3(s.http, &s.cert, get(BAD, "/loop")).await;
    assert_eq!(r.status, 503);
    still_serving().await;
}

#[tokio::test]
async fn memory_bomb_hits_the_cap() {
    let s = server();
    let r = http2(s.http, get(BAD, "/bomb")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-toil-fault"), Some("memory"));
    assert!(s.log().contains(&format!("memory limit of {} bytes exceeded", MEMORY_MB << 20)));
    still_serving().await;
}

#[tokio::test]
async fn oversized_request_body_is_refused_before_the_guest() {
    let s = server();
    let ok = vec![b'a'; MAX_REQUEST_BODY];
    assert_eq!(http1(s.http, request("POST", BAD, "/size", ok.clone())).await.text(), MAX_REQUEST_BODY.to_string());
    let over = vec![b'a'; MAX_REQUEST_BODY + 1];
    let r = http1(s.http, request("POST", BAD, "/size", over.clone())).await;
    assert_eq!(r.status, 413);
    assert!(r.text().contains(&format!("{MAX_REQUEST_BODY}-byte limit")));
    assert_eq!(http3(s.http, &s.cert, request("POST", BAD, "/size", over)).await.status, 413);
    assert_eq!(http3(s.http, &s.cert, request("POST", BAD, "/size", ok)).await.text(), MAX_REQUEST_BODY.to_string());
    still_serving().await;
}

#[tokio::test]
async fn oversized_response_is_a_500() {
    let s = server();
    let r = http1(s.http, get(BAD, "/big?mib=2")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("x-toil-fault"), Some("output_too_large"));
    still_serving().await;
}

#[tokio::test]
async fn guest_output_is_logged_with_domain_and_tier() {
    let s = server();
    assert_eq!(http1(s.http, get(BAD, "/log")).await.text(), "logged");
    let log = s.log();
    let line = log.lines().find(|l| l.contains("misbehave says hello on stdout")).expect("stdout line logged");
    assert!(line.contains("domain=misbehave") && line.contains("tier=request") && line.contains("stream=\"stdout\""), "{line}");
    assert!(log.lines().any(|l| l.contains("misbehave says hello on stderr") && l.contains("stream=\"stderr\"")));
}

#[tokio::test]
async fn metrics_count_requests_and_faults() {
    let s = server();
    assert_eq!(http1(s.http, get(BAD, "/trap")).await.status, 500);
    assert_eq!(http1(s.http, get(HELLO, "/")).await.status, 200);
    let m = admin_get("/metrics").await.text();
    let value = |series: &str| -> u64 {
        m.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or_else(|| panic!("no series {series} in\n{m}"))
    };
    assert!(value("toil_guest_faults_total{domain=\"misbehave\",tier=\"request\",kind=\"trap\"}") >= 1);
    assert!(value("toil_http_requests_total{domain=\"hello\",protocol=\"http1\",status=\"2xx\"}") >= 1);
    assert!(value("toil_http_requests_total{domain=\"misbehave\",protocol=\"http1\",status=\"5xx\"}") >= 1);
    assert!(m.contains("toil_http_request_duration_seconds_bucket{domain=\"hello\",le=\"+Inf\"}"));
    assert!(m.contains("# TYPE toil_live_instances gauge"));
    assert_eq!(admin_get("/healthz").await.text(), "ok\n");
}

fn exports_of(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut names = Vec::new();
    for p in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let wasmparser::Payload::ExportSection(r) = p.unwrap() {
            names.extend(r.into_iter().map(|e| e.unwrap().name.to_string()));
        }
    }
    names.sort();
    names
}

#[test]
fn each_artifact_exports_only_its_tier() {
    server(); // builds the examples
    let root = repo_root();
    let art = |ex: &str, file: &str| root.join("examples").join(ex).join("build/server").join(file);
    assert_eq!(exports_of(&art("hello", "release.wasm")), ["handle", "memory"]);
    assert!(!art("hello", "release-stream.wasm").exists(), "no stream surface, no stream artifact");
    assert!(!art("hello", "release-cold.wasm").exists());
    assert_eq!(exports_of(&art("echo", "release.wasm")), ["handle", "memory"]);
    assert_eq!(exports_of(&art("echo", "release-stream.wasm")), ["memory", "stream_dispatch"]);
    assert_eq!(exports_of(&art("jobs", "release-cold.wasm")), ["daemon_start", "memory", "scheduled_tick"]);
    assert!(!art("jobs", "release.wasm").exists());

    // Manifests describe their own tier only.
    let stream = std::fs::read(art("echo", "release-stream.wasm")).unwrap();
    let info = inspect(&stream, Tier::Stream, usize::MAX).unwrap();
    assert_eq!(info.manifest.streams, ["echo"]);
    assert!(info.manifest.routes.is_empty());
    let cold = std::fs::read(art("jobs", "release-cold.wasm")).unwrap();
    let info = inspect(&cold, Tier::Daemon, usize::MAX).unwrap();
    let tasks: Vec<_> = info.manifest.tasks.iter().map(|t| (t.name.as_str(), t.schedule.as_str())).collect();
    assert_eq!(tasks, [("heartbeat", "5s"), ("hourly", "0 0 * * * *")]);

    // A real artifact loaded as the wrong tier is refused, naming both tiers.
    match inspect(&stream, Tier::Request, usize::MAX) {
        Err(e @ LoadError::WrongTier { .. }) => {
            assert_eq!(e.to_string(), "is a stream-tier artifact, but it was loaded as the request tier")
        }
        other => panic!("expected WrongTier, got {other:?}"),
    }
}
