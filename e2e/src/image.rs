//! OCI image layout tarballs (what `ctr image import` and registries take), written without a
//! Docker engine: a "layered" wasm image whose `.wasm` sits in a gzip tar layer, or a small
//! Linux image (the pod sandbox's pause image).

use std::io::Write;

use sha2::{Digest, Sha256};

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

fn tar_entry(out: &mut tar::Builder<impl Write>, path: &str, data: &[u8]) -> std::io::Result<()> {
    tar_entry_mode(out, path, data, 0o644)
}

fn tar_entry_mode(
    out: &mut tar::Builder<impl Write>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_cksum();
    out.append_data(&mut header, path, data)
}

/// An image named `name` (e.g. `docker.io/wa8s/hello:latest`) for platform `os`/`wasm`
/// whose single layer holds `files` and whose entrypoint is `entrypoint`.
pub fn layered(
    name: &str,
    os: &str,
    files: &[(&str, &[u8])],
    entrypoint: &[&str],
) -> std::io::Result<Vec<u8>> {
    let files: Vec<(&str, &[u8], u32)> = files.iter().map(|(p, d)| (*p, *d, 0o644)).collect();
    image(name, (os, "wasm"), &files, entrypoint)
}

/// A Linux image for this machine's architecture whose single layer holds `files` (path,
/// contents, mode), e.g. a static binary as the pod sandbox's pause image.
pub fn linux(
    name: &str,
    files: &[(&str, &[u8], u32)],
    entrypoint: &[&str],
) -> std::io::Result<Vec<u8>> {
    image(name, ("linux", oci_arch()), files, entrypoint)
}

/// This machine's architecture in OCI's words (`amd64`, `arm64`).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The platform [`linux`] images are for, as `ctr image import --platform` takes it.
pub fn linux_platform() -> String {
    format!("linux/{}", oci_arch())
}

/// The container twin of the hello wasm component, as a Linux image named `name`: the static
/// C HTTP server `e2e/bench/hello-server.c`, compiled here with `gcc -static`. Benchmarks
/// run it under runc beside the component.
pub fn hello_server(name: &str) -> std::io::Result<Vec<u8>> {
    let work = tempfile::tempdir()?;
    let binary = work.path().join("hello-server");
    let source = crate::paths::repo_root().join("e2e/bench/hello-server.c");
    let out = std::process::Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&binary)
        .arg(&source)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "gcc {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let bytes = std::fs::read(&binary)?;
    linux(name, &[("hello-server", &bytes, 0o755)], &["/hello-server"])
}

fn image(
    name: &str,
    (os, arch): (&str, &str),
    files: &[(&str, &[u8], u32)],
    entrypoint: &[&str],
) -> std::io::Result<Vec<u8>> {
    let mut layer_tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        tar_entry_mode(&mut layer_tar, path.trim_start_matches('/'), data, *mode)?;
    }
    let layer_tar = layer_tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer_tar)?;
    let layer = gz.finish()?;
    let config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [sha(&layer_tar)] },
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(&config), "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha(&layer), "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha(&manifest), "size": manifest.len(),
            "platform": { "architecture": arch, "os": os },
            "annotations": { "io.containerd.image.name": name },
        }],
    })
    .to_string()
    .into_bytes();
    let mut out = tar::Builder::new(Vec::new());
    tar_entry(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar_entry(&mut out, "index.json", &index)?;
    for blob in [&layer, &config, &manifest] {
        let hex = sha(blob).trim_start_matches("sha256:").to_owned();
        tar_entry(&mut out, &format!("blobs/sha256/{hex}"), blob)?;
    }
    out.into_inner()
}

/// A Linux image of dynamically linked binaries (image path, file on this machine) with the
/// shared libraries `ldd` names for them, at the same paths, plus `extra` files: the smallest
/// image that runs them without a base image or a Docker engine. The entrypoint is the first
/// binary.
pub fn with_shared_libraries(
    name: &str,
    binaries: &[(&str, &std::path::Path)],
    extra: &[(&str, &[u8], u32)],
) -> std::io::Result<Vec<u8>> {
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut libraries = std::collections::BTreeSet::new();
    for (image_path, host_path) in binaries {
        files.push((image_path.to_string(), std::fs::read(host_path)?, 0o755));
        libraries.extend(shared_libraries(host_path)?);
    }
    for lib in libraries {
        files.push((lib.clone(), std::fs::read(&lib)?, 0o755));
    }
    for (path, data, mode) in extra {
        files.push((path.to_string(), data.to_vec(), *mode));
    }
    let files: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, d, m)| (p.as_str(), d.as_slice(), *m))
        .collect();
    let entrypoint = binaries.first().map(|(p, _)| *p).unwrap_or("/");
    linux(name, &files, &[entrypoint])
}

/// The shared libraries (and the dynamic loader) `binary` needs, by absolute path.
fn shared_libraries(binary: &std::path::Path) -> std::io::Result<Vec<String>> {
    let out = std::process::Command::new("ldd").arg(binary).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary needs nothing.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(p.to_owned()),
            Some("not") => {
                return Err(std::io::Error::other(format!(
                    "{}: a shared library is missing: {line}",
                    binary.display()
                )));
            }
            _ => {} // linux-vdso.so.1: provided by the kernel
        }
    }
    Ok(libs)
}

/// The wa8s image tarballs `e2e/scripts/images.sh` writes to `target/images/` (operator,
/// node installer), or an error saying how to build them.
pub fn wa8s_tarballs() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let dir = crate::paths::repo_root().join("target/images");
    let tarballs: Vec<std::path::PathBuf> = ["wa8s-operator.tar", "wa8s-node-installer.tar"]
        .iter()
        .map(|n| dir.join(n))
        .collect();
    for t in &tarballs {
        anyhow::ensure!(
            t.is_file(),
            "{} is missing: build the images first (e2e/scripts/images.sh; the test script does)",
            t.display()
        );
    }
    Ok(tarballs)
}
