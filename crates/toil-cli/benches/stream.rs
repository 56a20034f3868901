//! The L2/L3 stream-tier benchmark: `cargo bench -p toil-cli --bench stream`.
//!
//! Prints a table of
//! 1. echo round-trip p50/p99 over WebTransport to `examples/echo` served by
//!    a real `toil dev` (a resident wasm box per session), against a native
//!    echo — the same QUIC/HTTP/3/WebTransport stack (`toil_edge::webtransport::protocol`) with
//!    the echo written in Rust, no wasm, no box — a session to each, their
//!    round trips taken in turns of 50 (so a noisy machine's quiet and busy
//!    moments fall on both alike), as a ratio; and each server's CPU time
//!    per round trip over those turns (every thread, to the nanosecond from
//!    `/proc/.../schedstat`), which a busy machine disturbs far less than
//!    latency: what toil adds per event;
//! 2. sessions per second: open a session, one frame round trip, close;
//! 3. requests per second on a stream each (RPC style: open a stream, one
//!    frame, finish, read the answer to the stream's end), 16 in flight on
//!    one session, against the native echo;
//! 4. server RSS per idle resident box with 10 000 concurrent sessions, and
//!    how much of it is the wasm instance pool's linear memories and tables,
//!    its fiber stacks, and the host (QUIC, TLS, HTTP/3, the session, the
//!    store); with the proportional set size (shared pages divided) and
//!    the page tables, which RSS leaves out; then the same once every box
//!    has hibernated (`limits.hibernateAfterMs`), and the round trip of a
//!    frame that wakes a box against the next one;
//! 5. the same idle sessions held by the native server started as a process
//!    of its own: what the stack alone (QUIC, TLS, HTTP/3, the WebTransport
//!    session) costs, so the difference is what the box costs.
//!
//! Client and native server share this process for 1-3; `toil dev` is its
//! own process, so its RSS is the boxes'. Machines are noisy: medians of rounds.
//! Flags: `--rounds N --samples N --idle N --seconds N` (after `--`), and
//! `--hold N` to keep the idle sessions open N seconds more, so the
//! server's memory can be looked at (`/proc/PID/smaps`, `heaptrack -p`);
//! the client's QUIC idle timeout (30 s) ends them after that.

#[path = "../tests/common/mod.rs"]
mod common;
mod native;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use toil_abi::stream::framing;
use toil_edge::webtransport::protocol::{Accepted, ConnectStream, Connection};
use tokio::io::AsyncWriteExt;

const PAYLOAD: &[u8] = b"0123456789abcdef0123456789abcdef";
const HIBERNATE_AFTER_MS: u64 = 30_000;
/// Hibernating boxes sent a frame each, for the wake's round trip.
const WAKES: usize = 300;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (rounds, samples, idle, seconds) = (arg("--rounds", 5), arg("--samples", 3000), arg("--idle", 10_000), arg("--seconds", 5));
    let hold = Duration::from_secs(arg("--hold", 0) as u64);
    if let Some(dir) = args.iter().position(|a| a == "--native-server").and_then(|i| args.get(i + 1)) {
        return serve_native(std::path::Path::new(dir));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(run(rounds, samples, idle, seconds as u64, hold));
}

