//! The node's wasmtime engines: pooling allocators, copy-on-write memory
//! images, and the epoch callback behind every deadline (the ticker that
//! moves the epoch is `epoch`).
//!
//! There are two pools, because the tiers use instances in opposite ways.
//! A request's instance lives for one call and the next request reuses its
//! slot at once, so that pool keeps the pages a guest touched resident and
//! resets them in place. A session's box lives for minutes, mostly idle,
//! and hibernates (see `hibernate`): its pool gives a slot's pages, table
//! and fiber stack back to the kernel when the box lets the slot go, or a
//! hibernating box would free nothing. Sessions have a slot each
//! (`limits.maxSessions`), so a waking box always finds one. Requests and
//! daemons have a slot per instance of the node's [`InstanceBudget`]
//! (`limits.maxInstances`), which also counts open sessions, so a request
//! is refused when the budget is spent. A node whose pools would not fit
//! the address space or the process's memory mappings (`vm.max_map_count`)
//! gives requests fewer slots, never fewer than the sessions leave; past
//! them a request is refused alike (`toil_config::LimitsConfig::request_pool_slots`).

use std::sync::Arc;
use std::time::Duration;

use toil_abi::Tier;
use toil_channels::Channels;
use wasmtime::{Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, Store, UpdateDeadline};

use crate::admission::{AdmissionLimits, InstanceBudget, InstanceShare};
use crate::artifact::{inspect, ArtifactInfo, LoadError};
use crate::call::Call;
use crate::epoch::{Epochs, Stop};
use crate::fault::{GuestFault, GuestId};
use crate::host::{add_to_linker, HostState};
use crate::limits::Limits;

/// Bytes of each pooled linear memory kept resident between instances.
/// A Rust guest's stack, data and first heap pages sit below this.
const KEEP_RESIDENT: usize = 4 << 20;

/// How the runtime is sized.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub limits: Limits,
    /// Instances alive at once, all tiers together (the budget; open
    /// sessions count, hibernating or not).
    pub max_instances: u32,
    /// Slots of the pool of requests and daemons: `max_instances`, unless
    /// the address space or the memory mappings left beside the stream
    /// boxes' pool hold fewer.
    pub request_slots: u32,
    /// Stream boxes that may hold an instance at once (slots of their
    /// pool): one per open session.
    pub session_instances: u32,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: usize,
    /// Epoch ticker period: the granularity of deadlines.
    pub epoch_tick: Duration,
    /// Each domain's share of the instances for requests.
    pub admission: AdmissionLimits,
}

/// One per node: compiles artifacts and creates stores that share its limits.
#[derive(Clone)]
pub struct Runtime {
    /// Requests and daemons.
    per_request: Pool,
    /// Stream boxes.
    per_session: Pool,
    config: Arc<RuntimeConfig>,
    /// What `channel_publish` and `channel_subscribe` reach; without it they
    /// fail with `Disabled`.
    channels: Option<Channels>,
    /// Every call holds it running while it runs.
    epochs: Epochs,
    /// What every live instance and open session holds a share of.
    instances: Arc<InstanceBudget>,
    /// Held for its `Drop`: the epoch thread stops with the last clone.
    _ticker: Arc<Stop>,
}

/// An engine with its instance pool, and the linker of its modules.
#[derive(Clone)]
struct Pool {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
}

impl Pool {
    fn new(slots: u32, limits: &Limits, resets_in_place: bool) -> anyhow::Result<Pool> {
        let slots = slots.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(slots).total_memories(slots).total_tables(slots).total_stacks(slots).max_memory_size(limits.memory_bytes);
        // Otherwise a returned slot's pages go back to the kernel (madvise),
        // and so does its fiber stack, zeroed (below).
        if resets_in_place && PoolingAllocationConfig::is_pagemap_scan_available() {
            // Reset a returned slot in place instead of with madvise: the
            // kernel's PAGEMAP_SCAN (Linux 6.7+) finds the pages the guest
            // dirtied and only those are re-copied from the image or zeroed.
            // The next request then takes no page faults and no TLB
            // shootdown. Without it, keeping memory resident would mean a
            // memset of all of it per request, so older kernels keep
            // wasmtime's madvise reset.
            pool.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(KEEP_RESIDENT).table_keep_resident(64 << 10);
        }
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true)
            .async_stack_zeroing(!resets_in_place)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        add_to_linker(&mut linker)?;
        Ok(Pool { engine, linker: Arc::new(linker) })
    }
}

/// Runs one guest call (instantiation included) until `until` at most.
///
/// The epoch callback interrupts wasm code that runs past its deadline, but
/// it cannot see a guest parked in an async host call (WASI `poll_oneoff`,
/// i.e. `std::thread::sleep`): no wasm runs, so no epoch check happens.
/// This timer covers that case. When it fires, the call's future is dropped,
/// which makes wasmtime unwind the guest's fiber; the store stays sound but
/// the instance may be mid-update, so callers drop it after a deadline fault
/// (as after any fault).
pub(crate) async fn bounded<T>(until: std::time::Instant, call: impl std::future::Future<Output = wasmtime::Result<T>>) -> wasmtime::Result<T> {
    // Most calls end in their first poll, never waiting in a host call:
    // the timer is made only for one that waits.
    match crate::wait::within(|| until.into(), call).await {
        Some(result) => result,
        None => Err(wasmtime::Error::new(wasmtime::Trap::Interrupt)),
    }
}

