//! The cluster's replicated state and its rules, without I/O.
//!
//! The L4 daemon tier runs one box per domain across the cluster and fires
//! each scheduled tick at most once, through failovers and partitions. The
//! rules that make that true live here, as plain data:
//!
//! - [`ClusterState::apply`] is what every node runs for each command the
//!   consensus log commits (openraft replicates the [`Command`]s; the next
//!   increment wires it). Each domain has an [`Owner`] with a **fencing
//!   token** that grows with every reassignment. A tick fires only after
//!   its [`Command::ClaimTick`] is applied and accepted: it must carry the
//!   current owner's token and a fire time newer than the last claim of
//!   that task. A partitioned ex-owner still believes it owns the domain,
//!   but its claims carry an old token and are refused, so nothing it would
//!   fire is ever allowed.
//! - [`place`] decides which live node owns each domain, spreading owners
//!   rather than piling them on one node.
//! - [`plan_tick`] tells an owner which tick to claim next and how many it
//!   skips: ticks that fell due while no one owned the domain are counted,
//!   never replayed.
//! - [`lease`]: an accepted claim is also a short lease; the rule that keeps
//!   an owner that stalled after its claim from firing once its domain
//!   moved, and its proof sketch.
//!
//! - [`releases`]: which version of each domain is deployed, and its
//!   history. [`Command::Deploy`] adds a version, [`Command::Activate`]
//!   rolls back or forward, and each node reports what it serves with
//!   [`Command::Served`].
//! - [`tls`]: the certificates of the hosts the cluster serves (ACME): one
//!   order per host at a time, back-off after failures, the issued
//!   certificate (its key sealed) for every node to serve.
//! - [`log`]: the log itself as a node's tiers use it ([`ClaimLog`]:
//!   propose, read the applied state, hear of changes), and the one-node
//!   [`LocalLog`] of `toil dev`.
//!
//! Everything takes the time as an argument, so tests run on a fake clock;
//! [`now_ms`] is the one wall clock the callers read.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toil_schedule::Schedule;

pub mod lease;
pub mod log;
pub mod releases;
pub mod tls;
pub use lease::{may_fire, FireCheck, LeaseTiming};
pub use log::{ClaimLog, LocalLog, LogError};
pub use releases::{BlobRef, DomainReleases, Release, ReleaseSpec};
pub use tls::{Backoff, Challenge, HostCert, IssuedCert, TlsState};

/// A node's id in the cluster.
pub type NodeId = u64;

/// The wall clock, in the unit of every time in the state (fire times,
/// deploy times): Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A domain's daemon owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub node: NodeId,
    /// Grows with every assignment of any domain; a claim must carry it.
    pub fencing: u64,
    /// How long the new owner waits before starting the daemon: the
    /// previous owner's lease when it was alive (see [`lease`]); 0 after a failover.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handoff_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A command of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Makes `node` the owner of `domain`'s daemon, with a new fencing
    /// token; it starts the daemon `handoff_ms` after applying this.
    Assign {
        domain: String,
        node: NodeId,
        #[serde(default, skip_serializing_if = "is_zero")]
        handoff_ms: u64,
    },
    /// Asks to fire tick `fire_time` (Unix ms) of the task named `task`;
    /// `skipped` is how many earlier ticks the owner skipped to get here.
    /// Claims are kept by task name, so a redeploy that reorders a daemon's
    /// tasks keeps each task's last claim.
    ClaimTick { domain: String, task: String, fire_time: i64, fencing: u64, skipped: u64 },
    /// Deploys a new version of `domain` and serves it. With `only_if_new`
    /// it applies only to a domain with no release yet (nodes offering their
    /// configured apps at start). A release with the same content as the
    /// one served changes nothing.
    Deploy { domain: String, release: ReleaseSpec, only_if_new: bool },
    /// Serves an earlier (or later) version of `domain` from its history;
    /// with `from`, only if `from` is the version served (a rollback to
    /// "the previous one" must not act on a state that moved on).
    Activate { domain: String, version: u64, from: Option<u64> },
    /// `node` now serves `version` of `domain` (0: the node stopped serving it).
    Served { node: NodeId, domain: String, version: u64 },
    /// The owner reports what became of a claimed tick, after the fact (a
    /// report, not a permission: the claim alone decided whether it ran).
    TickDone { domain: String, task: String, fire_time: i64, outcome: TickOutcome },
    /// `node` asks to order `host`'s certificate ([`tls`]).
    CertOrder { host: String, node: NodeId, now_ms: i64, renew_before_ms: i64 },
    /// The order `cert.order` for `host` succeeded.
    CertIssued { host: String, cert: IssuedCert },
    /// The order `order` for `host` failed with `error`.
    CertFailed { host: String, order: u64, error: String, now_ms: i64, backoff: Backoff },
    /// Order `host`'s certificate again at the next check.
    CertRenew { host: String },
    /// Every node answers the CA's challenge `token` of order `order`.
    AcmeChallenge { token: String, order: u64, challenge: Challenge },
    /// The cluster's ACME account at `directory`, sealed.
    AcmeAccount { directory: String, sealed: String },
}

