//! End to end: the streams of one WebTransport session. A wtransport client
//! against a real `toil dev` and the `chaos` box of the misbehaving test
//! guest: requests on a fresh stream each, streams the box opens, stream
//! ends both ways, and the errors a box gets for streams it cannot write.

mod common;

use std::time::Duration;

use common::*;

const CHAOS: &str = "misbehave.localhost";
const WAIT: Duration = Duration::from_secs(10);

/// A chaos session with its primary stream open (the box's greeting read).
async fn chaos(conn: &wtransport::Connection) -> Frames {
    let mut primary = Frames::open(conn).await;
    assert!(primary.recv_text().await.starts_with("hello session "));
    primary
}

async fn next(frames: &mut Frames) -> String {
    tokio::time::timeout(WAIT, frames.recv_text()).await.expect("a frame within 10 s")
}

/// One request on a fresh bidirectional stream: a frame, the client's
/// finish, then every frame until the box finishes its side.
async fn call(conn: &wtransport::Connection, request: &str) -> Result<Vec<String>, String> {
    let mut stream = Frames::open(conn).await;
    stream.send(request.as_bytes()).await;
    stream.send.finish().await.map_err(|e| e.to_string())?;
    tokio::time::timeout(WAIT, stream.reader.read_to_end()).await.map_err(|_| format!("{request}: no end within 10 s"))?
}

/// Reads one stream the box opened, to its end.
async fn accept_uni(conn: &wtransport::Connection) -> Result<Vec<String>, String> {
    let recv = tokio::time::timeout(WAIT, conn.accept_uni()).await.map_err(|_| "no stream from the box".to_string())?.map_err(|e| e.to_string())?;
    FrameReader::new(recv).read_to_end().await
}

#[tokio::test]
async fn requests_on_streams_of_their_own_are_answered_on_those_streams() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut primary = chaos(&conn).await;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { call(&conn, &format!("rpc {i}")).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), Ok(vec![format!("re:{i}")]), "call {i}: its reply, then the stream's end");
    }
    // Nothing leaked onto the primary stream: the next frame there is this one's echo.
    primary.send(b"ping").await;
    assert_eq!(next(&mut primary).await, "11:ping");
}

#[tokio::test]
async fn streams_the_box_opens_reach_the_client() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut primary = chaos(&conn).await;
    primary.send(b"push 3 news").await;
    assert!(next(&mut primary).await.starts_with("pushed "), "three ids");
    let mut pushed = Vec::new();
    for _ in 0..3 {
        pushed.extend(accept_uni(&conn).await.unwrap());
    }
    pushed.sort();
    assert_eq!(pushed, ["news 0", "news 1", "news 2"]);

    // A bidirectional stream of the box's: the client writes back on it and
    // the answer comes on the same stream.
    primary.send(b"open-bidi").await;
    let opened = next(&mut primary).await;
    let id = opened.strip_prefix("opened ").expect("opened <id>");
    let mut theirs = tokio::time::timeout(WAIT, Frames::accept(&conn)).await.unwrap();
    assert_eq!(next(&mut theirs).await, format!("hello {id}"));
    theirs.send(b"back").await;
    assert_eq!(next(&mut theirs).await, "3:back", "the reply comes on the box's own stream");
}

