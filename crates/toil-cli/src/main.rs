//! `toil`: the command line of Toil Edge.
//!
//! - `toil new NAME`: a new app crate anywhere on disk (`docs/getting-started.md`);
//! - `toil build [DIR]`: compile a guest crate into its tier artifacts;
//! - `toil dev [--config FILE]`: build the configured apps and serve them
//!   locally (HTTP/1.1, HTTP/2, HTTP/3, WebTransport stream sessions, admin
//!   metrics);
//! - `toil node --id N ...`: an edge node of a cluster (openraft); `toil
//!   cluster secret|remove`; `toil status`: a node's view of its cluster;
//! - `toil deploy [PATH]`: upload a domain's artifacts to a node; the
//!   cluster replicates them and every node swaps to the new version;
//!   `toil rollback DOMAIN [VERSION]`;
//! - `toil tick DOMAIN TASK`: fire a daemon task now on a running node;
//! - `toil bench`: the L1 benchmark (instance overhead, throughput vs native).
//!   The L2/L3 benchmark is `cargo bench -p toil-cli --bench stream`.
//!
//! Each subcommand lives in its own module; the work is done by the library
//! crates (`toil-build`, `toil-runtime`, `toil-edge`).

mod admin_client;
mod bench;
mod build;
mod deploy;
mod dev;
mod host;
mod new;
mod node;
mod status;
mod tick;
mod tls;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "toil", version = version(), about = "Toil Edge: run WebAssembly apps on edge nodes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `toil --version`: the host's version and the guest ABI it runs.
fn version() -> &'static str {
    static VERSION: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("{} (guest ABI v{})", env!("CARGO_PKG_VERSION"), toil_abi::ABI_VERSION));
    &VERSION
}

#[derive(Subcommand)]
enum Command {
    /// Create a new app crate (NAME/, anywhere on disk) that builds with
    /// `toil build` and serves with `toil dev` as it is.
    New(new::NewArgs),
    /// Build a guest crate into release.wasm / release-stream.wasm / release-cold.wasm.
    Build {
        /// The guest crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Cargo target directory for the guest build (default: DIR/target/toil).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Build the apps of a toilconfig.json and serve them locally.
    Dev {
        /// The config file (default: ./toilconfig.json).
        #[arg(long, default_value = toil_config::FILE_NAME)]
        config: PathBuf,
        /// Serve the artifacts already built instead of building first.
        #[arg(long)]
        no_build: bool,
        /// Do not rebuild and swap an app when its sources change.
        #[arg(long)]
        no_watch: bool,
        /// Serve HTTP/1.1, HTTP/2, HTTP/3 and WebTransport on this address
        /// instead of the config's `dev.listen` (port 0: any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Serve the admin API on this address instead of the config's `dev.admin`.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// Exit when standard input closes (lets a supervising process, such
        /// as a test harness, take the server down with it).
        #[arg(long, hide = true)]
        stop_on_stdin_eof: bool,
    },
    /// Fire a daemon task now on a running `toil dev` (like a scheduled tick,
    /// outside the schedule).
    Tick {
        /// The domain whose daemon runs the task.
        domain: String,
        /// The task (its method name).
        task: String,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
    },
    /// Deploy a domain's artifacts (building its crate first) to a node;
    /// the cluster replicates them and every node serves the new version.
    Deploy(deploy::DeployArgs),
    /// Serve an earlier version of a domain again (default: the one before the served one).
    Rollback(deploy::RollbackArgs),
    /// Run an edge node of a cluster: serves the configured apps, and runs
    /// each domain's daemon on one elected node (raft, at-most-once ticks).
    Node(node::NodeArgs),
    /// Operate on a cluster: remove a node, make a secret.
    #[command(subcommand)]
    Cluster(node::ClusterCommand),
    /// The cluster's ACME certificates: status, and renewal on demand.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// Show a node's view of its cluster: members, leader, deployed versions, daemon owners, ticks.
    Status {
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: admin_client::AdminArgs,
    },
    /// Benchmark the L1 tier: per-request instance overhead, and HTTP/1.1
    /// throughput (wrk) against a native hyper server, as a ratio.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    // wasmtime-wasi traces every WASI call at info level; only its warnings matter here.
    // openraft warns on every failed heartbeat (20 a second while a peer is
    // down); the node logs leader and owner changes itself.
    let default_filter = "info,wasmtime_wasi=warn,wiggle=warn,openraft=error";
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TOIL_LOG").unwrap_or_else(|_| default_filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { dir, target_dir } => build::run(&dir, target_dir.as_deref()),
        Command::New(args) => new::run(args),
        Command::Dev { config, no_build, no_watch, listen, admin, stop_on_stdin_eof } => {
            dev::run(&config, dev::Options { build: !no_build, watch: !no_watch, listen, admin, stop_on_stdin_eof })
        }
        Command::Tick { domain, task, admin } => tick::run(&admin, &domain, &task),
        Command::Deploy(args) => deploy::run(args),
        Command::Rollback(args) => deploy::rollback(args),
        Command::Node(args) => node::run(args),
        Command::Cluster(command) => node::cluster(command),
        Command::Tls(command) => tls::run(command),
        Command::Status { json, admin } => status::run(&admin, json),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
