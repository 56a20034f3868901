//! The L4 benchmark (a table, not a test): a real 3-node cluster of
//! `toil node` processes serving the `pulse` guest (a 1 s task).
//!
//! - **Failover**: SIGKILL the daemon's owner at a phase of the tick period
//!   spread evenly over the runs, time until the new owner's first tick
//!   runs (from the guests' own logs); restart the killed node, let it
//!   rejoin, repeat.
//! - **Lateness**: how long after its scheduled time each tick starts, in
//!   steady state, against a native baseline measured in the same run: a
//!   tokio timer in this process sleeping until the same whole seconds.
//! - **Duplicates**: fire times that ran more than once anywhere (must be 0).
//!
//! `cargo bench -p toil-cli --bench daemon [-- --kills 20 --seconds 30]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::{now_us, Cluster};
use common::percentile;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (kills, seconds) = (arg("--kills", 20), arg("--seconds", 30));
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

    // Failover.
    let mut failovers = Vec::new();
    for k in 0..kills {
        let via = c.running()[0];
        let (owner, fencing) = c.owner(via).unwrap();
        c.wait_for(Duration::from_secs(10), "the owner to tick", |c| c.fired().iter().any(|f| f.node == owner && f.fencing == fencing));
        // Kill at phases spread evenly over the tick period (a golden-ratio
        // sequence): the time to the next tick depends on the phase.
        let phase_us = (((k as f64 + 1.0) * 0.618_034).fract() * 1e6) as i64;
        let at_us = (now_us() / 1_000_000 + 1) * 1_000_000 + phase_us;
        std::thread::sleep(Duration::from_micros((at_us - now_us()).max(0) as u64));
        c.kill(owner);
        let killed_us = now_us();
        c.wait_for(Duration::from_secs(20), "a new owner's first tick", |c| c.fired().iter().any(|f| f.fencing > fencing && f.ran_at_us > killed_us));
        let first = c.fired().into_iter().filter(|f| f.fencing > fencing && f.ran_at_us > killed_us).min_by_key(|f| f.ran_at_us).unwrap();
        let took = (first.ran_at_us - killed_us) as f64 / 1000.0;
        eprintln!("kill {}/{kills}: node {owner} -> node {} in {took:.0} ms", k + 1, first.node);
        failovers.push(took);
        c.launch(owner);
        c.wait_for(Duration::from_secs(30), "the killed node to rejoin", |c| {
            c.status(owner).is_some_and(|s| s["owners"]["pulse"]["fencing"].as_u64() > Some(fencing))
        });
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

    for v in [&mut failovers, &mut toil_late, &mut native_late] {
        v.sort_by(f64::total_cmp);
    }
    println!("\nL4 daemon tier, 3 nodes on loopback, 1 s task ({} ticks fired in all)\n", fired.len());
    println!("| measurement | toil | native timer | target |");
    println!("|---|---|---|---|");
    println!(
        "| failover, SIGKILL of the owner to the new owner's first tick (n={}) | median {:.0} ms, max {:.0} ms | - | median <= 1000 ms |",
        failovers.len(),
        percentile(&failovers, 0.5),
        failovers.last().copied().unwrap_or(f64::NAN)
    );
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
