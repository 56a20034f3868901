//! Runs the L4 daemon tier on a node.
//!
//! For every domain this node owns, an owner task keeps one [`DaemonBox`]
//! and a scheduler: it plans the next tick of each task from the last claim
//! in the cluster state ([`toil_cluster::plan_tick`]), sleeps until it is
//! due, **claims it through the log**, and fires it only if the claim is
//! accepted. A refused claim for lack of ownership ends the owner task (the
//! domain moved); a faulting tick drops the box and a fresh one is started
//! before the next tick.
//!
//! The log is a [`ClaimLog`]: [`LocalLog`] applies commands to an in-memory
//! [`ClusterState`] (one node: `toil dev`); the replicated log implements the
//! same trait.
//!
//! [`DaemonBox`]: toil_runtime::daemon::DaemonBox

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use toil_cluster::{place, plan_tick, Applied, ClusterState, Command, NodeId, Refused};
use toil_metrics::{Counter, Histogram, Registry};
use toil_runtime::daemon::DaemonApp;

/// Why the log could not take a command.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the cluster log is unavailable: {0}")]
pub struct LogError(pub String);

/// The cluster log as the daemon tier uses it.
pub trait ClaimLog: Send + Sync + 'static {
    /// Commits `command` and returns what applying it did.
    fn propose(&self, command: Command) -> Pin<Box<dyn Future<Output = Result<Applied, LogError>> + Send + '_>>;
    /// A snapshot of the applied state.
    fn state(&self) -> ClusterState;
}

/// A one-node log: commands apply at once, in order.
#[derive(Default)]
pub struct LocalLog {
    state: Mutex<ClusterState>,
}

impl ClaimLog for LocalLog {
    fn propose(&self, command: Command) -> Pin<Box<dyn Future<Output = Result<Applied, LogError>> + Send + '_>> {
        let applied = self.state.lock().expect("cluster state").apply(&command);
        Box::pin(std::future::ready(Ok(applied)))
    }

    fn state(&self) -> ClusterState {
        self.state.lock().expect("cluster state").clone()
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How this node runs its daemons.
#[derive(Clone, Debug)]
pub struct DaemonSettings {
    pub node: NodeId,
    /// The node's name, given to `daemon_start`.
    pub node_name: String,
    /// A tick that could not fire within this of its time is skipped and counted.
    pub grace: Duration,
}

/// A tick fired by hand (`toil tick`): outside the schedule, not claimed.
struct ManualTick {
    task: u32,
    done: oneshot::Sender<Result<i64, String>>,
}

/// The daemons of a node.
pub struct Daemons {
    apps: BTreeMap<String, Arc<DaemonApp>>,
    manual: Mutex<BTreeMap<String, mpsc::Sender<ManualTick>>>,
}

/// Why a manual tick did not run.
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error("no daemon for domain {0:?} on this node")]
    NoDomain(String),
    #[error("the {domain} daemon has no task {task:?} (tasks: {known})")]
    NoTask { domain: String, task: String, known: String },
    #[error("the {0} daemon is not running on this node")]
    NotOwner(String),
    #[error("the tick failed: {0}")]
    Failed(String),
}

impl Daemons {
    /// Assigns every domain to a live node (here: this one) and starts an
    /// owner task for each domain this node owns.
    pub async fn start(apps: Vec<Arc<DaemonApp>>, log: Arc<dyn ClaimLog>, settings: DaemonSettings, registry: &Registry) -> Arc<Daemons> {
        let apps: BTreeMap<String, Arc<DaemonApp>> = apps.into_iter().map(|a| (a.domain().to_string(), a)).collect();
        let domains: Vec<String> = apps.keys().cloned().collect();
        for command in place(&domains, &[settings.node], log.state().owners()) {
            if let Err(e) = log.propose(command).await {
                tracing::error!("assigning daemons: {e}");
            }
        }
        let daemons = Arc::new(Daemons { apps, manual: Mutex::default() });
        let state = log.state();
        for (domain, app) in &daemons.apps {
            let Some(owner) = state.owner(domain).filter(|o| o.node == settings.node) else { continue };
            let (tx, rx) = mpsc::channel(8);
            daemons.manual.lock().expect("manual ticks").insert(domain.clone(), tx);
            let metrics = TickMetrics::new(registry, domain);
            tokio::spawn(own(app.clone(), log.clone(), settings.clone(), owner.fencing, rx, metrics));
        }
        daemons
    }

