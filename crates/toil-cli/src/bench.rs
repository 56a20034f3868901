//! `toil bench`: the L1 request-tier benchmark.
//!
//! 1. Per-request instance overhead: instantiate + `handle` + drop of the
//!    hello example's `GET /`, called in-process, sequentially; median, p99
//!    and mean, measured once per round and reported as medians of rounds.
//! 2. HTTP/1.1 keep-alive throughput with `wrk` against the hello example
//!    served by the real edge, and against a native hyper server answering
//!    the same bytes, measured in the same run in alternating rounds; the
//!    table reports medians, the toil/native ratio, and the CPU time per
//!    request of each server (this process's CPU time over a round) and of
//!    wrk driving it (wrk's CPU time: both share the machine's cores).
//!
//! Run it on a release build: `cargo run --release -p toil-cli -- bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use toil_abi::Tier;
use toil_edge::domains::Domain;
use toil_edge::{tcp, DomainTable, Edge};
use toil_metrics::Registry;
use toil_runtime::request::{GuestRequest, Outcome, RequestApp};
use toil_runtime::Runtime;
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Sequential in-process requests for the overhead measurement.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Seconds per wrk round.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// wrk rounds per server (alternating toil and native).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// The request artifact to serve (default: the hello example, built if missing).
    #[arg(long)]
    artifact: Option<PathBuf>,
}

const HELLO_BODY: &str = "Hello from Toil Edge!\n";

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build of toil; run `cargo run --release -p toil-cli -- bench` for real numbers");
    }
    let artifact = match args.artifact.clone() {
        Some(p) => p,
        None => hello_artifact()?,
    };
    let bytes = std::fs::read(&artifact).with_context(|| format!("reading {}", artifact.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let limits = toil_config::LimitsConfig::default();
        let runtime = Runtime::new(limits.runtime(None))?;
        let registry = Registry::new();
        let app = Arc::new(RequestApp::load(&runtime, &registry, "hello", &bytes)?);

        // The machine's noise drifts over seconds: one overhead measurement
        // per round, next to that round's wrk runs, and the medians of those.
        let mut overheads = vec![measure_overhead(&app, args.requests).await?];

        let domains = Arc::new(DomainTable::new());
        let domain = Domain::new("hello", 0, Some(app.clone()), None);
        domains.insert(domain, &["hello.localhost".into()], true);
        let edge = Arc::new(Edge::new(domains, limits.edge(), runtime.instance_budget().clone(), registry));
        let toil_listener = TcpListener::bind("127.0.0.1:0").await?;
        let toil_addr = toil_listener.local_addr()?;
        tokio::spawn(tcp::serve(toil_listener, edge, tcp::TcpSettings::cleartext_only()));
        let native_listener = TcpListener::bind("127.0.0.1:0").await?;
        let native_addr = native_listener.local_addr()?;
        tokio::spawn(native_hello(native_listener));

        let (mut toil_rps, mut native_rps) = (Vec::new(), Vec::new());
        let (mut toil_p99, mut native_p99) = (Vec::new(), Vec::new());
        let (mut toil_cpu, mut native_cpu) = (Vec::new(), Vec::new());
        let (mut toil_wrk_cpu, mut native_wrk_cpu) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            if round > 0 {
                overheads.push(measure_overhead(&app, args.requests).await?);
            }
            for (name, addr, rps, p99, cpu, wrk_cpu) in [
                ("toil", toil_addr, &mut toil_rps, &mut toil_p99, &mut toil_cpu, &mut toil_wrk_cpu),
                ("native", native_addr, &mut native_rps, &mut native_p99, &mut native_cpu, &mut native_wrk_cpu),
            ] {
                let (server_before, client_before) = (cpu_time(libc::RUSAGE_SELF), cpu_time(libc::RUSAGE_CHILDREN));
                let r = wrk(addr, args.connections, args.seconds).await?;
                let per_request = |d: Duration| d.as_secs_f64() * 1e6 / r.requests;
                let server = per_request(cpu_time(libc::RUSAGE_SELF) - server_before);
                let client = per_request(cpu_time(libc::RUSAGE_CHILDREN) - client_before);
                eprintln!(
                    "round {}: {name:<6} {:>10.0} req/s  p99 {:>8.0} µs  CPU per request: server {server:>5.1} µs, wrk {client:>5.1} µs",
                    round + 1,
                    r.rps,
                    r.p99_us
                );
                rps.push(r.rps);
                p99.push(r.p99_us);
                cpu.push(server);
                wrk_cpu.push(client);
            }
        }
        let (t, n) = (median(&mut toil_rps), median(&mut native_rps));
        let of = |f: fn(&Overhead) -> f64| median(&mut overheads.iter().map(f).collect::<Vec<_>>());
        let (overhead_median, overhead_p99, overhead_mean) = (of(|o| o.median), of(|o| o.p99), of(|o| o.mean));
        println!();
        println!("| measurement | value |");
        println!("|---|---|");
        let per_round = format!("median of {} rounds × {} calls", overheads.len(), args.requests);
        println!("| instance overhead (instantiate + handle + drop), median ({per_round}) | {overhead_median:.2} µs |");
        println!("| instance overhead, p99 | {overhead_p99:.2} µs |");
        println!("| instance overhead, mean | {overhead_mean:.2} µs |");
        println!("| HTTP/1.1 throughput, toil (wrk -c{}, median of {} × {}s) | {t:.0} req/s |", args.connections, args.rounds, args.seconds);
        println!("| HTTP/1.1 throughput, native hyper (same run) | {n:.0} req/s |");
        println!("| throughput ratio toil / native | {:.2} |", t / n);
        println!("| wrk p99 latency, toil / native | {:.0} µs / {:.0} µs |", median(&mut toil_p99), median(&mut native_p99));
        println!("| server CPU per request, toil / native | {:.1} µs / {:.1} µs |", median(&mut toil_cpu), median(&mut native_cpu));
        println!("| wrk CPU per request, against toil / native | {:.1} µs / {:.1} µs |", median(&mut toil_wrk_cpu), median(&mut native_wrk_cpu));
        Ok(())
    })
}

