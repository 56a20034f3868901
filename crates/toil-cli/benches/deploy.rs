//! The deploy benchmark (a table, not a test).
//!
//! - **Deploy to every node**: a real 3-node cluster of `toil node`
//!   processes serving the `versioned` guest. Each run deploys the other
//!   version (`toil deploy --no-wait`, through a different node each time)
//!   and times from the command returning until all three nodes answer with
//!   the new version on HTTP. The baseline, measured in the same run, is
//!   what every node must at least do: compile and link the three
//!   artifacts (wasmtime, this process, same settings).
//! - **Dev reload**: a `toil dev` on a copy of the guest; each run edits the
//!   source and times from the save until the new version answers, split
//!   into the guest build (cargo, the baseline) and the rest (artifact
//!   upload, validation, swap).
//!
//! `cargo bench -p toil-cli --bench deploy [-- --runs 10 --reloads 5]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{build_guest, get_blocking, median, repo_root, set_label, start_server, versioned_copy};

const HOST: &str = "versioned.localhost";

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| -> usize {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
    };
    let (runs, reloads) = (arg("--runs", 10), arg("--reloads", 5));
    let parent = repo_root().join("target/e2e").join(format!("bench-deploy-guests-{}", std::process::id()));
    let a = versioned_copy(&parent, "a", "A");
    let b = versioned_copy(&parent, "b", "B");
    let artifacts = [("A", build_guest(&a)), ("B", build_guest(&b))];

    // Baseline: compile and link the three artifacts of one version here.
    let runtime = toil_runtime::Runtime::new(toil_config::LimitsConfig::default().runtime(None)).unwrap();
    let registry = toil_metrics::Registry::new();
    let mut compile_ms = Vec::new();
    for i in 0..runs.max(3) {
        let dir = &artifacts[i % 2].1;
        let bytes = ["release.wasm", "release-stream.wasm", "release-cold.wasm"].map(|f| Some(std::fs::read(dir.join(f)).unwrap()));
        let blob =
            |b: &Option<Vec<u8>>| b.as_ref().map(|b| toil_cluster::BlobRef { sha256: toil_deploy::store::sha256_hex(b), size: b.len() as u64 });
        let spec = toil_cluster::ReleaseSpec {
            hosts: vec![HOST.into()],
            timezone: "UTC".into(),
            request: blob(&bytes[0]),
            stream: blob(&bytes[1]),
            daemon: blob(&bytes[2]),
            origin: 0,
            deployed_at_ms: 0,
            source: "bench".into(),
        };
        let started = Instant::now();
        toil_deploy::release::load(&runtime, &registry, "versioned", &spec, bytes).unwrap();
        compile_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    // Deploys on a 3-node cluster.
    let c = Cluster::start_with("bench-deploy", 3, serde_json::json!({"apps": [{"domain": "versioned", "dir": a}]}));
    let serving = |want: &str| c.running().iter().all(|id| get_blocking(c.http(*id), HOST, "/version").is_some_and(|(_, body)| body == want));
    c.wait_for(Duration::from_secs(30), "every node to serve A", |_| serving("A"));
    let (mut command_ms, mut all_nodes_ms) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let (label, dir) = &artifacts[(i + 1) % 2];
        let via = (i % 3) as u64 + 1;
        let started = Instant::now();
        let out = c.toil_admin(via, &["deploy", dir.to_str().unwrap(), "--domain", "versioned", "--no-wait"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let returned = Instant::now();
        while !serving(label) {
            assert!(returned.elapsed() < Duration::from_secs(30), "version {label} did not reach every node");
            std::thread::sleep(Duration::from_millis(2));
        }
        command_ms.push((returned - started).as_secs_f64() * 1000.0);
        all_nodes_ms.push(returned.elapsed().as_secs_f64() * 1000.0);
        eprintln!("run {i}: {label} via node {via}: command {:.0} ms, then every node serving after {:.0} ms", command_ms[i], all_nodes_ms[i]);
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(c);

    // Dev reload.
    let dir = repo_root().join("target/e2e").join(format!("bench-reload-{}", std::process::id()));
    let app = versioned_copy(&dir.join("src"), "app", "R0");
    let s =
        start_server("bench-reload", serde_json::json!({"apps": [{"domain": "versioned", "dir": app}], "defaultDomain": "versioned", "limits": {}}));
    let (mut save_to_serve_ms, mut build_ms, mut after_build_ms) = (Vec::new(), Vec::new(), Vec::new());
    for i in 1..=reloads {
        let label = format!("R{i}");
        let started = Instant::now();
        set_label(&app, &label);
        while get_blocking(s.http, HOST, "/version").is_none_or(|(_, body)| body != label) {
            assert!(started.elapsed() < Duration::from_secs(120), "reload to {label} did not serve");
            std::thread::sleep(Duration::from_millis(2));
        }
        save_to_serve_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        // "reload: versioned version N serving X ms after the build finished (build Y ms)"
        // The dev server prints the line just after the swap.
        let needle = format!("reload: versioned version {} serving", i + 1);
        let waited = Instant::now();
        let line = loop {
            if let Some(l) = s.log().lines().find(|l| l.contains(&needle)) {
                break l.to_string();
            }
            assert!(waited.elapsed() < Duration::from_secs(10), "no {needle:?} line in the dev log");
            std::thread::sleep(Duration::from_millis(10));
        };
        let num = |after: &str| line.split(after).nth(1).and_then(|t| t.split_whitespace().next()).and_then(|n| n.parse::<f64>().ok()).unwrap();
        after_build_ms.push(num("serving "));
        build_ms.push(num("(build "));
        eprintln!(
            "reload {i}: save→serving {:.0} ms (build {:.0} ms, then {:.0} ms)",
            save_to_serve_ms[i - 1],
            build_ms[i - 1],
            after_build_ms[i - 1]
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    let compile = median(&mut compile_ms.clone());
    let all_nodes = median(&mut all_nodes_ms.clone());
    println!();
    println!("| measurement | median | max | baseline (same run) | ratio | target |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| `toil deploy` returned → all 3 nodes serve the new version ({runs} runs) | **{all_nodes:.0} ms** | {:.0} ms | compile + link of the 3 artifacts: {compile:.0} ms | {:.1}× | ≤ 1 s |",
        max(&all_nodes_ms),
        all_nodes / compile
    );
    println!(
        "| `toil deploy --no-wait` command (upload, validate, commit) | {:.0} ms | {:.0} ms | | | |",
        median(&mut command_ms.clone()),
        max(&command_ms)
    );
    let build = median(&mut build_ms.clone());
    println!(
        "| dev reload: build finished → new version serving ({reloads} edits) | **{:.0} ms** | {:.0} ms | | | ≤ 300 ms |",
        median(&mut after_build_ms.clone()),
        max(&after_build_ms)
    );
    println!(
        "| dev reload: save → new version serving | {:.0} ms | {:.0} ms | guest build (cargo, 3 tiers): {build:.0} ms | {:.2}× | |",
        median(&mut save_to_serve_ms.clone()),
        max(&save_to_serve_ms),
        median(&mut save_to_serve_ms.clone()) / build
    );
}
