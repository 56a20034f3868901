//! examples/echo: the L2/L3 stream tier, after the toiljs Echo. The box is
//! resident, so `count` persists across the frames of one connection; each
//! frame is echoed back prefixed with that count, the way it came: on the
//! same stream (the long one, or a fresh stream per request) or as a
//! datagram. When the client finishes a stream, the box finishes its side
//! too, so a request on a stream of its own gets its answer and then the
//! stream's end. A small HTTP surface serves the page that opens the
//! stream from a browser.

use toil::prelude::*;

#[derive(Default)]
struct Echo {
    count: u32,
}

#[toil::stream("echo")]
impl Echo {
    #[connect]
    fn on_connect(&mut self, _cx: &mut Session) {
        self.count = 0;
    }

    #[message]
    fn on_message(&mut self, cx: &mut Session, frame: Frame<'_>) {
        self.count += 1;
        let mut reply = format!("{}:", self.count).into_bytes();
        reply.extend_from_slice(frame.bytes());
        if let Err(e) = cx.reply(&frame, &reply) {
            eprintln!("echo reply dropped: {e:?}");
        }
    }

    /// The client is done with a stream: so is the box.
    #[stream_end]
    fn on_stream_end(&mut self, cx: &mut Session, stream: StreamId, end: StreamEnd) {
        if end == StreamEnd::Finished {
            let _ = cx.finish(stream);
        }
    }

    #[close]
    fn on_close(&mut self, _cx: &mut Session, code: u32, reason: &str) {
        println!("echo closed after {} frames (code {code}, {reason:?})", self.count);
    }

    #[disconnect]
    fn on_disconnect(&mut self, _cx: &mut Session, reason: &str) {
        println!("echo lost after {} frames: {reason}", self.count);
    }
}

struct Page;

#[toil::rest]
impl Page {
    #[get("/")]
    fn index() -> Response {
        Response::html(include_str!("page.html"))
    }
}

toil::export! { rest: [Page], streams: [Echo] }
