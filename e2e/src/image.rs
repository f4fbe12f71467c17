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

/// One platform's image as registries and OCI layouts hold it: a single gzip layer, the
/// config and the manifest, each addressed by its digest.
pub struct ImageParts {
    /// `os` and `architecture` in OCI's words, e.g. (`linux`, `arm64`).
    pub platform: (String, String),
    /// The gzip tar layer.
    pub layer: Vec<u8>,
    /// The image configuration.
    pub config: Vec<u8>,
    /// The image manifest (names the config and the layer).
    pub manifest: Vec<u8>,
}

/// The media types of what [`ImageParts`] and [`image_index`] write.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// See [`MANIFEST_MEDIA_TYPE`].
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// See [`MANIFEST_MEDIA_TYPE`].
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// See [`MANIFEST_MEDIA_TYPE`].
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

impl std::fmt::Debug for ImageParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageParts")
            .field("platform", &self.platform)
            .field("digest", &self.digest())
            .field("layer_bytes", &self.layer.len())
            .finish()
    }
}

impl ImageParts {
    /// An image for `platform` whose single layer holds `files` (path, contents, mode).
    pub fn build(
        (os, arch): (&str, &str),
        files: &[(&str, &[u8], u32)],
        entrypoint: &[&str],
    ) -> std::io::Result<Self> {
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
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": sha(&config), "size": config.len(),
            },
            "layers": [{
                "mediaType": LAYER_MEDIA_TYPE,
                "digest": sha(&layer), "size": layer.len(),
            }],
        })
        .to_string()
        .into_bytes();
        Ok(Self {
            platform: (os.to_owned(), arch.to_owned()),
            layer,
            config,
            manifest,
        })
    }

    /// The manifest's digest (`sha256:…`): what a reference pinned to this platform names.
    pub fn digest(&self) -> String {
        sha(&self.manifest)
    }

    /// The manifest's descriptor with its platform, as an index lists it.
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": self.digest(), "size": self.manifest.len(),
            "platform": { "architecture": self.platform.1, "os": self.platform.0 },
        })
    }

    /// The blobs (layer, config, manifest), each with its digest.
    pub fn blobs(&self) -> [(String, &[u8]); 3] {
        [
            (sha(&self.layer), &self.layer),
            (sha(&self.config), &self.config),
            (sha(&self.manifest), &self.manifest),
        ]
    }
}

/// An OCI image index over one image per platform (a multi-arch image).
pub fn image_index(images: &[ImageParts]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = images.iter().map(ImageParts::descriptor).collect();
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": manifests,
    })
    .to_string()
    .into_bytes()
}

/// Writes `images` as an OCI image layout directory: every blob, their [`image_index`], and
/// an `index.json` naming that index `tag`. Returns the index's digest.
pub fn write_layout(
    dir: &std::path::Path,
    tag: &str,
    images: &[ImageParts],
) -> std::io::Result<String> {
    let index = image_index(images);
    let blobs_dir = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir)?;
    let mut blobs: Vec<(String, &[u8])> = images.iter().flat_map(ImageParts::blobs).collect();
    blobs.push((sha(&index), &index));
    for (digest, bytes) in blobs {
        std::fs::write(blobs_dir.join(digest.trim_start_matches("sha256:")), bytes)?;
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": INDEX_MEDIA_TYPE,
            "digest": sha(&index), "size": index.len(),
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    std::fs::write(dir.join("index.json"), top.to_string())?;
    Ok(sha(&index))
}