#[tokio::test]
async fn the_box_hears_how_the_client_ends_each_stream() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut primary = chaos(&conn).await;
    primary.send(b"watch").await;
    assert_eq!(next(&mut primary).await, "watching");

    // Finished: stream 2 (the primary stream is 1).
    let mut done = Frames::open(&conn).await;
    done.send(b"a").await;
    assert_eq!(next(&mut done).await, "2:a");
    done.send.finish().await.unwrap();
    assert_eq!(next(&mut primary).await, "end 2 Finished");

    // Reset with a code, mid-frame: the partial frame is dropped.
    let mut reset = Frames::open(&conn).await;
    reset.send(b"b").await;
    assert_eq!(next(&mut reset).await, "3:b");
    reset.send.write_all(&[0, 0, 0, 9, b'x']).await.unwrap();
    reset.send.reset(wtransport::VarInt::from_u32(7)).unwrap();
    assert_eq!(next(&mut primary).await, "end 3 Reset(7)");

    // Stopped: the client will not read the box's side any more. The box
    // hears it when it next writes there, and later writes are refused.
    let mut stopped = Frames::open(&conn).await;
    stopped.send(b"c").await;
    assert_eq!(next(&mut stopped).await, "4:c");
    let Frames { send: _keep_open, reader } = stopped;
    reader.recv.stop(wtransport::VarInt::from_u32(9));
    // The STOP_SENDING frame travels; the host learns of it on a write.
    // Each write is answered "ok" (queued) until the box hears the stop,
    // which it reports right after that write's answer.
    let mut heard = None;
    for _ in 0..50 {
        primary.send(b"write 4 anyone there").await;
        assert_eq!(next(&mut primary).await, "ok");
        tokio::time::sleep(Duration::from_millis(20)).await;
        primary.send(b"watch").await;
        match next(&mut primary).await.as_str() {
            "watching" => continue,
            end => {
                heard = Some(end.to_string());
                assert_eq!(next(&mut primary).await, "watching");
                break;
            }
        }
    }
    assert_eq!(heard.as_deref(), Some("end 4 Stopped(9)"));
    primary.send(b"write 4 again").await;
    assert_eq!(next(&mut primary).await, "Finished");
}

#[tokio::test]
async fn writes_the_box_cannot_make_are_refused_with_a_clear_error() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut primary = chaos(&conn).await;
    // A stream that was never opened.
    primary.send(b"write 999 x").await;
    assert_eq!(next(&mut primary).await, "UnknownStream");
    // A stream the box finished itself: the reply arrives, the late write is refused.
    let mut s = Frames::open(&conn).await;
    s.send(b"reply-finish-write").await;
    assert_eq!(tokio::time::timeout(WAIT, s.reader.read_to_end()).await.unwrap(), Ok(vec!["done".to_string()]));
    assert_eq!(next(&mut primary).await, "late write: Finished");
    // The client's unidirectional stream can only be read.
    let mut uni = conn.open_uni().await.unwrap().await.unwrap();
    write_frame(&mut uni, b"hi").await;
    assert_eq!(next(&mut primary).await, "reply failed: ReceiveOnly");
    primary.send(b"write 3 x").await;
    assert_eq!(next(&mut primary).await, "ReceiveOnly");
    // Finishing twice.
    primary.send(b"finish 2").await;
    assert_eq!(next(&mut primary).await, "Finished");
}

#[tokio::test]
async fn a_box_opens_at_most_its_cap_of_streams_and_ending_them_frees_slots() {
    let conn = wt_connect(CHAOS, "/chaos").await.unwrap();
    let mut primary = chaos(&conn).await;
    primary.send(b"hoard").await;
    assert_eq!(next(&mut primary).await, "hoarded 32: TooManyStreams", "limits.maxBoxStreams defaults to 32");
    primary.send(b"push 1 more").await;
    assert_eq!(next(&mut primary).await, "push failed after 0: TooManyStreams");
    primary.send(b"release").await;
    assert_eq!(next(&mut primary).await, "released");
    primary.send(b"push 2 again").await;
    assert!(next(&mut primary).await.starts_with("pushed "));
    // The session is intact: its greeting box still counts.
    primary.send(b"ping").await;
    assert_eq!(next(&mut primary).await, "5:ping");
}

/// Everything above again after the client's UDP port changed (a NAT
/// rebinding): the streams stay with the same box.
#[tokio::test]
async fn streams_keep_working_after_the_client_port_changes() {
    let relay = UdpRelay::start(server().http).await;
    let conn = wt_endpoint(relay.addr).connect(format!("https://{CHAOS}:{}/chaos", relay.addr.port())).await.unwrap();
    let mut primary = chaos(&conn).await;
    assert_eq!(call(&conn, "rpc before").await, Ok(vec!["re:before".to_string()]));
    relay.rebind().await;
    assert_eq!(call(&conn, "rpc after").await, Ok(vec!["re:after".to_string()]));
    primary.send(b"push 1 moved").await;
    assert!(next(&mut primary).await.starts_with("pushed "));
    assert_eq!(accept_uni(&conn).await, Ok(vec!["moved 0".to_string()]));
    primary.send(b"ping").await;
    assert_eq!(next(&mut primary).await, "4:ping", "the same box counts on");
}
