//! End to end: channels on one node (in process), over real WebTransport
//! sessions and HTTP against a real `toil dev` serving the `relay` test
//! guest, whose boxes run commands and report every channel event.
//! The cluster transport (NATS) has its own suite, `channels_cluster`.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::relay::RelayClient;
use common::*;
use toil_abi::stream::close_code;

const RELAY: &str = "relay.localhost";
const HISTORY: usize = 5;
const QUEUE: usize = 8;
const MAX_SUBSCRIPTIONS: usize = 4;
const MAX_MESSAGE: usize = 1024;
const HIBERNATE_AFTER_MS: u64 = 250;

fn node() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let relay = repo_root().join("crates/toil-cli/tests/guests/relay");
        start_server(
            "channels",
            serde_json::json!({
                "apps": [{"domain": "relay", "dir": relay}, {"domain": "hello", "dir": repo_root().join("examples/hello")}],
                "defaultDomain": "relay",
                // Boxes idle for 250 ms hibernate: every test here also
                // runs with boxes that sleep and wake between events.
                "limits": {"hibernateAfterMs": HIBERNATE_AFTER_MS},
                "channels": {
                    "historySize": HISTORY, "subscriberQueue": QUEUE,
                    "maxSubscriptionsPerBox": MAX_SUBSCRIPTIONS, "maxMessageBytes": MAX_MESSAGE
                },
            }),
        )
    })
}

/// Another domain on the same node answers while a channel fault happens.
async fn hello_still_serves() {
    let resp = http1(node().http, get("hello.localhost", "/")).await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "Hello from Toil Edge!\n"));
}

/// A client of a relay box on the channel test node.
struct Client;

impl Client {
    async fn connect() -> RelayClient {
        Client::connect_with_window(None).await
    }

    /// A client that grants the node at most `window` unread bytes.
    async fn connect_with_window(window: Option<u32>) -> RelayClient {
        let s = node();
        RelayClient::connect(&s.cert_sha256, s.http, window).await
    }
}

#[tokio::test]
async fn a_publication_reaches_every_subscriber_in_offset_order() {
    let (mut a, mut b, mut c) = (Client::connect().await, Client::connect().await, Client::connect().await);
    assert_eq!(b.cmd("sub room now").await, "ok");
    assert_eq!(c.cmd("sub room now").await, "ok");
    // The publisher is a subscriber too: it sees its own publications in order.
    assert_eq!(a.cmd("sub room now").await, "ok");
    // Each publication is read by the other two before the next (their
    // queues hold 8: a loaded machine must not turn this into an overflow).
    let mut epoch = String::new();
    for i in 1..=20 {
        let (offset, e) = a.publish("room", &format!("m{i}")).await;
        assert_eq!(offset, i, "offsets count up by one");
        for client in [&mut b, &mut c] {
            assert_eq!(client.event().await, format!("msg room {i} {e} m{i}"));
        }
        epoch = e;
    }
    for i in 1..=20 {
        assert_eq!(a.event().await, format!("msg room {i} {epoch} m{i}"));
    }
    // Unsubscribed, a box gets nothing more of the topic.
    assert_eq!(c.cmd("unsub room").await, "ok true");
    assert_eq!(c.cmd("unsub room").await, "ok false");
    a.publish("room", "after").await;
    assert_eq!(b.event().await, format!("msg room 21 {epoch} after"));
    assert_eq!(c.cmd("sub other now").await, "ok");
    assert!(c.events.is_empty());
    assert!(node().metric("toil_channel_published_total{domain=\"relay\"}").await >= 21.0);
    assert!(node().metric("toil_channel_delivered_total{domain=\"relay\"}").await >= 61.0);
}

/// A box hibernates with its subscriptions (they are host state): a
/// publication wakes it, and it hears it, and the next, in order.
#[tokio::test]
async fn a_hibernating_subscriber_is_woken_by_a_publication() {
    let wakes = || node().metric("toil_stream_box_wakes_total{domain=\"relay\"}");
    let mut sleeper = Client::connect().await;
    assert_eq!(sleeper.cmd("sub dreams now").await, "ok");
    let mut publisher = Client::connect().await;
    tokio::time::sleep(Duration::from_millis(4 * HIBERNATE_AFTER_MS)).await;
    let before = wakes().await;
    let (offset, epoch) = publisher.publish("dreams", "one").await;
    assert_eq!(sleeper.event().await, format!("msg dreams {offset} {epoch} one"));
    assert!(wakes().await >= before + 2.0, "the publisher's command and the delivery each woke a box");
    let (next, _) = publisher.publish("dreams", "two").await;
    assert_eq!(sleeper.event().await, format!("msg dreams {next} {epoch} two"));
    assert_eq!(sleeper.cmd("sub dreams now").await, "ok", "the woken box still runs commands");
}

