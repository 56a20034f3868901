//! The host imports (module `toil`), and an in-process stand-in on native
//! targets so guest logic can be unit-tested with plain `cargo test`.

#[cfg(target_arch = "wasm32")]
mod imp {
    #[link(wasm_import_module = "toil")]
    extern "C" {
        fn input_read(dst: *mut u8, len: i32) -> i32;
        fn output_write(src: *const u8, len: i32) -> i32;
        fn stream_send(kind: i32, src: *const u8, len: i32) -> i32;
        fn stream_close(code: i32, src: *const u8, len: i32) -> i32;
    }

    /// The stream imports, named apart from their safe wrappers below.
    mod streams {
        #[link(wasm_import_module = "toil")]
        extern "C" {
            pub fn stream_write(stream: i32, src: *const u8, len: i32, finish: i32) -> i32;
            pub fn stream_finish(stream: i32) -> i32;
            pub fn stream_open(direction: i32) -> i32;
        }
    }

    pub fn stream_write(stream: u32, bytes: &[u8], finish: bool) -> i32 {
        // SAFETY: the host only reads `bytes`.
        unsafe { streams::stream_write(stream as i32, bytes.as_ptr(), bytes.len() as i32, finish as i32) }
    }

    pub fn stream_finish(stream: u32) -> i32 {
        // SAFETY: no pointers.
        unsafe { streams::stream_finish(stream as i32) }
    }

    pub fn stream_open(direction: u8) -> i32 {
        // SAFETY: no pointers.
        unsafe { streams::stream_open(direction as i32) }
    }

    /// The channel imports, named apart from their safe wrappers below.
    mod ffi {
        #[link(wasm_import_module = "toil")]
        extern "C" {
            pub fn channel_publish(topic: *const u8, topic_len: i32, src: *const u8, len: i32, out: *mut u8, out_cap: i32) -> i32;
            pub fn channel_subscribe(topic: *const u8, topic_len: i32, since: *const u8, since_len: i32) -> i32;
            pub fn channel_unsubscribe(topic: *const u8, topic_len: i32) -> i32;
        }
    }

    pub fn channel_publish(topic: &str, bytes: &[u8], out: &mut [u8]) -> i32 {
        // SAFETY: the host reads `topic` and `bytes` and writes at most `out.len()` bytes to `out`.
        unsafe { ffi::channel_publish(topic.as_ptr(), topic.len() as i32, bytes.as_ptr(), bytes.len() as i32, out.as_mut_ptr(), out.len() as i32) }
    }

    pub fn channel_subscribe(topic: &str, since: &[u8]) -> i32 {
        // SAFETY: the host only reads `topic` and `since`.
        unsafe { ffi::channel_subscribe(topic.as_ptr(), topic.len() as i32, since.as_ptr(), since.len() as i32) }
    }

    pub fn channel_unsubscribe(topic: &str) -> i32 {
        // SAFETY: the host only reads `topic`.
        unsafe { ffi::channel_unsubscribe(topic.as_ptr(), topic.len() as i32) }
    }

    pub fn read_input(len: i32) -> Vec<u8> {
        let mut buf = Vec::with_capacity(len.max(0) as usize);
        // SAFETY: the host writes at most `len` bytes into the spare capacity
        // and returns how many it wrote.
        unsafe {
            let n = input_read(buf.as_mut_ptr(), len);
            buf.set_len(n.clamp(0, len) as usize);
        }
        buf
    }

    pub fn write_output(bytes: &[u8]) {
        // SAFETY: the host only reads `bytes`.
        unsafe { output_write(bytes.as_ptr(), bytes.len() as i32) };
    }

    pub fn send(kind: u8, bytes: &[u8]) -> i32 {
        // SAFETY: the host only reads `bytes`.
        unsafe { stream_send(kind as i32, bytes.as_ptr(), bytes.len() as i32) }
    }

    pub fn close(code: u32, reason: &str) -> i32 {
        // SAFETY: the host only reads `reason`.
        unsafe { stream_close(code as i32, reason.as_ptr(), reason.len() as i32) }
    }

