//! A timeout that costs nothing until its future has to wait.
//!
//! Most guest calls and most writes finish in their first poll: the guest
//! never parks in a host call, the frame fits in quinn's send buffer. A
//! `tokio::time::timeout` around each would read the clock and take the
//! runtime's timer handle for every one of them. [`within`] makes its
//! timer on the first `Pending`, in that same poll, and returns `Pending`
//! as the future did: the future is not polled again at once, so a guest
//! that yields (the epoch's `yield_now`) really gives its thread up.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use tokio::time::{Instant, Sleep};

/// `fut`'s output, or `None` if it was still waiting at the deadline that
/// `deadline` gives; `deadline` is asked only if `fut` has to wait.
pub async fn within<F: Future>(deadline: impl FnOnce() -> Instant, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut timer = pin!(None::<Sleep>);
    let mut deadline = Some(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if let Some(deadline) = deadline.take() {
            timer.set(Some(tokio::time::sleep_until(deadline())));
        }
        let timer = timer.as_mut().as_pin_mut().expect("set at the first wait");
        timer.poll(cx).map(|()| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_ready_future_never_asks_for_its_deadline() {
        let out = within(|| unreachable!("no timer for a ready future"), async { 7 }).await;
        assert_eq!(out, Some(7));
    }

    #[tokio::test]
    async fn a_waiting_future_ends_at_the_deadline() {
        let out = within(|| Instant::now() + Duration::from_millis(20), std::future::pending::<()>()).await;
        assert_eq!(out, None);
        let out = within(|| Instant::now() + Duration::from_secs(1), tokio::time::sleep(Duration::from_millis(10))).await;
        assert_eq!(out, Some(()));
    }

    #[tokio::test]
    async fn a_yield_goes_back_to_the_executor() {
        // A future that yields once (wakes itself, returns Pending) is not
        // polled again within the same poll of `within`.
        let polls = std::cell::Cell::new(0);
        let yields_once = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            if polls.get() == 1 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        });
        let mut outer = pin!(within(|| Instant::now() + Duration::from_secs(1), yields_once));
        let waker = std::task::Waker::noop();
        assert!(outer.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_pending());
        assert_eq!(polls.get(), 1, "polled once, then back to the executor");
        assert_eq!(outer.await, Some(()));
    }
}