#[tokio::test]
async fn history_serves_late_joiners_and_resumes_and_resyncs_the_rest() {
    let mut publisher = Client::connect().await;
    let mut epoch = String::new();
    for i in 1..=7 {
        epoch = publisher.publish("hist", &format!("h{i}")).await.1;
    }
    // History keeps the last HISTORY publications: 3..=7.
    let mut late = Client::connect().await;
    assert_eq!(late.cmd("sub hist oldest").await, "ok");
    for i in 3..=7 {
        assert_eq!(late.event().await, format!("msg hist {i} {epoch} h{i}"));
    }
    // A resume from a kept position gets exactly what it missed.
    let mut resumed = Client::connect().await;
    assert_eq!(resumed.cmd(&format!("sub hist 5:{epoch}")).await, "ok");
    assert_eq!(resumed.event().await, format!("msg hist 6 {epoch} h6"));
    assert_eq!(resumed.event().await, format!("msg hist 7 {epoch} h7"));
    // Evicted, foreign-epoch and future positions get one resync at the topic's position.
    let mut evicted = Client::connect().await;
    assert_eq!(evicted.cmd(&format!("sub hist 1:{epoch}")).await, "ok");
    assert_eq!(evicted.event().await, format!("resync hist 7 {epoch} evicted"));
    let mut foreign = Client::connect().await;
    assert_eq!(foreign.cmd("sub hist 3:not-this-epoch").await, "ok");
    assert_eq!(foreign.event().await, format!("resync hist 7 {epoch} epoch"));
    let mut ahead = Client::connect().await;
    assert_eq!(ahead.cmd(&format!("sub hist 99:{epoch}")).await, "ok");
    assert_eq!(ahead.event().await, format!("resync hist 7 {epoch} ahead"));
    // After the replay or the resync, live publications follow with no gap.
    publisher.publish("hist", "h8").await;
    for client in [&mut late, &mut resumed, &mut evicted, &mut foreign, &mut ahead] {
        assert_eq!(client.event().await, format!("msg hist 8 {epoch} h8"));
    }
    assert!(node().metric("toil_channel_resync_total{domain=\"relay\",reason=\"evicted\"}").await >= 1.0);
}

