//! `toil dev`'s reloader: an app whose sources change is rebuilt and
//! deployed as a new release.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use toil_build::{build_app, GuestToolchain};
use toil_config::Config;
use toil_deploy::Deployer;

use super::apps::offer_app;

/// `toil dev`: rebuilds an app when a file of its crate changes and
/// deploys the result as a new release. A failed build leaves the running
/// version in place (the compiler's output is on the terminal).
pub async fn reload_on_change(tc: GuestToolchain, config: Config, deployer: Arc<Deployer>) {
    let mut seen: Vec<Fingerprint> = config.apps.iter().map(|a| fingerprint(&a.dir)).collect();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, app) in config.apps.iter().enumerate() {
            let now = fingerprint(&app.dir);
            if now == seen[i] {
                continue;
            }
            // Let an editor finish writing (save = truncate + write, or several files).
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen[i] = fingerprint(&app.dir);
            let started = Instant::now();
            eprintln!("reload: {} changed; rebuilding", app.domain);
            let (tc, dir, targets, target_dir) = (tc.clone(), app.dir.clone(), app.targets.clone(), config.guest_target_dir.clone());
            let built = tokio::task::spawn_blocking(move || build_app(&tc, &dir, &targets, &target_dir)).await;
            let build_time = started.elapsed();
            match built {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("reload: {} did not build; the previous version keeps serving: {e}", app.domain);
                    continue;
                }
                Err(e) => {
                    eprintln!("reload: the build of {} panicked: {e}", app.domain);
                    continue;
                }
            }
            let swap_started = Instant::now();
            let mut served = deployer.served();
            match offer_app(&deployer, app, "dev reload", false).await {
                Ok(r) if r.unchanged => eprintln!("reload: {} built in {build_time:?}; nothing changed (version {})", app.domain, r.version),
                Ok(r) => {
                    let _ = tokio::time::timeout(Duration::from_secs(10), served.wait_for(|s| s.get(&app.domain) == Some(&r.version))).await;
                    eprintln!(
                        "reload: {} version {} serving {} ms after the build finished (build {} ms)",
                        app.domain,
                        r.version,
                        swap_started.elapsed().as_millis(),
                        build_time.as_millis()
                    );
                }
                Err(e) => eprintln!("reload: {} was not swapped; the previous version keeps serving: {e}", app.domain),
            }
        }
    }
}

/// What a source change is detected by: every file's path, length and modification time.
#[derive(PartialEq, Eq, Default)]
struct Fingerprint(Vec<(PathBuf, u64, Option<SystemTime>)>);

/// The crate's `Cargo.toml`, `build.rs` and everything under `src/`.
fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    let mut stack = vec![dir.join("src")];
    for f in ["Cargo.toml", "build.rs"] {
        files.push(dir.join(f));
    }
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Fingerprint(
        files
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::metadata(&p).ok()?;
                Some((p, m.len(), m.modified().ok()))
            })
            .collect(),
    )
}