async fn run(rounds: usize, samples: usize, idle: usize, seconds: u64, hold: Duration) {
    let server: &'static Server = Box::leak(Box::new(start_server(
        "bench-stream",
        serde_json::json!({
            "apps": [{"domain": "echo", "dir": repo_root().join("examples/echo")}],
            "defaultDomain": "echo",
            // Boxes hibernate 30 s after their last event (the default is
            // 10 s), so the reading 7 s after the last of 10 000 sessions
            // opened (18 s after the first) sees every box still awake.
            "limits": {"memoryMb": 16, "maxInstances": idle + 200, "maxSessions": idle + 100, "idleTimeoutMs": 300_000, "hibernateAfterMs": HIBERNATE_AFTER_MS,
                "maxConnections": idle + 1000, "maxConnectionsPerAddress": idle + 1000},
        }),
    )));
    let native = native_server(server).await;

    // 1. Round trips: a session to each server, taken in turns.
    let (mut toil_p50, mut toil_p99, mut native_p50, mut native_p99) = (vec![], vec![], vec![], vec![]);
    let (mut toil_cpu, mut native_cpu) = (vec![], vec![]);
    for round in 1..=rounds {
        let [toil, native] = round_trips(server, [server.http, native], samples).await;
        eprintln!(
            "round {round}: p50 toil {:>6.1} µs, native {:>6.1} µs = {:.2}×; p99 toil {:>7.1} µs, native {:>7.1} µs; CPU per round trip toil {:.1} µs, native {:.1} µs",
            toil.p50,
            native.p50,
            toil.p50 / native.p50,
            toil.p99,
            native.p99,
            toil.cpu,
            native.cpu
        );
        toil_p50.push(toil.p50);
        toil_p99.push(toil.p99);
        native_p50.push(native.p50);
        native_p99.push(native.p99);
        toil_cpu.push(toil.cpu);
        native_cpu.push(native.cpu);
    }

    // 2. Sessions per second (8 clients, each: open, one round trip, close).
    let toil_sps = sessions_per_second(server, server.http, Duration::from_secs(seconds)).await;
    let native_sps = sessions_per_second(server, native, Duration::from_secs(seconds)).await;
    eprintln!("sessions/s: toil {toil_sps:.0}, native {native_sps:.0}");

    // 3. A request per stream.
    let (mut toil_rps, mut native_rps) = (vec![], vec![]);
    for round in 1..=rounds {
        let t = calls_per_second(server, server.http, Duration::from_secs(seconds)).await;
        let n = calls_per_second(server, native, Duration::from_secs(seconds)).await;
        eprintln!("round {round}: calls/s toil {t:.0}, native {n:.0}");
        toil_rps.push(t);
        native_rps.push(n);
    }

    // 4. Idle boxes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Memory::of(server.pid);
    let (mut held, elapsed) = open_idle(server, server.http, idle).await;
    // Read twice: 1 s after the last session opened, while glibc still
    // holds what the handshakes freed, and once the node's heap trim (every
    // 5 s) has handed that back: what idle sessions hold for as long as
    // they stay. The live boxes are counted after, to show none ended.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = Memory::of(server.pid);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = Memory::of(server.pid);
    let boxes = metric_sum(server, "toil_stream_live_boxes{").await;
    eprintln!(
        "{} sessions open in {:.1} s; live boxes {boxes}; RSS {} KiB -> {} KiB after 1 s, {} KiB after 7 s",
        held.len(),
        elapsed.as_secs_f64(),
        before.rss,
        early.rss,
        after.rss
    );
    let (per_box, early_per_box) = (after.per(&before, held.len()), early.per(&before, held.len()));
    // Then every box hibernates, and the heap trim runs once more.
    let asleep = Instant::now();
    while metric_sum(server, "toil_stream_hibernating_boxes{").await < held.len() as f64 && asleep.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let hibernated = Memory::of(server.pid);
    let sleeping = metric_sum(server, "toil_stream_hibernating_boxes{").await;
    eprintln!("{sleeping} boxes hibernating; RSS {} KiB", hibernated.rss);
    let hibernated_per_box = hibernated.per(&before, held.len());
    if !hold.is_zero() {
        eprintln!("holding {} sessions for {} s: server pid {}", held.len(), hold.as_secs(), server.pid);
        tokio::time::sleep(hold).await;
    }
    // A frame to a hibernating box wakes it: that round trip, then the
    // next one (the box awake), on the same sessions.
    let (mut woken, mut awake) = (Vec::new(), Vec::new());
    for (_, send, recv) in held.iter_mut().take(WAKES) {
        woken.push(stream_round_trip(send, recv).await);
        awake.push(stream_round_trip(send, recv).await);
    }
    drop(held);

    // 5. The same, on the native server in a process of its own.
    let native_per_session = native_idle(server, idle).await;
    let hibernated_over_native = hibernated_per_box.rss - native_per_session.rss;

    let (tp50, tp99, np50, np99) = (median(&mut toil_p50), median(&mut toil_p99), median(&mut native_p50), median(&mut native_p99));
    println!();
    println!("| measurement | value |");
    println!("|---|---|");
    println!(
        "| echo round trip p50, toil (wasm box) / native (same run, in turns of {TURN}, median of {rounds} rounds × {samples}) | {tp50:.1} µs / {np50:.1} µs = {:.2}× |",
        tp50 / np50
    );
    println!("| echo round trip p99, toil / native | {tp99:.1} µs / {np99:.1} µs = {:.2}× |", tp99 / np99);
    let (tcpu, ncpu) = (median(&mut toil_cpu), median(&mut native_cpu));
    println!(
        "| server CPU per echo round trip (every thread, user + kernel), toil / native; what toil adds | {tcpu:.1} µs / {ncpu:.1} µs = {:.2}×; {:.1} µs |",
        tcpu / ncpu,
        tcpu - ncpu
    );
    println!("| sessions per second (open + 1 round trip + close, 8 clients), toil / native | {toil_sps:.0} / {native_sps:.0} |");
    let (trps, nrps) = (median(&mut toil_rps), median(&mut native_rps));
    println!("| requests on a stream each per second (16 in flight, one session), toil / native | {trps:.0} / {nrps:.0} = {:.2}× |", trps / nrps);
    println!(
        "| server RSS per idle resident box ({idle} concurrent sessions, {boxes} live boxes), settled (7 s) / 1 s after the last opened | {:.1} KiB / {:.1} KiB |",
        per_box.rss, early_per_box.rss
    );
    println!(
        "| of which wasm linear memory and table / wasm fiber stack / the host (QUIC, TLS, HTTP/3, session, store) | {:.1} KiB / {:.1} KiB / {:.1} KiB |",
        per_box.wasm_memory,
        per_box.wasm_stacks,
        per_box.rss - per_box.wasm_memory - per_box.wasm_stacks
    );
    println!(
        "| the same boxes hibernating (no instance; {sleeping} of them), RSS per idle session, settled; of which wasm linear memory and table / fiber stack | {:.1} KiB; {:.1} KiB / {:.1} KiB |",
        hibernated_per_box.rss, hibernated_per_box.wasm_memory, hibernated_per_box.wasm_stacks
    );
    let (wake_p50, awake_p50) = (median(&mut woken), median(&mut awake));
    println!(
        "| round trip of a frame that wakes a hibernating box / of the next frame (awake), p50 of {WAKES} | {wake_p50:.1} µs / {awake_p50:.1} µs |"
    );
    println!("| proportional (PSS: shared memory-image pages divided among instances) per box | {:.1} KiB |", per_box.pss);
    println!("| page tables per box (not in RSS) | {:.1} KiB |", per_box.page_tables);
    println!("| server RSS before / with the idle sessions | {:.0} MiB / {:.0} MiB |", before.rss / 1024.0, after.rss / 1024.0);
    println!(
        "| native server RSS per idle session (the same stack with no box, its own process, {idle} sessions, settled 7 s); PSS; page tables | {:.1} KiB; {:.1} KiB; {:.1} KiB |",
        native_per_session.rss, native_per_session.pss, native_per_session.page_tables
    );
    println!(
        "| what the box adds to an idle session: toil − native RSS, awake / hibernating | {:.1} KiB / {hibernated_over_native:.1} KiB |",
        per_box.rss - native_per_session.rss
    );
}

