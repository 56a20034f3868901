//! The configured apps, offered to the log as releases.

use std::sync::Arc;
use std::time::Duration;

use toil_abi::Tier;
use toil_build::target_path;
use toil_config::AppConfig;
use toil_deploy::api::DeployRequest;
use toil_deploy::{DeployError, Deployer};

/// Offers a configured app's built artifacts as a release of its domain
/// (`only_if_new`: unless the domain already has one).
pub async fn offer_app(deployer: &Deployer, app: &AppConfig, source: &str, only_if_new: bool) -> Result<toil_deploy::api::DeployReply, DeployError> {
    let mut req = DeployRequest {
        domain: app.domain.clone(),
        hosts: app.hosts.clone(),
        timezone: Some(app.timezone.name().to_string()),
        source: source.to_string(),
        ..DeployRequest::default()
    };
    for tier in Tier::ALL {
        let path = app.artifact(target_path(&app.targets, tier));
        let Ok(bytes) = std::fs::read(&path) else { continue };
        req.set_artifact(tier, deployer.upload(bytes.into()).await?.sha256);
    }
    deployer.deploy(req, only_if_new).await
}

/// `toil node`: offers the configured apps to the cluster, retrying while
/// it has no leader. A domain the cluster already serves is left alone.
pub async fn offer_until_committed(deployer: Arc<Deployer>, apps: Vec<AppConfig>) {
    for app in apps {
        loop {
            match offer_app(&deployer, &app, "config", true).await {
                Ok(r) if r.unchanged => tracing::info!(
                    domain = app.domain,
                    "the cluster serves {} version {}; the configured build is not deployed (use toil deploy)",
                    app.domain,
                    r.version
                ),
                Ok(r) => tracing::info!(domain = app.domain, "deployed the configured {} as version {}", app.domain, r.version),
                Err(DeployError::LogUnavailable(e)) => {
                    tracing::debug!(domain = app.domain, "offering the configured app: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                Err(e) => tracing::error!(domain = app.domain, "the configured app is not deployed: {e}"),
            }
            break;
        }
    }
}