/// What became of a claimed tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TickOutcome {
    /// It ran to completion.
    Ran,
    /// It started and faulted (trap, deadline, memory).
    Failed,
    /// It never started: its lease or its grace ran out first.
    Dropped,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Assign { domain, node, handoff_ms: 0 } => write!(f, "assign {domain} to node {node}"),
            Command::Assign { domain, node, handoff_ms } => write!(f, "assign {domain} to node {node} after a {handoff_ms} ms handoff"),
            Command::ClaimTick { domain, task, fire_time, fencing, skipped } => {
                write!(f, "claim {domain} task {task} tick {fire_time} (fencing {fencing}, skipped {skipped})")
            }
            Command::Deploy { domain, release, only_if_new } => {
                let n = release.blobs().count();
                write!(
                    f,
                    "deploy {domain} ({n} artifact(s) from node {}, {}{})",
                    release.origin,
                    release.source,
                    if *only_if_new { ", if new" } else { "" }
                )
            }
            Command::Activate { domain, version, .. } => write!(f, "activate {domain} version {version}"),
            Command::Served { node, domain, version } => write!(f, "node {node} serves {domain} version {version}"),
            Command::TickDone { domain, task, fire_time, outcome } => write!(f, "{domain} task {task} tick {fire_time}: {outcome:?}"),
            Command::CertOrder { host, node, .. } => write!(f, "node {node} orders a certificate for {host}"),
            Command::CertIssued { host, cert } => write!(f, "certificate for {host} issued (order {})", cert.order),
            Command::CertFailed { host, order, error, .. } => write!(f, "certificate order {order} for {host} failed: {error}"),
            Command::CertRenew { host } => write!(f, "renew the certificate for {host}"),
            Command::AcmeChallenge { token, order, challenge } => write!(f, "ACME challenge {token} for {} (order {order})", challenge.host),
            Command::AcmeAccount { directory, .. } => write!(f, "ACME account at {directory}"),
        }
    }
}

/// What applying a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Assigned(Owner),
    /// The claim is accepted: the owner may fire the tick, once.
    Claimed,
    /// `version` of the domain is now the one served; `unchanged` when the
    /// deploy repeated what was already served (or `only_if_new` found a release).
    Deployed {
        version: u64,
        unchanged: bool,
    },
    /// A report or other bookkeeping was recorded.
    Recorded,
    /// The node that proposed [`Command::CertOrder`] orders; `order` names the claim.
    OrderClaimed {
        order: u64,
    },
    Refused(Refused),
}

