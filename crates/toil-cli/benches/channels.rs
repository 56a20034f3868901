//! The channel benchmark: `cargo bench -p toil-cli --bench channels`.
//!
//! Prints a table of
//! 1. fan-out latency on one node, publish → every subscribed box's
//!    `channel` hook → its client, p50/p99, to 1, 100 and 1,000
//!    subscribers: the `relay` test guest on a real `toil dev` (a box per
//!    WebTransport session), against a native fan-out — the same
//!    WebTransport stack with a `tokio::sync::broadcast` in Rust, no wasm —
//!    with the same clients, commands and frames, in the same run;
//! 2. the throughput of one topic: messages delivered per second to 100
//!    subscribers while two publishers publish as fast as they can;
//! 3. server memory per subscription (RSS growth over 10 subscriptions for
//!    each of the 1,000 sessions);
//! 4. across a 3-node cluster through NATS JetStream: publisher on node 1,
//!    subscriber on node 3, p50/p99, against native async-nats from the same
//!    process: a JetStream publish (acknowledged) to an ordered consumer,
//!    and core NATS publish → subscribe.
//!
//! Clients and native servers share this process. Machines are noisy:
//! medians of rounds. Flags (after `--`): `--rounds N`, `--messages N`
//! (per fan-out size), `--seconds N`, `--no-cluster`.

