//! Runs the L4 daemon tier on a node.
//!
//! Every node keeps every domain's daemon artifact loaded: compiled, linked
//! and ready (a warm standby), so taking a domain over never waits for
//! compilation. A supervisor follows the applied cluster state: when this
//! node becomes a domain's owner it starts an owner task with the owner's
//! fencing token; when the domain moves away, the task stops and its box is
//! dropped. A redeploy hands the owner task the new app
//! ([`Daemons::set_app`]): it drops the old box and starts one on the new
//! version between ticks, keeping its claims, so no tick fires twice.
//!
//! An owner task keeps one [`DaemonBox`] and carries out what its term's
//! state machine ([`term`]) decides: it plans the next tick of each task
//! from the last claim ([`toil_cluster::plan_tick`]), **claims it through
//! the log** a little before it is due (`claim_lead`,
//! so the claim's round trip does not make the tick late), waits for the
//! fire time and fires it only if the claim was accepted **and its lease
//! still holds** ([`toil_cluster::lease`]: an owner that stalled between
//! the claim and the fire time for longer than the lease drops the tick,
//! since its domain may have moved meanwhile). A claim refused for lack of
//! ownership ends the task (the domain moved); a faulting tick drops the
//! box and a fresh one is started before the next tick. A domain moved to
//! this node from another owner starts only after that owner's lease ran
//! out (the assignment's handoff).
//!
//! The log is a [`ClaimLog`] ([`toil_cluster::log`]): the in-memory one of
//! `toil dev` or the raft log of `toil node`.
//!
//! [`DaemonBox`]: toil_runtime::daemon::DaemonBox

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use toil_cluster::{now_ms, Applied, ClaimLog, Command, FireCheck, LogError, NodeId, Owner, TickOutcome};
use toil_metrics::{Counter, Gauge, Histogram, Registry};
use toil_runtime::daemon::{DaemonApp, DaemonBox};
use tokio::sync::{mpsc, oneshot, watch};

pub mod term;

use term::{Action, Event, Now, OwnerTerm, Tick};

/// How this node runs its daemons.
#[derive(Clone, Debug)]
pub struct DaemonSettings {
    pub node: NodeId,
    /// The node's name, given to `daemon_start`.
    pub node_name: String,
    /// A tick that could not fire within this of its time is skipped and counted.
    pub grace: Duration,
    /// How long before its fire time a tick is claimed.
    pub claim_lead: Duration,
    /// A claim not committed within this is given up (the tick does not fire).
    pub claim_timeout: Duration,
    /// How long after sending an accepted claim its tick may still start
    /// ([`toil_cluster::LeaseTiming::owner_lease`]).
    pub owner_lease: Duration,
}

impl DaemonSettings {
    /// Settings for node `node` named `node_name`, with default timings.
    pub fn new(node: NodeId, node_name: impl Into<String>) -> Self {
        DaemonSettings {
            node,
            node_name: node_name.into(),
            grace: Duration::from_secs(1),
            claim_lead: Duration::from_millis(50),
            claim_timeout: Duration::from_secs(2),
            owner_lease: Duration::from_millis(130),
        }
    }
}

/// A tick fired by hand (`toil tick`): outside the schedule, not claimed.
struct ManualTick {
    /// The task's name: the owner resolves it against the version its box runs.
    task: String,
    done: oneshot::Sender<Result<i64, String>>,
}

/// The owner task running a domain's daemon on this node.
struct Running {
    fencing: u64,
    /// The version the task runs; replaced on redeploy.
    app: watch::Sender<Arc<DaemonApp>>,
    manual: mpsc::Sender<ManualTick>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The daemons of a node.
pub struct Daemons {
    apps: Mutex<BTreeMap<String, Arc<DaemonApp>>>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Wakes the supervisor when the apps change.
    apps_changed: watch::Sender<()>,
}

/// Why a manual tick did not run.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("no daemon for domain {0:?} on this node")]
    NoDomain(String),
    #[error("the {domain} daemon has no task {task:?} (tasks: {known})")]
    NoTask { domain: String, task: String, known: String },
    #[error("the {0} daemon is not running on this node (another node owns it)")]
    NotOwner(String),
    #[error("the tick failed: {0}")]
    Failed(String),
}

