//! The daemon tier on a real cluster: three `toil node` processes on
//! loopback, raft over authenticated RPC, the `pulse` guest ticking every
//! second. Every claim about ticks is checked against the guests' own logs.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Fired};
use common::toil;

/// Fire times that fired more than once anywhere in the cluster.
fn duplicates(fired: &[Fired]) -> Vec<(i64, Vec<u64>)> {
    let mut by_time: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for f in fired {
        by_time.entry(f.fire_time).or_default().push(f.node);
    }
    by_time.into_iter().filter(|(_, nodes)| nodes.len() > 1).collect()
}

/// Waits until node `node` has fired a tick with fencing `fencing`.
fn wait_for_tick_by(c: &Cluster, node: u64, fencing: u64, timeout: Duration) -> Fired {
    let start = Instant::now();
    loop {
        if let Some(f) = c.fired().into_iter().find(|f| f.node == node && f.fencing == fencing) {
            return f;
        }
        assert!(start.elapsed() < timeout, "node {node} fired nothing with fencing {fencing} within {timeout:?}; logs in {}", c.dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_the_owner_moves_the_daemon_and_no_tick_fires_twice() {
    let mut c = Cluster::start("cluster-kill", 3, serde_json::json!({}));
    c.wait_for(Duration::from_secs(20), "a pulse owner", |c| c.owner(1).is_some());
    // Without channels.nats a cluster node has no channels, and says why
    // (in-process channels would split the cluster into islands).
    assert!(c.logs().contains("channels off: a cluster node shares channels only through NATS; set channels.nats"), "logs in {}", c.dir.display());
    let mut moves = Vec::new();
    for round in 0..3 {
        let (owner, fencing) = c.owner(c.running()[0]).unwrap();
        wait_for_tick_by(&c, owner, fencing, Duration::from_secs(10));
        c.kill(owner);
        let killed_at = Instant::now();
        let via = c.running()[0];
        c.wait_for(Duration::from_secs(20), "a new owner", |c| c.owner(via).is_some_and(|(n, _)| n != owner));
        let (new_owner, new_fencing) = c.owner(via).unwrap();
        assert!(new_fencing > fencing, "round {round}: the fencing token grows ({fencing} -> {new_fencing})");
        wait_for_tick_by(&c, new_owner, new_fencing, Duration::from_secs(10));
        moves.push((owner, new_owner, killed_at.elapsed()));
        c.launch(owner);
        c.wait_for(Duration::from_secs(30), "the restarted node to rejoin", |c| {
            c.status(owner).is_some_and(|s| s["leader"].is_u64() && s["owners"]["pulse"]["fencing"].as_u64() >= Some(new_fencing))
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    let fired = c.fired();
    assert!(duplicates(&fired).is_empty(), "ticks fired twice: {:?}", duplicates(&fired));
    // Consecutive ticks are whole seconds apart, strictly increasing.
    assert!(fired.windows(2).all(|w| w[1].fire_time > w[0].fire_time && w[0].fire_time % 1000 == 0));
    let owners: std::collections::BTreeSet<u64> = fired.iter().map(|f| f.node).collect();
    assert!(owners.len() >= 2, "ticks fired on several nodes over the kills: {owners:?}");
    for (from, to, took) in &moves {
        assert_ne!(from, to);
        eprintln!("owner moved from node {from} to node {to}; its first tick {took:?} after the kill");
    }
    // Missed ticks are skipped and counted, never replayed: claimed + skipped
    // covers every second the daemon existed.
    let status = c.status(c.running()[0]).unwrap();
    let task = &status["tasks"][0];
    assert_eq!(task["name"], "beat");
    assert!(task["claimed"].as_u64().unwrap() >= fired.len() as u64, "every logged tick was claimed: {task}");
    // Runs are reported after the fact; a killed owner may take its last report with it.
    let ran = task["ran"].as_u64().unwrap();
    assert!(ran <= fired.len() as u64 && ran + 3 >= fired.len() as u64, "ran as reported, against {} logged ticks: {task}", fired.len());
}

#[test]
fn a_partitioned_owner_fires_nothing() {
    let c = Cluster::start("cluster-partition", 3, serde_json::json!({}));
    c.wait_for(Duration::from_secs(20), "a pulse owner", |c| c.owner(1).is_some());
    let (owner, fencing) = c.owner(1).unwrap();
    wait_for_tick_by(&c, owner, fencing, Duration::from_secs(10));
    c.partition(owner, true);
    let cut_at = common::cluster::now_us() / 1000;
    let others: Vec<u64> = c.running().into_iter().filter(|n| *n != owner).collect();
    c.wait_for(Duration::from_secs(20), "the majority to move the daemon", |c| c.owner(others[0]).is_some_and(|(n, _)| n != owner));
    let (new_owner, new_fencing) = c.owner(others[0]).unwrap();
    let first = wait_for_tick_by(&c, new_owner, new_fencing, Duration::from_secs(10));
    // Let the isolated ex-owner try for a while: it still believes it owns
    // the domain, but its claims cannot commit.
    std::thread::sleep(Duration::from_secs(4));
    let isolated: Vec<Fired> = c.fired().into_iter().filter(|f| f.node == owner && f.ran_at_us / 1000 > cut_at).collect();
    // A tick claimed just before the cut may still run at its time; nothing after.
    assert!(isolated.iter().all(|f| f.fire_time <= cut_at + 1000), "the partitioned ex-owner fired {isolated:?}");
    assert!(isolated.iter().all(|f| f.fire_time < first.fire_time), "ex-owner {isolated:?} vs new owner from {}", first.fire_time);
    assert!(c.status(owner).unwrap()["owners"]["pulse"]["node"] == owner, "the isolated node still believes it owns pulse");
    // Healed, it learns the daemon moved and stands by.
    c.partition(owner, false);
    c.wait_for(Duration::from_secs(20), "the ex-owner to learn of the move", |c| {
        c.status(owner).is_some_and(|s| s["owners"]["pulse"]["fencing"].as_u64() >= Some(new_fencing))
    });
    std::thread::sleep(Duration::from_secs(2));
    let fired = c.fired();
    assert!(duplicates(&fired).is_empty(), "ticks fired twice: {:?}", duplicates(&fired));
    assert!(fired.iter().filter(|f| f.node == owner).all(|f| f.fencing == fencing), "the ex-owner fired under its old term only");
}

#[test]
fn raft_state_survives_a_full_restart() {
    let mut c = Cluster::start("cluster-restart", 3, serde_json::json!({}));
    c.wait_for(Duration::from_secs(20), "three ticks", |c| c.fired().len() >= 3);
    let before = c.status(1).unwrap();
    for id in [1, 2, 3] {
        c.kill(id);
    }
    for id in [1, 2, 3] {
        c.launch(id);
    }
    c.wait_for(Duration::from_secs(30), "a leader after the restart", |c| c.status(1).is_some_and(|s| s["leader"].is_u64()));
    let after = c.status(1).unwrap();
    assert_eq!(after["members"].as_array().unwrap().len(), 3, "membership persisted: {after}");
    assert!(after["term"].as_u64() >= before["term"].as_u64(), "the vote persisted: {before} -> {after}");
    let fired_before = before["tasks"][0]["claimed"].as_u64().unwrap();
    assert!(after["tasks"][0]["claimed"].as_u64().unwrap() >= fired_before, "claims persisted: {before} -> {after}");
    assert!(after["owners"]["pulse"]["fencing"].as_u64() >= before["owners"]["pulse"]["fencing"].as_u64());
    let count = c.fired().len();
    c.wait_for(Duration::from_secs(20), "ticks after the restart", |c| c.fired().len() >= count + 2);
    let fired = c.fired();
    assert!(duplicates(&fired).is_empty(), "no tick fired again after the restart: {:?}", duplicates(&fired));
}

#[test]
fn unauthenticated_peers_are_refused_and_nodes_can_be_removed() {
    let mut c = Cluster::start("cluster-auth", 3, serde_json::json!({}));
    let port = c.nodes[1].cluster_port;
    // Cleartext HTTP, and HTTPS with no client certificate: refused in the
    // handshake, no HTTP answer at all.
    for url in [format!("http://127.0.0.1:{port}/cluster/remove"), format!("https://127.0.0.1:{port}/cluster/remove")] {
        let out = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-d", "{\"id\":2}", &url])
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "{url} answered");
    }
    c.wait_for(Duration::from_secs(10), "the refusals in the log", |c| c.logs().contains("refused a cluster connection: "));
    // Another cluster's secret: the operator's command fails the handshake.
    let wrong = c.dir.join("wrong.secret");
    std::fs::write(&wrong, "not the cluster's secret, but long enough").unwrap();
    let out = toil().args(["cluster", "remove", "2", "--node", &format!("127.0.0.1:{port}"), "--secret-file"]).arg(&wrong).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another cluster secret"), "{err}");
    // So does a node with that secret asking to join.
    let stranger_log = c.dir.join("stranger.log");
    let mut stranger = toil()
        .args(["node", "--id=9", "--listen=127.0.0.1:0", "--admin=127.0.0.1:0", &format!("--join=127.0.0.1:{port}")])
        .arg(format!("--cluster=127.0.0.1:{}", common::cluster::free_port()))
        .arg("--data-dir")
        .arg(c.dir.join("stranger"))
        .arg("--secret-file")
        .arg(&wrong)
        .arg("--admin-token-file")
        .arg(&c.token_file)
        .arg("--config")
        .arg(c.dir.join("toilconfig.json"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stranger_log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while stranger.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = stranger.kill();
    let _ = stranger.wait();
    let log = std::fs::read_to_string(&stranger_log).unwrap();
    assert!(log.contains("another cluster secret"), "the stranger hears why: {log}");
    assert!(c.status(1).unwrap()["members"].as_array().unwrap().iter().all(|m| m["id"] != 9), "the stranger is no member");
    assert_eq!(c.status(1).unwrap()["members"].as_array().unwrap().len(), 3);
    // With the secret: node 3 leaves; its daemon (if any) moves.
    let secret = c.dir.join("cluster.secret");
    let out = toil().args(["cluster", "remove", "3", "--node", &format!("127.0.0.1:{port}"), "--secret-file"]).arg(&secret).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_for(Duration::from_secs(10), "node 3 to leave", |c| {
        c.status(1).is_some_and(|s| s["members"].as_array().unwrap().iter().all(|m| m["id"] != 3) && s["owners"]["pulse"]["node"] != 3)
    });
    c.kill(3);
    c.wait_for(Duration::from_secs(20), "a tick after the removal", |c| c.status(1).is_some_and(|s| s["tasks"][0]["claimed"].as_u64() > Some(0)));
    let out = c.toil_admin(c.nodes[0].id, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("members:") && text.contains("pulse") && text.contains("beat"), "{text}");
}
