//! The `WebAssembly` custom resource, `wa8s.reconciler.io/v1`.
//!
//! Doc comments here become the CRD's field descriptions, which is what `kubectl explain`
//! shows, so they are written for the platform engineer reading them there. Validation lives
//! in the schema (types, ranges, list types) and in CEL rules (`x-kubernetes-validations`),
//! so the API server refuses a bad object with a message that names the field; there is no
//! admission webhook.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, EnvFromSource, EnvVarSource, HTTPHeader, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, SecretVolumeSource, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::Quantity;

/// API group of every wa8s resource.
pub const GROUP: &str = "wa8s.reconciler.io";
/// The served and stored version.
pub const VERSION: &str = "v1";
/// Container port an HTTP component serves on when `spec.port` is not set.
pub const DEFAULT_PORT: i32 = 8080;

/// A WebAssembly component run on Kubernetes: where to get it, what it may touch, how much of
/// the cluster it may use, and how many copies to run. The wa8s operator turns it into a
/// Deployment (RuntimeClass `wa8s`), a Service and, with `scaling`, a HorizontalPodAutoscaler.
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "wa8s.reconciler.io",
    version = "v1",
    kind = "WebAssembly",
    plural = "webassemblies",
    singular = "webassembly",
    shortname = "wasm",
    category = "wa8s",
    category = "all",
    namespaced,
    status = "WebAssemblyStatus",
    derive = "PartialEq",
    doc = "A WebAssembly component run on Kubernetes by wa8s. The operator resolves spec.module to a digest and runs it as a Deployment with RuntimeClass wa8s, a Service and (with spec.scaling) a HorizontalPodAutoscaler. The guest gets exactly the capabilities granted in spec.wasi: by default no files, no host environment and no network.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Module","type":"string","jsonPath":".spec.module.registry","description":"Repository the component comes from"}"#,
    printcolumn = r#"{"name":"Tag","type":"string","jsonPath":".spec.module.tag","description":"Requested tag"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","jsonPath":".status.module.shortDigest","description":"Digest the pods run (shortened)"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the component is serving"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas","description":"Pods wanted (spec.replicas, or the autoscaler's choice)"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas","description":"Ready pods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.scaling) || !has(self.scaling.targetMemoryUtilization) || (has(self.resources) && has(self.resources.memory))",
        "fieldPath": ".scaling.targetMemoryUtilization",
        "reason": "FieldValueRequired",
        "message": "needs spec.resources.memory: memory utilization is measured against the memory request"
    },
    {
        "rule": "!has(self.scaling) || !has(self.scaling.targetCPUUtilization) || (has(self.resources) && has(self.resources.cpu))",
        "fieldPath": ".scaling.targetCPUUtilization",
        "reason": "FieldValueRequired",
        "message": "needs spec.resources.cpu: CPU utilization is measured against the CPU request"
    },
    {
        "rule": "!has(self.scaling) || !has(self.replicas) || (oldSelf.hasValue() && has(oldSelf.value().scaling) && has(oldSelf.value().replicas) && oldSelf.value().replicas == self.replicas)",
        "optionalOldSelf": true,
        "fieldPath": ".replicas",
        "reason": "FieldValueForbidden",
        "message": "cannot be set (or changed by kubectl scale) while spec.scaling is set: the HorizontalPodAutoscaler owns the replica count; change spec.scaling.minReplicas/maxReplicas, or remove spec.scaling to run a fixed number of pods"
    },
    {
        "rule": "!has(self.port) || self.port != 9464",
        "fieldPath": ".port",
        "reason": "FieldValueInvalid",
        "message": "9464 is the port the runtime serves the pod's metrics on; choose another"
    }
]))]
pub struct WebAssemblySpec {
    /// The component to run, from an OCI registry.
    pub module: Module,

    /// Fixed number of pods when `scaling` is not set (default 1); `kubectl scale` sets this
    /// field. Refused while `scaling` is set: the HorizontalPodAutoscaler owns the count then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// CPU and memory for each pod. Both become the pod's requests and limits; `memory` also
    /// caps each Wasm instance's linear memory inside the runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Environment variables given to the module, like a container's `env`: a literal `value`
    /// or `valueFrom` a Secret key, ConfigMap key or pod field. The guest always sees these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,