impl Daemons {
    /// Keeps every app as a warm standby and runs the daemons of the
    /// domains this node owns, following the log's state from now on.
    /// Assigning owners is the caller's business (the raft leader, or
    /// `toil dev` for its one node).
    pub fn start(apps: Vec<Arc<DaemonApp>>, log: Arc<dyn ClaimLog>, settings: DaemonSettings, registry: &Registry) -> Arc<Daemons> {
        let apps: BTreeMap<String, Arc<DaemonApp>> = apps.into_iter().map(|a| (a.domain().to_string(), a)).collect();
        let daemons = Arc::new(Daemons { apps: Mutex::new(apps), running: Mutex::default(), apps_changed: watch::Sender::new(()) });
        tokio::spawn(supervise(daemons.clone(), log, settings, registry.clone()));
        daemons
    }

    /// Serves `app` as `domain`'s daemon from now on (`None`: the domain has
    /// no daemon any more). A running owner task switches to it between
    /// ticks; a standby just keeps it ready.
    pub fn set_app(&self, domain: &str, app: Option<Arc<DaemonApp>>) {
        let mut apps = self.apps.lock().expect("daemon apps");
        match app {
            Some(app) => {
                if let Some(r) = self.running.lock().expect("running daemons").get(domain) {
                    r.app.send_replace(app.clone());
                }
                apps.insert(domain.to_string(), app);
            }
            None => {
                apps.remove(domain);
            }
        }
        self.apps_changed.send_replace(());
    }

    /// The daemon app of `domain`, if this node has one.
    pub fn app(&self, domain: &str) -> Option<Arc<DaemonApp>> {
        self.apps.lock().expect("daemon apps").get(domain).cloned()
    }

    /// Fires task `task` of `domain` now, on the running box (`toil tick`).
    pub async fn tick_now(&self, domain: &str, task: &str) -> Result<i64, TickError> {
        let app = self.app(domain).ok_or_else(|| TickError::NoDomain(domain.to_string()))?;
        let Some(t) = app.tasks().iter().find(|t| t.name == task) else {
            let known = app.tasks().iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(TickError::NoTask { domain: domain.to_string(), task: task.to_string(), known });
        };
        let sender = self.running.lock().expect("running daemons").get(domain).map(|r| r.manual.clone());
        let sender = sender.ok_or_else(|| TickError::NotOwner(domain.to_string()))?;
        let (done, result) = oneshot::channel();
        sender.send(ManualTick { task: t.name.clone(), done }).await.map_err(|_| TickError::NotOwner(domain.to_string()))?;
        result.await.map_err(|_| TickError::NotOwner(domain.to_string()))?.map_err(TickError::Failed)
    }
}