/// Builds the hello example if its artifact is missing.
fn hello_artifact() -> anyhow::Result<PathBuf> {
    let root = std::env::current_dir()?;
    let dir = root.join("examples/hello");
    let targets = toil_config::load_targets(&dir)?;
    let path = dir.join(toil_build::target_path(&targets, Tier::Request));
    if !path.exists() {
        let tc = toil_build::GuestToolchain::detect()?;
        toil_build::build_app(&tc, &dir, &targets, &root.join("target/guest"))?;
    }
    Ok(path)
}

/// Median, p99 and mean, in µs, of in-process `GET /` calls.
async fn measure_overhead(app: &RequestApp, n: usize) -> anyhow::Result<Overhead> {
    let req = GuestRequest { method: "GET", path: "/", query: "", headers: vec![("host", b"hello.localhost")], body: b"" };
    for _ in 0..n.min(2000) {
        app.handle(&req).await;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = app.handle(&req).await;
        samples.push(t.elapsed());
        anyhow::ensure!(matches!(&out, Outcome::Response(r) if r.status() == 200), "GET / failed: {out:?}");
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = us(samples.iter().sum::<Duration>()) / n as f64;
    samples.sort();
    Ok(Overhead { median: us(samples[n / 2]), p99: us(samples[(n * 99 / 100).min(n - 1)]), mean })
}

struct Overhead {
    median: f64,
    p99: f64,
    mean: f64,
}

/// The native baseline: hyper answering the bytes the hello example answers.
async fn native_hello(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req| async {
                let mut r = http::Response::new(Full::new(Bytes::from_static(HELLO_BODY.as_bytes())));
                r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

struct WrkResult {
    rps: f64,
    requests: f64,
    p99_us: f64,
}

/// CPU time (user + system) used by this process (`RUSAGE_SELF`) or by its
/// finished children (`RUSAGE_CHILDREN`). Both servers run in this process,
/// one at a time, so a round's delta over its request count is the cost of
/// a request to the server under test; wrk is the child, reaped at the end
/// of its round.
fn cpu_time(who: libc::c_int) -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; both `who` values are valid.
    let usage = unsafe {
        libc::getrusage(who, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `wrk --latency` and parses requests/s and the 99th percentile.
async fn wrk(addr: SocketAddr, connections: u32, seconds: u32) -> anyhow::Result<WrkResult> {
    let url = format!("http://{addr}/");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("wrk").args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", &url]).output()
    })
    .await?
    .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let p99 = text.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|v| parse_wrk_duration(v.trim())).unwrap_or(f64::NAN);
    // "  123456 requests in 5.00s, 12.34MB read"
    let requests = text
        .lines()
        .find_map(|l| l.split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .with_context(|| format!("no request count in wrk output:\n{text}"))?;
    Ok(WrkResult { rps, requests, p99_us: p99 })
}

/// `"1.23ms"` → 1230.0 (µs).
fn parse_wrk_duration(s: &str) -> f64 {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v,
        "ms" => v * 1e3,
        "s" => v * 1e6,
        _ => f64::NAN,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
