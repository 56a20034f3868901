//! The L4 daemon tier's executor: one box per domain, started when this
//! node becomes the domain's owner, ticked for each accepted claim.
//!
//! A [`DaemonApp`] is a domain's compiled cold artifact with its schedules
//! parsed (`toil_schedule`). [`DaemonApp::start`] instantiates it and runs
//! `daemon_start` with the owner's node and fencing token; the returned
//! [`DaemonBox`] keeps the instance, so tasks keep state between ticks of
//! one ownership term. Every call runs under the epoch deadline and memory
//! cap. A tick that faults is logged and counted, and the box is dropped:
//! a trapped instance may hold broken state, so the caller starts a fresh
//! box (and `daemon_start` runs again) before the task's next tick, and the
//! schedule goes on.

use std::sync::Arc;

use toil_abi::daemon::StartInfo;
use toil_abi::{exports, Tier};
use toil_metrics::Registry;
use toil_schedule::{Schedule, Tz};
use wasmtime::{Store, TypedFunc};

use crate::admission::InstanceShare;
use crate::artifact::LoadError;
use crate::call::{Call, Site};
use crate::engine::{bounded, Loaded, Runtime};
use crate::fault::GuestFault;
use crate::host::HostState;
use crate::metrics::{GuestMetrics, LiveGuard};

/// A declared task with its parsed schedule.
#[derive(Clone, Debug)]
pub struct DaemonTask {
    /// The index `scheduled_tick` receives.
    pub index: u32,
    pub name: String,
    pub schedule: Schedule,
}

/// A domain's loaded daemon artifact.
pub struct DaemonApp {
    runtime: Runtime,
    loaded: Loaded,
    start: wasmtime::ModuleExport,
    tick: wasmtime::ModuleExport,
    tasks: Vec<DaemonTask>,
    metrics: GuestMetrics,
}

impl DaemonApp {
    /// Validates, compiles and links `bytes` as `domain`'s daemon artifact;
    /// its cron schedules are read in `timezone`.
    pub fn load(runtime: &Runtime, registry: &Registry, domain: &str, bytes: &[u8], timezone: Tz) -> Result<Self, LoadError> {
        let loaded = runtime.load(domain, Tier::Daemon, bytes)?;
        let tasks = loaded
            .info
            .manifest
            .tasks
            .iter()
            .map(|t| {
                let schedule = Schedule::parse(&t.schedule).map_err(|e| LoadError::InvalidSchedule {
                    task: t.name.clone(),
                    expr: t.schedule.clone(),
                    reason: e.to_string(),
                })?;
                Ok(DaemonTask { index: t.index, name: t.name.clone(), schedule: schedule.in_timezone(timezone) })
            })
            .collect::<Result<_, LoadError>>()?;
        Ok(DaemonApp {
            runtime: runtime.clone(),
            start: loaded.export_index(exports::DAEMON_START).expect("inspect checked the export"),
            tick: loaded.export_index(exports::SCHEDULED_TICK).expect("inspect checked the export"),
            tasks,
            metrics: GuestMetrics::new(registry, domain, Tier::Daemon),
            loaded,
        })
    }

    pub fn domain(&self) -> &str {
        &self.loaded.id.domain
    }

    pub fn tasks(&self) -> &[DaemonTask] {
        &self.tasks
    }

    /// Creates the box for an ownership term and runs `daemon_start`.
    pub async fn start(self: &Arc<Self>, node: &str, fencing: u64) -> Result<DaemonBox, GuestFault> {
        let share = match self.runtime.instance_share() {
            Ok(share) => share,
            Err(fault) => {
                Site::DaemonStart.failed(&self.metrics, self.domain(), &fault);
                return Err(fault);
            }
        };
        let mut store = self.runtime.store(&self.loaded.id);
        let live = self.metrics.live_instance();
        let input = StartInfo { domain: self.domain(), node, fencing }.encode();
        let input_len = input.len() as i32;
        let call = Call::begin(&mut store, input);
        let result = bounded(call.until, self.instantiate_and_start(&call, &mut store, input_len)).await;
        let tick = call.end(&mut store, result, &Site::DaemonStart, &self.metrics, |_, tick| Ok(tick))?;
        Ok(DaemonBox { store, tick, app: self.clone(), _live: live, _share: share })
    }

    async fn instantiate_and_start(
        &self,
        call: &Call,
        store: &mut Store<HostState>,
        input_len: i32,
    ) -> wasmtime::Result<(i32, TypedFunc<(i32, i64), i32>)> {
        let instance = self.loaded.instantiate(call, &mut *store).await?;
        let func = |store: &mut Store<HostState>, export| {
            instance.get_module_export(&mut *store, export).and_then(|e| e.into_func()).ok_or_else(|| wasmtime::format_err!("export vanished"))
        };
        let start: TypedFunc<i32, i32> = func(store, &self.start)?.typed(&*store)?;
        let tick: TypedFunc<(i32, i64), i32> = func(store, &self.tick)?.typed(&*store)?;
        let rc = start.call_async(&mut *store, input_len).await?;
        Ok((rc, tick))
    }
}

/// A running daemon box: one per domain per ownership term.
pub struct DaemonBox {
    store: Store<HostState>,
    tick: TypedFunc<(i32, i64), i32>,
    app: Arc<DaemonApp>,
    _live: LiveGuard,
    /// After `store`: fields drop in order, and the share must outlive the
    /// store's pool slot (`Runtime::instance_share`).
    _share: InstanceShare,
}

impl DaemonBox {
    /// Runs tick `fire_time_ms` of task `task`. After an error the box must
    /// be dropped and a new one started.
    pub async fn tick(&mut self, task: u32, fire_time_ms: i64) -> Result<(), GuestFault> {
        let call = Call::begin(&mut self.store, Vec::new());
        let result = bounded(call.until, self.tick.call_async(&mut self.store, (task as i32, fire_time_ms))).await;
        let site = Site::DaemonTick { task: self.app.tasks.iter().find(|t| t.index == task).map(|t| t.name.as_str()) };
        call.end(&mut self.store, result.map(|rc| (rc, ())), &site, &self.app.metrics, |_, ()| Ok(()))
    }
}
