// Hooks are methods of the resident value.
use toil::prelude::*;

#[derive(Default)]
struct Echo;

#[toil::stream("echo")]
impl Echo {
    #[close]
    fn close(cx: &mut Session, code: u32, reason: &str) {
        let _ = (cx, code, reason);
    }
}

toil::export! { stream: [Echo] }

fn main() {}
