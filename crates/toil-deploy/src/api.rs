//! Bodies of the admin API's deploy endpoints (JSON).
//!
//! - `POST /deploy/blob`: the body is one artifact's bytes; the reply is its [`toil_cluster::BlobRef`].
//! - `POST /deploy/release`: a [`DeployRequest`] naming uploaded blobs; the
//!   node validates them, commits the release and replies [`DeployReply`].
//! - `POST /deploy/rollback`: a [`RollbackRequest`]; replies [`DeployReply`].

use serde::{Deserialize, Serialize};

/// Admin endpoint paths.
pub const BLOB_PATH: &str = "/deploy/blob";
pub const RELEASE_PATH: &str = "/deploy/release";
pub const ROLLBACK_PATH: &str = "/deploy/rollback";

/// A deploy of one domain: the hex SHA-256 of each tier's uploaded artifact.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeployRequest {
    pub domain: String,
    /// Host names; default `<domain>.localhost`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// IANA time zone of cron schedules; default UTC.
    #[serde(default)]
    pub timezone: Option<String>,
    pub request: Option<String>,
    pub stream: Option<String>,
    pub daemon: Option<String>,
    /// Free text kept in the history ("toil deploy from ./examples/hello").
    #[serde(default)]
    pub source: String,
}

impl DeployRequest {
    /// Names `sha256` as the artifact of `tier`.
    pub fn set_artifact(&mut self, tier: toil_abi::Tier, sha256: String) {
        let slot = match tier {
            toil_abi::Tier::Request => &mut self.request,
            toil_abi::Tier::Stream => &mut self.stream,
            toil_abi::Tier::Daemon => &mut self.daemon,
        };
        *slot = Some(sha256);
    }
}

/// `toil rollback DOMAIN [VERSION]`: without a version, the one before the served one.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub domain: String,
    pub version: Option<u64>,
}

/// What a deploy or rollback did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployReply {
    pub domain: String,
    /// The version the cluster now serves.
    pub version: u64,
    /// True when nothing changed (the same content was already served).
    pub unchanged: bool,
}
