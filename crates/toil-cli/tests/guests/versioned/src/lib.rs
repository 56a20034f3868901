//! Test guest for the deploy tests and benchmark: every tier says which
//! version it is. The tests copy the crate and change `LABEL` to make a new
//! version (as a developer editing the source would).

use toil::prelude::*;

const LABEL: &str = "A";

struct Api;

#[toil::rest]
impl Api {
    #[get("/version")]
    fn version() -> Response {
        Response::text(LABEL)
    }
}

/// Counts the frames of its session, so a test can tell its box survived.
#[derive(Default)]
struct Counter {
    count: u32,
}

#[toil::stream("count")]
impl Counter {
    #[message]
    fn on_message(&mut self, cx: &mut Session, frame: Frame<'_>) {
        self.count += 1;
        let reply = format!("{LABEL}:{}", self.count);
        if let Err(e) = cx.reply(&frame, reply.as_bytes()) {
            eprintln!("count reply dropped: {e:?}");
        }
    }

    #[close]
    fn on_close(&mut self, _cx: &mut Session, code: u32, reason: &str) {
        println!("count {LABEL} closed after {} frames (code {code}, {reason:?})", self.count);
    }
}

#[derive(Default)]
struct Beat {
    node: String,
}

#[toil::daemon]
impl Beat {
    #[start]
    fn start(&mut self, info: &StartInfo) {
        self.node = info.node.to_string();
        println!("versioned {LABEL} started node={} fencing={}", info.node, info.fencing);
    }

    #[scheduled("1s")]
    fn beat(&mut self, tick: &Tick) {
        println!("versioned fired fire_time_ms={} label={LABEL} node={}", tick.fire_time_ms, self.node);
    }
}

toil::export! { rest: [Api], streams: [Counter], daemon: Beat }
