//! Deployed releases: which version of each domain the cluster serves, and
//! the history `toil rollback` picks from.
//!
//! The log carries only metadata. Artifacts are blobs named by their
//! SHA-256 ([`BlobRef`]); nodes fetch the ones they lack from the node that
//! accepted the upload (`origin`) or any other member, and check the hash.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// How many releases of a domain the state keeps; older ones drop off (their
/// blobs may be collected).
pub const HISTORY: usize = 20;

/// An artifact by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    pub size: u64,
}

/// What a deploy asks the cluster to serve for one domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSpec {
    /// Host names the domain answers (lower-case, no port).
    pub hosts: Vec<String>,
    /// IANA time zone of the daemon's cron schedules.
    pub timezone: String,
    /// The artifact of each tier the domain has (request, stream, daemon).
    pub request: Option<BlobRef>,
    pub stream: Option<BlobRef>,
    pub daemon: Option<BlobRef>,
    /// The node that accepted the upload and holds the blobs.
    pub origin: NodeId,
    /// Unix ms when the upload was accepted.
    pub deployed_at_ms: i64,
    /// Where it came from, for people: "toil deploy", "config", "dev reload".
    pub source: String,
}

impl ReleaseSpec {
    /// Every artifact of the release.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        [&self.request, &self.stream, &self.daemon].into_iter().flatten()
    }

    /// Whether `other` serves exactly what this does (who uploaded it and when aside).
    pub fn same_content(&self, other: &ReleaseSpec) -> bool {
        (&self.hosts, &self.timezone, &self.request, &self.stream, &self.daemon)
            == (&other.hosts, &other.timezone, &other.request, &other.stream, &other.daemon)
    }
}

/// A numbered release of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: u64,
    #[serde(flatten)]
    pub spec: ReleaseSpec,
}

/// A domain's releases, newest last, and the one being served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainReleases {
    pub releases: Vec<Release>,
    pub active: u64,
    /// The highest version ever given out (versions are never reused).
    pub last_version: u64,
}

impl DomainReleases {
    pub fn active(&self) -> Option<&Release> {
        self.get(self.active)
    }

    pub fn get(&self, version: u64) -> Option<&Release> {
        self.releases.iter().find(|r| r.version == version)
    }

    /// The release before the active one, which a plain `toil rollback` returns to.
    pub fn previous(&self) -> Option<&Release> {
        self.releases.iter().rev().find(|r| r.version < self.active)
    }

    /// Adds `spec` as a new version and serves it.
    pub(crate) fn push(&mut self, spec: ReleaseSpec) -> u64 {
        self.last_version += 1;
        self.releases.push(Release { version: self.last_version, spec });
        self.active = self.last_version;
        if self.releases.len() > HISTORY {
            // Drop the oldest release that is not being served.
            let active = self.active;
            if let Some(i) = self.releases.iter().position(|r| r.version != active) {
                self.releases.remove(i);
            }
        }
        self.last_version
    }
}
