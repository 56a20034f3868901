//! The epoch ticker: what makes a running guest yield, and what ends it at
//! its deadline.
//!
//! wasmtime checks its engine's epoch at function entries and loop back
//! edges. Every call sets its store's deadline one epoch ahead, so once the
//! epoch moves the guest reaches the store's callback (`engine`), which
//! yields to the executor (a busy guest never starves the other sessions
//! of its thread) or, past the call's deadline, interrupts it. The epoch
//! only moves if a thread moves it: this one, every `tick`.
//!
//! Only while guest code may run, though. Waking every millisecond costs
//! a node that runs none 4.4% of a core on a small VM (measured: a 1 ms
//! sleep loop, some 50 µs of CPU per wake-up on the 2-core CI machines),
//! for nothing. So a
//! call holds a [`Running`] guard, and the ticker parks once a wake-up
//! finds no call running or started since the last one; the next call to
//! start unparks it. A node under load never parks it (calls started
//! between wake-ups), so the call path pays one atomic add and one
//! subtract, and the unpark (a system call) only on the first call after
//! an idle spell.
//!
//! Nor while every call is short. A node serving many short calls (a
//! stream box's event takes microseconds) has calls starting all the time
//! but seldom one running when the ticker wakes, and moving the epoch
//! then helps no call: they have all ended. Waking every tick for them
//! cost the stream bench's echo 5 µs of CPU a round trip (a wake-up every
//! six events). So the ticker moves the epoch only when it finds a call
//! running, and after a wake-up that finds none it sleeps [`EASED_TICKS`]
//! ticks. A call that starts then yields within that many ticks, and
//! every tick after: the ticker looks again a tick after it finds one.
//!
//! Parking is race-free without a lock: the ticker announces it parks,
//! then looks at the calls again; a call counts itself, then looks at the
//! announcement. Whichever comes second sees the other (both are
//! sequentially consistent), and an unpark that comes before the park
//! makes the park return at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// The ticker's state, shared with every store's host state.
#[derive(Clone)]
pub(crate) struct Epochs {
    shared: Arc<Shared>,
}

struct Shared {
    /// Low 32 bits: calls running now; high 32 bits: calls started so far
    /// (wrapping). One word, so a call is counted with one atomic add and
    /// the ticker reads both at once.
    calls: AtomicU64,
    /// The ticker parked, or is about to.
    parked: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
}

/// How many ticks the ticker sleeps after a wake-up that found calls had
/// run but none running: the longest a call may run before its first
/// yield (see the module doc).
pub const EASED_TICKS: u32 = 4;

const STARTED: u64 = 1 << 32;
const RUNNING: u64 = STARTED - 1;

/// A guest call under way: the epoch moves until it is dropped.
pub(crate) struct Running {
    shared: Arc<Shared>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.calls.fetch_sub(1, SeqCst);
    }
}

/// Stops the ticker's thread when dropped.
pub(crate) struct Stop(Epochs);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.shared.stop.store(true, SeqCst);
        self.0.unpark();
    }
}

impl Epochs {
    /// Starts the ticker's thread: while calls run, it calls `advance`
    /// every `tick`, and ends when `advance` returns false or [`Stop`] is
    /// dropped.
    pub fn start(tick: Duration, advance: impl Fn() -> bool + Send + 'static) -> std::io::Result<(Epochs, Stop)> {
        let epochs = Epochs {
            shared: Arc::new(Shared {
                calls: AtomicU64::new(0),
                parked: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                thread: OnceLock::new(),
            }),
        };
        let shared = epochs.shared.clone();
        let thread = std::thread::Builder::new().name("toil-epoch".into()).spawn(move || shared.run(tick, advance))?;
        let _ = epochs.shared.thread.set(thread.thread().clone());
        Ok((epochs.clone(), Stop(epochs)))
    }

    /// Counts a call as running until the guard is dropped.
    pub fn running(&self) -> Running {
        self.shared.calls.fetch_add(STARTED + 1, SeqCst);
        if self.shared.parked.load(SeqCst) {
            self.unpark();
        }
        Running { shared: self.shared.clone() }
    }

