//! Authenticates the RPCs between nodes with the cluster secret.
//!
//! Every request carries `x-toil-cluster-auth: node=<id>,t=<unix ms>,mac=<hex>`
//! where `mac` is HMAC-SHA256 under the cluster secret over the sender's
//! id, the time, the method, the path and the body. A node refuses (401) a
//! request without the header, with a wrong MAC, or signed more than
//! [`MAX_SKEW_MS`] away from its own clock. The secret never travels.
//!
//! What this does not give: confidentiality (the cluster port carries
//! owners, fencing tokens and tick times in clear) and protection from a
//! replay within the skew window. Both are harmless for raft messages,
//! which are idempotent under terms and log indexes, and for tick claims,
//! which a replay can only get refused (a claim must be newer than the last).

use std::path::Path;

use ring::hmac;

use toil_cluster::NodeId;

/// The request header carrying the signature.
pub const HEADER: &str = "x-toil-cluster-auth";

/// How far a request's signing time may be from the receiver's clock.
pub const MAX_SKEW_MS: i64 = 30_000;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The secret every node of a cluster shares.
pub struct ClusterSecret {
    key: hmac::Key,
}

/// Why a secret or a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the cluster secret is {0} bytes; at least {MIN_SECRET_BYTES} are required")]
    SecretTooShort(usize),
    #[error("no {HEADER} header: the sender is not a cluster member (no cluster secret)")]
    Missing,
    #[error("malformed {HEADER} header")]
    Malformed,
    #[error("the signature is {0} ms away from this node's clock (more than {MAX_SKEW_MS} ms): a replay, or clocks out of sync")]
    Stale(i64),
    #[error("wrong signature: the sender does not have this cluster's secret")]
    BadSignature,
}

impl ClusterSecret {
    /// A secret from its bytes (surrounding whitespace is ignored).
    pub fn new(secret: &[u8]) -> Result<Self, AuthError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::SecretTooShort(secret.len()));
        }
        Ok(ClusterSecret { key: hmac::Key::new(hmac::HMAC_SHA256, secret) })
    }

    /// Reads a secret file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let bytes = std::fs::read(path).with_context(|| format!("reading the cluster secret {}", path.display()))?;
        Self::new(&bytes).with_context(|| format!("cluster secret {}", path.display()))
    }

    /// A new random secret, as 64 hex characters.
    pub fn generate() -> String {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut bytes).expect("system randomness");
        hex(&bytes)
    }

    /// What is signed: the sender, the time, the request line and the body.
    fn message(node: NodeId, t: i64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let mut m = format!("toil-cluster-rpc\n{node}\n{t}\n{method}\n{path}\n").into_bytes();
        m.extend_from_slice(body);
        m
    }

    /// The header value that signs a request from `node` at `now_ms`.
    pub fn sign(&self, node: NodeId, now_ms: i64, method: &str, path: &str, body: &[u8]) -> String {
        format!("node={node},t={now_ms},mac={}", hex(hmac::sign(&self.key, &Self::message(node, now_ms, method, path, body)).as_ref()))
    }

    /// Checks a request's header; returns the signing node.
    pub fn verify(&self, header: Option<&str>, now_ms: i64, method: &str, path: &str, body: &[u8]) -> Result<NodeId, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let mut node = None;
        let mut t = None;
        let mut mac = None;
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("node", v)) => node = v.parse::<NodeId>().ok(),
                Some(("t", v)) => t = v.parse::<i64>().ok(),
                Some(("mac", v)) => mac = unhex(v),
                _ => return Err(AuthError::Malformed),
            }
        }
        let (Some(node), Some(t), Some(mac)) = (node, t, mac) else {
            return Err(AuthError::Malformed);
        };
        let skew = now_ms - t;
        if skew.abs() > MAX_SKEW_MS {
            return Err(AuthError::Stale(skew));
        }
        hmac::verify(&self.key, &Self::message(node, t, method, path, body), &mac).map_err(|_| AuthError::BadSignature)?;
        Ok(node)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn a_signed_request_verifies_and_names_its_sender() {
        let s = ClusterSecret::new(b"0123456789abcdef0123").unwrap();
        let h = s.sign(3, NOW, "POST", "/raft/vote", b"{}");
        assert_eq!(s.verify(Some(&h), NOW + 5, "POST", "/raft/vote", b"{}"), Ok(3));
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let s = ClusterSecret::new(b"0123456789abcdef0123").unwrap();
        let other = ClusterSecret::new(b"another secret of enough length").unwrap();
        let h = s.sign(3, NOW, "POST", "/raft/vote", b"{}");
        assert_eq!(s.verify(None, NOW, "POST", "/raft/vote", b"{}"), Err(AuthError::Missing));
        assert_eq!(s.verify(Some("bearer x"), NOW, "POST", "/raft/vote", b"{}"), Err(AuthError::Malformed));
        assert_eq!(other.verify(Some(&h), NOW, "POST", "/raft/vote", b"{}"), Err(AuthError::BadSignature));
        assert_eq!(s.verify(Some(&h), NOW, "POST", "/raft/vote", b"{ }"), Err(AuthError::BadSignature), "body is signed");
        assert_eq!(s.verify(Some(&h), NOW, "POST", "/raft/append", b"{}"), Err(AuthError::BadSignature), "path is signed");
        let forged = h.replace("node=3", "node=1");
        assert_eq!(s.verify(Some(&forged), NOW, "POST", "/raft/vote", b"{}"), Err(AuthError::BadSignature), "sender is signed");
        assert_eq!(s.verify(Some(&h), NOW + MAX_SKEW_MS + 1, "POST", "/raft/vote", b"{}"), Err(AuthError::Stale(MAX_SKEW_MS + 1)));
        assert_eq!(ClusterSecret::new(b"  short \n").err(), Some(AuthError::SecretTooShort(5)));
    }

    #[test]
    fn generated_secrets_are_long_enough_and_differ() {
        let (a, b) = (ClusterSecret::generate(), ClusterSecret::generate());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(ClusterSecret::new(a.as_bytes()).is_ok());
    }
}