/// Why a claim was refused (the tick must not fire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refused {
    /// The claim's token is not the current owner's (a stale or partitioned owner).
    NotOwner { current: Option<Owner> },
    /// A tick at or after this fire time was already claimed.
    NotNewer { last: i64 },
    /// The domain has no release with this version (never deployed, or dropped from the history).
    UnknownVersion { domain: String, version: u64 },
    /// A host name of the release is served by another domain.
    HostTaken { host: String, domain: String },
    /// The served version is not the one the command was made against.
    ActiveChanged { active: u64 },
    /// Another order for the host is under way, by `node`.
    OrderUnderWay { node: NodeId },
    /// The host's certificate is not due for renewal.
    NotDue,
    /// The host's last failures hold new orders back until then (Unix ms).
    BackingOff { until_ms: i64 },
    /// The order named is not the host's current claim (it timed out and another took over).
    StaleOrder,
}

/// Per task: the last claimed fire time and counters.
///
/// `claimed` counts the claims accepted: the most ticks that can have run.
/// `ran`, `failed` and `dropped` count what owners reported afterwards; a
/// claim with no report is a tick whose owner died or was cut off before
/// reporting (it may or may not have run, and never twice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub last_claimed: Option<i64>,
    #[serde(alias = "fired")]
    pub claimed: u64,
    pub skipped: u64,
    #[serde(default)]
    pub ran: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub dropped: u64,
}

/// The replicated state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    owners: BTreeMap<String, Owner>,
    #[serde(with = "task_list")]
    tasks: BTreeMap<(String, String), TaskRecord>,
    last_fencing: u64,
    /// Deployed releases by domain.
    #[serde(default)]
    releases: BTreeMap<String, DomainReleases>,
    /// What each node reported serving: node → domain → version.
    #[serde(default)]
    served: BTreeMap<NodeId, BTreeMap<String, u64>>,
    /// The hosts' certificates (ACME).
    #[serde(default)]
    tls: TlsState,
}

impl ClusterState {
    /// Applies one committed command. Deterministic: every node reaches the
    /// same state from the same log.
    pub fn apply(&mut self, command: &Command) -> Applied {
        match command {
            Command::Assign { domain, node, handoff_ms } => {
                self.last_fencing += 1;
                let owner = Owner { node: *node, fencing: self.last_fencing, handoff_ms: *handoff_ms };
                self.owners.insert(domain.clone(), owner);
                Applied::Assigned(owner)
            }
            Command::ClaimTick { domain, task, fire_time, fencing, skipped } => {
                let current = self.owners.get(domain).copied();
                if current.map(|o| o.fencing) != Some(*fencing) {
                    return Applied::Refused(Refused::NotOwner { current });
                }
                let record = self.tasks.entry((domain.clone(), task.clone())).or_default();
                if let Some(last) = record.last_claimed.filter(|last| fire_time <= last) {
                    return Applied::Refused(Refused::NotNewer { last });
                }
                record.last_claimed = Some(*fire_time);
                record.claimed += 1;
                record.skipped += skipped;
                Applied::Claimed
            }
            Command::Deploy { domain, release, only_if_new } => {
                if let Some((host, other)) = self.host_conflict(domain, &release.hosts) {
                    return Applied::Refused(Refused::HostTaken { host, domain: other });
                }
                let history = self.releases.entry(domain.clone()).or_default();
                match history.active() {
                    Some(active) if *only_if_new || active.spec.same_content(release) => {
                        Applied::Deployed { version: active.version, unchanged: true }
                    }
                    _ => Applied::Deployed { version: history.push(release.clone()), unchanged: false },
                }
            }
            Command::Activate { domain, version, from } => {
                let Some(hosts) = self.releases.get(domain).and_then(|h| h.get(*version)).map(|r| r.spec.hosts.clone()) else {
                    return Applied::Refused(Refused::UnknownVersion { domain: domain.clone(), version: *version });
                };
                if let Some((host, other)) = self.host_conflict(domain, &hosts) {
                    return Applied::Refused(Refused::HostTaken { host, domain: other });
                }
                let history = self.releases.get_mut(domain).expect("found above");
                if from.is_some_and(|f| f != history.active) {
                    return Applied::Refused(Refused::ActiveChanged { active: history.active });
                }
                let unchanged = history.active == *version;
                history.active = *version;
                Applied::Deployed { version: *version, unchanged }
            }
            Command::TickDone { domain, task, fire_time, outcome } => {
                // Only a claimed tick has an outcome to count.
                let Some(record) = self.tasks.get_mut(&(domain.clone(), task.clone())).filter(|r| r.last_claimed >= Some(*fire_time)) else {
                    return Applied::Recorded;
                };
                *match outcome {
                    TickOutcome::Ran => &mut record.ran,
                    TickOutcome::Failed => &mut record.failed,
                    TickOutcome::Dropped => &mut record.dropped,
                } += 1;
                Applied::Recorded
            }
            Command::CertOrder { host, node, now_ms, renew_before_ms } => self.tls.order(host, *node, *now_ms, *renew_before_ms),
            Command::CertIssued { host, cert } => self.tls.issued(host, cert),
            Command::CertFailed { host, order, error, now_ms, backoff } => self.tls.failed(host, *order, error, *now_ms, *backoff),
            Command::CertRenew { host } => self.tls.renew(host),
            Command::AcmeChallenge { token, order, challenge } => self.tls.add_challenge(token, *order, challenge),
            Command::AcmeAccount { directory, sealed } => self.tls.set_account(directory, sealed),
            Command::Served { node, domain, version } => {
                let by_domain = self.served.entry(*node).or_default();
                if *version == 0 {
                    by_domain.remove(domain);
                } else {
                    by_domain.insert(domain.clone(), *version);
                }
                Applied::Recorded
            }
        }
    }

