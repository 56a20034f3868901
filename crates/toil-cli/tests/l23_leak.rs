//! Nothing leaks: after rounds of sessions that end every way a session can
//! end (client close, guest close, guest trap, vanished client), the box
//! count returns to zero and the server's memory to its level after the
//! first round. Its own `toil dev`, so other tests do not disturb the count.
//! And an idle box gives its instance back (hibernates) without losing a
//! byte of its state.

mod common;

use std::time::Duration;

use common::*;

const PER_ROUND: usize = 40;
const ROUNDS: usize = 4;

/// One session that ends in the way its index picks.
async fn session(server: &'static Server, i: usize) {
    let relay = UdpRelay::start(server.http).await;
    let conn = wt_endpoint_for(server, relay.addr).connect(format!("https://misbehave.localhost:{}/chaos", relay.addr.port())).await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    for _ in 0..5 {
        f.send(&[b'x'; 1000]).await;
        f.recv().await.unwrap();
    }
    match i % 4 {
        0 => conn.close(wtransport::VarInt::from_u32(0), b"done"),
        1 => {
            f.send(b"close 4000 guest done").await;
            closed(&conn).await.unwrap();
        }
        2 => {
            f.send(b"trap").await;
            closed(&conn).await.unwrap();
        }
        _ => {
            relay.cut(); // the server finds out at the idle timeout
            std::mem::forget(conn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxes_and_memory_return_to_baseline() {
    let server: &'static Server = Box::leak(Box::new(start_server("leak", serde_json::json!({}))));
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..PER_ROUND).map(|i| tokio::spawn(session(server, i))).collect();
        for t in tasks {
            t.await.unwrap();
        }
        wait_until_at_most(server, "toil_live_instances{domain=\"misbehave\",tier=\"stream\"}", 0.0).await;
        wait_until_at_most(server, "toil_stream_sessions_open{domain=\"misbehave\"}", 0.0).await;
        rss.push(server.rss_kib());
        eprintln!("round {round}: RSS {} KiB", rss[round]);
    }
    let opened = server.metric("toil_stream_sessions_opened_total{domain=\"misbehave\"}").await;
    assert_eq!(opened, (PER_ROUND * ROUNDS) as f64);
    for how in ["closed", "aborted", "disconnected"] {
        let n = server.metric(&format!("toil_stream_sessions_ended_total{{domain=\"misbehave\",how=\"{how}\"}}")).await;
        assert!(n > 0.0, "some sessions ended {how}");
    }
    // The first round sizes the pool and the allocator; later rounds reuse them.
    let growth = rss[ROUNDS - 1] as i64 - rss[0] as i64;
    assert!(growth < 8 << 10, "RSS grew {growth} KiB over {} more rounds of {PER_ROUND} sessions: {rss:?}", ROUNDS - 1);
}

/// Shutting a node down closes its sessions with SHUTDOWN, and their boxes
/// run `close`, before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sessions_and_runs_their_close_hooks() {
    let mut server = start_server("shutdown", serde_json::json!({}));
    let conn = wt_endpoint_for(&server, server.http).connect(format!("https://misbehave.localhost:{}/chaos", server.http.port())).await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    f.send(b"one").await;
    f.recv().await.unwrap();
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(status.success(), "toil dev exited with {status}");
    assert_eq!(closed(&conn).await, Ok((toil_abi::stream::close_code::SHUTDOWN as u64, "node shutting down".into())));
    let log = server.log();
    assert!(log.contains("chaos closed after 1 frames: code 4101 reason \"node shutting down\""), "{log}");
}

/// The per-domain session cap refuses the session over it with 503 before
/// any box exists, and frees the slot when a session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_refuses_with_503_and_frees_slots() {
    let server: &'static Server =
        Box::leak(Box::new(start_server("caps", serde_json::json!({"limits": {"maxSessions": 10, "maxSessionsPerDomain": 2}}))));
    let url = format!("https://echo.localhost:{}/echo", server.http.port());
    let a = wt_endpoint_for(server, server.http).connect(&url).await.unwrap();
    let _b = wt_endpoint_for(server, server.http).connect(&url).await.unwrap();
    match wt_endpoint_for(server, server.http).connect(&url).await {
        Err(wtransport::error::ConnectingError::SessionRejected) => {}
        other => panic!("a third session of the domain was not refused: {other:?}"),
    }
    assert_eq!(server.metric("toil_stream_sessions_refused_total{domain=\"echo\"}").await, 1.0);
    assert_eq!(server.metric("toil_instances_created_total{domain=\"echo\",tier=\"stream\"}").await, 2.0);
    // Another domain still has room under the node cap.
    wt_endpoint_for(server, server.http).connect(format!("https://misbehave.localhost:{}/chaos", server.http.port())).await.unwrap();
    a.close(wtransport::VarInt::from_u32(0), b"");
    wait_until_at_most(server, "toil_stream_sessions_open{domain=\"echo\"}", 1.0).await;
    wt_endpoint_for(server, server.http).connect(&url).await.expect("a slot freed by the closed session");
}

