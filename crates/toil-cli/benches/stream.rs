//! The L2/L3 stream-tier benchmark: `cargo bench -p toil-cli --bench stream`.
//!
//! Prints a table of
//! 1. echo round-trip p50/p99 over WebTransport to `examples/echo` served by
//!    a real `toil dev` (a resident wasm box per session), against a native
//!    echo — the same QUIC/HTTP/3/WebTransport stack (`toil_edge::webtransport::protocol`) with
//!    the echo written in Rust, no wasm, no box — in alternating rounds of
//!    the same run, as a ratio;
//! 2. sessions per second: open a session, one frame round trip, close;
//! 3. server RSS per idle resident box with 10 000 concurrent sessions.
//!
//! Client and native server share this process; `toil dev` is its own
//! process, so its RSS is the boxes'. Machines are noisy: medians of rounds.
//! Flags: `--rounds N --samples N --idle N --seconds N` (after `--`).

#[path = "../tests/common/mod.rs"]
mod common;
mod native;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use toil_abi::stream::framing;
use toil_edge::webtransport::protocol::{Accepted, ConnectStream, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: &[u8] = b"0123456789abcdef0123456789abcdef";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (rounds, samples, idle, seconds) = (arg("--rounds", 3), arg("--samples", 3000), arg("--idle", 10_000), arg("--seconds", 5));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(rounds, samples, idle, seconds as u64));
}

async fn run(rounds: usize, samples: usize, idle: usize, seconds: u64) {
    let server: &'static Server = Box::leak(Box::new(start_server(
        "bench-stream",
        serde_json::json!({
            "apps": [{"domain": "echo", "dir": repo_root().join("examples/echo")}],
            "defaultDomain": "echo",
            "limits": {"memoryMb": 16, "maxInstances": idle + 200, "maxSessions": idle + 100, "idleTimeoutMs": 300_000,
                "maxConnections": idle + 1000, "maxConnectionsPerAddress": idle + 1000},
        }),
    )));
    let native = native_server(server).await;

    // 1. Round trips, alternating servers.
    let (mut toil_p50, mut toil_p99, mut native_p50, mut native_p99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        for (name, addr, p50, p99) in [("toil", server.http, &mut toil_p50, &mut toil_p99), ("native", native, &mut native_p50, &mut native_p99)] {
            let (a, b) = round_trips(server, addr, samples).await;
            eprintln!("round {round}: {name:<6} p50 {a:>7.1} µs  p99 {b:>7.1} µs");
            p50.push(a);
            p99.push(b);
        }
    }

    // 2. Sessions per second (8 clients, each: open, one round trip, close).
    let toil_sps = sessions_per_second(server, server.http, Duration::from_secs(seconds)).await;
    let native_sps = sessions_per_second(server, native, Duration::from_secs(seconds)).await;
    eprintln!("sessions/s: toil {toil_sps:.0}, native {native_sps:.0}");

    // 3. Idle boxes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();
    let (held, elapsed) = open_idle(server, idle).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib();

    let boxes = metric_sum(server, "toil_stream_live_boxes{").await;
    eprintln!("{} sessions open in {:.1} s; live boxes {boxes}; RSS {before} KiB -> {after} KiB", held.len(), elapsed.as_secs_f64());
    let per_box = (after as f64 - before as f64) / held.len() as f64;
    drop(held);

    let (tp50, tp99, np50, np99) = (median(&mut toil_p50), median(&mut toil_p99), median(&mut native_p50), median(&mut native_p99));
    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| echo round trip p50, toil (wasm box) / native (same run, median of {rounds} rounds × {samples}) | {tp50:.1} µs / {np50:.1} µs = {:.2}× |",
        tp50 / np50
    );
    println!("| echo round trip p99, toil / native | {tp99:.1} µs / {np99:.1} µs = {:.2}× |", tp99 / np99);
    println!("| sessions per second (open + 1 round trip + close, 8 clients), toil / native | {toil_sps:.0} / {native_sps:.0} |");
    println!("| server RSS per idle resident box ({idle} concurrent sessions, {boxes} live boxes) | {per_box:.1} KiB |");
    println!("| server RSS before / with the idle sessions | {} MiB / {} MiB |", before >> 10, after >> 10);
}

async fn metric_sum(server: &Server, prefix: &str) -> f64 {
    let text = server.metrics().await;
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn echo_url(addr: SocketAddr) -> String {
    format!("https://echo.localhost:{}/echo", addr.port())
}

/// p50 and p99 in µs of sequential frame round trips on one session.
async fn round_trips(server: &Server, addr: SocketAddr, n: usize) -> (f64, f64) {
    let conn = wt_endpoint_for(server, addr).connect(echo_url(addr)).await.expect("session");
    let mut frames = Frames::open(&conn).await;
    for _ in 0..n / 10 {
        frames.send(PAYLOAD).await;
        frames.recv().await.unwrap();
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        frames.send(PAYLOAD).await;
        let reply = frames.recv().await.unwrap();
        t.push(start.elapsed());
        assert!(reply.ends_with(PAYLOAD));
    }
    t.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(t[n / 2]), us(t[n * 99 / 100]))
}

async fn sessions_per_second(server: &'static Server, addr: SocketAddr, dur: Duration) -> f64 {
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let done = done.clone();
            tokio::spawn(async move {
                let endpoint = wt_endpoint_for(server, addr);
                while start.elapsed() < dur {
                    let conn = endpoint.connect(echo_url(addr)).await.expect("session");
                    let mut f = Frames::open(&conn).await;
                    f.send(PAYLOAD).await;
                    f.recv().await.unwrap();
                    conn.close(wtransport::VarInt::from_u32(0), b"");
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Opens `n` sessions from one client endpoint, each with one round trip
/// done, and keeps them open.
async fn open_idle(server: &'static Server, n: usize) -> (Vec<(wtransport::Connection, wtransport::SendStream)>, Duration) {
    let endpoint = Arc::new(wt_endpoint_for(server, server.http));
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (endpoint, sem) = (endpoint.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let conn = endpoint.connect(echo_url(server.http)).await.expect("session");
                let (mut send, mut recv) = conn.open_bi().await.unwrap().await.unwrap();
                send.write_all(&framing::header(PAYLOAD.len() as u32)).await.unwrap();
                send.write_all(PAYLOAD).await.unwrap();
                let mut buf = [0u8; 64];
                let mut got = 0;
                while got < framing::HEADER_LEN + 2 + PAYLOAD.len() {
                    got += recv.read(&mut buf[got..]).await.unwrap().expect("reply");
                }
                (conn, send)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        held.push(t.await.unwrap());
    }
    (held, start.elapsed())
}

/// The native baseline: the same WebTransport stack, the echo in Rust, on
/// one thread like one toil QUIC worker.
async fn native_server(server: &Server) -> SocketAddr {
    native::start(server, 1, native_session)
}

async fn native_session(session: Session, _connect: ConnectStream) {
    let mut count = 0u64;
    while let Ok(Some(Accepted::Stream(mut send, mut recv))) = session.accept().await {
        let mut decoder = framing::FrameDecoder::new(64 << 10);
        let mut buf = vec![0u8; 16 << 10];
        while let Ok(n) = recv.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut input = &buf[..n];
            while let Ok(Some(frame)) = decoder.decode(&mut input) {
                count += 1;
                let mut reply = format!("{count}:").into_bytes();
                reply.extend_from_slice(&frame);
                let mut out = framing::header(reply.len() as u32).to_vec();
                out.extend_from_slice(&reply);
                if send.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
    }
}
