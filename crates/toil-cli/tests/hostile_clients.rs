//! End to end: clients that try to starve a node. Stalled WebTransport
//! clients lose their sessions for real; a session's memory stays within
//! its bound; TCP connections are capped per node and per address with a
//! reserve of file descriptors that keeps the admin port answering; and
//! connections that stall (slowloris, idle keep-alive, idle HTTP/2, a body
//! that stops) are closed. During each attack a legitimate client is served.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use toil_abi::stream::{close_code, framing};

const CHAOS: &str = "misbehave.localhost";

/// Waits until `metric` of `s` reads `want`.
async fn metric_reaches(s: &Server, metric: &str, want: f64) -> bool {
    for _ in 0..100 {
        if s.metric(metric).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Ten clients that stop reading take all ten session slots. Their
/// connections grant 64 KiB of credit in all, so once the box's output
/// fills it even the close capsule cannot be sent. The host still closes
/// each (the client sees CLIENT_TOO_SLOW), frees the slots, and a new
/// client gets a session while the stalled ones are still connected.
#[tokio::test]
async fn stalled_clients_lose_their_sessions_for_real() {
    let s = start_server(
        "stall",
        serde_json::json!({"limits": {"maxSessions": 10, "deadlineMs": DEADLINE_MS, "memoryMb": MEMORY_MB, "sendStallTimeoutMs": 1000}}),
    );
    let cert = s.cert_sha256.clone();
    let connect = |path: &'static str| {
        let (cert, to) = (cert.clone(), s.http);
        async move { wt_endpoint_with_window(&cert, to, Some(64 << 10)).connect(format!("https://{CHAOS}:{}{path}", to.port())).await }
    };
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let conn = connect("/chaos").await.unwrap();
        let mut f = Frames::open(&conn).await;
        f.recv().await.unwrap();
        stalled.push((conn, f));
    }
    assert!(matches!(connect("/chaos").await, Err(wtransport::error::ConnectingError::SessionRejected)), "the eleventh session is over the cap");
    for (_, f) in &mut stalled {
        // Ask for far more than the client's window, and never read it.
        for _ in 0..8 {
            f.send(b"burst 16 60000").await;
        }
    }
    for (conn, _) in &stalled {
        let (code, reason) = closed(conn).await.expect("the stalled client sees its session close");
        assert_eq!(code, close_code::CLIENT_TOO_SLOW as u64, "{reason}");
    }
    assert!(metric_reaches(&s, "toil_stream_sessions_open{domain=\"misbehave\"}", 0.0).await, "every slot was freed");
    // The stalled clients are still here; a new one is served.
    let conn = connect("/chaos").await.expect("a new session while the stalled clients linger");
    let mut f = Frames::open(&conn).await;
    assert!(f.recv_text().await.starts_with("hello session"));
    f.send(b"x").await;
    assert_eq!(f.recv_text().await, "1:x");
    drop(stalled);
}