/// Requests, daemons and open sessions share the node's instances: with no
/// session open, requests use the instances `maxSessions` would allow
/// sessions; an open session (awake or not) holds its instance, so a
/// CONNECT finding every instance held is refused with 503, and requests
/// then find the node full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_sessions_share_the_nodes_instances() {
    let limits = serde_json::json!({"deadlineMs": 4000, "maxInstances": 10, "maxSessions": 6, "maxRequestsPerDomain": 4});
    let server: &'static Server = Box::leak(Box::new(start_server("shared", serde_json::json!({"limits": limits}))));
    // The jobs and misbehave daemons hold one instance each: eight are left.
    for domain in ["jobs", "misbehave"] {
        wait_until_at_least(server, &format!("toil_live_instances{{domain=\"{domain}\",tier=\"daemon\"}}"), 1.0).await;
    }
    let slow = |n: usize| -> Vec<_> {
        (0..n).map(|_| tokio::spawn(async move { http1(server.http, get("misbehave.localhost", "/sleep?ms=3500")).await })).collect()
    };
    let url = format!("https://echo.localhost:{}/echo", server.http.port());
    let open_session = || async { wt_endpoint_for(server, server.http).connect(&url).await };

    // Four slow requests run at once: more than the 10 - 6 instances a
    // pool of requests' own would have had, daemons included.
    let requests = slow(4);
    wait_until_at_least(server, "toil_live_instances{domain=\"misbehave\",tier=\"request\"}", 4.0).await;
    // While they run, six instances are held: four sessions fit, not five.
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(open_session().await.expect("a session while instances are free"));
    }
    match open_session().await {
        Err(wtransport::error::ConnectingError::SessionRejected) => {}
        other => panic!("a session past the node's instances was not refused: {other:?}"),
    }
    for r in requests {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(server.metric("toil_stream_sessions_refused_total{domain=\"echo\"}").await, 1.0);
    assert!(server.log().contains("all 10 of the node's instances (limits.maxInstances) are held"), "{}", server.log());

    // The requests ended: two more sessions fit (six, maxSessions), and
    // then requests get the two instances left.
    for _ in 0..2 {
        sessions.push(open_session().await.expect("a session in an instance a request gave back"));
    }
    let outcomes: Vec<_> = futures_util::future::join_all(slow(3)).await.into_iter().map(|r| r.unwrap()).collect();
    let full: Vec<_> = outcomes.iter().filter(|r| r.status == 503).collect();
    assert_eq!((outcomes.len() - full.len(), full.len()), (2, 1), "two ran, one found no instance");
    assert_eq!(full[0].header("x-toil-overload"), Some("node_full"), "{}", full[0].text());
    // Each session still has its box.
    let mut f = Frames::open(&sessions[5]).await;
    f.send(b"still here").await;
    assert_eq!(f.recv_text().await, "1:still here");
}

