//! The real `helm` (v3, built from its Go module and cached by version), with a private home
//! so no user repositories or registry logins leak into a test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// One helm "installation": the binary, its private home, and optionally a cluster.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    /// helm, for a cluster when `kubeconfig` is given (else for rendering and registries).
    pub fn new(kubeconfig: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Helm {
            binary: crate::binaries::ensure(&["helm"])?["helm"].clone(),
            home: tempfile::tempdir()?,
            kubeconfig: kubeconfig.map(Path::to_path_buf),
        })
    }

    /// Runs helm (at most 7 minutes: `--wait` installs take their own timeout below that).
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"));
        if let Some(k) = &self.kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        Ok(crate::process::run_with_timeout(
            cmd,
            Duration::from_secs(420),
        )?)
    }

    /// Runs helm and returns its stdout; an error with both streams when it fails.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args)?;
        if !out.status.success() {
            anyhow::bail!(
                "helm {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
