//! Certificates from a real ACME CA (Debian's pebble, validation on) for
//! a cluster of `toil node` processes: one order per host for the whole
//! cluster, validated through a node that did not order it, the same
//! certificate served by every node, renewal on demand replacing it
//! everywhere; the CA down at first (a clear error, back-off, and the
//! certificate once it is up); TLS-ALPN-01 validation on the HTTPS port.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::{admin_get, pulse_dir, Cluster};
use common::pebble::Pebble;
use common::tls::{leaf, tls_connect};
use common::*;
use rustls::pki_types::CertificateDer;
use serde_json::json;

const HOST: &str = "app.test";

/// A cluster of `n` serving the pulse guest on [`HOST`], ordering from `pebble`.
fn cluster(tag: &str, n: u64, pebble: &Pebble, challenge: &str) -> Cluster {
    cluster_with(tag, n, &pebble.directory, pebble, challenge)
}

/// [`cluster`], with the ACME directory at `directory`.
fn cluster_with(tag: &str, n: u64, directory: &str, pebble: &Pebble, challenge: &str) -> Cluster {
    let config = json!({
        "apps": [{"domain": "pulse", "dir": pulse_dir(), "hosts": [HOST]}],
        "cluster": {},
        "tls": {"acme": {
            "directory": directory, "challenge": challenge,
            "caCertificate": pebble.listener_ca, "retryMs": 500, "checkIntervalMs": 250,
        }},
    });
    Cluster::start_with(tag, n, config)
}

/// The first log line of `c` with `needle`, waited for.
fn log_line(c: &Cluster, needle: &str) -> String {
    c.wait_for(Duration::from_secs(60), needle, |c| c.logs().contains(needle));
    c.logs().lines().find(|l| l.contains(needle)).unwrap().to_string()
}

/// The certificate node `id` shows for [`HOST`], verified against `root`,
/// if the handshake succeeds.
fn served_leaf(c: &Cluster, id: u64, root: &Path) -> Option<CertificateDer<'static>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { tls_connect(c.http(id), root, HOST, &[b"http/1.1"]).await.ok().map(|s| leaf(&s)) })
}

/// The sum over every running node of metric samples starting with `prefix`.
fn metric_sum(c: &Cluster, prefix: &str) -> f64 {
    c.running()
        .iter()
        .filter_map(|&id| c.metrics(id))
        .flat_map(|text| text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).collect::<Vec<_>>())
        .sum()
}

fn issued_orders(c: &Cluster) -> f64 {
    metric_sum(c, &format!("toil_acme_orders_total{{host=\"{HOST}\",result=\"issued\"}}"))
}