    /// A host of `hosts` that a domain other than `domain` serves, and that domain.
    pub fn host_conflict(&self, domain: &str, hosts: &[String]) -> Option<(String, String)> {
        self.releases.iter().filter(|(d, _)| *d != domain).find_map(|(d, h)| {
            let active = h.active()?;
            hosts.iter().find(|host| active.spec.hosts.contains(host)).map(|host| (host.clone(), d.clone()))
        })
    }

    /// Every domain with a release, and its history.
    pub fn releases(&self) -> &BTreeMap<String, DomainReleases> {
        &self.releases
    }

    /// The release the cluster serves for `domain`.
    pub fn active_release(&self, domain: &str) -> Option<&Release> {
        self.releases.get(domain).and_then(DomainReleases::active)
    }

    /// Domains whose served release has a daemon: the ones that need an owner.
    pub fn daemon_domains(&self) -> Vec<String> {
        self.releases.iter().filter(|(_, h)| h.active().is_some_and(|r| r.spec.daemon.is_some())).map(|(d, _)| d.clone()).collect()
    }

    /// What each node reported serving: node → domain → version.
    pub fn served(&self) -> &BTreeMap<NodeId, BTreeMap<String, u64>> {
        &self.served
    }

    /// The hosts' certificates, orders and challenges.
    pub fn tls(&self) -> &TlsState {
        &self.tls
    }

    /// Every host name the served releases name.
    pub fn served_hosts(&self) -> impl Iterator<Item = &str> {
        self.releases.values().filter_map(DomainReleases::active).flat_map(|r| r.spec.hosts.iter().map(String::as_str))
    }

    pub fn owner(&self, domain: &str) -> Option<Owner> {
        self.owners.get(domain).copied()
    }

    pub fn owners(&self) -> &BTreeMap<String, Owner> {
        &self.owners
    }

    /// Every task with a claim: (domain, task name, record).
    pub fn tasks(&self) -> impl Iterator<Item = (&str, &str, &TaskRecord)> {
        self.tasks.iter().map(|((d, t), r)| (d.as_str(), t.as_str(), r))
    }

