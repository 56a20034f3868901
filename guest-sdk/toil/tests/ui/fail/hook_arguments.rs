// A #[message] hook takes the frame (and optionally the session), no more.
use toil::prelude::*;

#[derive(Default)]
struct Echo;

#[toil::stream("echo")]
impl Echo {
    #[message]
    fn message(&mut self, cx: &mut Session, frame: Frame<'_>, extra: u32) {
        let _ = (cx, frame, extra);
    }
}

toil::export! { stream: [Echo] }

fn main() {}
