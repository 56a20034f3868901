//! Ownership leases: why an owner that stalls never fires after its domain
//! has moved.
//!
//! Fencing tokens refuse a stale owner's *claims*. They cannot stop an owner
//! whose claim was accepted and which then stalls (a stop signal, a VM
//! pause, a swapped-out process) past the moment its domain moves: on
//! waking it would fire the tick it had claimed, late, while the new owner
//! runs. So an accepted claim is also a short **lease**, and both the owner
//! and whoever takes over keep to it.
//!
//! - **The owner** fires a tick whose claim it sent at `sent` only if,
//!   just before the tick starts, `now < sent + owner_lease` on a clock
//!   that keeps counting while the process or the machine is stopped, and
//!   the tick is at most `grace` late by the wall clock ([`may_fire`]).
//!   Otherwise the tick is dropped and counted, never fired.
//! - **Every assignment that takes a domain from an owner** (a failover, a
//!   spreading move, a removal) carries a handoff of `owner_lease`: the new
//!   owner starts nothing until that long after it applied the assignment.
//!
//! ## Why that is enough
//!
//! Let the old owner O send a claim at `s`, accepted. The log orders it
//! before the assignment that moves the domain (a claim ordered after it
//! carries the old token and is refused). So, in real time: O sent the
//! claim at `s`; the leader appended it, later; it appended the assignment,
//! later still; the new owner applied the assignment, later again, and
//! starts no earlier than `owner_lease` after that, when every lease of O
//! (`s + owner_lease` at most) is over. That uses nothing but the log's
//! order and the two clocks running at the same rate (the margin below
//! covers drift): not the liveness view, not raft's timing, not which node
//! leads, and it survives restarts of any of them.
//!
//! Liveness (`owner_timeout`, [`is_silent`]) decides *when* a domain
//! moves, not whether two owners can overlap. The lease is added to every
//! move, so it is kept short: [`LeaseTiming::owner_lease`] is the lesser of
//! the owner timeout and the raft lease, less a heartbeat (130 ms by
//! default); a claim must fit under it (`claim_lead + heartbeat`, which the
//! config checks), or ticks are dropped. The owner's check uses the
//! boot-time clock, which counts a suspended machine too.
//!
//! What a lease cannot do: stop a tick that had already *started* before
//! the stall. It resumes when the process does, bounded by the tick
//! deadline. A task whose effects must never overlap a successor's passes
//! its fencing token (given to `daemon_start`) to whatever it writes to.

use std::time::{Duration, Instant};

/// The timings the lease rule is derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    pub heartbeat: Duration,
    /// Raft's minimum election timeout (elections start after a random
    /// silence in `[election_timeout, 2 × election_timeout)` past the lease).
    pub election_timeout: Duration,
    /// A member not heard from for this long is dead for placement.
    pub owner_timeout: Duration,
}

impl LeaseTiming {
    /// How long after hearing a leader a node grants no vote and starts no
    /// election (openraft's leader lease: the maximum election timeout).
    pub fn raft_lease(&self) -> Duration {
        2 * self.election_timeout
    }

    /// How long an accepted claim lets its owner fire, from the claim's sending.
    pub fn owner_lease(&self) -> Duration {
        self.owner_timeout.min(self.raft_lease()).saturating_sub(self.heartbeat)
    }
}

/// What the owner does with a claimed tick when its fire time comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FireCheck {
    Fire,
    /// The lease ran out `over` ago: the domain may have moved; dropped.
    LeaseExpired {
        over: Duration,
    },
    /// The tick is `late_ms` past its time, more than the grace; dropped.
    TooLate {
        late_ms: i64,
    },
}

/// Whether a tick claimed with a request sent at `sent` may start at `now`
/// (both on the boot-time clock), `late_ms` after its scheduled time.
pub fn may_fire(sent: Duration, now: Duration, lease: Duration, late_ms: i64, grace_ms: i64) -> FireCheck {
    let expires = sent + lease;
    if now >= expires {
        return FireCheck::LeaseExpired { over: now - expires };
    }
    if late_ms > grace_ms {
        return FireCheck::TooLate { late_ms };
    }
    FireCheck::Fire
}

/// Whether the leader takes a member for dead at `now`: nothing heard from
/// it for `owner_timeout`, and the members had `answer_grace` since this
/// node began leading to answer its first heartbeats (a new leader's stamps
/// of followers it never talked to are stale).
pub fn is_silent(now: Instant, heard: Option<Instant>, leading_since: Instant, answer_grace: Duration, owner_timeout: Duration) -> bool {
    if now.saturating_duration_since(leading_since) < answer_grace {
        return false;
    }
    heard.is_none_or(|h| now.saturating_duration_since(h) >= owner_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn defaults() -> LeaseTiming {
        LeaseTiming { heartbeat: 30 * MS, election_timeout: 80 * MS, owner_timeout: 300 * MS }
    }

    #[test]
    fn the_lease_is_shorter_than_both_ways_a_domain_can_move() {
        let t = defaults();
        assert_eq!(t.raft_lease(), 160 * MS);
        assert_eq!(t.owner_lease(), 130 * MS, "bounded by the raft lease, less a heartbeat");
        let slow_raft = LeaseTiming { election_timeout: 500 * MS, ..t };
        assert_eq!(slow_raft.owner_lease(), 270 * MS, "bounded by the owner timeout, less a heartbeat");
    }

    #[test]
    fn a_claim_fires_inside_its_lease_and_grace_only() {
        let lease = 130 * MS;
        let sent = Duration::from_secs(1000);
        assert_eq!(may_fire(sent, sent + 50 * MS, lease, 2, 1000), FireCheck::Fire);
        // Stopped between the claim and the fire time, past the lease: dropped,
        // however little late the tick still looks by the wall clock.
        assert_eq!(may_fire(sent, sent + 900 * MS, lease, 0, 1000), FireCheck::LeaseExpired { over: 770 * MS });
        assert_eq!(may_fire(sent, sent + lease, lease, 0, 1000), FireCheck::LeaseExpired { over: Duration::ZERO });
        // A short stall inside the lease fires; a wall clock far past the grace does not.
        assert_eq!(may_fire(sent, sent + 120 * MS, lease, 1001, 1000), FireCheck::TooLate { late_ms: 1001 });
    }

    #[test]
    fn the_leader_waits_for_silence_and_gives_a_new_term_time_to_hear() {
        let t = defaults();
        let t0 = Instant::now();
        let grace = t.heartbeat;
        // Leading for a while: dead exactly after owner_timeout of silence.
        let leading = t0;
        let heard = Some(t0 + Duration::from_secs(1));
        assert!(!is_silent(t0 + Duration::from_secs(1) + 299 * MS, heard, leading, grace, t.owner_timeout));
        assert!(is_silent(t0 + Duration::from_secs(1) + 300 * MS, heard, leading, grace, t.owner_timeout));
        // Just elected, stamps ancient or missing: not before its first heartbeats were answered.
        let elected = t0 + Duration::from_secs(5);
        assert!(!is_silent(elected + 10 * MS, None, elected, grace, t.owner_timeout));
        assert!(!is_silent(elected + 10 * MS, heard, elected, grace, t.owner_timeout));
        assert!(is_silent(elected + grace, None, elected, grace, t.owner_timeout));
        assert!(!is_silent(elected + grace, Some(elected + 20 * MS), elected, grace, t.owner_timeout), "it answered");
    }
}
