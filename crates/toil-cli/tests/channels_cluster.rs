//! Channels across a real cluster: three `toil node` processes on loopback
//! and one `nats-server -js` (Debian's, started by the test on a free port
//! with its own store), serving the `relay` test guest. Clients are real
//! WebTransport sessions on different nodes; publishers are boxes on every
//! node, a request and the daemon's ticks.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::cluster::{test_guest, Cluster};
use common::nats::Nats;
use common::relay::{RelayClient, RELAY_HOST};
use common::{http1, request};

async fn client(c: &Cluster, node: u64) -> RelayClient {
    let n = c.nodes.iter().find(|n| n.id == node).unwrap();
    RelayClient::connect(&n.cert_sha256, n.http.unwrap(), None).await
}

/// Reads `n` events of `topic` (skipping other topics) as `(offset, text)`.
async fn messages(client: &mut RelayClient, topic: &str, n: usize) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        let event = client.event().await;
        let words: Vec<&str> = event.splitn(5, ' ').collect();
        if words[1] != topic {
            continue;
        }
        assert_eq!(words[0], "msg", "no resync expected: {event}");
        got.push((words[2].parse().unwrap(), words.get(4).unwrap_or(&"").to_string()));
    }
    got
}

#[test]
fn channels_span_the_cluster_through_nats_and_survive_node_and_nats_restarts() {
    let dir = common::repo_root().join("target/e2e").join(format!("channels-nats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut nats = Nats::start(&dir);
    let config = serde_json::json!({
        "apps": [{"domain": "relay", "dir": test_guest("relay")}],
        "channels": {"nats": nats.url(), "historySize": 50, "maxMessageBytes": 1_000_000},
        // Publishes may wait for NATS up to ¾ of this (the default 100 ms
        // leaves 75 ms, short for a loaded CI machine moving 50 MB).
        "limits": {"deadlineMs": 1000},
    });
    let mut c = Cluster::start_with("channels-cluster", 3, config);
    c.wait_for(Duration::from_secs(60), "every node to serve relay", |c| {
        c.status(1).is_some_and(|s| (1..=3).all(|n| s["served"][n.to_string()]["relay"].as_u64().is_some_and(|v| v >= 1)))
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        every_publisher_reaches_every_subscriber_once_in_order(&c).await;
        subscribing_now_misses_nothing_while_the_node_loads_a_long_history(&c).await;
        an_acknowledged_publication_survives_a_nats_restart(&c, &mut nats).await;
    });
    let (position, epoch) = rt.block_on(subscribed_on_node_3_until(&c, 5));
    c.kill(3);
    rt.block_on(a_client_resumes_on_another_node_after_its_node_died(&c, position, &epoch));
}

async fn every_publisher_reaches_every_subscriber_once_in_order(c: &Cluster) {
    let (mut s1, mut s3) = (client(c, 1).await, client(c, 3).await);
    assert_eq!(s1.cmd("sub room oldest").await, "ok");
    assert_eq!(s3.cmd("sub room oldest").await, "ok");
    assert_eq!(s3.cmd("sub ticks now").await, "ok");
    let mut publishers = [client(c, 1).await, client(c, 2).await, client(c, 3).await];
    let mut offsets = BTreeSet::new();
    for round in 0..10 {
        for (i, p) in publishers.iter_mut().enumerate() {
            offsets.insert(p.publish("room", &format!("n{}-{round}", i + 1)).await.0);
        }
    }
    let http = c.http(2);
    let resp = http1(http, request("POST", RELAY_HOST, "/pub/room", "from a request")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    offsets.insert(resp.text().split(' ').next().unwrap().parse().unwrap());
    assert_eq!(offsets, (1..=31).collect(), "one offset per publication, none shared");
    let (got1, got3) = (messages(&mut s1, "room", 31).await, messages(&mut s3, "room", 31).await);
    assert_eq!(got1.iter().map(|m| m.0).collect::<Vec<_>>(), (1..=31).collect::<Vec<_>>());
    assert_eq!(got1, got3, "both nodes' subscribers see the same sequence");
    // The daemon, owned by one of the nodes, reaches a box on node 3.
    let ticks = messages(&mut s3, "ticks", 2).await;
    assert_eq!(ticks[1].0, ticks[0].0 + 1);
}

/// A box subscribing `now` to a topic its node does not hold yet gets every
/// publication made after its subscribe returned, and nothing before, even
/// while the node's copy is still loading the topic's history: 50 messages
/// of 1 MB here, so the publications from node 2 land during that load.
async fn subscribing_now_misses_nothing_while_the_node_loads_a_long_history(c: &Cluster) {
    let mut publisher = client(c, 2).await;
    for _ in 0..50 {
        let reply = publisher.cmd("pub-size long 1000000").await;
        assert!(reply.starts_with("pub-ok "), "{reply}");
    }
    let mut subscriber = client(c, 1).await;
    assert_eq!(subscriber.cmd("sub long now").await, "ok");
    let mut epoch = String::new();
    for i in 1..=20 {
        let (offset, e) = publisher.publish("long", &format!("s{i}")).await;
        assert_eq!(offset, 50 + i);
        epoch = e;
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(10), subscriber.event()).await else { break };
        got.push(event.splitn(5, ' ').filter(|w| w.len() < 100).collect::<Vec<_>>().join(" "));
    }
    let expected: Vec<String> = (1..=20).map(|i| format!("msg long {} {epoch} s{i}", 50 + i)).collect();
    assert_eq!(got, expected, "exactly the publications made after the subscribe, nothing before (logs in {})", c.dir.display());
}

async fn an_acknowledged_publication_survives_a_nats_restart(c: &Cluster, nats: &mut Nats) {
    let mut subscriber = client(c, 1).await;
    assert_eq!(subscriber.cmd("sub loop now").await, "ok");
    let mut publisher = client(c, 2).await;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    let mut restarted = false;
    while acknowledged.len() < 60 {
        if !restarted && acknowledged.len() == 20 {
            nats.stop();
            tokio::time::sleep(Duration::from_millis(500)).await;
            nats.launch();
            restarted = true;
        }
        let reply = publisher.cmd(&format!("pub loop {}", acknowledged.len() + refused)).await;
        match reply.split(' ').collect::<Vec<_>>()[..] {
            ["pub-ok", offset, _] => acknowledged.push(offset.parse::<u64>().unwrap()),
            _ => {
                assert!(reply.contains("unavailable"), "{reply}");
                refused += 1;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "publishing stalled; logs in {}", c.dir.display());
    }
    // Every acknowledged publication arrives; offsets only go up by one (no
    // duplicate, no reorder); a refused one may or may not have been stored.
    let last = *acknowledged.last().unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let event = subscriber.event().await;
        let words: Vec<&str> = event.split(' ').collect();
        assert_eq!(words[0], "msg", "{event}");
        seen.push(words[2].parse::<u64>().unwrap());
    }
    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "offsets go up by one: {seen:?}");
    for offset in &acknowledged {
        assert!(seen.contains(offset), "acknowledged offset {offset} was not delivered: {seen:?}");
    }
}

/// Subscribes a client on node 3 to `resume`, publishes `n` messages from
/// node 1, and returns the client's last position.
async fn subscribed_on_node_3_until(c: &Cluster, n: usize) -> (u64, String) {
    let mut s3 = client(c, 3).await;
    assert_eq!(s3.cmd("sub resume now").await, "ok");
    let mut publisher = client(c, 1).await;
    let mut epoch = String::new();
    for i in 1..=n {
        epoch = publisher.publish("resume", &format!("r{i}")).await.1;
    }
    let got = messages(&mut s3, "resume", n).await;
    (got.last().unwrap().0, epoch)
}

async fn a_client_resumes_on_another_node_after_its_node_died(c: &Cluster, position: u64, epoch: &str) {
    let mut publisher = client(c, 1).await;
    for i in 1..=5 {
        publisher.publish("resume", &format!("after-{i}")).await;
    }
    // The browser reconnects to another node with its last position.
    let mut resumed = client(c, 2).await;
    assert_eq!(resumed.cmd(&format!("sub resume {position}:{epoch}")).await, "ok");
    let got = messages(&mut resumed, "resume", 5).await;
    let want: Vec<(u64, String)> = (1..=5).map(|i| (position + i as u64, format!("after-{i}"))).collect();
    assert_eq!(got, want, "nothing lost, nothing twice");
}