#[test]
fn a_cluster_orders_one_certificate_per_host_serves_it_on_every_node_and_renews_it_everywhere() {
    let dir = repo_root().join(format!("target/e2e/acme-cluster-{}-pebble", std::process::id()));
    let mut pebble = Pebble::plan(&dir);
    let c = cluster("acme-cluster", 3, &pebble, "http-01");

    // The CA is not up yet: the leader's order fails with the cause named,
    // the cluster backs off, and the nodes serve on (cleartext redirects).
    let line = log_line(&c, &format!("ACME order for {HOST} failed"));
    assert!(line.contains(&pebble.directory) && line.contains("Connection refused") && line.contains("tries again in"), "{line}");
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{}/", c.http(2).port())])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "308", "cleartext is redirected to HTTPS while the certificate is ordered");

    // The CA validates HTTP-01 through node 2, which did not order (node 1 leads).
    assert_eq!(c.leader(1).map(|(l, _)| l), Some(1));
    pebble.start(c.http(2).port(), c.http(2).port());
    let root = pebble.issuing_root();
    c.wait_for(Duration::from_secs(60), "every node to serve the issued certificate", |c| (1..=3).all(|id| served_leaf(c, id, &root).is_some()));
    let first: Vec<_> = (1..=3).map(|id| served_leaf(&c, id, &root).unwrap()).collect();
    assert!(first.iter().all(|l| *l == first[0]), "one certificate for all the nodes");
    assert_eq!(issued_orders(&c), 1.0, "one order issued, by one node");
    let status: serde_json::Value = serde_json::from_slice(&c.toil_admin(3, &["tls", "status"]).stdout).unwrap();
    assert_eq!(status["hosts"][HOST]["issued"]["order"].as_u64().map(|o| o > 0), Some(true), "{status}");
    assert_eq!(status["hosts"][HOST]["failures"], 0, "a success resets the failures: {status}");

    // curl over HTTP/2 with the CA's root trusted: the app answers.
    let port = c.http(3).port();
    let out = Command::new("curl")
        .args(["-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "--cacert"])
        .arg(&root)
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1"), &format!("https://{HOST}:{port}/")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("2 "),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Renewal on demand, asked of a follower: a new certificate on every node.
    let out = c.toil_admin(3, &["tls", "renew", HOST]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_for(Duration::from_secs(60), "every node to serve the renewed certificate", |c| {
        (1..=3).all(|id| served_leaf(c, id, &root).is_some_and(|l| l != first[0]))
    });
    let renewed: Vec<_> = (1..=3).map(|id| served_leaf(&c, id, &root).unwrap()).collect();
    assert!(renewed.iter().all(|l| *l == renewed[0]));
    assert_eq!(issued_orders(&c), 2.0);
    assert!(metric_sum(&c, &format!("toil_tls_certificate_days_left{{host=\"{HOST}\"}}")) > 0.0);

    // The key crossed the cluster sealed: no node's data or log holds it in
    // the clear (each node's own self-signed certificate, which never
    // leaves it, is the one PEM key on disk).
    for entry in walk(&c.dir).into_iter().filter(|p| !p.ends_with("tls/key.pem")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"PRIVATE KEY"), "a private key in the clear in {}", entry.display());
    }

    // A renewal for a host no domain serves is refused.
    let out = c.toil_admin(1, &["tls", "renew", "other.test"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a host of any deployed domain"));
}

#[test]
fn tls_alpn_01_is_answered_on_the_https_port() {
    let dir = repo_root().join(format!("target/e2e/acme-alpn-{}-pebble", std::process::id()));
    let mut pebble = Pebble::plan(&dir);
    let c = cluster("acme-alpn", 1, &pebble, "tls-alpn-01");
    pebble.start(1, c.http(1).port()); // no HTTP-01 port: only TLS-ALPN-01 can pass
    let root = pebble.issuing_root();
    c.wait_for(Duration::from_secs(60), "the issued certificate", |c| served_leaf(c, 1, &root).is_some());
    assert!(c.logs().contains("ACME TLS-ALPN-01 validation handshake answered"));
    assert_eq!(issued_orders(&c), 1.0);
}

#[test]
fn a_ca_that_refuses_or_answers_garbage_is_a_clear_error_and_the_node_serves_on() {
    let dir = repo_root().join(format!("target/e2e/acme-refused-{}-pebble", std::process::id()));
    let mut pebble = Pebble::plan(&dir);
    // The CA validates HTTP-01 on a port nothing listens on.
    let closed = common::cluster::free_port();
    pebble.start(closed, closed);
    let c = cluster("acme-refused", 1, &pebble, "http-01");
    let line = log_line(&c, &format!("ACME order for {HOST} failed"));
    assert!(line.contains("the CA could not validate the host") && line.contains(&closed.to_string()), "the CA's reason, with the port: {line}");
    let status: serde_json::Value = serde_json::from_slice(&c.toil_admin(1, &["tls", "status"]).stdout).unwrap();
    let entry = &status["hosts"][HOST];
    assert!(entry["failures"].as_u64() >= Some(1) && entry["issued"].is_null(), "{status}");
    assert!(entry["lastError"].as_str().unwrap().contains("could not validate"), "{status}");
    assert_eq!(admin_get(c.nodes[0].admin, "/healthz").as_deref(), Some("ok\n"), "the node serves on");
    drop(c);

    // A directory URL that answers 200 with something else (a PEM file).
    let garbage = format!("https://{}/roots/0", pebble.management);
    let c = cluster_with("acme-garbage", 1, &garbage, &pebble, "http-01");
    let line = log_line(&c, &format!("ACME order for {HOST} failed"));
    assert!(line.contains(&garbage), "names the directory: {line}");
    assert_eq!(admin_get(c.nodes[0].admin, "/healthz").as_deref(), Some("ok\n"));
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