/// An idle echo box hibernates (no instance left), and the next frame,
/// datagram or close finds its count where it was, cycle after cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_box_hibernates_and_wakes_with_its_state() {
    let server: &'static Server = Box::leak(Box::new(start_server("hibernate", serde_json::json!({"limits": {"hibernateAfterMs": 200}}))));
    let (hibernating, live) = ("toil_stream_hibernating_boxes{domain=\"echo\"}", "toil_live_instances{domain=\"echo\",tier=\"stream\"}");
    let conn = wt_endpoint_for(server, server.http).connect(format!("https://echo.localhost:{}/echo", server.http.port())).await.unwrap();
    let mut f = Frames::open(&conn).await;
    let mut count = 0;
    for cycle in 1..=3 {
        // Frames closer together than the idle time keep the box awake.
        for _ in 0..3 {
            count += 1;
            f.send(format!("frame {count}").as_bytes()).await;
            assert_eq!(f.recv_text().await, format!("{count}:frame {count}"), "cycle {cycle}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(server.metric(hibernating).await, 0.0, "a box with events every 50 ms stays awake");
        wait_until_at_least(server, hibernating, 1.0).await;
        assert_eq!(server.metric(live).await, 0.0, "a hibernating box holds no instance");
        if cycle == 2 {
            // A datagram wakes it too.
            count += 1;
            conn.send_datagram(b"dgram").unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(5), conn.receive_datagram()).await.unwrap().unwrap();
            assert_eq!(&reply.payload()[..], format!("{count}:dgram").as_bytes());
            wait_until_at_least(server, hibernating, 1.0).await;
        }
    }
    let wakes = server.metric("toil_stream_box_wakes_total{domain=\"echo\"}").await;
    assert_eq!(wakes, 3.0, "two frames and a datagram woke it");
    // The close hook wakes it one last time, with the count intact.
    conn.close(wtransport::VarInt::from_u32(0), b"bye");
    wait_until_at_most(server, hibernating, 0.0).await;
    wait_until_at_most(server, live, 0.0).await;
    let log = server.log();
    assert!(log.contains(&format!("echo closed after {count} frames (code 0, \"bye\")")), "{log}");
    assert!(!log.contains("failed to wake"), "{log}");
}

/// A box's heap survives hibernation byte for byte; a box whose memory
/// grew past 16 MiB stays resident (its snapshot would read it all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_keeps_its_heap_through_hibernation_unless_it_is_large() {
    let server: &'static Server = Box::leak(Box::new(start_server("hibernate-heap", serde_json::json!({"limits": {"hibernateAfterMs": 200}}))));
    let (hibernating, live) = ("toil_stream_hibernating_boxes{domain=\"misbehave\"}", "toil_live_instances{domain=\"misbehave\",tier=\"stream\"}");
    let chaos = || async {
        let conn = wt_endpoint_for(server, server.http).connect(format!("https://misbehave.localhost:{}/chaos", server.http.port())).await.unwrap();
        let mut f = Frames::open(&conn).await;
        assert!(f.recv_text().await.starts_with("hello session "));
        (conn, f)
    };
    // 20 MiB kept: the box stays awake, and answers.
    let (_large, mut big) = chaos().await;
    big.send(b"keep 20480").await;
    let kept = big.recv_text().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(server.metric(hibernating).await, 0.0, "a box of over 16 MiB stays resident");
    assert_eq!(server.metric(live).await, 1.0);
    big.send(b"sum").await;
    assert_eq!(big.recv_text().await, format!("sum {} frames 2", kept.rsplit(' ').next().unwrap()));
    // 3 MiB kept: it hibernates, and wakes with every byte.
    let (small_conn, mut small) = chaos().await;
    small.send(b"keep 3072").await;
    let kept = small.recv_text().await;
    wait_until_at_least(server, hibernating, 1.0).await;
    assert_eq!(server.metric(live).await, 1.0, "only the large box holds an instance");
    small.send(b"sum").await;
    assert_eq!(small.recv_text().await, format!("sum {} frames 2", kept.rsplit(' ').next().unwrap()));
    assert_eq!(server.metric("toil_stream_box_wakes_total{domain=\"misbehave\"}").await, 1.0);

    // Meanwhile the node serves other domains, on both tiers.
    other_domains_serve(server).await;

    // A woken box is held to the deadline of the event that woke it.
    wait_until_at_least(server, hibernating, 1.0).await;
    small.send(b"sleep 10000").await;
    let (code, reason) = tokio::time::timeout(Duration::from_secs(5), closed(&small_conn)).await.expect("closed well before the sleep ends").unwrap();
    assert_eq!(code, toil_abi::stream::close_code::GUEST_FAULT as u64, "{reason}");
    assert!(reason.contains("deadline"), "{reason}");
    big.send(b"sum").await;
    assert!(big.recv_text().await.ends_with("frames 3"), "the resident box is untouched");
}