    pub fn task(&self, domain: &str, task: &str) -> TaskRecord {
        self.tasks.get(&(domain.to_string(), task.to_string())).copied().unwrap_or_default()
    }
}

/// JSON maps need string keys: the task table travels as a list.
mod task_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tasks: &BTreeMap<(String, String), TaskRecord>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(tasks.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<(String, String), TaskRecord>, D::Error> {
        Ok(Vec::<((String, String), TaskRecord)>::deserialize(d)?.into_iter().collect())
    }
}

/// The assignments that give every domain a live owner, and spread them:
///
/// - domains whose owner is live keep it; the others go, one at a time, to
///   the live node owning the fewest domains. Among equally loaded nodes
///   `avoid` (the raft leader, which already carries the log) comes last,
///   then the lowest id;
/// - then, if one live node owns two or more domains more than another (a
///   cluster that grew from one node placed everything on it), one domain
///   moves from the most to the least loaded node. One move per call keeps
///   handoffs gradual; the caller calls again.
///
/// Every assignment that takes a domain from an owner carries a handoff of
/// `handoff` (the owner lease, see [`lease`]); a first assignment has none.
pub fn place(domains: &[String], live: &[NodeId], owners: &BTreeMap<String, Owner>, avoid: Option<NodeId>, handoff: Duration) -> Vec<Command> {
    if live.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<NodeId, usize> = live.iter().map(|n| (*n, 0)).collect();
    for d in domains {
        if let Some(o) = owners.get(d).filter(|o| load.contains_key(&o.node)) {
            *load.get_mut(&o.node).expect("live") += 1;
        }
    }
    let least_loaded = |load: &BTreeMap<NodeId, usize>| *load.iter().min_by_key(|(n, l)| (**l, Some(**n) == avoid, **n)).expect("a live node").0;
    let mut out = Vec::new();
    for d in domains {
        if owners.get(d).is_some_and(|o| live.contains(&o.node)) {
            continue;
        }
        let node = least_loaded(&load);
        *load.get_mut(&node).expect("live") += 1;
        let handoff_ms = if owners.contains_key(d) { handoff.as_millis() as u64 } else { 0 };
        out.push(Command::Assign { domain: d.clone(), node, handoff_ms });
    }
    if out.is_empty() {
        let most = *load.iter().max_by_key(|(n, l)| (**l, Some(**n) == avoid, std::cmp::Reverse(**n))).expect("a live node").0;
        let least = least_loaded(&load);
        if load[&most] >= load[&least] + 2 {
            let moving = domains.iter().rev().find(|d| owners.get(*d).is_some_and(|o| o.node == most));
            let handoff_ms = handoff.as_millis() as u64;
            out.extend(moving.map(|d| Command::Assign { domain: d.clone(), node: least, handoff_ms }));
        }
    }
    out
}

/// The next tick an owner should claim, and how many it skips to get there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TickPlan {
    pub fire_time: i64,
    pub skipped: u64,
}

/// Most skipped ticks counted one by one; a longer gap is counted as this.
pub const MAX_COUNTED_SKIPS: usize = 100_000;

