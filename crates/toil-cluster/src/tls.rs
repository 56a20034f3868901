//! The cluster's certificates for the host names it serves (ACME), as
//! replicated state, and the rules that keep ordering to one node at a time.
//!
//! Every node serves every deployed host, so every node needs the host's
//! certificate, and an ACME CA must see one order per host, not one per
//! node (its rate limits are per account and per name). The log decides:
//!
//! | command | accepted when | effect |
//! |---|---|---|
//! | [`Command::CertOrder`] | the host is due (no certificate, inside the renewal window, or a renewal was asked) and no order is under way (a claim younger than [`ORDER_TIMEOUT_MS`]) and its back-off has passed | a claim: this node orders, nobody else |
//! | [`Command::AcmeChallenge`] | it names the current claim | a token's key authorization, which every node answers the CA with until the order ends |
//! | [`Command::CertIssued`] | it names the current claim | the certificate (chain PEM, and the key sealed under the cluster secret) replaces the host's; failures reset; the order's challenges go |
//! | [`Command::CertFailed`] | it names the current claim | the claim ends; the host backs off `min × 2^(failures−1)`, at most `max`; the order's challenges go |
//! | [`Command::CertRenew`] | always | the next check orders even inside the validity window |
//! | [`Command::AcmeAccount`] | no account yet for that directory | the cluster's ACME account (sealed): the first writer wins, all use it |
//!
//! The renewal window is `renewBeforeDays`, or a third of the
//! certificate's lifetime if that is shorter: a CA issuing short-lived
//! certificates must not see an order at every check.
//!
//! A claim names its order number, so the result of an order that outlived
//! its claim (a leader that stalled past [`ORDER_TIMEOUT_MS`] while another
//! took over) is refused instead of replacing a newer certificate. Time
//! comes in the commands (the proposer's clock), so every node applies the
//! same log to the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Applied, NodeId, Refused};

/// How long an order may run before another node may take over the host.
pub const ORDER_TIMEOUT_MS: i64 = 10 * 60 * 1000;

/// A host's certificate as the cluster keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// The certificate chain, leaf first, PEM.
    pub chain_pem: String,
    /// The private key (PKCS#8 PEM), sealed under a key derived from the
    /// cluster secret with the host name bound in, hex.
    pub sealed_key: String,
    /// The leaf's notAfter, Unix ms.
    pub not_after_ms: i64,
    pub issued_ms: i64,
    /// The order that produced it (1, 2, …): tells one issuance from the next.
    pub order: u64,
}

/// An order under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderClaim {
    pub node: NodeId,
    pub order: u64,
    pub started_ms: i64,
    /// The host's renewal requests counted when the claim was made: only
    /// an order that started after the last request answers it.
    #[serde(default)]
    pub renewals_seen: u64,
}

/// Everything the cluster knows of one host's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCert {
    pub issued: Option<IssuedCert>,
    pub claim: Option<OrderClaim>,
    /// Orders started for this host, ever.
    pub orders: u64,
    /// Failed orders since the last success.
    pub failures: u32,
    /// No new order before this time (Unix ms).
    pub retry_at_ms: i64,
    pub last_error: Option<String>,
    pub renew_requested: bool,
    /// Renewal requests (`toil tls renew`), ever.
    #[serde(default)]
    pub renewals: u64,
}

/// A challenge response every node must give the CA.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub host: String,
    pub key_authorization: String,
}

/// The back-off after failed orders: `min_ms`, doubling, at most `max_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub min_ms: i64,
    pub max_ms: i64,
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row.
    pub fn after(&self, failures: u32) -> i64 {
        let doublings = failures.saturating_sub(1).min(40);
        self.min_ms.saturating_mul(1i64 << doublings).min(self.max_ms)
    }
}

/// The replicated part of the cluster's TLS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsState {
    hosts: BTreeMap<String, HostCert>,
    /// Token → challenge.
    challenges: BTreeMap<String, Challenge>,
    /// ACME directory URL → the account's credentials, sealed.
    accounts: BTreeMap<String, String>,
}

/// Why a host needs a certificate ordered now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// It has none.
    Missing,
    /// Its certificate expires within the renewal window.
    Expiring,
    /// A renewal was asked for (`toil tls renew`).
    Asked,
}

impl HostCert {
    /// Why the host needs an order at `now_ms`, whether or not one may start now.
    pub fn due(&self, now_ms: i64, renew_before_ms: i64) -> Option<Due> {
        match &self.issued {
            None => Some(Due::Missing),
            Some(_) if self.renew_requested => Some(Due::Asked),
            Some(c) if c.not_after_ms - now_ms <= renew_before_ms.min((c.not_after_ms - c.issued_ms) / 3) => Some(Due::Expiring),
            Some(_) => None,
        }
    }

