//! L4 daemon tier: the one elected box per domain running scheduled tasks.
//!
//! `#[toil::daemon]` implements [`Daemon`] for a `Default` type. The value is
//! constructed when the box starts (`daemon_start`, when this node becomes
//! the domain's owner) and lives as long as the box, so tasks can keep state
//! between ticks of the same ownership term.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use toil_abi::daemon::StartInfo;
use toil_abi::status;

/// One firing of a scheduled task.
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    /// The task's name (its method name).
    pub task: &'static str,
    /// The scheduled time this tick stands for, in Unix milliseconds (UTC).
    pub fire_time_ms: i64,
}

impl Tick {
    /// The scheduled time as a `SystemTime`.
    pub fn fire_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.fire_time_ms.max(0) as u64)
    }
}

/// A domain's daemon; implemented by `#[toil::daemon]`.
pub trait Daemon: Default + 'static {
    /// Task names, indexed as in the manifest.
    const TASKS: &'static [&'static str];
    fn on_start(&mut self, info: &StartInfo<'_>);
    /// Runs task `task`; false if there is no such task.
    fn on_tick(&mut self, task: u32, tick: &Tick) -> bool;
}

thread_local! {
    static STATE: RefCell<Option<Box<dyn std::any::Any>>> = const { RefCell::new(None) };
}

fn with_state<D: Daemon, R>(f: impl FnOnce(&mut D) -> R) -> R {
    STATE.with(|s| {
        let mut slot = s.borrow_mut();
        let any = slot.get_or_insert_with(|| Box::new(D::default()));
        f(any.downcast_mut::<D>().expect("one daemon type per crate"))
    })
}

/// The body of the generated `daemon_start` export.
pub fn daemon_start<D: Daemon>(input_len: i32) -> i32 {
    let input = crate::host::read_input(input_len);
    let Ok(info) = StartInfo::decode(&input) else {
        return status::BAD_INPUT;
    };
    STATE.with(|s| *s.borrow_mut() = Some(Box::new(D::default())));
    with_state::<D, _>(|d| d.on_start(&info));
    status::OK
}

/// The body of the generated `scheduled_tick` export.
pub fn scheduled_tick<D: Daemon>(task: i32, fire_time_ms: i64) -> i32 {
    let Some(name) = usize::try_from(task).ok().and_then(|i| D::TASKS.get(i)) else {
        return status::NO_HANDLER;
    };
    let tick = Tick { task: name, fire_time_ms };
    if with_state::<D, _>(|d| d.on_tick(task as u32, &tick)) {
        status::OK
    } else {
        status::NO_HANDLER
    }
}
