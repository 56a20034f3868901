//! The dev certificate: self-signed ECDSA P-256 for `localhost`,
//! `*.localhost`, `127.0.0.1` and `::1`, valid 13 days (browsers accept
//! `serverCertificateHashes` only for certificates valid under 14 days).
//! Kept on disk and regenerated when it has less than a day left.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

const VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 3600);

pub struct DevCert {
    pub cert_der: CertificateDer<'static>,
    pub key_der: PrivateKeyDer<'static>,
    pub not_after: SystemTime,
}

impl DevCert {
    /// SHA-256 of the DER certificate (what `serverCertificateHashes` takes).
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.cert_der.as_ref()).into()
    }

    /// The pair as rustls serves it.
    pub fn certified_key(&self) -> anyhow::Result<std::sync::Arc<rustls::sign::CertifiedKey>> {
        let signer = rustls::crypto::ring::sign::any_supported_type(&self.key_der)?;
        Ok(std::sync::Arc::new(rustls::sign::CertifiedKey::new(vec![self.cert_der.clone()], signer)))
    }

    /// The hash as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        self.sha256().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Loads the certificate kept in `dir`, or makes a new one if it is
    /// missing, unreadable or about to expire.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<DevCert> {
        match Self::load(dir) {
            Ok(c) if c.not_after > SystemTime::now() + RENEW_BEFORE => return Ok(c),
            Ok(_) => tracing::info!("dev certificate in {} expires within a day; making a new one", dir.display()),
            Err(_) => {}
        }
        Self::create(dir)
    }

    fn load(dir: &Path) -> anyhow::Result<DevCert> {
        let cert_der = CertificateDer::from_pem_file(dir.join("cert.pem"))?;
        let key_der = PrivateKeyDer::from_pem_file(dir.join("key.pem"))?;
        let secs: u64 = std::fs::read_to_string(dir.join("not-after"))?.trim().parse()?;
        Ok(DevCert { cert_der, key_der, not_after: UNIX_EPOCH + Duration::from_secs(secs) })
    }

    fn create(dir: &Path) -> anyhow::Result<DevCert> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let names = ["localhost", "*.localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let mut params = rcgen::CertificateParams::new(names)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "Toil Edge dev");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + VALIDITY;
        let cert = params.self_signed(&key)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, bytes: &[u8]| {
            let file = dir.join(name);
            std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))
        };
        write("cert.pem", cert.pem().as_bytes())?;
        write("key.pem", key.serialize_pem().as_bytes())?;
        let not_after = SystemTime::now() + VALIDITY;
        write("not-after", not_after.duration_since(UNIX_EPOCH)?.as_secs().to_string().as_bytes())?;
        Ok(DevCert {
            cert_der: cert.der().clone(),
            key_der: PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow::anyhow!(e))?,
            not_after,
        })
    }
}