    /// Arguments after the program name (`argv[1..]`), as `wasi:cli/environment` hands them
    /// to the component; what a wasi:cli command takes on its command line. Like a
    /// container's `args`, but never a program to run: the component is the program.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// Sources of container environment variables, like a container's `envFrom`. The guest
    /// sees none of them unless their names are granted in `wasi.env`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub env_from: Vec<EnvFromSource>,

    /// Autoscaling with a HorizontalPodAutoscaler (autoscaling/v2). Without it the component
    /// runs `replicas` pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,

    /// Capability grants. Default is deny: without grants the guest has no files, no host
    /// environment variables beyond `env`, and no network access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<Wasi>,

    /// Port an HTTP component (one exporting wasi:http/incoming-handler) serves on inside the
    /// pod, and the Service's target port. Default 8080. Not 9464: the runtime serves the
    /// pod's metrics there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,

    /// Per-request limits the runtime enforces for HTTP components.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RuntimeLimits>,

    /// Secrets in this namespace holding registry credentials, used by the operator to resolve
    /// the tag and by the kubelet and runtime to pull the component.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Labels added to the pods, beside the object's own labels (which its pods, Service and
    /// other objects carry too). `app.kubernetes.io/*` and `wa8s.reconciler.io/*` are the
    /// operator's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, !k.startsWith('wa8s.reconciler.io/') && !k.startsWith('app.kubernetes.io/'))",
        "message": "app.kubernetes.io/* and wa8s.reconciler.io/* labels are the operator's (they select the object's pods); choose another key"
    }]))]
    pub pod_labels: BTreeMap<String, String>,

    /// Annotations added to the pods (a service mesh's or a log shipper's settings, say).
    /// `wa8s.reconciler.io/*` annotations are the operator's and cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.all(k, !k.startsWith('wa8s.reconciler.io/'))",
        "message": "wa8s.reconciler.io/* annotations are the operator's (the pod's grants travel in one); choose another key"
    }]))]
    pub pod_annotations: BTreeMap<String, String>,

    /// Annotations on the Service of an HTTP component (a cloud load balancer's settings,
    /// say).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub service_annotations: BTreeMap<String, String>,

    /// ServiceAccount the pods run as (default: the namespace's `default`). Its
    /// `imagePullSecrets` also resolve the tag, as the kubelet uses them to pull. Its token is
    /// never mounted: a component has no use for it and could not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,

    /// PriorityClass of the pods, as in a pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,

    /// How the pods spread over zones, nodes or other topology domains, as in a pod spec.
    /// Without a `labelSelector`, a constraint counts this object's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// When an HTTP component's pod receives requests: an HTTP GET on the component's port
    /// that must answer 200-399, with a pod probe's field names and defaults. Without it, a
    /// pod is ready once its port accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<HttpProbe>,

    /// When an HTTP component's pod is restarted: an HTTP GET on the component's port, with a
    /// pod probe's field names and defaults (`successThreshold` must be 1). Without it, a pod
    /// is restarted only when its guest stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "!has(self.successThreshold) || self.successThreshold == 1",
        "fieldPath": ".successThreshold",
        "reason": "FieldValueInvalid",
        "message": "must be 1 for a liveness probe"
    }]))]
    pub liveness_probe: Option<HttpProbe>,

    /// How many pods a voluntary disruption (a node drain, an upgrade) may take at once: a
    /// PodDisruptionBudget. Without it, an object that runs 2 or more pods (`replicas` or
    /// `scaling.minReplicas`) gets `maxUnavailable: 1`, and one with a single pod gets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,

    /// Node labels a pod's node must have, as in a pod spec. The RuntimeClass adds its own
    /// selector for nodes where the wa8s runtime is installed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations for the pods, as in a pod spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules for the pods, as in a pod spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// An HTTP GET the kubelet sends to the component's port, as a pod's `httpGet` probe.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpProbe {
    /// The request.
    pub http_get: HttpGetAction,
    /// Seconds after the container starts before the first probe (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: Option<i32>,
    /// Seconds between probes (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: Option<i32>,
    /// Seconds a probe may take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<i32>,
    /// Successes in a row after a failure that count as success (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: Option<i32>,
    /// Failures in a row that count as failure (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: Option<i32>,
}

