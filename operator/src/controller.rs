//! The reconcile loop: resolve the module, apply desired state server-side, then tell the
//! truth in status (and events for every condition that changed).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, GetParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use wa8s_api::{ServiceStatus, WebAssembly, WebAssemblyStatus};

use crate::desired::{self, Config as DesiredConfig, MANAGER, ModuleKind, OWNER_LABEL, Resolved};
use crate::metrics::Metrics;
use crate::resolve::{Resolve, ResolveError};
use crate::status::{self, Observed, PodFailure, Resolution, Rollout};
use crate::triggers::{self, Echoes, Relevance};

/// Field manager that sets a new Deployment's replicas to the HPA's minimum, once.
const INITIAL_REPLICAS_MANAGER: &str = "wa8s-operator-initial-replicas";

/// Errors a reconcile returns (and `error_policy` retries with backoff). Problems a user must
/// fix are not errors here: they become conditions and events.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Desired(#[from] desired::Error),
    #[error("{0}")]
    Resolve(ResolveError),
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesAPI",
            Error::Desired(_) => "InvalidObject",
            Error::Resolve(e) => e.reason,
        }
    }
}

/// Operator settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub desired: DesiredConfig,
    /// How often a tag is resolved again (a moved tag rolls the pods).
    pub resolve_interval: Duration,
    /// Watch only this namespace (`None`: all).
    pub namespace: Option<String>,
    /// Name in events (`reportingInstance`), usually the pod name.
    pub instance: Option<String>,
    /// Reconciles in flight at once. Each holds API and registry connections (TLS buffers,
    /// a pool per client), so unbounded concurrency makes memory grow with the object count.
    pub concurrency: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            desired: DesiredConfig::default(),
            resolve_interval: Duration::from_secs(300),
            namespace: None,
            instance: None,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// Default bound on reconciles in flight.
pub const DEFAULT_CONCURRENCY: u16 = 16;

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub resolver: Arc<dyn Resolve>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    reporter: Reporter,
    failures: Mutex<HashMap<String, u32>>,
    /// Our own writes, so their watch events do not trigger reconciles.
    echoes: Arc<Echoes>,
    /// Owners owed a reconcile by `echoes` (taken by `run`).
    retriggers: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ObjectRef<WebAssembly>>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("settings", &self.settings)
            .finish()
    }
}

impl Context {
    pub fn new(
        client: Client,
        resolver: Arc<dyn Resolve>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (echoes, retriggers) = Echoes::new();
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: settings.instance.clone(),
        };
        Context {
            client,
            resolver,
            settings,
            metrics,
            reporter,
            failures: Mutex::new(HashMap::new()),
            echoes: Arc::new(echoes),
            retriggers: Mutex::new(Some(retriggers)),
        }
    }
}

fn api<K>(ctx: &Context, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves. Once per `Context`: a second run would not
/// get the reconciles owed to held watch events (the process exits when it stops leading).
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let ns = ctx.settings.namespace.clone();
    let ns = ns.as_deref();
    let owned =
        watcher::Config::default().labels(&format!("{}={MANAGER}", desired::MANAGED_BY_LABEL));
    let pods = watcher::Config::default().labels(OWNER_LABEL);
    // The cache holds every object; what reconcile never reads (managed fields, kubectl's
    // last-applied copy of the whole object) is dropped as objects arrive.
    let (reader, writer) = reflector::store();
    ctx.metrics.count_objects(reader.clone());
    // A reconcile reads an object's spec and labels; its status is ours, so our own status
    // write (a new resourceVersion, the same generation) triggers nothing.
    let mut objects_filter = triggers::Objects::default();
    let objects = watcher(api::<WebAssembly>(&ctx, ns), watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .reflect(writer)
        .filter_map(move |event| {
            std::future::ready(match event {
                Ok(event) => objects_filter.decide(event).map(Ok),
                Err(e) => Some(Err(e)),
            })
        });
    let retriggers = ctx
        .retriggers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Controller::for_stream(objects, reader)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(ctx.settings.concurrency.max(1)),
        )
        .owns_stream(relevant(&ctx, ns, &owned, triggers::deployment, None))
        .owns_stream(relevant(
            &ctx,
            ns,
            &owned,
            |s: &Service| triggers::hash_json(&s.spec),
            None,
        ))
        .owns_stream(relevant(
            &ctx,
            ns,
            &owned,
            |h: &HorizontalPodAutoscaler| triggers::hash_json(&h.spec),
            None,
        ))
        .owns_stream(relevant(
            &ctx,
            ns,
            &owned,
            |p: &PodDisruptionBudget| triggers::hash_json(&p.spec),
            None,
        ))
        // Pods are not owned directly, but a crash loop must reach status: a pod triggers
        // its object only when it starts or stops failing.
        .watches_stream(
            relevant(
                &ctx,
                ns,
                &pods,
                triggers::pod,
                Some(triggers::healthy_pod()),
            ),
            |pod| {
                let ns = pod.namespace();
                pod.labels().get(OWNER_LABEL).map(|name| {
                    ObjectRef::<WebAssembly>::new(name).within(ns.as_deref().unwrap_or(""))
                })
            },
        )
        .reconcile_on(futures::stream::unfold(retriggers, |mut rx| async move {
            let next = rx.as_mut()?.recv().await?;
            Some((next, rx))
        }))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
}

