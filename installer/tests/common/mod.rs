//! What the installer's tests share: real fixtures, fake node roots and a real containerd's
//! reading of a configuration.
#![allow(dead_code)] // each test crate uses its own part

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use wa8s_installer::node::{Options, Restart};

/// A file of `tests/fixtures`.
pub fn fixture(name: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A fake node root holding `files` (node path → contents) and a shim to install (under
/// `image/`, the installer's own container), restarting nothing.
pub fn node_root(files: &[(&str, &str)]) -> Result<(tempfile::TempDir, Options)> {
    let dir = tempfile::tempdir()?;
    for (path, text) in files {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().context("fixture path has a parent")?)?;
        std::fs::write(p, text)?;
    }
    let shim = dir.path().join("image/containerd-shim-wa8s-v1");
    std::fs::create_dir_all(shim.parent().context("shim has a parent")?)?;
    std::fs::write(&shim, b"#!/bin/sh\n# the shim\n")?;
    let mut o = Options::new(dir.path(), shim);
    o.restart = Restart::None;
    Ok((dir, o))
}

/// Every file under the node root but the installer's inputs (`image/`), with contents.
pub fn tree(o: &Options) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push((path.strip_prefix(root)?.to_owned(), std::fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(&o.root, &o.root, &mut out)?;
    out.retain(|(p, _)| !p.starts_with("image"));
    out.sort();
    Ok(out)
}

/// What a real containerd 2.2.9 makes of `config`: its `config dump` (the merged, migrated
/// view), the file written in `dir` for the time of the call.
pub fn containerd_dump_in(dir: &Path, config: &str) -> Result<String> {
    let bins = wa8s_e2e::binaries::ensure(&["containerd"])?;
    let file = dir.join(format!(
        "dump-config-{:?}.toml",
        std::thread::current().id()
    ));
    std::fs::write(&file, config)?;
    let out = Command::new(&bins["containerd"])
        .arg("--config")
        .arg(&file)
        .args(["config", "dump"])
        .output()?;
    std::fs::remove_file(&file)?;
    if !out.status.success() {
        bail!(
            "containerd refused the configuration: {}\n{config}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
