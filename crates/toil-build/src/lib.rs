//! Builds a guest crate into one wasm artifact per tier.
//!
//! The guest toolchain is Debian's `rustc-web` with its matching standard
//! library sources (`-Zbuild-std`) and `wasm-ld`; `scripts/guest-toolchain.sh`
//! installs it. [`GuestToolchain::detect`] finds it and says what is missing.
//!
//! [`build_app`] runs one `cargo rustc` pass per tier with
//! `--cfg toil_tier="request" | "stream" | "daemon"` passed to the app crate
//! only, so dependencies (std, the SDK) are compiled once and shared by the
//! three passes. Each pass's output is validated with the host's own
//! artifact checks; a tier the crate declares nothing for yields no artifact.
//! The child `cargo` runs in a sanitised environment: a host toolchain's
//! `RUSTC`, `RUSTFLAGS` or `CARGO_*` variables must not leak into the guest build.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use toil_abi::Tier;
use toil_config::Targets;
use toil_runtime::artifact::{inspect, LoadError};

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("guest toolchain not found: {0}; install it with scripts/guest-toolchain.sh")]
    Toolchain(String),
    #[error("{dir}: no Cargo.toml; `toil build` takes the directory of a guest crate")]
    NotACrate { dir: PathBuf },
    #[error("cargo failed to build the {tier} tier of {dir} (compiler output above)")]
    Compile { tier: Tier, dir: PathBuf },
    #[error("cannot run {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("cargo produced no .wasm for the {tier} tier of {dir}; is the crate a `cdylib`?")]
    NoArtifact { tier: Tier, dir: PathBuf },
    #[error("the {tier} artifact of {dir} is invalid: {source}")]
    Invalid { tier: Tier, dir: PathBuf, source: LoadError },
    #[error("{dir} declares no tier: add toil::export! {{ request: [...], stream: [...], daemon: ... }}")]
    Empty { dir: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The located guest toolchain.
#[derive(Clone, Debug)]
pub struct GuestToolchain {
    pub cargo: PathBuf,
    pub rustc: PathBuf,
    /// `wasm-ld-<LLVM major of rustc>`.
    pub linker: String,
    pub wasi_libs: PathBuf,
}

/// The guest's shadow stack. Rust's wasm default is 1 MiB; 128 KiB keeps a
/// request's stack, data and first heap pages within a few hundred KiB, which
/// is what the pooling allocator resets between requests. The stack sits
/// first in memory (`--stack-first`), so an overflow traps instead of
/// corrupting data.
pub const GUEST_STACK_BYTES: usize = 128 << 10;

const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const WASI_LIBS: &str = "/usr/lib/wasm32-wasi";
const RUST_SRC: &str = "/usr/lib/rustlib/src/rust";

impl GuestToolchain {
    pub fn detect() -> Result<Self, BuildError> {
        for (path, pkg) in [(DEBIAN_CARGO, "cargo-web"), (DEBIAN_RUSTC, "rustc-web"), (RUST_SRC, "rust-web-src"), (WASI_LIBS, "wasi-libc")] {
            if !Path::new(path).exists() {
                return Err(BuildError::Toolchain(format!("{path} is missing (Debian package {pkg})")));
            }
        }
        let out =
            sanitized(Command::new(DEBIAN_RUSTC)).arg("-vV").output().map_err(|source| BuildError::Spawn { what: DEBIAN_RUSTC.into(), source })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = text
            .lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .and_then(|v| v.split('.').next())
            .ok_or_else(|| BuildError::Toolchain(format!("{DEBIAN_RUSTC} -vV names no LLVM version")))?;
        let linker = format!("wasm-ld-{major}");
        if !Path::new("/usr/bin").join(&linker).exists() {
            return Err(BuildError::Toolchain(format!("/usr/bin/{linker} is missing (Debian package lld-{major})")));
        }
        Ok(GuestToolchain { cargo: DEBIAN_CARGO.into(), rustc: DEBIAN_RUSTC.into(), linker, wasi_libs: WASI_LIBS.into() })
    }

    /// The cargo configuration of guest builds.
    fn cargo_config(&self) -> String {
        format!(
            "# Written by toil build: the guest toolchain configuration.\n\
             [build]\nrustc = {rustc:?}\ntarget = \"wasm32-wasip1\"\n\
             [unstable]\nbuild-std = [\"std\", \"panic_abort\"]\n\
             [env]\nRUSTC_BOOTSTRAP = \"1\"\n\
             [target.wasm32-wasip1]\nlinker = {linker:?}\nrustflags = [\"-L\", \"native={libs}\", \"-C\", \"link-arg=-zstack-size={stack}\"]\n",
            rustc = self.rustc.display().to_string(),
            linker = self.linker,
            libs = self.wasi_libs.display(),
            stack = GUEST_STACK_BYTES,
        )
    }
}

/// A `Command` without the host toolchain's environment.
fn sanitized(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let host_only = k.starts_with("CARGO_") && k != "CARGO_HOME"
            || matches!(&*k, "RUSTC" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTFLAGS" | "RUSTDOC" | "RUSTUP_TOOLCHAIN" | "RUSTDOCFLAGS");
        if host_only {
            cmd.env_remove(&*k);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("/usr/bin:/bin:{path}")).env("RUSTC_BOOTSTRAP", "1");
    cmd
}

/// Artifacts written by a build, per tier.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Built {
    pub request: Option<PathBuf>,
    pub stream: Option<PathBuf>,
    pub daemon: Option<PathBuf>,
}

impl Built {
    pub fn get(&self, tier: Tier) -> Option<&Path> {
        match tier {
            Tier::Request => self.request.as_deref(),
            Tier::Stream => self.stream.as_deref(),
            Tier::Daemon => self.daemon.as_deref(),
        }
    }

    fn slot(&mut self, tier: Tier) -> &mut Option<PathBuf> {
        match tier {
            Tier::Request => &mut self.request,
            Tier::Stream => &mut self.stream,
            Tier::Daemon => &mut self.daemon,
        }
    }
}

/// Output path of `tier` under `targets`.
pub fn target_path(targets: &Targets, tier: Tier) -> &Path {
    match tier {
        Tier::Request => &targets.out_file,
        Tier::Stream => &targets.stream_file,
        Tier::Daemon => &targets.cold_file,
    }
}

/// Builds the crate in `dir` into its tiers' artifacts (paths from
/// `targets`, relative to `dir`), using `target_dir` for cargo's output.
pub fn build_app(tc: &GuestToolchain, dir: &Path, targets: &Targets, target_dir: &Path) -> Result<Built, BuildError> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(BuildError::NotACrate { dir: dir.into() });
    }
    // cargo runs in `dir`, so every path handed to it must be absolute.
    let target_dir = &std::path::absolute(target_dir).map_err(|source| BuildError::Write { path: target_dir.into(), source })?;
    std::fs::create_dir_all(target_dir).map_err(|source| BuildError::Write { path: target_dir.into(), source })?;
    // Every tier's pass writes the same output file in the target dir, so
    // builds sharing a target dir (several `toil dev`s, say) take turns.
    let lock_path = target_dir.join("toil-build.lock");
    let lock = std::fs::File::create(&lock_path).map_err(|source| BuildError::Write { path: lock_path.clone(), source })?;
    lock.lock().map_err(|source| BuildError::Write { path: lock_path, source })?;
    let config = target_dir.join("toil-guest-config.toml");
    std::fs::write(&config, tc.cargo_config()).map_err(|source| BuildError::Write { path: config.clone(), source })?;

    let mut built = Built::default();
    for tier in Tier::ALL {
        let wasm = compile_tier(tc, dir, &config, target_dir, tier)?;
        let out = dir.join(target_path(targets, tier));
        let bytes = std::fs::read(&wasm).map_err(|source| BuildError::Spawn { what: wasm.display().to_string(), source })?;
        match inspect(&bytes, tier, usize::MAX) {
            Ok(_) => {}
            // Nothing of this tier was declared: no artifact, and no stale one.
            Err(LoadError::MissingManifest) => {
                let _ = std::fs::remove_file(&out);
                continue;
            }
            Err(source) => return Err(BuildError::Invalid { tier, dir: dir.into(), source }),
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|source| BuildError::Write { path: parent.into(), source })?;
        }
        // Write and rename, so a server loading the artifact never reads half of it.
        let partial = out.with_extension(format!("wasm.{}.partial", std::process::id()));
        std::fs::write(&partial, &bytes).map_err(|source| BuildError::Write { path: partial.clone(), source })?;
        std::fs::rename(&partial, &out).map_err(|source| BuildError::Write { path: out.clone(), source })?;
        *built.slot(tier) = Some(out);
    }
    if built == Built::default() {
        return Err(BuildError::Empty { dir: dir.into() });
    }
    Ok(built)
}

