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

/// A domain's daemon; implemented by `#[toil::daemon]`. `Err` is what a
/// hook's or task's [`HookResult`](crate::HookResult) said went wrong; the
/// SDK reports it and the box goes on.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a #[toil::daemon] type",
    label = "given as `daemon` in toil::export!",
    note = "`daemon: ..` names the type whose `impl` carries #[toil::daemon]"
)]
pub trait Daemon: Default + 'static {
    /// `(name, schedule)` of each task, indexed as in the manifest.
    const TASKS: &'static [(&'static str, &'static str)];
    fn on_start(&mut self, info: &StartInfo<'_>) -> Result<(), String> {
        let _ = info;
        Ok(())
    }
    /// Runs task `task`; `None` if there is no such task.
    fn on_tick(&mut self, task: u32, tick: &Tick) -> Option<Result<(), String>>;
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
    if let Err(e) = with_state::<D, _>(|d| d.on_start(&info)) {
        crate::host::report_error(&format!("toil: daemon start (fencing {}) failed: {e}", info.fencing));
    }
    status::OK
}

/// The body of the generated `scheduled_tick` export.
pub fn scheduled_tick<D: Daemon>(task: i32, fire_time_ms: i64) -> i32 {
    let Some(&(name, _)) = usize::try_from(task).ok().and_then(|i| D::TASKS.get(i)) else {
        return status::NO_HANDLER;
    };
    let tick = Tick { task: name, fire_time_ms };
    match with_state::<D, _>(|d| d.on_tick(task as u32, &tick)) {
        None => status::NO_HANDLER,
        Some(Ok(())) => status::OK,
        Some(Err(e)) => {
            crate::host::report_error(&format!("toil: daemon task {name:?} (tick {fire_time_ms}) failed: {e}"));
            status::OK
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Jobs {
        started: bool,
        ticks: u32,
    }

    #[crate::daemon]
    impl Jobs {
        /// Hooks and tasks may leave out their argument.
        #[start]
        fn start(&mut self) {
            self.started = true;
        }

        #[scheduled("5s")]
        fn count(&mut self, tick: &Tick) -> Result<(), &'static str> {
            assert!(self.started);
            self.ticks += 1;
            if tick.fire_time_ms == 10_000 {
                return Err("the store is down");
            }
            Ok(())
        }

        #[scheduled("0 0 * * *")]
        fn report(&mut self) {
            assert_eq!(self.ticks, 2, "state outlives a failed tick");
        }
    }

    crate::export! { daemon: Jobs }

    #[test]
    fn tasks_run_by_index_and_errors_are_reported() {
        assert_eq!(Jobs::TASKS, [("count", "5s"), ("report", "0 0 * * *")]);
        let info = StartInfo { domain: "jobs", node: "n1", fencing: 2 }.encode();
        assert_eq!(daemon_start::<Jobs>(crate::host::set_input(info)), status::OK);
        assert_eq!(scheduled_tick::<Jobs>(0, 5_000), status::OK);
        assert!(crate::host::take_errors().is_empty());
        assert_eq!(scheduled_tick::<Jobs>(0, 10_000), status::OK);
        assert_eq!(crate::host::take_errors(), ["toil: daemon task \"count\" (tick 10000) failed: the store is down"]);
        assert_eq!(scheduled_tick::<Jobs>(1, 12_000), status::OK);
        assert_eq!(scheduled_tick::<Jobs>(2, 12_000), status::NO_HANDLER);
        assert_eq!(scheduled_tick::<Jobs>(-1, 12_000), status::NO_HANDLER);
    }
}