/// The child process of step 5: the native echo server on one thread,
/// its address on stdout, living until its stdin closes. It hands free
/// heap pages back every 5 s, as a node does.
fn serve_native(dir: &std::path::Path) {
    use std::io::Read;
    let addr = native::start(dir, 1, native_session);
    println!("{addr}");
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_secs(5));
        // SAFETY: malloc_trim only hands free pages back to the kernel.
        unsafe { libc::malloc_trim(0) };
    });
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

/// Memory per idle session of the native server, in a process of its own,
/// holding `n` sessions opened as for the boxes of step 4.
async fn native_idle(server: &'static Server, n: usize) -> Memory {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--native-server")
        .arg(&server.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the native server process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: SocketAddr = line.trim().parse().expect("the native server's address");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = Memory::of(child.id());
    let (held, elapsed) = open_idle(server, addr, n).await;
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = Memory::of(child.id());
    eprintln!("native: {} sessions open in {:.1} s; RSS {} KiB -> {} KiB after 7 s", held.len(), elapsed.as_secs_f64(), before.rss, after.rss);
    let per_session = after.per(&before, held.len());
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
    per_session
}

/// One line of `/proc/PID/smaps`, with its `Rss`.
struct Mapping {
    start: u64,
    end: u64,
    /// Anonymous, or a wasm memory image.
    pool_like: bool,
    /// No access (`---p`): a guard page.
    guard: bool,
    rss: f64,
}

/// Where a process's memory is, in KiB, from `/proc/PID/smaps` and
/// `status`.
#[derive(Clone, Copy, Default)]
struct Memory {
    /// Resident set, as `ps` shows it.
    rss: f64,
    /// Proportional set: shared pages (the wasm memory images that every
    /// instance maps) divided among their mappers.
    pss: f64,
    /// Page tables: not in RSS, but real memory, and each instance's
    /// reserved address space needs its own.
    page_tables: f64,
    /// Resident in the wasm instance pool's linear memories and tables.
    wasm_memory: f64,
    /// Resident in the pool's fiber stacks (a store keeps the stack of its
    /// last call, so an idle box holds one).
    wasm_stacks: f64,
}

impl Memory {
    /// The pool reserves address space up front, which the kernel splits
    /// into many mappings (guard pages, memory images mapped from a memfd):
    /// a run of adjacent anonymous or memory-image mappings spanning 64 GiB
    /// or more is linear memories (a 4 GiB slot and guards per instance;
    /// nothing else in the process comes near that size), and a run with a
    /// hundred or more 2 MiB mappings each after a 4 KiB guard page is the
    /// fiber stacks (those mappings) and the tables (the rest).
    fn of(pid: u32) -> Memory {
        const STACK: u64 = 2 << 20; // wasmtime's default async stack size
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
        let mut maps: Vec<Mapping> = Vec::new();
        let mut memory = Memory::default();
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            let range = first.split_once('-').and_then(|(s, e)| Some((u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?)));
            let kib = |rest: &str| rest.trim().trim_end_matches(" kB").trim().parse::<f64>().unwrap_or(0.0);
            if let Some((start, end)) = range {
                let guard = words.next() == Some("---p");
                let name = words.nth(3).unwrap_or("");
                let pool_like = name.is_empty() || name.contains("wasm-memory-image");
                maps.push(Mapping { start, end, pool_like, guard, rss: 0.0 });
            } else if let (Some(last), Some(rest)) = (maps.last_mut(), line.strip_prefix("Rss:")) {
                last.rss = kib(rest);
                memory.rss += last.rss;
            } else if let Some(rest) = line.strip_prefix("Pss:") {
                memory.pss += kib(rest);
            }
        }
        // Runs of adjacent pool-like mappings, as index ranges.
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, m) in maps.iter().enumerate() {
            match runs.last_mut() {
                Some(run) if m.pool_like && run.end == i && maps[i - 1].end == m.start => run.end = i + 1,
                _ if m.pool_like => runs.push(i..i + 1),
                _ => {}
            }
        }
        for run in runs.into_iter().map(|r| &maps[r]) {
            let is_stack = |j: usize| j > 0 && run[j].end - run[j].start == STACK && run[j - 1].guard && run[j - 1].end - run[j - 1].start == 4096;
            let stacks = (0..run.len()).filter(|&j| is_stack(j)).count();
            if stacks < 100 && run[run.len() - 1].end - run[0].start < 64 << 30 {
                continue; // not the pool
            }
            for (j, m) in run.iter().enumerate() {
                match is_stack(j) {
                    true => memory.wasm_stacks += m.rss,
                    false => memory.wasm_memory += m.rss,
                }
            }
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        memory.page_tables = status
            .lines()
            .find_map(|l| l.strip_prefix("VmPTE:"))
            .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0.0))
            .unwrap_or(0.0);
        memory
    }

    /// Growth from `before` to `self`, per item.
    fn per(&self, before: &Memory, items: usize) -> Memory {
        let per = |a: f64, b: f64| (a - b) / items as f64;
        Memory {
            rss: per(self.rss, before.rss),
            pss: per(self.pss, before.pss),
            page_tables: per(self.page_tables, before.page_tables),
            wasm_memory: per(self.wasm_memory, before.wasm_memory),
            wasm_stacks: per(self.wasm_stacks, before.wasm_stacks),
        }
    }
}