/// `K`'s watch events in scope, reduced to those worth a reconcile (see `triggers`).
fn relevant<K>(
    ctx: &Context,
    ns: Option<&str>,
    config: &watcher::Config,
    projection: fn(&K) -> u64,
    unseen: Option<u64>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    triggers::filter(
        watcher(api::<K>(ctx, ns), config.clone()).default_backoff(),
        Relevance::new(projection, unseen, ctx.echoes.clone()),
        ctx.metrics.clone(),
    )
}

/// What the operator's cache keeps of an object: all but its managed fields and kubectl's
/// last-applied annotation (often as large as the rest together).
pub fn trim(obj: &mut WebAssembly) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

fn key(obj: &WebAssembly) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Retries with exponential backoff (1 s doubling to 5 min) and ±50 % jitter, so a registry
/// outage does not make every object hit it at once.
pub fn error_policy(obj: Arc<WebAssembly>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key(&obj)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    ctx.metrics.error(err.reason());
    let base = Duration::from_secs(1u64 << n.min(9)).min(Duration::from_secs(300));
    let jitter = 0.5
        + (std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            % 1000) as f64
            / 1000.0;
    let delay = base.mul_f64(jitter);
    tracing::warn!(object = %key(&obj), attempt = n, ?delay, "reconcile failed: {err}");
    Action::requeue(delay)
}

// A span per reconcile (exported with the operator's OTLP settings), its resolve a child.
#[tracing::instrument(name = "reconcile", skip_all, fields(object = %key(&obj)))]
async fn reconcile(obj: Arc<WebAssembly>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&obj, &ctx).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key(&obj));
    }
    result
}

/// The registry credentials the kubelet would pull with: the object's `imagePullSecrets`,
/// then those of the pods' ServiceAccount (as the ServiceAccount admission copies them into
/// the pods). A missing object secret is an error the user must fix; a missing account, or a
/// secret it names, is skipped, as the kubelet skips it.
async fn pull_secrets(
    obj: &WebAssembly,
    ctx: &Context,
    ns: &str,
) -> Result<Vec<(String, String)>, ResolveError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    for r in &obj.spec.image_pull_secrets {
        let origin = format!("imagePullSecret {ns}/{}", r.name);
        match pull_secret(&secrets, &r.name, &origin).await? {
            Some(config) => out.push((origin, config)),
            None => {
                return Err(ResolveError {
                    reason: "PullSecretNotFound",
                    message: format!("{origin} does not exist"),
                    transient: false,
                });
            }
        }
    }
    let account = obj
        .spec
        .service_account_name
        .as_deref()
        .unwrap_or("default");
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    // The watch cache: an account's secrets change rarely, and this runs every reconcile.
    let found = accounts.get_with(account, &GetParams::any()).await;
    let found = match found {
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
        other => other.map(Some),
    };
    let found = found.map_err(|e| ResolveError {
        reason: "PullSecretUnreadable",
        message: format!("ServiceAccount {ns}/{account}: {e}"),
        transient: true,
    })?;
    for r in found.and_then(|a| a.image_pull_secrets).unwrap_or_default() {
        if obj.spec.image_pull_secrets.iter().any(|o| o.name == r.name) {
            continue;
        }
        let origin = format!(
            "imagePullSecret {ns}/{} of ServiceAccount {account}",
            r.name
        );
        if let Some(config) = pull_secret(&secrets, &r.name, &origin).await? {
            out.push((origin, config));
        }
    }
    Ok(out)
}

