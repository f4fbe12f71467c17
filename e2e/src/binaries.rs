//! Locating the upstream binaries, building them (once, cached by version) when missing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::paths::repo_root;

/// Errors while obtaining binaries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The build script could not be started.
    #[error("running e2e/scripts/build-binaries.sh: {0}")]
    Spawn(#[from] std::io::Error),
    /// The build script failed.
    #[error("e2e/scripts/build-binaries.sh {names} failed ({status}); see its output above")]
    Build {
        /// The binaries asked for.
        names: String,
        /// How the script ended.
        status: std::process::ExitStatus,
    },
    /// The script did not report a binary that was asked for.
    #[error("e2e/scripts/build-binaries.sh did not report a path for {0}")]
    Missing(String),
}

/// Paths of the requested binaries, building any that are not cached yet. A cold build of
/// kube-apiserver takes 10-25 minutes on 2 cores; a cached one returns at once.
pub fn ensure(names: &[&str]) -> Result<BTreeMap<String, PathBuf>, Error> {
    let script = repo_root().join("e2e/scripts/build-binaries.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(names)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(Error::Build {
            names: names.join(" "),
            status: out.status,
        });
    }
    let found: BTreeMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), PathBuf::from(v)))
        .collect();
    for n in names {
        if !found.contains_key(*n) {
            return Err(Error::Missing((*n).to_owned()));
        }
    }
    Ok(found)
}
