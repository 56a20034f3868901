//! Routes that fail in every way a guest can, for the host's bad-input tests.

use toil::prelude::*;

struct Misbehave;

#[toil::rest]
impl Misbehave {
    #[get("/ok")]
    fn ok() -> &'static str {
        "ok"
    }

    /// A guest panic: the instance traps.
    #[get("/trap")]
    fn trap() -> &'static str {
        panic!("misbehave: deliberate panic")
    }

    /// Never returns: the epoch deadline must interrupt it.
    #[get("/loop")]
    fn spin() -> &'static str {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    /// Allocates until the memory cap stops it.
    #[get("/bomb")]
    fn bomb() -> String {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![7u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    /// A reply larger than the host's response cap.
    #[get("/big")]
    fn big(req: &Request) -> Vec<u8> {
        let mib: usize = req.query("mib").and_then(|v| v.parse().ok()).unwrap_or(4);
        vec![b'x'; mib << 20]
    }

    /// Logs to stdout and stderr.
    #[get("/log")]
    fn log() -> &'static str {
        println!("misbehave says hello on stdout");
        eprintln!("misbehave says hello on stderr");
        "logged"
    }

    /// Blocks in a host call (WASI `poll_oneoff`) instead of computing:
    /// the deadline must cover time spent there too.
    #[get("/sleep")]
    fn sleep(req: &Request) -> &'static str {
        let ms: u64 = req.query("ms").and_then(|v| v.parse().ok()).unwrap_or(5000);
        std::thread::sleep(std::time::Duration::from_millis(ms));
        "slept"
    }

    /// A reply with `n` distinct header names (40,000 would overflow the
    /// host's header map if nothing capped them).
    #[get("/headers")]
    fn headers(req: &Request) -> Response {
        let n: usize = req.query("n").and_then(|v| v.parse().ok()).unwrap_or(40_000);
        (0..n).fold(Response::text("many headers"), |r, i| r.with_header(format!("x-h{i}"), "v"))
    }

    #[post("/size")]
    fn size(req: &Request) -> String {
        req.body().len().to_string()
    }
}

/// A stream box that misbehaves on command. Each text frame is a command:
/// `trap`, `loop`, `bomb`, `close <code> <reason>`, `burst <n> <bytes>`
/// (sends n frames of that size), `datagram` (replies by datagram), `big`
/// (one frame over the frame cap); anything else is echoed with a count,
/// on the stream it came on.
///
/// Stream commands, answered on the stream they came on:
/// - `rpc <text>`: replies `re:<text>` and finishes the stream;
/// - `push <n> <text>`: opens `n` unidirectional streams, writes
///   `<text> <i>` on each and finishes it; answers `pushed <ids>` or the
///   error it stopped at;
/// - `open-bidi`: opens a bidirectional stream and writes `hello <id>` on
///   it; answers `opened <id>`;
/// - `hoard`: opens unidirectional streams until refused and keeps them
///   open; answers `hoarded <n>: <error>`; `release` finishes them;
/// - `write <id> <text>` / `finish <id>`: answers `ok` or the error;
/// - `reply-finish-write`: replies `done` and finishes, then writes once
///   more to the same stream; the error goes to the primary stream;
/// - `watch`: from now on every `stream_end` is reported on the primary
///   stream as `end <id> <how>`;
/// - `keep <KiB>`: keeps that many bytes of a pattern in the box and
///   answers their checksum; `sum` answers it again with the frame count
///   (state that must survive hibernation).
#[derive(Default)]
struct Chaos {
    frames: u32,
    hoard: Vec<StreamId>,
    watch: bool,
    /// Bytes kept across events (`keep`), to check state survives hibernation.
    kept: Vec<u8>,
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().enumerate().fold(0u64, |sum, (i, b)| sum.wrapping_mul(31).wrapping_add(*b as u64 ^ i as u64))
}

fn outcome(r: Result<(), SendError>) -> String {
    r.map_or_else(|e| format!("{e:?}"), |()| "ok".into())
}

#[toil::stream("chaos")]
impl Chaos {
    #[connect]
    fn connect(&mut self, cx: &mut Session) {
        cx.send(format!("hello session {}", cx.id()).as_bytes()).unwrap();
    }

