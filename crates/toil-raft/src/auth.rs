//! Authenticates the RPCs between nodes with the cluster secret and
//! refuses every replay.
//!
//! Every request carries
//! `x-toil-cluster-auth: node=<from>,to=<to>,e=<epoch>,n=<seq>,t=<unix ms>,mac=<hex>`
//! where `mac` is HMAC-SHA256 under the cluster secret over all the other
//! fields, the method, the path and the body. The secret never travels.
//!
//! A node refuses (401) a request without the header, with a wrong MAC,
//! signed more than [`MAX_SKEW_MS`] away from its own clock, addressed to
//! another node, or already seen. The form, the time, the receiver and the
//! numbering are checked from the header alone, before a body (up to the
//! RPC limit) is read; the MAC once it is.
//!
//! ## Replays
//!
//! A sender numbers its requests: an **epoch**, chosen when it starts and
//! raised whenever a receiver asks, and a **sequence number** within it.
//! A receiver ([`ReplayGuard`]) accepts each (sender, epoch, seq) once:
//!
//! - an epoch older than the newest it accepted from that sender: refused;
//! - in the newest epoch, each number once, in any order within a window of
//!   [`WINDOW`] (requests overtake one another on parallel connections);
//!   older numbers are refused;
//! - the newest epoch of each sender is written to disk before its first
//!   request is accepted. After a restart the receiver no longer knows which
//!   numbers it saw, so it refuses that epoch and every older one and tells
//!   the sender, in [`EXPECT_HEADER`], the epoch to move to.
//!
//! A request names its receiver, so one captured on its way to one node is
//! refused by the others; a sender that does not yet know the id behind an
//! address learns it from the same header. So a captured request is refused
//! at any age, across restarts of either side.
//!
//! Replies are signed too ([`REPLY_HEADER`]), over the request's stamp, the
//! status, [`EXPECT_HEADER`] and the body: a sender acts only on a reply
//! the receiver made for that very request. Confidentiality, and keeping
//! out whoever lacks the secret before a body is read, are the cluster
//! port's mutual TLS ([`crate::tls`]); this layer holds each member to its
//! own identity and numbering within it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::hmac;

use toil_cluster::NodeId;

/// The request header carrying the signature.
pub const HEADER: &str = "x-toil-cluster-auth";

/// The reply header of a refusal the sender can mend: `node=<id>,e=<epoch>`,
/// the receiver's id and the oldest epoch it accepts from that sender.
pub const EXPECT_HEADER: &str = "x-toil-cluster-expect";

/// The reply header carrying the receiver's MAC over its reply (status,
/// [`EXPECT_HEADER`], body), bound to the request's stamp: a reply cannot
/// be forged, altered, or moved to another request.
pub const REPLY_HEADER: &str = "x-toil-cluster-reply-auth";

/// How far a request's signing time may be from the receiver's clock.
pub const MAX_SKEW_MS: i64 = 30_000;

/// How far behind the newest number of its epoch a request may arrive.
pub const WINDOW: u64 = 4096;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The secret every node of a cluster shares.
pub struct ClusterSecret {
    key: hmac::Key,
}

/// Who sends a request, to whom, and its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub from: NodeId,
    /// The receiver's id; 0 while the sender does not know it (refused,
    /// with the id in the reply).
    pub to: NodeId,
    pub epoch: u64,
    pub seq: u64,
}

