//! `toil dev`: build the configured apps and serve them on this machine,
//! rebuilding and swapping an app when its sources change. The serving is
//! the node's ([`crate::host::serve`]), with an in-memory log.

use std::path::Path;

use anyhow::Context;
use toil_build::{build_app, GuestToolchain};
use toil_config::Config;
use toil_deploy::BlobStore;
use toil_edge::admin;

use crate::admin_client::DEV_TOKEN_FILE;
use crate::host::{serve, Host};

/// How `toil dev` was asked to run.
pub struct Options {
    /// Build the apps first (else serve the artifacts already built).
    pub build: bool,
    /// Rebuild and swap an app when its sources change.
    pub watch: bool,
    /// Overrides of the config's `dev.listen` and `dev.admin`.
    pub listen: Option<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    pub stop_on_stdin_eof: bool,
}

pub fn run(config_path: &Path, options: Options) -> anyhow::Result<()> {
    let Options { build, watch, listen, admin, stop_on_stdin_eof } = options;
    let config = Config::load(config_path)?;
    let toolchain = if build { Some(GuestToolchain::detect()?) } else { None };
    if let Some(tc) = &toolchain {
        for app in &config.apps {
            eprintln!("building {} ({})", app.domain, app.dir.display());
            build_app(tc, &app.dir, &app.targets, &config.guest_target_dir)?;
        }
    }
    let dev_dir = config.dev.cert_dir.clone();
    let host = Host {
        name: "dev".into(),
        node_id: 1,
        listen: listen.unwrap_or(config.dev.listen),
        admin: admin.unwrap_or(config.dev.admin),
        cert_dir: dev_dir.clone(),
        store: {
            let dir = dev_dir.with_file_name("toil-dev-artifacts");
            BlobStore::open(&dir).with_context(|| format!("opening the dev artifact store {} (next to dev.certDir)", dir.display()))?
        },
        admin_token: admin::load_or_create_token(&dev_dir.join(DEV_TOKEN_FILE))?,
        cluster: None,
        fetch: None,
        watch: if watch { toolchain } else { None },
        stop_on_stdin_eof,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(config, host))
}
