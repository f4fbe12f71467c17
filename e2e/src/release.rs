//! The release's parts that are not shell (`e2e/scripts/release.sh` calls them through
//! `wa8s-release`): multi-platform image layouts of the wa8s binaries, a CycloneDX SBOM per
//! image and platform (the Rust crates linked in and the Debian libraries copied in, with
//! versions), and pushing a layout to a registry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image::{ImageParts, Sysroot};

/// Errors of building or publishing the release.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `cargo metadata` failed or printed something unexpected.
    #[error("cargo metadata: {0}")]
    Metadata(String),
    /// A library copied into an image belongs to no Debian package this machine knows of:
    /// the SBOM could not say what it is.
    #[error("{path} belongs to no Debian package known here ({how})")]
    UnknownPackage {
        /// The library's path in the image.
        path: String,
        /// Where it was looked up.
        how: String,
    },
    /// The registry refused or failed a request.
    #[error("{doing} {reference}: {source}")]
    Registry {
        /// What was being done (pushing a blob, a manifest, …).
        doing: String,
        /// The reference it was done to.
        reference: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A JSON document (cargo's metadata, a layout's index or manifest) did not parse.
    #[error("{what} is not JSON")]
    Json {
        /// Which document.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The OCI layout to push is not one this tool wrote.
    #[error("{layout}: {problem}")]
    Layout {
        /// The layout directory.
        layout: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A Debian package a copied file came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DebPackage {
    /// The binary package's name, e.g. `libc6`.
    pub name: String,
    /// Its version, e.g. `2.36-9+deb12u14`.
    pub version: String,
    /// Its architecture, e.g. `arm64`.
    pub arch: String,
}

/// The file listing a sysroot's packages (`path<TAB>package<TAB>version<TAB>arch` per line),
/// written by release.sh when it unpacks another architecture's packages.
pub const SYSROOT_PACKAGES: &str = ".wa8s-packages.tsv";

/// The Debian package holding `path` (an image path) in `sysroot`: dpkg's database for this
/// machine's root, the sysroot's [`SYSROOT_PACKAGES`] list otherwise.
pub fn package_of(sysroot: &Sysroot, path: &str) -> Result<DebPackage, Error> {
    if sysroot.is_host() {
        return host_package_of(path);
    }
    let list = sysroot.root().join(SYSROOT_PACKAGES);
    let text =
        std::fs::read_to_string(&list).map_err(io_err(format!("reading {}", list.display())))?;
    // The sysroot's symbolic links are followed the same way for both sides, so a library
    // named through a link (ld-linux-aarch64.so.1) finds the package of the file it names.
    let wanted = sysroot
        .host_path(path)
        .map_err(io_err(format!("resolving {path}")))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?, f.next()?, f.next()?, f.next()?))
        })
        .find(|(p, ..)| *p == path || sysroot.host_path(p).is_ok_and(|h| h == wanted))
        .map(|(_, name, version, arch)| DebPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            arch: arch.to_owned(),
        })
        .ok_or_else(|| Error::UnknownPackage {
            path: path.to_owned(),
            how: list.display().to_string(),
        })
}

fn host_package_of(path: &str) -> Result<DebPackage, Error> {
    let run = |args: &[&str]| -> Result<Option<String>, Error> {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .map_err(io_err(format!("running {}", args.join(" "))))?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    };
    // dpkg knows a file by the path its package ships; with merged /usr that may be the
    // link's target.
    let canonical = std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_owned());
    // A dpkg that does not start is an error; one that knows no owner tries the next path.
    let mut found = None;
    for p in [path, canonical.as_str()] {
        if let Some(line) = run(&["dpkg", "-S", p])? {
            found = Some(line);
            break;
        }
    }
    let owner = found
        .and_then(|line| line.split_once(": ").map(|(pkg, _)| pkg.to_owned()))
        .ok_or_else(|| Error::UnknownPackage {
            path: path.to_owned(),
            how: "dpkg -S".into(),
        })?;
    installed_package(&owner)
}

/// The installed Debian package `name` (e.g. `ca-certificates`, whose bundle the operator's
/// image carries): its version and architecture from dpkg's database.
pub fn installed_package(name: &str) -> Result<DebPackage, Error> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Package}\t${Version}\t${Architecture}", name])
        .output()
        .map_err(io_err(format!("running dpkg-query -W {name}")))?;
    let fields = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut f = fields.split('\t');
    match (out.status.success(), f.next(), f.next(), f.next()) {
        (true, Some(name), Some(version), Some(arch)) if !version.is_empty() => Ok(DebPackage {
            name: name.to_owned(),
            version: version.to_owned(),
            arch: arch.to_owned(),
        }),
        _ => Err(Error::UnknownPackage {
            path: name.to_owned(),
            how: format!("dpkg-query -W {name} printed {fields:?}"),
        }),
    }
}