/// A parsed signature header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub stamp: Stamp,
    pub t: i64,
    mac: Vec<u8>,
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
    #[error("addressed to node {to}, not to this node")]
    WrongReceiver { to: NodeId },
    #[error("epoch {epoch} of node {from} is over (this node accepts epoch {min} or later): a replay, or a restart")]
    EpochOver { from: NodeId, epoch: u64, min: u64 },
    #[error("request {seq} of epoch {epoch} of node {from} was already accepted, or is too old: a replay")]
    Replayed { from: NodeId, epoch: u64, seq: u64 },
    #[error("recording epoch {epoch} of node {from}: {reason}")]
    Persist { from: NodeId, epoch: u64, reason: String },
    #[error("signed as node {signed_as} over a connection whose certificate is node {connected_as}'s")]
    NotConnectedNode { signed_as: NodeId, connected_as: NodeId },
    #[error("cannot open the sealed {0}: sealed under another cluster secret, or damaged")]
    Unsealable(String),
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

    /// Encrypts `plaintext` (a private key, ACME credentials) for the
    /// replicated state, where every member, and every backup of a data
    /// dir, can read it: AES-256-GCM under a key derived from the cluster
    /// secret, with a random nonce, bound to `context` (say, the host name
    /// a key belongs to), so a sealed value moved to another place does
    /// not open. Hex.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new().fill(&mut nonce).expect("system randomness");
        let mut out = plaintext.to_vec();
        LessSafeKey::new(self.sealing_key())
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context.as_bytes()), &mut out)
            .expect("AES-GCM seals any length the state holds");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        hex(&sealed)
    }

    /// The plaintext [`seal`](Self::seal) sealed under `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, AuthError> {
        use ring::aead::{Aad, LessSafeKey, Nonce, NONCE_LEN};
        let refused = || AuthError::Unsealable(context.to_string());
        let bytes = unhex(sealed).filter(|b| b.len() >= NONCE_LEN).ok_or_else(refused)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut buf = ciphertext.to_vec();
        let plain = LessSafeKey::new(self.sealing_key()).open_in_place(nonce, Aad::from(context.as_bytes()), &mut buf).map_err(|_| refused())?;
        Ok(plain.to_vec())
    }

    /// The seed of the cluster CA's Ed25519 key ([`crate::tls`]): like the
    /// sealing key, an HKDF-Expand block under a label of its own.
    pub(crate) fn ca_seed(&self) -> [u8; 32] {
        let okm = hmac::sign(&self.key, b"toil-cluster-ca/1\x01");
        okm.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }

    /// The sealing key: HKDF-Expand (RFC 5869) of the secret's HMAC key
    /// for one block, under a label of its own, so it is unrelated to the
    /// signing of RPCs.
    fn sealing_key(&self) -> ring::aead::UnboundKey {
        let okm = hmac::sign(&self.key, b"toil-cluster-seal/1\x01");
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, okm.as_ref()).expect("32 bytes")
    }

    /// What is signed: the stamp, the time, the request line and the body.
    fn message(stamp: &Stamp, t: i64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let Stamp { from, to, epoch, seq } = stamp;
        let mut m = format!("toil-cluster-rpc/2\n{from}\n{to}\n{epoch}\n{seq}\n{t}\n{method}\n{path}\n").into_bytes();
        m.extend_from_slice(body);
        m
    }

    /// The header value that signs a request stamped `stamp` at `now_ms`.
    pub fn sign(&self, stamp: Stamp, now_ms: i64, method: &str, path: &str, body: &[u8]) -> String {
        let Stamp { from, to, epoch, seq } = stamp;
        let mac = hex(hmac::sign(&self.key, &Self::message(&stamp, now_ms, method, path, body)).as_ref());
        format!("node={from},to={to},e={epoch},n={seq},t={now_ms},mac={mac}")
    }

    /// Reads a header's form and checks its time: all that can be known
    /// before the body is read.
    pub fn parse(header: Option<&str>, now_ms: i64) -> Result<Signed, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (mut from, mut to, mut epoch, mut seq, mut t, mut mac) = (None, None, None, None, None, None);
        for part in header.split(',') {
            match part.split_once('=') {
                Some(("node", v)) => from = v.parse::<NodeId>().ok(),
                Some(("to", v)) => to = v.parse::<NodeId>().ok(),
                Some(("e", v)) => epoch = v.parse::<u64>().ok(),
                Some(("n", v)) => seq = v.parse::<u64>().ok(),
                Some(("t", v)) => t = v.parse::<i64>().ok(),
                Some(("mac", v)) => mac = unhex(v),
                _ => return Err(AuthError::Malformed),
            }
        }
        let (Some(from), Some(to), Some(epoch), Some(seq), Some(t), Some(mac)) = (from, to, epoch, seq, t, mac) else {
            return Err(AuthError::Malformed);
        };
        if now_ms.abs_diff(t) > MAX_SKEW_MS as u64 {
            return Err(AuthError::Stale(now_ms.saturating_sub(t)));
        }
        Ok(Signed { stamp: Stamp { from, to, epoch, seq }, t, mac })
    }

    /// Checks the MAC over the request.
    pub fn check(&self, signed: &Signed, method: &str, path: &str, body: &[u8]) -> Result<(), AuthError> {
        let message = Self::message(&signed.stamp, signed.t, method, path, body);
        hmac::verify(&self.key, &message, &signed.mac).map_err(|_| AuthError::BadSignature)
    }

    /// What a reply's MAC covers: the request's stamp, the status, the expectation and the body.
    fn reply_message(stamp: &Stamp, status: u16, expect: &str, body: &[u8]) -> Vec<u8> {
        let Stamp { from, to, epoch, seq } = stamp;
        let mut m = format!("toil-cluster-reply/1\n{from}\n{to}\n{epoch}\n{seq}\n{status}\n{expect}\n").into_bytes();
        m.extend_from_slice(body);
        m
    }

    /// The [`REPLY_HEADER`] value for a reply to the request stamped `stamp`.
    pub fn sign_reply(&self, stamp: &Stamp, status: u16, expect: &str, body: &[u8]) -> String {
        hex(hmac::sign(&self.key, &Self::reply_message(stamp, status, expect, body)).as_ref())
    }

    /// Whether a reply to the request stamped `stamp` carries the receiver's MAC.
    pub fn check_reply(&self, header: Option<&str>, stamp: &Stamp, status: u16, expect: &str, body: &[u8]) -> bool {
        let Some(mac) = header.and_then(unhex) else { return false };
        hmac::verify(&self.key, &Self::reply_message(stamp, status, expect, body), &mac).is_ok()
    }
}