#[path = "../tests/common/mod.rs"]
mod common;
mod native;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{test_guest, Cluster};
use common::nats::Nats;
use common::relay::RelayClient;
use common::*;
use futures_util::StreamExt;
use toil_abi::stream::framing;
use toil_edge::webtransport::protocol::{Accepted, ConnectStream, Connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

type ClientEndpoint = wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let flags = Flags { rounds: arg("--rounds", 3), messages: arg("--messages", 60), seconds: arg("--seconds", 5) as u64 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let one_node = rt.block_on(one_node(&flags));
    let cluster = if args.iter().any(|a| a == "--no-cluster") { None } else { Some(cluster(&rt, &flags)) };
    print_table(&one_node, cluster.as_ref());
}

struct Flags {
    rounds: usize,
    messages: usize,
    seconds: u64,
}

/// p50 and p99, in µs.
#[derive(Clone, Copy, Default)]
struct Latency {
    p50: f64,
    p99: f64,
}

struct OneNode {
    /// Per fan-out size: toil and native, medians of rounds.
    fan_out: Vec<(usize, Latency, Latency)>,
    throughput: (f64, f64, u64),
    bytes_per_subscription: f64,
}

struct ClusterResult {
    toil: Latency,
    jetstream: Latency,
    core: Latency,
}

const FAN_OUTS: [usize; 3] = [1, 100, 1000];

async fn one_node(flags: &Flags) -> OneNode {
    let server: &'static Server = Box::leak(Box::new(start_server(
        "bench-channels",
        serde_json::json!({
            "apps": [{"domain": "relay", "dir": test_guest("relay")}],
            "defaultDomain": "relay",
            "limits": {"memoryMb": 16, "maxInstances": 1400, "maxSessions": 1200, "idleTimeoutMs": 300_000,
                "maxConnections": 3000, "maxConnectionsPerAddress": 3000},
            "channels": {"maxSubscriptionsPerBox": 64},
        }),
    )));
    let native = native_server(server).await;
    let endpoint = wt_endpoint_for(server, server.http);
    let mut fan_out = Vec::new();
    for n in FAN_OUTS {
        let (mut toil, mut native_runs) = (Vec::new(), Vec::new());
        for (name, addr) in [("toil", server.http), ("native", native)] {
            let subscribers = open_subscribers(&endpoint, addr, n, &format!("fan{n}")).await;
            for round in 1..=flags.rounds {
                let l = fan_out_latency(&endpoint, addr, subscribers.0.clone(), &format!("fan{n}"), n, flags.messages).await;
                eprintln!("fan-out {n:>4} round {round}: {name:<6} p50 {:>8.1} µs  p99 {:>8.1} µs", l.p50, l.p99);
                if name == "toil" { &mut toil } else { &mut native_runs }.push(l);
            }
            drop(subscribers);
        }
        fan_out.push((n, median_latency(&mut toil), median_latency(&mut native_runs)));
    }

    // Throughput of one topic to 100 subscribers, both servers.
    let mut rates = Vec::new();
    for addr in [server.http, native] {
        let subscribers = open_subscribers(&endpoint, addr, 100, "tp").await;
        let rate = throughput(&endpoint, addr, subscribers.0.clone(), Duration::from_secs(flags.seconds)).await;
        eprintln!("throughput {}: {rate:.0} deliveries/s", if addr == native { "native" } else { "toil" });
        rates.push(rate);
        drop(subscribers);
    }
    let overflows = server.metric("toil_channel_resync_total{domain=\"relay\",reason=\"overflow\"}").await as u64;

    // Memory per subscription: 1,000 sessions, 10 more topics each.
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(RelayClient::connect_on(&endpoint, server.http).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss_kib();
    for c in &mut clients {
        for t in 0..10 {
            assert_eq!(c.cmd(&format!("sub mem{t} now")).await, "ok");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.rss_kib();
    let bytes_per_subscription = (after as f64 - before as f64) * 1024.0 / 10_000.0;
    eprintln!("10000 subscriptions: RSS {before} KiB -> {after} KiB");
    drop(clients);

    OneNode { fan_out, throughput: (rates[0], rates[1], overflows), bytes_per_subscription }
}

/// `n` sessions subscribed to `topic`, each read by a task that reports
/// `(offset, arrival)` of every message; the receiver gets them all.
struct Subscribers(Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>, Vec<tokio::task::JoinHandle<()>>);

impl Drop for Subscribers {
    fn drop(&mut self) {
        self.1.iter().for_each(|t| t.abort());
    }
}

async fn open_subscribers(endpoint: &ClientEndpoint, addr: SocketAddr, n: usize, topic: &str) -> Subscribers {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let mut client = RelayClient::connect_on(endpoint, addr).await;
        assert_eq!(client.cmd(&format!("sub {topic} now")).await, "ok");
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let event = client.event().await;
                let at = Instant::now();
                let mut words = event.split(' ');
                if words.next() == Some("msg") {
                    let offset = words.nth(1).and_then(|o| o.parse().ok()).unwrap_or(0);
                    if tx.send((offset, at)).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    Subscribers(Arc::new(tokio::sync::Mutex::new(rx)), tasks)
}

/// Publishes `messages` messages one at a time, each once all `n`
/// subscribers have it; latency from the publish command to each arrival.
async fn fan_out_latency(
    endpoint: &ClientEndpoint,
    addr: SocketAddr,
    arrivals: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>,
    topic: &str,
    n: usize,
    messages: usize,
) -> Latency {
    let mut publisher = RelayClient::connect_on(endpoint, addr).await;
    let mut arrivals = arrivals.lock().await;
    while arrivals.try_recv().is_ok() {}
    let mut samples = Vec::with_capacity(n * messages);
    for i in 0..messages {
        let sent = Instant::now();
        let (offset, _) = publisher.publish(topic, &i.to_string()).await;
        let mut got = 0;
        while got < n {
            let (o, at) = tokio::time::timeout(Duration::from_secs(10), arrivals.recv()).await.expect("every subscriber within 10 s").unwrap();
            if o == offset {
                samples.push(at.duration_since(sent).as_secs_f64() * 1e6);
                got += 1;
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Latency { p50: percentile(&samples, 0.50), p99: percentile(&samples, 0.99) }
}

/// Two publishers publish as fast as their replies come back for `dur`;
/// returns the messages the subscribers received per second.
async fn throughput(
    endpoint: &ClientEndpoint,
    addr: SocketAddr,
    arrivals: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>,
    dur: Duration,
) -> f64 {
    let mut arrivals = arrivals.lock().await;
    while arrivals.try_recv().is_ok() {}
    let start = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut p = RelayClient::connect_on(endpoint, addr).await;
        publishers.push(tokio::spawn(async move {
            while start.elapsed() < dur {
                let reply = p.cmd("pub tp x").await;
                assert!(reply.starts_with("pub-ok"), "{reply}");
            }
        }));
    }
    let mut delivered = 0u64;
    while start.elapsed() < dur {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), arrivals.recv()).await {
            delivered += 1;
        }
    }
    for p in publishers {
        p.await.unwrap();
    }
    delivered as f64 / start.elapsed().as_secs_f64()
}

fn median_latency(runs: &mut [Latency]) -> Latency {
    let mut p50: Vec<f64> = runs.iter().map(|l| l.p50).collect();
    let mut p99: Vec<f64> = runs.iter().map(|l| l.p99).collect();
    Latency { p50: median(&mut p50), p99: median(&mut p99) }
}

fn cluster(rt: &tokio::runtime::Runtime, flags: &Flags) -> ClusterResult {
    let dir = repo_root().join("target/e2e").join(format!("bench-channels-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let nats = Nats::start(&dir);
    let config = serde_json::json!({
        "apps": [{"domain": "relay", "dir": test_guest("relay")}],
        "channels": {"nats": nats.url()},
    });
    let c = Cluster::start_with("bench-channels-cluster", 3, config);
    c.wait_for(Duration::from_secs(60), "every node to serve relay", |c| {
        c.status(1).is_some_and(|s| (1..=3).all(|n| s["served"][n.to_string()]["relay"].as_u64().is_some_and(|v| v >= 1)))
    });
    rt.block_on(async {
        let node = |id: u64| c.nodes.iter().find(|n| n.id == id).unwrap();
        let (n1, n3) = (node(1), node(3));
        let messages = flags.messages * 5;
        let mut toil_runs = Vec::new();
        let mut js_runs = Vec::new();
        let mut core_runs = Vec::new();
        for round in 1..=flags.rounds {
            let subscribers = {
                let endpoint = wt_endpoint_pinned(&n3.cert_sha256, n3.http.unwrap());
                open_subscribers(&endpoint, n3.http.unwrap(), 1, "span").await
            };
            let publisher_endpoint = wt_endpoint_pinned(&n1.cert_sha256, n1.http.unwrap());
            let t = fan_out_latency(&publisher_endpoint, n1.http.unwrap(), subscribers.0.clone(), "span", 1, messages).await;
            let js = native_jetstream(&nats.url(), round, messages).await;
            let core = native_core(&nats.url(), messages).await;
            eprintln!(
                "cluster round {round}: toil p50 {:.1} µs p99 {:.1} µs; jetstream p50 {:.1} p99 {:.1}; core p50 {:.1} p99 {:.1}",
                t.p50, t.p99, js.p50, js.p99, core.p50, core.p99
            );
            toil_runs.push(t);
            js_runs.push(js);
            core_runs.push(core);
        }
        ClusterResult { toil: median_latency(&mut toil_runs), jetstream: median_latency(&mut js_runs), core: median_latency(&mut core_runs) }
    })
}

/// Native JetStream: an acknowledged publish on one connection to an
/// ordered consumer on another, one message at a time.
async fn native_jetstream(url: &str, round: usize, messages: usize) -> Latency {
    use async_nats::jetstream::{self, consumer, stream};
    let (publisher, subscriber) = (async_nats::connect(url).await.unwrap(), async_nats::connect(url).await.unwrap());
    let js = jetstream::new(publisher);
    let name = format!("BENCH_{round}");
    let subject = format!("bench.native.{round}");
    let s = js.create_stream(stream::Config { name: name.clone(), subjects: vec![subject.clone()], ..Default::default() }).await.unwrap();
    let consumer = s
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: subscriber.new_inbox(),
            filter_subject: subject.clone(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut incoming = consumer.messages().await.unwrap();
    let mut samples = Vec::new();
    for i in 0..messages {
        let sent = Instant::now();
        js.publish(subject.clone(), Bytes::from(i.to_string())).await.unwrap().await.unwrap();
        let _ = incoming.next().await.unwrap().unwrap();
        samples.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    js.delete_stream(&name).await.unwrap();
    samples.sort_by(f64::total_cmp);
    Latency { p50: percentile(&samples, 0.50), p99: percentile(&samples, 0.99) }
}

/// Native core NATS: publish on one connection, subscribe on another.
async fn native_core(url: &str, messages: usize) -> Latency {
    let (publisher, subscriber) = (async_nats::connect(url).await.unwrap(), async_nats::connect(url).await.unwrap());
    let mut sub = subscriber.subscribe("bench.core").await.unwrap();
    subscriber.flush().await.unwrap();
    let mut samples = Vec::new();
    for i in 0..messages {
        let sent = Instant::now();
        publisher.publish("bench.core", Bytes::from(i.to_string())).await.unwrap();
        publisher.flush().await.unwrap();
        let _ = sub.next().await.unwrap();
        samples.push(sent.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Latency { p50: percentile(&samples, 0.50), p99: percentile(&samples, 0.99) }
}

fn print_table(one: &OneNode, cluster: Option<&ClusterResult>) {
    println!();
    println!("| measure | toil | native | ratio (toil/native) |");
    println!("|---|---|---|---|");
    for (n, t, nat) in &one.fan_out {
        println!("| fan-out to {n} subscriber(s), p50 | {:.0} µs | {:.0} µs | {:.2}× |", t.p50, nat.p50, t.p50 / nat.p50);
        println!("| fan-out to {n} subscriber(s), p99 | {:.0} µs | {:.0} µs | {:.2}× |", t.p99, nat.p99, t.p99 / nat.p99);
    }
    let (toil_rate, native_rate, overflows) = one.throughput;
    println!(
        "| one topic → 100 subscribers, deliveries/s | {toil_rate:.0} ({overflows} overflow resyncs) | {native_rate:.0} | {:.2}× |",
        toil_rate / native_rate
    );
    println!("| server memory per subscription | {:.0} B | | |", one.bytes_per_subscription);
    if let Some(c) = cluster {
        println!(
            "| 3 nodes via NATS, publish → client, p50 | {:.0} µs | {:.0} µs (JetStream) · {:.0} µs (core) | {:.2}× JetStream |",
            c.toil.p50,
            c.jetstream.p50,
            c.core.p50,
            c.toil.p50 / c.jetstream.p50
        );
        println!(
            "| 3 nodes via NATS, publish → client, p99 | {:.0} µs | {:.0} µs (JetStream) · {:.0} µs (core) | {:.2}× JetStream |",
            c.toil.p99,
            c.jetstream.p99,
            c.core.p99,
            c.toil.p99 / c.jetstream.p99
        );
    }
}

/// The native baseline: the same WebTransport stack and relay commands
/// (`sub`, `pub`), the fan-out a `tokio::sync::broadcast` in Rust, on two
/// threads, as many as `toil dev` has QUIC workers here (one per core).
async fn native_server(server: &Server) -> SocketAddr {
    let room = Arc::new(NativeRoom::default());
    native::start(&server.dir, 2, move |session, connect| native_session(session, connect, room.clone()))
}

/// Topics: a broadcast sender and a counter each.
#[derive(Default)]
struct NativeRoom {
    topics: std::sync::Mutex<HashMap<String, (tokio::sync::broadcast::Sender<(u64, Bytes)>, u64)>>,
}

impl NativeRoom {
    fn sender(&self, topic: &str) -> tokio::sync::broadcast::Sender<(u64, Bytes)> {
        let mut topics = self.topics.lock().unwrap();
        topics.entry(topic.to_string()).or_insert_with(|| (tokio::sync::broadcast::channel(256).0, 0)).0.clone()
    }

    fn publish(&self, topic: &str, bytes: Bytes) -> u64 {
        let mut topics = self.topics.lock().unwrap();
        let (tx, last) = topics.entry(topic.to_string()).or_insert_with(|| (tokio::sync::broadcast::channel(256).0, 0));
        *last += 1;
        let _ = tx.send((*last, bytes));
        *last
    }
}

async fn native_session(conn: Arc<Connection>, _connect: ConnectStream, room: Arc<NativeRoom>) {
    let Ok(Some(Accepted::Stream(_, mut send, mut recv))) = conn.accept().await else {
        return;
    };
    // One writer per session: command replies and forwarded messages.
    let (out, mut frames) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = frames.recv().await {
            let mut wire = framing::header(frame.len() as u32).to_vec();
            wire.extend_from_slice(&frame);
            if send.write_all(&wire).await.is_err() {
                return;
            }
        }
    });
    let mut decoder = framing::FrameDecoder::new(64 << 10);
    let mut buf = vec![0u8; 16 << 10];
    let mut forwarders = Vec::new();
    while let Ok(n) = recv.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let mut input = &buf[..n];
        while let Ok(Some(frame)) = decoder.decode(&mut input) {
            let text = String::from_utf8_lossy(&frame).into_owned();
            let words: Vec<&str> = text.splitn(3, ' ').collect();
            let reply = match words[..] {
                ["sub", topic, _] => {
                    let (mut rx, out, topic) = (room.sender(topic).subscribe(), out.clone(), topic.to_string());
                    forwarders.push(tokio::spawn(async move {
                        loop {
                            let (offset, bytes) = match rx.recv().await {
                                Ok(m) => m,
                                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                            };
                            let line = format!("msg {topic} {offset} native {}", String::from_utf8_lossy(&bytes));
                            if out.send(line.into_bytes()).is_err() {
                                return;
                            }
                        }
                    }));
                    "ok".to_string()
                }
                ["pub", topic, body] => format!("pub-ok {} native", room.publish(topic, Bytes::copy_from_slice(body.as_bytes()))),
                _ => format!("err unknown command {text:?}"),
            };
            if out.send(reply.into_bytes()).is_err() {
                break;
            }
        }
    }
    forwarders.iter().for_each(|f| f.abort());
    writer.abort();
}