/// Four sessions each try to open 100 streams and push 1.3 MB of frames
/// down each, reading nothing back. A session may have 32 streams open;
/// its frames wait in the inbound queue (32 frames), one partial frame per
/// stream, and quinn's connection receive window (1 MiB); its replies in
/// one outbox and quinn's send window. So the node accepts at most about
/// 8 MiB per session, its memory grows by no more than that, and a
/// legitimate session is served meanwhile.
#[tokio::test]
async fn a_flood_of_unread_streams_stays_within_the_session_bound() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const BOUND_MIB: usize = 8;
    let s = start_server("flood", serde_json::json!({"limits": {"deadlineMs": DEADLINE_MS, "memoryMb": MEMORY_MB}}));
    let (cert, to) = (s.cert_sha256.clone(), s.http);
    // Warm up first: pooled instance slots stay resident once used, and
    // that is not what this test measures.
    for _ in 0..6 {
        let conn = wt_endpoint_pinned(&cert, to).connect(format!("https://{CHAOS}:{}/chaos", to.port())).await.unwrap();
        let mut f = Frames::open(&conn).await;
        f.recv().await.unwrap();
        conn.close(wtransport::VarInt::from_u32(0), b"");
    }
    assert!(metric_reaches(&s, "toil_stream_sessions_open{domain=\"misbehave\"}", 0.0).await);
    tokio::time::sleep(Duration::from_secs(6)).await; // a heap trim
    let baseline = s.rss_kib();
    let mut attackers = Vec::new();
    for _ in 0..4 {
        // The box answers each frame on its stream, and the attacker never
        // reads: once its receive window is full the box's writes stall,
        // and with them the session's intake.
        let conn = wt_endpoint_with_window(&cert, to, Some(256 << 10)).connect(format!("https://{CHAOS}:{}/chaos", to.port())).await.unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for _ in 0..100 {
            let open = async { conn.open_bi().await.ok()?.await.ok() };
            let Ok(Some((mut send, recv))) = tokio::time::timeout(Duration::from_millis(300), open).await else {
                break; // no stream credit: the stream cap holds
            };
            let accepted = accepted.clone();
            writers.push(tokio::spawn(async move {
                let frame = [&framing::header(60_000)[..], &[b'z'; 60_000][..]].concat();
                for _ in 0..(1_300_000 / frame.len()) {
                    if send.write_all(&frame).await.is_err() {
                        break;
                    }
                    accepted.fetch_add(frame.len(), Ordering::Relaxed);
                }
                drop(recv);
                send
            }));
        }
        assert!(writers.len() < 32, "a session may open at most 32 streams (its CONNECT is one), got {}", writers.len());
        attackers.push((conn, writers, accepted));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (_, _, accepted) in &attackers {
        let mib = accepted.load(Ordering::Relaxed) >> 20;
        assert!(mib <= BOUND_MIB, "the node accepted {mib} MiB from one session");
    }
    let grown_mib = s.rss_kib().saturating_sub(baseline) as usize / 1024;
    assert!(grown_mib <= 4 * BOUND_MIB + 24, "RSS grew by {grown_mib} MiB under the flood");
    // A legitimate session is served during the flood.
    let conn = wt_endpoint_pinned(&cert, to).connect(format!("https://{CHAOS}:{}/chaos", to.port())).await.unwrap();
    let mut f = Frames::open(&conn).await;
    assert!(f.recv_text().await.starts_with("hello session"));
    f.send(b"y").await;
    assert_eq!(f.recv_text().await, "1:y");
    for (conn, writers, _) in attackers {
        conn.close(wtransport::VarInt::from_u32(0), b"");
        writers.into_iter().for_each(|w| w.abort());
    }
    assert!(metric_reaches(&s, "toil_stream_sessions_open{domain=\"misbehave\"}", 1.0).await);
    // What the flood made the node hold is handed back once it is over.
    let mut after_mib = 0;
    for _ in 0..30 {
        after_mib = s.rss_kib() as usize / 1024;
        if after_mib <= baseline as usize / 1024 + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("flood: RSS baseline {} MiB, grew {grown_mib} MiB, after close {after_mib} MiB", baseline / 1024);
    assert!(after_mib <= baseline as usize / 1024 + 8, "RSS back near its baseline ({} MiB) after the flood: {after_mib} MiB", baseline / 1024);
}

fn read_all_within(mut s: TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

fn stall_server() -> Server {
    start_server(
        "stall-tcp",
        serde_json::json!({"limits": {
            "deadlineMs": DEADLINE_MS, "memoryMb": MEMORY_MB, "maxRequestBodyBytes": MAX_REQUEST_BODY,
            "headerTimeoutMs": 1000, "requestIdleTimeoutMs": 1500, "bodyTimeoutMs": 1000
        }}),
    )
}

#[tokio::test]
async fn an_http3_connection_kept_alive_by_pings_alone_is_closed() {
    let s = stall_server();
    let ep = h3_endpoint_keeping_alive(&s.cert, Duration::from_millis(300));
    let conn = ep.connect(s.http, "localhost").unwrap().await.unwrap();
    let started = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.expect("closed by the node");
    assert!(started.elapsed() < Duration::from_secs(5), "{why} after {:?}", started.elapsed());
}

/// An HTTP/3 client that takes a response's head and never reads its body
/// does not hold it: after `bodyTimeoutMs` the node resets the stream.
#[tokio::test]
async fn an_http3_response_nobody_reads_is_let_go() {
    let s = stall_server();
    let ep = h3_endpoint_with_window(&s.cert, 16 << 10);
    let conn = ep.connect(s.http, "localhost").unwrap().await.unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn)).await.unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let req = http::Request::get("https://misbehave.localhost/big?mib=2").body(()).unwrap();
    let mut stream = send.send_request(req).await.unwrap();
    stream.finish().await.unwrap();
    assert_eq!(stream.recv_response().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await; // not reading
    let mut got = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.recv_data()).await.expect("the stream ends") {
            Ok(Some(chunk)) => got += bytes::Buf::remaining(&chunk),
            Ok(None) => break "finished",
            Err(_) => break "reset",
        }
    };
    assert_eq!(ended, "reset", "the node let the response go ({got} bytes arrived)");
    assert!(got < 2 << 20, "{got}");
}

