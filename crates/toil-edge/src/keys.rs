//! The node's QUIC secrets, shared by all its workers and kept across
//! restarts: the stateless-reset key (a restarted node can still reset the
//! connections of its previous life, so clients do not wait out a timeout),
//! the address-validation token key, and the connection-ID MAC key
//! ([`crate::steering`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ring::rand::SecureRandom;
use ring::{hkdf, hmac};

const SECRET_LEN: usize = 32;
const FILE_NAME: &str = "quic-keys";

/// The three secrets, 32 random bytes each.
#[derive(Clone)]
pub struct NodeKeys {
    reset: [u8; SECRET_LEN],
    token: [u8; SECRET_LEN],
    cid: [u8; SECRET_LEN],
    pub file: PathBuf,
}

impl NodeKeys {
    /// Loads the keys kept in `dir`, or creates them (file mode 0600).
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join(FILE_NAME);
        match std::fs::read(&file) {
            Ok(bytes) if bytes.len() == 3 * SECRET_LEN => {
                let part = |i: usize| bytes[i * SECRET_LEN..(i + 1) * SECRET_LEN].try_into().expect("32 bytes");
                return Ok(NodeKeys { reset: part(0), token: part(1), cid: part(2), file });
            }
            Ok(bytes) => anyhow::bail!("{}: {} bytes, expected {}; delete it to make new keys", file.display(), bytes.len(), 3 * SECRET_LEN),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        }
        let mut bytes = [0u8; 3 * SECRET_LEN];
        ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("no system randomness"))?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_private(&file, &bytes)?;
        Self::load_or_create(dir)
    }

    /// The stateless-reset key.
    pub fn reset_key(&self) -> Arc<hmac::Key> {
        Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &self.reset))
    }

    /// The address-validation (retry and NEW_TOKEN) token key.
    pub fn token_key(&self) -> Arc<hkdf::Prk> {
        Arc::new(hkdf::Salt::new(hkdf::HKDF_SHA256, b"toil quic token").extract(&self.token))
    }

    /// The connection-ID MAC key.
    pub fn cid_key(&self) -> Arc<hmac::Key> {
        Arc::new(hmac::Key::new(hmac::HMAC_SHA256, &self.cid))
    }
}

/// Creates `file` (which must not exist) readable by its owner only, holding `bytes`.
pub(crate) fn write_private(file: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(file).with_context(|| format!("creating {}", file.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("toil-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = NodeKeys::load_or_create(&dir).unwrap();
        let again = NodeKeys::load_or_create(&dir).unwrap();
        assert_eq!((first.reset, first.token, first.cid), (again.reset, again.token, again.cid));
        assert_ne!(first.reset, first.cid);
        std::fs::write(&first.file, b"short").unwrap();
        assert!(NodeKeys::load_or_create(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
