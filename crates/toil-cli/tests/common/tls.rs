//! A test certificate authority (rcgen) and a TLS client trusting it,
//! for the HTTPS tests and benchmarks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// A certificate authority of the test's own, and the leaves it signs.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// Its certificate, PEM, for clients to trust.
    pub pem: PathBuf,
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Toil Edge test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, issuer.pem()).unwrap();
        TestCa { issuer, pem, dir: dir.to_path_buf() }
    }

    /// A leaf for `names`, valid 90 days: (certificate PEM, key PEM, DER).
    pub fn issue(&self, names: &[&str]) -> (String, String, CertificateDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(90);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }

    /// Issues a leaf and writes it as `{name}.pem` and `{name}.key`: (paths, DER).
    pub fn write(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let (cert, key, der) = self.issue(names);
        let (cert_path, key_path) = (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        replace(&cert_path, cert.as_bytes());
        replace(&key_path, key.as_bytes());
        (cert_path, key_path, der)
    }
}

/// The pin Chromium's `--ignore-certificate-errors-spki-list` takes for
/// the certificate of the PEM private key `key_pem`: base64 of the SHA-256
/// of its SubjectPublicKeyInfo.
pub fn spki_pin(key_pem: &str) -> String {
    use base64::Engine;
    use rcgen::PublicKeyData;
    use sha2::Digest;
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(key.subject_public_key_info()))
}

/// Writes a file the way deploy tools do: a new file renamed over the old.
pub fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A client config trusting only the CA certificates in the PEM file
/// `ca`, offering `alpn`. Every connection made with it is a full
/// handshake: it keeps no sessions to resume.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A TLS connection to `addr` asking for `name`, made with `config`.
pub async fn connect_with(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    tokio_rustls::TlsConnector::from(config.clone()).connect(ServerName::try_from(name.to_string()).unwrap(), tcp).await
}

/// A TLS connection to `addr` asking for `name`, trusting only `ca`.
pub async fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    name: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    connect_with(&client_config(ca, alpn), addr, name).await
}

/// The certificate the server showed on `stream`.
pub fn leaf(stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned()
}
