//! The streams a session driver reads (and what ends the session, as a
//! one-item stream), each polled only when its own waker fired.
//!
//! `futures::stream::SelectAll` does the same, but takes a stream out of
//! its set for every item and puts it back as a new task: an allocation,
//! and a waker quinn has not seen, for every frame. Here a stream keeps
//! its slot and its waker for its whole life. A wake-up queues the slot
//! once (a flag per slot); the set's one waker is the driver's. After an
//! item the slot is queued again, behind the others, since the stream may
//! hold more: streams with data take turns. One read polls at most the
//! slots queued when it began, so a stream that wakes itself and returns
//! `Pending` (tokio's cooperative budget does) cannot keep it looping.
//!
//! No I/O: the tests drive it with in-memory streams.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use futures_util::Stream;

/// A set of streams, yielding their items as they come (see the module doc).
pub(super) struct ReadSet<S> {
    slots: Vec<Option<Slot<S>>>,
    /// Slots free for the next stream pushed.
    free: Vec<usize>,
    shared: Arc<Shared>,
    len: usize,
    /// Numbers the streams pushed, so a wake-up from a stream that has
    /// left does not poll the one that took its slot.
    pushed: u64,
}

struct Slot<S> {
    stream: S,
    generation: u64,
    flag: Arc<SlotWaker>,
    /// `flag` as a waker, made once: the same waker every poll, so quinn
    /// keeps the one it holds.
    waker: Waker,
}

/// What the slots' wakers and the set share.
#[derive(Default)]
struct Shared {
    /// Slots to poll (slot, generation), in the order they were woken.
    queued: Mutex<VecDeque<(usize, u64)>>,
    /// The task reading the set.
    reader: AtomicWaker,
}

struct SlotWaker {
    slot: usize,
    generation: u64,
    /// In `queued` already: a second wake-up adds nothing.
    is_queued: AtomicBool,
    /// Weak: a waker a stream left behind does not keep the set (and the
    /// reader's waker) alive.
    shared: Weak<Shared>,
}

impl SlotWaker {
    fn queue(&self, shared: &Shared) {
        if !self.is_queued.swap(true, Ordering::AcqRel) {
            shared.queued.lock().expect("read set queue").push_back((self.slot, self.generation));
        }
    }
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            self.queue(&shared);
            shared.reader.wake();
        }
    }
}