/// A compiled, linked artifact, ready to instantiate without further work.
#[derive(Clone)]
pub struct Loaded {
    pub info: ArtifactInfo,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) id: GuestId,
    /// The WASI reactor initializer, run once per instance before any entry point.
    initialize: Option<wasmtime::ModuleExport>,
    /// Where the module exports its memory.
    memory: Option<wasmtime::ModuleExport>,
}

impl Loaded {
    /// Where the module exports `name` (looked up once, used per instance).
    pub(crate) fn export_index(&self, name: &str) -> Option<wasmtime::ModuleExport> {
        self.pre.module().get_export_index(name)
    }

    /// A new instance in `store`, initialized (`_initialize`) and ready for
    /// calls. Instantiating runs guest code (a start function,
    /// `_initialize`), so it takes the [`Call`] it runs in: only a call
    /// keeps the epoch ticker awake, which interrupts a runaway guest.
    pub(crate) async fn instantiate(&self, call: &Call, store: &mut Store<HostState>) -> wasmtime::Result<wasmtime::Instance> {
        let instance = self.instantiate_bare(call, store).await?;
        if let Some(init) = &self.initialize {
            if let Some(f) = instance.get_module_export(&mut *store, init).and_then(|e| e.into_func()) {
                f.typed::<(), ()>(&*store)?.call_async(&mut *store, ()).await?;
            }
        }
        Ok(instance)
    }

    /// [`Loaded::instantiate`] without `_initialize` (a waking box's memory
    /// already holds what it did). The store's state records the instance.
    pub(crate) async fn instantiate_bare(&self, _call: &Call, store: &mut Store<HostState>) -> wasmtime::Result<wasmtime::Instance> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        let memory = self.memory.as_ref().and_then(|m| instance.get_module_export(&mut *store, m)).and_then(|e| e.into_memory());
        store.data_mut().adopt(instance, memory);
        Ok(instance)
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let per_request = Pool::new(config.request_slots, &config.limits, true)?;
        let per_session = Pool::new(config.session_instances, &config.limits, false)?;
        let engines = [per_request.engine.weak(), per_session.engine.weak()];
        let (epochs, stop) =
            Epochs::start(config.epoch_tick, move || engines.iter().all(|weak| weak.upgrade().map(|engine| engine.increment_epoch()).is_some()))?;
        let instances = InstanceBudget::new(config.max_instances as usize);
        Ok(Runtime { per_request, per_session, config: Arc::new(config), channels: None, epochs, instances, _ticker: Arc::new(stop) })
    }

    /// The pool a tier's instances come from.
    fn pool(&self, tier: Tier) -> &Pool {
        match tier {
            Tier::Stream => &self.per_session,
            Tier::Request | Tier::Daemon => &self.per_request,
        }
    }

    /// Gives every guest of this runtime the node's channels.
    pub fn with_channels(mut self, channels: Channels) -> Self {
        self.channels = Some(channels);
        self
    }

    pub fn channels(&self) -> Option<&Channels> {
        self.channels.as_ref()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The node's instance budget. Requests and daemons take their share
    /// before their store is made ([`Runtime::instance_share`]); a stream
    /// session's share is taken by whoever admits the session (the edge,
    /// before it accepts the CONNECT) and held until it ends, hibernating
    /// or not.
    pub fn instance_budget(&self) -> &Arc<InstanceBudget> {
        &self.instances
    }

    /// A request's or daemon's share of the node's instances; `NodeFull` if
    /// none is left. The holder keeps it until after its store is dropped:
    /// wasmtime frees a store's pool slot after dropping the store's data,
    /// so a share inside the store would come free before its slot.
    pub(crate) fn instance_share(&self) -> Result<InstanceShare, GuestFault> {
        self.instances.take().ok_or(GuestFault::NodeFull)
    }

    /// Validates, compiles and links an artifact of `tier` for `domain`.
    pub fn load(&self, domain: &str, tier: Tier, bytes: &[u8]) -> Result<Loaded, LoadError> {
        self.load_with(domain, tier, bytes, |_| None)
    }

    /// [`Runtime::load`], compiling what `prepare` makes of the validated
    /// bytes instead of them, if it makes anything.
    pub(crate) fn load_with(
        &self,
        domain: &str,
        tier: Tier,
        bytes: &[u8],
        prepare: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<Loaded, LoadError> {
        let info = inspect(bytes, tier, self.config.max_artifact_bytes)?;
        let prepared = prepare(bytes);
        let pool = self.pool(tier);
        let module = Module::new(&pool.engine, prepared.as_deref().unwrap_or(bytes)).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let pre = pool.linker.instantiate_pre(&module).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let initialize = if info.has_initialize { module.get_export_index(toil_abi::exports::INITIALIZE) } else { None };
        let memory = module.get_export_index(toil_abi::exports::MEMORY);
        Ok(Loaded { info, pre, id: GuestId { domain: domain.into(), tier }, initialize, memory })
    }

    /// A store for one instance. Every epoch tick a running guest yields to
    /// the executor (so a busy guest never starves other connections on its
    /// thread) and is interrupted once its call has run past the deadline
    /// (each call sets the store's deadline one epoch ahead: `Call::begin`).
    pub(crate) fn store(&self, id: &GuestId) -> Store<HostState> {
        let mut state = HostState::new(id.clone(), &self.config.limits, self.epochs.clone());
        state.channels = self.channels.clone();
        self.store_with(state)
    }

    /// [`Runtime::store`] around an existing state (a box waking up).
    pub(crate) fn store_with(&self, state: HostState) -> Store<HostState> {
        let mut store = Store::new(&self.pool(state.id().tier).engine, state);
        store.limiter(|s| s.limiter());
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            Ok(if state.call_started.elapsed() >= state.deadline() { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) })
        });
        store
    }
}