/// A crate linked into a binary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    /// Its name on crates.io (or in this workspace).
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its SPDX license expression, when it declares one.
    pub license: Option<String>,
    /// Where it came from: `registry+https://…` for crates.io, `None` for a path (this
    /// workspace, or a patched copy under third_party/).
    pub source: Option<String>,
}

/// The crates linked into the binaries of packages `roots` when built for `triple`: their
/// normal dependencies, transitively, from `cargo metadata` (the lock file's versions).
/// Build scripts' and proc-macros' own dependencies run at build time only and are left out.
/// Features are those of a whole-workspace build, so a crate may be listed that one binary
/// does not link; never the other way round.
pub fn crates(workspace: &Path, triple: &str, roots: &[&str]) -> Result<Vec<Crate>, Error> {
    let out = std::process::Command::new("cargo")
        .current_dir(workspace)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            triple,
        ])
        .output()
        .map_err(io_err("running cargo metadata"))?;
    if !out.status.success() {
        return Err(Error::Metadata(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|source| Error::Json {
            what: "cargo metadata's output".into(),
            source,
        })?;
    crates_from_metadata(&meta, roots)
}

fn crates_from_metadata(meta: &serde_json::Value, roots: &[&str]) -> Result<Vec<Crate>, Error> {
    let missing = |what: &str| Error::Metadata(format!("no {what} in its output"));
    let packages: BTreeMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .ok_or_else(|| missing("packages"))?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: BTreeMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .ok_or_else(|| missing("resolve.nodes"))?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .ok_or_else(|| missing("workspace_members"))?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut queue: VecDeque<&str> = VecDeque::new();
    for root in roots {
        let id = members
            .iter()
            .find(|id| packages.get(*id).and_then(|p| p["name"].as_str()) == Some(*root))
            .ok_or_else(|| Error::Metadata(format!("{root} is not a workspace member")))?;
        queue.push_back(id);
    }
    let is_proc_macro = |p: &serde_json::Value| {
        p["targets"].as_array().is_some_and(|ts| {
            ts.iter().any(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "proc-macro"))
            })
        })
    };
    let mut seen = BTreeSet::new();
    let mut out = BTreeSet::new();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id) {
            continue;
        }
        let package = packages.get(id).ok_or_else(|| missing(id))?;
        if is_proc_macro(package) {
            continue;
        }
        out.insert(Crate {
            name: package["name"]
                .as_str()
                .ok_or_else(|| missing(&format!("name for {id}")))?
                .to_owned(),
            version: package["version"]
                .as_str()
                .ok_or_else(|| missing(&format!("version for {id}")))?
                .to_owned(),
            license: package["license"].as_str().map(str::to_owned),
            source: package["source"].as_str().map(str::to_owned),
        });
        let deps = nodes
            .get(id)
            .and_then(|n| n["deps"].as_array())
            .into_iter()
            .flatten();
        for dep in deps {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()));
            if let (true, Some(pkg)) = (normal, dep["pkg"].as_str()) {
                queue.push_back(pkg);
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// What an SBOM describes: one image for one platform.
#[derive(Debug)]
pub struct SbomSubject<'a> {
    /// The image's repository, e.g. `ghcr.io/reconcilerio/wa8s-operator`.
    pub image: &'a str,
    /// The release version.
    pub version: &'a str,
    /// `linux/arm64`, …
    pub platform: &'a str,
    /// The image manifest's digest for that platform.
    pub digest: &'a str,
    /// When the release's sources were committed (RFC 3339): the SBOM is then the same
    /// bytes for the same sources.
    pub timestamp: &'a str,
}