/// The probe's request: always the component's own port, over plain HTTP.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    /// Path to GET, e.g. `/healthz`.
    #[schemars(length(min = 1, max = 1024))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.startsWith('/')",
        "messageExpression": "\"'\" + self + \"' is not a path: it must start with /\""
    }]))]
    pub path: String,
    /// Headers to send, as in a pod probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub http_headers: Vec<HTTPHeader>,
}

/// A PodDisruptionBudget for the object's pods: set one of the two.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.minAvailable) != has(self.maxUnavailable)",
    "message": "set exactly one of minAvailable and maxUnavailable"
}]))]
pub struct DisruptionBudget {
    /// Pods that must stay available during a disruption: a number or a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Pods a disruption may take at once: a number or a percentage (`100%` allows any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Where the component comes from. The operator resolves `tag` to a digest and pins pods to
/// `registry@sha256:…`; when the tag moves to a new digest, pods roll. With `digest` set, that
/// exact digest runs and the tag is informational.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.tag) || has(self.digest)",
    "reason": "FieldValueRequired",
    "message": "set module.tag, module.digest, or both"
}]))]
pub struct Module {
    /// Repository reference without tag or digest, e.g. `ghcr.io/org/name` or
    /// `localhost:5000/name`.
    #[schemars(length(max = 255))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^(([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])([.]([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(:[0-9]+)?/)?[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*$')",
        "messageExpression": "\"'\" + self + \"' is not a repository reference such as ghcr.io/org/name or localhost:5000/name (put the tag in module.tag and the digest in module.digest)\""
    }]))]
    pub registry: String,

    /// Tag to resolve, e.g. `v1.2.3`. Re-resolved periodically: a moved tag rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$')",
        "messageExpression": "\"'\" + self + \"' is not a valid tag: letters, digits, '_', '.', '-', not starting with '.' or '-', at most 128 characters\""
    }]))]
    pub tag: Option<String>,

    /// Exact content digest to run, e.g. `sha256:3f1c…` (64 hex digits). Takes precedence over
    /// `tag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 135))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$')",
        "messageExpression": "\"'\" + self + \"' is not a digest: expected sha256: followed by 64 lowercase hex digits\""
    }]))]
    pub digest: Option<String>,
}

/// Resources for each pod.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// Memory request and limit, e.g. `32Mi`. Also the cap on each Wasm instance's linear
    /// memory: a guest that grows past it gets a failed `memory.grow`, not an OOM kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,

    /// CPU request and limit, e.g. `100m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
}

/// An environment variable for the module.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.value) && has(self.valueFrom))",
    "fieldPath": ".valueFrom",
    "message": "set value or valueFrom, not both"
}]))]
pub struct EnvVar {
    /// Variable name.
    pub name: EnvName,

    /// Literal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub value: Option<String>,

    /// Value from a Secret key, ConfigMap key or pod field, as in a container's env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvVarSource>,
}

/// An environment variable name: letters, digits, `_`, `-` and `.`, not starting with a digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct EnvName(pub String);

impl EnvName {
    /// Longest name the API accepts.
    pub const MAX_LEN: usize = 256;

    /// Checks `name` with the same rules as the CRD's schema and CEL rule.
    pub fn validate(name: &str) -> Result<(), String> {
        let mut bytes = name.bytes();
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
        let valid = bytes
            .next()
            .is_some_and(|b| allowed(b) && !b.is_ascii_digit())
            && bytes.all(allowed);
        if !valid {
            return Err(format!(
                "'{name}' is not a valid environment variable name: use letters, digits, '_', '-' and '.', not starting with a digit"
            ));
        }
        if name.len() > Self::MAX_LEN {
            return Err(format!(
                "'{name}' is longer than {} characters",
                Self::MAX_LEN
            ));
        }
        Ok(())
    }
}

impl JsonSchema for EnvName {
    fn schema_name() -> Cow<'static, str> {
        "EnvName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": Self::MAX_LEN,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[-._a-zA-Z][-._a-zA-Z0-9]*$')",
                "messageExpression": "\"'\" + self + \"' is not a valid environment variable name: use letters, digits, '_', '-' and '.', not starting with a digit\""
            }]
        })
    }
}

