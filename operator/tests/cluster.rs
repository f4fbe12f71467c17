//! The operator against a real kube-apiserver + etcd + kube-controller-manager and a real
//! registry. Each test runs its own controller scoped to its own namespace.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::sync::oneshot;
use wa8s_api::WebAssembly;
use wa8s_e2e::{ControlPlane, Namespace, Registry};
use wa8s_oci::RegistryConfig;
use wa8s_operator::controller::{self, Context, Settings};
use wa8s_operator::metrics::Metrics;
use wa8s_operator::resolve::OciResolver;
use wa8s_test_components as guests;

/// How long anything the controller does may take to show.
const DEADLINE: Duration = Duration::from_secs(60);

/// A client that acts as the operator's ServiceAccount in `ns`, bound to exactly the rules
/// in operator/rbac/operator.yaml: what the tests exercise, the RBAC must allow.
async fn operator_client(cp: &ControlPlane, ns: &Namespace) -> Result<Client> {
    let kubectl = cp.kubectl();
    let rbac = wa8s_e2e::repo_root().join("operator/rbac/operator.yaml");
    let n = ns.name();
    {
        // The ClusterRole is shared by every test; concurrent applies of it would race.
        static RBAC: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = RBAC.lock().unwrap_or_else(|p| p.into_inner());
        kubectl.ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=wa8s-e2e",
            "-n",
            n,
            "-f",
            &rbac.to_string_lossy(),
        ])?;
    }
    kubectl.ok(&["-n", n, "create", "serviceaccount", "wa8s-operator"])?;
    kubectl.ok(&[
        "create",
        "clusterrolebinding",
        &format!("wa8s-operator-{n}"),
        "--clusterrole=wa8s-operator",
        &format!("--serviceaccount={n}:wa8s-operator"),
    ])?;
    kubectl.ok(&[
        "-n",
        n,
        "create",
        "rolebinding",
        "wa8s-operator-leader-election",
        "--role=wa8s-operator-leader-election",
        &format!("--serviceaccount={n}:wa8s-operator"),
    ])?;
    let mut kubeconfig = Kubeconfig::read_from(cp.kubeconfig())?;
    for auth in &mut kubeconfig.auth_infos {
        if let Some(info) = auth.auth_info.as_mut() {
            info.impersonate = Some(format!("system:serviceaccount:{n}:wa8s-operator"));
            info.impersonate_groups = Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{n}"),
                "system:authenticated".into(),
            ]);
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

struct Harness {
    cp: &'static ControlPlane,
    ns: Namespace,
    registry: Registry,
    client: Client,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// A namespace, a registry that stands in for ghcr.io (a mirror, as in an air-gapped
    /// cluster), and a controller watching only that namespace.
    async fn start(prefix: &str, resolve_interval: Duration) -> Result<Self> {
        Self::start_with(prefix, resolve_interval, Registry::start()?).await
    }

