//! End to end: the L2/L3 stream tier over real WebTransport (a wtransport
//! client trusting the dev certificate by hash, as browsers do) against a
//! real `toil dev` serving `examples/echo` and the misbehaving test guest.

mod common;

use std::time::Duration;

use common::*;
use toil_abi::stream::close_code;

const ECHO: &str = "echo.localhost";
const CHAOS: &str = "misbehave.localhost";

#[tokio::test]
async fn echo_counts_frames_on_streams_and_datagrams_and_closes() {
    let conn = wt_connect(ECHO, "/echo").await.expect("session to /echo");
    let mut frames = Frames::open(&conn).await;
    for (i, word) in ["alpha", "beta", "gamma"].iter().enumerate() {
        frames.send(word.as_bytes()).await;
        assert_eq!(frames.recv_text().await, format!("{}:{word}", i + 1));
    }
    // Datagrams reach the same box: the count goes on.
    conn.send_datagram(b"delta").unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.receive_datagram()).await.unwrap().unwrap();
    assert_eq!(&reply.payload()[..], b"4:delta");
    // Binary bytes travel untouched.
    frames.send(&[0, 159, 146, 150, 255]).await;
    assert_eq!(frames.recv().await.unwrap(), [&b"5:"[..], &[0, 159, 146, 150, 255]].concat());

    conn.close(wtransport::VarInt::from_u32(0), b"done here");
    assert!(
        log_contains("echo closed after 5 frames (code 0, \"done here\")").await,
        "the close hook ran with the client's code and reason:\n{}",
        server().log()
    );
}

#[tokio::test]
async fn every_connection_has_its_own_box() {
    let a = wt_connect(ECHO, "/echo").await.unwrap();
    let b = wt_connect(ECHO, "/echo").await.unwrap();
    let (mut fa, mut fb) = (Frames::open(&a).await, Frames::open(&b).await);
    fa.send(b"a").await;
    fa.send(b"a").await;
    assert_eq!(fa.recv_text().await, "1:a");
    assert_eq!(fa.recv_text().await, "2:a");
    fb.send(b"b").await;
    assert_eq!(fb.recv_text().await, "1:b", "a second connection starts from a fresh box");
}

#[tokio::test]
async fn unknown_stream_names_are_refused_before_a_box_exists() {
    for (host, path) in [(ECHO, "/nope"), ("jobs.localhost", "/echo"), (ECHO, "/")] {
        match wt_connect(host, path).await {
            Err(wtransport::error::ConnectingError::SessionRejected) => {}
            other => panic!("{host}{path}: expected a rejected session (404), got {other:?}"),
        }
    }
    assert_eq!(metric("toil_instances_created_total{domain=\"jobs\",tier=\"stream\"}").await, 0.0);
    // The refusal left the node serving.
    let conn = wt_connect(ECHO, "/echo").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.send(b"still").await;
    assert_eq!(f.recv_text().await, "1:still");
}

#[tokio::test]
async fn frames_sent_from_connect_wait_for_the_clients_stream() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut f = Frames::open(&conn).await;
    assert!(f.recv_text().await.starts_with("hello session "));
    f.send(b"x").await;
    assert_eq!(f.recv_text().await, "1:x");
    f.send(b"datagram").await;
    let d = tokio::time::timeout(Duration::from_secs(5), conn.receive_datagram()).await.unwrap().unwrap();
    assert_eq!(&d.payload()[..], b"datagram 2");
}

#[tokio::test]
async fn the_guest_closes_with_its_own_code_and_reason() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    f.send(b"close 4001 bye now").await;
    assert_eq!(closed(&conn).await, Ok((4001, "bye now".into())));
    assert!(log_contains("chaos closed after 1 frames: code 4001 reason \"bye now\"").await);
}

/// A trap, a runaway loop and a memory bomb each close only their own
/// session, with GUEST_FAULT and the cause; the node keeps serving.
#[tokio::test]
async fn guest_faults_close_only_that_session() {
    let bystander = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut b = Frames::open(&bystander).await;
    b.recv().await.unwrap();
    for (command, cause) in [("trap", "trapped"), ("loop", "deadline"), ("bomb", "memory limit")] {
        let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
        let mut f = Frames::open(&conn).await;
        f.recv().await.unwrap();
        f.send(command.as_bytes()).await;
        let (code, reason) = closed(&conn).await.unwrap_or_else(|e| panic!("{command}: {e}"));
        assert_eq!(code, close_code::GUEST_FAULT as u64, "{command}: {reason}");
        assert!(reason.contains(cause), "{command}: reason {reason:?} names the cause");
    }
    // The bystander's session and box are untouched.
    b.send(b"still here").await;
    assert_eq!(b.recv_text().await, "1:still here");
    let fresh = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut f = Frames::open(&fresh).await;
    f.recv().await.unwrap();
    f.send(b"ok").await;
    assert_eq!(f.recv_text().await, "1:ok");
    assert!(metric("toil_guest_faults_total{domain=\"misbehave\",tier=\"stream\",kind=\"trap\"}").await >= 1.0);
    assert!(metric("toil_guest_faults_total{domain=\"misbehave\",tier=\"stream\",kind=\"deadline\"}").await >= 1.0);
    assert!(metric("toil_guest_faults_total{domain=\"misbehave\",tier=\"stream\",kind=\"memory\"}").await >= 1.0);
}

