//! `wa8s-release` — the release's image steps, called by `e2e/scripts/release.sh`:
//!
//! - `wa8s-release images --version V --out DIR --repository-prefix PREFIX
//!   --platform linux/amd64=BIN_DIR [--platform linux/arm64=BIN_DIR:SYSROOT]…` writes each
//!   wa8s image as a multi-platform OCI image layout (`DIR/images/<name>/`) and a CycloneDX
//!   SBOM per image and platform (`DIR/sbom/<name>_linux_<arch>.cdx.json`).
//! - `wa8s-release push DIR --repository-prefix PREFIX --tag V [--plain-http]` pushes every
//!   layout under `DIR/images` to `PREFIX/<name>:V` and prints one line per image:
//!   `<name> <repository>@<index digest> linux/amd64=<digest> linux/arm64=<digest>`.
//!
//! Credentials for `push`: `WA8S_RELEASE_REGISTRY_USER` and `WA8S_RELEASE_REGISTRY_PASSWORD`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use wa8s_e2e::image::{Sysroot, write_layout};
use wa8s_e2e::release::{self, SbomSubject};

const USAGE: &str = "usage:
  wa8s-release images --version V --out DIR --repository-prefix PREFIX --platform linux/ARCH=BIN_DIR[:SYSROOT]...
  wa8s-release push DIR --repository-prefix PREFIX --tag V [--plain-http]";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An image of the release: its name, the binaries in it as (image path, binary name), and
/// the packages whose crates its SBOM lists.
type ImageSpec = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
);

/// One platform to build for: its binaries and where its shared libraries come from.
struct Platform {
    arch: String,
    bin_dir: PathBuf,
    sysroot: Sysroot,
    /// Rust's target triple (what `cargo metadata --filter-platform` takes).
    triple: &'static str,
}

