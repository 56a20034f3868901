//! Admission of guest instances: the node's instance budget, which every
//! tier draws from, and each domain's fair share of it for L1 requests.
//!
//! [`InstanceBudget`] counts what holds one of the node's instances
//! (`limits.maxInstances`): a request's or a daemon's instance while it
//! lives, and a stream session while it is open, awake or hibernating. A
//! hibernating box holds its share so that it finds an instance when it
//! wakes; requests and daemons may use every instance no session holds, as
//! far as their wasmtime pool has slots (see `engine`: a node short of
//! address space or memory mappings gives it fewer).
//!
//! The budget is shared by all domains. Without a per-domain cap, one
//! domain's slow requests could take every instance and make every other
//! domain fail. So each domain may run at most `max_running` requests at
//! once; up to `max_waiting` more wait, first come first served, for at
//! most `max_wait`; past that a request is refused at once with [`Busy`],
//! which the edge answers `503` with `Retry-After`. Waiting costs no
//! instance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("the domain already runs {running} requests and {waiting} more are waiting")]
    QueueFull { running: usize, waiting: usize },
    #[error("no instance of the domain came free within {0:?}")]
    WaitedTooLong(Duration),
    #[error("the node has no free instance (limits.maxInstances)")]
    NodeFull,
}

impl Busy {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Busy::QueueFull { .. } => "queue_full",
            Busy::WaitedTooLong(_) => "queue_timeout",
            Busy::NodeFull => "node_full",
        }
    }
}

/// The node's instances, and how many are held (module doc).
#[derive(Debug)]
pub struct InstanceBudget {
    max: usize,
    held: AtomicUsize,
}

/// One instance's share of the [`InstanceBudget`]; given back on drop.
#[derive(Debug)]
pub struct InstanceShare(Arc<InstanceBudget>);

impl InstanceBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(InstanceBudget { max, held: AtomicUsize::new(0) })
    }

    /// Instances the node may have at once (`limits.maxInstances`).
    pub fn max(&self) -> usize {
        self.max
    }

    /// Shares held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// A share, unless every instance is held.
    pub fn take(self: &Arc<Self>) -> Option<InstanceShare> {
        self.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).ok()?;
        Some(InstanceShare(self.clone()))
    }
}

impl Drop for InstanceShare {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many requests of one domain may run and wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    pub max_running: usize,
    pub max_waiting: usize,
    pub max_wait: Duration,
}

/// One domain's request admission.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    slots: Semaphore,
    waiting: AtomicUsize,
}

/// A request's right to an instance; the slot frees when it drops.
pub type Admitted<'a> = SemaphorePermit<'a>;

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission { slots: Semaphore::new(limits.max_running.max(1)), waiting: AtomicUsize::new(0), limits }
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.limits.max_running.max(1) - self.slots.available_permits()
    }

    /// Waits, if there is room in the queue, for a slot.
    pub async fn enter(&self) -> Result<Admitted<'_>, Busy> {
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _queued = Queued(&self.waiting); // leaves the queue however the wait ends
        if waiting >= self.limits.max_waiting {
            return Err(Busy::QueueFull { running: self.running(), waiting });
        }
        match tokio::time::timeout(self.limits.max_wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(Busy::WaitedTooLong(self.limits.max_wait)),
        }
    }
}

struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_running: usize, max_waiting: usize) -> Admission {
        Admission::new(AdmissionLimits { max_running, max_waiting, max_wait: Duration::from_millis(20) })
    }

    #[test]
    fn the_budget_gives_shares_up_to_its_max_and_takes_them_back_on_drop() {
        let budget = InstanceBudget::new(2);
        let first = budget.take().unwrap();
        let second = budget.take().unwrap();
        assert!(budget.take().is_none(), "every instance is held");
        assert_eq!(budget.held(), 2);
        drop(first);
        let third = budget.take().expect("a share came back");
        drop((second, third));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn racing_takers_never_hold_more_than_the_max() {
        let budget = InstanceBudget::new(3);
        let most = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(share) = budget.take() {
                            most.fetch_max(budget.held(), Ordering::AcqRel);
                            drop(share);
                        }
                    }
                });
            }
        });
        assert!(most.load(Ordering::Acquire) <= 3);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn runs_up_to_the_cap_then_queues_then_refuses() {
        let a = admission(2, 1);
        let first = a.enter().await.unwrap();
        let _second = a.enter().await.unwrap();
        assert_eq!(a.running(), 2);
        // The third waits; the fourth finds the queue full at once.
        let third = a.enter();
        tokio::pin!(third);
        assert!(futures_poll_once(third.as_mut()).await.is_none(), "the third request waits");
        assert_eq!(a.enter().await.unwrap_err(), Busy::QueueFull { running: 2, waiting: 1 });
        // A slot frees: the waiter gets it.
        drop(first);
        assert!(third.await.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_max_wait_and_leaves_the_queue() {
        let a = admission(1, 1);
        let _held = a.enter().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(a.enter().await.unwrap_err(), Busy::WaitedTooLong(Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        // The queue is empty again: the next request may wait.
        assert_eq!(a.enter().await.unwrap_err().kind(), "queue_timeout");
    }

    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_queue() {
        let a = admission(1, 1);
        let _held = a.enter().await.unwrap();
        {
            let waiter = a.enter();
            tokio::pin!(waiter);
            assert!(futures_poll_once(waiter.as_mut()).await.is_none());
        } // the client went away
        assert_eq!(a.waiting.load(Ordering::Acquire), 0);
    }

    /// Polls a future once; `None` if it is still pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = Some(f);
        std::future::poll_fn(|cx| {
            let out = std::pin::Pin::new(f.as_mut().unwrap()).poll(cx);
            std::task::Poll::Ready(match out {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }
}