    fn unpark(&self) {
        if let Some(thread) = self.shared.thread.get() {
            thread.unpark();
        }
    }

    /// Whether the ticker is parked (for tests).
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        self.shared.parked.load(SeqCst)
    }
}

impl Shared {
    fn run(&self, tick: Duration, advance: impl Fn() -> bool) {
        let mut seen = self.calls.load(SeqCst);
        let mut sleep = tick;
        loop {
            std::thread::sleep(sleep);
            if self.stop.load(SeqCst) {
                return;
            }
            let calls = self.calls.load(SeqCst);
            if calls & RUNNING != 0 {
                // A call runs: it yields, or meets its deadline.
                (seen, sleep) = (calls, tick);
                if !advance() {
                    return;
                }
                continue;
            }
            if calls != seen {
                // Calls ran and ended between wake-ups: none needs the epoch.
                (seen, sleep) = (calls, tick * EASED_TICKS);
                continue;
            }
            // No call ran since the last wake-up: sleep until one starts.
            self.parked.store(true, SeqCst);
            while self.calls.load(SeqCst) == seen && !self.stop.load(SeqCst) {
                std::thread::park();
            }
            self.parked.store(false, SeqCst);
            sleep = tick;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use super::*;

    fn ticker() -> (Epochs, Stop, Arc<AtomicUsize>) {
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = ticks.clone();
        let (epochs, stop) = Epochs::start(Duration::from_millis(1), move || {
            counted.fetch_add(1, SeqCst);
            true
        })
        .unwrap();
        (epochs, stop, ticks)
    }

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(10), "waited 10 s for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn ticks_while_a_call_runs_and_parks_when_none_does() {
        let (epochs, _stop, ticks) = ticker();
        wait_until("the idle ticker to park", || epochs.is_parked());
        let before = ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticks.load(SeqCst), before, "a parked ticker does not tick");

        let call = epochs.running();
        wait_until("ten ticks during one call", || ticks.load(SeqCst) >= before + 10);
        assert!(!epochs.is_parked());
        drop(call);
        wait_until("the ticker to park after the call", || epochs.is_parked());
    }

    #[test]
    fn short_calls_are_not_ticked_but_a_long_one_after_them_is() {
        let (epochs, _stop, ticks) = ticker();
        wait_until("the idle ticker to park", || epochs.is_parked());
        // Calls that start and end between wake-ups (the first one wakes
        // the ticker) are not ticked: none is running when it looks.
        let before = ticks.load(SeqCst);
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            drop(epochs.running());
            std::thread::sleep(Duration::from_micros(100));
        }
        // Ticking each wake-up would have made some 50 ticks; a wake-up
        // may still land inside a call (or in one the test thread was
        // descheduled in) now and then.
        let ticked = ticks.load(SeqCst) - before;
        assert!(ticked <= 2, "{ticked} ticks for calls that had all ended");
        // A long call after them is ticked within the eased sleep, then
        // every tick.
        let before = ticks.load(SeqCst);
        let call = epochs.running();
        let first = Instant::now();
        wait_until("the long call's first tick", || ticks.load(SeqCst) > before);
        let first = first.elapsed();
        wait_until("ten more ticks", || ticks.load(SeqCst) > before + 10);
        drop(call);
        // Slept ticks on a loaded machine run long; bound it loosely.
        assert!(first < Duration::from_millis(EASED_TICKS as u64 * 20), "first tick after {first:?}");
        wait_until("the ticker to park once calls stop", || epochs.is_parked());
    }

    #[test]
    fn stops_when_told_even_while_parked() {
        let (epochs, stop, _ticks) = ticker();
        wait_until("the idle ticker to park", || epochs.is_parked());
        let thread = epochs.shared.clone();
        drop(stop);
        // The thread holds the other reference; it drops it as it ends.
        wait_until("the thread to end", || Arc::strong_count(&thread) == 2);
    }
}
