//! Deploys on a real cluster of `toil node` processes: `toil deploy`
//! reaches every node, the swap drops no request, open stream sessions
//! drain and close with REDEPLOYED, the daemon moves to the new version
//! without a double tick, `toil rollback` returns to an earlier version;
//! invalid releases and unauthenticated requests change nothing.
//!
//! The app is the `versioned` test guest: every tier says its `LABEL`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{build_guest, get_blocking, repo_root, versioned_copy, wt_endpoint_pinned, Frames};

const HOST: &str = "versioned.localhost";

/// Version A and B of the guest, built once: (crate dir A, artifacts dir B).
fn versions() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let parent = repo_root().join("target/e2e").join(format!("deploy-guests-{}", std::process::id()));
        let a = versioned_copy(&parent, "a", "A");
        let b = versioned_copy(&parent, "b", "B");
        build_guest(&a);
        (a, build_guest(&b))
    })
}

fn cluster(tag: &str, n: u64) -> Cluster {
    let (a, _) = versions();
    Cluster::start_with(
        tag,
        n,
        serde_json::json!({
            "apps": [{"domain": "versioned", "dir": a}],
            "deploy": {"drainTimeoutMs": 1500},
        }),
    )
}

/// What node `id` answers on `/version`.
fn label(c: &Cluster, id: u64) -> Option<String> {
    get_blocking(c.http(id), HOST, "/version").filter(|(s, _)| *s == 200).map(|(_, body)| body)
}

fn wait_all_serve(c: &Cluster, want: &str) {
    c.wait_for(Duration::from_secs(30), &format!("every node to serve {want}"), |c| {
        c.running().iter().all(|id| label(c, *id).as_deref() == Some(want))
    });
}

/// The fire times of the versioned daemon's ticks across all nodes, with their labels.
fn ticks(c: &Cluster) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = c
        .logs()
        .lines()
        .filter(|l| l.contains("versioned fired "))
        .filter_map(|l| {
            let field = |k: &str| l.split(&format!("{k}=")).nth(1)?.split_whitespace().next().map(str::to_string);
            Some((field("fire_time_ms")?.parse().ok()?, field("label")?))
        })
        .collect();
    out.sort();
    out
}

/// HTTP/1.1 keep-alive clients hammering `/version` on every node, counting
/// answers by body and every failure (a non-200 or a broken connection).
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<BTreeMap<String, u64>>>,
    total: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(targets: Vec<std::net::SocketAddr>) -> Load {
        let load = Load { stop: Arc::default(), failures: Arc::default(), bodies: Arc::default(), total: Arc::default(), threads: Vec::new() };
        let mut threads = Vec::new();
        for addr in targets {
            let (stop, failures, bodies, total) = (load.stop.clone(), load.failures.clone(), load.bodies.clone(), load.total.clone());
            threads.push(std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        let req = common::request("GET", HOST, "/version", bytes::Bytes::new());
                        match send.send_request(req).await {
                            Ok(resp) => {
                                let status = resp.status();
                                let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|b| b.to_bytes());
                                match (status.as_u16(), body) {
                                    (200, Ok(b)) => *bodies.lock().unwrap().entry(String::from_utf8_lossy(&b).into_owned()).or_default() += 1,
                                    (s, b) => failures.lock().unwrap().push(format!("{addr}: {s} {b:?}")),
                                }
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(format!("{addr}: {e}"));
                                return;
                            }
                        }
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }));
        }
        Load { threads, ..load }
    }

    fn finish(self) -> (u64, BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        let total = self.total.load(Ordering::Relaxed);
        (total, self.bodies.lock().unwrap().clone(), self.failures.lock().unwrap().clone())
    }
}