/// Autoscaling settings, turned into an autoscaling/v2 HorizontalPodAutoscaler.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
        "fieldPath": ".minReplicas",
        "message": "minReplicas must not be greater than maxReplicas"
    },
    {
        "rule": "has(self.targetMemoryUtilization) || has(self.targetCPUUtilization)",
        "reason": "FieldValueRequired",
        "message": "set targetMemoryUtilization, targetCPUUtilization, or both"
    }
]))]
pub struct Scaling {
    /// Fewest pods to run (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_replicas: Option<i32>,

    /// Most pods to run.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Average memory use, in percent of the memory request, that the autoscaler aims for
    /// (1-100). Needs `resources.memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization: Option<i32>,

    /// Average CPU use, in percent of the CPU request, that the autoscaler aims for (1-100).
    /// Needs `resources.cpu`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "targetCPUUtilization"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: Option<i32>,
}

/// Capability grants for the guest. Everything not granted here is denied.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Wasi {
    /// Directories preopened in the guest. Each is backed by a volume: an emptyDir unless a
    /// `source` is named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["path"]))]
    pub fs: Vec<FsGrant>,

    /// Names of container environment variables (for example from `envFrom`) the guest may
    /// read beyond `spec.env`. Everything else the kubelet injects (service links,
    /// `KUBERNETES_*`) stays hidden.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub env: Vec<EnvName>,

    /// Network grants. Without an `outbound: true` entry the guest can open no connection,
    /// make no HTTP request and resolve no name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub network: Vec<NetworkGrant>,
}

/// A directory the guest may use.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.readOnly) && self.readOnly && has(self.maxSize))",
        "fieldPath": ".maxSize",
        "message": "maxSize bounds writes, so it cannot be combined with readOnly: true"
    },
    {
        "rule": "!has(self.source) || has(self.source.persistentVolumeClaim) || (has(self.readOnly) && self.readOnly)",
        "fieldPath": ".readOnly",
        "message": "configMap and secret sources are read-only: set readOnly: true"
    }
]))]
pub struct FsGrant {
    /// Absolute path the directory appears at in the guest, e.g. `/config`. No `.` or `..`
    /// segments, no trailing slash. Paths are unique within `wasi.fs`.
    pub path: GuestPath,

    /// Makes the directory read-only at the WASI layer: every write fails in the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,

    /// Most bytes the guest may store under this path, e.g. `1Gi`. The emptyDir gets it as
    /// `sizeLimit`, and the runtime refuses writes past it (the guest sees ENOSPC rather
    /// than the pod being evicted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<Quantity>,

    /// What backs the directory. Default: an empty, pod-local emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<FsSource>,
}

/// The volume behind a filesystem grant; name exactly one.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "(has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) == 1",
    "message": "name exactly one of configMap, secret, persistentVolumeClaim"
}]))]
pub struct FsSource {
    /// Files from a ConfigMap in this namespace (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,

    /// Files from a Secret in this namespace (read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,

    /// A PersistentVolumeClaim in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
}

/// An absolute, normalized path inside the guest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct GuestPath(pub String);

impl GuestPath {
    /// Longest path the API accepts.
    pub const MAX_LEN: usize = 1024;

    /// Checks `path` with the same rules as the CRD's schema and CEL rules, for callers that
    /// take grants from elsewhere (the `wa8s run --dir` flag, the operator).
    pub fn validate(path: &str) -> Result<(), String> {
        if path.len() > Self::MAX_LEN {
            return Err(format!(
                "the path is longer than {} characters",
                Self::MAX_LEN
            ));
        }
        if !path.starts_with('/') {
            return Err(format!(
                "'{path}' is relative: use an absolute path inside the guest, such as /config"
            ));
        }
        if path.split('/').any(|s| s == "." || s == "..") {
            return Err(format!("'{path}' contains a '.' or '..' segment"));
        }
        if path != "/" && (path.ends_with('/') || path.contains("//")) {
            return Err(format!(
                "'{path}' is not normalized: no trailing slash and no empty segments"
            ));
        }
        Ok(())
    }
}