/// Requests per second, each on a stream of its own (one frame, finish,
/// the answer to the stream's end), 16 in flight on one session.
async fn calls_per_second(server: &Server, addr: SocketAddr, dur: Duration) -> f64 {
    let conn = wt_endpoint_for(server, addr).connect(echo_url(addr)).await.expect("session");
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let (conn, done) = (conn.clone(), done.clone());
            tokio::spawn(async move {
                while start.elapsed() < dur {
                    let (mut send, mut recv) = conn.open_bi().await.unwrap().await.unwrap();
                    send.write_all(&framing::header(PAYLOAD.len() as u32)).await.unwrap();
                    send.write_all(PAYLOAD).await.unwrap();
                    send.finish().await.unwrap();
                    let mut buf = [0u8; 128];
                    let mut got = 0;
                    while let Ok(Some(n)) = recv.read(&mut buf[got..]).await {
                        got += n;
                    }
                    assert!(got > framing::HEADER_LEN + PAYLOAD.len(), "an answer, then the stream's end");
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in callers {
        c.await.unwrap();
    }
    done.load(std::sync::atomic::Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn metric_sum(server: &Server, prefix: &str) -> f64 {
    let text = server.metrics().await;
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn echo_url(addr: SocketAddr) -> String {
    format!("https://echo.localhost:{}/echo", addr.port())
}

/// Round trips timed in turns of this many, so a noisy machine's quiet and
/// busy moments fall on both servers alike.
const TURN: usize = 50;

/// p50, p99 and server CPU time per round trip, in µs, of `n` sequential
/// frame round trips on one session to each of `addrs` (toil, native),
/// taken `TURN` at a time from each in turn (each turn starting with the
/// other server).
async fn round_trips(server: &Server, addrs: [SocketAddr; 2], n: usize) -> [Trips; 2] {
    let mut sessions = Vec::new();
    for addr in addrs {
        let conn = wt_endpoint_for(server, addr).connect(echo_url(addr)).await.expect("session");
        let mut frames = Frames::open(&conn).await;
        for _ in 0..n / 10 {
            frames.send(PAYLOAD).await;
            frames.recv().await.unwrap();
        }
        sessions.push((conn, frames));
    }
    // The servers' CPU time is read over all turns: each is idle in the
    // other's (toil's epoch ticker parks), so what it used is its own turns'.
    let cpu = || [native::CpuTimes::of_process(server.pid), native::CpuTimes::of_native()];
    let cpu_before = cpu();
    let packets = |s: &Vec<(wtransport::Connection, Frames)>| s.iter().map(|(c, _)| c.quic_connection().stats()).collect::<Vec<_>>();
    let stats_before = packets(&sessions);
    let mut times = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for turn in 0..n.div_ceil(TURN) {
        for i in [turn % 2, 1 - turn % 2] {
            let frames = &mut sessions[i].1;
            for _ in 0..TURN {
                let start = Instant::now();
                frames.send(PAYLOAD).await;
                let reply = frames.recv().await.unwrap();
                times[i].push(start.elapsed());
                assert!(reply.ends_with(PAYLOAD));
            }
        }
    }
    let cpu_after = cpu();
    for (name, (before, after)) in ["toil", "native"].into_iter().zip(stats_before.iter().zip(packets(&sessions))) {
        let n = n as f64;
        eprintln!(
            "  {name}: per round trip, client sent {:.2} datagrams ({:.2} ACK frames), received {:.2} ({:.2} ACK frames)",
            (after.udp_tx.datagrams - before.udp_tx.datagrams) as f64 / n,
            (after.frame_tx.acks - before.frame_tx.acks) as f64 / n,
            (after.udp_rx.datagrams - before.udp_rx.datagrams) as f64 / n,
            (after.frame_rx.acks - before.frame_rx.acks) as f64 / n,
        );
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    std::array::from_fn(|i| {
        let t = &mut times[i];
        t.sort();
        let cpu = us(cpu_after[i].since(&cpu_before[i])) / t.len() as f64;
        Trips { p50: us(t[t.len() / 2]), p99: us(t[t.len() * 99 / 100]), cpu }
    })
}

/// One server's echo round trips in a run of [`round_trips`], in µs.
struct Trips {
    p50: f64,
    p99: f64,
    /// The server's CPU time (every thread, user and kernel) per round trip.
    cpu: f64,
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

/// Opens `n` sessions to `addr` from one client endpoint, each with one
/// round trip done, and keeps them open.
/// One frame to the echo box and its answer (`1:` and the payload; the
/// count stays one digit in the 3 frames a session sends), in µs.
async fn stream_round_trip(send: &mut wtransport::SendStream, recv: &mut wtransport::RecvStream) -> f64 {
    let start = Instant::now();
    send.write_all(&framing::header(PAYLOAD.len() as u32)).await.unwrap();
    send.write_all(PAYLOAD).await.unwrap();
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < framing::HEADER_LEN + 2 + PAYLOAD.len() {
        got += recv.read(&mut buf[got..]).await.unwrap().expect("reply");
    }
    start.elapsed().as_secs_f64() * 1e6
}

/// Idle sessions: the connection and its stream's two halves.
type Idle = (wtransport::Connection, wtransport::SendStream, wtransport::RecvStream);

async fn open_idle(server: &'static Server, addr: SocketAddr, n: usize) -> (Vec<Idle>, Duration) {
    // Held past the QUIC idle timeout (30 s): the client keeps them alive.
    let endpoint = Arc::new(wt_endpoint_keeping_alive(server, addr, Duration::from_secs(5)));
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (endpoint, sem) = (endpoint.clone(), sem.clone());
            tokio::spawn(async move {
                let _permit = sem.acquire().await.unwrap();
                let conn = endpoint.connect(echo_url(addr)).await.expect("session");
                let (mut send, mut recv) = conn.open_bi().await.unwrap().await.unwrap();
                stream_round_trip(&mut send, &mut recv).await;
                (conn, send, recv)
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
    native::start(&server.dir, 1, native_session)
}

/// The native echo session: like the echo box, a count across the
/// session, each answer on its frame's stream, and a stream the client
/// finished is finished back. Each stream is served on its own task.
async fn native_session(conn: Arc<Connection>, _connect: ConnectStream) {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while let Ok(Some(Accepted::Stream(_, mut send, mut recv))) = conn.accept().await {
        let count = count.clone();
        tokio::spawn(async move {
            // Chunks as quinn hands them over, no buffer of our own: what
            // the node's session does, so idle streams cost both the same.
            let mut decoder = framing::FrameDecoder::new(64 << 10);
            while let Ok(chunk) = recv.chunk().await {
                let Some(chunk) = chunk else {
                    let _ = send.shutdown().await; // the client finished: so do we
                    return;
                };
                let mut input = &chunk[..];
                while let Ok(Some(frame)) = decoder.decode(&mut input) {
                    let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let mut reply = format!("{n}:").into_bytes();
                    reply.extend_from_slice(&frame);
                    let mut out = framing::header(reply.len() as u32).to_vec();
                    out.extend_from_slice(&reply);
                    if send.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}