impl<S> ReadSet<S> {
    pub fn new() -> Self {
        ReadSet { slots: Vec::new(), free: Vec::new(), shared: Arc::default(), len: 0, pushed: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `stream`; it is polled at the next read.
    pub fn push(&mut self, stream: S) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        // A waker of its own: the slot's last stream may have left its
        // waker with quinn, and that one must not mark this stream queued.
        self.pushed += 1;
        let generation = self.pushed;
        let flag = Arc::new(SlotWaker { slot, generation, is_queued: AtomicBool::new(false), shared: Arc::downgrade(&self.shared) });
        flag.queue(&self.shared);
        self.slots[slot] = Some(Slot { stream, generation, waker: Waker::from(flag.clone()), flag });
        self.len += 1;
    }
}

impl<S: Stream + Unpin> Stream for ReadSet<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        this.shared.reader.register(cx.waker());
        let mut budget = this.shared.queued.lock().expect("read set queue").len();
        loop {
            if budget == 0 {
                if this.len == 0 {
                    return Poll::Ready(None);
                }
                // Slots queued since this read began (a stream that woke
                // itself among them) wait for the next one.
                if !this.shared.queued.lock().expect("read set queue").is_empty() {
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
            budget -= 1;
            let Some((at, generation)) = this.shared.queued.lock().expect("read set queue").pop_front() else { continue };
            let Some(slot) = this.slots.get_mut(at).and_then(Option::as_mut).filter(|slot| slot.generation == generation) else { continue };
            // Cleared before the poll: a wake-up during it queues the slot again.
            slot.flag.is_queued.swap(false, Ordering::AcqRel);
            match Pin::new(&mut slot.stream).poll_next(&mut Context::from_waker(&slot.waker)) {
                Poll::Ready(Some(item)) => {
                    slot.flag.queue(&this.shared);
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => {
                    this.slots[at] = None;
                    this.free.push(at);
                    this.len -= 1;
                }
                Poll::Pending => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures_util::StreamExt;

    use super::*;

    type Boxed = Pin<Box<dyn Stream<Item = u32> + Send>>;

    /// A stream of what `tx` sends, and how often it was polled.
    fn channel() -> (tokio::sync::mpsc::UnboundedSender<u32>, Boxed, Arc<AtomicUsize>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let mut rx = rx;
        let stream = futures_util::stream::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            rx.poll_recv(cx)
        });
        (tx, Box::pin(stream), polls)
    }

    fn poll(set: &mut ReadSet<Boxed>) -> Poll<Option<u32>> {
        set.poll_next_unpin(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn items_come_as_sent_and_an_ended_stream_leaves() {
        let mut set = ReadSet::new();
        let (a, stream_a, _) = channel();
        let (b, stream_b, _) = channel();
        set.push(stream_a);
        set.push(stream_b);
        assert_eq!(poll(&mut set), Poll::Pending);
        a.send(1).unwrap();
        b.send(2).unwrap();
        a.send(3).unwrap();
        let mut got = vec![];
        while let Poll::Ready(Some(v)) = poll(&mut set) {
            got.push(v);
        }
        got.sort();
        assert_eq!(got, [1, 2, 3]);
        drop(a);
        assert_eq!(poll(&mut set), Poll::Pending, "b is still open");
        assert!(!set.is_empty());
        drop(b);
        assert_eq!(poll(&mut set), Poll::Ready(None));
        assert!(set.is_empty());
        // A slot freed is used again.
        let (c, stream_c, _) = channel();
        set.push(stream_c);
        c.send(4).unwrap();
        assert_eq!(poll(&mut set), Poll::Ready(Some(4)));
        assert_eq!(set.slots.len(), 2);
    }

    #[test]
    fn a_waker_left_behind_does_not_poll_the_slots_next_stream() {
        let mut set: ReadSet<Boxed> = ReadSet::new();
        // A stream that keeps the waker it was polled with, then ends.
        let kept = Arc::new(Mutex::new(None::<Waker>));
        let keeper = kept.clone();
        let mut polled = 0;
        set.push(Box::pin(futures_util::stream::poll_fn(move |cx| {
            polled += 1;
            *keeper.lock().unwrap() = Some(cx.waker().clone());
            if polled == 1 {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        })));
        assert_eq!(poll(&mut set), Poll::Pending);
        kept.lock().unwrap().as_ref().unwrap().wake_by_ref();
        assert_eq!(poll(&mut set), Poll::Ready(None), "the stream ended, and with it the set");
        assert!(set.is_empty());
        let (_tx, stream, polls) = channel();
        set.push(stream);
        assert_eq!(poll(&mut set), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The old waker fires: the new stream in its slot is not polled.
        kept.lock().unwrap().take().unwrap().wake();
        assert_eq!(poll(&mut set), Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled for a wake-up that was not its own");
    }

    #[test]
    fn a_stream_that_wakes_itself_does_not_keep_a_read_looping() {
        let mut set: ReadSet<Boxed> = ReadSet::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        // As a stream out of tokio's cooperative budget behaves.
        set.push(Box::pin(futures_util::stream::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::Pending
        })));
        let woken = Arc::new(Flag::default());
        let waker = Waker::from(woken.clone());
        assert!(set.poll_next_unpin(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once per read");
        assert!(woken.0.load(Ordering::Relaxed), "and the reader is woken to read again");
        assert!(set.poll_next_unpin(&mut Context::from_waker(&waker)).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn only_a_woken_stream_is_polled() {
        let mut set = ReadSet::new();
        let (busy, busy_stream, _) = channel();
        let (_idle, idle_stream, idle_polls) = channel();
        set.push(busy_stream);
        set.push(idle_stream);
        assert_eq!(poll(&mut set), Poll::Pending);
        for i in 0..100 {
            busy.send(i).unwrap();
            assert_eq!(poll(&mut set), Poll::Ready(Some(i)));
            assert_eq!(poll(&mut set), Poll::Pending);
        }
        assert_eq!(idle_polls.load(Ordering::Relaxed), 1, "polled once, when it was added");
    }

    #[test]
    fn streams_with_data_take_turns() {
        let mut set = ReadSet::new();
        let (a, stream_a, _) = channel();
        let (b, stream_b, _) = channel();
        set.push(stream_a);
        set.push(stream_b);
        for i in 0..3 {
            a.send(10 + i).unwrap();
            b.send(20 + i).unwrap();
        }
        let got: Vec<u32> = (0..6)
            .map(|_| match poll(&mut set) {
                Poll::Ready(Some(v)) => v,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [10, 20, 11, 21, 12, 22]);
    }
}
