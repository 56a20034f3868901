//! The L4 benchmark (a table, not a test): a real 3-node cluster of
//! `toil node` processes serving the `pulse` guest (a 1 s task).
//!
//! - **Failover**: SIGKILL the daemon's owner at a phase of the tick period
//!   spread evenly over the runs; restart the killed node, let it rejoin,
//!   repeat. First owners that are not the raft leader, then owners that
//!   are (the bench kills leaders until the owner is elected). Each kill is
//!   split by phase from the nodes' and the guests' logs: detection and
//!   reassignment (with an election when the leader died), the new owner's
//!   box start, the wait for the tick's time (with a 1 s period the next
//!   tick can be up to 1 s away), and the claim and fire.
//! - **Lateness**: how long after its scheduled time each tick starts, in
//!   steady state, against a native baseline measured in the same run: a
//!   tokio timer in this process sleeping until the same whole seconds.
//! - **Duplicates**: fire times that ran more than once anywhere (must be 0).
//!
//! `cargo bench -p toil-cli --bench daemon [-- --kills 20 --leader-kills 10 --seconds 30]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{now_us, parse_rfc3339_us, Cluster};
use common::percentile;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (kills, leader_kill_count, seconds) = (arg("--kills", 20), arg("--leader-kills", 10), arg("--seconds", 30));
    let mut cluster_config = serde_json::json!({});
    if let Some(lead) = args.iter().position(|a| a == "--claim-lead-ms").and_then(|i| args.get(i + 1)) {
        cluster_config["claimLeadMs"] = lead.parse::<u64>().unwrap().into();
    }
    let mut c = Cluster::start("bench-daemon", 3, cluster_config);
    // Steady state begins once the owner has ticked a few times.
    c.wait_for(Duration::from_secs(30), "three ticks", |c| c.fired().len() >= 3);

    // Steady state, with the native timer running alongside.
    eprintln!("steady state for {seconds} s ...");
    let start_us = now_us();
    let native = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut late = Vec::new();
            for _ in 0..seconds {
                let next_us = (now_us() / 1_000_000 + 1) * 1_000_000;
                tokio::time::sleep(Duration::from_micros((next_us - now_us()).max(0) as u64)).await;
                late.push((now_us() - next_us) as f64 / 1000.0);
            }
            late
        })
    });
    let mut native_late = native.join().unwrap();
    let end_us = now_us();
    let mut toil_late: Vec<f64> = c
        .fired()
        .iter()
        .filter(|f| f.fire_time * 1000 > start_us && f.fire_time * 1000 < end_us)
        .map(|f| (f.ran_at_us - f.fire_time * 1000) as f64 / 1000.0)
        .collect();

    let mut worst: Vec<(f64, i64, u64)> = c
        .fired()
        .iter()
        .filter(|f| f.fire_time * 1000 > start_us && f.fire_time * 1000 < end_us)
        .map(|f| ((f.ran_at_us - f.fire_time * 1000) as f64 / 1000.0, f.fire_time, f.node))
        .collect();
    worst.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("latest ticks (ms late, fire time, node): {:?}", &worst[..worst.len().min(3)]);

    // Failover: kills of an owner that is not the leader, then of an owner
    // that is. Placement keeps owners off the leader, so for the second kind
    // the bench kills the leader until the owner is elected.
    let mut owner_kills = Vec::new();
    for k in 0..kills {
        owner_kills.push(kill_owner(&mut c, k as usize, kills as usize, false));
    }
    let mut leader_kills = Vec::new();
    let mut k = 0;
    while leader_kills.len() < leader_kill_count as usize {
        let via = c.running()[0];
        let ((owner, _), (leader, _)) = (c.owner(via).unwrap(), c.leader(via).unwrap());
        if owner != leader {
            c.kill(leader);
            let via = c.running()[0];
            c.wait_for(Duration::from_secs(20), "a new leader", |c| c.leader(via).is_some_and(|l| l.0 != leader));
            c.launch(leader);
            c.wait_for(Duration::from_secs(30), "the killed leader to rejoin", |c| c.leader(leader).is_some_and(|l| l.0 != leader));
            continue;
        }
        leader_kills.push(kill_owner(&mut c, k, leader_kill_count as usize, true));
        k += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let fired = c.fired();
    let mut by_time: BTreeMap<i64, u32> = BTreeMap::new();
    for f in &fired {
        *by_time.entry(f.fire_time).or_default() += 1;
    }
    let duplicates = by_time.values().filter(|n| **n > 1).count();
    let status = c.status(c.running()[0]).unwrap();
    let skipped = status["tasks"][0]["skipped"].as_u64().unwrap_or(0);

    for v in [&mut toil_late, &mut native_late] {
        v.sort_by(f64::total_cmp);
    }
    println!("\nL4 daemon tier, 3 nodes on loopback, 1 s task ({} ticks fired in all)\n", fired.len());
    println!("| measurement | toil | native timer | target |");
    println!("|---|---|---|---|");
    for (kind, runs) in [("the owner", &owner_kills), ("an owner that is also the leader", &leader_kills)] {
        let pick = |f: fn(&Failover) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (takeover, first, added, floor) =
            (pick(|f| f.takeover_ms), pick(|f| f.first_tick_ms), pick(|f| f.added_ms), pick(|f| f.schedule_floor_ms));
        let summary = |v: &[f64]| {
            format!("median {:.0} ms, p90 {:.0} ms, max {:.0} ms", percentile(v, 0.5), percentile(v, 0.9), v.last().copied().unwrap_or(f64::NAN))
        };
        println!(
            "| SIGKILL of {kind} to the new owner's box started (n={}) | {} | - | median <= 500 ms, max <= 1000 ms |",
            runs.len(),
            summary(&takeover)
        );
        println!("| SIGKILL of {kind} to the new owner's first tick (n={}) | {} | - | - |", runs.len(), summary(&first));
        println!("| the schedule's own wait: kill to the next fire time (a failover taking no time would wait this) | {} | - | - |", summary(&floor));
        println!("| what the failover added (first tick minus the next fire time) | {} | - | - |", summary(&added));
        let median_of = |f: fn(&Failover) -> f64| percentile(&pick(f), 0.5);
        println!(
            "| budget, medians: detection and reassignment / box start / waiting for the tick's time / claim and fire | {:.0} / {:.0} / {:.0} / {:.0} ms | - | - |",
            median_of(|f| f.detect_ms),
            median_of(|f| f.start_ms),
            median_of(|f| f.schedule_wait_ms),
            median_of(|f| f.claim_fire_ms)
        );
    }
    println!("| tick lateness p50 (n={}) | {:.2} ms | {:.2} ms | - |", toil_late.len(), percentile(&toil_late, 0.5), percentile(&native_late, 0.5));
    println!("| tick lateness p99 | {:.2} ms | {:.2} ms | <= 10 ms |", percentile(&toil_late, 0.99), percentile(&native_late, 0.99));
    println!(
        "| tick lateness max | {:.2} ms | {:.2} ms | - |",
        toil_late.last().copied().unwrap_or(f64::NAN),
        native_late.last().copied().unwrap_or(f64::NAN)
    );
    println!("| ticks fired twice | {duplicates} | - | 0 |");
    println!("| ticks skipped during failovers (counted, not replayed) | {skipped} | - | - |");
}