fn image(
    name: &str,
    platform: (&str, &str),
    files: &[(&str, &[u8], u32)],
    entrypoint: &[&str],
) -> std::io::Result<Vec<u8>> {
    let parts = ImageParts::build(platform, files, entrypoint)?;
    let mut descriptor = parts.descriptor();
    descriptor["annotations"] = serde_json::json!({ "io.containerd.image.name": name });
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": [descriptor] })
        .to_string()
        .into_bytes();
    let mut out = tar::Builder::new(Vec::new());
    tar_entry(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar_entry(&mut out, "index.json", &index)?;
    for (digest, blob) in parts.blobs() {
        let hex = digest.trim_start_matches("sha256:");
        tar_entry(&mut out, &format!("blobs/sha256/{hex}"), blob)?;
    }
    out.into_inner()
}

/// Where a platform's shared libraries are read from: this machine's root (`/`), or a
/// directory holding another architecture's Debian packages unpacked (for images of
/// cross-compiled binaries). Paths inside it are the paths the image gets.
#[derive(Debug)]
pub struct Sysroot {
    root: std::path::PathBuf,
    /// Debian's multiarch directory name, e.g. `aarch64-linux-gnu`.
    multiarch: String,
}

impl Sysroot {
    /// This machine's own libraries.
    pub fn host() -> Self {
        Self::new("/", &format!("{}-linux-gnu", std::env::consts::ARCH))
    }

    /// Libraries unpacked under `root` for the Debian multiarch triple `multiarch`.
    pub fn new(root: impl Into<std::path::PathBuf>, multiarch: &str) -> Self {
        Self {
            root: root.into(),
            multiarch: multiarch.to_owned(),
        }
    }

    /// The directory the libraries are read from.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Whether this is the machine's own root (its package database describes the files).
    pub fn is_host(&self) -> bool {
        self.root == std::path::Path::new("/")
    }

    /// The file at image path `path` on this machine, symbolic links followed inside the
    /// sysroot (an absolute link in an unpacked package means the sysroot's path, not ours).
    pub fn host_path(&self, path: &str) -> std::io::Result<std::path::PathBuf> {
        let mut rel = std::path::PathBuf::from(path.trim_start_matches('/'));
        for _ in 0..32 {
            let here = self.root.join(&rel);
            match std::fs::read_link(&here) {
                Ok(target) if target.is_absolute() => {
                    rel = target.strip_prefix("/").unwrap_or(&target).to_path_buf();
                }
                Ok(target) => {
                    let parent = rel.parent().map(|p| p.to_path_buf()).unwrap_or_default();
                    rel = normalize(&parent.join(target));
                }
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => return Ok(here),
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "{path}: too many symbolic links under {}",
            self.root.display()
        )))
    }

    /// The image path of shared library `soname`, searched where Debian's loader looks.
    fn find(&self, soname: &str) -> Option<String> {
        let m = &self.multiarch;
        [
            format!("/lib/{m}"),
            format!("/usr/lib/{m}"),
            "/lib64".to_owned(),
            "/lib".to_owned(),
            "/usr/lib".to_owned(),
        ]
        .into_iter()
        .map(|dir| format!("{dir}/{soname}"))
        .find(|p| self.host_path(p).is_ok_and(|h| h.is_file()))
    }

    /// The shared libraries and the dynamic loader `binary` needs, transitively, as image
    /// paths. A static binary needs none.
    pub fn libraries_of(&self, binary: &std::path::Path) -> std::io::Result<Vec<String>> {
        let (interpreter, mut pending) = elf_dynamic(binary)?;
        let loader_name = interpreter
            .as_deref()
            .and_then(|i| i.rsplit('/').next())
            .map(str::to_owned);
        let mut found: Vec<String> = interpreter.into_iter().collect();
        let mut seen = std::collections::BTreeSet::new();
        while let Some(soname) = pending.pop() {
            // The loader is already mapped by the time libc names it.
            if !seen.insert(soname.clone()) || loader_name.as_deref() == Some(soname.as_str()) {
                continue;
            }
            let path = self.find(&soname).ok_or_else(|| {
                std::io::Error::other(format!(
                    "{}: shared library {soname} is not under {} (lib/{m}, usr/lib/{m}, lib64, lib, usr/lib)",
                    binary.display(),
                    self.root.display(),
                    m = self.multiarch
                ))
            })?;
            pending.extend(elf_dynamic(&self.host_path(&path)?)?.1);
            found.push(path);
        }
        Ok(found)
    }
}

fn normalize(path: &std::path::Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The program interpreter and the `NEEDED` entries of an ELF file of any architecture
/// (binutils' `readelf` reads them all; `ldd` would have to run the file).
fn elf_dynamic(file: &std::path::Path) -> std::io::Result<(Option<String>, Vec<String>)> {
    let out = std::process::Command::new("readelf")
        .args(["-W", "-l", "-d"])
        .arg(file)
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "readelf {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let bracketed = |line: &str, after: &str| {
        line.split_once(after)
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(v, _)| v.trim().to_owned())
    };
    let interpreter = text
        .lines()
        .find_map(|l| bracketed(l, "Requesting program interpreter:"));
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| bracketed(l, "Shared library: ["))
        .collect();
    Ok((interpreter, needed))
}

/// The files of an image of dynamically linked `binaries` (image path, file on this
/// machine): the binaries, the shared libraries `sysroot` has for them at their paths there,
/// and `extra` files. Returns the files and the libraries' image paths.
#[allow(clippy::type_complexity)]
pub fn files_with_shared_libraries(
    sysroot: &Sysroot,
    binaries: &[(&str, &std::path::Path)],
    extra: &[(&str, &[u8], u32)],
) -> std::io::Result<(Vec<(String, Vec<u8>, u32)>, Vec<String>)> {
    let mut files: Vec<(String, Vec<u8>, u32)> = Vec::new();
    let mut libraries = std::collections::BTreeSet::new();
    for (image_path, host_path) in binaries {
        files.push((image_path.to_string(), std::fs::read(host_path)?, 0o755));
        libraries.extend(sysroot.libraries_of(host_path)?);
    }
    for lib in &libraries {
        files.push((lib.clone(), std::fs::read(sysroot.host_path(lib)?)?, 0o755));
    }
    for (path, data, mode) in extra {
        files.push((path.to_string(), data.to_vec(), *mode));
    }
    Ok((files, libraries.into_iter().collect()))
}

