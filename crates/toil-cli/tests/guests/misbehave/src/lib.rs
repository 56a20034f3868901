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

    #[post("/size")]
    fn size(req: &Request) -> String {
        req.body().len().to_string()
    }
}

/// A stream box that misbehaves on command. Each text frame is a command:
/// `trap`, `loop`, `bomb`, `close <code> <reason>`, `burst <n> <bytes>`
/// (sends n frames of that size), `datagram` (replies by datagram), `big`
/// (one frame over the frame cap); anything else is echoed with a count.
#[derive(Default)]
struct Chaos {
    frames: u32,
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
                        Err(SendError::BadKind) => 4,
                    };
                    results[slot] += 1;
                }
                cx.send(format!("burst sent={} full={} large={}", results[0], results[1], results[2]).as_bytes()).unwrap();
            }
            "datagram" => {
                cx.send_datagram(format!("datagram {}", self.frames).as_bytes()).unwrap();
            }
            _ => cx.reply(&frame, format!("{}:{text}", self.frames).as_bytes()).unwrap(),
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

toil::export! { rest: [Misbehave], streams: [Chaos] }