/// One failover, measured from the nodes' and the guests' logs.
struct Failover {
    /// Kill to the new owner's first tick.
    first_tick_ms: f64,
    /// Kill to the first fire time after it: what even a failover taking no
    /// time would wait (a 1 s period puts it anywhere in 0..1000 ms).
    schedule_floor_ms: f64,
    /// What the failover added to the wait the schedule imposes anyway: the
    /// first tick against the first fire time after the kill (1000 ms when
    /// the dead owner had claimed that tick and took it with it).
    added_ms: f64,
    /// Kill to the new owner's box started (`daemon_start` ran): when it could fire.
    takeover_ms: f64,
    /// Kill to the leader's log of the reassignment (failure detection, an
    /// election when the leader died, the commit).
    detect_ms: f64,
    /// Reassignment to the box started (the new owner applies it, starts its warm standby).
    start_ms: f64,
    /// Box started to the first tick's scheduled time (0 when it was already due).
    schedule_wait_ms: f64,
    /// From when the first tick could start (its time, or the box start) to its start: the claim's round trip.
    claim_fire_ms: f64,
}

/// Kills the owner at a phase of the tick period spread over the runs (a
/// golden-ratio sequence: the time to the next tick depends on the phase),
/// measures the failover, restarts the node and waits for it to rejoin.
fn kill_owner(c: &mut Cluster, k: usize, of: usize, leader_too: bool) -> Failover {
    let via = c.running()[0];
    let (owner, fencing) = c.owner(via).unwrap();
    c.wait_for(Duration::from_secs(10), "the owner to tick", |c| c.fired().iter().any(|f| f.node == owner && f.fencing == fencing));
    let phase_us = (((k as f64 + 1.0) * 0.618_034).fract() * 1e6) as i64;
    let at_us = (now_us() / 1_000_000 + 1) * 1_000_000 + phase_us;
    std::thread::sleep(Duration::from_micros((at_us - now_us()).max(0) as u64));
    c.kill(owner);
    let killed_us = now_us();
    c.wait_for(Duration::from_secs(20), "a new owner's first tick", |c| c.fired().iter().any(|f| f.fencing > fencing && f.ran_at_us > killed_us));
    let first = c.fired().into_iter().filter(|f| f.fencing > fencing && f.ran_at_us > killed_us).min_by_key(|f| f.ran_at_us).unwrap();
    let logs = c.logs();
    let logged_at = |needle: &str| {
        logs.lines().filter(|l| l.contains(needle)).filter_map(|l| parse_rfc3339_us(l.split_whitespace().next()?)).filter(|t| *t > killed_us).min()
    };
    let assigned_us = logged_at(&format!("daemon owner: pulse to node {}", first.node)).unwrap_or(killed_us);
    let started_us = logged_at(&format!("pulse started node=node-{} fencing={}", first.node, first.fencing)).unwrap_or(assigned_us);
    let could_fire_us = started_us.max(first.fire_time * 1000);
    let ms = |us: i64| us as f64 / 1000.0;
    let f = Failover {
        first_tick_ms: ms(first.ran_at_us - killed_us),
        added_ms: ms(first.ran_at_us - (killed_us / 1_000_000 + 1) * 1_000_000),
        schedule_floor_ms: ms((killed_us / 1_000_000 + 1) * 1_000_000 - killed_us),
        takeover_ms: ms(started_us - killed_us),
        detect_ms: ms(assigned_us - killed_us),
        start_ms: ms(started_us - assigned_us),
        schedule_wait_ms: ms((first.fire_time * 1000 - started_us).max(0)),
        claim_fire_ms: ms(first.ran_at_us - could_fire_us),
    };
    let kind = if leader_too { "owner and leader" } else { "owner" };
    eprintln!(
        "kill {}/{of} ({kind}): node {owner} -> node {}: box at {:.0} ms, first tick at {:.0} ms, {:.0} ms added (reassigned {:.0}, started +{:.0}, waited +{:.0}, claim and fire +{:.0})",
        k + 1,
        first.node,
        f.takeover_ms,
        f.first_tick_ms,
        f.added_ms,
        f.detect_ms,
        f.start_ms,
        f.schedule_wait_ms,
        f.claim_fire_ms
    );
    c.launch(owner);
    c.wait_for(Duration::from_secs(30), "the killed node to rejoin", |c| {
        c.status(owner).is_some_and(|s| s["leader"].is_u64() && s["owners"]["pulse"]["fencing"].as_u64() > Some(fencing))
    });
    f
}