/// A Linux image of dynamically linked binaries (image path, file on this machine) with the
/// shared libraries they need, at the same paths, plus `extra` files: the smallest image
/// that runs them without a base image or a Docker engine. The entrypoint is the first
/// binary.
pub fn with_shared_libraries(
    name: &str,
    binaries: &[(&str, &std::path::Path)],
    extra: &[(&str, &[u8], u32)],
) -> std::io::Result<Vec<u8>> {
    let (files, _) = files_with_shared_libraries(&Sysroot::host(), binaries, extra)?;
    let files: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, d, m)| (p.as_str(), d.as_slice(), *m))
        .collect();
    let entrypoint = binaries.first().map(|(p, _)| *p).unwrap_or("/");
    linux(name, &files, &[entrypoint])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_libraries_read_from_the_elf_headers_are_the_ones_ldd_names() {
        let exe = std::env::current_exe().expect("test setup");
        let ours: std::collections::BTreeSet<String> = Sysroot::host()
            .libraries_of(&exe)
            .expect("test setup")
            .into_iter()
            .collect();
        let ldd = std::process::Command::new("ldd")
            .arg(&exe)
            .output()
            .expect("test setup");
        let theirs: std::collections::BTreeSet<String> = String::from_utf8_lossy(&ldd.stdout)
            .lines()
            .filter_map(|l| {
                let p = l
                    .split_once("=>")
                    .map_or(l, |(_, r)| r)
                    .split_whitespace()
                    .next()?;
                p.starts_with('/').then(|| p.to_owned())
            })
            .collect();
        assert!(
            !theirs.is_empty(),
            "ldd named nothing for {}",
            exe.display()
        );
        assert_eq!(ours, theirs);
    }

    #[test]
    fn links_in_an_unpacked_sysroot_resolve_inside_it_relative_or_absolute() {
        let root = tempfile::tempdir().expect("test setup");
        let real = root
            .path()
            .join("lib/aarch64-linux-gnu/ld-linux-aarch64.so.1");
        std::fs::create_dir_all(real.parent().expect("test setup")).expect("test setup");
        std::fs::write(&real, b"loader").expect("test setup");
        std::os::unix::fs::symlink(
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
            root.path().join("lib/ld-linux-aarch64.so.1"),
        )
        .expect("test setup");
        std::fs::create_dir_all(root.path().join("lib64")).expect("test setup");
        std::os::unix::fs::symlink(
            "/lib/ld-linux-aarch64.so.1",
            root.path().join("lib64/ld-linux-aarch64.so.1"),
        )
        .expect("test setup");
        let sysroot = Sysroot::new(root.path(), "aarch64-linux-gnu");
        for path in ["/lib/ld-linux-aarch64.so.1", "/lib64/ld-linux-aarch64.so.1"] {
            assert_eq!(sysroot.host_path(path).expect("test setup"), real, "{path}");
        }
        assert_eq!(
            sysroot.find("ld-linux-aarch64.so.1").as_deref(),
            Some("/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1")
        );
    }

    #[test]
    fn a_layout_holds_one_index_over_every_platform_tagged_with_the_version() {
        let amd = ImageParts::build(("linux", "amd64"), &[("a", b"1", 0o755)], &["/a"])
            .expect("test setup");
        let arm = ImageParts::build(("linux", "arm64"), &[("a", b"2", 0o755)], &["/a"])
            .expect("test setup");
        let dir = tempfile::tempdir().expect("test setup");
        let digest = write_layout(dir.path(), "0.2.0", &[amd, arm]).expect("test setup");
        let top: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("index.json")).expect("test setup"),
        )
        .expect("test setup");
        assert_eq!(top["manifests"][0]["digest"], digest.as_str());
        assert_eq!(
            top["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
            "0.2.0"
        );
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                dir.path()
                    .join("blobs/sha256")
                    .join(digest.trim_start_matches("sha256:")),
            )
            .expect("test setup"),
        )
        .expect("test setup");
        let archs: Vec<&str> = index["manifests"]
            .as_array()
            .expect("test setup")
            .iter()
            .map(|m| m["platform"]["architecture"].as_str().expect("test setup"))
            .collect();
        assert_eq!(archs, ["amd64", "arm64"]);
        // Every blob an index entry names is in the layout.
        for m in index["manifests"].as_array().expect("test setup") {
            let hex = m["digest"]
                .as_str()
                .expect("test setup")
                .trim_start_matches("sha256:");
            assert!(dir.path().join("blobs/sha256").join(hex).is_file());
        }
    }
}
