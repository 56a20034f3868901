//! The cluster port's TLS: mutual, TLS 1.3 only, every certificate issued
//! by a CA whose key is derived from the cluster secret.
//!
//! Whoever holds the secret can make the CA's key (an Ed25519 seed derived
//! from it, [`ClusterSecret`]), so each node issues its own certificate at
//! start: no files to hand out, no CA to run. A certificate names
//! `node-<id>.toil-cluster` (0: an operator's command line) and
//! [`SERVER_NAME`]. A node takes a connection only with a certificate from
//! that CA: no certificate, another cluster's, a self-signed one, and the
//! handshake fails. A client talks only to a server with one.
//!
//! The HMAC signature on every request ([`crate::auth`]) stays: the
//! certificate says which node is at the other end of the connection, and
//! the server refuses a request signed as another node.
//!
//! What this gives: nothing in the clear on the cluster port (a passive
//! observer sees TLS records, not owners, fencing tokens or artifacts), and
//! a captured connection sent again gets no further than a failed handshake.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use toil_cluster::NodeId;

use crate::auth::ClusterSecret;

/// The name every node's certificate carries, and every client asks for.
pub const SERVER_NAME: &str = "toil-cluster";

/// One node's TLS, both ways.
#[derive(Clone)]
pub struct ClusterTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

/// RFC 8410's PKCS#8 v1 wrapping of an Ed25519 seed (the 32 bytes follow).
const ED25519_PKCS8_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

impl ClusterTls {
    /// The CA from `secret`, and a fresh certificate for node `me` it signs.
    pub fn new(secret: &ClusterSecret, me: NodeId) -> anyhow::Result<ClusterTls> {
        let (ca_cert, leaf, leaf_key) = certificates(secret, me)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert)?;
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.clone()], leaf_key.clone_key())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf], leaf_key)?;
        Ok(ClusterTls { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// The CA's certificate, and node `me`'s certificate and key.
fn certificates(secret: &ClusterSecret, me: NodeId) -> anyhow::Result<(CertificateDer<'static>, CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&secret.ca_seed());
    let ca_key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &rcgen::PKCS_ED25519)?;
    // A trust anchor is the CA's name and key, so every node making this
    // certificate for itself makes the same anchor.
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Toil cluster CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;

    let key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string(), node_name(me)])?;
    leaf.distinguished_name.push(rcgen::DnType::CommonName, node_name(me));
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let leaf = leaf.signed_by(&key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((issuer.der().clone(), leaf.der().clone(), key))
}

fn node_name(id: NodeId) -> String {
    format!("node-{id}.{SERVER_NAME}")
}

/// The node a certificate (one the handshake verified) names.
pub fn node_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) => dns.strip_prefix("node-")?.strip_suffix(&format!(".{SERVER_NAME}"))?.parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn secret(byte: u8) -> ClusterSecret {
        ClusterSecret::new(&[byte; 32]).unwrap()
    }

    /// A handshake between `client` and `server` over loopback: what the
    /// server learnt of the client's node, or the client's error.
    async fn handshake(client: &ClusterTls, server: &ClusterTls) -> Result<Option<NodeId>, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server.server.clone());
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.ok()?;
            let node = tls.get_ref().1.peer_certificates().and_then(|c| node_of(&c[0]));
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.ok()?;
            tls.write_all(&byte).await.ok()?;
            node
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client.client.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
        tls.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        Ok(served.await.unwrap())
    }

    #[tokio::test]
    async fn members_of_one_cluster_meet_and_learn_who_is_at_the_other_end() {
        let (one, two) = (ClusterTls::new(&secret(1), 1).unwrap(), ClusterTls::new(&secret(1), 2).unwrap());
        assert_eq!(handshake(&one, &two).await, Ok(Some(1)));
        assert_eq!(handshake(&two, &one).await, Ok(Some(2)));
        let operator = ClusterTls::new(&secret(1), 0).unwrap();
        assert_eq!(handshake(&operator, &one).await, Ok(Some(0)));
    }

    #[tokio::test]
    async fn another_secret_or_no_client_certificate_gets_no_connection() {
        let member = ClusterTls::new(&secret(1), 1).unwrap();
        let stranger = ClusterTls::new(&secret(2), 9).unwrap();
        let e = handshake(&stranger, &member).await.unwrap_err();
        assert!(e.contains("invalid peer certificate"), "the client does not trust another cluster's node: {e}");
        // A client trusting the cluster's CA but showing no certificate of its own.
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(certificates(&secret(1), 1).unwrap().0).unwrap();
            r
        };
        let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let no_cert = ClusterTls { server: member.server.clone(), client: Arc::new(no_cert) };
        assert!(handshake(&no_cert, &member).await.is_err(), "a client with no certificate is refused");
        // One that trusts the cluster's CA and shows another cluster's certificate.
        let (_, leaf, key) = certificates(&secret(2), 1).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificates(&secret(1), 1).unwrap().0).unwrap();
        let forged = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf], key)
            .unwrap();
        let forged = ClusterTls { server: member.server.clone(), client: Arc::new(forged) };
        assert!(handshake(&forged, &member).await.is_err(), "another cluster's client certificate is refused");
    }
}
