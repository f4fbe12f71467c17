//! Test guests built by the toolchains users use (componentize-py, the examples' scripts),
//! for tests that need more than the hand-written fixtures of `wa8s-test-components`.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::paths::repo_root;
use crate::process::run_with_timeout;

/// Runs a build script of the repository (`bash SCRIPT ARGS... OUT.wasm`, within 10 minutes)
/// and returns the component it wrote.
pub fn built(script: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("guest.wasm");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(repo_root().join(script)).args(args).arg(&out);
    let run = run_with_timeout(cmd, Duration::from_secs(600))
        .with_context(|| format!("running {script}"))?;
    if !run.status.success() {
        bail!("{script}: {}", String::from_utf8_lossy(&run.stderr));
    }
    Ok(std::fs::read(&out)?)
}

/// The Python test guest (componentize-py, `shim/test-components/guests/python/app.py`), a
/// wasi:http server: `/env/NAME`, `/fetch/HOST:PORT/PATH` (an outbound GET; 502 naming the
/// host's refusal, e.g. `refused: DestinationIpProhibited`), `/write/N/PATH`, `/read/PATH`,
/// `/log/TEXT`. Built once per test process.
pub fn python_guest() -> anyhow::Result<Vec<u8>> {
    static GUEST: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            built("shim/test-components/guests/build.sh", &["python"]).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