/// The `.dockerconfigjson` of secret `name`, or `None` when it does not exist.
async fn pull_secret(
    secrets: &Api<Secret>,
    name: &str,
    origin: &str,
) -> Result<Option<String>, ResolveError> {
    let secret = secrets.get_opt(name).await.map_err(|e| ResolveError {
        reason: "PullSecretUnreadable",
        message: format!("{origin}: {e}"),
        transient: true,
    })?;
    let Some(secret) = secret else {
        return Ok(None);
    };
    let data = secret.data.unwrap_or_default();
    let Some(ByteString(bytes)) = data.get(".dockerconfigjson") else {
        return Err(ResolveError {
            reason: "BadPullSecret",
            message: format!(
                "{origin} has no .dockerconfigjson (type kubernetes.io/dockerconfigjson)"
            ),
            transient: false,
        });
    };
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// Reconcile in four steps: observe what runs, resolve the module, apply the desired state
/// (unless a grant is invalid), report status and events.
async fn reconcile_inner(obj: &WebAssembly, ctx: &Context) -> Result<Action, Error> {
    if obj.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove what we made.
        return Ok(Action::await_change());
    }
    let ns = obj
        .namespace()
        .ok_or(desired::Error::MissingMetadata("namespace"))?;
    let name = obj.name_any();
    let live = observe(obj, ctx, &ns, &name).await?;
    // Parsed with the types the shim parses them with: a grant it would refuse is reported
    // at its field here rather than as a pod that cannot start.
    let invalid_grant = obj.spec.check_grants().err().map(|e| e.to_string());
    let decision = resolve(obj, ctx, &ns, &live).await;
    let (deployment, service, running) = match &decision.target {
        Some(target) if invalid_grant.is_none() => {
            let created = live.deployment.is_none();
            let applied = apply(obj, ctx, &ns, &name, target, created).await?;
            (
                applied.deployment,
                applied.service,
                Some(target.digest.clone()),
            )
        }
        _ => (live.deployment, None, live.running),
    };
    let observed = Observed {
        generation: obj.metadata.generation,
        resolution: decision.resolution,
        running,
        rollout: deployment.as_ref().map(rollout),
        pod_failure: pod_failure(ctx, &ns, &name).await?,
        service,
        selector: desired::selector_string(&name),
        invalid_grant,
    };
    report(obj, ctx, &ns, &name, &observed).await?;
    match decision.failure {
        Some(e) if e.transient => Err(Error::Resolve(e)),
        // Someone has to act (push the tag, fix the secret); look again at the normal pace.
        // Counted by reason all the same, so dashboards show it (error_policy counts the rest).
        Some(e) => {
            ctx.metrics.error(e.reason);
            Ok(Action::requeue(ctx.settings.resolve_interval))
        }
        None => Ok(Action::requeue(ctx.settings.resolve_interval)),
    }
}

/// What the cluster holds for an object before the reconcile changes anything.
#[derive(Debug)]
struct Live {
    deployment: Option<Deployment>,
    /// The digest the pods run: the Deployment's annotation, else the last status.
    running: Option<String>,
}

async fn observe(obj: &WebAssembly, ctx: &Context, ns: &str, name: &str) -> Result<Live, Error> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    // From the API server's watch cache (resourceVersion 0): every reconcile reads it, and
    // what is applied next does not depend on it being the very latest.
    let deployment = match deployments.get_with(name, &GetParams::any()).await {
        Ok(d) => Some(d),
        Err(kube::Error::Api(s)) if s.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    let running = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(wa8s_api::contract::MODULE_DIGEST_ANNOTATION).cloned())
        .or_else(|| {
            obj.status
                .as_ref()
                .and_then(|s| s.module.as_ref())
                .map(|m| m.digest.clone())
        });
    Ok(Live {
        deployment,
        running,
    })
}

/// What resolving `spec.module` decided: the condition input, the module to deploy (if
/// any), and the failure to retry or report.
#[derive(Debug)]
struct Decision {
    resolution: Resolution,
    target: Option<Resolved>,
    failure: Option<ResolveError>,
}