#[tokio::test]
async fn oversized_and_truncated_frames_close_the_session() {
    let conn = wt_connect(ECHO, "/echo").await.unwrap();
    let mut f = Frames::open(&conn).await;
    // A frame at the limit is delivered; the echo of it (with its count
    // prefix) would exceed the limit, so the guest's send fails TooLarge.
    f.send(&vec![b'x'; MAX_FRAME_BYTES]).await;
    f.send(b"small").await;
    assert_eq!(f.recv_text().await, "2:small");
    assert!(log_contains("echo reply dropped: TooLarge").await);
    f.send(&vec![b'x'; MAX_FRAME_BYTES + 1]).await;
    let (code, reason) = closed(&conn).await.unwrap();
    assert_eq!(code, close_code::FRAME_TOO_LARGE as u64);
    assert_eq!(reason, format!("frame of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit", MAX_FRAME_BYTES + 1));

    let conn = wt_connect(ECHO, "/echo").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.send.write_all(&[0, 0, 0, 9, b'a', b'b']).await.unwrap();
    f.send.finish().await.unwrap();
    let (code, reason) = closed(&conn).await.unwrap();
    assert_eq!(code, close_code::MALFORMED_FRAME as u64);
    assert_eq!(reason, "stream ended 7 bytes short of a frame");
}

/// The outbox caps one event's output; what fits is delivered in order.
#[tokio::test]
async fn outbound_frames_are_bounded_per_event() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    // 1 MiB per event: 52 frames of 20 000 bytes fit, 48 do not.
    f.send(b"burst 100 20000").await;
    for i in 0..52 {
        assert_eq!(f.recv().await.unwrap().len(), 20000, "frame {i}");
    }
    assert_eq!(f.recv_text().await, "burst sent=52 full=48 large=0");
    f.send(b"burst 1 70000").await;
    assert_eq!(f.recv_text().await, "burst sent=0 full=0 large=1");
}

/// Stream frames a box sends before the client has a stream to receive them
/// wait, but only one event's worth: the rest is dropped, not buffered.
#[tokio::test]
async fn frames_held_for_a_missing_stream_are_capped() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    conn.send_datagram(b"burst 60 20000").unwrap(); // 52 fit the event's 1 MiB
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.send_datagram(b"burst 60 20000").unwrap(); // nothing more fits the hold
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut f = Frames::open(&conn).await;
    assert!(f.recv_text().await.starts_with("hello session "));
    for _ in 0..52 {
        assert_eq!(f.recv().await.unwrap().len(), 20000);
    }
    assert_eq!(f.recv_text().await, "burst sent=52 full=8 large=0");
    // The second burst's 20 000-byte frames did not fit what was left of the
    // hold and were dropped; its short status line did fit.
    assert_eq!(f.recv_text().await, "burst sent=52 full=8 large=0");
    f.send(b"x").await;
    assert_eq!(f.recv_text().await, "3:x");
    assert!(metric("toil_stream_frames_dropped_total{domain=\"misbehave\"}").await >= 52.0);
}

/// A client that stops reading stalls only its own session, which is closed
/// as too slow; the host does not buffer without bound.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_too_slow() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut f = Frames::open(&conn).await;
    f.recv().await.unwrap();
    for _ in 0..12 {
        f.send(b"burst 50 20000").await; // 1 MB each, never read
    }
    let (code, reason) = closed(&conn).await.unwrap();
    assert_eq!(code, close_code::CLIENT_TOO_SLOW as u64, "{reason}");
    assert!(reason.contains("did not read"), "{reason}");
}

/// A client that vanishes (no close, no packets) is lost at the idle
/// timeout and its box gets `disconnect`.
#[tokio::test]
async fn a_vanished_client_disconnects_its_box() {
    let relay = UdpRelay::start(server().http).await;
    let conn = wt_endpoint(relay.addr).connect(format!("https://{CHAOS}:{}/chaos", relay.addr.port())).await.unwrap();
    let mut f = Frames::open(&conn).await;
    let hello = f.recv_text().await;
    let session: u64 = hello.strip_prefix("hello session ").unwrap().parse().unwrap();
    f.send(b"one").await;
    f.recv().await.unwrap();
    relay.cut();
    tokio::time::sleep(Duration::from_millis(IDLE_TIMEOUT_MS)).await;
    assert!(log_contains("chaos disconnected after 1 frames: timed out").await, "session {session} was disconnected:\n{}", server().log());
}