impl JsonSchema for GuestPath {
    fn schema_name() -> Cow<'static, str> {
        "GuestPath".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": Self::MAX_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": "self.startsWith('/')",
                    "messageExpression": "\"'\" + self + \"' is relative: use an absolute path inside the guest, such as /config\""
                },
                {
                    "rule": "!self.matches('(^|/)[.][.]?(/|$)')",
                    "messageExpression": "\"'\" + self + \"' contains a '.' or '..' segment\""
                },
                {
                    "rule": "self == '/' || self.matches('^(/[^/]+)+$')",
                    "messageExpression": "\"'\" + self + \"' is not normalized: no trailing slash and no empty segments\""
                }
            ]
        })
    }
}

/// A network grant.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!self.outbound || (has(self.allowedHosts) && size(self.allowedHosts) > 0)",
        "fieldPath": ".allowedHosts",
        "reason": "FieldValueRequired",
        "message": "outbound: true needs at least one allowedHosts entry (\"*\" allows every public host)"
    },
    {
        "rule": "self.outbound || !has(self.allowedHosts) || size(self.allowedHosts) == 0",
        "fieldPath": ".allowedHosts",
        "message": "allowedHosts has no effect unless outbound: true"
    }
]))]
pub struct NetworkGrant {
    /// Allows the guest to open outbound connections (wasi:http requests, wasi:sockets TCP
    /// and UDP, and name lookups) to `allowedHosts`.
    pub outbound: bool,

    /// Hosts the guest may reach. Each entry is `host`, `*.suffix`, `*`, an IP literal
    /// (`10.0.0.7`, `[fd00::7]`), each with an optional `:port` (`:*` for any; default: any)
    /// and an optional `scheme://` (`http`, `https`, `tcp`, `udp`, `*`). The target is always
    /// the request's own authority. Link-local, loopback and the node's own addresses stay
    /// blocked unless listed literally.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allowed_hosts: Vec<HostPattern>,
}

/// An outbound host pattern, e.g. `api.example.com`, `*.internal.example.com:443`,
/// `https://api.example.com`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(transparent)]
pub struct HostPattern(pub String);

impl HostPattern {
    /// Longest pattern the grammar admits: `https://*.`, a 253-character name and `:65535`.
    pub const MAX_LEN: usize = "https://*.".len() + 253 + ":65535".len();
}

/// A DNS label: 1-63 letters, digits and inner hyphens.
macro_rules! label {
    () => {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    };
}
/// The optional `scheme://` of a host pattern.
macro_rules! scheme {
    () => {
        "((https?|tcp|udp|[*])://)?"
    };
}
/// What each host-pattern refusal starts with, so every rule's message reads alike.
macro_rules! not_a_host_pattern {
    ($why:literal) => {
        concat!("\"'\" + self + \"' is not a host pattern: ", $why, "\"")
    };
}

impl JsonSchema for HostPattern {
    fn schema_name() -> Cow<'static, str> {
        "HostPattern".into()
    }

    // Brackets in the regexes are escaped (`\\[`), not written `[[]`: RE2 and Rust's regex
    // (the in-process test in crds/tests/cel.rs) read `[[]` differently.
    // Several simple rules rather than one regex: each refusal says what is wrong, the port
    // range and the IPv6 syntax (via the IP library's isIP, which a regex would make costly)
    // are checked exactly as HostRule checks them, and the name's length is counted apart
    // from the scheme, wildcard and port around it.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": Self::MAX_LEN,
            "x-kubernetes-validations": [
                {
                    "rule": concat!(
                        "self.matches('^", scheme!(), "([*]|([*][.])?", label!(), "([.]", label!(),
                        ")*|\\\\[[0-9a-fA-F:.]+\\\\])(:([0-9]+|[*]))?$')"
                    ),
                    "messageExpression": not_a_host_pattern!(
                        "use host, *.suffix, * or an IP, with optional :port and scheme:// (e.g. *.internal.example.com, https://api.example.com:8443)"
                    )
                },
                {
                    "rule": "!self.matches(':[0-9]+$') || self.matches(':([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$')",
                    "messageExpression": not_a_host_pattern!(
                        "the port must be 1-65535 (digits, no leading zero) or *"
                    )
                },
                {
                    "rule": "!(self.contains('[') && self.indexOf('[') < self.indexOf(']')) || (isIP(self.substring(self.indexOf('[') + 1, self.indexOf(']'))) && ip(self.substring(self.indexOf('[') + 1, self.indexOf(']'))).family() == 6)",
                    "messageExpression": not_a_host_pattern!(
                        "brackets hold an IPv6 address (no zone, not IPv4-mapped)"
                    )
                },
                {
                    "rule": concat!(
                        "size(self) - size(self.find('^", scheme!(),
                        "([*][.])?')) - size(self.find(':([0-9]+|[*])$')) <= 253"
                    ),
                    "messageExpression": not_a_host_pattern!(
                        "a host name has at most 253 characters"
                    )
                }
            ]
        })
    }
}