#[tokio::test]
async fn requests_and_daemon_ticks_publish_to_connected_boxes() {
    let mut box_ = Client::connect().await;
    assert_eq!(box_.cmd("sub news now").await, "ok");
    assert_eq!(box_.cmd("sub ticks now").await, "ok");
    let s = node();
    let resp = http1(s.http, request("POST", RELAY, "/pub/news", "from a request")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let (offset, epoch) = resp.text().split_once(' ').map(|(o, e)| (o.to_string(), e.to_string())).unwrap();
    // The daemon ticks every second; the news arrives among the ticks.
    let mut saw_news = false;
    let mut ticks = Vec::new();
    while !saw_news || ticks.len() < 2 {
        let event = box_.event().await;
        if event.starts_with("msg news") {
            assert_eq!(event, format!("msg news {offset} {epoch} from a request"));
            saw_news = true;
        } else {
            let words: Vec<&str> = event.split(' ').collect();
            assert_eq!(&words[..2], ["msg", "ticks"], "{event}");
            ticks.push(words[2].parse::<u64>().unwrap());
        }
    }
    assert_eq!(ticks[1], ticks[0] + 1, "ticks arrive in order with no gap");
}

#[tokio::test]
async fn bad_channel_calls_get_clear_errors_and_the_box_goes_on() {
    let mut c = Client::connect().await;
    assert_eq!(c.cmd(&format!("pub-size big {}", MAX_MESSAGE + 1)).await, "err the message is over the node's channel message size limit");
    assert!(c.cmd(&format!("pub-size big {MAX_MESSAGE}")).await.starts_with("pub-ok 1 "));
    for bad in ["a*b", "..", "/lead", &"t".repeat(129)] {
        assert_eq!(c.cmd(&format!("pub {bad} x")).await, "err bad topic name (1 to 128 bytes of A-Z a-z 0-9 - _ . : /)", "{bad}");
        assert_eq!(c.cmd(&format!("sub {bad} now")).await, "err bad topic name (1 to 128 bytes of A-Z a-z 0-9 - _ . : /)", "{bad}");
    }
    // A subscribe storm stops at the box's limit; re-subscribing is not a new one.
    for i in 0..MAX_SUBSCRIPTIONS {
        assert_eq!(c.cmd(&format!("sub storm{i} now")).await, "ok");
    }
    assert_eq!(c.cmd("sub storm0 oldest").await, "ok");
    assert_eq!(c.cmd("sub one-too-many now").await, "err the box is at its subscription limit");
    assert_eq!(c.cmd("unsub storm1").await, "ok true");
    assert_eq!(c.cmd("sub one-too-many now").await, "ok");
    // The same refusals over HTTP, from the request tier.
    let s = node();
    let resp = http1(s.http, request("POST", RELAY, "/pub/a..b", "x")).await;
    assert_eq!((resp.status, resp.text().as_str()), (400, "bad topic name (1 to 128 bytes of A-Z a-z 0-9 - _ . : /)"));
    assert_eq!(http1(s.http, request("POST", RELAY, "/pub/big", vec![0u8; MAX_MESSAGE + 1])).await.status, 400);
    assert!(c.publish("still-serving", "yes").await.0 >= 1);
    hello_still_serves().await;
}

#[tokio::test]
async fn a_box_that_traps_in_its_channel_hook_is_closed_alone() {
    let (mut faulty, mut healthy, mut publisher) = (Client::connect().await, Client::connect().await, Client::connect().await);
    assert_eq!(faulty.cmd("sub trap now").await, "ok");
    assert_eq!(faulty.cmd("trap-on-channel").await, "ok");
    assert_eq!(healthy.cmd("sub trap now").await, "ok");
    let (_, epoch) = publisher.publish("trap", "boom").await;
    let (code, reason) = closed(&faulty.conn).await.expect("the faulty session closed");
    assert_eq!(code, u64::from(close_code::GUEST_FAULT), "{reason}");
    hello_still_serves().await;
    assert_eq!(healthy.event().await, format!("msg trap 1 {epoch} boom"));
    publisher.publish("trap", "again").await;
    assert_eq!(healthy.event().await, format!("msg trap 2 {epoch} again"));
}

#[tokio::test]
async fn a_slow_box_gets_one_overflow_resync_and_never_holds_up_the_topic() {
    let (mut slow, mut fast, mut publisher) = (Client::connect().await, Client::connect().await, Client::connect().await);
    assert_eq!(slow.cmd("slow-on-channel 30").await, "ok");
    assert_eq!(slow.cmd("sub flood now").await, "ok");
    assert_eq!(fast.cmd("sub flood now").await, "ok");
    let total = (QUEUE * 6) as u64;
    let started = std::time::Instant::now();
    // Each publication waits for the fast box to pass it on (so the fast
    // box keeps up however loaded the machine), never for the slow one.
    for i in 1..=total {
        publisher.publish("flood", &i.to_string()).await;
        let event = fast.event().await;
        assert!(event.starts_with(&format!("msg flood {i} ")), "{event}");
    }
    let publishing = started.elapsed();
    hello_still_serves().await;
    // The slow box: what fit in its queue, one resync for the rest, then live again.
    let mut last = 0;
    let mut resyncs = 0;
    while last < total {
        let event = slow.event().await;
        let words: Vec<&str> = event.split(' ').collect();
        let offset: u64 = words[2].parse().unwrap();
        assert!(offset > last, "offsets only go forward: {event} after {last}");
        if words[0] == "resync" {
            assert_eq!(words[4], "overflow");
            resyncs += 1;
        } else {
            assert_eq!(offset, last + 1, "no silent gap: {event} after {last}");
        }
        last = offset;
    }
    assert!(resyncs >= 1, "the slow box overflowed (publishing took {publishing:?})");
    assert!(publishing < Duration::from_secs(5), "publishers did not wait for the slow box ({publishing:?})");
    assert!(node().metric("toil_channel_resync_total{domain=\"relay\",reason=\"overflow\"}").await >= 1.0);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_stalls_only_itself() {
    let mut stuck = Client::connect_with_window(Some(16 << 10)).await;
    assert_eq!(stuck.cmd("sub firehose now").await, "ok");
    let mut publisher = Client::connect().await;
    let text = "y".repeat(900);
    // The stuck client reads nothing more: its box's writes stall until the
    // node closes its session, while the publisher goes on.
    for _ in 0..300 {
        publisher.publish("firehose", &text).await;
    }
    let (code, reason) = closed(&stuck.conn).await.expect("the stuck session closed");
    assert_eq!(code, u64::from(close_code::CLIENT_TOO_SLOW), "{reason}");
    hello_still_serves().await;
    assert!(publisher.publish("firehose", "done").await.0 > 300);
}
