//! A client of the `relay` test guest's stream box (channel tests):
//! commands get their reply, channel events are kept in order until asked
//! for. See `tests/guests/relay` for the commands.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::{wt_endpoint_with_window, Frames};

pub const RELAY_HOST: &str = "relay.localhost";

pub struct RelayClient {
    pub conn: wtransport::Connection,
    frames: Frames,
    pub events: VecDeque<String>,
}

impl RelayClient {
    /// A session to `/relay` on the node at `http` (certificate `cert_sha256`),
    /// granting it at most `window` unread bytes if given.
    pub async fn connect(cert_sha256: &str, http: SocketAddr, window: Option<u32>) -> RelayClient {
        RelayClient::connect_on(&wt_endpoint_with_window(cert_sha256, http, window), http).await
    }

    /// A session from an existing client endpoint (many sessions, one socket).
    pub async fn connect_on(endpoint: &wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>, http: SocketAddr) -> RelayClient {
        let url = format!("https://{RELAY_HOST}:{}/relay", http.port());
        let conn = endpoint.connect(url).await.expect("session to /relay");
        let frames = Frames::open(&conn).await;
        RelayClient { conn, frames, events: VecDeque::new() }
    }

    async fn next_frame(&mut self) -> String {
        let frame = tokio::time::timeout(Duration::from_secs(15), self.frames.recv()).await.expect("a frame within 15 s");
        String::from_utf8(frame.expect("the session ended")).unwrap()
    }

    /// Sends a command and returns its reply.
    pub async fn cmd(&mut self, command: &str) -> String {
        self.frames.send(command.as_bytes()).await;
        loop {
            let frame = self.next_frame().await;
            if frame.starts_with("msg ") || frame.starts_with("resync ") {
                self.events.push_back(frame);
            } else {
                return frame;
            }
        }
    }

    /// The next channel event (`msg ...` or `resync ...`).
    pub async fn event(&mut self) -> String {
        match self.events.pop_front() {
            Some(e) => e,
            None => self.next_frame().await,
        }
    }

    /// Publishes; returns the position `(offset, epoch)`.
    pub async fn publish(&mut self, topic: &str, text: &str) -> (u64, String) {
        let reply = self.cmd(&format!("pub {topic} {text}")).await;
        let mut words = reply.split(' ');
        assert_eq!(words.next(), Some("pub-ok"), "{reply}");
        (words.next().unwrap().parse().unwrap(), words.next().unwrap().to_string())
    }
}
