//! Desired state: a pure function of (object, resolved module, operator config) returning the
//! Deployment, Service and HPA the operator applies. No I/O here, so every decision about what
//! a `WebAssembly` becomes is covered by unit tests and golden snapshots.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service,
    ServicePort, ServiceSpec, SleepAction, TCPSocketAction, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use wa8s_api::contract::{IMAGE_COMPONENT_COMMAND, POD_NAME_ENV, Policy, RuntimeSetting};
use wa8s_api::{DEFAULT_PORT, WebAssembly};

/// Operator-wide settings that shape every object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// RuntimeClass the pods ask for.
    pub runtime_class: String,
    /// User the (non-root) pods run as; no Wasm guest needs root.
    pub run_as_user: i64,
    /// Runtime settings for every pod (log level and format, access log, trace export); an
    /// object's own `env` entry of the same name wins.
    pub runtime_settings: Vec<RuntimeSetting>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            runtime_class: "wa8s".into(),
            run_as_user: 65532,
            runtime_settings: Vec::new(),
        }
    }
}

/// What the module turned out to be, as far as the registry told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// Exports wasi:http/incoming-handler: gets a Service and a readiness probe.
    Http,
    /// A wasi:cli command or preview1 module: no Service, no probe.
    Cli,
    /// The artifact does not say (an image-shaped artifact): treated as HTTP, the common case.
    Unknown,
}

/// The module the pods run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:…` manifest digest.
    pub digest: String,
    pub kind: ModuleKind,
}

/// Everything the operator applies for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub deployment: Deployment,
    pub service: Option<Service>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
}

/// Why desired state could not be computed (the object is not one the API server would
/// have stored: missing name, namespace or uid).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
}

/// Label keys (Kubernetes recommended labels plus the object's own).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const VERSION_LABEL: &str = "app.kubernetes.io/version";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// The object that owns a pod, for selectors (immutable on a Deployment, so kept minimal).
pub const OWNER_LABEL: &str = "wa8s.reconciler.io/webassembly";
/// The field manager for server-side apply.
pub const MANAGER: &str = "wa8s-operator";
const CONTAINER: &str = "module";
const PORT_NAME: &str = "http";

/// Labels that select the pods of `name` (stable for the object's lifetime).
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
        (OWNER_LABEL.to_owned(), name.to_owned()),
    ])
}