#[tracing::instrument(name = "resolve", skip_all, fields(module = %obj.spec.module.registry))]
async fn resolve(obj: &WebAssembly, ctx: &Context, ns: &str, live: &Live) -> Decision {
    let began = Instant::now();
    let outcome = match pull_secrets(obj, ctx, ns).await {
        Ok(secrets) => ctx.resolver.resolve(&obj.spec.module, secrets).await,
        Err(e) => Err(e),
    };
    let result = match &outcome {
        Ok(_) => "success",
        Err(e) => e.reason,
    };
    ctx.metrics.resolved(result, began.elapsed());
    let pinned = obj.spec.module.digest.clone();
    match outcome {
        Ok((reference, resolved)) => Decision {
            resolution: Resolution::Resolved {
                reference,
                digest: resolved.digest.clone(),
                pinned: pinned.is_some(),
            },
            target: Some(resolved),
            failure: None,
        },
        // A pinned digest needs no registry to be deployed: the kubelet pulls it.
        Err(e) if e.transient && pinned.is_some() => {
            let digest = pinned.unwrap_or_default();
            Decision {
                resolution: Resolution::Resolved {
                    reference: crate::resolve::reference(&obj.spec.module),
                    digest: digest.clone(),
                    pinned: true,
                },
                target: Some(Resolved {
                    digest,
                    kind: ModuleKind::Unknown,
                }),
                failure: None,
            }
        }
        Err(e) => {
            // Keep running what runs: spec changes still apply, on the last good digest.
            let kind = if live_has_service(obj, ctx, ns).await {
                ModuleKind::Http
            } else {
                ModuleKind::Cli
            };
            Decision {
                resolution: Resolution::Failed {
                    reason: e.reason.into(),
                    message: e.message.clone(),
                },
                target: live.running.clone().map(|digest| Resolved { digest, kind }),
                failure: Some(e),
            }
        }
    }
}

/// What applying the desired state left behind.
#[derive(Debug)]
struct Applied {
    deployment: Option<Deployment>,
    service: Option<ServiceStatus>,
}

async fn apply(
    obj: &WebAssembly,
    ctx: &Context,
    ns: &str,
    name: &str,
    target: &Resolved,
    created: bool,
) -> Result<Applied, Error> {
    let want = desired::desired(obj, target, &ctx.settings.desired)?;
    let pp = PatchParams::apply(MANAGER).force();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let echoes = &ctx.echoes;
    let mut deployment = echoes
        .write(
            obj,
            ns,
            name,
            deployments.patch(name, &pp, &Patch::Apply(&want.deployment)),
        )
        .await?;
    if created
        && let Some(min) = want
            .hpa
            .as_ref()
            .and_then(|h| h.spec.as_ref())
            .and_then(|s| s.min_replicas)
    {
        // With scaling the HPA owns replicas, and it does not scale up without metrics; a
        // new Deployment starts at minReplicas, set once by a separate field manager so
        // the main apply never claims (and later fights over) the field.
        let initial = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "spec": { "replicas": min },
        });
        let pp = PatchParams::apply(INITIAL_REPLICAS_MANAGER).force();
        deployment = echoes
            .write(
                obj,
                ns,
                name,
                deployments.patch(name, &pp, &Patch::Apply(initial)),
            )
            .await?;
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let service = match &want.service {
        Some(svc) => {
            echoes
                .write(obj, ns, name, services.patch(name, &pp, &Patch::Apply(svc)))
                .await?;
            Some(ServiceStatus {
                name: name.to_owned(),
                url: Some(format!("http://{name}.{ns}.svc:80")),
            })
        }
        None => {
            delete_owned(ctx, &services, name, obj).await?;
            None
        }
    };
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), ns);
    match &want.hpa {
        Some(hpa) => {
            echoes
                .write(obj, ns, name, hpas.patch(name, &pp, &Patch::Apply(hpa)))
                .await?;
        }
        None => delete_owned(ctx, &hpas, name, obj).await?,
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), ns);
    match &want.pdb {
        Some(pdb) => {
            echoes
                .write(obj, ns, name, pdbs.patch(name, &pp, &Patch::Apply(pdb)))
                .await?;
        }
        None => delete_owned(ctx, &pdbs, name, obj).await?,
    }
    Ok(Applied {
        deployment: Some(deployment),
        service,
    })
}