/// A grant the runtime would refuse, found before any pod is made.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidGrant {
    /// Where, e.g. `spec.wasi.network[0].allowedHosts[2]`.
    pub field: String,
    /// What is wrong.
    #[source]
    pub problem: GrantProblem,
}

/// What is wrong with a grant.
#[derive(Debug, thiserror::Error)]
pub enum GrantProblem {
    /// An allowedHosts entry outside the grammar.
    #[error(transparent)]
    Host(#[from] crate::host_pattern::PatternError),
    /// A path or environment variable name outside the grammar.
    #[error("{0}")]
    Invalid(String),
}

impl WebAssemblySpec {
    /// Parses every grant with the types the runtime parses them with (the shim reads
    /// allowedHosts as [`HostRule`](crate::host_pattern::HostRule)s), so an object the CEL
    /// rules should have refused (an older CRD, a bypassed admission) is reported at its
    /// field instead of failing on the node. The first problem found.
    pub fn check_grants(&self) -> Result<(), InvalidGrant> {
        let invalid = |field: String| {
            move |problem: String| InvalidGrant {
                field,
                problem: GrantProblem::Invalid(problem),
            }
        };
        for (i, e) in self.env.iter().enumerate() {
            EnvName::validate(&e.name.0).map_err(invalid(format!("spec.env[{i}].name")))?;
        }
        let Some(wasi) = &self.wasi else {
            return Ok(());
        };
        for (i, f) in wasi.fs.iter().enumerate() {
            GuestPath::validate(&f.path.0).map_err(invalid(format!("spec.wasi.fs[{i}].path")))?;
        }
        for (i, name) in wasi.env.iter().enumerate() {
            EnvName::validate(&name.0).map_err(invalid(format!("spec.wasi.env[{i}]")))?;
        }
        for (i, grant) in wasi.network.iter().enumerate() {
            for (j, host) in grant.allowed_hosts.iter().enumerate() {
                host.0
                    .parse::<crate::host_pattern::HostRule>()
                    .map_err(|e| InvalidGrant {
                        field: format!("spec.wasi.network[{i}].allowedHosts[{j}]"),
                        problem: e.into(),
                    })?;
            }
        }
        Ok(())
    }
}

/// Limits the runtime enforces on an HTTP component.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeLimits {
    /// Wall-clock deadline for one request, e.g. `30s`, `500ms`, `1m`. A guest still running
    /// then is interrupted and the client gets 503. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-validations" = [{
        "rule": "self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) > duration('0s')",
        "messageExpression": "\"'\" + self + \"' is not a positive duration such as 500ms, 30s or 1m\""
    }]))]
    pub request_timeout: Option<String>,

    /// Most requests one pod handles at once; further requests wait. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_requests: Option<i32>,
}

/// Observed state, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebAssemblyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `ModuleResolved`, `Progressing` and `Degraded`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The resolved module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<ModuleStatus>,

    /// Pods that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Pods the Deployment wants: `spec.replicas`, or what the HorizontalPodAutoscaler chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// Pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Label selector of the pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// The Service in front of an HTTP component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceStatus>,
}

/// The module as resolved by the operator.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// Digest the pods run, e.g. `sha256:3f1c…`.
    pub digest: String,
    /// The digest shortened for display (`sha256:` and 12 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_digest: Option<String>,
    /// The pinned reference the pods use: `registry@digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Where the component is reachable inside the cluster.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// In-cluster URL, e.g. `http://name.namespace.svc:80`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}
