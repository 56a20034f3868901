//! Connection migration: with several QUIC workers, many concurrent
//! WebTransport sessions each move to a new client UDP port mid-connection,
//! and the same resident box (the same counter) keeps answering, on the
//! long stream, by datagram and on a fresh stream opened after the move. Run in
//! both steering modes, each against its own `toil dev`.
//!
//! The client's port changes the way `Endpoint::rebind` or a NAT rebinding
//! changes it for the server: the relay standing for the client's NAT starts
//! sending from a new socket. (wtransport, the client here, does not expose
//! `rebind`; what the server sees is the same.) Without steering by
//! connection ID, a packet from the new port lands on whichever worker's
//! socket the kernel's address hash picks, which does not know the
//! connection.

mod common;

use std::time::Duration;

use common::*;

const WORKERS: usize = 4;
const CLIENTS: usize = 24;

async fn migrate_many(steering: &str) {
    let server: &'static Server =
        Box::leak(Box::new(start_server(&format!("migration-{steering}"), serde_json::json!({"quic": {"workers": WORKERS, "steering": steering}}))));
    let clients: Vec<_> = (0..CLIENTS).map(|i| tokio::spawn(async move { (i, one_client(server).await) })).collect();
    let mut failures = Vec::new();
    for c in clients {
        let (i, result) = c.await.unwrap();
        if let Err(e) = result {
            failures.push(format!("client {i}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{steering}: {} of {CLIENTS} clients failed:\n{}", failures.len(), failures.join("\n"));

    // The sessions were spread over the workers, so the port changes had
    // somewhere else to go wrong.
    let metrics = server.metrics().await;
    let busy_workers = (0..WORKERS)
        .filter(|w| {
            let sample = format!("toil_stream_sessions_by_worker_total{{worker=\"{w}\"}} ");
            metrics.lines().any(|l| l.starts_with(&sample) && !l.ends_with(" 0"))
        })
        .count();
    assert!(busy_workers >= 2, "{steering}: sessions ran on {busy_workers} worker(s):\n{metrics}");
}

/// One session: three frames, a port change, three more frames and a
/// datagram; the count must run on, and the server must have seen the move.
async fn one_client(server: &Server) -> Result<(), String> {
    let relay = UdpRelay::start(server.http).await;
    let conn = wt_endpoint_for(server, relay.addr)
        .connect(format!("https://echo.localhost:{}/echo", relay.addr.port()))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut frames = Frames::open(&conn).await;
    let expect = |n: usize, word: &str| format!("{n}:{word}");
    for n in 1..=3 {
        frames.send(b"before").await;
        let reply = tokio::time::timeout(Duration::from_secs(5), frames.recv()).await.map_err(|_| format!("frame {n}: no reply"))?;
        let reply = String::from_utf8(reply.ok_or("stream ended before the move")?).unwrap();
        if reply != expect(n, "before") {
            return Err(format!("before the move: {reply:?}"));
        }
    }
    let old = relay.client_side();
    let new = relay.rebind().await;
    for n in 4..=6 {
        frames.send(b"after").await;
        let reply = tokio::time::timeout(Duration::from_secs(5), frames.recv())
            .await
            .map_err(|_| format!("frame {n}: no reply after moving {old} -> {new}"))?
            .ok_or_else(|| format!("frame {n}: stream ended after moving {old} -> {new}"))?;
        let reply = String::from_utf8(reply).unwrap();
        if reply != expect(n, "after") {
            return Err(format!("after the move, a different box answered: {reply:?}"));
        }
    }
    conn.send_datagram(b"dgram").map_err(|e| e.to_string())?;
    let d = tokio::time::timeout(Duration::from_secs(5), conn.receive_datagram())
        .await
        .map_err(|_| "no datagram reply after the move".to_string())?
        .map_err(|e| e.to_string())?;
    if &d.payload()[..] != b"7:dgram" {
        return Err(format!("datagram reply {:?}", String::from_utf8_lossy(&d.payload())));
    }
    // A request on a fresh stream after the move: answered on that stream,
    // which the box then finishes.
    let mut call = Frames::open(&conn).await;
    call.send(b"call").await;
    call.send.finish().await.map_err(|e| format!("finish: {e}"))?;
    let answer =
        tokio::time::timeout(Duration::from_secs(5), call.reader.read_to_end()).await.map_err(|_| "no answer on a fresh stream after the move")??;
    if answer != ["8:call"] {
        return Err(format!("fresh-stream answer {answer:?}"));
    }
    conn.close(wtransport::VarInt::from_u32(0), b"bye");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_box_across_port_changes_with_bpf_steering() {
    migrate_many("bpf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_box_across_port_changes_with_userspace_steering() {
    migrate_many("userspace").await;
}
