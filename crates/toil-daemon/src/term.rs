//! One ownership term of a domain's daemon (one fencing token), as a state
//! machine without I/O.
//!
//! The owner task reads the clocks, talks to the log and runs the box;
//! [`OwnerTerm::step`] says what it does next, from the times it is given,
//! the applied state and the log's answers. So the owner's rules (the claim
//! lead, the lease, the grace, the handoff) are tested on a fake clock, as
//! the rules of [`toil_cluster`] are. A round:
//!
//! ```text
//! Plan ─▶ WaitToClaim ─Woke─▶ Claim ─Answered─▶ WaitToFire ─Woke─▶ Fire or Drop
//!                                            ├─▶ AlreadyClaimed (the next round plans from that claim)
//!                                            ├─▶ Retry (the log did not take the claim)
//!                                            └─▶ Stop (the domain moved: the term is over)
//! ```
//!
//! With no task to claim, the wait ends in `Replan`. Whatever cuts a wait
//! to claim short (a manual tick, a redeploy) just starts the next round,
//! which plans afresh.

use std::collections::BTreeMap;
use std::time::Duration;

use toil_cluster::{may_fire, plan_tick, Applied, ClusterState, Command, FireCheck, LogError, Owner, Refused, TickOutcome};
use toil_runtime::daemon::DaemonTask;

use crate::DaemonSettings;

/// How long an owner with nothing to claim waits before planning again.
const IDLE_MS: i64 = 3_600_000;

/// How long after the log failed to take a claim the owner plans again.
const RETRY_MS: i64 = 200;

/// The two clocks an owner reads, read together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// The wall clock, Unix ms: schedules, fire times, the grace.
    pub wall_ms: i64,
    /// The clock leases are measured on: it counts a stopped process and a
    /// suspended machine too ([`toil_cluster::lease`]).
    pub lease: Duration,
}

/// A tick the term plans, claims, and fires or drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The task's index in the running version: what the box fires.
    pub task: u32,
    /// The task's name: what claims are kept by.
    pub name: String,
    pub fire_time: i64,
    /// Earlier ticks of the task skipped to get here (they fell due past the grace).
    pub skipped: u64,
}

/// What happened since the last step.
#[derive(Debug)]
pub enum Event<'a> {
    /// The box runs and nothing is pending: plan from the running version's
    /// tasks and the state applied on this node.
    Plan { tasks: &'a [DaemonTask], state: &'a ClusterState },
    /// The wait the last action asked for is over.
    Woke,
    /// The log's answer to the claim (one not committed in time is [`LogError::Unavailable`]).
    Answered(Result<Applied, LogError>),
}

/// What the owner does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Wait until `until_ms` (wall clock), then step [`Event::Woke`]; a
    /// manual tick or a redeploy meanwhile ends the round.
    WaitToClaim { until_ms: i64 },
    /// Propose this claim and step the log's answer.
    Claim(Command),
    /// The claim was accepted: wait for the tick's fire time (only a stop
    /// cuts it short), then step [`Event::Woke`].
    WaitToFire(Tick),
    /// Start the tick now.
    Fire(Tick),
    /// Never start this claimed tick: its lease or its grace ran out.
    Drop { tick: Tick, why: FireCheck },
    /// The task was already claimed up to `last` (the answer to an earlier
    /// claim was lost, or another term got there first); the next round plans from there.
    AlreadyClaimed { last: i64 },
    /// The log did not take the claim: wait until `until_ms` (only a stop
    /// cuts it short), then plan again.
    Retry { until_ms: i64, error: LogError },
    /// The domain has another owner (`current`): the term is over.
    Stop { current: Option<Owner> },
    /// No task had a tick to claim: plan again.
    Replan,
}

/// Where the term is in its round.
#[derive(Debug)]
enum Phase {
    /// Between rounds: the next event is a plan.
    Idle,
    /// Waiting to claim `tick` (`None`: no task has a next tick).
    Planned(Option<Tick>),
    /// The claim of `tick` left at `sent` (lease clock).
    Claiming { tick: Tick, sent: Duration },
    /// The claim sent at `sent` was accepted; waiting for the fire time.
    Claimed { tick: Tick, sent: Duration },
}

/// One domain's ownership term on this node.
#[derive(Debug)]
pub struct OwnerTerm {
    domain: String,
    owner: Owner,
    grace_ms: i64,
    claim_lead_ms: i64,
    owner_lease: Duration,
    /// Claims this term made or learnt of that the applied state may not
    /// show yet (a follower applies the leader's commits a heartbeat later).
    known_claims: BTreeMap<String, i64>,
    phase: Phase,
}