/// Starts and stops owner tasks as ownership changes in the applied state.
async fn supervise(daemons: Arc<Daemons>, log: Arc<dyn ClaimLog>, settings: DaemonSettings, registry: Registry) {
    let mut changes = log.changes();
    let mut apps_changed = daemons.apps_changed.subscribe();
    let mut owned: BTreeMap<String, Arc<Gauge>> = BTreeMap::new();
    loop {
        let state = log.state();
        {
            let apps = daemons.apps.lock().expect("daemon apps").clone();
            let mut running = daemons.running.lock().expect("running daemons");
            // Domains whose daemon is gone (undeployed) stop on this node.
            running.retain(|domain, r| {
                let keep = apps.contains_key(domain);
                if !keep {
                    r.stop.send_replace(true);
                    tracing::info!(domain, "the domain no longer has a daemon; stopping it");
                }
                keep
            });
            for (domain, app) in &apps {
                let mine = state.owner(domain).filter(|o| o.node == settings.node);
                let current = running.get(domain).filter(|r| !r.task.is_finished()).map(|r| r.fencing);
                if let Some(r) = running.get(domain) {
                    // `set_app` may have run between the snapshot of the apps
                    // and this pass: the running task always gets the latest.
                    r.app.send_if_modified(|cur| {
                        !Arc::ptr_eq(cur, app) && {
                            *cur = app.clone();
                            true
                        }
                    });
                }
                if current.is_some() && current != mine.map(|o| o.fencing) {
                    let r = running.remove(domain).expect("present");
                    r.stop.send_replace(true);
                    tracing::info!(domain, fencing = r.fencing, "the daemon moved to another node; this node is a standby again");
                }
                if let Some(owner) = mine.filter(|o| Some(o.fencing) != current) {
                    tracing::info!(domain, fencing = owner.fencing, "this node owns the daemon; starting it");
                    let (manual, manual_rx) = mpsc::channel(8);
                    let (stop, stop_rx) = watch::channel(false);
                    let (app_tx, app_rx) = watch::channel(app.clone());
                    let owner_task = OwnerTask {
                        log: log.clone(),
                        settings: settings.clone(),
                        app: app_rx,
                        manual: manual_rx,
                        stop: stop_rx,
                        metrics: TickMetrics::new(&registry, domain),
                    };
                    let task = tokio::spawn(own(owner, owner_task));
                    running.insert(domain.clone(), Running { fencing: owner.fencing, app: app_tx, manual, stop, task });
                }
                let gauge = owned.entry(domain.clone()).or_insert_with(|| {
                    registry.gauge(
                        "toil_daemon_owned",
                        "1 while this node owns and runs the domain's daemon; 0 while it is a warm standby.",
                        &[("domain", domain)],
                    )
                });
                gauge.set(running.get(domain).is_some_and(|r| !r.task.is_finished()) as i64);
            }
            for (domain, gauge) in &owned {
                if !apps.contains_key(domain) {
                    gauge.set(0);
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = apps_changed.changed() => if r.is_err() { return },
        }
    }
}

struct TickMetrics {
    fired: Arc<Counter>,
    refused: Arc<Counter>,
    dropped: Arc<Counter>,
    failed: Arc<Counter>,
    skipped: Arc<Counter>,
    lateness: Arc<Histogram>,
}

impl TickMetrics {
    fn new(r: &Registry, domain: &str) -> Self {
        let outcome = |o: &str| {
            r.counter(
                "toil_daemon_ticks_total",
                "Scheduled ticks by outcome: fired (claim accepted, tick ran), refused (claim refused), dropped (claim accepted but its lease or grace ran out before the tick could start), failed (tick faulted).",
                &[("domain", domain), ("outcome", o)],
            )
        };
        TickMetrics {
            fired: outcome("fired"),
            refused: outcome("refused"),
            dropped: outcome("dropped"),
            failed: outcome("failed"),
            skipped: r.counter(
                "toil_daemon_ticks_skipped_total",
                "Ticks skipped (not replayed) after falling due while unowned or stalled.",
                &[("domain", domain)],
            ),
            lateness: r.histogram("toil_daemon_tick_lateness_seconds", "Time from a tick's scheduled fire time to its start.", &[("domain", domain)]),
        }
    }
}

/// How long from now until `deadline_ms` (Unix ms); nothing once it passed.
fn until(deadline_ms: i64) -> Duration {
    Duration::from_millis((deadline_ms - now_ms()).max(0) as u64)
}

/// Sleeps until `deadline_ms` (Unix ms) unless told to stop first; true when stopped.
async fn stopped_before(deadline_ms: i64, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(until(deadline_ms)) => *stop.borrow(),
        () = stop_requested(stop) => true,
    }
}

/// Resolves once the supervisor asks the owner task to stop (or is gone).
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Records a tick's outcome in the log, in the background: a report, so
/// the next tick does not wait for it; one lost with its node shows as a
/// claim without a report in `toil status`.
fn report(log: &Arc<dyn ClaimLog>, timeout: Duration, done: Command) {
    let log = log.clone();
    tokio::spawn(async move {
        if let Ok(Err(e)) = tokio::time::timeout(timeout, log.propose(done)).await {
            tracing::debug!("reporting a tick's outcome: {e}");
        }
    });
}

/// The clock leases are measured on: it keeps counting while the process
/// is stopped and while the machine is suspended (`CLOCK_BOOTTIME`), so an
/// owner that wakes from either sees its lease run out.
#[cfg(target_os = "linux")]
fn lease_clock() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn lease_clock() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// Both clocks the owner's term runs on.
fn read_clocks() -> Now {
    Now { wall_ms: now_ms(), lease: lease_clock() }
}

/// What an owner task works with, besides its term.
struct OwnerTask {
    log: Arc<dyn ClaimLog>,
    settings: DaemonSettings,
    /// The version to run; replaced on redeploy.
    app: watch::Receiver<Arc<DaemonApp>>,
    manual: mpsc::Receiver<ManualTick>,
    stop: watch::Receiver<bool>,
    metrics: TickMetrics,
}

/// The owner task of one domain for one ownership term (one fencing
/// token): keeps the box running and carries out what the term decides.
async fn own(owner: Owner, mut t: OwnerTask) {
    let mut app = t.app.borrow_and_update().clone();
    let domain = app.domain().to_string();
    let mut term = OwnerTerm::new(&domain, owner, &t.settings);
    let mut daemon: Option<DaemonBox> = None;
    if let Some(handoff) = term.handoff() {
        tracing::info!(domain, "taking the daemon over; starting it after a {handoff:?} handoff (the previous owner's lease)");
        tokio::select! {
            () = tokio::time::sleep(handoff) => {}
            () = stop_requested(&mut t.stop) => return,
        }
    }
    loop {
        if *t.stop.borrow() {
            return;
        }
        if !Arc::ptr_eq(&app, &t.app.borrow()) {
            // Redeployed: the old box goes, the next tick runs on the new version.
            app = t.app.borrow_and_update().clone();
            daemon = None;
            tracing::info!(domain, "the daemon was redeployed; restarting its box on the new version");
        }
        if daemon.is_none() {
            match app.start(&t.settings.node_name, term.fencing()).await {
                Ok(b) => daemon = Some(b),
                Err(fault) if t.wait_to_restart(&fault).await => continue,
                Err(_) => return,
            }
        }
        let running = daemon.as_mut().expect("started above");
        let mut action = term.step(read_clocks(), Event::Plan { tasks: app.tasks(), state: &t.log.state() });
        // One round: until the tick fired or was dropped, or a wait was cut short.
        loop {
            action = match action {
                Action::WaitToClaim { until_ms } => tokio::select! {
                    () = tokio::time::sleep(until(until_ms)) => term.step(read_clocks(), Event::Woke),
                    () = stop_requested(&mut t.stop) => return,
                    Ok(()) = t.app.changed() => break,
                    Some(m) = t.manual.recv() => {
                        if run_manual(&app, running, m).await {
                            daemon = None; // a faulted box is replaced before the next tick
                        }
                        break;
                    }
                },
                Action::Claim(claim) => term.step(read_clocks(), Event::Answered(t.claim(claim).await)),
                Action::WaitToFire(tick) => {
                    if tick.skipped > 0 {
                        t.metrics.skipped.add(tick.skipped);
                        tracing::warn!(domain, task = tick.task, skipped = tick.skipped, "ticks fell due while this daemon was not running; skipped");
                    }
                    if stopped_before(tick.fire_time, &mut t.stop).await {
                        return;
                    }
                    term.step(read_clocks(), Event::Woke)
                }
                Action::Fire(tick) => {
                    let outcome = t.fire(running, &tick).await;
                    if outcome == TickOutcome::Failed {
                        daemon = None; // a faulted box is replaced before the next tick
                    }
                    report(&t.log, t.settings.claim_timeout, term.done(&tick, outcome));
                    break;
                }
                Action::Drop { tick, why } => {
                    t.metrics.dropped.inc();
                    warn_dropped(&domain, &tick, why);
                    report(&t.log, t.settings.claim_timeout, term.done(&tick, TickOutcome::Dropped));
                    break;
                }
                Action::AlreadyClaimed { .. } => {
                    t.metrics.refused.inc();
                    break;
                }
                Action::Retry { until_ms, error } => {
                    tracing::warn!(domain, "claiming a tick: {error}");
                    if stopped_before(until_ms, &mut t.stop).await {
                        return;
                    }
                    break;
                }
                Action::Stop { current } => {
                    t.metrics.refused.inc();
                    tracing::info!(domain, ?current, "this node no longer owns the daemon; stopping it");
                    return;
                }
                Action::Replan => break,
            };
        }
    }
}

impl OwnerTask {
    /// Proposes `claim`; one not committed within the claim timeout is given up.
    async fn claim(&self, claim: Command) -> Result<Applied, LogError> {
        let timeout = self.settings.claim_timeout;
        let answer = tokio::time::timeout(timeout, self.log.propose(claim)).await;
        answer.unwrap_or_else(|_| Err(LogError::Unavailable(format!("the claim was not committed within {timeout:?}"))))
    }

    /// Starts a claimed tick on the box and counts how it went.
    async fn fire(&self, running: &mut DaemonBox, tick: &Tick) -> TickOutcome {
        self.metrics.lateness.observe(Duration::from_millis((now_ms() - tick.fire_time).max(0) as u64));
        if running.tick(tick.task, tick.fire_time).await.is_ok() {
            self.metrics.fired.inc();
            TickOutcome::Ran
        } else {
            self.metrics.failed.inc();
            TickOutcome::Failed
        }
    }

    /// After `daemon_start` failed (logged and counted by the runtime):
    /// waits a second before the next try, telling a manual tick meanwhile
    /// why there is no box instead of keeping it waiting. False when told to stop.
    async fn wait_to_restart(&mut self, fault: &impl std::fmt::Display) -> bool {
        let retry = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut retry => return true,
                () = stop_requested(&mut self.stop) => return false,
                Some(m) = self.manual.recv() => {
                    let _ = m.done.send(Err(format!("daemon_start failed, so the daemon is not running: {fault}")));
                }
            }
        }
    }
}