#[test]
fn a_deploy_reaches_every_node_drains_sessions_and_rolls_back() {
    let (_, b_artifacts) = versions();
    let mut c = cluster("deploy", 3);
    // The configured app was offered by every node; one release (v1) won and
    // nodes 2 and 3 fetched its artifacts from node 1.
    wait_all_serve(&c, "A");
    let status = c.status(2).unwrap();
    assert_eq!(status["releases"]["versioned"]["active"], 1, "{status:#}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    // A stream session on node 2, on version A.
    let node2 = c.nodes.iter().find(|n| n.id == 2).unwrap();
    let (http2, sha2) = (c.http(2), node2.cert_sha256.clone());
    let (conn, mut frames) = rt.block_on(async {
        let conn = wt_endpoint_pinned(&sha2, http2).connect(format!("https://{HOST}:{}/count", http2.port())).await.unwrap();
        let mut frames = Frames::open(&conn).await;
        frames.send(b"x").await;
        assert_eq!(frames.recv_text().await, "A:1");
        (conn, frames)
    });

    let load = Load::start(c.running().iter().flat_map(|id| std::iter::repeat_n(c.http(*id), 2)).collect());
    std::thread::sleep(Duration::from_millis(300));

    // Deploy B through node 3 (a follower: the release is forwarded to the leader).
    let started = Instant::now();
    let out = c.toil_admin(3, &["deploy", b_artifacts.to_str().unwrap(), "--domain", "versioned"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("deployed versioned version 2"), "{stdout}");
    assert!(stderr.contains("3/3 nodes serve versioned version 2"), "toil deploy waits for every node: {stderr}");
    // `toil deploy` returned once every node reported version 2; they answer B.
    for id in c.running() {
        assert_eq!(label(&c, id).as_deref(), Some("B"), "node {id} right after toil deploy returned");
    }
    eprintln!("deploy to 3 nodes took {:?}", started.elapsed());

    // The open session kept its version-A box (its count went on), then was
    // drained: closed with REDEPLOYED after the drain timeout.
    rt.block_on(async {
        frames.send(b"y").await;
        assert_eq!(frames.recv_text().await, "A:2", "the session keeps its box until it is drained");
        let (code, reason) = common::closed(&conn).await.expect("closed by the node");
        assert_eq!(code, toil_abi::stream::close_code::REDEPLOYED as u64);
        assert_eq!(reason, "versioned was redeployed (version 2)");
        // A new session gets version B.
        let conn = wt_endpoint_pinned(&sha2, http2).connect(format!("https://{HOST}:{}/count", http2.port())).await.unwrap();
        let mut frames = Frames::open(&conn).await;
        frames.send(b"z").await;
        assert_eq!(frames.recv_text().await, "B:1");
    });

    // The daemon runs version B, and no tick fired twice across the swap.
    c.wait_for(Duration::from_secs(10), "a tick of version B", |c| ticks(c).iter().any(|(_, l)| l == "B"));

    // Rollback (no version: the one before the served one) through node 1.
    let out = c.toil_admin(1, &["rollback", "versioned"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("versioned rolled to version 1"));
    for id in c.running() {
        assert_eq!(label(&c, id).as_deref(), Some("A"), "node {id} after the rollback");
    }
    c.wait_for(Duration::from_secs(10), "a tick of version A after the rollback", |c| {
        let t = ticks(c);
        let first_b = t.iter().position(|(_, l)| l == "B").unwrap();
        t[first_b..].iter().any(|(_, l)| l == "A")
    });

    let (total, bodies, failures) = load.finish();
    assert!(failures.is_empty(), "{} of {total} requests failed during deploy and rollback: {failures:?}", failures.len());
    assert!(bodies.get("A").is_some_and(|n| *n > 0) && bodies.get("B").is_some_and(|n| *n > 0), "{bodies:?}");
    eprintln!("load during deploy + rollback: {total} requests, 0 failed, {bodies:?}");

    let t = ticks(&c);
    let mut times: Vec<i64> = t.iter().map(|(f, _)| *f).collect();
    times.dedup();
    assert_eq!(times.len(), t.len(), "a tick fired twice: {t:?}");

    // Status: the history, and every node serving version 1 again.
    let status = c.status(3).unwrap();
    let history = &status["releases"]["versioned"];
    assert_eq!(history["active"], 1);
    let versions: Vec<u64> = history["releases"].as_array().unwrap().iter().map(|r| r["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2]);
    c.wait_for(Duration::from_secs(10), "every node to report version 1", |c| {
        c.status(1).is_some_and(|s| (1..=3).all(|n| s["served"][n.to_string()]["versioned"] == 1))
    });
    let out = c.toil_admin(2, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("versioned    v1"), "{text}");

    // A restarted node serves the cluster's release from its own store.
    c.kill(3);
    c.launch(3);
    wait_all_serve(&c, "A");
}

/// A request-tier module (WAT body) carrying a manifest with `manifest` records.
fn request_module(extra: &str, manifest: &[u8]) -> Vec<u8> {
    let escaped = common::wat_bytes(manifest);
    wat::parse_str(format!(
        r#"(module
            {extra}
            (memory (export "memory") 1)
            (func (export "handle") (param i32) (result i32) (i32.const 0))
            (@custom "toil.manifest" "{escaped}"))"#
    ))
    .unwrap()
}

fn request_manifest(tier: toil_abi::Tier) -> Vec<u8> {
    let mut m = toil_abi::manifest::header_record(tier).to_vec();
    toil_abi::manifest::encode_route(&mut m, "GET", "/");
    m
}

#[test]
fn invalid_releases_and_unauthenticated_requests_change_nothing() {
    let c = cluster("deploy-invalid", 1);
    wait_all_serve(&c, "A");
    let dir = c.dir.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let (a, _) = versions();
    let a_artifacts = a.join("build/server");
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let mut daemon_manifest = toil_abi::manifest::header_record(toil_abi::Tier::Daemon).to_vec();
    toil_abi::manifest::encode_task(&mut daemon_manifest, 0, "beat", "every other tuesday");
    let mut old_abi = request_manifest(toil_abi::Tier::Request);
    old_abi[5..9].copy_from_slice(&99u32.to_le_bytes()); // the header record's ABI version

    let stream_artifact = a_artifacts.join("release-stream.wasm");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--request".into(), write("garbage.wasm", b"\0asm\x01\0\0\0garbage")], "the request artifact (15 bytes"),
        (vec!["--request".into(), write("garbage2.wasm", b"\0asm\x01\0\0\0garbage")], "is refused: not a valid wasm module"),
        (vec!["--request".into(), write("component.wasm", b"\0asm\x0d\0\x01\0")], "is a wasm component"),
        (vec!["--request".into(), stream_artifact.to_str().unwrap().into()], "is a stream-tier artifact, but it was loaded as the request tier"),
        (
            vec![
                "--request".into(),
                write(
                    "foreign.wasm",
                    &request_module(
                        r#"(func (export "stream_dispatch") (param i32 i32) (result i32) (i32.const 0))"#,
                        &request_manifest(toil_abi::Tier::Request),
                    ),
                ),
            ],
            "exports `stream_dispatch`, which belongs to another tier than request",
        ),
        (vec!["--request".into(), write("abi.wasm", &request_module("", &old_abi))], "was built for Toil ABI v99"),
        (
            vec![
                "--request".into(),
                write("import.wasm", &request_module(r#"(import "env" "system" (func (param i32)))"#, &request_manifest(toil_abi::Tier::Request))),
            ],
            "imports `env.system`, which the request tier does not provide",
        ),
        (vec!["--request".into(), write("huge.wasm", &vec![0u8; 33 << 20])], "over the 33554432-byte artifact limit"),
        (
            vec![
                "--daemon".into(),
                write(
                    "cron.wasm",
                    &wat::parse_str(format!(
                        r#"(module (memory (export "memory") 1)
                    (func (export "daemon_start") (param i32) (result i32) (i32.const 0))
                    (func (export "scheduled_tick") (param i32 i64) (result i32) (i32.const 0))
                    (@custom "toil.manifest" "{}"))"#,
                        common::wat_bytes(&daemon_manifest)
                    ))
                    .unwrap(),
                ),
            ],
            "declares task \"beat\" with an invalid schedule",
        ),
        (
            vec![a_artifacts.to_str().unwrap().into(), "--timezone".into(), "Mars/Olympus_Mons".into()],
            "timezone: \"Mars/Olympus_Mons\" is not an IANA time zone",
        ),
    ];
    for (args, reason) in &cases {
        let mut all = vec!["deploy", "--domain", "versioned"];
        all.extend(args.iter().map(String::as_str));
        let out = c.toil_admin(1, &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains("deploy of versioned refused (422"), "{args:?}: {stderr}");
        assert!(stderr.contains(reason), "{args:?}: expected {reason:?} in {stderr}");
        assert_eq!(label(&c, 1).as_deref(), Some("A"), "the old version serves after {args:?}");
    }
    let status = c.status(1).unwrap();
    assert_eq!(status["releases"]["versioned"]["last_version"], 1, "no release was made: {status:#}");

    // The admin API: no token, a wrong token → 401, nothing runs.
    let admin = c.nodes[0].admin;
    let post = |auth: Option<&str>| {
        use std::io::{Read, Write};
        let body = br#"{"domain":"versioned","request":null,"stream":null,"daemon":null}"#;
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        let auth = auth.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "POST /deploy/release HTTP/1.1\r\nhost: admin\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    let none = post(None);
    assert!(none.starts_with("HTTP/1.1 401") && none.contains("missing admin token"), "{none}");
    let wrong = post(Some("not-the-token-at-all"));
    assert!(wrong.starts_with("HTTP/1.1 401") && wrong.contains("wrong admin token"), "{wrong}");
    let bad_token = dir.join("wrong.token");
    std::fs::write(&bad_token, "not-the-token-at-all\n").unwrap();
    let out = common::toil_admin(admin, &bad_token, &["deploy", a_artifacts.to_str().unwrap(), "--domain", "versioned"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    // Metrics stay readable without a token (for scrapers).
    assert!(common::cluster::admin_get(admin, "/metrics").is_some());
    assert_eq!(c.status(1).unwrap()["releases"]["versioned"]["last_version"], 1);
    assert_eq!(label(&c, 1).as_deref(), Some("A"));
}
