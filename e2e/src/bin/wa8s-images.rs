//! `wa8s-images [--profile PROFILE] [--out DIR] [--bin-dir DIR --version V]` — the wa8s
//! container images as OCI image tarballs, written without a Docker engine from binaries
//! already built in `target/<profile>/` (`image` by default; see `e2e/scripts/images.sh`), or
//! in `--bin-dir` for another release's binaries (`e2e/scripts/previous-release.sh`):
//!
//! - `ghcr.io/reconcilerio/wa8s-operator:<version>`: the operator, its shared libraries and
//!   CA certificates;
//! - `ghcr.io/reconcilerio/wa8s-node-installer:<version>`: the installer and the shim it puts
//!   on nodes.
//!
//! Prints each tarball's path and size. Load with `ctr -n k8s.io images import`, or push.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wa8s_e2e::image;

const USAGE: &str =
    "usage: wa8s-images [--profile PROFILE] [--out DIR] [--bin-dir DIR --version VERSION]";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn main() -> anyhow::Result<()> {
    let root = wa8s_e2e::repo_root();
    let mut profile = "image".to_owned();
    let mut out = root.join("target/images");
    let mut bin_dir = None;
    let mut version = env!("CARGO_PKG_VERSION").to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--profile" => profile = args.next().context(USAGE)?,
            "--out" => out = PathBuf::from(args.next().context(USAGE)?),
            "--bin-dir" => bin_dir = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--version" => version = args.next().context(USAGE)?,
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    // cargo puts the dev profile in target/debug.
    let dir = bin_dir.unwrap_or_else(|| {
        root.join("target")
            .join(if profile == "dev" { "debug" } else { &profile })
    });
    let bin = |name: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        if !p.exists() {
            bail!(
                "{} is missing: build it first (cargo build --profile {profile} -p wa8s-operator -p wa8s-shim -p wa8s-installer --bins)",
                p.display()
            );
        }
        Ok(p)
    };
    std::fs::create_dir_all(&out)?;
    let ca = std::fs::read(CA_BUNDLE)
        .with_context(|| format!("reading {CA_BUNDLE} (Debian's ca-certificates)"))?;

    let operator = bin("wa8s-operator")?;
    let installer = bin("wa8s-node-installer")?;
    let shim = bin("containerd-shim-wa8s-v1")?;
    let images = [
        (
            "wa8s-operator",
            image::with_shared_libraries(
                &format!("ghcr.io/reconcilerio/wa8s-operator:{version}"),
                &[("/wa8s-operator", &operator)],
                &[(CA_BUNDLE, &ca, 0o644)],
            )?,
        ),
        (
            "wa8s-node-installer",
            // The shim sits next to the installer, where the installer looks for it.
            image::with_shared_libraries(
                &format!("ghcr.io/reconcilerio/wa8s-node-installer:{version}"),
                &[
                    ("/wa8s-node-installer", &installer),
                    ("/containerd-shim-wa8s-v1", &shim),
                ],
                &[],
            )?,
        ),
    ];
    for (name, tarball) in images {
        let path = out.join(format!("{name}.tar"));
        std::fs::write(&path, &tarball).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "{name}={} ({:.1} MiB)",
            path.display(),
            tarball.len() as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