/// A CycloneDX 1.5 SBOM of an image: the crates linked into its binaries and the Debian
/// packages its shared libraries were copied from (one component per library file, so the
/// file is named too).
pub fn cyclonedx(
    subject: &SbomSubject<'_>,
    crates: &[Crate],
    libraries: &[(String, DebPackage)],
) -> serde_json::Value {
    let mut components: Vec<serde_json::Value> = crates
        .iter()
        .map(|c| {
            let purl = format!("pkg:cargo/{}@{}", c.name, c.version);
            let mut v = serde_json::json!({
                "type": "library",
                "bom-ref": purl,
                "name": c.name,
                "version": c.version,
                "purl": purl,
            });
            if let Some(license) = &c.license {
                v["licenses"] = serde_json::json!([{ "expression": license }]);
            }
            if c.source.is_none() {
                // Built from this repository (a workspace crate, or a patched copy of a
                // crates.io crate under third_party/): the purl's version alone would claim
                // crates.io's bytes.
                v["properties"] = serde_json::json!([
                    { "name": "wa8s:source", "value": "this repository" }
                ]);
            }
            v
        })
        .collect();
    let mut packages: BTreeMap<&DebPackage, Vec<&str>> = BTreeMap::new();
    for (path, package) in libraries {
        packages.entry(package).or_default().push(path);
    }
    for (p, paths) in packages {
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}&distro=debian-12",
            p.name,
            p.version.replace('+', "%2B").replace(':', "%3A"),
            p.arch
        );
        let files: Vec<serde_json::Value> = paths
            .iter()
            .map(|f| serde_json::json!({ "name": "wa8s:file", "value": f }))
            .collect();
        components.push(serde_json::json!({
            "type": "library",
            "bom-ref": purl,
            "name": p.name,
            "version": p.version,
            "purl": purl,
            "properties": files,
        }));
    }
    let image_purl = format!(
        "pkg:oci/{}@{}?repository_url={}",
        subject.image.rsplit('/').next().unwrap_or(subject.image),
        subject.digest.replace(':', "%3A"),
        subject.image
    );
    let mut doc = serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "timestamp": subject.timestamp,
            "tools": { "components": [{
                "type": "application",
                "name": "wa8s-release",
                "version": env!("CARGO_PKG_VERSION"),
            }]},
            "component": {
                "type": "container",
                "bom-ref": image_purl,
                "name": subject.image,
                "version": subject.version,
                "purl": image_purl,
                "properties": [{ "name": "oci:platform", "value": subject.platform }],
            },
        },
        "components": components,
    });
    // The same document gets the same serial number: derived from its content.
    let hash = Sha256::digest(doc.to_string().as_bytes());
    let h = format!("{hash:x}");
    doc["serialNumber"] = serde_json::Value::String(format!(
        "urn:uuid:{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    ));
    doc
}

/// Credentials for pushing: `WA8S_RELEASE_REGISTRY_USER` and `WA8S_RELEASE_REGISTRY_PASSWORD`
/// (a forge's token), else anonymous (a local registry).
fn auth_from_env() -> oci_client::secrets::RegistryAuth {
    match (
        std::env::var("WA8S_RELEASE_REGISTRY_USER"),
        std::env::var("WA8S_RELEASE_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) if !user.is_empty() => {
            oci_client::secrets::RegistryAuth::Basic(user, password)
        }
        _ => oci_client::secrets::RegistryAuth::Anonymous,
    }
}

/// What [`push_layout`] pushed.
#[derive(Debug)]
pub struct Pushed {
    /// The image index's digest (what the chart pins).
    pub digest: String,
    /// Each platform (`linux/arm64`) and its manifest's digest.
    pub platforms: Vec<(String, String)>,
}

/// Pushes the OCI image layout `layout` (written by [`crate::image::write_layout`]: one
/// image index tagged in `index.json`) to `repository` (e.g. `ghcr.io/reconcilerio/wa8s-operator`)
/// under `tag`: every blob, each platform's manifest by digest, then the index under the tag,
/// so the tag never names something incomplete. `plain_http` only for a local registry.
pub fn push_layout(
    layout: &Path,
    repository: &str,
    tag: &str,
    plain_http: bool,
) -> Result<Pushed, Error> {
    let layout_err = |problem: String| Error::Layout {
        layout: layout.display().to_string(),
        problem,
    };
    let read = |p: PathBuf| std::fs::read(&p).map_err(io_err(format!("reading {}", p.display())));
    let json = |what: String, bytes: &[u8]| -> Result<serde_json::Value, Error> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: format!("{}: {what}", layout.display()),
            source,
        })
    };
    let top = json("index.json".into(), &read(layout.join("index.json"))?)?;
    let blob = |digest: &str| {
        read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
    };
    let index_digest = top["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| layout_err("index.json names no image index".into()))?
        .to_owned();
    let index_bytes = blob(&index_digest)?;
    let index = json("the image index".into(), &index_bytes)?;
    let mut platforms = Vec::new();
    let mut manifests = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let digest = m["digest"]
            .as_str()
            .ok_or_else(|| layout_err("an index entry without a digest".into()))?;
        let bytes = blob(digest)?;
        let manifest = json(format!("manifest {digest}"), &bytes)?;
        let mut blobs = vec![
            manifest["config"]["digest"]
                .as_str()
                .ok_or_else(|| layout_err(format!("manifest {digest} has no config digest")))?
                .to_owned(),
        ];
        blobs.extend(
            manifest["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["digest"].as_str().map(str::to_owned)),
        );
        platforms.push((
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or_default(),
                m["platform"]["architecture"].as_str().unwrap_or_default()
            ),
            digest.to_owned(),
        ));
        manifests.push((digest.to_owned(), bytes, blobs));
    }
    if manifests.is_empty() {
        return Err(layout_err("the image index lists no manifests".into()));
    }

    // Whatever reqwest's TLS needs; the default provider is this build's (aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting a runtime"))?;
    let registry = repository.split('/').next().unwrap_or_default().to_owned();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: if plain_http {
            oci_client::client::ClientProtocol::HttpsExcept(vec![registry])
        } else {
            oci_client::client::ClientProtocol::Https
        },
        user_agent: concat!("wa8s-release/", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    });
    let auth = auth_from_env();
    let reference = |r: String| -> Result<oci_client::Reference, Error> {
        r.parse()
            .map_err(|e: oci_client::ParseError| Error::Registry {
                doing: "parsing".into(),
                reference: r.clone(),
                source: Box::new(e),
            })
    };
    let tagged = reference(format!("{repository}:{tag}"))?;
    let registry_err = |doing: &str, r: &oci_client::Reference| {
        let (doing, reference) = (doing.to_owned(), r.whole());
        move |e: oci_client::errors::OciDistributionError| Error::Registry {
            doing,
            reference,
            source: Box::new(e),
        }
    };
    runtime.block_on(async {
        client
            .auth(&tagged, &auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(registry_err("logging in to", &tagged))?;
        for (digest, bytes, blobs) in &manifests {
            for b in blobs {
                let data = blob(b)?;
                client
                    .push_blob(&tagged, data, b)
                    .await
                    .map_err(registry_err(&format!("pushing blob {b} to"), &tagged))?;
            }
            let by_digest = reference(format!("{repository}@{digest}"))?;
            client
                .push_manifest_raw(
                    &by_digest,
                    bytes.clone(),
                    http::HeaderValue::from_static(crate::image::MANIFEST_MEDIA_TYPE),
                )
                .await
                .map_err(registry_err("pushing the manifest", &by_digest))?;
        }
        client
            .push_manifest_raw(
                &tagged,
                index_bytes,
                http::HeaderValue::from_static(crate::image::INDEX_MEDIA_TYPE),
            )
            .await
            .map_err(registry_err("pushing the image index", &tagged))?;
        Ok::<_, Error>(())
    })?;
    Ok(Pushed {
        digest: index_digest,
        platforms,
    })
}

