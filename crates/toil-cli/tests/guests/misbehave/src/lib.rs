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

toil::export! { rest: [Misbehave] }
