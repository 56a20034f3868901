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
/// - `POST /deploy/blob`, `/deploy/release`, `/deploy/rollback` (`toil deploy`, `toil rollback`);
/// - `GET /tls/status` and `POST /tls/renew?host=H` (`toil tls`).
pub struct NodeAdmin {
    pub daemons: Arc<Daemons>,
    pub log: Arc<dyn ClaimLog>,
    pub cluster: Option<Arc<ClusterNode>>,
    pub deployer: Arc<Deployer>,
    /// Whether the node orders certificates (`tls.acme`).
    pub acme: bool,
}

impl NodeAdmin {
    fn status(&self) -> ClusterStatus {
        match &self.cluster {
            Some(node) => node.status(),
            None => ClusterStatus::single_node(&self.log.state()),
        }
    }
}

/// Each host's certificate as the cluster keeps it, without the key.
fn tls_status(state: &toil_cluster::ClusterState) -> serde_json::Value {
    let hosts: serde_json::Map<String, serde_json::Value> = state
        .tls()
        .hosts()
        .iter()
        .map(|(host, h)| {
            let issued = h.issued.as_ref().map(|c| serde_json::json!({"order": c.order, "issuedMs": c.issued_ms, "notAfterMs": c.not_after_ms}));
            let ordering = h.claim.map(|c| serde_json::json!({"node": c.node, "order": c.order, "startedMs": c.started_ms}));
            let entry = serde_json::json!({
                "issued": issued, "ordering": ordering, "orders": h.orders, "failures": h.failures,
                "retryAtMs": h.retry_at_ms, "lastError": h.last_error, "renewRequested": h.renew_requested,
            });
            (host.clone(), entry)
        })
        .collect();
    serde_json::json!({ "hosts": hosts })
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
            "/tls/status" => {
                let status = serde_json::to_string_pretty(&tls_status(&self.log.state())).unwrap_or_default();
                Ok(Box::pin(async move { (StatusCode::OK, status) }))
            }
            "/daemon/tick" | "/tls/renew" | BLOB_PATH | RELEASE_PATH | ROLLBACK_PATH if post_only(&req) => {
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
            "/tls/renew" => {
                let (log, acme) = (self.log.clone(), self.acme);
                Ok(Box::pin(async move {
                    let Some(host) = req.param("host") else {
                        return (StatusCode::BAD_REQUEST, "expected ?host=H\n".to_string());
                    };
                    if !acme {
                        return (StatusCode::CONFLICT, "this node orders no certificates (tls.acme is not configured)\n".to_string());
                    }
                    match super::acme::AcmeCerts::renew(log.as_ref(), host).await {
                        Ok(()) => (StatusCode::OK, format!("{host}: a new certificate will be ordered at the next check\n")),
                        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
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