    /// The claim, if it is still live at `now_ms`.
    pub fn live_claim(&self, now_ms: i64) -> Option<OrderClaim> {
        self.claim.filter(|c| now_ms - c.started_ms < ORDER_TIMEOUT_MS)
    }
}

impl TlsState {
    pub fn host(&self, host: &str) -> Option<&HostCert> {
        self.hosts.get(host)
    }

    pub fn hosts(&self) -> &BTreeMap<String, HostCert> {
        &self.hosts
    }

    pub fn challenge(&self, token: &str) -> Option<&Challenge> {
        self.challenges.get(token)
    }

    pub fn challenges(&self) -> &BTreeMap<String, Challenge> {
        &self.challenges
    }

    pub fn account(&self, directory: &str) -> Option<&str> {
        self.accounts.get(directory).map(String::as_str)
    }

    pub(crate) fn order(&mut self, host: &str, node: NodeId, now_ms: i64, renew_before_ms: i64) -> Applied {
        let entry = self.hosts.entry(host.to_string()).or_default();
        if let Some(claim) = entry.live_claim(now_ms) {
            return Applied::Refused(Refused::OrderUnderWay { node: claim.node });
        }
        if entry.due(now_ms, renew_before_ms).is_none() {
            return Applied::Refused(Refused::NotDue);
        }
        if now_ms < entry.retry_at_ms {
            return Applied::Refused(Refused::BackingOff { until_ms: entry.retry_at_ms });
        }
        entry.orders += 1;
        entry.claim = Some(OrderClaim { node, order: entry.orders, started_ms: now_ms, renewals_seen: entry.renewals });
        // Challenges a dead orderer left behind for this host are of no use.
        self.challenges.retain(|_, c| c.host != host);
        Applied::OrderClaimed { order: entry.orders }
    }

    /// The host's entry, if `order` is its current claim.
    fn claimed(&mut self, host: &str, order: u64) -> Option<&mut HostCert> {
        self.hosts.get_mut(host).filter(|h| h.claim.is_some_and(|c| c.order == order))
    }

    pub(crate) fn issued(&mut self, host: &str, cert: &IssuedCert) -> Applied {
        let Some(entry) = self.claimed(host, cert.order) else {
            return Applied::Refused(Refused::StaleOrder);
        };
        // A renewal asked while this order ran (a changed CA, a key to
        // replace) wants an order of its own.
        let answered = entry.claim.is_some_and(|c| c.renewals_seen == entry.renewals);
        entry.issued = Some(cert.clone());
        entry.claim = None;
        entry.failures = 0;
        entry.retry_at_ms = 0;
        entry.last_error = None;
        entry.renew_requested &= !answered;
        self.challenges.retain(|_, c| c.host != host);
        Applied::Recorded
    }

    pub(crate) fn failed(&mut self, host: &str, order: u64, error: &str, now_ms: i64, backoff: Backoff) -> Applied {
        let Some(entry) = self.claimed(host, order) else {
            return Applied::Refused(Refused::StaleOrder);
        };
        entry.claim = None;
        entry.failures += 1;
        entry.retry_at_ms = now_ms + backoff.after(entry.failures);
        entry.last_error = Some(error.to_string());
        self.challenges.retain(|_, c| c.host != host);
        Applied::Recorded
    }

    pub(crate) fn renew(&mut self, host: &str) -> Applied {
        let entry = self.hosts.entry(host.to_string()).or_default();
        entry.renew_requested = true;
        entry.renewals += 1;
        // Asked by an operator: try now rather than at the end of a back-off.
        entry.retry_at_ms = 0;
        Applied::Recorded
    }

    pub(crate) fn add_challenge(&mut self, token: &str, order: u64, challenge: &Challenge) -> Applied {
        if self.claimed(&challenge.host, order).is_none() {
            return Applied::Refused(Refused::StaleOrder);
        }
        self.challenges.insert(token.to_string(), challenge.clone());
        Applied::Recorded
    }

    /// Hosts with an order under way at `now_ms`: the ones a node should
    /// expect the CA to ask about.
    pub fn ordering(&self, now_ms: i64) -> impl Iterator<Item = &str> {
        self.hosts.iter().filter(move |(_, h)| h.live_claim(now_ms).is_some()).map(|(host, _)| host.as_str())
    }

