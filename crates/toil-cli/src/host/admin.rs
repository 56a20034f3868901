//! The node's admin routes beyond metrics.

use std::sync::Arc;

use toil_cluster::ClaimLog;
use toil_daemon::{Daemons, TickError};
use toil_deploy::api::{DeployRequest, RollbackRequest, BLOB_PATH, RELEASE_PATH, ROLLBACK_PATH};
use toil_deploy::{DeployError, Deployer};
use toil_edge::admin::{self, AdminReply, AdminRequest};
use toil_raft::{ClusterNode, ClusterStatus};

/// The node's admin endpoints beyond metrics:
/// - `GET /cluster/status` (`toil status`, JSON);
/// - `POST /daemon/tick?domain=D&task=T` (`toil tick`);
/// - `POST /deploy/blob`, `/deploy/release`, `/deploy/rollback` (`toil deploy`, `toil rollback`).
pub struct NodeAdmin {
    pub daemons: Arc<Daemons>,
    pub log: Arc<dyn ClaimLog>,
    pub cluster: Option<Arc<ClusterNode>>,
    pub deployer: Arc<Deployer>,
}

impl NodeAdmin {
    fn status(&self) -> ClusterStatus {
        match &self.cluster {
            Some(node) => node.status(),
            None => ClusterStatus::single_node(&self.log.state()),
        }
    }
}

fn reply_json<T: serde::Serialize>(result: Result<T, DeployError>) -> (http::StatusCode, String) {
    match result {
        Ok(v) => (http::StatusCode::OK, serde_json::to_string(&v).unwrap_or_default()),
        Err(e) if e.is_client_error() => (http::StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
        // A bug or a broken store, not a moment without a leader: retrying will not help.
        Err(e @ DeployError::Internal(_)) => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(e) => (http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

impl admin::AdminRoutes for NodeAdmin {
    fn route(&self, req: AdminRequest) -> Result<AdminReply, AdminRequest> {
        use http::{Method, StatusCode};
        let post_only = |req: &AdminRequest| req.method != Method::POST;
        let path = req.path.clone();
        match path.as_str() {
            "/cluster/status" => {
                let status = serde_json::to_string_pretty(&self.status()).unwrap_or_default();
                Ok(Box::pin(async move { (StatusCode::OK, status) }))
            }
            "/daemon/tick" | BLOB_PATH | RELEASE_PATH | ROLLBACK_PATH if post_only(&req) => {
                Ok(Box::pin(async move { (StatusCode::METHOD_NOT_ALLOWED, "use POST\n".to_string()) }))
            }
            "/daemon/tick" => {
                let daemons = self.daemons.clone();
                Ok(Box::pin(async move {
                    let (Some(domain), Some(task)) = (req.param("domain"), req.param("task")) else {
                        return (StatusCode::BAD_REQUEST, "expected ?domain=D&task=T\n".to_string());
                    };
                    match daemons.tick_now(domain, task).await {
                        Ok(fire_time) => (StatusCode::OK, format!("fired {domain} {task} (fire_time_ms {fire_time})\n")),
                        Err(e @ (TickError::NoDomain(_) | TickError::NoTask { .. })) => (StatusCode::NOT_FOUND, format!("{e}\n")),
                        Err(e) => (StatusCode::CONFLICT, format!("{e}\n")),
                    }
                }))
            }
            BLOB_PATH => {
                let deployer = self.deployer.clone();
                Ok(Box::pin(async move { reply_json(deployer.upload(req.body).await) }))
            }
            RELEASE_PATH => {
                let deployer = self.deployer.clone();
                Ok(Box::pin(async move {
                    match serde_json::from_slice::<DeployRequest>(&req.body) {
                        Ok(r) => reply_json(deployer.deploy(r, false).await),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("malformed deploy request: {e}\n")),
                    }
                }))
            }
            ROLLBACK_PATH => {
                let deployer = self.deployer.clone();
                Ok(Box::pin(async move {
                    match serde_json::from_slice::<RollbackRequest>(&req.body) {
                        Ok(r) => reply_json(deployer.rollback(r).await),
                        Err(e) => (StatusCode::BAD_REQUEST, format!("malformed rollback request: {e}\n")),
                    }
                }))
            }
            _ => Err(req),
        }
    }
}
