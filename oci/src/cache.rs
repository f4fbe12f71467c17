//! The node-wide content-addressed blob cache.
//!
//! `blobs/sha256/<hex>` holds verified content. Writes go to `tmp/`, are checked against the
//! digest and only then renamed into place, so an entry exists only after a verified write of
//! its content and a reader never sees a partial blob. A lookup ([`BlobCache::verified`], a
//! hit of [`BlobCache::get_or_fetch`]) therefore trusts the entry instead of hashing it
//! again: a component is hashed once per node, when it arrives. [`BlobCache::get`] still
//! re-hashes (a full check that drops a corrupt entry); one fetch per digest at a time (an exclusive `flock` on `locks/<hex>`, which
//! also holds across processes); and the total size is kept under a bound by evicting the
//! least recently used blobs (a read refreshes a blob's modification time).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Error;

/// A blob in a [`BlobCache`] whose content hashes to [`VerifiedBlob::digest`]. Only the cache
/// makes one, for an entry it stored after checking the bytes against the digest (or that it
/// hashed itself), so holding one is proof enough: nothing needs to hash the content again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBlob {
    path: PathBuf,
    digest: String,
    size: u64,
}

impl VerifiedBlob {
    /// Where the content is (inside the cache; read it, never write it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `sha256:<hex>` of the content.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The content's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The content, read without hashing it: it was verified when the cache stored it.
    pub fn read(&self) -> Result<Vec<u8>, Error> {
        std::fs::read(&self.path).map_err(Error::io(format!("reading {}", self.path.display())))
    }
}

/// A content-addressed cache directory.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
    max_bytes: u64,
}

impl BlobCache {
    /// A cache in `root` (created if missing) holding at most `max_bytes`.
    pub fn new(root: impl Into<PathBuf>, max_bytes: u64) -> Result<Self, Error> {
        let root = root.into();
        for sub in ["blobs/sha256", "tmp", "locks"] {
            std::fs::create_dir_all(root.join(sub))
                .map_err(Error::io(format!("creating {}", root.join(sub).display())))?;
        }
        Ok(BlobCache { root, max_bytes })
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn hex(digest: &str) -> Result<&str, Error> {
        match digest.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
            _ => Err(Error::Digest {
                what: "cache key".into(),
                expected: "sha256:<64 hex digits>".into(),
                actual: digest.into(),
            }),
        }
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    /// The verified content for `digest`, if cached. A blob that no longer matches its
    /// digest is removed (and reported) so the next fetch replaces it.
    pub fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        let hex = Self::hex(digest)?;
        let path = self.blob_path(hex);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        let actual = crate::hash_blob(&bytes);
        if actual != digest {
            tracing::warn!(
                path = %path.display(),
                expected = digest,
                %actual,
                "cached blob is corrupt; removing it"
            );
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        touch(&path);
        Ok(Some(bytes))
    }

    /// The cached blob for `digest`, if any, without reading or hashing it: the cache stored
    /// it only after verifying it (see the module documentation).
    pub fn verified(&self, digest: &str) -> Result<Option<VerifiedBlob>, Error> {
        let hex = Self::hex(digest)?;
        let path = self.blob_path(hex);
        // Not followed: the cache writes only regular files, so a link was put there by
        // something else.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
        };
        if !meta.is_file() {
            return Ok(None);
        }
        touch(&path);
        Ok(Some(VerifiedBlob {
            path,
            digest: digest.to_owned(),
            size: meta.len(),
        }))
    }