/// `selector_labels` as a label-selector string (for `status.selector`).
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The object's own labels, then the operator's (which win: they select the pods).
fn labels(obj: &WebAssembly, name: &str) -> BTreeMap<String, String> {
    let mut labels = obj.metadata.labels.clone().unwrap_or_default();
    labels.extend(selector_labels(name));
    labels.insert(NAME_LABEL.into(), name.into());
    labels.insert(COMPONENT_LABEL.into(), "webassembly".into());
    labels.insert(PART_OF_LABEL.into(), name.into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    if let Some(tag) = &obj.spec.module.tag {
        labels.insert(VERSION_LABEL.into(), tag.clone());
    }
    labels
}

fn owner(obj: &WebAssembly) -> Result<OwnerReference, Error> {
    Ok(OwnerReference {
        api_version: WebAssembly::api_version(&()).into_owned(),
        kind: WebAssembly::kind(&()).into_owned(),
        name: obj
            .metadata
            .name
            .clone()
            .ok_or(Error::MissingMetadata("name"))?,
        uid: obj
            .metadata
            .uid
            .clone()
            .ok_or(Error::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The desired objects for `obj` running `resolved`.
pub fn desired(obj: &WebAssembly, resolved: &Resolved, config: &Config) -> Result<Desired, Error> {
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingMetadata("name"))?;
    let namespace = obj
        .metadata
        .namespace
        .clone()
        .ok_or(Error::MissingMetadata("namespace"))?;
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace),
        labels: Some(labels(obj, &name)),
        owner_references: Some(vec![owner(obj)?]),
        ..ObjectMeta::default()
    };
    let http = resolved.kind != ModuleKind::Cli;
    let port = obj.spec.port.unwrap_or(DEFAULT_PORT);
    Ok(Desired {
        deployment: deployment(obj, resolved, config, &name, meta.clone(), port, http),
        service: http.then(|| service(obj, &name, meta.clone())),
        pdb: pdb(obj, &name, meta.clone()),
        hpa: hpa(obj, &name, meta),
    })
}

/// The container's variables: the operator-wide runtime settings the object does not set
/// itself, then the object's own; when the pod exports traces, the resource that names it
/// (service = the object, its namespace and pod) unless the object names its own.
fn env(obj: &WebAssembly, config: &Config, name: &str) -> Vec<EnvVar> {
    let spec = &obj.spec;
    let own = |n: &str| spec.env.iter().any(|e| e.name.0 == n);
    let literal = |name: &str, value: String| EnvVar {
        name: name.to_owned(),
        value: Some(value),
        value_from: None,
    };
    let mut env: Vec<EnvVar> = config
        .runtime_settings
        .iter()
        .filter(|s| !own(s.name()))
        .map(|s| literal(s.name(), s.value().to_owned()))
        .collect();
    env.extend(spec.env.iter().map(|e| EnvVar {
        name: e.name.0.clone(),
        value: e.value.clone(),
        value_from: e.value_from.clone(),
    }));
    let traced = env
        .iter()
        .any(|e| wa8s_api::contract::TRACE_ENDPOINT_ENV.contains(&e.name.as_str()));
    if traced {
        let set = |env: &[EnvVar], n: &str| env.iter().any(|e| e.name == n);
        if !set(&env, "OTEL_SERVICE_NAME") {
            env.push(literal("OTEL_SERVICE_NAME", name.to_owned()));
        }
        if !set(&env, "OTEL_RESOURCE_ATTRIBUTES") && !set(&env, POD_NAME_ENV) {
            let namespace = obj.metadata.namespace.clone().unwrap_or_default();
            // Kubernetes expands $(VAR) from variables defined earlier in the list.
            env.push(EnvVar {
                name: POD_NAME_ENV.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.name".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
            });
            env.push(literal(
                "OTEL_RESOURCE_ATTRIBUTES",
                format!("k8s.namespace.name={namespace},k8s.pod.name=$({POD_NAME_ENV})"),
            ));
        }
    }
    env
}

fn deployment(
    obj: &WebAssembly,
    resolved: &Resolved,
    config: &Config,
    name: &str,
    meta: ObjectMeta,
    port: i32,
    http: bool,
) -> Deployment {
    let spec = &obj.spec;
    let wasi = spec.wasi.clone().unwrap_or_default();
    let (mut volumes, mut mounts) = (Vec::new(), Vec::new());
    for (i, grant) in wasi.fs.iter().enumerate() {
        let volume_name = format!("wasi-fs-{i}");
        let read_only = grant.read_only.unwrap_or(false);
        let mut volume = Volume {
            name: volume_name.clone(),
            ..Volume::default()
        };
        match &grant.source {
            Some(source) => {
                volume.config_map = source.config_map.clone();
                volume.secret = source.secret.clone();
                volume.persistent_volume_claim = source.persistent_volume_claim.clone();
            }
            None => {
                volume.empty_dir = Some(EmptyDirVolumeSource {
                    // The kubelet evicts past sizeLimit; the runtime refuses the write first.
                    size_limit: grant.max_size.as_ref().map(|q| K8sQuantity(q.0.clone())),
                    ..EmptyDirVolumeSource::default()
                });
            }
        }
        volumes.push(volume);
        mounts.push(VolumeMount {
            name: volume_name,
            mount_path: grant.path.0.clone(),
            read_only: read_only.then_some(true),
            ..VolumeMount::default()
        });
    }
    let env = env(obj, config, name);
    let resources = spec.resources.as_ref().map(|r| {
        let mut amounts = BTreeMap::new();
        if let Some(m) = &r.memory {
            amounts.insert("memory".to_owned(), K8sQuantity(m.0.clone()));
        }
        if let Some(c) = &r.cpu {
            amounts.insert("cpu".to_owned(), K8sQuantity(c.0.clone()));
        }
        // Requests equal limits: the kernel enforces what the scheduler reserved, and the
        // HPA's utilization is measured against the same number.
        ResourceRequirements {
            requests: Some(amounts.clone()),
            limits: Some(amounts),
            ..ResourceRequirements::default()
        }
    });
    let policy = Policy::from_spec(spec);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(format!("{}@{}", spec.module.registry, resolved.digest)),
        command: Some(vec![IMAGE_COMPONENT_COMMAND.into()]),
        args: (!spec.args.is_empty()).then(|| spec.args.clone()),
        ports: http.then(|| {
            vec![
                ContainerPort {
                    name: Some(PORT_NAME.into()),
                    container_port: port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
                // The runtime's Prometheus metrics (requests, stops, denials).
                ContainerPort {
                    name: Some(wa8s_api::contract::METRICS_PORT_NAME.into()),
                    container_port: i32::from(wa8s_api::contract::METRICS_PORT),
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                },
            ]
        }),
        env: (!env.is_empty()).then_some(env),
        env_from: (!spec.env_from.is_empty()).then(|| spec.env_from.clone()),
        resources,
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        readiness_probe: http.then(|| match &spec.readiness_probe {
            Some(p) => probe(p),
            None => Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::String(PORT_NAME.into()),
                    ..TCPSocketAction::default()
                }),
                period_seconds: Some(5),
                ..Probe::default()
            },
        }),
        liveness_probe: spec.liveness_probe.as_ref().filter(|_| http).map(probe),
        // A terminating pod leaves the Service's endpoints a moment after the kubelet
        // learns of it; waiting before SIGTERM (the kubelet sleeps, nothing runs in the
        // container) lets the node's proxies stop sending it requests first, so a rollout
        // drops none.
        lifecycle: http.then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: wa8s_api::contract::PRE_STOP_SLEEP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        // The shim writes why a component could not start; the operator surfaces it.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    // The object's pod labels and annotations first: the operator's own win.
    let mut template_labels = spec.pod_labels.clone();
    template_labels.extend(meta.labels.clone().unwrap_or_default());
    let mut template_annotations = spec.pod_annotations.clone();
    template_annotations.extend(policy.to_annotations());
    let mut template_meta = ObjectMeta {
        labels: Some(template_labels),
        annotations: Some(template_annotations),
        ..ObjectMeta::default()
    };
    if let Some(a) = template_meta.annotations.as_mut() {
        a.insert(
            wa8s_api::contract::MODULE_DIGEST_ANNOTATION.into(),
            resolved.digest.clone(),
        );
        if http {
            // The convention Prometheus' own example configuration (and many charts) scrape
            // pods by.
            a.insert("prometheus.io/scrape".into(), "true".into());
            a.insert(
                "prometheus.io/port".into(),
                wa8s_api::contract::METRICS_PORT.to_string(),
            );
            a.insert("prometheus.io/path".into(), "/metrics".into());
        }
    }
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            // With scaling, the HPA owns the replica count: leaving the field out of the
            // apply keeps the operator from fighting it.
            replicas: match spec.scaling {
                Some(_) => None,
                None => Some(spec.replicas.unwrap_or(1)),
            },
            selector: LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(template_meta),
                spec: Some(PodSpec {
                    runtime_class_name: Some(config.runtime_class.clone()),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    image_pull_secrets: (!spec.image_pull_secrets.is_empty())
                        .then(|| spec.image_pull_secrets.clone()),
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    affinity: spec.affinity.clone(),
                    service_account_name: spec.service_account_name.clone(),
                    priority_class_name: spec.priority_class_name.clone(),
                    topology_spread_constraints: (!spec.topology_spread_constraints.is_empty())
                        .then(|| spread(&spec.topology_spread_constraints, name)),
                    // The preStop sleep and the shim's drain both fit before the SIGKILL.
                    termination_grace_period_seconds: Some(
                        wa8s_api::contract::TERMINATION_GRACE_SECONDS,
                    ),
                    // A guest has no use for an API token or service-link variables.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(config.run_as_user),
                        run_as_group: Some(config.run_as_user),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn service(obj: &WebAssembly, name: &str, mut meta: ObjectMeta) -> Service {
    let annotations = &obj.spec.service_annotations;
    meta.annotations = (!annotations.is_empty()).then(|| annotations.clone());
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(name)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.into()),
                port: 80,
                target_port: Some(IntOrString::String(PORT_NAME.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The object's budget; without one, `maxUnavailable: 1` once it runs two pods or more: a
/// drain then never takes every pod of a node at once, and (unhealthy pods being always
/// evictable) never waits forever either.
fn pdb(obj: &WebAssembly, name: &str, meta: ObjectMeta) -> Option<PodDisruptionBudget> {
    let spec = &obj.spec;
    let (min_available, max_unavailable) = match &spec.disruption_budget {
        Some(b) => (b.min_available.clone(), b.max_unavailable.clone()),
        None => {
            let pods = match &spec.scaling {
                Some(s) => s.min_replicas.unwrap_or(1),
                None => spec.replicas.unwrap_or(1),
            };
            if pods < 2 {
                return None;
            }
            (None, Some(IntOrString::Int(1)))
        }
    };
    Some(PodDisruptionBudget {
        metadata: meta,
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            }),
            min_available,
            max_unavailable,
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        ..PodDisruptionBudget::default()
    })
}

/// The object's constraints; one without a selector counts the object's pods.
fn spread(constraints: &[TopologySpreadConstraint], name: &str) -> Vec<TopologySpreadConstraint> {
    constraints
        .iter()
        .map(|c| {
            let mut c = c.clone();
            if c.label_selector.is_none() {
                c.label_selector = Some(LabelSelector {
                    match_labels: Some(selector_labels(name)),
                    ..LabelSelector::default()
                });
            }
            c
        })
        .collect()
}

/// A probe of the component's port from the object's, with Kubernetes' defaults left to
/// Kubernetes.
fn probe(p: &wa8s_api::HttpProbe) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(p.http_get.path.clone()),
            port: IntOrString::String(PORT_NAME.into()),
            http_headers: (!p.http_get.http_headers.is_empty())
                .then(|| p.http_get.http_headers.clone()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: p.initial_delay_seconds,
        period_seconds: p.period_seconds,
        timeout_seconds: p.timeout_seconds,
        success_threshold: p.success_threshold,
        failure_threshold: p.failure_threshold,
        ..Probe::default()
    }
}

fn hpa(obj: &WebAssembly, name: &str, meta: ObjectMeta) -> Option<HorizontalPodAutoscaler> {
    let scaling = obj.spec.scaling.as_ref()?;
    let target = |resource: &str, utilization: i32| MetricSpec {
        type_: "Resource".into(),
        resource: Some(ResourceMetricSource {
            name: resource.into(),
            target: MetricTarget {
                type_: "Utilization".into(),
                average_utilization: Some(utilization),
                ..MetricTarget::default()
            },
        }),
        ..MetricSpec::default()
    };
    let mut metrics = Vec::new();
    if let Some(m) = scaling.target_memory_utilization {
        metrics.push(target("memory", m));
    }
    if let Some(c) = scaling.target_cpu_utilization {
        metrics.push(target("cpu", c));
    }
    Some(HorizontalPodAutoscaler {
        metadata: meta,
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: name.into(),
            },
            min_replicas: Some(scaling.min_replicas.unwrap_or(1)),
            max_replicas: scaling.max_replicas,
            metrics: Some(metrics),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}