    pub(crate) fn set_account(&mut self, directory: &str, sealed: &str) -> Applied {
        self.accounts.entry(directory.to_string()).or_insert_with(|| sealed.to_string());
        Applied::Recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClusterState, Command};

    const DAY: i64 = 86_400_000;
    const RENEW: i64 = 30 * DAY;
    const BACKOFF: Backoff = Backoff { min_ms: 60_000, max_ms: 6 * 3_600_000 };

    fn order(s: &mut ClusterState, node: NodeId, now_ms: i64) -> Applied {
        s.apply(&Command::CertOrder { host: "app.example.com".into(), node, now_ms, renew_before_ms: RENEW })
    }

    fn issue(s: &mut ClusterState, order: u64, now_ms: i64, not_after_ms: i64) -> Applied {
        let cert = IssuedCert { chain_pem: "PEM".into(), sealed_key: "KEY".into(), not_after_ms, issued_ms: now_ms, order };
        s.apply(&Command::CertIssued { host: "app.example.com".into(), cert })
    }

    fn fail(s: &mut ClusterState, order: u64, now_ms: i64) -> Applied {
        s.apply(&Command::CertFailed { host: "app.example.com".into(), order, error: "refused".into(), now_ms, backoff: BACKOFF })
    }

    fn host(s: &ClusterState) -> HostCert {
        s.tls().host("app.example.com").cloned().unwrap()
    }

    #[test]
    fn one_order_at_a_time_however_many_nodes_ask() {
        let mut s = ClusterState::default();
        assert_eq!(order(&mut s, 1, 0), Applied::OrderClaimed { order: 1 });
        for node in [1, 2, 3] {
            assert_eq!(order(&mut s, node, 1000), Applied::Refused(Refused::OrderUnderWay { node: 1 }));
        }
        // The orderer died: after the timeout another node may take over.
        assert_eq!(order(&mut s, 2, ORDER_TIMEOUT_MS - 1), Applied::Refused(Refused::OrderUnderWay { node: 1 }));
        assert_eq!(order(&mut s, 2, ORDER_TIMEOUT_MS), Applied::OrderClaimed { order: 2 });
        // The first orderer's late result names a claim that is gone.
        assert_eq!(issue(&mut s, 1, ORDER_TIMEOUT_MS + 5, 90 * DAY), Applied::Refused(Refused::StaleOrder));
        assert_eq!(fail(&mut s, 1, ORDER_TIMEOUT_MS + 5), Applied::Refused(Refused::StaleOrder));
        assert!(host(&s).issued.is_none());
        assert_eq!(issue(&mut s, 2, ORDER_TIMEOUT_MS + 6, 90 * DAY), Applied::Recorded);
        assert_eq!(host(&s).issued.unwrap().order, 2);
        assert_eq!(host(&s).claim, None);
    }