/// Publishes an event per changed condition and writes the status when it changed.
async fn report(
    obj: &WebAssembly,
    ctx: &Context,
    ns: &str,
    name: &str,
    observed: &Observed,
) -> Result<(), Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let new_status = status::status(obj.status.as_ref(), observed, now);
    publish_transitions(ctx, obj, obj.status.as_ref(), &new_status).await;
    if obj.status.as_ref() != Some(&new_status) {
        let api: Api<WebAssembly> = Api::namespaced(ctx.client.clone(), ns);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": new_status })),
        )
        .await?;
    }
    Ok(())
}

async fn live_has_service(obj: &WebAssembly, ctx: &Context, ns: &str) -> bool {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    matches!(services.get_opt(&obj.name_any()).await, Ok(Some(_)))
}

/// Deletes `name` if this object controls it (never something a user made by hand).
async fn delete_owned<K>(
    ctx: &Context,
    api: &Api<K>,
    name: &str,
    obj: &WebAssembly,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    // Nearly always absent: asked of the API server's watch cache (metadata only), not etcd.
    let Some(existing) = api.get_metadata_opt_with(name, &GetParams::any()).await? else {
        return Ok(());
    };
    let ours = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == obj.metadata.uid.as_ref() && o.controller == Some(true));
    if ours {
        ctx.echoes.deleting(&existing);
        api.delete(name, &DeleteParams::background()).await?;
    }
    Ok(())
}

pub(crate) fn rollout(d: &Deployment) -> Rollout {
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let stalled = st.conditions.iter().flatten().find_map(|c| {
        (c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
        .then(|| {
            c.message
                .clone()
                .unwrap_or_else(|| "the rollout stalled".into())
        })
    });
    Rollout {
        desired: spec_replicas,
        replicas: st.replicas.unwrap_or(0),
        updated: st.updated_replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        observed: st.observed_generation >= d.metadata.generation,
        stalled,
    }
}

/// The first pod that cannot run its module, with the reason the kubelet gives and the
/// message the shim left.
async fn pod_failure(ctx: &Context, ns: &str, name: &str) -> Result<Option<PodFailure>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    // From the API server's watch cache: a pod's failure shows a moment later at worst, and
    // its change triggers another reconcile anyway.
    let list = pods
        .list(
            &ListParams::default()
                .labels(&desired::selector_string(name))
                .match_any(),
        )
        .await?;
    Ok(list.iter().find_map(failure_of))
}

/// Why `pod` cannot run its module, if it cannot.
pub(crate) fn failure_of(pod: &Pod) -> Option<PodFailure> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    for cs in statuses {
        let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
        let terminated_now = cs.state.as_ref().and_then(|s| s.terminated.as_ref());
        let last = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        let bad_wait = waiting.and_then(|w| w.reason.clone()).filter(|r| {
            matches!(
                r.as_str(),
                "CrashLoopBackOff"
                    | "CreateContainerError"
                    | "RunContainerError"
                    | "ImagePullBackOff"
                    | "ErrImagePull"
                    | "InvalidImageName"
            )
        });
        let failed_exit = terminated_now.filter(|t| t.exit_code != 0);
        if bad_wait.is_none() && failed_exit.is_none() {
            continue;
        }
        let detail = failed_exit
            .or(last)
            .and_then(|t| {
                t.message.clone().or_else(|| {
                    t.reason
                        .clone()
                        .map(|r| format!("{r} (exit code {})", t.exit_code))
                })
            })
            .or_else(|| waiting.and_then(|w| w.message.clone()))
            .unwrap_or_else(|| "the container keeps failing".into());
        return Some(PodFailure {
            pod: pod.name_any(),
            reason: bad_wait.unwrap_or_else(|| "ModuleFailed".into()),
            message: detail.trim().to_owned(),
        });
    }
    None
}

