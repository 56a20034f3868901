// The old spellings are aliases; hooks and tasks may leave out their context
// and may return a Result.
use toil::prelude::*;

struct Api;

#[toil::rest]
impl Api {
    #[get("/")]
    fn index() -> &'static str {
        "hi"
    }
}

#[derive(Default)]
struct Echo;

#[toil::stream("echo")]
impl Echo {
    #[connect]
    fn connect(&mut self) {}

    #[message]
    fn message(&mut self, cx: &mut Session, frame: Frame<'_>) -> Result<(), SendError> {
        cx.reply(&frame, frame.bytes())
    }

    #[close]
    fn close(&mut self, _code: u32, _reason: &str) -> Result<(), String> {
        Err("closing".into())
    }
}

#[derive(Default)]
struct Jobs;

#[toil::daemon]
impl Jobs {
    #[start]
    fn start(&mut self, info: &StartInfo) -> Result<(), std::fmt::Error> {
        let _ = info.node;
        Ok(())
    }

    #[scheduled("0 9 * * MON-FRI")]
    fn weekday(&mut self) {}
}

toil::export! { rest: Api, streams: [Echo], daemon: [Jobs] }

fn main() {
    assert_eq!(<Api as toil::http::Rest>::ROUTES, [("GET", "/")]);
    assert_eq!(<Jobs as toil::daemon::Daemon>::TASKS, [("weekday", "0 9 * * MON-FRI")]);
}
