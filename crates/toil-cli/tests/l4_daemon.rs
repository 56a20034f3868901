//! End to end: `toil dev` runs the daemon tier as a single-node cluster.
//! The jobs example's every-5-seconds task fires on schedule (each tick
//! claimed before it fires), and `toil tick` fires a task by hand.

mod common;

use std::time::Duration;

use common::*;

/// The fire times of the heartbeat ticks the guest logged.
fn heartbeat_fire_times(log: &str) -> Vec<i64> {
    log.lines()
        .filter(|l| l.contains("tick task=heartbeat"))
        .filter_map(|l| l.split("fire_time_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn scheduled_ticks_fire_on_time_once_each() {
    let s = server();
    let mut times = Vec::new();
    for _ in 0..150 {
        times = heartbeat_fire_times(&s.log());
        if times.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(times.len() >= 2, "two heartbeats within 15 s:\n{}", s.log());
    for pair in times.windows(2) {
        assert_eq!(pair[1] - pair[0], 5000, "consecutive 5 s ticks, none twice: {times:?}");
    }
    assert!(times.iter().all(|t| t % 5000 == 0), "interval ticks fall on multiples of 5 s: {times:?}");
    assert!(log_contains("jobs daemon started on node dev (fencing 1)").await);
    assert!(metric("toil_daemon_ticks_total{domain=\"jobs\",outcome=\"fired\"}").await >= 2.0);
}

#[tokio::test]
async fn toil_tick_fires_a_task_now() {
    let s = server();
    let tick = |domain: &str, task: &str| s.toil_admin(&["tick", domain, task]);
    let out = tick("jobs", "hourly");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("fired jobs hourly"));
    assert!(log_contains("tick task=hourly fire_time_ms=").await, "{}", s.log());

    let out = tick("jobs", "nightly");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the jobs daemon has no task \"nightly\" (tasks: heartbeat, hourly)"), "{err}");
    let out = tick("nope", "x");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no daemon for domain \"nope\""));
}