#[test]
fn connections_that_stall_are_closed() {
    let s = stall_server();
    let connect = || TcpStream::connect(s.http).unwrap();

    // Slowloris: a head that never ends.
    let mut c = connect();
    c.write_all(b"GET /hello/x HTTP/1.1\r\nHost: hello.localhost\r\nX-Slow: ").unwrap();
    let (_, took) = read_all_within(c, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "a slow head is cut off after headerTimeoutMs ({took:?})");

    // An idle keep-alive connection after a response.
    let mut c = connect();
    c.write_all(b"GET /hello/x HTTP/1.1\r\nHost: hello.localhost\r\n\r\n").unwrap();
    let (text, took) = read_all_within(c, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(took < Duration::from_secs(5), "an idle keep-alive connection is closed ({took:?})");

    // A client that never sends a byte, and an idle HTTP/2 connection.
    let (_, took) = read_all_within(connect(), Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "a silent connection is closed ({took:?})");
    let mut c = connect();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let (_, took) = read_all_within(c, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "an idle HTTP/2 connection is closed ({took:?})");

    // An HTTP/2 connection kept up by PINGs alone.
    let mut c = connect();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let mut pinger = c.try_clone().unwrap();
    std::thread::spawn(move || {
        let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping";
        while pinger.write_all(ping).is_ok() {
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (_, took) = read_all_within(c, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "PINGs do not keep a connection that serves nothing ({took:?})");

    // A body that stops after 10 of 1,000 bytes: 408.
    let mut c = connect();
    c.write_all(b"POST /size HTTP/1.1\r\nHost: misbehave.localhost\r\nContent-Length: 1000\r\n\r\n0123456789").unwrap();
    let (text, took) = read_all_within(c, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // A declared terabyte: 413 at once, nothing read.
    let mut c = connect();
    c.write_all(b"POST /size HTTP/1.1\r\nHost: misbehave.localhost\r\nContent-Length: 1000000000000\r\n\r\n").unwrap();
    let (text, took) = read_all_within(c, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(took < Duration::from_millis(900), "refused before any body timeout ({took:?})");

    assert_eq!(get_blocking(s.http, "hello.localhost", "/hello/after").map(|r| r.0), Some(200));
}

/// With the soft and hard open-file limit at 700, the node keeps 512
/// descriptors in reserve: 300 idle connections get 188 places, the admin
/// port and its health check still answer, the accept loop does not spin,
/// and once the idle connections time out a new request is served.
#[tokio::test]
async fn idle_connections_cannot_take_every_file_descriptor() {
    let s = start_server_with_fd_limit(
        "fds",
        serde_json::json!({"limits": {"deadlineMs": DEADLINE_MS, "memoryMb": MEMORY_MB, "headerTimeoutMs": 2000, "requestIdleTimeoutMs": 2000}}),
        Some(700),
    );
    assert!(s.log().contains("max_connections=188"), "the cap leaves the reserve: {}", s.log());
    let idle: Vec<TcpStream> = (0..300).filter_map(|_| TcpStream::connect(s.http).ok()).collect();
    assert!(idle.len() >= 188);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu_before = s.cpu_time();
    let health = http1(s.admin, get("admin", "/healthz")).await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"), "the admin port answers during the attack");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spent = s.cpu_time() - cpu_before;
    assert!(spent < Duration::from_millis(500), "no accept loop spins: {spent:?} of CPU in about a second");
    // The idle connections are closed by the node; new clients are served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(get_blocking(s.http, "hello.localhost", "/hello/after").map(|r| r.0), Some(200));
    drop(idle);
}

#[test]
fn one_address_cannot_take_every_connection() {
    let s = start_server(
        "per-address",
        serde_json::json!({"limits": {"deadlineMs": DEADLINE_MS, "memoryMb": MEMORY_MB, "maxConnectionsPerAddress": 20}}),
    );
    let hog: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(s.http).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // A 21st connection from the same address is closed at once (an
    // admitted one would wait 10 s for its head) ...
    let (text, took) = read_all_within(TcpStream::connect(s.http).unwrap(), Duration::from_secs(5));
    assert!(text.is_empty() && took < Duration::from_secs(1), "{text} after {took:?}");
    // ... while another address is served.
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into()).unwrap();
    other.connect(&s.http.into()).unwrap();
    let mut other: TcpStream = other.into();
    other.write_all(b"GET /hello/other HTTP/1.1\r\nHost: hello.localhost\r\nConnection: close\r\n\r\n").unwrap();
    let (text, _) = read_all_within(other, Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(hog);
}

/// Streams that name a session this connection does not have are refused,
/// and their stream credit comes back: 150 of them (the cap is 32 open at
/// once) leave the connection's real session able to open a stream.
#[tokio::test]
async fn streams_for_a_foreign_session_return_their_credit() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let quic = conn.quic_connection();
    // WEBTRANSPORT_STREAM (0x41) and session id 1000, each a 2-byte varint.
    let header = [0x40, 0x41, 0x40 | (1000u16 >> 8) as u8, (1000u16 & 0xff) as u8];
    for i in 0..150 {
        let (mut send, recv) = tokio::time::timeout(Duration::from_secs(3), quic.open_bi())
            .await
            .unwrap_or_else(|_| panic!("no stream credit after {i} foreign streams"))
            .unwrap_or_else(|e| panic!("opening foreign stream {i}: {e}"));
        send.write_all(&header).await.unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(3), send.stopped()).await;
        assert!(stopped.is_ok(), "the server refuses foreign stream {i}");
        drop((send, recv));
    }
    let mut f = Frames::open(&conn).await;
    assert!(f.recv_text().await.starts_with("hello session"), "the real session still opens streams");
    f.send(b"z").await;
    assert_eq!(f.recv_text().await, "1:z");
}
