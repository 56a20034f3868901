//! The daemon executor: a box starts with the owner's identity, ticks run
//! under the deadline, and a faulting tick is contained (the caller starts a
//! fresh box for the next one).

use std::sync::Arc;
use std::time::Duration;

use toil_abi::manifest::{encode_task, header_record};
use toil_abi::Tier;
use toil_metrics::Registry;
use toil_runtime::daemon::DaemonApp;
use toil_runtime::{GuestFault, Runtime};

mod support;

/// Task 0 succeeds, task 1 traps, task 2 never returns; task 3 is not
/// declared and the guest says so. `daemon_start` wants its input.
fn daemon_module() -> Vec<u8> {
    let mut m = header_record(Tier::Daemon).to_vec();
    encode_task(&mut m, 0, "heartbeat", "5s");
    encode_task(&mut m, 1, "trap", "0 */5 * * *");
    encode_task(&mut m, 2, "spin", "1h");
    let section = support::manifest_section(&m);
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1)
            (func (export "daemon_start") (param i32) (result i32)
                (if (i32.eqz (local.get 0)) (then (return (i32.const 1))))
                (i32.const 0))
            (func (export "scheduled_tick") (param i32 i64) (result i32)
                (if (i32.eq (local.get 0) (i32.const 1)) (then unreachable))
                (if (i32.eq (local.get 0) (i32.const 2)) (then (loop $l (br $l))))
                (if (i32.gt_u (local.get 0) (i32.const 2)) (then (return (i32.const 2))))
                (i32.const 0))
            {section})"#
    ))
    .unwrap()
}

#[tokio::test]
async fn ticks_run_and_faults_are_contained() {
    let rt = Runtime::new(support::config(support::limits(50), 8)).unwrap();
    let registry = Registry::new();
    let app = Arc::new(DaemonApp::load(&rt, &registry, "jobs", &daemon_module(), toil_schedule::Tz::UTC).unwrap());
    let names: Vec<&str> = app.tasks().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["heartbeat", "trap", "spin"]);
    assert_eq!(app.tasks()[0].schedule.next_after(7_000), Some(10_000));

    let mut daemon = app.start("node-1", 7).await.unwrap();
    daemon.tick(0, 5_000).await.unwrap();
    daemon.tick(0, 10_000).await.unwrap();
    assert!(matches!(daemon.tick(1, 15_000).await, Err(GuestFault::Trap(_))));

    // The caller replaces the box; the schedule goes on.
    let mut daemon = app.start("node-1", 7).await.unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(daemon.tick(2, 20_000).await, Err(GuestFault::Deadline(_))));
    assert!(started.elapsed() < Duration::from_secs(2), "the deadline cut the loop off");

    let mut daemon = app.start("node-2", 8).await.unwrap();
    assert!(matches!(daemon.tick(3, 25_000).await, Err(GuestFault::Abi(_))));
    let text = registry.render();
    assert!(text.contains("toil_guest_faults_total{domain=\"jobs\",tier=\"daemon\",kind=\"trap\"} 1"), "{text}");
    assert!(text.contains("toil_guest_faults_total{domain=\"jobs\",tier=\"daemon\",kind=\"deadline\"} 1"), "{text}");
}
