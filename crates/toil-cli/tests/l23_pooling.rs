//! WebTransport session pooling: several sessions on one QUIC connection,
//! each with its own box, all on the connection's worker. A pooling client
//! (h3's client for the CONNECTs, raw QUIC streams for the sessions) against
//! a real `toil dev` that allows two sessions per connection.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::pooled::{PooledSession, PoolingClient};
use common::*;

const CHAOS: &str = "misbehave.localhost";
const ECHO: &str = "echo.localhost";
const WAIT: Duration = Duration::from_secs(10);

/// A `toil dev` whose connections carry at most two sessions.
fn pooling_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_server("pooling", serde_json::json!({"limits": {"maxSessionsPerConnection": 2, "idleTimeoutMs": 5000}})))
}

/// One frame on a fresh stream of `session`, and the first answer.
async fn ask(session: &PooledSession, text: &str) -> String {
    let mut stream = session.open_bi().await;
    stream.send(text.as_bytes()).await;
    tokio::time::timeout(WAIT, stream.recv_text()).await.expect("an answer within 10 s").expect("an answer")
}

#[tokio::test]
async fn pooled_sessions_have_their_own_boxes_and_end_on_their_own() {
    let s = pooling_server();
    let mut client = PoolingClient::connect(&h3_endpoint(&s.cert), s.http).await;
    let mut chaos = client.session(CHAOS, "/chaos").await.expect("first session");
    let echo = client.session(ECHO, "/echo").await.expect("a second session on the same connection");
    assert_ne!(chaos.id, echo.id);
    assert_eq!(s.metric("toil_stream_sessions_pooled_total{domain=\"echo\"}").await, 1.0, "counted as pooled");

    // Independent state: each box counts its own frames.
    let mut primary = chaos.open_bi().await;
    assert!(primary.recv_text().await.unwrap().starts_with("hello session "));
    primary.send(b"one").await;
    assert_eq!(primary.recv_text().await.unwrap(), "1:one");
    assert_eq!(ask(&echo, "a").await, "1:a");
    primary.send(b"two").await;
    assert_eq!(primary.recv_text().await.unwrap(), "2:two");
    assert_eq!(ask(&echo, "b").await, "2:b");
    // Datagrams reach the right session, and come back naming it.
    echo.send_datagram(b"dg");
    let (id, payload) = tokio::time::timeout(WAIT, client.recv_datagram()).await.unwrap();
    assert_eq!((id, payload.as_slice()), (echo.id, &b"3:dg"[..]));

    // A third session is over the connection's cap.
    assert_eq!(client.session(CHAOS, "/chaos").await.err(), Some(429));

    // The box closes its session: the client hears it on that session only.
    primary.send(b"close 4000 enough").await;
    assert_eq!(tokio::time::timeout(WAIT, chaos.closed()).await.unwrap(), Some((4000, "enough".to_string())));
    assert_eq!(ask(&echo, "c").await, "4:c", "the sibling session goes on");

    // Its slot is free again; the client closes that new session itself.
    let mut again = client.session(CHAOS, "/chaos").await.expect("a slot freed by the closed session");
    let mut p = again.open_bi().await;
    assert!(p.recv_text().await.unwrap().starts_with("hello session "));
    again.close(4001, "done").await;
    let closed = async {
        loop {
            if s.log().contains("chaos closed after 0 frames: code 4001 reason \"done\"") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, closed).await.expect("the close hook ran with the client's code");
    assert_eq!(ask(&echo, "d").await, "5:d");
    assert!(client.quic.close_reason().is_none(), "the connection is still open");
}

#[tokio::test]
async fn a_stream_naming_no_open_session_is_refused() {
    let s = pooling_server();
    let mut client = PoolingClient::connect(&h3_endpoint(&s.cert), s.http).await;
    let echo = client.session(ECHO, "/echo").await.unwrap();
    // A bidirectional WebTransport stream for a session ID never opened.
    let (mut send, mut recv) = client.quic.open_bi().await.unwrap();
    send.write_all(&[0x40, 0x41, 0x3c]).await.unwrap(); // signal 0x41, session 60
    send.write_all(&[0, 0, 0, 1, b'x']).await.unwrap();
    let refused = tokio::time::timeout(WAIT, recv.read_chunk(64, true)).await.unwrap();
    assert!(matches!(refused, Err(quinn::ReadError::Reset(code)) if code.into_inner() == 0x3994bd84), "{refused:?}");
    assert_eq!(ask(&echo, "still here").await, "1:still here");
}

async fn pooled_sessions_survive_a_port_change(steering: &str) {
    let s = Box::leak(Box::new(start_server(
        &format!("pooling-{steering}"),
        serde_json::json!({"quic": {"workers": 2, "steering": steering}, "limits": {"maxSessionsPerConnection": 2}}),
    )));
    let relay = UdpRelay::start(s.http).await;
    let mut client = PoolingClient::connect(&h3_endpoint(&s.cert), relay.addr).await;
    let chaos = client.session(CHAOS, "/chaos").await.unwrap();
    let echo = client.session(ECHO, "/echo").await.unwrap();
    let mut primary = chaos.open_bi().await;
    assert!(primary.recv_text().await.unwrap().starts_with("hello session "));
    primary.send(b"before").await;
    assert_eq!(primary.recv_text().await.unwrap(), "1:before");
    assert_eq!(ask(&echo, "before").await, "1:before");
    relay.rebind().await;
    primary.send(b"after").await;
    assert_eq!(primary.recv_text().await.unwrap(), "2:after", "{steering}: the same chaos box");
    assert_eq!(ask(&echo, "after").await, "2:after", "{steering}: the same echo box");
    assert_eq!(ask(&chaos, "rpc fresh").await, "re:fresh", "{steering}: a fresh stream after the move");
}

#[tokio::test]
async fn pooled_sessions_survive_a_port_change_with_bpf_steering() {
    pooled_sessions_survive_a_port_change("bpf").await;
}

#[tokio::test]
async fn pooled_sessions_survive_a_port_change_with_userspace_steering() {
    pooled_sessions_survive_a_port_change("userspace").await;
}
