//! The precompile cache: native code for (component digest, Wasmtime version, engine
//! configuration, CPU features), so a node compiles each component once.
//!
//! Deserializing runs native code, so only artifacts this cache wrote *and recorded* are
//! ever loaded: each `<name>.cwasm` has a `<name>.record` holding its SHA-256, written after
//! the artifact (a crash between leaves an unrecorded file, which is ignored). Anything else
//! in the directory is never loaded and is reported by [`PrecompileCache::foreign_files`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::{Error, HostEngine, Program};

/// Where a program came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Deserialized from this cache's own recorded artifact.
    Cache,
    /// Compiled now (and recorded for next time).
    Compiled,
}

/// A precompile cache directory.
#[derive(Debug, Clone)]
pub struct PrecompileCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Record {
    component: String,
    wasmtime: String,
    compatibility: String,
    artifact_sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(bytes))
}

impl PrecompileCache {
    /// A cache in `dir`, created (owner-only) if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(PrecompileCache { dir })
    }

    fn name(engine: &HostEngine, digest: &str) -> Result<String, Error> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| Error::Engine(format!("{digest:?} is not a sha256 digest")))?;
        Ok(format!("{hex}.{}", engine.compatibility_key()))
    }

    /// The program for `wasm` (whose digest is `digest`), from the cache when this cache
    /// recorded a matching artifact, else compiled and recorded.
    pub fn load(
        &self,
        engine: &HostEngine,
        digest: &str,
        wasm: &[u8],
    ) -> Result<(Program, Source), Error> {
        let name = Self::name(engine, digest)?;
        let actual = format!("sha256:{}", sha256_hex(wasm));
        if actual != digest {
            return Err(Error::Engine(format!(
                "component digest mismatch: expected {digest}, got {actual}"
            )));
        }
        let artifact = self.dir.join(format!("{name}.cwasm"));
        let record = self.dir.join(format!("{name}.record"));
        if let Some(program) = self.load_recorded(engine, &artifact, &record) {
            return Ok((program, Source::Cache));
        }
        let code = engine.precompile(wasm)?;
        let program = engine.load_own_precompiled(&code)?;
        if let Err(e) = self.store(engine, digest, &code, &artifact, &record) {
            tracing::warn!(dir = %self.dir.display(), "precompile cache not written: {e}");
        }
        Ok((program, Source::Compiled))
    }

    fn load_recorded(
        &self,
        engine: &HostEngine,
        artifact: &Path,
        record: &Path,
    ) -> Option<Program> {
        let rec: Record = match std::fs::read(record) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %record.display(), "ignoring an unreadable record: {e}");
                    return None;
                }
            },
            Err(_) => {
                if artifact.exists() {
                    tracing::warn!(
                        path = %artifact.display(),
                        "ignoring a precompiled file this cache did not record"
                    );
                }
                return None;
            }
        };
        let code = std::fs::read(artifact).ok()?;
        if sha256_hex(&code) != rec.artifact_sha256
            || rec.compatibility != engine.compatibility_key()
            || rec.wasmtime != crate::WASMTIME_VERSION
        {
            tracing::warn!(
                path = %artifact.display(),
                "ignoring a precompiled file that does not match its record"
            );
            return None;
        }
        match engine.load_own_precompiled(&code) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(path = %artifact.display(), "recorded artifact did not load: {e}");
                None
            }
        }
    }

    fn store(
        &self,
        engine: &HostEngine,
        digest: &str,
        code: &[u8],
        artifact: &Path,
        record: &Path,
    ) -> Result<(), Error> {
        let rec = Record {
            component: digest.to_owned(),
            wasmtime: crate::WASMTIME_VERSION.to_owned(),
            compatibility: engine.compatibility_key(),
            artifact_sha256: sha256_hex(code),
        };
        let rec = serde_json::to_vec_pretty(&rec).map_err(|e| Error::Engine(e.to_string()))?;
        write_atomic(artifact, code)?;
        write_atomic(record, &rec)?;
        Ok(())
    }

    /// Files this cache would never load: unrecorded artifacts, artifacts that do not match
    /// their record, and anything else found in the directory.
    pub fn foreign_files(&self) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut foreign = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ok = if let Some(stem) = name.strip_suffix(".cwasm") {
                let record = self.dir.join(format!("{stem}.record"));
                std::fs::read(&record)
                    .ok()
                    .and_then(|r| serde_json::from_slice::<Record>(&r).ok())
                    .zip(std::fs::read(&path).ok())
                    .is_some_and(|(r, code)| r.artifact_sha256 == sha256_hex(&code))
            } else if let Some(stem) = name.strip_suffix(".record") {
                self.dir.join(format!("{stem}.cwasm")).exists()
            } else {
                false
            };
            if !ok {
                foreign.push(path);
            }
        }
        foreign.sort();
        foreign
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(())
}
