//! `wa8s push`, `wa8s pull`, `wa8s inspect` and `wa8s manifest`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use wa8s_host::{HostEngine, PrecompileCache, Program};
use wa8s_oci::artifact::{self, WasmInfo};
use wa8s_oci::{
    BlobCache, Credentials, DockerConfigSource, Registry, RegistryConfig, RegistryOptions,
};

/// How to reach registries (shared by push, pull and inspect).
#[derive(clap::Args, Debug)]
pub struct RegistryArgs {
    /// Speak plain HTTP to this registry (host[:port]); loopback registries are too, unless
    /// given a CA with --registry-ca.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Speak TLS to REGISTRY and trust the CA certificates in FILE (PEM) for it, besides the
    /// system's roots, e.g. 127.0.0.1:5443=./ca.crt.
    #[arg(long = "registry-ca", value_name = "REGISTRY=FILE")]
    registry_ca: Vec<String>,
    /// Pull from MIRROR whenever a reference names REGISTRY, e.g. ghcr.io=127.0.0.1:5000.
    #[arg(long = "mirror", value_name = "REGISTRY=MIRROR")]
    mirrors: Vec<String>,
    /// Registry user name (else the docker config's credentials, else anonymous).
    #[arg(long, env = "WA8S_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Registry password or token (with --username).
    #[arg(long, env = "WA8S_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A docker config.json to read credentials from (default: $DOCKER_CONFIG/config.json,
    /// then ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
}

impl RegistryArgs {
    fn registry(&self) -> Result<Registry> {
        let explicit = match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => bail!("--username and --password go together"),
        };
        // The CLI's policy stays open: the person typing the reference is the one at risk.
        let mut config = RegistryConfig {
            insecure: self.insecure.clone(),
            ..RegistryConfig::default()
        };
        for m in &self.mirrors {
            config.add_mirror_setting(m)?;
        }
        for c in &self.registry_ca {
            config.add_ca_setting(c)?;
        }
        Ok(Registry::new(RegistryOptions {
            credentials: Credentials {
                explicit,
                pull_secrets: Vec::new(),
                docker_config: match &self.docker_config {
                    Some(p) => DockerConfigSource::File(p.clone()),
                    None => DockerConfigSource::Default,
                },
            },
            config,
        }))
    }
}

/// How a command prints its result on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// For people (and, for push and pull, just the digest).
    #[default]
    Text,
    /// One JSON document.
    Json,
    /// YAML (`wa8s manifest` only; others print JSON).
    Yaml,
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// The component or preview1 module.
    file: PathBuf,
    /// Where to push it, e.g. ghcr.io/myorg/app:v1.
    reference: String,
    /// A manifest annotation, e.g. org.opencontainers.image.description=… Repeatable.
    /// `source` and `revision` are filled from a forge's CI variables (GITHUB_SERVER_URL,
    /// GITHUB_REPOSITORY, GITHUB_SHA), `created` from SOURCE_DATE_EPOCH, else the time of
    /// the push.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    /// text (the digest) or json.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    /// No progress line (there is none anyway when standard error is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// The standard OCI annotations a push fills in from its environment, then the user's.