impl OwnerTerm {
    /// The term `owner` (this node, with its fencing token) starts for `domain`.
    pub fn new(domain: &str, owner: Owner, settings: &DaemonSettings) -> Self {
        OwnerTerm {
            domain: domain.to_string(),
            owner,
            grace_ms: settings.grace.as_millis() as i64,
            claim_lead_ms: settings.claim_lead.as_millis() as i64,
            owner_lease: settings.owner_lease,
            known_claims: BTreeMap::new(),
            phase: Phase::Idle,
        }
    }

    /// How long to wait before starting anything: the previous owner's
    /// lease, when the domain was taken from one ([`toil_cluster::lease`]).
    pub fn handoff(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.owner.handoff_ms)).filter(|d| !d.is_zero())
    }

    pub fn fencing(&self) -> u64 {
        self.owner.fencing
    }

    /// The report of what became of a claimed `tick`.
    pub fn done(&self, tick: &Tick, outcome: TickOutcome) -> Command {
        Command::TickDone { domain: self.domain.clone(), task: tick.name.clone(), fire_time: tick.fire_time, outcome }
    }

    /// What to do next, at `now`, after `event`.
    pub fn step(&mut self, now: Now, event: Event<'_>) -> Action {
        match (std::mem::replace(&mut self.phase, Phase::Idle), event) {
            (_, Event::Plan { tasks, state }) => self.plan(now, tasks, state),
            (Phase::Planned(None), Event::Woke) => Action::Replan,
            (Phase::Planned(Some(tick)), Event::Woke) => {
                let claim = Command::ClaimTick {
                    domain: self.domain.clone(),
                    task: tick.name.clone(),
                    fire_time: tick.fire_time,
                    fencing: self.owner.fencing,
                    skipped: tick.skipped,
                };
                // The lease counts from before the claim leaves: the leader
                // heard from this node no earlier than that.
                self.phase = Phase::Claiming { tick, sent: now.lease };
                Action::Claim(claim)
            }
            (Phase::Claiming { tick, sent }, Event::Answered(answer)) => self.answered(now, tick, sent, answer),
            // Checked last, right before the tick starts: a stall anywhere
            // up to here (the wait included) counts.
            (Phase::Claimed { tick, sent }, Event::Woke) => {
                match may_fire(sent, now.lease, self.owner_lease, now.wall_ms - tick.fire_time, self.grace_ms) {
                    FireCheck::Fire => Action::Fire(tick),
                    why => Action::Drop { tick, why },
                }
            }
            (phase, event) => unreachable!("an owner term got {event:?} while {phase:?}"),
        }
    }

    /// The earliest next tick of the tasks, from the last claims, to be
    /// claimed `claim_lead` before it is due.
    fn plan(&mut self, now: Now, tasks: &[DaemonTask], state: &ClusterState) -> Action {
        let next = tasks
            .iter()
            .filter_map(|t| {
                let last = state.task(&self.domain, &t.name).last_claimed.max(self.known_claims.get(&t.name).copied());
                let plan = plan_tick(&t.schedule, last, now.wall_ms, self.grace_ms)?;
                Some(Tick { task: t.index, name: t.name.clone(), fire_time: plan.fire_time, skipped: plan.skipped })
            })
            .min_by_key(|tick| tick.fire_time);
        let until_ms = next.as_ref().map_or(now.wall_ms + IDLE_MS, |tick| tick.fire_time - self.claim_lead_ms);
        self.phase = Phase::Planned(next);
        Action::WaitToClaim { until_ms }
    }

    fn answered(&mut self, now: Now, tick: Tick, sent: Duration, answer: Result<Applied, LogError>) -> Action {
        match answer {
            Ok(Applied::Claimed) => {
                // The claim is ours; if the domain moves before the fire
                // time the tick is dropped, never fired twice.
                self.known_claims.insert(tick.name.clone(), tick.fire_time);
                self.phase = Phase::Claimed { tick: tick.clone(), sent };
                Action::WaitToFire(tick)
            }
            Ok(Applied::Refused(Refused::NotOwner { current })) => Action::Stop { current },
            Ok(Applied::Refused(Refused::NotNewer { last })) => {
                self.known_claims.insert(tick.name, last);
                Action::AlreadyClaimed { last }
            }
            Ok(other) => unreachable!("a claim applied as {other:?}"),
            Err(error) => Action::Retry { until_ms: now.wall_ms + RETRY_MS, error },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toil_cluster::NodeId;
    use toil_schedule::Schedule;

    const MS: Duration = Duration::from_millis(1);

    /// Default timings: a 1 s grace, a 50 ms claim lead, a 130 ms lease.
    fn settings() -> DaemonSettings {
        DaemonSettings::new(1, "n1")
    }

    fn every_5s() -> Vec<DaemonTask> {
        vec![DaemonTask { index: 0, name: "beat".into(), schedule: Schedule::parse("5s").unwrap() }]
    }

    fn assign(state: &mut ClusterState, node: NodeId, handoff_ms: u64) -> Owner {
        match state.apply(&Command::Assign { domain: "jobs".into(), node, handoff_ms }) {
            Applied::Assigned(owner) => owner,
            other => panic!("{other:?}"),
        }
    }

    /// A fake machine at `wall_ms`, its boot clock reading the same.
    fn at(wall_ms: i64) -> Now {
        Now { wall_ms, lease: Duration::from_millis(wall_ms as u64) }
    }

    fn claim_beat(fire_time: i64, fencing: u64, skipped: u64) -> Command {
        Command::ClaimTick { domain: "jobs".into(), task: "beat".into(), fire_time, fencing, skipped }
    }

    fn beat(fire_time: i64, skipped: u64) -> Tick {
        Tick { task: 0, name: "beat".into(), fire_time, skipped }
    }

    /// Node 1 owned the domain and claimed `claimed`; then node 2 took it
    /// over with a handoff of `handoff_ms`. The state, node 1's ownership
    /// and node 2's term.
    fn taken_over(claimed: i64, handoff_ms: u64) -> (ClusterState, Owner, OwnerTerm) {
        let mut state = ClusterState::default();
        let first = assign(&mut state, 1, 0);
        state.apply(&claim_beat(claimed, first.fencing, 0));
        let term = OwnerTerm::new("jobs", assign(&mut state, 2, handoff_ms), &settings());
        (state, first, term)
    }

    /// Plans at `planned_at` and sends the claim when told to; returns it.
    fn plan_and_claim(term: &mut OwnerTerm, tasks: &[DaemonTask], state: &ClusterState, planned_at: i64) -> Command {
        let Action::WaitToClaim { until_ms } = term.step(at(planned_at), Event::Plan { tasks, state }) else { panic!("no wait to claim") };
        match term.step(at(until_ms.max(planned_at)), Event::Woke) {
            Action::Claim(claim) => claim,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_claimed_tick_fires_at_its_time_and_the_next_round_plans_after_it() {
        let (mut state, tasks) = (ClusterState::default(), every_5s());
        let owner = assign(&mut state, 1, 0);
        let mut term = OwnerTerm::new("jobs", owner, &settings());
        assert_eq!(term.handoff(), None, "a first owner starts at once");
        let plan = term.step(at(12_000), Event::Plan { tasks: &tasks, state: &state });
        assert_eq!(plan, Action::WaitToClaim { until_ms: 14_950 }, "claimed the claim lead ahead of the fire time");
        let claim = term.step(at(14_950), Event::Woke);
        let expected = claim_beat(15_000, owner.fencing, 0);
        assert_eq!(claim, Action::Claim(expected.clone()));
        let lagging = state.clone();
        assert_eq!(term.step(at(14_970), Event::Answered(Ok(state.apply(&expected)))), Action::WaitToFire(beat(15_000, 0)));
        assert_eq!(term.step(at(15_000), Event::Woke), Action::Fire(beat(15_000, 0)));
        assert_eq!(
            term.done(&beat(15_000, 0), TickOutcome::Ran),
            Command::TickDone { domain: "jobs".into(), task: "beat".into(), fire_time: 15_000, outcome: TickOutcome::Ran }
        );
        // This node may not have applied its own claim yet: the term remembers it.
        assert_eq!(term.step(at(15_010), Event::Plan { tasks: &tasks, state: &lagging }), Action::WaitToClaim { until_ms: 19_950 });
    }

    #[test]
    fn a_claim_refused_because_the_domain_moved_ends_the_term() {
        let (mut state, tasks) = (ClusterState::default(), every_5s());
        let mut term = OwnerTerm::new("jobs", assign(&mut state, 1, 0), &settings());
        let claim = plan_and_claim(&mut term, &tasks, &state, 12_000);
        let moved = assign(&mut state, 2, 130);
        assert_eq!(term.step(at(14_990), Event::Answered(Ok(state.apply(&claim)))), Action::Stop { current: Some(moved) });
    }

    #[test]
    fn a_claimed_tick_whose_lease_ran_out_before_its_fire_time_is_dropped() {
        let (mut state, tasks) = (ClusterState::default(), every_5s());
        let mut term = OwnerTerm::new("jobs", assign(&mut state, 1, 0), &settings());
        let claim = plan_and_claim(&mut term, &tasks, &state, 12_000);
        assert_eq!(term.step(at(14_970), Event::Answered(Ok(state.apply(&claim)))), Action::WaitToFire(beat(15_000, 0)));
        // The process stopped after the claim (sent at 14 950) and woke at
        // 15 200: well within the grace, but 120 ms past the 130 ms lease.
        let why = FireCheck::LeaseExpired { over: 120 * MS };
        assert_eq!(term.step(at(15_200), Event::Woke), Action::Drop { tick: beat(15_000, 0), why });
    }

    #[test]
    fn a_domain_taken_from_an_owner_waits_out_its_lease_then_plans_after_its_claims() {
        let (state, first, mut term) = taken_over(15_000, 130);
        assert_eq!(term.handoff(), Some(130 * MS));
        assert_eq!(term.fencing(), first.fencing + 1);
        let tasks = every_5s();
        // After the handoff, the tick the previous owner claimed is not claimed again.
        assert_eq!(plan_and_claim(&mut term, &tasks, &state, 15_140), claim_beat(20_000, term.fencing(), 0));
    }

    #[test]
    fn ticks_past_the_grace_are_skipped_when_planned_and_dropped_when_claimed() {
        // A new owner at 31 200: 15 000 to 30 000 fell due more than the grace ago.
        let ((mut state, _, mut term), tasks) = (taken_over(10_000, 0), every_5s());
        let claim = plan_and_claim(&mut term, &tasks, &state, 31_200);
        assert!(matches!(claim, Command::ClaimTick { fire_time: 35_000, skipped: 4, .. }), "{claim:?}");
        assert_eq!(term.step(at(34_960), Event::Answered(Ok(state.apply(&claim)))), Action::WaitToFire(beat(35_000, 4)));
        // The wall clock stepped 1.1 s ahead while the lease still holds: too late.
        let woke = Now { wall_ms: 36_100, lease: 34_990 * MS };
        assert_eq!(term.step(woke, Event::Woke), Action::Drop { tick: beat(35_000, 4), why: FireCheck::TooLate { late_ms: 1100 } });
    }

    #[test]
    fn a_claim_whose_answer_was_lost_is_retried_then_found_already_claimed() {
        let (mut state, tasks) = (ClusterState::default(), every_5s());
        let owner = assign(&mut state, 1, 0);
        state.apply(&claim_beat(10_000, owner.fencing, 0));
        let mut term = OwnerTerm::new("jobs", owner, &settings());
        let claim = plan_and_claim(&mut term, &tasks, &state, 12_000);
        let lagging = state.clone();
        state.apply(&claim);
        // Committed, but the answer was lost on its way back.
        let lost = LogError::Unavailable("forwarding to the leader: it did not answer".into());
        assert_eq!(term.step(at(14_990), Event::Answered(Err(lost.clone()))), Action::Retry { until_ms: 15_190, error: lost });
        // The next round, on a state that lags, claims the same tick again
        // (within the grace): refused, and remembered.
        let again = plan_and_claim(&mut term, &tasks, &lagging, 15_190);
        assert_eq!(again, claim);
        assert_eq!(term.step(at(15_200), Event::Answered(Ok(state.apply(&again)))), Action::AlreadyClaimed { last: 15_000 });
        assert_eq!(term.step(at(15_210), Event::Plan { tasks: &tasks, state: &lagging }), Action::WaitToClaim { until_ms: 19_950 });
    }

    #[test]
    fn an_owner_without_tasks_plans_again_an_hour_later() {
        let mut state = ClusterState::default();
        let mut term = OwnerTerm::new("jobs", assign(&mut state, 1, 0), &settings());
        assert_eq!(term.step(at(1_000), Event::Plan { tasks: &[], state: &state }), Action::WaitToClaim { until_ms: 3_601_000 });
        assert_eq!(term.step(at(3_601_000), Event::Woke), Action::Replan);
    }
}