    /// Fires task `task` of `domain` now, on the running box (`toil tick`).
    pub async fn tick_now(&self, domain: &str, task: &str) -> Result<i64, TickError> {
        let app = self.apps.get(domain).ok_or_else(|| TickError::NoDomain(domain.to_string()))?;
        let Some(t) = app.tasks().iter().find(|t| t.name == task) else {
            let known = app.tasks().iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
            return Err(TickError::NoTask { domain: domain.to_string(), task: task.to_string(), known });
        };
        let sender = self.manual.lock().expect("manual ticks").get(domain).cloned();
        let sender = sender.ok_or_else(|| TickError::NotOwner(domain.to_string()))?;
        let (done, result) = oneshot::channel();
        sender.send(ManualTick { task: t.index, done }).await.map_err(|_| TickError::NotOwner(domain.to_string()))?;
        result.await.map_err(|_| TickError::NotOwner(domain.to_string()))?.map_err(TickError::Failed)
    }
}

struct TickMetrics {
    fired: Arc<Counter>,
    refused: Arc<Counter>,
    failed: Arc<Counter>,
    skipped: Arc<Counter>,
    lateness: Arc<Histogram>,
}

impl TickMetrics {
    fn new(r: &Registry, domain: &str) -> Self {
        let outcome = |o: &str| {
            r.counter(
                "toil_daemon_ticks_total",
                "Scheduled ticks by outcome: fired (claim accepted, tick ran), refused (claim refused), failed (tick faulted).",
                &[("domain", domain), ("outcome", o)],
            )
        };
        TickMetrics {
            fired: outcome("fired"),
            refused: outcome("refused"),
            failed: outcome("failed"),
            skipped: r.counter("toil_daemon_ticks_skipped_total", "Ticks skipped (not replayed) after falling due while unowned or stalled.", &[("domain", domain)]),
            lateness: r.histogram("toil_daemon_tick_lateness_seconds", "Time from a tick's scheduled fire time to its start.", &[("domain", domain)]),
        }
    }
}

/// The owner task of one domain for one ownership term.
async fn own(
    app: Arc<DaemonApp>,
    log: Arc<dyn ClaimLog>,
    settings: DaemonSettings,
    fencing: u64,
    mut manual: mpsc::Receiver<ManualTick>,
    metrics: TickMetrics,
) {
    let domain = app.domain().to_string();
    let mut daemon = None;
    loop {
        if daemon.is_none() {
            match app.start(&settings.node_name, fencing).await {
                Ok(b) => daemon = Some(b),
                Err(_) => {
                    // Logged and counted by the runtime; try again shortly.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let running = daemon.as_mut().expect("started above");
        let now = now_ms();
        let state = log.state();
        let grace = settings.grace.as_millis() as i64;
        let next = app
            .tasks()
            .iter()
            .filter_map(|t| plan_tick(&t.schedule, state.task(&domain, t.index).last_claimed, now, grace).map(|p| (t.index, p)))
            .min_by_key(|(_, p)| p.fire_time);
        let wait = next.map_or(Duration::from_secs(3600), |(_, p)| Duration::from_millis((p.fire_time - now).max(0) as u64));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(m) = manual.recv() => {
                let fire_time = now_ms();
                let result = running.tick(m.task, fire_time).await.map(|()| fire_time).map_err(|f| f.to_string());
                if result.is_err() {
                    daemon = None;
                }
                let _ = m.done.send(result);
                continue;
            }
        }
        let Some((task, plan)) = next else { continue };
        let claim = Command::ClaimTick { domain: domain.clone(), task, fire_time: plan.fire_time, fencing, skipped: plan.skipped };
        match log.propose(claim).await {
            Ok(Applied::Claimed) => {
                if plan.skipped > 0 {
                    metrics.skipped.add(plan.skipped);
                    tracing::warn!(domain, task, skipped = plan.skipped, "ticks fell due while this daemon was not running; skipped");
                }
                metrics.lateness.observe(Duration::from_millis((now_ms() - plan.fire_time).max(0) as u64));
                if running.tick(task, plan.fire_time).await.is_ok() {
                    metrics.fired.inc();
                } else {
                    metrics.failed.inc();
                    daemon = None;
                }
            }
            Ok(Applied::Refused(Refused::NotOwner { current })) => {
                metrics.refused.inc();
                tracing::info!(domain, ?current, "this node no longer owns the daemon; stopping it");
                return;
            }
            Ok(Applied::Refused(Refused::NotNewer { .. })) => metrics.refused.inc(),
            Ok(Applied::Assigned(_)) => unreachable!("a claim applies as a claim"),
            Err(e) => {
                tracing::warn!(domain, "claiming a tick: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