fn annotations(given: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    const SOURCE: &str = "org.opencontainers.image.source";
    const REVISION: &str = "org.opencontainers.image.revision";
    const CREATED: &str = "org.opencontainers.image.created";
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut out = std::collections::BTreeMap::new();
    if let (Some(server), Some(repo)) = (env("GITHUB_SERVER_URL"), env("GITHUB_REPOSITORY")) {
        out.insert(SOURCE.to_owned(), format!("{server}/{repo}"));
    }
    if let Some(sha) = env("GITHUB_SHA") {
        out.insert(REVISION.to_owned(), sha);
    }
    // Reproducible builds name their time in SOURCE_DATE_EPOCH; else now.
    let seconds = match env("SOURCE_DATE_EPOCH") {
        Some(epoch) => epoch
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not a number of seconds"))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    };
    let created = time_rfc3339(seconds)
        .with_context(|| format!("{seconds} seconds since 1970 is out of range"))?;
    out.insert(CREATED.to_owned(), created);
    for a in given {
        let (k, v) = a
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--annotation {a:?}: expected KEY=VALUE"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// `seconds` since the epoch as RFC 3339 UTC (`2026-12-07T10:00:00Z`).
fn time_rfc3339(seconds: i64) -> Option<String> {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// What to pull, e.g. ghcr.io/myorg/app:v1 or ghcr.io/myorg/app@sha256:….
    reference: String,
    /// Where to write the binary (default: the repository's last segment + .wasm).
    #[arg(short = 'o', long = "to", value_name = "FILE")]
    to: Option<PathBuf>,
    /// text (the digest) or json.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    /// Go through this blob cache directory (as the node does).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// No progress line (there is none anyway when standard error is not a terminal).
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// A reference in a registry, or a local .wasm file.
    target: String,
    /// Print JSON instead of text (the same as --output json).
    #[arg(long)]
    json: bool,
    /// text or json.
    #[arg(long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub struct ManifestArgs {
    /// A pushed component, e.g. ghcr.io/myorg/app:v1.
    reference: String,
    /// The object's name (default: the repository's last segment).
    #[arg(long)]
    name: Option<String>,
    /// yaml, or json.
    #[arg(long, value_enum, default_value = "yaml")]
    output: Output,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Whether a `run` argument that is not an existing file names a registry reference
/// (`registry/repo[:tag][@digest]`), rather than a mistyped path.
pub fn looks_like_reference(arg: &Path) -> bool {
    let text = arg.to_string_lossy();
    let first = text.split('/').next().unwrap_or("");
    text.contains('/')
        && !text.starts_with(['.', '/', '~'])
        && !text.ends_with(".wasm")
        && (first.contains('.') || first.contains(':') || first == "localhost")
}

/// Largest size the run cache may grow to before evicting least-recently-used components.
const RUN_CACHE_BYTES: u64 = 2 << 30;

/// Pulls `reference` through the blob cache under `cache_dir` and loads it from its cached
/// precompiled form (compiling and recording it the first time).
pub async fn load_reference(
    engine: &HostEngine,
    args: &RegistryArgs,
    reference: &str,
    cache_dir: &Path,
) -> Result<Program> {
    let blobs = BlobCache::new(cache_dir.join("components"), RUN_CACHE_BYTES)?;
    let (pulled, component) = args.registry()?.pull_cached(reference, &blobs).await?;
    let precompiled = PrecompileCache::new(cache_dir.join("precompiled"))?;
    for foreign in precompiled.foreign_files() {
        tracing::warn!(
            "ignoring {} in the precompile cache: wa8s did not record it",
            foreign.display()
        );
    }
    let (program, source) = precompiled.load(engine, &component)?;
    tracing::info!(
        digest = %pulled.resolved.digest,
        ?source,
        "{reference} ready"
    );
    Ok(program)
}

pub async fn push(args: PushArgs) -> Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let annotations = annotations(&args.annotations)?;
    let pushed = args
        .registry
        .registry()?
        .push_observed(
            &bytes,
            &args.reference,
            annotations.clone(),
            crate::progress::bar(&format!("pushing {}", args.reference), args.quiet),
        )
        .await?;
    eprintln!("pushed {} ({} bytes)", args.reference, bytes.len());
    match args.output {
        Output::Json | Output::Yaml => println!(
            "{}",
            serde_json::json!({
                "reference": args.reference,
                "digest": pushed.digest,
                "layerDigest": pushed.layer_digest,
                "size": bytes.len(),
                "annotations": annotations,
            })
        ),
        Output::Text => println!("{}", pushed.digest),
    }
    Ok(())
}

pub async fn pull(args: PullArgs) -> Result<()> {
    let registry = args.registry.registry()?;
    let output = match &args.to {
        Some(o) => o.clone(),
        None => default_output(&args.reference),
    };
    let mut partial = Partial {
        path: output.with_extension("wasm.partial"),
        renamed: false,
    };
    let (resolved, info) = match &args.cache {
        Some(dir) => {
            let cache = BlobCache::new(dir, u64::MAX)?;
            let pulled = registry.pull(&args.reference, Some(&cache)).await?;
            std::fs::write(&partial.path, &pulled.bytes)
                .with_context(|| format!("writing {}", partial.path.display()))?;
            (pulled.resolved, pulled.info)
        }
        None => {
            let mut file = std::fs::File::create(&partial.path)
                .with_context(|| format!("writing {}", partial.path.display()))?;
            let progress = crate::progress::bar(&format!("pulling {}", args.reference), args.quiet);
            let written = registry
                .pull_observed(&args.reference, &mut file, progress)
                .await
                .map_err(|e| match e {
                    wa8s_oci::Error::Io { source, .. } => {
                        anyhow!(source).context(format!("writing {}", partial.path.display()))
                    }
                    e => e.into(),
                })?;
            (written.resolved, written.info)
        }
    };
    partial.rename_to(&output)?;
    eprintln!(
        "pulled {} to {} ({} bytes, {})",
        args.reference,
        output.display(),
        info.size,
        info.kind.os()
    );
    match args.output {
        Output::Json | Output::Yaml => println!(
            "{}",
            serde_json::json!({
                "reference": args.reference,
                "digest": resolved.digest,
                "file": output,
                "size": info.size,
                "kind": info.kind.os(),
            })
        ),
        Output::Text => println!("{}", resolved.digest),
    }
    Ok(())
}

/// Prints a `WebAssembly` object for a pushed component: HTTP or cli from its world, the
/// digest pinned, nothing granted.
pub async fn manifest(args: ManifestArgs) -> Result<()> {
    let described = args.registry.registry()?.describe(&args.reference).await?;
    let parsed = wa8s_oci::parse_reference(&args.reference)?;
    let registry = format!("{}/{}", parsed.registry(), parsed.repository());
    let tag = parsed.tag();
    let name = match &args.name {
        Some(n) => n.clone(),
        None => object_name(&registry),
    };
    let mut module = serde_json::json!({
        "registry": registry,
        "digest": described.resolved.digest,
    });
    if let Some(tag) = tag {
        module["tag"] = tag.into();
    }
    let mut spec = serde_json::json!({ "module": module });
    let http = described.serves_http();
    if http == Some(false) {
        // A wasi:cli command runs as a worker: one pod, no Service.
        spec["replicas"] = 1.into();
    }
    let object = serde_json::json!({
        "apiVersion": "wa8s.reconciler.io/v1",
        "kind": "WebAssembly",
        "metadata": { "name": name },
        "spec": spec,
    });
    // The object must be one the API server would take: the CRD's own types read it back.
    let _: wa8s_api::WebAssembly = serde_json::from_value(object.clone())
        .context("the generated object does not match the WebAssembly API")?;
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&object)?),
        Output::Yaml | Output::Text => {
            let kind = match http {
                Some(true) => "a wasi:http component: gets a Service on port 80",
                Some(false) => "a wasi:cli command: runs as a worker, no Service",
                None => "the registry does not say which world: treated as HTTP",
            };
            println!(
                "# {} — {kind}. Nothing is granted: add spec.wasi.",
                args.reference
            );
            print!("{}", yaml_serde::to_string(&object)?);
        }
    }
    Ok(())
}

