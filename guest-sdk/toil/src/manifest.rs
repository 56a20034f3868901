//! The manifest of each tier, assembled at compile time by the code
//! `export!` generates, from the declarations of the types it lists (and
//! only those): [`Rest::ROUTES`](crate::http::Rest::ROUTES),
//! [`Stream::NAME`](crate::stream::Stream::NAME) and
//! [`Daemon::TASKS`](crate::daemon::Daemon::TASKS). Each tier's section is
//! one static: `export!` sizes it with the `*_len` function and fills it
//! with the function of the same tier.
//!
//! A route or a stream name declared by two listed types stops the build
//! here (const evaluation), as the host would refuse the artifact or
//! silently shadow one of them.

use toil_abi::manifest::{route_record_len, stream_record_len, task_record_len, ConstManifest, HEADER_LEN};
use toil_abi::Tier;

/// `(method, pattern)` of each route of one type.
type Routes<'a> = &'a [(&'a str, &'a str)];

pub const fn request_len(types: &[Routes<'_>]) -> usize {
    let mut len = HEADER_LEN;
    let mut t = 0;
    while t < types.len() {
        let mut r = 0;
        while r < types[t].len() {
            len += route_record_len(types[t][r].0, types[t][r].1);
            r += 1;
        }
        t += 1;
    }
    len
}

pub const fn request<const N: usize>(types: &[Routes<'_>]) -> [u8; N] {
    let mut m = ConstManifest::<N>::new(Tier::Request);
    let mut t = 0;
    while t < types.len() {
        let mut r = 0;
        while r < types[t].len() {
            let (method, pattern) = types[t][r];
            if declared_before(types, t, r) {
                let mut msg = Text::new();
                msg.push("two types listed in toil::export! declare the route `").push(method).push(" ").push(pattern).push("`");
                panic!("{}", msg.as_str());
            }
            m.route(method, pattern);
            r += 1;
        }
        t += 1;
    }
    m.finish()
}

/// Whether route `r` of type `t` is also a route of an earlier type. (Two
/// routes of one type are refused by `#[request]` itself.)
const fn declared_before(types: &[Routes<'_>], t: usize, r: usize) -> bool {
    let mut u = 0;
    while u < t {
        let mut s = 0;
        while s < types[u].len() {
            if str_eq(types[u][s].0, types[t][r].0) && str_eq(types[u][s].1, types[t][r].1) {
                return true;
            }
            s += 1;
        }
        u += 1;
    }
    false
}

pub const fn stream_len(names: &[&str]) -> usize {
    let mut len = HEADER_LEN;
    let mut i = 0;
    while i < names.len() {
        len += stream_record_len(names[i]);
        i += 1;
    }
    len
}

pub const fn stream<const N: usize>(names: &[&str]) -> [u8; N] {
    let mut m = ConstManifest::<N>::new(Tier::Stream);
    let mut i = 0;
    while i < names.len() {
        let mut j = 0;
        while j < i {
            if str_eq(names[i], names[j]) {
                let mut msg = Text::new();
                msg.push("two types listed in toil::export! are streams named `").push(names[i]).push("`");
                panic!("{}", msg.as_str());
            }
            j += 1;
        }
        m.stream(names[i]);
        i += 1;
    }
    m.finish()
}

/// `(name, schedule)` of each task, in index order.
pub const fn daemon_len(tasks: &[(&str, &str)]) -> usize {
    let mut len = HEADER_LEN;
    let mut i = 0;
    while i < tasks.len() {
        len += task_record_len(tasks[i].0, tasks[i].1);
        i += 1;
    }
    len
}

pub const fn daemon<const N: usize>(tasks: &[(&str, &str)]) -> [u8; N] {
    let mut m = ConstManifest::<N>::new(Tier::Daemon);
    let mut i = 0;
    while i < tasks.len() {
        m.task(i as u32, tasks[i].0, tasks[i].1);
        i += 1;
    }
    m.finish()
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A message built in a const context (where `format!` is not available).
struct Text {
    buf: [u8; 256],
    len: usize,
}

impl Text {
    const fn new() -> Self {
        Text { buf: [0; 256], len: 0 }
    }

    /// Appends `s`, or as much of it as fits.
    const fn push(&mut self, s: &str) -> &mut Self {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() && self.len < self.buf.len() {
            self.buf[self.len] = b[i];
            self.len += 1;
            i += 1;
        }
        self
    }

    const fn as_str(&self) -> &str {
        let bytes = self.buf.split_at(self.len).0;
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Cut inside a character: keep what is whole.
            Err(e) => match core::str::from_utf8(bytes.split_at(e.valid_up_to()).0) {
                Ok(s) => s,
                Err(_) => "",
            },
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use toil_abi::manifest::Manifest;

    #[test]
    fn each_tier_encodes_what_it_is_given() {
        const API: Routes<'static> = &[("GET", "/"), ("POST", "/echo")];
        const MORE: Routes<'static> = &[("GET", "/users/:id")];
        const REQ: [u8; request_len(&[API, MORE])] = request(&[API, MORE]);
        let m = Manifest::decode(&REQ).unwrap();
        assert_eq!(m.tier(), Some(Tier::Request));
        let routes: Vec<_> = m.routes.iter().map(|r| format!("{} {}", r.method, r.pattern)).collect();
        assert_eq!(routes, ["GET /", "POST /echo", "GET /users/:id"]);

        const STREAMS: [u8; stream_len(&["echo", "chat"])] = stream(&["echo", "chat"]);
        assert_eq!(Manifest::decode(&STREAMS).unwrap().streams, ["echo", "chat"]);

        const TASKS: &[(&str, &str)] = &[("beat", "1s"), ("hourly", "0 0 * * * *")];
        const DAEMON: [u8; daemon_len(TASKS)] = daemon(TASKS);
        let m = Manifest::decode(&DAEMON).unwrap();
        assert_eq!(m.tier(), Some(Tier::Daemon));
        assert_eq!(
            m.tasks.iter().map(|t| (t.index, t.name.as_str(), t.schedule.as_str())).collect::<Vec<_>>(),
            [(0, "beat", "1s"), (1, "hourly", "0 0 * * * *")]
        );
    }

    // What the const evaluation stops the build with, run as a plain call.
    #[test]
    #[should_panic(expected = "two types listed in toil::export! declare the route `GET /a`")]
    fn a_route_of_two_types_is_refused() {
        let types: [Routes<'_>; 2] = [&[("GET", "/a")], &[("POST", "/a"), ("GET", "/a")]];
        let _: [u8; 64] = request(&types);
    }

    #[test]
    #[should_panic(expected = "two types listed in toil::export! are streams named `echo`")]
    fn a_stream_name_of_two_types_is_refused() {
        let _: [u8; 64] = stream(&["echo", "chat", "echo"]);
    }

    #[test]
    fn long_messages_are_cut_on_a_character() {
        let mut t = Text::new();
        t.push(&"a".repeat(255)).push("é");
        assert_eq!(t.as_str(), "a".repeat(255));
    }
}