async fn publish_transitions(
    ctx: &Context,
    obj: &WebAssembly,
    before: Option<&WebAssemblyStatus>,
    after: &WebAssemblyStatus,
) {
    let reference = obj.object_ref(&());
    // A recorder per reconcile: kube's keeps every event it sent for six minutes to count
    // repeats into a series, which for a burst of objects is most of the operator's memory.
    // The cost: an object flapping between two states gets an Event per flip, not a series.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for c in status::transitions(before, after) {
        let healthy = match c.type_.as_str() {
            status::DEGRADED | status::PROGRESSING => c.status == "False",
            _ => c.status == "True",
        };
        let event = Event {
            type_: if healthy {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: c.reason.clone(),
            note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::debug!("publishing an event failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, Call, DIGEST, FakeResolver, NAME, NS, Scenario, Seen};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    /// Reconciles `obj` against the mock API server following `scenario`, and returns the
    /// reconcile's result and the calls the server saw.
    async fn reconcile_with(
        obj: WebAssembly,
        resolver: FakeResolver,
        scenario: Scenario,
    ) -> (Result<Action, Error>, Vec<Seen>) {
        let (ctx, handle) = fixtures::context(resolver);
        let calls: Vec<Call> = scenario.calls(&obj);
        let server = fixtures::serve(handle, calls);
        let result = reconcile(Arc::new(obj), ctx).await;
        let seen = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the mock API server finished")
            .expect("the scenario ran as scripted");
        (result, seen)
    }

    fn http_module() -> FakeResolver {
        FakeResolver(Ok(Resolved {
            digest: DIGEST.into(),
            kind: ModuleKind::Http,
        }))
    }

    /// The Deployment the reconcile applied (the body of its PATCH).
    fn applied_deployment(seen: &[Seen]) -> serde_json::Value {
        seen.iter()
            .find(|s| s.path.contains("/deployments/") && !s.body.is_null())
            .map(|s| s.body.clone())
            .expect("a Deployment applied")
    }

    /// The status the reconcile wrote, from the last call.
    fn written_status(seen: &[Seen]) -> WebAssemblyStatus {
        let last = seen.last().expect("calls");
        assert!(last.path.ends_with("/status"), "{}", last.path);
        serde_json::from_value(last.body["status"].clone()).expect("a status")
    }

    fn condition<'a>(status: &'a WebAssemblyStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    /// The object as its first reconcile left it (with that status), and the Deployment that
    /// reconcile applied.
    async fn after_first_apply() -> (WebAssembly, serde_json::Value) {
        let obj = fixtures::object(spec());
        let (_, first) = reconcile_with(obj.clone(), http_module(), Scenario::FirstApply).await;
        let obj = WebAssembly {
            status: Some(written_status(&first)),
            ..obj
        };
        (obj, applied_deployment(&first))
    }

    fn spec() -> serde_json::Value {
        json!({ "module": { "registry": "ghcr.io/a/hello", "tag": "v1" } })
    }

    #[tokio::test]
    async fn a_new_object_gets_its_deployment_and_service_and_a_status_that_is_not_ready_yet() {
        let (result, seen) = reconcile_with(
            fixtures::object(spec()),
            http_module(),
            Scenario::FirstApply,
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        let deployment: Deployment =
            serde_json::from_value(applied_deployment(&seen)).expect("the applied Deployment");
        let pod = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("a pod spec");
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some(format!("ghcr.io/a/hello@{DIGEST}").as_str())
        );
        let status = written_status(&seen);
        let ready = condition(&status, status::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PodsNotReady")
        );
        assert_eq!(condition(&status, status::MODULE_RESOLVED).status, "True");
        assert_eq!(
            status.service.map(|s| s.url),
            Some(Some(format!("http://{NAME}.{NS}.svc:80")))
        );
        assert_eq!(status.module.map(|m| m.digest).as_deref(), Some(DIGEST));
    }

    #[tokio::test]
    async fn once_the_rollout_completes_ready_turns_true_with_events_for_the_changes_only() {
        let (obj, mut live) = after_first_apply().await;
        live["metadata"]["generation"] = json!(1);
        live["status"] = json!({ "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                                 "readyReplicas": 1, "availableReplicas": 1 });
        let before = obj.status.clone().expect("the first status");
        let (result, seen) =
            reconcile_with(obj, http_module(), Scenario::RolloutComplete(live)).await;
        assert!(result.is_ok(), "{result:?}");
        let after = written_status(&seen);
        let ready = condition(&after, status::READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Available")
        );
        assert_eq!(condition(&after, status::PROGRESSING).reason, "Complete");
        // Unchanged conditions keep their transition time.
        assert_eq!(
            condition(&after, status::MODULE_RESOLVED).last_transition_time,
            condition(&before, status::MODULE_RESOLVED).last_transition_time
        );
        assert_eq!(after.ready_replicas, Some(1));
    }

    #[tokio::test]
    async fn a_registry_outage_keeps_the_running_digest_applied_and_asks_for_a_retry() {
        let (obj, live) = after_first_apply().await;
        let outage = FakeResolver(Err(ResolveError {
            reason: "RegistryUnavailable",
            message: "ghcr.io: connection refused".into(),
            transient: true,
        }));
        let (result, seen) =
            reconcile_with(obj, outage, Scenario::RegistryOutage(live.clone())).await;
        assert!(
            matches!(&result, Err(Error::Resolve(e)) if e.reason == "RegistryUnavailable"),
            "a transient failure is returned for error_policy's backoff: {result:?}"
        );
        // The same Deployment (the running digest, an HTTP module) is applied again.
        assert_eq!(applied_deployment(&seen), live);
        let status = written_status(&seen);
        let resolved = condition(&status, status::MODULE_RESOLVED);
        assert_eq!(
            (resolved.status.as_str(), resolved.reason.as_str()),
            ("False", "RegistryUnavailable")
        );
        assert!(
            resolved.message.contains("pods keep running"),
            "{}",
            resolved.message
        );
        assert_eq!(condition(&status, status::DEGRADED).status, "True");
        assert_eq!(status.module.map(|m| m.digest).as_deref(), Some(DIGEST));
    }

    #[tokio::test]
    async fn a_tag_that_does_not_resolve_deploys_nothing_and_reports_the_registrys_reason() {
        let missing = FakeResolver(Err(ResolveError {
            reason: "TagNotFound",
            message: "ghcr.io/a/hello:v1 does not exist".into(),
            transient: false,
        }));
        let (result, seen) =
            reconcile_with(fixtures::object(spec()), missing, Scenario::ResolveFailed).await;
        assert!(
            result.is_ok(),
            "a user's mistake is not retried as an error: {result:?}"
        );
        let status = written_status(&seen);
        for type_ in [status::READY, status::MODULE_RESOLVED] {
            let c = condition(&status, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "TagNotFound")
            );
            assert!(c.message.contains("does not exist"), "{}", c.message);
        }
        assert_eq!(status.module, None);
    }

    #[tokio::test]
    async fn an_invalid_grant_creates_no_deployment_and_names_the_field() {
        let mut spec = spec();
        spec["wasi"] = json!({ "network": [{ "outbound": true,
            "allowedHosts": ["api.example.com", "*.example.org:443", "example.com:99999"] }] });
        let (result, seen) = reconcile_with(
            fixtures::object(spec),
            http_module(),
            Scenario::NothingApplied,
        )
        .await;
        assert!(result.is_ok(), "{result:?}");
        let status = written_status(&seen);
        for type_ in [status::READY, status::DEGRADED] {
            let c = condition(&status, type_);
            assert_eq!(c.reason, status::INVALID_GRANT);
            assert!(
                c.message
                    .starts_with("spec.wasi.network[0].allowedHosts[2]: ")
                    && c.message.contains("the port must be 1-65535"),
                "{}",
                c.message
            );
        }
        assert_eq!(condition(&status, status::READY).status, "False");
    }

    #[test]
    fn the_cache_drops_managed_fields_and_the_last_applied_copy_and_keeps_the_rest() {
        let mut obj: WebAssembly = serde_json::from_value(json!({
            "apiVersion": "wa8s.reconciler.io/v1",
            "kind": "WebAssembly",
            "metadata": {
                "name": "x",
                "namespace": "ns",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"big\":true}",
                    "team": "platform",
                },
                "managedFields": [{ "manager": "kubectl", "operation": "Apply",
                                     "fieldsType": "FieldsV1", "fieldsV1": { "f:spec": {} } }],
            },
            "spec": { "module": { "registry": "ghcr.io/a/b", "tag": "v1" } },
            "status": { "observedGeneration": 3 },
        }))
        .expect("a valid object");
        let spec = obj.spec.clone();
        let status = obj.status.clone();
        trim(&mut obj);
        assert!(obj.managed_fields().is_empty());
        assert_eq!(obj.annotations().keys().collect::<Vec<_>>(), vec!["team"]);
        assert_eq!(obj.spec, spec);
        assert_eq!(obj.status, status);
    }
}