/// A DNS-1123 name from a repository's last segment.
fn object_name(repository: &str) -> String {
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let mut name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "component".into()
    } else {
        name
    }
}

/// A file written next to its destination and renamed over it only when complete. Dropped
/// without [`Partial::rename_to`], on any error, it is removed: a failed pull leaves an
/// earlier file as it was and nothing beside it.
struct Partial {
    path: PathBuf,
    renamed: bool,
}

impl Partial {
    fn rename_to(&mut self, output: &Path) -> Result<()> {
        std::fs::rename(&self.path, output)
            .with_context(|| format!("writing {}", output.display()))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn default_output(reference: &str) -> PathBuf {
    let repo = reference.split(['@', ':']).next().unwrap_or(reference);
    let last = repo.rsplit('/').next().unwrap_or("component");
    PathBuf::from(format!("{last}.wasm"))
}

pub async fn inspect(args: InspectArgs) -> Result<()> {
    let path = Path::new(&args.target);
    let (info, source) = if path.is_file() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        (
            artifact::inspect(&bytes)?,
            serde_json::json!({ "file": args.target }),
        )
    } else {
        let registry = args.registry.registry()?;
        // The manifest and the wasm config say what a component imports and exports: the
        // binary (megabytes, for a language runtime inside) is downloaded only when they
        // do not (a preview1 module, a layered image).
        let described = registry.describe(&args.target).await?;
        match (described.info(), &described.wasm_layer) {
            (Some(info), Some(layer)) => {
                let source = serde_json::json!({
                    "reference": args.target,
                    "manifestDigest": described.resolved.digest,
                    "configMediaType": described.config_media_type,
                    "layerMediaType": layer.media_type,
                });
                (info, source)
            }
            _ => {
                let pulled = registry.pull(&args.target, None).await?;
                let source = serde_json::json!({
                    "reference": args.target,
                    "manifestDigest": pulled.resolved.digest,
                    "configMediaType": pulled.config_media_type,
                    "layerMediaType": pulled.carrier,
                });
                (pulled.info, source)
            }
        }
    };
    if args.json || args.output != Output::Text {
        let mut doc = serde_json::to_value(&info)?;
        if let (Some(doc), Some(src)) = (doc.as_object_mut(), source.as_object()) {
            doc.extend(src.clone());
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_text(&info, &source);
    }
    Ok(())
}

fn print_text(info: &WasmInfo, source: &serde_json::Value) {
    if let Some(obj) = source.as_object() {
        for (k, v) in obj {
            println!("{k}: {}", v.as_str().unwrap_or_default());
        }
    }
    println!("kind: {:?} ({})", info.kind, info.kind.os());
    println!("digest: {}", info.digest);
    println!("size: {} bytes", info.size);
    println!("imports:");
    for i in &info.imports {
        println!("  {i}");
    }
    println!("exports:");
    for e in &info.exports {
        println!("  {e}");
    }
}