/// Runs a manual tick (`toil tick`) on the running box, now, and answers
/// it; true when the tick faulted the box.
async fn run_manual(app: &DaemonApp, running: &mut DaemonBox, m: ManualTick) -> bool {
    let fire_time = now_ms();
    let Some(task) = app.tasks().iter().find(|t| t.name == m.task) else {
        let _ = m.done.send(Err(format!("the running version has no task {:?}", m.task)));
        return false;
    };
    let ran = running.tick(task.index, fire_time).await;
    let faulted = ran.is_err();
    let _ = m.done.send(ran.map(|()| fire_time).map_err(|f| f.to_string()));
    faulted
}

/// Says why a claimed tick was dropped.
fn warn_dropped(domain: &str, tick: &Tick, why: FireCheck) {
    let (task, fire_time) = (tick.task, tick.fire_time);
    match why {
        FireCheck::LeaseExpired { over } => tracing::warn!(
            domain,
            task,
            fire_time,
            "dropped a claimed tick: this node stalled past its lease ({over:?} over), so the domain may have moved"
        ),
        FireCheck::TooLate { late_ms } => tracing::warn!(domain, task, fire_time, "dropped a claimed tick: {late_ms} ms late, past the grace"),
        FireCheck::Fire => unreachable!("a tick that may fire is not dropped"),
    }
}