/// The parts of one image of the release for one platform, and its SBOM's inputs.
#[derive(Debug)]
pub struct PlatformImage {
    /// The image.
    pub parts: ImageParts,
    /// The copied libraries and their packages.
    pub libraries: Vec<(String, DebPackage)>,
}

/// Builds one platform's image of `binaries` (image path, file) plus `extra` files, reading
/// shared libraries from `sysroot`, and names each library's package.
pub fn platform_image(
    platform: (&str, &str),
    sysroot: &Sysroot,
    binaries: &[(&str, &Path)],
    extra: &[(&str, &[u8], u32)],
) -> Result<PlatformImage, Error> {
    let (files, libraries) = crate::image::files_with_shared_libraries(sysroot, binaries, extra)
        .map_err(io_err(format!(
            "collecting the files of a {}/{} image",
            platform.0, platform.1
        )))?;
    let files: Vec<(&str, &[u8], u32)> = files
        .iter()
        .map(|(p, d, m)| (p.as_str(), d.as_slice(), *m))
        .collect();
    let entrypoint = binaries.first().map(|(p, _)| *p).unwrap_or("/");
    let parts = ImageParts::build(platform, &files, &[entrypoint])
        .map_err(io_err("writing the image's layer"))?;
    let libraries = libraries
        .into_iter()
        .map(|l| Ok((l.clone(), package_of(sysroot, &l)?)))
        .collect::<Result<_, Error>>()?;
    Ok(PlatformImage { parts, libraries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> serde_json::Value {
        serde_json::json!({
            "workspace_members": ["path+file:///w/app#0.2.0"],
            "packages": [
                {"id": "path+file:///w/app#0.2.0", "name": "app", "version": "0.2.0",
                 "license": "Apache-2.0", "source": null, "targets": [{"kind": ["bin"]}]},
                {"id": "registry+x#serde@1.0.0", "name": "serde", "version": "1.0.0",
                 "license": "MIT OR Apache-2.0", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
                {"id": "registry+x#derive@1.0.0", "name": "derive", "version": "1.0.0",
                 "license": "MIT", "source": "registry+x", "targets": [{"kind": ["proc-macro"]}]},
                {"id": "registry+x#syn@2.0.0", "name": "syn", "version": "2.0.0",
                 "license": "MIT", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
                {"id": "registry+x#cc@1.0.0", "name": "cc", "version": "1.0.0",
                 "license": "MIT", "source": "registry+x", "targets": [{"kind": ["lib"]}]},
                {"id": "registry+x#proptest@1.0.0", "name": "proptest", "version": "1.0.0",
                 "license": "MIT", "source": "registry+x", "targets": [{"kind": ["lib"]}]}
            ],
            "resolve": {"nodes": [
                {"id": "path+file:///w/app#0.2.0", "deps": [
                    {"pkg": "registry+x#serde@1.0.0", "dep_kinds": [{"kind": null}]},
                    {"pkg": "registry+x#derive@1.0.0", "dep_kinds": [{"kind": null}]},
                    {"pkg": "registry+x#cc@1.0.0", "dep_kinds": [{"kind": "build"}]},
                    {"pkg": "registry+x#proptest@1.0.0", "dep_kinds": [{"kind": "dev"}]}
                ]},
                {"id": "registry+x#derive@1.0.0", "deps": [
                    {"pkg": "registry+x#syn@2.0.0", "dep_kinds": [{"kind": null}]}
                ]},
                {"id": "registry+x#serde@1.0.0", "deps": []}
            ]}
        })
    }

    #[test]
    fn the_sbom_lists_linked_crates_but_not_build_dev_or_proc_macro_ones() {
        let names: Vec<String> = crates_from_metadata(&metadata(), &["app"])
            .expect("test setup")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["app", "serde"]);
    }

    #[test]
    fn a_root_that_is_not_a_workspace_member_is_an_error_naming_it() {
        let err = crates_from_metadata(&metadata(), &["nope"]).expect_err("an error");
        assert!(
            err.to_string().contains("nope is not a workspace member"),
            "{err}"
        );
    }

    #[test]
    fn the_sbom_names_each_library_file_and_its_debian_package_with_an_escaped_purl() {
        let libc = DebPackage {
            name: "libc6".into(),
            version: "2.36-9+deb12u14".into(),
            arch: "arm64".into(),
        };
        let doc = cyclonedx(
            &SbomSubject {
                image: "ghcr.io/reconcilerio/wa8s-operator",
                version: "0.2.0",
                platform: "linux/arm64",
                digest: "sha256:ab",
                timestamp: "2026-12-07T00:00:00Z",
            },
            &crates_from_metadata(&metadata(), &["app"]).expect("test setup"),
            &[
                ("/lib/aarch64-linux-gnu/libc.so.6".into(), libc.clone()),
                ("/lib/ld-linux-aarch64.so.1".into(), libc),
            ],
        );
        let components = doc["components"].as_array().expect("test setup");
        let libc = components
            .iter()
            .find(|c| c["name"] == "libc6")
            .expect("test setup");
        assert_eq!(
            libc["purl"],
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=arm64&distro=debian-12"
        );
        assert_eq!(libc["properties"].as_array().expect("test setup").len(), 2);
        let serde = components
            .iter()
            .find(|c| c["name"] == "serde")
            .expect("test setup");
        assert_eq!(serde["purl"], "pkg:cargo/serde@1.0.0");
        assert_eq!(
            doc["metadata"]["component"]["properties"][0]["value"],
            "linux/arm64"
        );
        assert!(
            doc["serialNumber"]
                .as_str()
                .expect("test setup")
                .starts_with("urn:uuid:")
        );
    }
}