/// Plans the next tick of a task at time `now`: the first fire time after
/// the last claim, unless ticks fell due more than `grace_ms` ago (the
/// domain was unowned, or its owner stalled) — those are skipped and
/// counted, and the plan is the first tick not yet too late.
pub fn plan_tick(schedule: &Schedule, last_claimed: Option<i64>, now: i64, grace_ms: i64) -> Option<TickPlan> {
    let too_late = now - grace_ms;
    let Some(last) = last_claimed else {
        // A task never claimed starts with its next tick: nothing was missed.
        return schedule.next_after(now - 1).map(|fire_time| TickPlan { fire_time, skipped: 0 });
    };
    let missed = schedule.between(last, too_late - 1, MAX_COUNTED_SKIPS).len() as u64;
    let fire_time = schedule.next_after(last.max(too_late - 1))?;
    Some(TickPlan { fire_time, skipped: missed })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDOFF: Duration = Duration::from_millis(130);

    fn assign(domain: &str, node: NodeId) -> Command {
        Command::Assign { domain: domain.into(), node, handoff_ms: 0 }
    }

    fn claim(domain: &str, task: &str, fire_time: i64, fencing: u64) -> Command {
        Command::ClaimTick { domain: domain.into(), task: task.into(), fire_time, fencing, skipped: 0 }
    }

    #[test]
    fn only_the_current_owner_claims_and_only_newer_ticks() {
        let mut s = ClusterState::default();
        let a = match s.apply(&assign("jobs", 1)) {
            Applied::Assigned(o) => o,
            other => panic!("{other:?}"),
        };
        assert_eq!(s.apply(&claim("jobs", "t0", 5000, a.fencing)), Applied::Claimed);
        assert_eq!(s.apply(&claim("jobs", "t0", 5000, a.fencing)), Applied::Refused(Refused::NotNewer { last: 5000 }));
        assert_eq!(s.apply(&claim("jobs", "t0", 4000, a.fencing)), Applied::Refused(Refused::NotNewer { last: 5000 }));
        assert_eq!(s.apply(&claim("jobs", "t1", 4000, a.fencing)), Applied::Claimed, "tasks are independent");
        assert!(matches!(s.apply(&claim("other", "t0", 1, a.fencing)), Applied::Refused(Refused::NotOwner { current: None })));

        // Failover: node 2 takes over; node 1, partitioned, keeps trying.
        let b = match s.apply(&assign("jobs", 2)) {
            Applied::Assigned(o) => o,
            other => panic!("{other:?}"),
        };
        assert!(b.fencing > a.fencing);
        assert_eq!(s.apply(&claim("jobs", "t0", 10_000, a.fencing)), Applied::Refused(Refused::NotOwner { current: Some(b) }));
        assert_eq!(s.apply(&claim("jobs", "t0", 10_000, b.fencing)), Applied::Claimed);
        assert_eq!(s.task("jobs", "t0"), TaskRecord { last_claimed: Some(10_000), claimed: 2, ..Default::default() });
        // Outcomes are counted apart from claims, and only for claimed ticks.
        let done = |fire_time, outcome| Command::TickDone { domain: "jobs".into(), task: "t0".into(), fire_time, outcome };
        for c in [done(5000, TickOutcome::Ran), done(10_000, TickOutcome::Dropped), done(20_000, TickOutcome::Ran)] {
            assert_eq!(s.apply(&c), Applied::Recorded);
        }
        assert!(matches!(s.apply(&done(1, TickOutcome::Failed)), Applied::Recorded));
        let r = s.task("jobs", "t0");
        assert_eq!((r.claimed, r.ran, r.dropped, r.failed), (2, 1, 1, 1), "the report for an unclaimed tick (20 000) is ignored");
        let old: TaskRecord = serde_json::from_str(r#"{"last_claimed": 5, "fired": 7, "skipped": 1}"#).unwrap();
        assert_eq!(old.claimed, 7, "state written before the split still reads");
    }

    /// Replaying the same log gives the same state (what every node does).
    #[test]
    fn apply_is_deterministic() {
        let log = [assign("a", 1), claim("a", "t0", 1000, 1), assign("a", 3), claim("a", "t0", 2000, 1), claim("a", "t0", 3000, 2)];
        let run = || {
            let mut s = ClusterState::default();
            let results: Vec<Applied> = log.iter().map(|c| s.apply(c)).collect();
            (s, results)
        };
        assert_eq!(run(), run());
        assert_eq!(run().0.task("a", "t0").claimed, 2);
    }

    #[test]
    fn placement_spreads_owners_and_moves_only_orphans() {
        let domains: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let mut s = ClusterState::default();
        for cmd in place(&domains, &[1, 2, 3], s.owners(), None, HANDOFF) {
            s.apply(&cmd);
        }
        let per_node = |s: &ClusterState, n| s.owners().values().filter(|o| o.node == n).count();
        assert_eq!([per_node(&s, 1), per_node(&s, 2), per_node(&s, 3)], [2, 2, 1]);
        assert!(place(&domains, &[1, 2, 3], s.owners(), None, HANDOFF).is_empty(), "a stable cluster moves nothing");
        // Node 1 dies: only its domains move, to the least loaded.
        let moves = place(&domains, &[2, 3], s.owners(), None, HANDOFF);
        assert_eq!(moves.len(), 2);
        assert!(
            moves.iter().all(|m| matches!(m, Command::Assign { handoff_ms: 130, .. })),
            "an owner taken for dead may only be stalled: its last lease runs out first"
        );
        for cmd in &moves {
            s.apply(cmd);
        }
        // a and d were node 1's: a to node 3 (one domain), then d to node 2 (tie, lower id).
        assert_eq!([per_node(&s, 1), per_node(&s, 2), per_node(&s, 3)], [0, 3, 2]);
        assert!(place(&domains, &[], s.owners(), None, HANDOFF).is_empty());
    }

    #[test]
    fn placement_spreads_a_cluster_that_grew_from_one_node() {
        let domains: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let mut s = ClusterState::default();
        for cmd in place(&domains, &[1], s.owners(), Some(1), HANDOFF) {
            s.apply(&cmd);
        }
        assert!(s.owners().values().all(|o| o.node == 1), "one node owns everything");
        // Nodes 2 and 3 join: one move per round until no node owns two more than another.
        let mut rounds = 0;
        loop {
            let moves = place(&domains, &[1, 2, 3], s.owners(), Some(1), HANDOFF);
            if moves.is_empty() {
                break;
            }
            assert_eq!(moves.len(), 1);
            assert!(matches!(&moves[0], Command::Assign { handoff_ms: 130, .. }), "a move waits out the owner's lease");
            for cmd in &moves {
                s.apply(cmd);
            }
            rounds += 1;
        }
        let per_node = |n| s.owners().values().filter(|o| o.node == n).count();
        assert_eq!([per_node(1), per_node(2), per_node(3)], [2, 1, 1]);
        assert_eq!(rounds, 2);
        // One domain per node at most one apart: stable.
        let one = vec!["jobs".to_string()];
        let mut t = ClusterState::default();
        t.apply(&assign("jobs", 1));
        assert!(place(&one, &[1, 2, 3], t.owners(), Some(1), HANDOFF).is_empty(), "a live owner keeps a lone domain");
    }

    #[test]
    fn placement_puts_the_leader_last_among_equals() {
        let one = vec!["jobs".to_string()];
        assert_eq!(place(&one, &[1, 2, 3], &BTreeMap::new(), Some(1), HANDOFF), vec![assign("jobs", 2)]);
        assert_eq!(place(&one, &[1], &BTreeMap::new(), Some(1), HANDOFF), vec![assign("jobs", 1)]);
    }

    fn release(request_sha: &str) -> ReleaseSpec {
        ReleaseSpec {
            hosts: vec!["a.localhost".into()],
            timezone: "UTC".into(),
            request: Some(BlobRef { sha256: request_sha.into(), size: 10 }),
            stream: None,
            daemon: None,
            origin: 1,
            deployed_at_ms: 0,
            source: "test".into(),
        }
    }

    #[test]
    fn deploys_number_versions_and_rollback_picks_from_history() {
        let mut s = ClusterState::default();
        let deploy =
            |s: &mut ClusterState, sha: &str, only_if_new| s.apply(&Command::Deploy { domain: "a".into(), release: release(sha), only_if_new });
        assert_eq!(deploy(&mut s, "v1", true), Applied::Deployed { version: 1, unchanged: false });
        assert_eq!(deploy(&mut s, "other", true), Applied::Deployed { version: 1, unchanged: true }, "a seed never replaces a release");
        assert_eq!(deploy(&mut s, "v1", false), Applied::Deployed { version: 1, unchanged: true }, "same content, same version");
        assert_eq!(deploy(&mut s, "v2", false), Applied::Deployed { version: 2, unchanged: false });
        assert_eq!(s.active_release("a").unwrap().spec.request.as_ref().unwrap().sha256, "v2");
        assert_eq!(s.releases()["a"].previous().unwrap().version, 1);
        assert_eq!(s.apply(&Command::Activate { domain: "a".into(), version: 1, from: None }), Applied::Deployed { version: 1, unchanged: false });
        assert_eq!(s.active_release("a").unwrap().spec.request.as_ref().unwrap().sha256, "v1");
        assert_eq!(s.releases()["a"].previous(), None);
        assert_eq!(
            s.apply(&Command::Activate { domain: "a".into(), version: 7, from: None }),
            Applied::Refused(Refused::UnknownVersion { domain: "a".into(), version: 7 })
        );
        assert_eq!(
            s.apply(&Command::Activate { domain: "a".into(), version: 2, from: Some(2) }),
            Applied::Refused(Refused::ActiveChanged { active: 1 }),
            "a rollback made against another served version is refused"
        );
        // A host of another domain's served release is refused.
        let taken = s.apply(&Command::Deploy { domain: "b".into(), release: release("b1"), only_if_new: false });
        assert_eq!(taken, Applied::Refused(Refused::HostTaken { host: "a.localhost".into(), domain: "a".into() }));
        // Deploying after a rollback gets a fresh number, never a reused one.
        assert_eq!(deploy(&mut s, "v3", false), Applied::Deployed { version: 3, unchanged: false });
        assert!(s.daemon_domains().is_empty(), "no daemon artifact");
    }

    #[test]
    fn history_is_bounded_and_keeps_the_served_release() {
        let mut s = ClusterState::default();
        for i in 0..releases::HISTORY + 5 {
            s.apply(&Command::Deploy { domain: "a".into(), release: release(&format!("v{i}")), only_if_new: false });
            if i == 0 {
                s.apply(&Command::Activate { domain: "a".into(), version: 1, from: None });
            }
        }
        let h = &s.releases()["a"];
        assert_eq!(h.releases.len(), releases::HISTORY);
        assert_eq!(h.active, (releases::HISTORY + 5) as u64);
        assert!(h.releases.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut s = ClusterState::default();
        s.apply(&assign("a", 1));
        s.apply(&claim("a", "t2", 1000, 1));
        s.apply(&Command::Deploy { domain: "a".into(), release: release("aa"), only_if_new: false });
        s.apply(&Command::Served { node: 2, domain: "a".into(), version: 1 });
        let back: ClusterState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn failover_skips_and_counts_missed_ticks_without_replaying_them() {
        let every_5s = Schedule::parse("5s").unwrap();
        // Steady state: the next tick after the last claim.
        assert_eq!(plan_tick(&every_5s, Some(10_000), 12_000, 1000), Some(TickPlan { fire_time: 15_000, skipped: 0 }));
        // Just due, within the grace: still fired, late.
        assert_eq!(plan_tick(&every_5s, Some(10_000), 15_500, 1000), Some(TickPlan { fire_time: 15_000, skipped: 0 }));
        // The owner died after claiming 10 000; the new one starts at 31 200:
        // 15 000, 20 000, 25 000 and 30 000 are past the grace: skipped.
        assert_eq!(plan_tick(&every_5s, Some(10_000), 31_200, 1000), Some(TickPlan { fire_time: 35_000, skipped: 4 }));
        // A task never claimed waits for its next tick.
        assert_eq!(plan_tick(&every_5s, None, 31_200, 1000), Some(TickPlan { fire_time: 35_000, skipped: 0 }));
    }
}
