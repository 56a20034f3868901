//! A real cluster for the daemon-tier tests and benchmark: `toil node`
//! processes on loopback serving the `pulse` test guest (a daemon ticking
//! every second, logging each tick with the node that fired it).
//!
//! Every link between two nodes goes through its own TCP relay (node i
//! reaches node j at relay (i, j), via `--peer`), so a test can partition a
//! node — cut all its links both ways — without stopping the process.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{repo_root, toil};

/// The pulse guest's directory, built once per test binary.
pub fn pulse_dir() -> PathBuf {
    test_guest("pulse")
}

/// The directory of test guest `name` (`tests/guests/NAME`), built once
/// per test binary.
pub fn test_guest(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = repo_root().join("crates/toil-cli/tests/guests").join(name);
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let out = toil().arg("build").arg(&dir).arg("--target-dir").arg(repo_root().join("target/guest")).output().unwrap();
        assert!(out.status.success(), "building the {name} guest: {}", String::from_utf8_lossy(&out.stderr));
        built.push(name.to_string());
    }
    dir
}

/// A free loopback TCP port for a node's cluster port, chosen before the
/// node starts (the relays point at it). It is taken below the kernel's
/// ephemeral range: a port-0 bind (every node's public and admin listeners,
/// any client) is never given it in the meantime.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32) | 1;
    for _ in 0..10_000 {
        // xorshift: another test process picks from the same range, at another point of it.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10_000 + (x % u64::from(ephemeral_low.saturating_sub(10_000).max(1))) as u16;
        // Free now, and never handed to another test of this process, which
        // may not have bound its port yet.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A TCP relay that can be cut (drops its connections and refuses new ones)
/// and healed. It keeps a copy of the first [`RECORD_CAP`] bytes sent
/// through it towards its target: what an eavesdropper would capture.
pub struct TcpRelay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    /// Per connection, the bytes sent towards the target.
    recorded: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>,
}

/// How much of each relayed connection's requests is kept.
pub const RECORD_CAP: usize = 1 << 20;

impl TcpRelay {
    pub fn start(to: SocketAddr) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let recorded: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>> = Arc::default();
        let (c, l, r) = (cut.clone(), live.clone(), recorded.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is reset
                }
                let Ok(outbound) = TcpStream::connect(to) else {
                    continue;
                };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                {
                    let mut live = l.lock().unwrap();
                    live.push(inbound.try_clone().unwrap());
                    live.push(outbound.try_clone().unwrap());
                }
                let requests: Arc<Mutex<Vec<u8>>> = Arc::default();
                r.lock().unwrap().push(requests.clone());
                let directions = [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap(), Some(requests)), (outbound, inbound, None)];
                for (mut from, mut into, record) in directions {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if let Some(rec) = &record {
                                let mut rec = rec.lock().unwrap();
                                if rec.len() + n <= RECORD_CAP {
                                    rec.extend_from_slice(&buf[..n]);
                                }
                            }
                            if n == 0 || into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        TcpRelay { addr, cut, live, recorded }
    }

    /// The bytes each connection so far sent towards the target.
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().unwrap().iter().map(|r| r.lock().unwrap().clone()).collect()
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// One `toil node` of a [`Cluster`].
pub struct Node {
    pub id: u64,
    pub cluster_port: u16,
    /// The admin listener of the current start (each start picks a free port).
    pub admin: SocketAddr,
    /// HTTP (TCP and UDP) of the current start, and its certificate's SHA-256.
    pub http: Option<SocketAddr>,
    pub cert_sha256: String,
    child: Option<Child>,
    /// How many times this node was started (each start logs to its own file).
    starts: u32,
}