    /// The content for `digest`, if cached, read without hashing it (see [`Self::verified`]).
    pub fn cached(&self, digest: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.verified(digest)? {
            Some(blob) => match blob.read() {
                Ok(bytes) => Ok(Some(bytes)),
                // Evicted between the lookup and the read: fetched again.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    Ok(None)
                }
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// The content for `digest`, fetched with `fetch` unless cached. Concurrent callers for
    /// the same digest (threads or processes) wait for one fetch. Fetched bytes must hash to
    /// `digest`, or nothing is stored.
    pub async fn get_or_fetch<F, Fut>(&self, digest: &str, fetch: F) -> Result<Vec<u8>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, Error>>,
    {
        self.fill(digest, fetch, true).await
    }

    /// [`Self::get_or_fetch`] for a `fetch` that verifies its bytes against `digest` itself
    /// (as the registry download does while the bytes arrive): no second pass over them.
    pub(crate) async fn get_or_fetch_verified<F, Fut>(
        &self,
        digest: &str,
        fetch: F,
    ) -> Result<Vec<u8>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, Error>>,
    {
        self.fill(digest, fetch, false).await
    }

    /// Stores `bytes` under their own digest, computed here (the one pass over them): for
    /// content no descriptor named (a file in a root filesystem, a binary out of a tar layer).
    pub async fn insert(&self, bytes: Vec<u8>) -> Result<VerifiedBlob, Error> {
        let digest = crate::hash_blob(&bytes);
        self.hold(&digest, bytes).await
    }

    /// Stores `bytes`, which this crate already hashed to `digest`, and returns the handle.
    pub(crate) async fn hold(&self, digest: &str, bytes: Vec<u8>) -> Result<VerifiedBlob, Error> {
        let size = bytes.len() as u64;
        self.fill(digest, || async { Ok(bytes) }, false).await?;
        let path = self.blob_path(Self::hex(digest)?);
        Ok(VerifiedBlob {
            path,
            digest: digest.to_owned(),
            size,
        })
    }

    /// [`Self::get_or_fetch`]; `verify: false` when the bytes `fetch` returns are known to
    /// hash to `digest` already.
    async fn fill<F, Fut>(&self, digest: &str, fetch: F, verify: bool) -> Result<Vec<u8>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, Error>>,
    {
        let hex = Self::hex(digest)?.to_owned();
        if let Some(bytes) = self.cached(digest)? {
            return Ok(bytes);
        }
        let lock_path = self.root.join("locks").join(&hex);
        let lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let f = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            f.lock()?;
            Ok(f)
        })
        .await
        .map_err(|e| Error::io("cache lock")(std::io::Error::other(e)))?
        .map_err(Error::io(format!("locking cache entry {hex}")))?;
        // Someone else may have fetched it while we waited.
        if let Some(bytes) = self.cached(digest)? {
            drop(lock);
            return Ok(bytes);
        }
        let bytes = fetch().await?;
        if verify {
            let actual = crate::hash_blob(&bytes);
            if actual != digest {
                return Err(Error::Digest {
                    what: "fetched blob".into(),
                    expected: digest.into(),
                    actual,
                });
            }
        }
        self.store(&hex, &bytes)?;
        drop(lock);
        self.evict(&hex);
        Ok(bytes)
    }