/// A module that a fresh instance would not reproduce (here: it has a
/// start function) cannot hibernate: its boxes stay resident and keep
/// their state, and the load log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_box_whose_module_cannot_hibernate_stays_resident() {
    let server: &'static Server = Box::leak(Box::new(start_server("resident", serde_json::json!({"limits": {"hibernateAfterMs": 100}}))));
    let mut manifest = toil_abi::manifest::header_record(toil_abi::Tier::Stream).to_vec();
    toil_abi::manifest::encode_stream(&mut manifest, "count");
    // Counts its events in a global; the start function zeroes it. Every
    // event answers OK and sends nothing, but the last (close or
    // disconnect) traps if fewer than 3 came before it (connect and two
    // frames): a lost count shows as a fault in the log.
    let wasm = wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1)
            (global $events (mut i32) (i32.const 7))
            (func $start (global.set $events (i32.const 0)))
            (start $start)
            (func (export "stream_dispatch") (param $event i32) (param $len i32) (result i32)
                (if (i32.or (i32.eq (local.get $event) (i32.const {close})) (i32.eq (local.get $event) (i32.const {disconnect})))
                    (then (if (i32.lt_u (global.get $events) (i32.const 3)) (then unreachable))))
                (global.set $events (i32.add (global.get $events) (i32.const 1)))
                (i32.const 0))
            (@custom "toil.manifest" "{escaped}"))"#,
        close = toil_abi::stream::CLOSE,
        disconnect = toil_abi::stream::DISCONNECT,
        escaped = wat_bytes(&manifest),
    ))
    .unwrap();
    let file = server.dir.join("count-stream.wasm");
    std::fs::write(&file, wasm).unwrap();
    let out = server.toil_admin(&["deploy", "--domain", "count", "--stream", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let conn = wt_endpoint_for(server, server.http).connect(format!("https://count.localhost:{}/count", server.http.port())).await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.send(b"one").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(server.metric("toil_stream_hibernating_boxes{domain=\"count\"}").await, 0.0, "it cannot hibernate");
    assert_eq!(server.metric("toil_live_instances{domain=\"count\",tier=\"stream\"}").await, 1.0, "it stays resident");
    f.send(b"two").await;
    other_domains_serve(server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.close(wtransport::VarInt::from_u32(0), b"");
    wait_until_at_most(server, "toil_live_instances{domain=\"count\",tier=\"stream\"}", 0.0).await;
    let log = server.log();
    assert!(log.contains("this domain's idle stream boxes stay resident: they cannot hibernate, as it has a start function"), "{log}");
    assert!(!log.contains("stream box failed"), "the box kept its count: {log}");
    assert_eq!(server.metric("toil_stream_box_wakes_total{domain=\"count\"}").await, 0.0);
}

/// The echo domain answers a fresh session, and hello a request.
async fn other_domains_serve(server: &Server) {
    let echo = wt_endpoint_for(server, server.http).connect(format!("https://echo.localhost:{}/echo", server.http.port())).await.unwrap();
    let mut e = Frames::open(&echo).await;
    e.send(b"hi").await;
    assert_eq!(e.recv_text().await, "1:hi");
    assert_eq!(http1(server.http, get("hello.localhost", "/")).await.status, 200);
}

async fn wait_until_at_least(server: &Server, sample: &str, value: f64) {
    for _ in 0..200 {
        if server.metric(sample).await >= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sample} stayed below {value}");
}

async fn wait_until_at_most(server: &Server, sample: &str, value: f64) {
    for _ in 0..200 {
        if server.metric(sample).await <= value {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sample} stayed above {value}");
}
