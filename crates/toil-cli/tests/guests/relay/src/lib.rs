//! The channel tests' guest. Every tier publishes; a stream box takes
//! commands as text frames and reports every channel event as one line.
//!
//! Frames in: `pub TOPIC TEXT`, `sub TOPIC now|oldest|OFFSET:EPOCH`,
//! `unsub TOPIC`, `trap-on-channel`, `slow-on-channel MS`.
//! Frames out: `pub-ok OFFSET EPOCH`, `ok`, `err MESSAGE`,
//! `msg TOPIC OFFSET EPOCH TEXT`, `resync TOPIC OFFSET EPOCH REASON`.
//! HTTP: `POST /pub/:topic` publishes the body (answers `OFFSET EPOCH`).
//! The daemon publishes `tick N` to `ticks` every second.

use toil::prelude::*;

#[derive(Default)]
struct Relay {
    trap_on_channel: bool,
    slow_ms: u64,
}

fn since(arg: &str) -> Since {
    match arg {
        "now" => Since::Now,
        "oldest" => Since::Oldest,
        position => {
            let (offset, epoch) = position.split_once(':').unwrap_or((position, ""));
            Since::After(Position { offset: offset.parse().unwrap_or(0), epoch: epoch.into() })
        }
    }
}

#[toil::stream("relay")]
impl Relay {
    #[message]
    fn message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), SendError> {
        let text = frame.text().unwrap_or("");
        let mut words = text.splitn(3, ' ');
        let reply = match (words.next(), words.next(), words.next()) {
            (Some("pub"), Some(topic), body) => match cx.publish(topic, body.unwrap_or("").as_bytes()) {
                Ok(p) => format!("pub-ok {} {}", p.offset, p.epoch),
                Err(e) => format!("err {e}"),
            },
            (Some("pub-size"), Some(topic), Some(n)) => match cx.publish(topic, &vec![b'x'; n.parse().unwrap_or(0)]) {
                Ok(p) => format!("pub-ok {} {}", p.offset, p.epoch),
                Err(e) => format!("err {e}"),
            },
            (Some("sub"), Some(topic), Some(from)) => match cx.subscribe(topic, since(from)) {
                Ok(()) => "ok".into(),
                Err(e) => format!("err {e}"),
            },
            (Some("unsub"), Some(topic), None) => format!("ok {}", cx.unsubscribe(topic)),
            (Some("trap-on-channel"), None, None) => {
                self.trap_on_channel = true;
                "ok".into()
            }
            (Some("slow-on-channel"), Some(ms), None) => {
                self.slow_ms = ms.parse().unwrap_or(0);
                "ok".into()
            }
            _ => format!("err unknown command {text:?}"),
        };
        cx.send(reply.as_bytes())
    }

    #[channel]
    fn channel(&mut self, cx: &mut Session, event: ChannelEvent<'_>) -> Result<(), SendError> {
        if self.trap_on_channel {
            panic!("relay: told to trap in the channel hook");
        }
        if self.slow_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(self.slow_ms));
        }
        let line = match event {
            ChannelEvent::Message { topic, offset, epoch, bytes } => format!("msg {topic} {offset} {epoch} {}", String::from_utf8_lossy(bytes)),
            ChannelEvent::Resync { topic, offset, epoch, reason } => format!("resync {topic} {offset} {epoch} {reason}"),
        };
        cx.send(line.as_bytes())
    }
}

struct Api;

#[toil::request]
impl Api {
    #[post("/pub/:topic")]
    fn publish(req: &Request) -> Response {
        match toil::channel::publish(req.param("topic").unwrap_or(""), req.body()) {
            Ok(p) => Response::text(format!("{} {}", p.offset, p.epoch)),
            Err(e) => Response::text(format!("{e}")).with_status(if e == ChannelError::Unavailable { 503 } else { 400 }),
        }
    }
}

#[derive(Default)]
struct Ticker {
    n: u64,
}

#[toil::daemon]
impl Ticker {
    #[scheduled("1s")]
    fn tick(&mut self) -> Result<(), ChannelError> {
        self.n += 1;
        toil::channel::publish("ticks", format!("tick {}", self.n).as_bytes()).map(drop)
    }
}

toil::export! { request: [Api], stream: [Relay], daemon: [Ticker] }
