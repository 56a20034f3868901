//! `toil tick DOMAIN TASK`: asks a running `toil dev` or `toil node` (its
//! admin listener) to fire a daemon task now.

use crate::admin_client::{AdminArgs, AdminClient};

pub fn run(admin: &AdminArgs, domain: &str, task: &str) -> anyhow::Result<()> {
    let client = AdminClient::new(admin)?;
    let (status, text) = client.request_blocking(http::Method::POST, &format!("/daemon/tick?domain={domain}&task={task}"), Vec::new())?;
    anyhow::ensure!(status.is_success(), "{}", text.trim_end());
    print!("{text}");
    Ok(())
}