    fn store(&self, hex: &str, bytes: &[u8]) -> Result<(), Error> {
        let tmp = tempfile_in(&self.root.join("tmp"))?;
        std::fs::write(&tmp, bytes).map_err(Error::io(format!("writing {}", tmp.display())))?;
        if let Ok(f) = std::fs::File::open(&tmp) {
            let _ = f.sync_all();
        }
        let path = self.blob_path(hex);
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("storing {}", path.display()))(e)
        })
    }

    /// Removes least recently used blobs until the total is within the bound (never `keep`).
    fn evict(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(self.root.join("blobs/sha256")) else {
            return;
        };
        let mut blobs: Vec<(SystemTime, u64, PathBuf, bool)> = entries
            .flatten()
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                let keep = e.file_name() == keep;
                Some((meta.modified().ok()?, meta.len(), e.path(), keep))
            })
            .collect();
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        blobs.sort_by_key(|b| b.0);
        for (_, size, path, keep) in blobs {
            if total <= self.max_bytes {
                break;
            }
            if keep {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                tracing::debug!(path = %path.display(), size, "evicted from the blob cache");
                total = total.saturating_sub(size);
            }
        }
    }

    /// Total bytes held.
    pub fn size(&self) -> u64 {
        std::fs::read_dir(self.root.join("blobs/sha256"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Marks `path` as just used: modification time is the recency eviction goes by.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn tempfile_in(dir: &Path) -> Result<PathBuf, Error> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(dir.join(format!("{}-{n}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, len: usize) -> (String, Vec<u8>) {
        let bytes = vec![n; len];
        (crate::sha256_digest(&bytes), bytes)
    }

    #[tokio::test]
    async fn a_corrupted_entry_is_detected_and_fetched_again() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let cache = BlobCache::new(dir.path(), 1 << 20)?;
        let (digest, bytes) = blob(1, 1000);
        let got = cache
            .get_or_fetch(&digest, || async { Ok(bytes.clone()) })
            .await?;
        assert_eq!(got, bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(dir.path().join("blobs/sha256").join(hex), b"tampered")
            .map_err(Error::io("tamper"))?;
        assert_eq!(
            cache.get(&digest)?,
            None,
            "a corrupt blob is never returned"
        );
        let mut fetched = false;
        let got = cache
            .get_or_fetch(&digest, || {
                fetched = true;
                async { Ok(bytes.clone()) }
            })
            .await?;
        assert!(fetched);
        assert_eq!(got, bytes);
        Ok(())
    }

    #[tokio::test]
    async fn content_that_does_not_match_its_digest_is_not_stored() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let cache = BlobCache::new(dir.path(), 1 << 20)?;
        let (digest, _) = blob(1, 10);
        let err = cache
            .get_or_fetch(&digest, || async { Ok(b"something else".to_vec()) })
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Digest { .. }), "{err}");
        assert_eq!(cache.size(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn inserted_content_is_stored_under_its_own_digest() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let cache = BlobCache::new(dir.path(), 1 << 20)?;
        let (digest, bytes) = blob(7, 100);
        let blob = cache.insert(bytes.clone()).await?;
        assert_eq!((blob.digest(), blob.size()), (digest.as_str(), 100));
        assert_eq!(cache.get(&digest)?, Some(bytes.clone()));
        assert_eq!(blob.read()?, bytes);
        // Again: the same digest, one entry.
        assert_eq!(cache.insert(bytes).await?, blob);
        assert_eq!(cache.verified(&digest)?, Some(blob));
        assert_eq!(cache.size(), 100);
        Ok(())
    }

    #[tokio::test]
    async fn a_handle_names_a_stored_entry_and_never_a_link() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let cache = BlobCache::new(dir.path(), 1 << 20)?;
        let (digest, bytes) = blob(4, 300);
        assert_eq!(cache.verified(&digest)?, None);
        cache
            .get_or_fetch(&digest, || async { Ok(bytes.clone()) })
            .await?;
        let handle = cache.verified(&digest)?.expect("stored");
        assert_eq!((handle.digest(), handle.size()), (digest.as_str(), 300));
        assert_eq!(handle.read()?, bytes);
        // A link under another digest (pointing at the stored blob) is not the cache's.
        let (other, _) = blob(5, 300);
        std::os::unix::fs::symlink(
            handle.path(),
            dir.path().join("blobs/sha256").join(&other[7..]),
        )
        .map_err(Error::io("link"))?;
        assert_eq!(cache.verified(&other)?, None);
        Ok(())
    }

    #[tokio::test]
    async fn eviction_keeps_the_bound_and_drops_the_least_recently_used() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::io("tmp"))?;
        let cache = BlobCache::new(dir.path(), 2500)?;
        let (a, a_bytes) = blob(1, 1000);
        let (b, b_bytes) = blob(2, 1000);
        let (c, c_bytes) = blob(3, 1000);
        cache.get_or_fetch(&a, || async { Ok(a_bytes) }).await?;
        cache.get_or_fetch(&b, || async { Ok(b_bytes) }).await?;
        // Recency is the modification time: make a older than b, then read a.
        let age = |digest: &str, secs: u64| -> Result<(), Error> {
            let path = dir.path().join("blobs/sha256").join(&digest[7..]);
            let f = std::fs::File::options()
                .append(true)
                .open(&path)
                .map_err(Error::io("open"))?;
            f.set_modified(SystemTime::now() - std::time::Duration::from_secs(secs))
                .map_err(Error::io("set mtime"))
        };
        age(&a, 20)?;
        age(&b, 10)?;
        // Reading a makes b the least recently used.
        assert!(cache.get(&a)?.is_some());
        cache.get_or_fetch(&c, || async { Ok(c_bytes) }).await?;
        assert!(cache.size() <= 2500, "{} bytes", cache.size());
        assert!(cache.get(&a)?.is_some());
        assert!(cache.get(&b)?.is_none());
        assert!(cache.get(&c)?.is_some());
        Ok(())
    }
}
