//! The pod contract: what the operator tells the shim about one pod, beyond ordinary pod
//! fields (image pinned by digest, env, volumes, resources).
//!
//! It travels as one JSON document in the pod annotation [`POLICY_ANNOTATION`]. The operator
//! builds it with [`Policy::from_spec`]; the shim reads it with [`Policy::from_annotations`].
//!
//! Guarantees: the shim fails closed. A missing annotation means "deny everything"; a document
//! with an unknown `version` or an unknown field is refused, because a field this shim does
//! not know could be a restriction it would otherwise silently drop. Any change to what a field
//! means is a new version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DEFAULT_PORT, WebAssemblySpec};

/// Annotation holding the JSON policy document.
pub const POLICY_ANNOTATION: &str = "wa8s.reconciler.io/policy";
/// The annotation on a pod template naming the module digest its pods run (the operator
/// writes it, and reads it back to tell which digest a Deployment is rolling out).
pub const MODULE_DIGEST_ANNOTATION: &str = "wa8s.reconciler.io/module-digest";
/// The containerd runtime type of the shim (`containerd-shim-wa8s-v1`).
pub const RUNTIME_TYPE: &str = "io.containerd.wa8s.v1";
/// The CRI runtime handler (containerd's runtime name, the RuntimeClass `handler`).
pub const RUNTIME_HANDLER: &str = "wa8s";
/// The pod annotations containerd must hand to the runtime (its `pod_annotations` option);
/// without it the shim sees no policy and denies everything.
pub const POD_ANNOTATIONS: &[&str] = &[POLICY_ANNOTATION];
/// The node label the node installer sets once the runtime is ready on a node; the `wa8s`
/// RuntimeClass schedules pods only onto nodes carrying it.
pub const NODE_LABEL: &str = "wa8s.reconciler.io/runtime";
/// [`NODE_LABEL`]'s value on a prepared node.
pub const NODE_LABEL_READY: &str = "ready";
/// The contract version this crate writes and understands.
pub const CONTRACT_VERSION: u32 = 1;
/// The container `command` the operator writes. containerd's CRI refuses a container without
/// one, and a wasm artifact's config carries no entry point; the shim reads `/` as "the
/// component is the image itself" (SpinKube's operator uses the same convention).
pub const IMAGE_COMPONENT_COMMAND: &str = "/";
/// Request deadline when the object sets none.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Concurrent requests per pod when the object sets none.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: u32 = 100;
/// Seconds a terminating HTTP pod keeps serving before it gets SIGTERM (a `preStop` sleep,
/// done by the kubelet): the time the node's proxies take to stop sending it requests.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// Seconds the shim lets in-flight requests finish after SIGTERM.
pub const DRAIN_SECONDS: u64 = 25;
/// The pods' termination grace period: the preStop sleep and the drain, with room to spare,
/// so the kubelet's SIGKILL never cuts a drain short.
pub const TERMINATION_GRACE_SECONDS: i64 = PRE_STOP_SLEEP_SECONDS + DRAIN_SECONDS as i64 + 5;

/// The port every HTTP wasm pod serves its Prometheus metrics on (`GET /metrics`), beside
/// the component's own; the OpenTelemetry Prometheus exporter's registered default.
pub const METRICS_PORT: u16 = 9464;
/// The container port name of [`METRICS_PORT`] (Services, PodMonitors and scrape configs
/// select it by name).
pub const METRICS_PORT_NAME: &str = "metrics";

/// The container variable holding the runtime's log filter (`RUST_LOG` syntax).
pub const LOG_FILTER_ENV: &str = "WA8S_LOG";
/// The container variable choosing the runtime's log format (`text` or `json`).
pub const LOG_FORMAT_ENV: &str = "WA8S_LOG_FORMAT";
/// The container variable that turns on the access log (`json`): one JSON line per request
/// on the container's stderr.
pub const ACCESS_LOG_ENV: &str = "WA8S_ACCESS_LOG";
/// Whether the runtime reads container variable `name` for itself: its log settings and the
/// standard OpenTelemetry ones (`OTEL_*`: where traces go, the service name). The shim hands
/// them to the guest process; the component sees one only when the object grants it like
/// any other.
pub fn is_host_env(name: &str) -> bool {
    name == LOG_FILTER_ENV
        || name == LOG_FORMAT_ENV
        || name == ACCESS_LOG_ENV
        || name.starts_with("OTEL_")
}

/// The variable the operator fills from the downward API with the pod's name, so the
/// runtime's trace resource can name the pod (`OTEL_RESOURCE_ATTRIBUTES` refers to it).
pub const POD_NAME_ENV: &str = "WA8S_POD_NAME";
/// The variables that turn on trace export (the OpenTelemetry specification's names).
pub const TRACE_ENDPOINT_ENV: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// A runtime setting the operator writes into every wasm pod it makes (the chart's
/// `workloads.*` and `traces.*` values): `NAME=VALUE` where the runtime reads `NAME` for
/// itself ([`is_host_env`]). Parsed once, where the operator reads its flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeSetting {
    name: String,
    value: String,
}

