//! The precompile cache: native code for (component digest, Wasmtime version, engine
//! configuration, CPU features), so a node compiles each component once.
//!
//! A component is named by a [`VerifiedBlob`], whose digest the blob cache checked when it
//! stored the bytes: the digest alone is the key, and a recorded artifact loads without the
//! component's bytes being read (or hashed) at all.
//!
//! Deserializing runs native code, so only artifacts this cache wrote *and recorded* are
//! ever loaded: each `<name>.cwasm` has a `<name>.record` holding its SHA-256, written after
//! the artifact (a crash between leaves an unrecorded file, which is ignored). Anything else
//! in the directory is never loaded and is reported by [`PrecompileCache::foreign_files`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use wa8s_oci::VerifiedBlob;

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

    /// The program for `component`, from the cache when this cache recorded a matching
    /// artifact, else compiled and recorded.
    pub fn load(
        &self,
        engine: &HostEngine,
        component: &VerifiedBlob,
    ) -> Result<(Program, Source), Error> {
        let (artifact, record) = self.paths(engine, component)?;
        if let Some(code) = self.recorded_code(engine, component, &artifact, &record) {
            match Program::load_own_precompiled(engine, &code) {
                Ok(p) => return Ok((p, Source::Cache)),
                Err(e) => {
                    tracing::warn!(path = %artifact.display(), "recorded artifact did not load: {e}");
                }
            }
        }
        let code = engine.precompile(&component.read().map_err(Error::Component)?)?;
        let program = Program::load_own_precompiled(engine, &code)?;
        if let Err(e) = self.store(engine, component, &code, &artifact, &record) {
            tracing::warn!(dir = %self.dir.display(), "precompile cache not written: {e}");
        }
        Ok((program, Source::Compiled))
    }

    /// The program for `component` from this cache's recorded artifact, never compiling (nor
    /// reading the component): `None` when there is none (or it does not match its record).
    /// For a process that must not compile (the shim's guest, which runs in the pod's cgroup
    /// and has one thread).
    pub fn load_recorded(
        &self,
        engine: &HostEngine,
        component: &VerifiedBlob,
    ) -> Result<Option<Program>, Error> {
        let (artifact, record) = self.paths(engine, component)?;
        match self.recorded_code(engine, component, &artifact, &record) {
            Some(code) => Program::load_own_precompiled(engine, &code).map(Some),
            None => Ok(None),
        }
    }

    /// Makes sure the cache holds a recorded artifact for `component`, compiling it if not,
    /// without loading it (for a process that only warms the cache). Unlike
    /// [`PrecompileCache::load`], failing to write the cache is an error: the caller relies on
    /// the entry being there.
    pub fn ensure(&self, engine: &HostEngine, component: &VerifiedBlob) -> Result<Source, Error> {
        let (artifact, record) = self.paths(engine, component)?;
        if self
            .recorded_code(engine, component, &artifact, &record)
            .is_some()
        {
            return Ok(Source::Cache);
        }
        let code = engine.precompile(&component.read().map_err(Error::Component)?)?;
        self.store(engine, component, &code, &artifact, &record)?;
        Ok(Source::Compiled)
    }

    /// The artifact and record paths for `component`: its verified digest is the key.
    fn paths(
        &self,
        engine: &HostEngine,
        component: &VerifiedBlob,
    ) -> Result<(PathBuf, PathBuf), Error> {
        let name = Self::name(engine, component.digest())?;
        Ok((
            self.dir.join(format!("{name}.cwasm")),
            self.dir.join(format!("{name}.record")),
        ))
    }

    /// The artifact's bytes when this cache recorded it for this engine and it still
    /// matches its record.
    fn recorded_code(
        &self,
        engine: &HostEngine,
        component: &VerifiedBlob,
        artifact: &Path,
        record: &Path,
    ) -> Option<Vec<u8>> {
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
            || rec.component != component.digest()
            || rec.compatibility != engine.compatibility_key()
            || rec.wasmtime != crate::WASMTIME_VERSION
        {
            tracing::warn!(
                path = %artifact.display(),
                "ignoring a precompiled file that does not match its record"
            );
            return None;
        }
        Some(code)
    }

    fn store(
        &self,
        engine: &HostEngine,
        component: &VerifiedBlob,
        code: &[u8],
        artifact: &Path,
        record: &Path,
    ) -> Result<(), Error> {
        let rec = Record {
            component: component.digest().to_owned(),
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
