//! examples/chat: channels in all three tiers of one crate.
//!
//! - request: `GET /` serves the page; `POST /rooms/:room` publishes the
//!   body to the room's topic `room/<room>` as a message from `http`.
//! - stream: `/chat?room=R&name=N[&offset=O&epoch=E]`, one box per browser
//!   session. It subscribes to the room (resuming after the page's last
//!   position, or from the oldest kept message) and to `ticks`, publishes
//!   each frame the client sends, and forwards every channel event to the
//!   client as one JSON text frame.
//! - daemon: publishes a counter to `ticks` every two seconds.
//!
//! Room messages are JSON `{"from":NAME,"text":TEXT}`. See docs/channels.md.

use std::fmt::{self, Write};
use toil::prelude::*;

/// Longest message text, in bytes (the HTTP body or a client frame).
const MAX_TEXT_BYTES: usize = 2048;
/// Longest display name, in characters; longer ones are cut.
const MAX_NAME_CHARS: usize = 32;
/// The topic the daemon counts on.
const TICKS: &str = "ticks";

/// Close codes of this app (the host keeps 0x1000..=0x10ff).
const CLOSE_BAD_REQUEST: u32 = 4000;
const CLOSE_NO_CHANNELS: u32 = 4001;

/// The topic of a room: `room/<room>`, where a room name is 1 to 64 ASCII
/// letters, digits, `-` or `_`.
fn room_topic(room: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&room.len()) && room.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!("bad room name {room:?}: use 1 to 64 letters, digits, '-' or '_'"));
    }
    Ok(format!("room/{room}"))
}

/// Checks a message's text.
fn check_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("the message is empty".into());
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!("the message is {} bytes; at most {MAX_TEXT_BYTES} are allowed", text.len()));
    }
    Ok(())
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A room message: `{"from":FROM,"text":TEXT}`.
fn chat_message(from: &str, text: &str) -> String {
    let mut out = String::from("{\"from\":");
    push_json_string(&mut out, from);
    out.push_str(",\"text\":");
    push_json_string(&mut out, text);
    out.push('}');
    out
}

/// What the box tells its client about a channel event.
fn event_json(event: &ChannelEvent<'_>) -> String {
    let mut out = String::new();
    let (kind, topic, offset, epoch) = match event {
        ChannelEvent::Message { topic, offset, epoch, .. } => ("message", topic, offset, epoch),
        ChannelEvent::Resync { topic, offset, epoch, .. } => ("resync", topic, offset, epoch),
    };
    let _ = write!(out, "{{\"type\":\"{kind}\",\"topic\":");
    push_json_string(&mut out, topic);
    let _ = write!(out, ",\"offset\":{offset},\"epoch\":");
    push_json_string(&mut out, epoch);
    match event {
        ChannelEvent::Message { bytes, .. } => {
            out.push_str(",\"data\":");
            push_json_string(&mut out, &String::from_utf8_lossy(bytes));
        }
        ChannelEvent::Resync { reason, .. } => {
            out.push_str(",\"reason\":");
            push_json_string(&mut out, reason);
        }
    }
    out.push('}');
    out
}

/// `{"type":"error","text":TEXT}`: a problem the client should show.
fn error_json(text: &str) -> String {
    let mut out = String::from("{\"type\":\"error\",\"text\":");
    push_json_string(&mut out, text);
    out.push('}');
    out
}

// ------------------------------------------------------------ request tier

struct Api;

#[toil::request]
impl Api {
    #[get("/")]
    fn index() -> Response {
        Response::html(include_str!("page.html"))
    }

    /// `curl -d 'hello' http://chat.localhost:8080/rooms/lobby`
    #[post("/rooms/:room")]
    fn post(req: &Request) -> Response {
        let topic = match room_topic(req.param("room").unwrap_or("")) {
            Ok(topic) => topic,
            Err(e) => return plain(400, e),
        };
        let Ok(text) = req.text() else {
            return plain(400, "the body must be UTF-8 text".into());
        };
        if let Err(e) = check_text(text) {
            return plain(400, e);
        }
        match toil::channel::publish(&topic, chat_message("http", text).as_bytes()) {
            Ok(p) => {
                let mut body = format!("{{\"offset\":{},\"epoch\":", p.offset);
                push_json_string(&mut body, &p.epoch);
                body.push('}');
                Response::new(200).with_header("content-type", "application/json").with_body(body)
            }
            Err(e @ (ChannelError::Unavailable | ChannelError::Disabled | ChannelError::TooManyTopics)) => plain(503, e.to_string()),
            Err(e @ ChannelError::TooLarge) => plain(413, e.to_string()),
            Err(e @ ChannelError::BadTopic) => plain(400, e.to_string()),
            Err(e) => plain(500, e.to_string()),
        }
    }
}

fn plain(status: u16, text: String) -> Response {
    Response::text(text + "\n").with_status(status)
}

// ------------------------------------------------------------- stream tier

/// What went wrong in a stream hook; the SDK logs it and the session goes on
/// (unless the hook closed it).
#[derive(Debug)]
enum ChatError {
    BadRequest(String),
    Channel(ChannelError),
    Send(SendError),
}

impl fmt::Display for ChatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatError::BadRequest(e) => f.write_str(e),
            ChatError::Channel(e) => write!(f, "channel: {e}"),
            ChatError::Send(e) => write!(f, "send: {e}"),
        }
    }
}

impl From<ChannelError> for ChatError {
    fn from(e: ChannelError) -> Self {
        ChatError::Channel(e)
    }
}

impl From<SendError> for ChatError {
    fn from(e: SendError) -> Self {
        ChatError::Send(e)
    }
}

