//! The cluster under faults injected from outside, as an operator would:
//! an owner stopped (SIGSTOP) between claiming a tick and firing it, a
//! follower stopped and resumed, and the cluster port's traffic captured
//! (no plaintext in it) and every captured connection sent again (none gets
//! past the TLS handshake). Each claim is checked against the guests' own
//! logs and the nodes' status.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::cluster::{now_us, Cluster, Fired};

/// One faulted cluster at a time: the faults are timed, and two clusters
/// competing for two cores would add stalls of their own.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fire times that fired more than once anywhere in the cluster.
fn duplicates(fired: &[Fired]) -> Vec<(i64, Vec<u64>)> {
    let mut by_time: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for f in fired {
        by_time.entry(f.fire_time).or_default().push(f.node);
    }
    by_time.into_iter().filter(|(_, nodes)| nodes.len() > 1).collect()
}

/// A metric's value in Prometheus text (0 when absent).
fn metric(text: &str, line_prefix: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(line_prefix)?.trim().parse::<f64>().ok()).unwrap_or(0.0) as u64
}

const DROPPED: &str = "toil_daemon_ticks_total{domain=\"pulse\",outcome=\"dropped\"}";

/// Waits until `via` shows the claim of a tick still in the future; its fire time (Unix ms).
fn wait_for_a_pending_claim(c: &Cluster, via: u64) -> i64 {
    let start = Instant::now();
    let mut seen = None;
    loop {
        assert!(start.elapsed() < Duration::from_secs(20), "no claim seen ahead of its tick; logs in {}", c.dir.display());
        let claimed = c.status(via).and_then(|s| s["tasks"][0]["last_claimed"].as_i64());
        let now_ms = now_us() / 1000;
        match claimed {
            // A claim newer than one already seen, still ahead of its tick.
            Some(f) if seen.is_some_and(|s| f > s) && f > now_ms + 15 => return f,
            Some(f) => seen = Some(seen.map_or(f, |s: i64| s.max(f))),
            None => {}
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn an_owner_stopped_between_claim_and_fire_never_fires_after_the_domain_moved() {
    let _serial = one_at_a_time();
    // The claim goes out 90 ms before its tick (the owner lease is 130 ms).
    let c = Cluster::start("faults-paused-owner", 3, serde_json::json!({"claimLeadMs": 90}));
    c.wait_for(Duration::from_secs(30), "the pulse to tick", |c| c.fired().len() >= 2);
    for pause in [Duration::from_millis(40), Duration::from_millis(800), Duration::from_secs(2), Duration::from_secs(5)] {
        let (owner, fencing) = c.owner(1).unwrap();
        let (leader, _) = c.leader(1).unwrap();
        let watcher = c.running().into_iter().find(|n| *n != owner).unwrap();
        // The leader applies a claim first; poll it unless it is the node to stop.
        let fire_time = wait_for_a_pending_claim(&c, if leader == owner { owner } else { leader });
        let dropped_before = metric(&c.metrics(owner).unwrap(), DROPPED);
        let reported_dropped = |c: &Cluster| c.status(watcher).and_then(|s| s["tasks"][0]["dropped"].as_u64()).unwrap();
        let reported_before = reported_dropped(&c);
        // Stopped before the leader's answer reached it, the owner may instead
        // give the claim up when it wakes (its wait for the answer timed out).
        let gave_up = |c: &Cluster| c.logs().matches("the claim was not committed within").count();
        let gave_up_before = gave_up(&c);
        let stopped_at_us = now_us();
        c.signal(owner, libc::SIGSTOP);
        std::thread::sleep(pause);
        let moved = c.owner(watcher).is_some_and(|(_, f)| f > fencing);
        c.signal(owner, libc::SIGCONT);
        let what = format!("owner node {owner} (leader: {}) stopped {pause:?} after claiming tick {fire_time}", leader == owner);
        c.wait_for(Duration::from_secs(10), "the stopped node to answer again", |c| c.status(owner).is_some());
        std::thread::sleep(Duration::from_millis(1500));
        let fired = c.fired();
        if pause < Duration::from_millis(100) {
            // Inside the lease: nothing moves and the claimed tick fires, once.
            assert!(!moved && c.owner(watcher) == Some((owner, fencing)), "{what}: the domain moved");
            let runs: Vec<&Fired> = fired.iter().filter(|f| f.fire_time == fire_time).collect();
            assert_eq!(runs.len(), 1, "{what}: tick {fire_time} ran {runs:?}");
            assert_eq!((runs[0].node, runs[0].fencing), (owner, fencing));
        } else {
            assert!(moved, "{what}: the others did not move the domain while it was stopped");
            let stale: Vec<&Fired> = fired.iter().filter(|f| f.node == owner && f.fencing == fencing && f.ran_at_us > stopped_at_us).collect();
            assert!(stale.is_empty(), "{what}: it fired after it was stopped, under the old fencing token: {stale:?}");
            assert!(fired.iter().all(|f| f.fire_time != fire_time), "{what}: the claimed tick ran");
            let dropped = metric(&c.metrics(owner).unwrap(), DROPPED);
            if dropped == dropped_before + 1 {
                // At least this one: the new owner may have dropped one of its
                // own too, if the machine stalled it past its lease.
                let reported = reported_dropped(&c);
                assert!(reported > reported_before, "{what}: the dropped tick is not reported in the status ({reported_before} → {reported})");
            } else {
                assert_eq!(dropped, dropped_before, "{what}: one claim, one tick at most");
                assert!(gave_up(&c) > gave_up_before, "{what}: the claimed tick was neither dropped nor given up");
            }
        }
        assert!(duplicates(&fired).is_empty(), "{what}: ticks fired twice: {:?}", duplicates(&fired));
        eprintln!("{what}: moved {moved}, no stale tick");
    }
    assert!(c.logs().contains("dropped a claimed tick: this node stalled past its lease"));
}

#[test]
fn a_follower_back_from_a_pause_leaves_the_leader_alone() {
    let _serial = one_at_a_time();
    let c = Cluster::start("faults-paused-follower", 3, serde_json::json!({}));
    c.wait_for(Duration::from_secs(30), "every node to see one leader", |c| {
        let views: Vec<_> = c.running().iter().map(|n| c.leader(*n).map(|l| l.0)).collect();
        views.iter().all(|v| v.is_some() && *v == views[0])
    });
    for pause in [Duration::from_millis(600), Duration::from_millis(1500), Duration::from_secs(3)] {
        let (leader, term) = c.leader(1).unwrap();
        let follower = c.running().into_iter().find(|n| *n != leader).unwrap();
        c.signal(follower, libc::SIGSTOP);
        std::thread::sleep(pause);
        c.signal(follower, libc::SIGCONT);
        c.wait_for(Duration::from_secs(10), "the follower to see the leader again", |c| c.leader(follower).is_some_and(|l| l.0 == leader));
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(c.leader(leader), Some((leader, term)), "node {follower} stopped for {pause:?} and resumed: the leader or its term changed");
        assert_eq!(c.leader(follower), Some((leader, term)));
    }
}

/// Sends `bytes` as they are on a new connection to `to`, then reads until
/// the node closes it: what it answered.
fn replay(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        answer.extend_from_slice(&buf[..n]);
    }
    answer
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn the_cluster_port_carries_no_plaintext_and_no_captured_connection_replays() {
    let _serial = one_at_a_time();
    let mut c = Cluster::start("faults-replay", 3, serde_json::json!({}));
    c.wait_for(Duration::from_secs(30), "the pulse to tick", |c| c.fired().len() >= 2);
    // A leader change and a restart put votes on the wire, and leave a
    // receiver that no longer remembers what it had accepted.
    let (leader, _) = c.leader(1).unwrap();
    c.kill(leader);
    let survivor = c.running()[0];
    c.wait_for(Duration::from_secs(20), "a new leader", |c| c.leader(survivor).is_some_and(|l| l.0 != leader));
    c.launch(leader);
    c.wait_for(Duration::from_secs(30), "the restarted node to rejoin", |c| c.leader(leader).is_some_and(|l| l.0 != leader));
    let ticks = c.fired().len();
    c.wait_for(Duration::from_secs(20), "two more ticks", |c| c.fired().len() >= ticks + 2);

    let snapshot = |c: &Cluster| {
        let s = c.status(survivor).unwrap();
        (s["releases"].clone(), s["members"].as_array().unwrap().iter().map(|m| (m["id"].clone(), m["voter"].clone())).collect::<Vec<_>>())
    };
    let before = snapshot(&c);
    // What a passive observer of the cluster port saw: TLS records only.
    let recorded = c.recorded();
    assert!(recorded.len() >= 6, "connections on every link: {}", recorded.len());
    let total: usize = recorded.iter().map(|(_, b)| b.len()).sum();
    // (A connection to a node just killed may carry no byte at all.)
    for ((from, to), bytes) in recorded.iter().filter(|(_, b)| !b.is_empty()) {
        assert_eq!(bytes[0], 0x16, "node {from} to node {to}: a connection opens with a TLS handshake record");
        for clear in [&b"POST "[..], b"HTTP/1.1", b"x-toil-cluster-auth", b"/raft/", b"/cluster/", b"pulse", b"fencing"] {
            assert!(!contains(bytes, clear), "node {from} to node {to}: {:?} in the clear", String::from_utf8_lossy(clear));
        }
    }
    // Each captured connection sent again, byte for byte, to every node:
    // a fresh handshake the old client half cannot finish, no HTTP answer.
    for ((from, to), bytes) in recorded.iter().take(40) {
        for target in c.running() {
            let answer = replay(c.cluster_addr(target), bytes);
            assert!(!contains(&answer, b"HTTP/1.1"), "node {from} to node {to}, replayed to node {target}: an HTTP answer");
        }
    }
    eprintln!("captured {} connections, {total} bytes, no plaintext; replayed to every node", recorded.len());
    assert!(c.logs().contains("refused a cluster connection: "));
    assert_eq!(snapshot(&c), before, "a replay changed the cluster");
    assert!(duplicates(&c.fired()).is_empty());
}