/// One `cargo rustc` pass; returns the `.wasm` it produced.
fn compile_tier(tc: &GuestToolchain, dir: &Path, config: &Path, target_dir: &Path, tier: Tier) -> Result<PathBuf, BuildError> {
    let mut cmd = sanitized(Command::new(&tc.cargo));
    cmd.current_dir(dir)
        .arg("--config")
        .arg(config)
        .args(["rustc", "--release", "--lib", "--message-format=json-render-diagnostics", "--target-dir"])
        .arg(target_dir)
        .arg("--")
        .arg("--cfg")
        .arg(format!("toil_tier=\"{}\"", tier.name()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().map_err(|source| BuildError::Spawn { what: tc.cargo.display().to_string(), source })?;
    let mut wasm = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines().map_while(Result::ok) {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || !msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")) {
            continue;
        }
        if let Some(files) = msg["filenames"].as_array() {
            wasm = files.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm")).map(PathBuf::from).or(wasm);
        }
    }
    let status = child.wait().map_err(|source| BuildError::Spawn { what: tc.cargo.display().to_string(), source })?;
    if !status.success() {
        return Err(BuildError::Compile { tier, dir: dir.into() });
    }
    tracing::debug!(tier = %tier, dir = %dir.display(), "guest pass done");
    wasm.ok_or(BuildError::NoArtifact { tier, dir: dir.into() })
}
