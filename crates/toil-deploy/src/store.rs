//! The artifact store: one file per blob, named by the SHA-256 of its bytes.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toil_cluster::BlobRef;

/// Blobs under `<dir>/sha256/<hex>`. Writes go to a temporary file first
/// and are renamed into place, so a reader never sees half a blob.
#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

/// The SHA-256 of `bytes` as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` looks like a SHA-256 in hex (the only names the store takes).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl BlobStore {
    pub fn open(dir: &Path) -> std::io::Result<BlobStore> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        Ok(BlobStore { dir: dir.to_path_buf() })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    /// Stores `bytes` and returns its reference. A blob already stored intact
    /// is kept; a damaged one (a crash mid-write on a filesystem that lost the
    /// rename's data) is replaced. The file is synced before it is renamed
    /// into place, so a reader never sees half a blob.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<BlobRef> {
        use std::io::Write;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
        let blob = BlobRef { sha256: sha256_hex(bytes), size: bytes.len() as u64 };
        if self.get(&blob).is_some() {
            return Ok(blob);
        }
        let tmp = self.dir.join(format!(".{}.{}.{}.tmp", blob.sha256, std::process::id(), NEXT_TMP.fetch_add(1, Ordering::Relaxed)));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, self.path(&blob.sha256)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok(blob)
    }

    /// The size of the blob stored under `sha256`, without reading it.
    pub fn size_of(&self, sha256: &str) -> Option<u64> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        std::fs::metadata(self.path(sha256)).ok().map(|m| m.len())
    }

    /// The bytes of `blob`, if stored here and intact.
    pub fn get(&self, blob: &BlobRef) -> Option<Vec<u8>> {
        if !is_sha256_hex(&blob.sha256) {
            return None;
        }
        let bytes = std::fs::read(self.path(&blob.sha256)).ok()?;
        (bytes.len() as u64 == blob.size && sha256_hex(&bytes) == blob.sha256).then_some(bytes)
    }

    /// The bytes stored under `sha256`, whatever their size.
    pub fn get_by_hash(&self, sha256: &str) -> Option<Vec<u8>> {
        if !is_sha256_hex(sha256) {
            return None;
        }
        std::fs::read(self.path(sha256)).ok().filter(|b| sha256_hex(b) == sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_found_by_content_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let blob = store.put(b"hello").unwrap();
        assert_eq!(blob.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(store.put(b"hello").unwrap(), blob);
        assert_eq!(store.get(&blob).unwrap(), b"hello");
        assert!(store.get(&BlobRef { size: 4, ..blob.clone() }).is_none(), "size must match");
        // A corrupted file is not served, and storing the bytes again repairs it.
        std::fs::write(dir.path().join("sha256").join(&blob.sha256), b"jello").unwrap();
        assert!(store.get(&blob).is_none());
        assert_eq!(store.put(b"hello").unwrap(), blob);
        assert_eq!(store.get(&blob).unwrap(), b"hello");
        assert_eq!(store.size_of(&blob.sha256), Some(5));
        assert!(store.get_by_hash("../../etc/passwd").is_none());
    }
}