    /// As [`Harness::start`], with `registry` as the stand-in for ghcr.io.
    async fn start_with(
        prefix: &str,
        resolve_interval: Duration,
        registry: Registry,
    ) -> Result<Self> {
        wa8s_operator::install_crypto_provider();
        let cp = ControlPlane::shared_with_controller_manager().map_err(anyhow::Error::msg)?;
        let kubectl = cp.kubectl();
        kubectl.install_crd()?;
        let ns = kubectl.namespace(prefix)?;
        let client = operator_client(cp, &ns).await?;
        let resolver = OciResolver::new(
            RegistryConfig {
                mirrors: [("ghcr.io".to_owned(), registry.addr().to_owned())].into(),
                ..RegistryConfig::default()
            },
            resolve_interval / 2,
        );
        let metrics = Arc::new(Metrics::new());
        let ctx = Arc::new(Context::new(
            client.clone(),
            Arc::new(resolver),
            Settings {
                resolve_interval,
                namespace: Some(ns.name().to_owned()),
                ..Settings::default()
            },
            metrics.clone(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(controller::run(ctx, async move {
            let _ = stopped.await;
        }));
        Ok(Harness {
            cp,
            ns,
            registry,
            client,
            metrics,
            stop: Some(stop),
            done: Some(done),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), self.ns.name())
    }

    async fn push(&self, repo_tag: &str, wasm: &[u8]) -> Result<String> {
        let wa8s = wa8s_oci::Registry::new(wa8s_oci::RegistryOptions::default());
        Ok(wa8s
            .push(wasm, &format!("{}/{repo_tag}", self.registry.addr()))
            .await?
            .digest)
    }

    fn apply(&self, manifest: &str) -> Result<()> {
        let out = self.cp.kubectl().apply(self.ns.name(), manifest)?;
        if !out.success {
            bail!("kubectl apply failed: {}", out.stderr);
        }
        Ok(())
    }

    /// Polls `check` until it yields a value or the deadline passes.
    async fn eventually<T, F, Fut>(&self, what: &str, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = String::new();
        loop {
            match check().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = format!("{e:#}"),
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{what} did not happen within {DEADLINE:?} {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn condition(&self, name: &str, type_: &str) -> Result<Option<(String, String, String)>> {
        let obj = self.api::<WebAssembly>().get(name).await?;
        Ok(obj.status.and_then(|s| {
            s.conditions
                .into_iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status, c.reason, c.message))
        }))
    }

    async fn image(&self, name: &str) -> Result<Option<String>> {
        let d = self.api::<Deployment>().get_opt(name).await?;
        Ok(d.and_then(|d| d.spec)
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.first().and_then(|c| c.image.clone())))
    }

    async fn stop(mut self) -> Result<()> {
        let _ = self.cp.kubectl().run(&[
            "delete",
            "clusterrolebinding",
            &format!("wa8s-operator-{}", self.ns.name()),
        ]);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(30), d)
                .await
                .context("the controller did not stop")??;
        }
        Ok(())
    }
}

/// The same component with a custom section appended: another digest, same behaviour.
/// Pushes the HTTP test component to a registry that wants `user`'s password; its digest.
async fn push_as(user: &str, password: &str, reference: &str) -> Result<String> {
    let pusher = wa8s_oci::Registry::new(wa8s_oci::RegistryOptions {
        credentials: wa8s_oci::Credentials {
            explicit: Some((user.into(), password.into())),
            ..wa8s_oci::Credentials::default()
        },
        ..wa8s_oci::RegistryOptions::default()
    });
    Ok(pusher.push(guests::HTTP_COMPONENT, reference).await?.digest)
}

fn with_note(component: &[u8], note: &[u8]) -> Vec<u8> {
    let name = b"note";
    let len = 1 + name.len() + note.len();
    assert!(len < 128, "a one-byte LEB128 length");
    let mut out = component.to_vec();
    out.extend([0, len as u8, name.len() as u8]);
    out.extend(name);
    out.extend(note);
    out
}

fn seed_manifest() -> Result<String> {
    let path = wa8s_e2e::shared_dir().join("fixtures/seed-deploy.yaml");
    std::fs::read_to_string(&path).with_context(|| path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_manifest_becomes_a_pinned_deployment_a_service_and_a_memory_hpa() -> Result<()> {
    let h = Harness::start("op-seed", Duration::from_secs(300)).await?;
    let digest = h
        .push("myorg/image-processor:v1.2.3", guests::HTTP_COMPONENT)
        .await?;
    h.apply(&seed_manifest()?)?;

    let want = format!("ghcr.io/myorg/image-processor@{digest}");
    let image = h
        .eventually("the Deployment", || async {
            h.image("image-processor").await
        })
        .await?;
    assert_eq!(image, want, "pods are pinned to the digest the tag named");

    let svc = h.api::<Service>().get("image-processor").await?;
    let port = &svc.spec.context("service spec")?.ports.context("ports")?[0];
    assert_eq!(port.port, 80);
    let hpa = h
        .api::<HorizontalPodAutoscaler>()
        .get("image-processor")
        .await?;
    let spec = hpa.spec.context("hpa spec")?;
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 100));
    let metric = &spec.metrics.context("metrics")?[0];
    let resource = metric.resource.as_ref().context("resource")?;
    assert_eq!(
        (resource.name.as_str(), resource.target.average_utilization),
        ("memory", Some(80))
    );

    let (status, reason, _) = h
        .eventually("ModuleResolved", || async {
            h.condition("image-processor", "ModuleResolved").await
        })
        .await?;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Resolved"));
    let obj = h.api::<WebAssembly>().get("image-processor").await?;
    let st = obj.status.context("status")?;
    assert_eq!(
        st.module.as_ref().map(|m| m.digest.as_str()),
        Some(digest.as_str())
    );
    assert_eq!(st.observed_generation, obj.metadata.generation);
    assert_eq!(
        st.selector.as_deref(),
        Some(
            "app.kubernetes.io/instance=image-processor,wa8s.reconciler.io/webassembly=image-processor"
        )
    );
    // No kubelet runs here: the pods exist (the Deployment controller made them) but none is
    // ready, and Ready says exactly that.
    let (ready, reason, message) = h
        .eventually("Ready with pod counts", || async {
            Ok(h.condition("image-processor", "Ready")
                .await?
                .filter(|(_, r, _)| r == "PodsNotReady"))
        })
        .await?;
    assert_eq!(ready, "False");
    assert_eq!(reason, "PodsNotReady");
    assert!(message.ends_with("/2 pods ready"), "{message}");

    // Deleting the object garbage-collects what the operator made.
    h.cp.kubectl().ok(&[
        "-n",
        h.ns.name(),
        "delete",
        "wasm",
        "image-processor",
        "--wait=true",
    ])?;
    h.eventually("garbage collection", || async {
        let gone = h
            .api::<Deployment>()
            .get_opt("image-processor")
            .await?
            .is_none()
            && h.api::<Service>()
                .get_opt("image-processor")
                .await?
                .is_none()
            && h.api::<HorizontalPodAutoscaler>()
                .get_opt("image-processor")
                .await?
                .is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_tag_rolls_the_deployment_to_the_new_digest() -> Result<()> {
    let h = Harness::start("op-roll", Duration::from_secs(1)).await?;
    let first = h.push("myorg/roll:v1", guests::HTTP_COMPONENT).await?;
    h.apply(
        "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: roll\nspec:\n  module:\n    registry: ghcr.io/myorg/roll\n    tag: v1\n  replicas: 1\n",
    )?;
    h.eventually("the first digest", || async {
        Ok(h.image("roll").await?.filter(|i| i.ends_with(&first)))
    })
    .await?;
    // Same tag, different component.
    let second = h
        .push("myorg/roll:v1", &with_note(guests::HTTP_COMPONENT, b"v2"))
        .await?;
    assert_ne!(first, second);
    h.eventually("the second digest", || async {
        Ok(h.image("roll").await?.filter(|i| i.ends_with(&second)))
    })
    .await?;
    // kubectl scale goes through the scale subresource to the Deployment.
    h.cp.kubectl()
        .ok(&["-n", h.ns.name(), "scale", "wasm", "roll", "--replicas=3"])?;
    h.eventually("three replicas", || async {
        let d = h.api::<Deployment>().get("roll").await?;
        Ok(d.spec.and_then(|s| s.replicas).filter(|r| *r == 3))
    })
    .await?;
    h.stop().await
}

impl Harness {
    fn reconciles(&self) -> u64 {
        wa8s_operator::metrics::reconciles_in(&self.metrics.encode())
    }

    /// Waits until no reconcile has run for `quiet`; the count then.
    async fn settled(&self, quiet: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = self.reconciles();
        loop {
            tokio::time::sleep(quiet).await;
            let now = self.reconciles();
            if now == last {
                return Ok(now);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("reconciles did not stop within {DEADLINE:?} ({now} so far)");
            }
            last = now;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_only_write_triggers_no_reconcile_and_a_deleted_service_is_made_again()
-> Result<()> {
    let h = Harness::start("op-echo", Duration::from_secs(300)).await?;
    h.push("myorg/echo:v1", guests::HTTP_COMPONENT).await?;
    h.apply(
        "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: echo\nspec:\n  module:\n    registry: ghcr.io/myorg/echo\n    tag: v1\n  replicas: 1\n",
    )?;
    h.eventually("ModuleResolved", || async {
        h.condition("echo", "ModuleResolved").await
    })
    .await?;
    // The Deployment controller makes a pod (no kubelet runs it); then nothing moves.
    let before = h.settled(Duration::from_secs(2)).await?;

    // A write to status alone, as the operator's own status writes are: same generation.
    h.cp.kubectl().ok(&[
        "-n",
        h.ns.name(),
        "patch",
        "wasm",
        "echo",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"readyReplicas":42}}"#,
    ])?;
    // An absence has no event to wait on: a window, as long as the quiet period above.
    // (A later change as a barrier does not work: a label also rolls the pods.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.reconciles(), before, "a status-only write was reconciled");
    let obj = h.api::<WebAssembly>().get("echo").await?;
    assert_eq!(
        obj.status.and_then(|s| s.ready_replicas),
        Some(42),
        "nothing reconciled the object (which would have corrected its status)"
    );

    // What the operator made and someone removed still triggers it.
    h.cp.kubectl().ok(&[
        "-n",
        h.ns.name(),
        "delete",
        "service",
        "echo",
        "--wait=true",
    ])?;
    h.eventually("the Service made again", || async {
        Ok(h.api::<Service>().get_opt("echo").await?)
    })
    .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_problems_become_conditions_a_user_can_act_on() -> Result<()> {
    let h = Harness::start("op-bad", Duration::from_secs(300)).await?;
    // A tag nobody pushed.
    h.apply(
        "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: missing\nspec:\n  module:\n    registry: ghcr.io/myorg/missing\n    tag: v9\n",
    )?;
    // A registry that does not answer (nothing listens on port 9 here).
    h.apply(
        "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: unreachable\nspec:\n  module:\n    registry: 127.0.0.1:9/myorg/app\n    tag: v1\n",
    )?;
    let (status, reason, message) = h
        .eventually("TagNotFound", || async {
            h.condition("missing", "ModuleResolved").await
        })
        .await?;
    assert_eq!((status.as_str(), reason.as_str()), ("False", "TagNotFound"));
    assert!(message.contains("myorg/missing:v9"), "{message}");
    let (_, ready_reason, _) = h.condition("missing", "Ready").await?.context("Ready")?;
    assert_eq!(ready_reason, "TagNotFound");
    assert!(h.image("missing").await?.is_none(), "nothing deployed");

    let (status, reason, _) = h
        .eventually("RegistryUnavailable", || async {
            h.condition("unreachable", "ModuleResolved").await
        })
        .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RegistryUnavailable")
    );

    // The transitions were also announced as events on the object.
    let events = h
        .eventually("a TagNotFound event", || async {
            let out = h.cp.kubectl().ok(&[
                "-n",
                h.ns.name(),
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=missing",
                "-o",
                "jsonpath={.items[*].reason}",
            ])?;
            Ok(out.contains("TagNotFound").then_some(out))
        })
        .await?;
    assert!(events.contains("TagNotFound"), "{events}");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_stops_renewing() -> Result<()> {
    use k8s_openapi::api::coordination::v1::Lease;
    use wa8s_operator::leader::LeaderElection;
    let h = Harness::start("op-lease", Duration::from_secs(300)).await?;
    let leases: Api<Lease> = h.api();
    let lease = Duration::from_secs(3);
    let first = LeaderElection::new(leases.clone(), "wa8s-operator", "replica-a", lease);
    let second = LeaderElection::new(leases.clone(), "wa8s-operator", "replica-b", lease);
    tokio::time::timeout(Duration::from_secs(10), first.acquire())
        .await
        .context("the first replica did not get a free lease")??;
    // While the first renews, the second waits.
    let holding = tokio::spawn(async move { first.hold().await });
    let waiting = tokio::spawn(async move { second.acquire().await });
    let held = |holder: &'static str| {
        let leases = leases.clone();
        move || {
            let leases = leases.clone();
            async move {
                let l = leases.get("wa8s-operator").await?;
                let who = l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
                Ok((who == holder).then_some(()))
            }
        }
    };
    h.eventually("replica-a holding", held("replica-a")).await?;
    assert!(
        !waiting.is_finished(),
        "the second replica took a held lease"
    );
    // The first stops renewing (as if it crashed): the second takes over after expiry.
    holding.abort();
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .context("the second replica never took over")???;
    h.eventually("replica-b holding", held("replica-b")).await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_registry_credentials_end_in_a_permanent_auth_failed_condition_and_right_ones_resolve()
-> Result<()> {
    use wa8s_e2e::registry::Users;
    let registry = Registry::start_with(Users(vec![("alice".into(), "s3cret".into())]))?;
    let addr = registry.addr().to_owned();
    let h = Harness::start_with("op-auth", Duration::from_secs(300), registry).await?;
    // /metrics as Prometheus scrapes it.
    let http = wa8s_operator::http::serve(
        "127.0.0.1:0".parse()?,
        h.metrics.clone(),
        wa8s_operator::http::Readiness::default(),
    )
    .await?;
    let scrape = || wa8s_e2e::http::get(&http.to_string(), "/metrics", Duration::from_secs(5));

    let digest = push_as("alice", "s3cret", &format!("{addr}/myorg/private:v1")).await?;
    let kubectl = h.cp.kubectl();
    let n = h.ns.name();
    for (name, password) in [("wrong", "nope"), ("right", "s3cret")] {
        kubectl.ok(&[
            "create",
            "secret",
            "docker-registry",
            name,
            "-n",
            n,
            &format!("--docker-server={addr}"),
            "--docker-username=alice",
            &format!("--docker-password={password}"),
        ])?;
    }
    let manifest = |secret: &str| {
        format!(
            "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: private\nspec:\n  module:\n    registry: {addr}/myorg/private\n    tag: v1\n  imagePullSecrets:\n    - name: {secret}\n"
        )
    };
    h.apply(&manifest("wrong"))?;
    let (status, reason, message) = h
        .eventually("AuthFailed", || async {
            h.condition("private", "ModuleResolved").await
        })
        .await?;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AuthFailed"),
        "{message}"
    );
    assert!(
        message.contains(&addr),
        "the message does not name the registry: {message}"
    );
    assert!(h.image("private").await?.is_none(), "nothing deployed");

    // Permanent: no retries while nothing changes. Retries back off from 1 s (1 + 2 + 4 s:
    // three in 8 s); the status write may echo back as one more reconcile.
    let (status, body) = scrape()?;
    assert_eq!(status, 200);
    assert!(
        body.contains("wa8s_operator_reconcile_errors_total{reason=\"AuthFailed\"}"),
        "{body}"
    );
    let before = wa8s_operator::metrics::reconciles_in(&body);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = wa8s_operator::metrics::reconciles_in(&scrape()?.1);
    assert!(
        after <= before + 1,
        "{} reconciles in 8 s with nothing changed",
        after - before
    );

    // Fixing the object's secret is a change: it resolves and deploys.
    h.apply(&manifest("right"))?;
    let image = h
        .eventually("the Deployment", || async { h.image("private").await })
        .await?;
    assert_eq!(image, format!("{addr}/myorg/private@{digest}"));
    h.eventually("ModuleResolved=True", || async {
        let c = h.condition("private", "ModuleResolved").await?;
        Ok(c.filter(|(status, _, _)| status == "True"))
    })
    .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_tag_resolves_with_the_pull_secrets_of_the_pods_service_account() -> Result<()> {
    use wa8s_e2e::registry::Users;
    let registry = Registry::start_with(Users(vec![("bob".into(), "hunter2".into())]))?;
    let addr = registry.addr().to_owned();
    let h = Harness::start_with("op-account", Duration::from_secs(300), registry).await?;
    let digest = push_as("bob", "hunter2", &format!("{addr}/myorg/private:v1")).await?;
    let kubectl = h.cp.kubectl();
    let n = h.ns.name();
    kubectl.ok(&[
        "create",
        "secret",
        "docker-registry",
        "registry",
        "-n",
        n,
        &format!("--docker-server={addr}"),
        "--docker-username=bob",
        "--docker-password=hunter2",
    ])?;
    // A named account, and the namespace's default one, each holding the secret: neither
    // object names a secret itself, as the kubelet would pull for them.
    let account = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: puller\nimagePullSecrets:\n  - name: registry\n";
    let applied = kubectl.apply(n, account)?;
    assert!(applied.success, "{}", applied.stderr);
    kubectl.ok(&[
        "patch",
        "serviceaccount",
        "default",
        "-n",
        n,
        "-p",
        r#"{"imagePullSecrets":[{"name":"registry"}]}"#,
    ])?;
    let manifest = |name: &str, account: &str| {
        format!(
            "apiVersion: wa8s.reconciler.io/v1\nkind: WebAssembly\nmetadata:\n  name: {name}\nspec:\n  module:\n    registry: {addr}/myorg/private\n    tag: v1\n{account}"
        )
    };
    h.apply(&manifest("named", "  serviceAccountName: puller\n"))?;
    h.apply(&manifest("default", ""))?;
    for name in ["named", "default"] {
        let image = h
            .eventually("the Deployment", || async { h.image(name).await })
            .await
            .with_context(|| format!("{name} did not resolve"))?;
        assert_eq!(image, format!("{addr}/myorg/private@{digest}"));
    }
    let d = h.api::<Deployment>().get("named").await?;
    let pod = d
        .spec
        .and_then(|s| s.template.spec)
        .context("a pod template")?;
    assert_eq!(pod.service_account_name.as_deref(), Some("puller"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    h.stop().await
}