    #[message]
    fn message(&mut self, cx: &mut Session, frame: Frame<'_>) {
        self.frames += 1;
        let text = frame.text().unwrap_or("");
        let mut words = text.split(' ');
        match words.next().unwrap_or("") {
            "trap" => panic!("chaos: deliberate panic"),
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![7u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "close" => {
                let code = words.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let reason: Vec<&str> = words.collect();
                cx.close(code, &reason.join(" "));
            }
            "burst" => {
                let n: usize = words.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                let size: usize = words.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                let mut results = [0u32; 5];
                for _ in 0..n {
                    let slot = match cx.send(&vec![b'b'; size]) {
                        Ok(()) => 0,
                        Err(SendError::QueueFull) => 1,
                        Err(SendError::TooLarge) => 2,
                        Err(SendError::Closed) => 3,
                        Err(_) => 4,
                    };
                    results[slot] += 1;
                }
                cx.send(format!("burst sent={} full={} large={}", results[0], results[1], results[2]).as_bytes()).unwrap();
            }
            "sleep" => {
                let ms: u64 = words.next().and_then(|c| c.parse().ok()).unwrap_or(5000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                cx.send(b"woke").unwrap();
            }
            "keep" => {
                let kib: usize = words.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                self.kept = (0..kib << 10).map(|i| (i * 31 + 7) as u8).collect();
                cx.reply(&frame, format!("kept {kib} KiB sum {}", checksum(&self.kept)).as_bytes()).unwrap();
            }
            "sum" => cx.reply(&frame, format!("sum {} frames {}", checksum(&self.kept), self.frames).as_bytes()).unwrap(),
            "datagram" => {
                cx.send_datagram(format!("datagram {}", self.frames).as_bytes()).unwrap();
            }
            "rpc" => cx.reply_and_finish(&frame, format!("re:{}", words.collect::<Vec<_>>().join(" ")).as_bytes()).unwrap(),
            "push" => {
                let n: usize = words.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                let text = words.collect::<Vec<_>>().join(" ");
                let mut ids = Vec::new();
                let mut answer = None;
                for i in 0..n {
                    let pushed = cx.open_stream(Direction::Uni).and_then(|id| {
                        ids.push(id.0.to_string());
                        cx.write(id, format!("{text} {i}").as_bytes())?;
                        cx.finish(id)
                    });
                    if let Err(e) = pushed {
                        answer = Some(format!("push failed after {i}: {e:?}"));
                        break;
                    }
                }
                let answer = answer.unwrap_or_else(|| format!("pushed {}", ids.join(",")));
                cx.reply(&frame, answer.as_bytes()).unwrap();
            }
            "open-bidi" => {
                let id = cx.open_stream(Direction::Bidi).unwrap();
                cx.write(id, format!("hello {}", id.0).as_bytes()).unwrap();
                cx.reply(&frame, format!("opened {}", id.0).as_bytes()).unwrap();
            }
            "hoard" => {
                let error = loop {
                    match cx.open_stream(Direction::Uni) {
                        Ok(id) => self.hoard.push(id),
                        Err(e) => break e,
                    }
                };
                cx.reply(&frame, format!("hoarded {}: {error:?}", self.hoard.len()).as_bytes()).unwrap();
            }
            "release" => {
                for id in std::mem::take(&mut self.hoard) {
                    cx.finish(id).unwrap();
                }
                cx.reply(&frame, b"released").unwrap();
            }
            "write" | "finish" => {
                let id = StreamId(words.next().and_then(|c| c.parse().ok()).unwrap_or(0));
                let result = match text.starts_with("write") {
                    true => cx.write(id, words.collect::<Vec<_>>().join(" ").as_bytes()),
                    false => cx.finish(id),
                };
                cx.reply(&frame, outcome(result).as_bytes()).unwrap();
            }
            "reply-finish-write" => {
                cx.reply_and_finish(&frame, b"done").unwrap();
                let late = cx.reply(&frame, b"late");
                cx.send(format!("late write: {}", outcome(late)).as_bytes()).unwrap();
            }
            "watch" => {
                self.watch = true;
                cx.reply(&frame, b"watching").unwrap();
            }
            _ => {
                if let Err(e) = cx.reply(&frame, format!("{}:{text}", self.frames).as_bytes()) {
                    cx.send(format!("reply failed: {e:?}").as_bytes()).unwrap();
                }
            }
        }
    }

    #[stream_end]
    fn stream_end(&mut self, cx: &mut Session, stream: StreamId, end: StreamEnd) {
        if self.watch {
            // The primary stream itself may be the one that ended.
            let _ = cx.send(format!("end {} {end:?}", stream.0).as_bytes());
        }
    }

    #[close]
    fn close(&mut self, _cx: &mut Session, code: u32, reason: &str) {
        println!("chaos closed after {} frames: code {code} reason {reason:?}", self.frames);
    }

    #[disconnect]
    fn disconnect(&mut self, _cx: &mut Session, reason: &str) {
        println!("chaos disconnected after {} frames: {reason}", self.frames);
    }
}

/// A daemon that blocks in host calls: `daemon_start` never returns when the
/// domain is called `stuck`, and the `nap` task sleeps for 30 s. Neither may
/// hold its instance past the deadline, nor keep `toil tick` waiting.
#[derive(Default)]
struct Sleepy;

#[toil::daemon]
impl Sleepy {
    #[start]
    fn start(&mut self, info: &StartInfo) {
        if info.domain == "stuck" {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        }
        println!("sleepy started on {}", info.domain);
    }

    /// February 29th at midnight: fired by hand in the tests, almost never by the schedule.
    #[scheduled("0 0 0 29 2 *")]
    fn nap(&mut self, _tick: &Tick) {
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
}

toil::export! { rest: [Misbehave], streams: [Chaos], daemon: Sleepy }