fn parse_platform(arg: &str) -> anyhow::Result<Platform> {
    let (platform, dirs) = arg
        .split_once('=')
        .with_context(|| format!("--platform {arg:?}: expected linux/ARCH=BIN_DIR[:SYSROOT]"))?;
    let (arch, triple, multiarch) = match platform {
        "linux/amd64" => ("amd64", "x86_64-unknown-linux-gnu", "x86_64-linux-gnu"),
        "linux/arm64" => ("arm64", "aarch64-unknown-linux-gnu", "aarch64-linux-gnu"),
        other => bail!("--platform {other}: only linux/amd64 and linux/arm64 are released"),
    };
    let (bin_dir, sysroot) = match dirs.split_once(':') {
        Some((bin, root)) => (bin, Sysroot::new(root, multiarch)),
        None => (dirs, Sysroot::host()),
    };
    Ok(Platform {
        arch: arch.into(),
        bin_dir: bin_dir.into(),
        sysroot,
        triple,
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().context(USAGE)?;
    let mut version = None;
    let mut out = None;
    let mut prefix = None;
    let mut platforms = Vec::new();
    let mut tag = None;
    let mut plain_http = false;
    let mut positional = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--version" => version = Some(args.next().context(USAGE)?),
            "--out" => out = Some(PathBuf::from(args.next().context(USAGE)?)),
            "--repository-prefix" => prefix = Some(args.next().context(USAGE)?),
            "--platform" => platforms.push(parse_platform(&args.next().context(USAGE)?)?),
            "--tag" => tag = Some(args.next().context(USAGE)?),
            "--plain-http" => plain_http = true,
            other if !other.starts_with('-') && positional.is_none() => {
                positional = Some(PathBuf::from(other))
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let prefix = prefix.context(USAGE)?;
    match command.as_str() {
        "images" => images(
            &version.context(USAGE)?,
            &out.context(USAGE)?,
            &prefix,
            &platforms,
        ),
        "push" => push(
            &positional.context(USAGE)?,
            &prefix,
            &tag.context(USAGE)?,
            plain_http,
        ),
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// The commit time of the sources (SOURCE_DATE_EPOCH, which release.sh sets from git), as
/// RFC 3339: the SBOMs are then the same bytes for the same sources.
fn timestamp() -> anyhow::Result<String> {
    let epoch: i64 = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let t = time::OffsetDateTime::from_unix_timestamp(epoch)?;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}

fn images(version: &str, out: &Path, prefix: &str, platforms: &[Platform]) -> anyhow::Result<()> {
    if platforms.is_empty() {
        bail!("no --platform given\n{USAGE}");
    }
    let root = wa8s_e2e::repo_root();
    let ca = std::fs::read(CA_BUNDLE)
        .with_context(|| format!("reading {CA_BUNDLE} (Debian's ca-certificates)"))?;
    let ca_package = release::installed_package("ca-certificates")?;
    let timestamp = timestamp()?;
    std::fs::create_dir_all(out.join("sbom"))?;
    let images: [ImageSpec; 2] = [
        (
            "wa8s-operator",
            &[("/wa8s-operator", "wa8s-operator")],
            &["wa8s-operator"],
        ),
        (
            // The shim sits next to the installer, where the installer looks for it.
            "wa8s-node-installer",
            &[
                ("/wa8s-node-installer", "wa8s-node-installer"),
                ("/containerd-shim-wa8s-v1", "containerd-shim-wa8s-v1"),
            ],
            &["wa8s-installer", "wa8s-shim"],
        ),
    ];
    for (name, binaries, packages) in images {
        let repository = format!("{prefix}/{name}");
        let mut parts = Vec::new();
        for p in platforms {
            let paths: Vec<(&str, PathBuf)> = binaries
                .iter()
                .map(|(image_path, bin)| (*image_path, p.bin_dir.join(bin)))
                .collect();
            for (_, path) in &paths {
                if !path.is_file() {
                    bail!(
                        "{} is missing: build linux/{}'s binaries first (e2e/scripts/release.sh does)",
                        path.display(),
                        p.arch
                    );
                }
            }
            let paths: Vec<(&str, &Path)> = paths.iter().map(|(i, h)| (*i, h.as_path())).collect();
            let extra: Vec<(&str, &[u8], u32)> = if name == "wa8s-operator" {
                vec![(CA_BUNDLE, ca.as_slice(), 0o644)]
            } else {
                Vec::new()
            };
            let image = release::platform_image(("linux", &p.arch), &p.sysroot, &paths, &extra)?;
            let mut libraries = image.libraries.clone();
            if name == "wa8s-operator" {
                libraries.push((CA_BUNDLE.to_owned(), ca_package.clone()));
            }
            let crates = release::crates(&root, p.triple, packages)?;
            let platform = format!("linux/{}", p.arch);
            let digest = image.parts.digest();
            let sbom = release::cyclonedx(
                &SbomSubject {
                    image: &repository,
                    version,
                    platform: &platform,
                    digest: &digest,
                    timestamp: &timestamp,
                },
                &crates,
                &libraries,
            );
            let sbom_path = out.join(format!("sbom/{name}_linux_{}.cdx.json", p.arch));
            std::fs::write(&sbom_path, serde_json::to_vec_pretty(&sbom)?)
                .with_context(|| format!("writing {}", sbom_path.display()))?;
            println!(
                "{name} {platform} {digest} ({:.1} MiB, {} crates, {} Debian files) sbom={}",
                image.parts.layer.len() as f64 / (1024.0 * 1024.0),
                crates.len(),
                libraries.len(),
                sbom_path.display()
            );
            parts.push(image.parts);
        }
        let layout = out.join("images").join(name);
        // A layout from an earlier run would keep blobs nothing names any more.
        let _ = std::fs::remove_dir_all(&layout);
        let digest = write_layout(&layout, version, &parts)
            .with_context(|| format!("writing {}", layout.display()))?;
        println!("{name} index {digest} layout={}", layout.display());
    }
    Ok(())
}

fn push(dir: &Path, prefix: &str, tag: &str, plain_http: bool) -> anyhow::Result<()> {
    let images = dir.join("images");
    let mut names: Vec<String> = std::fs::read_dir(&images)
        .with_context(|| {
            format!(
                "reading {} (run `wa8s-release images` first)",
                images.display()
            )
        })?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("index.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{} holds no image layouts", images.display());
    }
    for name in names {
        let repository = format!("{prefix}/{name}");
        let pushed = release::push_layout(&images.join(&name), &repository, tag, plain_http)?;
        let platforms: Vec<String> = pushed
            .platforms
            .iter()
            .map(|(p, d)| format!("{p}={d}"))
            .collect();
        println!(
            "{name} {repository}@{} {}",
            pushed.digest,
            platforms.join(" ")
        );
    }
    Ok(())
}
