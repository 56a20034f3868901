//! `toil tls status` and `toil tls renew HOST`: the cluster's ACME
//! certificates, through a node's admin API.

use crate::admin_client::{AdminArgs, AdminClient};

#[derive(clap::Subcommand)]
pub enum TlsCommand {
    /// Each host's certificate as the cluster keeps it: issued, expiry,
    /// orders, failures and the last error (JSON).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Order a host's certificate again at the next check, however long it
    /// is still valid (a key compromise, a changed CA); every node serves
    /// the new one once issued.
    Renew {
        /// A host name of a deployed domain.
        host: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    let (admin, method, path) = match &command {
        TlsCommand::Status { admin } => (admin, http::Method::GET, "/tls/status".to_string()),
        TlsCommand::Renew { host, admin } => (admin, http::Method::POST, format!("/tls/renew?host={host}")),
    };
    let (status, text) = AdminClient::new(admin)?.request_blocking(method, &path, Vec::new())?;
    anyhow::ensure!(status.is_success(), "{}", text.trim_end());
    println!("{}", text.trim_end());
    Ok(())
}