/// What a receiver knows of one sender's numbering.
#[derive(Default)]
struct SenderWindow {
    /// Epochs below this are refused.
    min_epoch: u64,
    /// The newest epoch accepted since this node started, its highest
    /// number and the numbers seen within [`WINDOW`] of it.
    current: Option<(u64, u64, BTreeSet<u64>)>,
}

/// A receiver's memory of the requests it accepted (see the module doc).
pub struct ReplayGuard {
    me: NodeId,
    senders: Mutex<BTreeMap<NodeId, SenderWindow>>,
    /// Where each sender's newest epoch is kept across restarts (none: in memory only).
    file: Option<PathBuf>,
}

impl ReplayGuard {
    /// A guard for node `me` that remembers epochs in `file`; epochs
    /// recorded there by an earlier run are over.
    pub fn open(me: NodeId, file: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let recorded: BTreeMap<NodeId, u64> = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        let senders = recorded.into_iter().map(|(n, e)| (n, SenderWindow { min_epoch: e.saturating_add(1), current: None })).collect();
        Ok(ReplayGuard { me, senders: Mutex::new(senders), file: Some(file.to_path_buf()) })
    }

    /// A guard that forgets everything when dropped (tests).
    pub fn in_memory(me: NodeId) -> Self {
        ReplayGuard { me, senders: Mutex::default(), file: None }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Whether a request stamped `stamp` would be accepted; changes nothing
    /// (checked before the body is read, when the stamp is not yet proven).
    pub fn precheck(&self, stamp: &Stamp) -> Result<(), AuthError> {
        let senders = self.senders.lock().expect("replay guard");
        self.judge(senders.get(&stamp.from), stamp)
    }

    /// Accepts a request whose signature was checked, once.
    pub fn accept(&self, stamp: &Stamp) -> Result<(), AuthError> {
        let mut senders = self.senders.lock().expect("replay guard");
        self.judge(senders.get(&stamp.from), stamp)?;
        let &Stamp { from, epoch, seq, .. } = stamp;
        if let Some((_, highest, seen)) = senders.get_mut(&from).and_then(|w| w.current.as_mut()).filter(|c| c.0 == epoch) {
            seen.insert(seq);
            if seq > *highest {
                *highest = seq;
                let floor = seq.saturating_sub(WINDOW);
                *seen = seen.split_off(&floor);
            }
            return Ok(());
        }
        // A new epoch of this sender: on disk before anything of it is accepted.
        if let Some(file) = &self.file {
            let mut recorded: BTreeMap<NodeId, u64> =
                senders.iter().filter_map(|(n, w)| w.current.as_ref().map(|c| (*n, c.0)).or(w.min_epoch.checked_sub(1).map(|e| (*n, e)))).collect();
            recorded.insert(from, epoch);
            write_durably(file, &serde_json::to_vec(&recorded).expect("a map of numbers")).map_err(|e| AuthError::Persist {
                from,
                epoch,
                reason: e.to_string(),
            })?;
        }
        let window = senders.entry(from).or_default();
        window.current = Some((epoch, seq, BTreeSet::from([seq])));
        Ok(())
    }

    fn judge(&self, window: Option<&SenderWindow>, stamp: &Stamp) -> Result<(), AuthError> {
        let &Stamp { from, to, epoch, seq } = stamp;
        if to != self.me {
            return Err(AuthError::WrongReceiver { to });
        }
        let Some(w) = window else { return Ok(()) };
        if epoch < w.min_epoch {
            return Err(AuthError::EpochOver { from, epoch, min: w.min_epoch });
        }
        match &w.current {
            // Past the current epoch, not onto it: its numbers are taken.
            Some((e, ..)) if epoch < *e => Err(AuthError::EpochOver { from, epoch, min: e.saturating_add(1) }),
            Some((e, highest, seen)) if *e == epoch && (seq.saturating_add(WINDOW) <= *highest || seen.contains(&seq)) => {
                Err(AuthError::Replayed { from, epoch, seq })
            }
            _ => Ok(()),
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new file, synced.
fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

    fn stamp(from: NodeId, to: NodeId, epoch: u64, seq: u64) -> Stamp {
        Stamp { from, to, epoch, seq }
    }

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_context() {
        let secret = ClusterSecret::new(&[7u8; 32]).unwrap();
        let sealed = secret.seal("tls-key:app.example.com", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.contains("PRIVATE"), "the key is not in the clear");
        assert_eq!(secret.open("tls-key:app.example.com", &sealed).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert_ne!(sealed, secret.seal("tls-key:app.example.com", b"-----BEGIN PRIVATE KEY-----"), "a fresh nonce each time");
        let refused = Err(AuthError::Unsealable("tls-key:other.example.com".into()));
        assert_eq!(secret.open("tls-key:other.example.com", &sealed), refused, "moved to another host");
        let other = ClusterSecret::new(&[8u8; 32]).unwrap();
        assert!(other.open("tls-key:app.example.com", &sealed).is_err(), "another cluster's secret");
        let mut damaged = sealed.clone();
        damaged.replace_range(40..42, if &sealed[40..42] == "00" { "01" } else { "00" });
        assert!(secret.open("tls-key:app.example.com", &damaged).is_err());
        assert!(secret.open("tls-key:app.example.com", "zz").is_err());
        assert!(secret.open("tls-key:app.example.com", "").is_err());
    }

    fn verify(s: &ClusterSecret, header: Option<&str>, now: i64, path: &str, body: &[u8]) -> Result<Stamp, AuthError> {
        let signed = ClusterSecret::parse(header, now)?;
        s.check(&signed, "POST", path, body)?;
        Ok(signed.stamp)
    }

    #[test]
    fn a_signed_request_verifies_and_names_its_sender_and_receiver() {
        let s = ClusterSecret::new(b"0123456789abcdef0123").unwrap();
        let h = s.sign(stamp(3, 1, 7, 42), NOW, "POST", "/raft/vote", b"{}");
        assert_eq!(verify(&s, Some(&h), NOW + 5, "/raft/vote", b"{}"), Ok(stamp(3, 1, 7, 42)));
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let s = ClusterSecret::new(b"0123456789abcdef0123").unwrap();
        let other = ClusterSecret::new(b"another secret of enough length").unwrap();
        let h = s.sign(stamp(3, 1, 7, 42), NOW, "POST", "/raft/vote", b"{}");
        assert_eq!(verify(&s, None, NOW, "/raft/vote", b"{}"), Err(AuthError::Missing));
        assert_eq!(verify(&s, Some("bearer x"), NOW, "/raft/vote", b"{}"), Err(AuthError::Malformed));
        assert_eq!(verify(&other, Some(&h), NOW, "/raft/vote", b"{}"), Err(AuthError::BadSignature));
        assert_eq!(verify(&s, Some(&h), NOW, "/raft/vote", b"{ }"), Err(AuthError::BadSignature), "body is signed");
        assert_eq!(verify(&s, Some(&h), NOW, "/raft/append", b"{}"), Err(AuthError::BadSignature), "path is signed");
        for (field, forged) in [("node=3", "node=1"), ("to=1", "to=2"), ("e=7", "e=8"), ("n=42", "n=43")] {
            let f = h.replace(field, forged);
            assert_eq!(verify(&s, Some(&f), NOW, "/raft/vote", b"{}"), Err(AuthError::BadSignature), "{field} is signed");
        }
        assert_eq!(verify(&s, Some(&h), NOW + MAX_SKEW_MS + 1, "/raft/vote", b"{}"), Err(AuthError::Stale(MAX_SKEW_MS + 1)));
        assert_eq!(ClusterSecret::new(b"  short \n").err(), Some(AuthError::SecretTooShort(5)));
    }

    #[test]
    fn each_request_is_accepted_once_in_any_order_within_the_window() {
        let g = ReplayGuard::in_memory(1);
        for seq in [5, 3, 9, 4] {
            assert_eq!(g.precheck(&stamp(2, 1, 10, seq)), Ok(()));
            assert_eq!(g.accept(&stamp(2, 1, 10, seq)), Ok(()), "seq {seq}");
        }
        for seq in [5, 3, 9, 4] {
            assert_eq!(g.precheck(&stamp(2, 1, 10, seq)), Err(AuthError::Replayed { from: 2, epoch: 10, seq }));
            assert_eq!(g.accept(&stamp(2, 1, 10, seq)), Err(AuthError::Replayed { from: 2, epoch: 10, seq }));
        }
        assert_eq!(g.accept(&stamp(2, 1, 10, 6)), Ok(()), "a gap is filled late");
        assert_eq!(g.accept(&stamp(2, 1, 10, 9 + WINDOW)), Ok(()));
        assert_eq!(g.accept(&stamp(2, 1, 10, 9)), Err(AuthError::Replayed { from: 2, epoch: 10, seq: 9 }), "far behind");
        assert_eq!(g.accept(&stamp(2, 1, 10, 8)), Err(AuthError::Replayed { from: 2, epoch: 10, seq: 8 }), "never seen, but too old");
        // Other senders have their own numbering.
        assert_eq!(g.accept(&stamp(3, 1, 10, 5)), Ok(()));
        // A new epoch (the sender restarted) ends the old one.
        assert_eq!(g.accept(&stamp(2, 1, 11, 1)), Ok(()));
        assert_eq!(g.accept(&stamp(2, 1, 10, 7)), Err(AuthError::EpochOver { from: 2, epoch: 10, min: 12 }), "told to move past the current one");
        // A request for another node is refused, whatever its numbers.
        assert_eq!(g.precheck(&stamp(2, 3, 11, 2)), Err(AuthError::WrongReceiver { to: 3 }));
        assert_eq!(g.accept(&stamp(2, 0, 11, 2)), Err(AuthError::WrongReceiver { to: 0 }));
    }

    #[test]
    fn a_restarted_receiver_refuses_every_epoch_it_had_seen() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("epochs.json");
        let g = ReplayGuard::open(1, &file).unwrap();
        assert_eq!(g.accept(&stamp(2, 1, 10, 1)), Ok(()));
        assert_eq!(g.accept(&stamp(3, 1, 4, 1)), Ok(()));
        assert_eq!(g.accept(&stamp(2, 1, 12, 1)), Ok(()));
        drop(g);
        let g = ReplayGuard::open(1, &file).unwrap();
        // Request 2 of epoch 12 was never seen, but this run cannot know that.
        assert_eq!(g.accept(&stamp(2, 1, 12, 2)), Err(AuthError::EpochOver { from: 2, epoch: 12, min: 13 }));
        assert_eq!(g.accept(&stamp(3, 1, 4, 9)), Err(AuthError::EpochOver { from: 3, epoch: 4, min: 5 }));
        assert_eq!(g.accept(&stamp(2, 1, 13, 1)), Ok(()), "the sender moves on");
        assert_eq!(g.accept(&stamp(4, 1, 1, 1)), Ok(()), "a sender never seen");
        drop(g);
        let g = ReplayGuard::open(1, &file).unwrap();
        assert_eq!(g.accept(&stamp(3, 1, 4, 10)), Err(AuthError::EpochOver { from: 3, epoch: 4, min: 5 }), "kept across restarts");
        assert_eq!(g.accept(&stamp(2, 1, 13, 2)), Err(AuthError::EpochOver { from: 2, epoch: 13, min: 14 }));
    }

    #[test]
    fn replies_are_bound_to_their_request() {
        let s = ClusterSecret::new(b"0123456789abcdef0123").unwrap();
        let other = ClusterSecret::new(b"another secret of enough length").unwrap();
        let st = stamp(3, 1, 7, 42);
        let mac = s.sign_reply(&st, 200, "", b"{\"Claimed\":null}");
        assert!(s.check_reply(Some(&mac), &st, 200, "", b"{\"Claimed\":null}"));
        assert!(!s.check_reply(None, &st, 200, "", b"{}"));
        assert!(!other.check_reply(Some(&mac), &st, 200, "", b"{\"Claimed\":null}"), "needs the secret");
        assert!(!s.check_reply(Some(&mac), &stamp(3, 1, 7, 43), 200, "", b"{\"Claimed\":null}"), "another request's reply");
        assert!(!s.check_reply(Some(&mac), &st, 401, "", b"{\"Claimed\":null}"), "status is covered");
        assert!(!s.check_reply(Some(&mac), &st, 200, "node=1,e=9", b"{\"Claimed\":null}"), "the expectation is covered");
        assert!(!s.check_reply(Some(&mac), &st, 200, "", b"{\"Refused\":null}"), "body is covered");
    }

    #[test]
    fn generated_secrets_are_long_enough_and_differ() {
        let (a, b) = (ClusterSecret::generate(), ClusterSecret::generate());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(ClusterSecret::new(a.as_bytes()).is_ok());
    }
}