/// A cluster of `toil node` processes.
pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    /// relays[(i, j)]: node i's way to node j.
    relays: BTreeMap<(u64, u64), TcpRelay>,
    config: PathBuf,
    secret: PathBuf,
    /// The admin token every node of the cluster is started with.
    pub token_file: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes serving the pulse guest: node 1 forms the cluster,
    /// the others join it.
    pub fn start(tag: &str, n: u64, cluster_config: serde_json::Value) -> Cluster {
        Cluster::start_with(tag, n, serde_json::json!({"apps": [{"domain": "pulse", "dir": pulse_dir()}], "cluster": cluster_config}))
    }

    /// [`Cluster::start`] with `config` as every node's toilconfig.json.
    pub fn start_with(tag: &str, n: u64, config_json: serde_json::Value) -> Cluster {
        let dir = repo_root().join("target/e2e").join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("toilconfig.json");
        std::fs::write(&config, serde_json::to_vec_pretty(&config_json).unwrap()).unwrap();
        let secret = dir.join("cluster.secret");
        let out = toil().args(["cluster", "secret"]).output().unwrap();
        std::fs::write(&secret, &out.stdout).unwrap();
        let ids: Vec<u64> = (1..=n).collect();
        let nodes: Vec<Node> = ids
            .iter()
            .map(|&id| Node {
                id,
                cluster_port: free_port(),
                admin: "127.0.0.1:0".parse().unwrap(),
                http: None,
                cert_sha256: String::new(),
                child: None,
                starts: 0,
            })
            .collect();
        let mut relays = BTreeMap::new();
        for a in &nodes {
            for b in &nodes {
                if a.id != b.id {
                    relays.insert((a.id, b.id), TcpRelay::start(format!("127.0.0.1:{}", b.cluster_port).parse().unwrap()));
                }
            }
        }
        let token_file = dir.join("admin.token");
        std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
        let mut c = Cluster { dir, nodes, relays, config, secret, token_file };
        for id in ids {
            c.launch(id);
            if id == 1 {
                c.wait_for(Duration::from_secs(30), "node 1 to lead", |c| c.status(1).is_some_and(|s| s["leader"] == 1));
            }
        }
        c.wait_for(Duration::from_secs(60), "every node to join", |c| {
            c.status(1).is_some_and(|s| s["members"].as_array().unwrap().iter().filter(|m| m["voter"] == true).count() == n as usize)
        });
        c
    }

    fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// Starts (or restarts, on the same data directory) node `id`.
    pub fn launch(&mut self, id: u64) {
        let (config, secret, dir, token_file) = (self.config.clone(), self.secret.clone(), self.dir.clone(), self.token_file.clone());
        let peers: Vec<String> =
            self.relays.iter().filter(|((from, _), _)| *from == id).map(|((_, to), r)| format!("--peer={to}={}", r.addr)).collect();
        let join = self.relays.get(&(id, 1)).map(|r| r.addr.to_string());
        let node = self.node(id);
        let log = dir.join(format!("node{id}-{}.log", node.starts));
        node.starts += 1;
        let mut cmd = toil();
        cmd.arg("node")
            .arg(format!("--id={id}"))
            .arg("--data-dir")
            .arg(dir.join(format!("node{id}")))
            .arg(format!("--cluster=127.0.0.1:{}", node.cluster_port))
            .arg("--secret-file")
            .arg(&secret)
            .arg("--admin-token-file")
            .arg(&token_file)
            .arg("--listen=127.0.0.1:0")
            .arg("--admin=127.0.0.1:0")
            .arg("--config")
            .arg(&config)
            .arg("--stop-on-stdin-eof")
            .args(&peers);
        match join {
            Some(seed) => cmd.arg(format!("--join={seed}")),
            None => cmd.arg("--init"),
        };
        let mut child = cmd
            .env("TOIL_LOG", "info,wasmtime_wasi=warn,wiggle=warn,openraft=error,toil_channels=debug")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let field = super::wait_listening(&mut child, &log);
        node.http = Some(field("http").parse().unwrap());
        node.admin = field("admin").parse().unwrap();
        node.cert_sha256 = field("cert-sha256");
        node.child = Some(child);
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node(id).child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends `signal` (such as `libc::SIGSTOP` or `libc::SIGCONT`) to node `id`.
    pub fn signal(&self, id: u64, signal: i32) {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        let pid = node.child.as_ref().expect("a running node").id();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "signal {signal} to node {id}");
    }

    /// Node `id`'s cluster port, reached directly (not through a relay).
    pub fn cluster_addr(&self, id: u64) -> SocketAddr {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        format!("127.0.0.1:{}", node.cluster_port).parse().unwrap()
    }

    /// What every link carried towards its target so far: ((from, to), one connection's bytes).
    pub fn recorded(&self) -> Vec<((u64, u64), Vec<u8>)> {
        self.relays.iter().flat_map(|(link, r)| r.recorded().into_iter().map(move |bytes| (*link, bytes))).collect()
    }

    /// The leader as node `via` sees it, and its term.
    pub fn leader(&self, via: u64) -> Option<(u64, u64)> {
        let s = self.status(via)?;
        Some((s["leader"].as_u64()?, s["term"].as_u64()?))
    }

    /// Node `id`'s Prometheus metrics.
    pub fn metrics(&self, id: u64) -> Option<String> {
        let node = self.nodes.iter().find(|n| n.id == id)?;
        node.child.as_ref()?;
        admin_get(node.admin, "/metrics")
    }

    /// Cuts (or heals) every link of node `id`, both ways.
    pub fn partition(&self, id: u64, cut: bool) {
        for ((a, b), relay) in &self.relays {
            if *a == id || *b == id {
                if cut {
                    relay.cut()
                } else {
                    relay.heal()
                }
            }
        }
    }

    /// Node `id`'s `/cluster/status`, if it answers.
    pub fn status(&self, id: u64) -> Option<serde_json::Value> {
        let node = self.nodes.iter().find(|n| n.id == id)?;
        node.child.as_ref()?;
        let text = admin_get(node.admin, "/cluster/status")?;
        serde_json::from_str(&text).ok()
    }

    /// Node `id`'s HTTP address (TCP and QUIC) in its current start.
    pub fn http(&self, id: u64) -> SocketAddr {
        self.nodes.iter().find(|n| n.id == id).and_then(|n| n.http).expect("a started node")
    }

    /// A `toil` command aimed at node `id`'s admin API, with the token.
    pub fn toil_admin(&self, id: u64, args: &[&str]) -> std::process::Output {
        let node = self.nodes.iter().find(|n| n.id == id).unwrap();
        super::toil_admin(node.admin, &self.token_file, args)
    }

    /// Every node log's text, concatenated.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        out
    }

    /// The live nodes' ids.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect()
    }

    /// The pulse owner (node, fencing) as node `via` sees it.
    pub fn owner(&self, via: u64) -> Option<(u64, u64)> {
        let s = self.status(via)?;
        let o = &s["owners"]["pulse"];
        Some((o["node"].as_u64()?, o["fencing"].as_u64()?))
    }

    /// Waits until `done` holds, polling; panics naming `what` after `timeout`.
    pub fn wait_for(&self, timeout: Duration, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}; logs in {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every tick the guests logged, across all nodes and restarts.
    pub fn fired(&self) -> Vec<Fired> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                out.extend(parse_fired(&std::fs::read_to_string(&path).unwrap()));
            }
        }
        out.sort_by_key(|f| f.fire_time);
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A tick a pulse guest logged: `pulse fired fire_time_ms=T node=node-N fencing=F`,
/// with the host's log timestamp (when it ran).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fired {
    pub fire_time: i64,
    pub node: u64,
    pub fencing: u64,
    /// When the tick ran (the log line's time, Unix µs).
    pub ran_at_us: i64,
}

pub fn parse_fired(log: &str) -> Vec<Fired> {
    log.lines()
        .filter(|l| l.contains("pulse fired "))
        .filter_map(|l| {
            let field = |k: &str| l.split(&format!("{k}=")).nth(1)?.split_whitespace().next().map(str::to_string);
            let ran_at_us = parse_rfc3339_us(l.split_whitespace().next()?)?;
            Some(Fired {
                fire_time: field("fire_time_ms")?.parse().ok()?,
                node: field("node")?.trim_start_matches("node-").parse().ok()?,
                fencing: field("fencing")?.parse().ok()?,
                ran_at_us,
            })
        })
        .collect()
}

/// `2026-11-25T22:22:10.002452Z` to Unix µs (UTC only, as the node logs).
pub fn parse_rfc3339_us(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let us: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((((days * 24 + h) * 60 + min) * 60 + sec) * 1_000_000 + us)
}

/// The current time in Unix µs.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

/// The admin token of every [`Cluster`] node.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A GET on an admin listener, with the cluster's token; the body if the status is 200.
pub fn admin_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {ADMIN_TOKEN}\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}
