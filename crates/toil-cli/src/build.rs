//! `toil build [DIR]`.

use std::path::Path;

use toil_abi::Tier;
use toil_build::{build_app, GuestToolchain};

pub fn run(dir: &Path, target_dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)?;
    let targets = toil_config::load_targets(&dir)?;
    let target_dir = target_dir.map(Path::to_path_buf).unwrap_or_else(|| dir.join("target/toil"));
    let tc = GuestToolchain::detect()?;
    let built = build_app(&tc, &dir, &targets, &target_dir)?;
    for tier in Tier::ALL {
        if let Some(p) = built.get(tier) {
            let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            println!("{:>8}  {}  ({} KiB)", tier.name(), p.display(), size.div_ceil(1024));
        }
    }
    Ok(())
}
