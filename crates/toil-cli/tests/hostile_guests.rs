//! End to end: guests that try to escape their limits. A guest blocked in a
//! host call is cut off at its deadline like a busy one (requests, stream
//! boxes, daemon ticks, `daemon_start`), `toil tick` answers promptly, a
//! guest's headers cannot panic a host thread on any protocol, one domain
//! cannot take every instance, and a guest cannot close with a code the
//! host reserves. After each, the node still serves another domain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use toil_abi::stream::close_code;

const CHAOS: &str = "misbehave.localhost";

async fn hello_still_answers(s: &Server) {
    let r = http1(s.http, get("hello.localhost", "/hello/bystander")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "Hello, bystander!\n"));
}

#[tokio::test]
async fn a_request_sleeping_in_a_host_call_ends_at_the_deadline() {
    let s = server();
    let started = Instant::now();
    let r = http1(s.http, get(CHAOS, "/sleep?ms=5000")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("x-toil-fault"), Some("deadline"));
    assert!(took < Duration::from_millis(2000), "answered at the {DEADLINE_MS} ms deadline, not after the 5 s sleep ({took:?})");
    // Ten at once: none holds its instance past the deadline.
    let started = Instant::now();
    let all: Vec<_> = (0..10).map(|_| tokio::spawn(async move { http1(s.http, get(CHAOS, "/sleep?ms=5000")).await.status })).collect();
    for r in all {
        assert_eq!(r.await.unwrap(), 503);
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    hello_still_answers(s).await;
}

#[tokio::test]
async fn a_stream_box_sleeping_in_a_host_call_is_cut_off() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    let started = Instant::now();
    f.send(b"sleep 5000").await;
    let (code, reason) = closed(&conn).await.unwrap();
    assert_eq!(code, close_code::GUEST_FAULT as u64, "{reason}");
    assert!(reason.contains("deadline"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn toil_tick_on_a_sleeping_task_reports_the_deadline_promptly() {
    let s = server();
    // The misbehave daemon's box starts (its domain is not `stuck`).
    assert!(log_contains("sleepy started on misbehave").await, "{}", s.log());
    let started = Instant::now();
    let out = s.toil_admin(&["tick", "misbehave", "nap"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("deadline"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "toil tick answered in {:?}", started.elapsed());
    assert!(metric("toil_guest_faults_total{domain=\"misbehave\",tier=\"daemon\",kind=\"deadline\"}").await >= 1.0);
}

/// A domain whose `daemon_start` never returns: each start is cut off at
/// the deadline and retried, and `toil tick` says why there is no box
/// instead of waiting for one.
#[tokio::test]
async fn toil_tick_on_a_daemon_that_never_starts_says_so() {
    let misbehave = repo_root().join("crates/toil-cli/tests/guests/misbehave");
    let s = start_server("stuck", serde_json::json!({"apps": [{"domain": "stuck", "dir": misbehave}], "defaultDomain": "stuck"}));
    let mut last = String::new();
    for _ in 0..50 {
        let started = Instant::now();
        let out = s.toil_admin(&["tick", "stuck", "nap"]);
        assert!(started.elapsed() < Duration::from_secs(5), "toil tick answered in {:?}", started.elapsed());
        assert!(!out.status.success());
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if last.contains("daemon_start failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // ownership not assigned yet
    }
    assert!(last.contains("daemon_start failed") && last.contains("deadline"), "{last}");
    assert!(s.metric("toil_guest_faults_total{domain=\"stuck\",tier=\"daemon\",kind=\"deadline\"}").await >= 1.0);
    let r = http1(s.http, get("stuck.localhost", "/ok")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"), "the node serves the domain's other tiers");
}

#[tokio::test]
async fn a_header_bomb_is_a_500_on_every_protocol_and_hurts_nobody() {
    let s = server();
    for proto in ["http1", "http2", "http3"] {
        let send = |path: &'static str| async move {
            match proto {
                "http1" => http1(s.http, get(CHAOS, path)).await,
                "http2" => http2(s.http, get(CHAOS, path)).await,
                _ => http3(s.http, &s.cert, get(CHAOS, path)).await,
            }
        };
        let r = send("/headers?n=40000").await;
        assert_eq!(r.status, 500, "{proto}: {}", r.text());
        assert_eq!(r.header("x-toil-fault"), Some("abi"), "{proto}");
        let r = send("/headers?n=50").await;
        assert_eq!(r.status, 200, "{proto}");
        assert_eq!(r.headers.keys().filter(|k| k.as_str().starts_with("x-h")).count(), 50, "{proto}");
    }
    assert!(s.log().contains("response has 40001 headers, over the limit of 100"), "the log names the fault");
    assert!(!s.log().contains("panicked"), "no host thread panicked:\n{}", s.log());
    hello_still_answers(s).await;
    let r = http3(s.http, &s.cert, get("hello.localhost", "/hello/h3")).await;
    assert_eq!(r.status, 200);
}

/// Twenty instances, four kept for sessions: each domain may run eight
/// requests and queue eight more. Twenty-five slow (2 s) requests to one
/// domain get eight running, eight queued, nine refused with 503 and
/// Retry-After; another domain is served all the while.
#[tokio::test]
async fn one_domain_cannot_take_every_instance() {
    let s = start_server("fair", serde_json::json!({"limits": {"deadlineMs": 4000, "maxInstances": 20, "maxSessions": 4, "memoryMb": MEMORY_MB}}));
    let http = s.http;
    let slow: Vec<_> = (0..25).map(|_| tokio::spawn(async move { http1(http, get(CHAOS, "/sleep?ms=2000")).await })).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        let r = http1(s.http, get("hello.localhost", &format!("/hello/{i}"))).await;
        assert_eq!(r.status, 200, "another domain is served while one is saturated: {}", r.text());
    }
    let (mut ok, mut refused) = (0, 0);
    for r in slow {
        let r = r.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert_eq!(r.header("x-toil-overload"), Some("queue_full"), "{}", r.text());
                assert!(r.text().contains("the misbehave app is busy"), "{}", r.text());
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert_eq!((ok, refused), (16, 9), "eight ran, eight waited their turn, nine were refused");
    assert_eq!(s.metric("toil_requests_refused_total{domain=\"misbehave\",tier=\"request\",reason=\"queue_full\"}").await, 9.0);
    assert!(!s.log().contains("maximum concurrent limit"), "the pool itself never ran out");
}

#[tokio::test]
async fn a_guest_cannot_close_with_a_host_reserved_code() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    f.send(format!("close {} pretending to be the host", close_code::SHUTDOWN).as_bytes()).await;
    let (code, reason) = closed(&conn).await.unwrap();
    assert_eq!(code, close_code::GUEST_FAULT as u64, "{reason}");
    assert!(reason.contains("host-reserved"), "the reason names the misuse: {reason}");
}