/// The query parameters of `/chat`.
struct Join {
    room: String,
    name: String,
    since: Since,
}

impl Join {
    fn parse(query: &str) -> Join {
        let (mut room, mut name, mut offset, mut epoch) = (None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = toil::abi::route::percent_decode(&v.replace('+', " "));
            match k {
                "room" => room = Some(v),
                "name" => name = Some(v),
                "offset" => offset = v.parse::<u64>().ok(),
                "epoch" => epoch = Some(v).filter(|e| !e.is_empty()),
                _ => {}
            }
        }
        let name: String = name.as_deref().map(str::trim).unwrap_or("").chars().take(MAX_NAME_CHARS).collect();
        let since = match (offset, epoch) {
            (Some(offset), Some(epoch)) => Since::After(Position { offset, epoch }),
            _ => Since::Oldest,
        };
        Join {
            room: room.filter(|r| !r.is_empty()).unwrap_or_else(|| "lobby".into()),
            name: if name.is_empty() { "guest".into() } else { name },
            since,
        }
    }
}

#[derive(Default)]
struct Chat {
    /// `room/<room>`.
    topic: String,
    name: String,
}

#[toil::stream("chat")]
impl Chat {
    #[connect]
    fn connect(&mut self, cx: &mut Session) -> Result<(), ChatError> {
        let join = Join::parse(cx.query());
        self.topic = match room_topic(&join.room) {
            Ok(topic) => topic,
            Err(e) => {
                cx.close(CLOSE_BAD_REQUEST, &e);
                return Err(ChatError::BadRequest(e));
            }
        };
        self.name = join.name;
        let subscribed = cx.subscribe(&self.topic, join.since).and_then(|()| cx.subscribe(TICKS, Since::Now));
        if let Err(e) = subscribed {
            cx.close(CLOSE_NO_CHANNELS, &e.to_string());
            return Err(e.into());
        }
        println!("{} joined {}", self.name, self.topic);
        Ok(())
    }

    /// Each text frame is a message to the room. The box receives it back
    /// through its subscription, like everyone else in the room.
    #[message]
    fn message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), ChatError> {
        if frame.bytes().is_empty() {
            return Ok(()); // the page's first frame, which opens its stream
        }
        let checked = match frame.text() {
            Some(text) => check_text(text).map(|()| text),
            None => Err("messages are UTF-8 text".into()),
        };
        let text = match checked {
            Ok(text) => text,
            Err(e) => {
                cx.send(error_json(&e).as_bytes())?;
                return Err(ChatError::BadRequest(e));
            }
        };
        if let Err(e) = cx.publish(&self.topic, chat_message(&self.name, text).as_bytes()) {
            cx.send(error_json(&format!("not sent: {e}")).as_bytes())?;
            return Err(e.into());
        }
        Ok(())
    }

    /// One text frame per event, in the order the host delivers them (per
    /// topic: offset order, each once, so the page can check for gaps).
    #[channel]
    fn channel(&mut self, cx: &mut Session, event: ChannelEvent<'_>) -> Result<(), ChatError> {
        cx.send(event_json(&event).as_bytes())?;
        Ok(())
    }

    #[close]
    fn close(&mut self, code: u32, reason: &str) {
        println!("{} left {} (code {code}, {reason:?})", self.name, self.topic);
    }

    #[disconnect]
    fn disconnect(&mut self, reason: &str) {
        println!("{} lost from {}: {reason}", self.name, self.topic);
    }
}

// ------------------------------------------------------------- daemon tier

/// Publishes a counter to `ticks`. The count restarts when the daemon box
/// does (a new owner, a redeploy).
#[derive(Default)]
struct Ticker {
    count: u64,
}

#[toil::daemon]
impl Ticker {
    #[start]
    fn start(&mut self, info: &StartInfo) {
        println!("chat ticker started on node {} (fencing {})", info.node, info.fencing);
    }

    #[scheduled("2s")]
    fn tick(&mut self) -> Result<(), ChannelError> {
        self.count += 1;
        toil::channel::publish(TICKS, format!("{{\"tick\":{}}}", self.count).as_bytes())?;
        Ok(())
    }
}

toil::export! { request: [Api], stream: [Chat], daemon: Ticker }

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(chat_message("a\"b", "x\\y\n\u{1}é"), r#"{"from":"a\"b","text":"x\\y\n\u0001é"}"#);
        let ev = ChannelEvent::Message { topic: "room/lobby", offset: 3, epoch: "e1", bytes: br#"{"tick":1}"# };
        assert_eq!(event_json(&ev), r#"{"type":"message","topic":"room/lobby","offset":3,"epoch":"e1","data":"{\"tick\":1}"}"#);
        let ev = ChannelEvent::Resync { topic: "ticks", offset: 9, epoch: "e2", reason: "overflow" };
        assert_eq!(event_json(&ev), r#"{"type":"resync","topic":"ticks","offset":9,"epoch":"e2","reason":"overflow"}"#);
    }

    #[test]
    fn rooms_and_queries() {
        assert_eq!(room_topic("lobby").unwrap(), "room/lobby");
        assert!(room_topic("").is_err() && room_topic("a/b").is_err() && room_topic(&"a".repeat(65)).is_err());
        let j = Join::parse("room=dev&name=Ada+L%C3%B6&offset=7&epoch=abc");
        assert_eq!((j.room.as_str(), j.name.as_str()), ("dev", "Ada Lö"));
        assert_eq!(j.since, Since::After(Position { offset: 7, epoch: "abc".into() }));
        let j = Join::parse("offset=7");
        assert_eq!((j.room.as_str(), j.name.as_str(), j.since), ("lobby", "guest", Since::Oldest));
    }
}
