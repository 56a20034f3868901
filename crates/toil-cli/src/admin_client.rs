//! The client side of a node's admin API, shared by `toil status`, `toil
//! tick`, `toil deploy` and `toil rollback`.
//!
//! Which node: `--admin ADDR` (or `http://ADDR`, `https://ADDR`), else the
//! `dev.admin` address of the config. Which token: `--token-file`, else
//! `$TOIL_ADMIN_TOKEN`, else the token `toil dev` keeps next to its
//! certificate. An `https://` node is trusted by the SHA-256 of its
//! certificate (`--cert-sha256`, printed by the node at start), the way
//! browsers pin dev certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Where the admin API is and how to authenticate to it.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminArgs {
    /// The node's admin listener: ADDR, http://ADDR or https://ADDR (default: `dev.admin` of the config).
    #[arg(long, visible_alias = "node")]
    admin: Option<String>,
    /// The file holding the admin token (default: $TOIL_ADMIN_TOKEN, else the dev token of the config).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// For https: the SHA-256 (hex) of the node's certificate, as the node printed it.
    #[arg(long)]
    cert_sha256: Option<String>,
    /// The config whose `dev` section gives the defaults.
    #[arg(long, default_value = toil_config::FILE_NAME)]
    config: PathBuf,
}

impl AdminArgs {
    /// The config file these arguments default from.
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

/// The name of the token file `toil dev` keeps in its certificate directory.
pub const DEV_TOKEN_FILE: &str = "admin-token";

/// A connection target for admin requests.
pub struct AdminClient {
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: String,
}

impl AdminClient {
    pub fn new(args: &AdminArgs) -> anyhow::Result<AdminClient> {
        let config = || toil_config::Config::load(&args.config);
        let target = match &args.admin {
            Some(a) => a.clone(),
            None => config()?.dev.admin.to_string(),
        };
        let (tls, host) = match target.split_once("://") {
            Some(("https", rest)) => (true, rest),
            Some(("http", rest)) => (false, rest),
            Some((scheme, _)) => anyhow::bail!("--admin {target}: unknown scheme {scheme:?} (http or https)"),
            None => (false, target.as_str()),
        };
        let host = host.trim_end_matches('/').to_string();
        if !tls && !is_loopback(&host) {
            anyhow::bail!("--admin {target}: the admin token is not sent over plain HTTP off loopback; use https://{host} with --cert-sha256");
        }
        let tls = match (tls, &args.cert_sha256) {
            (false, _) => None,
            (true, Some(pin)) => Some(pinned_tls(pin)?),
            (true, None) => anyhow::bail!("--admin {target}: an https node needs --cert-sha256 (the node prints its certificate's SHA-256 at start)"),
        };
        let token = match (&args.token_file, std::env::var("TOIL_ADMIN_TOKEN")) {
            (Some(f), _) => read_token(f)?,
            (None, Ok(t)) if !t.trim().is_empty() => t.trim().to_string(),
            _ => read_token(&config()?.dev.cert_dir.join(DEV_TOKEN_FILE))
                .context("no admin token: pass --token-file or set TOIL_ADMIN_TOKEN (toil dev writes one next to its certificate)")?,
        };
        Ok(AdminClient { host, tls, token })
    }

    /// One request; the status and the body as text.
    pub async fn request(&self, method: http::Method, path_and_query: &str, body: Vec<u8>) -> anyhow::Result<(http::StatusCode, String)> {
        let tcp = tokio::net::TcpStream::connect(&self.host)
            .await
            .with_context(|| format!("connecting to the admin listener at {}: is `toil dev` or `toil node` running?", self.host))?;
        let req = http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(http::header::HOST, &self.host)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(Bytes::from(body)))?;
        let resp = match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("static name");
                let tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.context("admin TLS handshake")?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
                tokio::spawn(conn);
                send.send_request(req).await?
            }
            None => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                send.send_request(req).await?
            }
        };
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// [`Self::request`] on its own runtime, for commands that make one call.
    pub fn request_blocking(&self, method: http::Method, path_and_query: &str, body: Vec<u8>) -> anyhow::Result<(http::StatusCode, String)> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(self.request(method, path_and_query, body))
    }
}

/// Whether `host` (`name:port`, `ip:port` or `[ip]:port`) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| format!("reading the admin token {}", path.display()))?;
    Ok(token.trim().to_string())
}

/// A TLS client that trusts exactly the certificate with SHA-256 `pin`.
fn pinned_tls(pin: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let pin = pin.trim().to_ascii_lowercase().replace(':', "");
    anyhow::ensure!(pin.len() == 64 && pin.bytes().all(|b| b.is_ascii_hexdigit()), "--cert-sha256: expected 64 hex digits");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCert { pin, provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Trusts one certificate by hash; signatures are still checked against it.
#[derive(Debug)]
struct PinnedCert {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = toil_deploy::store::sha256_hex(end_entity.as_ref());
        if got == self.pin {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("the node's certificate has SHA-256 {got}, not the pinned {}", self.pin)))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