    /// An error a hook or task returned: one line of stderr, which the host
    /// logs tagged with the domain and tier.
    pub fn report_error(line: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    //! Native stand-in: a thread-local "host" for unit tests.
    use std::cell::RefCell;

    thread_local! {
        static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        static SENT: RefCell<Vec<Sent>> = const { RefCell::new(Vec::new()) };
        static OPENED: RefCell<u32> = const { RefCell::new(0) };
        static ERRORS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
        /// Per topic: its last offset and whether the box is subscribed.
        static TOPICS: RefCell<Vec<(String, u64, bool)>> = const { RefCell::new(Vec::new()) };
    }

    /// In process, natively: each topic numbers its publications in epoch
    /// `native`; subscriptions are recorded (nothing is delivered).
    pub fn channel_publish(topic: &str, _bytes: &[u8], out: &mut [u8]) -> i32 {
        use toil_abi::channel::{check_topic, ChannelError, Position};
        if check_topic(topic).is_err() {
            return ChannelError::BadTopic as i32;
        }
        let offset = TOPICS.with(|t| {
            let mut t = t.borrow_mut();
            let i = t.iter().position(|(name, _, _)| name == topic).unwrap_or_else(|| {
                t.push((topic.into(), 0, false));
                t.len() - 1
            });
            t[i].1 += 1;
            t[i].1
        });
        let encoded = Position { offset, epoch: "native".into() }.encode();
        out[..encoded.len()].copy_from_slice(&encoded);
        encoded.len() as i32
    }
    pub fn channel_subscribe(topic: &str, _since: &[u8]) -> i32 {
        use toil_abi::channel::{check_topic, ChannelError};
        if check_topic(topic).is_err() {
            return ChannelError::BadTopic as i32;
        }
        TOPICS.with(|t| {
            let mut t = t.borrow_mut();
            match t.iter_mut().find(|(name, _, _)| name == topic) {
                Some(entry) => entry.2 = true,
                None => t.push((topic.into(), 0, true)),
            }
        });
        0
    }
    pub fn channel_unsubscribe(topic: &str) -> i32 {
        TOPICS.with(|t| t.borrow_mut().iter_mut().find(|(name, _, _)| name == topic).is_some_and(|e| std::mem::take(&mut e.2)) as i32)
    }

    pub fn read_input(len: i32) -> Vec<u8> {
        INPUT.with(|i| i.borrow().iter().take(len.max(0) as usize).copied().collect())
    }
    pub fn write_output(bytes: &[u8]) {
        OUTPUT.with(|o| o.borrow_mut().extend_from_slice(bytes));
    }
    /// What a box sent, as the native stand-in records it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Sent {
        /// `stream_send`: the primary stream (kind 0) or a datagram (kind 1).
        Send(u8, Vec<u8>),
        Write(u32, Vec<u8>),
        Finish(u32),
        Open(u32),
    }

    pub fn send(kind: u8, bytes: &[u8]) -> i32 {
        SENT.with(|s| s.borrow_mut().push(Sent::Send(kind, bytes.to_vec())));
        0
    }
    pub fn stream_write(stream: u32, bytes: &[u8], finish: bool) -> i32 {
        SENT.with(|s| s.borrow_mut().push(Sent::Write(stream, bytes.to_vec())));
        if finish {
            stream_finish(stream);
        }
        0
    }
    pub fn stream_finish(stream: u32) -> i32 {
        SENT.with(|s| s.borrow_mut().push(Sent::Finish(stream)));
        0
    }
    /// Natively, the box's own streams are numbered from 1001.
    pub fn stream_open(_direction: u8) -> i32 {
        let id = OPENED.with(|n| {
            *n.borrow_mut() += 1;
            1000 + *n.borrow()
        });
        SENT.with(|s| s.borrow_mut().push(Sent::Open(id)));
        id as i32
    }
    /// Takes what the box sent.
    #[allow(dead_code)]
    pub fn take_sent() -> Vec<Sent> {
        SENT.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }
    pub fn close(_code: u32, _reason: &str) -> i32 {
        0
    }
    pub fn report_error(line: &str) {
        eprintln!("{line}");
        ERRORS.with(|e| e.borrow_mut().push(line.to_string()));
    }

    /// Takes the errors hooks and tasks reported.
    #[allow(dead_code)]
    pub fn take_errors() -> Vec<String> {
        ERRORS.with(|e| std::mem::take(&mut *e.borrow_mut()))
    }

    /// Sets the next event's input; returns its length.
    #[allow(dead_code)]
    pub fn set_input(bytes: Vec<u8>) -> i32 {
        let n = bytes.len() as i32;
        INPUT.with(|i| *i.borrow_mut() = bytes);
        n
    }
    /// Takes what the guest wrote with `output_write`.
    #[allow(dead_code)]
    pub fn take_output() -> Vec<u8> {
        OUTPUT.with(|o| std::mem::take(&mut *o.borrow_mut()))
    }
}

pub(crate) use imp::*;