/// Why a `NAME=VALUE` is not a runtime setting.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeSettingError {
    /// No `=`, or nothing before it.
    #[error("'{0}' is not NAME=VALUE")]
    NotAssignment(String),
    /// A variable the runtime does not read: it would reach no one, or (were the object to
    /// grant it) the component, which chart-wide settings must never do.
    #[error(
        "{0} is not a runtime setting: only {LOG_FILTER_ENV}, {LOG_FORMAT_ENV}, {ACCESS_LOG_ENV} and OTEL_* may be set for every wasm pod"
    )]
    NotRuntime(String),
}

impl RuntimeSetting {
    /// The container variable's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl std::str::FromStr for RuntimeSetting {
    type Err = RuntimeSettingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| RuntimeSettingError::NotAssignment(s.to_owned()))?;
        if !is_host_env(name) {
            return Err(RuntimeSettingError::NotRuntime(name.to_owned()));
        }
        Ok(RuntimeSetting {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

/// Errors reading the contract.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The annotation is not valid JSON for this version (including unknown fields).
    #[error("annotation {POLICY_ANNOTATION} is not a valid policy document: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The document was written for a contract version this shim does not know.
    #[error(
        "annotation {POLICY_ANNOTATION} has contract version {found}; this runtime understands version {CONTRACT_VERSION} (upgrade the wa8s node runtime)"
    )]
    UnsupportedVersion {
        /// The version in the document.
        found: u32,
    },
}

/// The grants and limits for every Wasm container of one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    /// Contract version; see [`CONTRACT_VERSION`].
    pub version: u32,
    /// Directories to preopen. The volume for each is mounted in the container at `path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsPolicy>,
    /// Names of container environment variables the guest may see (the object's `env`
    /// names plus `wasi.env` grants). Every other variable is hidden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Outbound host patterns (see [`crate::HostPattern`]); empty denies all outbound traffic,
    /// name lookups included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    /// Resource limits the runtime enforces.
    pub limits: Limits,
    /// Port an HTTP component serves on.
    pub port: u16,
}

/// One preopened directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FsPolicy {
    /// Absolute path in the guest (and mount path in the container).
    pub path: String,
    /// Writes fail in the guest.
    #[serde(default)]
    pub read_only: bool,
    /// Bytes the guest may store under `path`; writes past it fail with ENOSPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
}

/// Runtime limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Linear-memory cap per instance, in bytes; `None` leaves only the pod's memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-clock deadline per request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Most requests handled at once.
    pub max_concurrent_requests: u32,
}

impl Policy {
    /// The policy that denies everything (no annotation on the pod).
    pub fn deny_all() -> Self {
        Policy {
            version: CONTRACT_VERSION,
            fs: Vec::new(),
            env: Vec::new(),
            allowed_hosts: Vec::new(),
            limits: Limits {
                memory_bytes: None,
                request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
                max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            },
            port: DEFAULT_PORT as u16,
        }
    }

    /// The policy for pods of a `WebAssembly` object. Pure: the operator's desired state.
    pub fn from_spec(spec: &WebAssemblySpec) -> Self {
        let wasi = spec.wasi.clone().unwrap_or_default();
        let mut env: Vec<String> = spec.env.iter().map(|e| e.name.0.clone()).collect();
        env.extend(wasi.env.iter().map(|n| n.0.clone()));
        env.sort();
        env.dedup();
        let allowed_hosts = wasi
            .network
            .iter()
            .filter(|n| n.outbound)
            .flat_map(|n| n.allowed_hosts.iter().map(|h| h.0.clone()))
            .collect();
        let limits = spec.limits.clone().unwrap_or_default();
        Policy {
            version: CONTRACT_VERSION,
            fs: wasi
                .fs
                .iter()
                .map(|f| FsPolicy {
                    path: f.path.0.clone(),
                    read_only: f.read_only.unwrap_or(false),
                    max_size_bytes: f.max_size.as_ref().and_then(|q| q.to_bytes()),
                })
                .collect(),
            env,
            allowed_hosts,
            limits: Limits {
                memory_bytes: spec
                    .resources
                    .as_ref()
                    .and_then(|r| r.memory.as_ref())
                    .and_then(|q| q.to_bytes()),
                request_timeout_ms: limits
                    .request_timeout
                    .as_deref()
                    .and_then(parse_duration_ms)
                    .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS),
                max_concurrent_requests: limits
                    .max_concurrent_requests
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(DEFAULT_MAX_CONCURRENT_REQUESTS),
            },
            port: spec
                .port
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(DEFAULT_PORT as u16),
        }
    }

    /// The annotations that carry this policy.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        // Serializing plain structs of strings and integers cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        BTreeMap::from([(POLICY_ANNOTATION.to_owned(), json)])
    }

    /// Reads the policy from a pod's (or OCI spec's) annotations; no annotation means
    /// [`Policy::deny_all`].
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, Error> {
        let Some(json) = annotations.get(POLICY_ANNOTATION) else {
            return Ok(Policy::deny_all());
        };
        // Check the version first so a newer document gets the clearer error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let Versioned { version } = serde_json::from_str(json)?;
        if version != CONTRACT_VERSION {
            return Err(Error::UnsupportedVersion { found: version });
        }
        Ok(serde_json::from_str(json)?)
    }
}