    #[test]
    fn a_certificate_is_renewed_inside_the_window_or_when_asked() {
        let mut s = ClusterState::default();
        order(&mut s, 1, 0);
        issue(&mut s, 1, 0, 90 * DAY);
        assert_eq!(order(&mut s, 1, DAY), Applied::Refused(Refused::NotDue));
        assert_eq!(host(&s).due(DAY, RENEW), None);
        assert_eq!(host(&s).due(60 * DAY, RENEW), Some(Due::Expiring));
        assert_eq!(order(&mut s, 2, 60 * DAY), Applied::OrderClaimed { order: 2 });
        issue(&mut s, 2, 60 * DAY, 150 * DAY);

        s.apply(&Command::CertRenew { host: "app.example.com".into() });
        assert_eq!(host(&s).due(61 * DAY, RENEW), Some(Due::Asked));
        assert_eq!(order(&mut s, 3, 61 * DAY), Applied::OrderClaimed { order: 3 });
        issue(&mut s, 3, 61 * DAY, 151 * DAY);
        assert!(!host(&s).renew_requested, "an issuance answers the request");
        assert_eq!(host(&s).due(61 * DAY, RENEW), None);
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_cap_and_success_resets() {
        assert_eq!([1, 2, 3, 4].map(|f| BACKOFF.after(f)), [60_000, 120_000, 240_000, 480_000]);
        assert_eq!(BACKOFF.after(20), BACKOFF.max_ms);
        assert_eq!(BACKOFF.after(u32::MAX), BACKOFF.max_ms);

        let mut s = ClusterState::default();
        let mut now = 0;
        for (n, wait) in [(1, 60_000), (2, 120_000), (3, 240_000)] {
            assert_eq!(order(&mut s, 1, now), Applied::OrderClaimed { order: n });
            fail(&mut s, n, now);
            assert_eq!(host(&s).failures as u64, n);
            assert_eq!(order(&mut s, 2, now + wait - 1), Applied::Refused(Refused::BackingOff { until_ms: now + wait }));
            now += wait;
        }
        assert_eq!(host(&s).last_error.as_deref(), Some("refused"));
        // An operator's request does not wait for the back-off.
        s.apply(&Command::CertRenew { host: "app.example.com".into() });
        assert_eq!(order(&mut s, 1, now - 1000), Applied::OrderClaimed { order: 4 });
        issue(&mut s, 4, now, 90 * DAY);
        assert_eq!((host(&s).failures, host(&s).retry_at_ms, host(&s).last_error), (0, 0, None));
    }

    #[test]
    fn challenges_live_while_their_order_does() {
        let mut s = ClusterState::default();
        let challenge = Challenge { host: "app.example.com".into(), key_authorization: "token.thumb".into() };
        let publish = |s: &mut ClusterState, token: &str, order: u64| {
            s.apply(&Command::AcmeChallenge { token: token.into(), order, challenge: challenge.clone() })
        };
        assert_eq!(publish(&mut s, "t0", 1), Applied::Refused(Refused::StaleOrder), "no order, no challenge");
        order(&mut s, 1, 0);
        assert_eq!(s.tls().ordering(0).collect::<Vec<_>>(), ["app.example.com"]);
        assert_eq!(s.tls().ordering(ORDER_TIMEOUT_MS).count(), 0, "a claim past its timeout is no order under way");
        publish(&mut s, "t1", 1);
        publish(&mut s, "t2", 1);
        assert_eq!(s.tls().challenge("t1"), Some(&challenge));
        // They go with the order's end.
        fail(&mut s, 1, 0);
        assert!(s.tls().challenges().is_empty());
        // A stale orderer's challenge is refused once another claim took over.
        order(&mut s, 2, ORDER_TIMEOUT_MS);
        assert_eq!(publish(&mut s, "t3", 2), Applied::Recorded);
        order(&mut s, 3, 3 * ORDER_TIMEOUT_MS);
        assert!(s.tls().challenges().is_empty(), "a new claim clears the dead orderer's challenges");
        assert_eq!(publish(&mut s, "t4", 2), Applied::Refused(Refused::StaleOrder));
    }

    #[test]
    fn short_lived_certificates_renew_at_a_third_of_their_life_not_at_every_check() {
        let mut s = ClusterState::default();
        order(&mut s, 1, 0);
        issue(&mut s, 1, 0, 6 * DAY); // a 6-day certificate, a 30-day window
        assert_eq!(host(&s).due(DAY, RENEW), None, "not due at once");
        assert_eq!(order(&mut s, 1, DAY), Applied::Refused(Refused::NotDue));
        assert_eq!(host(&s).due(4 * DAY - 1, RENEW), None);
        assert_eq!(host(&s).due(4 * DAY, RENEW), Some(Due::Expiring), "two days (a third) left");
    }

    #[test]
    fn a_renewal_asked_during_an_order_gets_an_order_of_its_own() {
        let mut s = ClusterState::default();
        order(&mut s, 1, 0);
        issue(&mut s, 1, 0, 90 * DAY);
        s.apply(&Command::CertRenew { host: "app.example.com".into() });
        assert_eq!(order(&mut s, 1, DAY), Applied::OrderClaimed { order: 2 });
        // Asked again while order 2 runs: order 2 does not answer it.
        s.apply(&Command::CertRenew { host: "app.example.com".into() });
        issue(&mut s, 2, DAY, 91 * DAY);
        assert_eq!(host(&s).due(DAY, RENEW), Some(Due::Asked));
        assert_eq!(order(&mut s, 1, DAY), Applied::OrderClaimed { order: 3 });
        issue(&mut s, 3, DAY, 91 * DAY);
        assert_eq!(host(&s).due(DAY, RENEW), None);
    }

    #[test]
    fn the_first_account_stored_is_the_one_everyone_uses() {
        let mut s = ClusterState::default();
        s.apply(&Command::AcmeAccount { directory: "https://ca/dir".into(), sealed: "first".into() });
        s.apply(&Command::AcmeAccount { directory: "https://ca/dir".into(), sealed: "second".into() });
        s.apply(&Command::AcmeAccount { directory: "https://other/dir".into(), sealed: "third".into() });
        assert_eq!(s.tls().account("https://ca/dir"), Some("first"));
        assert_eq!(s.tls().account("https://other/dir"), Some("third"));
    }
}
