//! The soak benchmark (a table, not a test): hostile and legitimate traffic
//! together against one `toil dev`, with the node's RSS sampled every second.
//!
//! Hostile, all the time: requests sleeping in host calls, header bombs,
//! runaway loops and memory bombs; slowloris heads and bodies that stop;
//! WebTransport clients that stop reading (and grant no credit), floods of
//! unread streams with partial frames, boxes sleeping in host calls.
//! Legitimate, beside them: HTTP/1.1 requests to another domain and
//! WebTransport echo sessions. It prints RSS and the legitimate success
//! rate per interval, then the overall rate and the RSS slope over the
//! second half (a leak shows as a steady positive slope).
//!
//! `cargo bench -p toil-cli --bench soak [-- --seconds 600 --every 10]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;

const CHAOS: &str = "misbehave.localhost";

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    hostile: AtomicU64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (seconds, every) = (arg("--seconds", 600), arg("--every", 10).max(1));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(soak(seconds, every));
}

async fn soak(seconds: u64, every: u64) {
    let s = Arc::new(start_server(
        "soak",
        serde_json::json!({"limits": {
            "deadlineMs": 100, "memoryMb": MEMORY_MB, "maxRequestBodyBytes": MAX_REQUEST_BODY,
            "maxInstances": 300, "maxSessions": 100, "sendStallTimeoutMs": 1000, "idleTimeoutMs": 5000,
            "headerTimeoutMs": 2000, "requestIdleTimeoutMs": 3000, "bodyTimeoutMs": 2000
        }}),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    let running = |stop: &Arc<AtomicBool>| !stop.load(Ordering::Relaxed);

    // Hostile guests, through hostile requests.
    for (path, loops) in [("/sleep?ms=5000", 4), ("/headers?n=40000", 1), ("/loop", 1), ("/bomb", 1)] {
        for _ in 0..loops {
            let (s, stop, c) = (s.clone(), stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                while running(&stop) {
                    let _ = tokio::time::timeout(Duration::from_secs(10), http1(s.http, request("GET", CHAOS, path, Bytes::new()))).await;
                    c.hostile.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    // Slowloris heads and bodies that stop.
    for body in [false, true] {
        for _ in 0..8 {
            let (s, stop, c) = (s.clone(), stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                while running(&stop) {
                    let Ok(mut tcp) = tokio::net::TcpStream::connect(s.http).await else { continue };
                    let head: &[u8] = if body {
                        b"POST /size HTTP/1.1\r\nHost: misbehave.localhost\r\nContent-Length: 1000\r\n\r\n0123456789"
                    } else {
                        b"GET /hello/x HTTP/1.1\r\nHost: hello.localhost\r\nX-Slow: "
                    };
                    let _ = tcp.write_all(head).await;
                    let mut sink = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut sink)).await;
                    c.hostile.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    // WebTransport clients that stop reading, flood streams, or make the box sleep.
    for kind in ["stall", "flood", "sleep"] {
        for _ in 0..3 {
            let (s, stop, c) = (s.clone(), stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                while running(&stop) {
                    let ep = wt_endpoint_with_window(&s.cert_sha256, s.http, Some(64 << 10));
                    let Ok(conn) = ep.connect(format!("https://{CHAOS}:{}/chaos", s.http.port())).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let attack = async {
                        let mut f = Frames::open(&conn).await;
                        let mut held = Vec::new(); // streams kept open until the connection goes
                        match kind {
                            "stall" => {
                                for _ in 0..8 {
                                    f.send(b"burst 16 60000").await;
                                }
                            }
                            "sleep" => f.send(b"sleep 5000").await,
                            _ => {
                                for _ in 0..40 {
                                    let open = async { conn.open_bi().await.ok()?.await.ok() };
                                    let Ok(Some((mut send, recv))) = tokio::time::timeout(Duration::from_millis(200), open).await else { break };
                                    let _ = send.write_all(&toil_abi::stream::framing::header(60_000)).await;
                                    let _ = send.write_all(&[b'z'; 50_000]).await;
                                    held.push((send, recv));
                                }
                            }
                        }
                        let _ = closed(&conn).await;
                        drop(held);
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(20), attack).await;
                    c.hostile.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    // Legitimate traffic.
    for i in 0..4 {
        let (s, stop, c) = (s.clone(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            while running(&stop) {
                let req = request("GET", "hello.localhost", &format!("/hello/{i}"), Bytes::new());
                match tokio::time::timeout(Duration::from_secs(5), http1(s.http, req)).await {
                    Ok(r) if r.status == 200 => c.ok.fetch_add(1, Ordering::Relaxed),
                    _ => c.failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for _ in 0..2 {
        let (s, stop, c) = (s.clone(), stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            while running(&stop) {
                let session = async {
                    let conn =
                        wt_endpoint_pinned(&s.cert_sha256, s.http).connect(format!("https://echo.localhost:{}/echo", s.http.port())).await.ok()?;
                    let mut f = Frames::open(&conn).await;
                    for n in 1..=10 {
                        f.send(b"ping").await;
                        if f.recv_text().await != format!("{n}:ping") {
                            return None;
                        }
                    }
                    conn.close(wtransport::VarInt::from_u32(0), b"");
                    Some(())
                };
                match tokio::time::timeout(Duration::from_secs(5), session).await {
                    Ok(Some(())) => c.ok.fetch_add(1, Ordering::Relaxed),
                    _ => c.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    println!("soak: {seconds} s of hostile and legitimate traffic against one toil dev (RSS sampled every second)");
    println!("| t (s) | RSS (MiB) | legitimate ok | legitimate failed | hostile attempts |");
    println!("|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let (mut last_ok, mut last_failed, mut last_hostile) = (0, 0, 0);
    for second in 1..=seconds {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + Duration::from_secs(second))).await;
        let rss = s.rss_kib() as f64 / 1024.0;
        samples.push((second as f64, rss));
        if second % every == 0 || second == seconds {
            let (ok, failed, hostile) =
                (counts.ok.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed), counts.hostile.load(Ordering::Relaxed));
            println!("| {second} | {rss:.1} | {} | {} | {} |", ok - last_ok, failed - last_failed, hostile - last_hostile);
            (last_ok, last_failed, last_hostile) = (ok, failed, hostile);
        }
    }
    stop.store(true, Ordering::Relaxed);
    tasks.iter().for_each(|t| t.abort());

    let (ok, failed) = (counts.ok.load(Ordering::Relaxed), counts.failed.load(Ordering::Relaxed));
    let second_half = &samples[samples.len() / 2..];
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    println!();
    println!("| legitimate success rate | RSS slope, second half | RSS first / peak / last |");
    println!("|---:|---:|---:|");
    println!(
        "| {:.3} % ({ok} of {}) | {:+.2} MiB/min | {:.1} / {peak:.1} / {:.1} MiB |",
        100.0 * ok as f64 / (ok + failed).max(1) as f64,
        ok + failed,
        slope(second_half) * 60.0,
        samples.first().map_or(0.0, |s| s.1),
        samples.last().map_or(0.0, |s| s.1),
    );
    let panicked = s.log().matches("panicked").count();
    println!("host panics in the log: {panicked}");
}

/// Least-squares slope of `(x, y)` samples.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (samples.iter().map(|s| s.0).sum::<f64>() / n, samples.iter().map(|s| s.1).sum::<f64>() / n);
    let cov: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 - my)).sum();
    let var: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    cov / var
}