/// Parses the durations the API accepts (`500ms`, `30s`, `1m30s`, `2h`) into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WebAssembly;

    fn seed() -> WebAssembly {
        let text = include_str!("../../examples/deploy.yaml");
        yaml_serde::from_str(text).expect("examples/deploy.yaml parses")
    }

    #[test]
    fn a_runtime_setting_is_a_variable_the_runtime_reads_and_anything_else_is_refused_by_name() {
        let s: RuntimeSetting = "OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318"
            .parse()
            .expect("an OTEL_ variable");
        assert_eq!(
            (s.name(), s.value()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        );
        let s: RuntimeSetting = "WA8S_ACCESS_LOG=".parse().expect("an empty value");
        assert_eq!(s.value(), "");
        assert_eq!(
            "DATABASE_URL=postgres://x".parse::<RuntimeSetting>(),
            Err(RuntimeSettingError::NotRuntime("DATABASE_URL".into()))
        );
        let refused = "PATH=/bin"
            .parse::<RuntimeSetting>()
            .expect_err("PATH is not the runtime's");
        assert!(
            refused
                .to_string()
                .starts_with("PATH is not a runtime setting")
        );
        for bad in ["WA8S_LOG", "=info", ""] {
            assert_eq!(
                bad.parse::<RuntimeSetting>(),
                Err(RuntimeSettingError::NotAssignment(bad.into()))
            );
        }
    }

    #[test]
    fn the_seed_manifest_becomes_the_expected_policy() {
        let policy = Policy::from_spec(&seed().spec);
        assert_eq!(
            policy,
            Policy {
                version: 1,
                fs: vec![
                    FsPolicy {
                        path: "/config".into(),
                        read_only: true,
                        max_size_bytes: None
                    },
                    FsPolicy {
                        path: "/tmp".into(),
                        read_only: false,
                        max_size_bytes: Some(1 << 30)
                    },
                ],
                env: vec!["ALLOWED_ORIGINS".into(), "CACHE_SIZE".into()],
                allowed_hosts: vec!["*.internal.example.com".into()],
                limits: Limits {
                    memory_bytes: Some(32 << 20),
                    request_timeout_ms: 30_000,
                    max_concurrent_requests: 100
                },
                port: 8080,
            }
        );
    }

    #[test]
    fn what_the_operator_writes_the_shim_reads_back_identically() {
        let policy = Policy::from_spec(&seed().spec);
        let read = Policy::from_annotations(&policy.to_annotations()).expect("reads back");
        assert_eq!(read, policy);
    }

    #[test]
    fn a_pod_without_the_annotation_gets_nothing() {
        let policy = Policy::from_annotations(&BTreeMap::new()).expect("no annotation is fine");
        assert_eq!(policy, Policy::deny_all());
        assert!(policy.fs.is_empty() && policy.env.is_empty() && policy.allowed_hosts.is_empty());
    }

    #[test]
    fn a_newer_contract_version_is_refused_with_an_upgrade_hint() {
        let ann = BTreeMap::from([(POLICY_ANNOTATION.to_owned(), r#"{"version":2}"#.to_owned())]);
        let err = Policy::from_annotations(&ann).expect_err("version 2 refused");
        assert!(err.to_string().contains("contract version 2"), "{err}");
        assert!(err.to_string().contains("upgrade"), "{err}");
    }

    #[test]
    fn an_unknown_field_is_refused_rather_than_ignored() {
        let mut json: serde_json::Value =
            serde_json::from_str(&Policy::deny_all().to_annotations()[POLICY_ANNOTATION])
                .expect("json");
        json["denyEverything"] = serde_json::json!(true);
        let ann = BTreeMap::from([(POLICY_ANNOTATION.to_owned(), json.to_string())]);
        let err = Policy::from_annotations(&ann).expect_err("unknown field refused");
        assert!(err.to_string().contains("denyEverything"), "{err}");
    }

    #[test]
    fn durations_parse_like_the_schema_accepts_them() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("30s"), Some(30_000));
        assert_eq!(parse_duration_ms("1m30s"), Some(90_000));
        assert_eq!(parse_duration_ms("2h"), Some(7_200_000));
        for bad in ["", "s", "10", "1d", "-1s", "1.5s"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }
}
