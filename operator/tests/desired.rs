//! Golden snapshots of what the operator applies for the users' manifest and a few variants.
//! A change to desired state shows up as a readable YAML diff; when it is intended, refresh
//! the files with `WA8S_UPDATE_GOLDEN=1 cargo test -p wa8s-operator --test desired`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use wa8s_api::WebAssembly;
use wa8s_operator::desired::{Config, Desired, ModuleKind, Resolved, desired};

const DIGEST: &str = "sha256:3f1c0d1e2f3a4b5c6d7e8f90112233445566778899aabbccddeeff0011223344";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(path: &Path) -> Result<WebAssembly> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut obj: WebAssembly = yaml_serde::from_str(&text)?;
    obj.metadata.namespace = Some("apps".into());
    obj.metadata.uid = Some("5b7c9a4e-0000-4000-8000-000000000001".into());
    Ok(obj)
}

fn render(d: &Desired) -> Result<String> {
    let mut docs = vec![yaml_serde::to_string(&d.deployment)?];
    if let Some(s) = &d.service {
        docs.push(yaml_serde::to_string(s)?);
    }
    if let Some(h) = &d.hpa {
        docs.push(yaml_serde::to_string(h)?);
    }
    if let Some(p) = &d.pdb {
        docs.push(yaml_serde::to_string(p)?);
    }
    Ok(docs.join("---\n"))
}

fn golden(name: &str, actual: &str) -> Result<()> {
    let path = repo()
        .join("operator/tests/golden")
        .join(format!("{name}.yaml"));
    if std::env::var_os("WA8S_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual)?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing: run with WA8S_UPDATE_GOLDEN=1",
            path.display()
        )
    })?;
    assert!(
        expected == actual,
        "desired state for {name} changed; if intended, run with WA8S_UPDATE_GOLDEN=1.\n--- {}\n{expected}\n+++ actual\n{actual}",
        path.display()
    );
    Ok(())
}

fn resolved(kind: ModuleKind) -> Resolved {
    Resolved {
        digest: DIGEST.into(),
        kind,
    }
}

#[test]
fn the_users_manifest_becomes_a_deployment_service_and_memory_hpa() -> Result<()> {
    let obj = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    let d = desired(&obj, &resolved(ModuleKind::Http), &Config::default())?;
    golden("seed", &render(&d)?)?;

    let hpa = d.hpa.context("scaling gives an HPA")?;
    let spec = hpa.spec.context("hpa spec")?;
    assert_eq!(spec.min_replicas, Some(2));
    assert_eq!(spec.max_replicas, 100);
    let metric = &spec.metrics.context("metrics")?[0];
    let resource = metric.resource.as_ref().context("resource metric")?;
    assert_eq!(resource.name, "memory");
    assert_eq!(resource.target.average_utilization, Some(80));
    let deployment = d.deployment.spec.context("deployment spec")?;
    assert_eq!(deployment.replicas, None, "the HPA owns replicas");
    let pod = deployment.template.spec.context("pod spec")?;
    assert_eq!(pod.runtime_class_name.as_deref(), Some("wa8s"));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some(format!("ghcr.io/myorg/image-processor@{DIGEST}").as_str())
    );
    Ok(())
}

#[test]
fn every_field_and_the_cpu_scaling_example_render_as_recorded() -> Result<()> {
    for name in ["every-field", "scaling-cpu"] {
        let obj = load(&repo().join("examples").join(format!("{name}.yaml")))?;
        let d = desired(&obj, &resolved(ModuleKind::Http), &Config::default())?;
        golden(name, &render(&d)?)?;
    }
    Ok(())
}

#[test]
fn a_cli_module_gets_no_service_and_no_probe_and_fixed_replicas_without_scaling() -> Result<()> {
    let mut obj = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    obj.spec.scaling = None;
    obj.spec.replicas = Some(3);
    let d = desired(&obj, &resolved(ModuleKind::Cli), &Config::default())?;
    assert!(d.service.is_none());
    assert!(d.hpa.is_none());
    let spec = d.deployment.spec.context("spec")?;
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.context("pod")?;
    assert!(pod.containers[0].readiness_probe.is_none());
    assert!(pod.containers[0].ports.is_none());
    Ok(())
}

#[test]
fn fs_grants_become_volumes_bounded_by_max_size_and_read_only_mounts() -> Result<()> {
    let obj = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    let d = desired(&obj, &resolved(ModuleKind::Http), &Config::default())?;
    let pod = pod_spec(d)?;
    let mounts = pod.containers[0].volume_mounts.clone().context("mounts")?;
    let config = mounts
        .iter()
        .find(|m| m.mount_path == "/config")
        .context("/config")?;
    assert_eq!(config.read_only, Some(true));
    let tmp = mounts
        .iter()
        .find(|m| m.mount_path == "/tmp")
        .context("/tmp")?;
    assert_eq!(tmp.read_only, None);
    let volumes = pod.volumes.context("volumes")?;
    let tmp_volume = volumes
        .iter()
        .find(|v| v.name == tmp.name)
        .context("tmp volume")?;
    assert_eq!(
        tmp_volume
            .empty_dir
            .as_ref()
            .and_then(|e| e.size_limit.as_ref())
            .map(|q| q.0.as_str()),
        Some("1Gi")
    );
    Ok(())
}

#[test]
fn an_object_without_a_uid_is_refused_not_guessed() -> Result<()> {
    let mut obj = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    obj.metadata.uid = None;
    let err = desired(&obj, &resolved(ModuleKind::Http), &Config::default()).expect_err("no uid");
    assert_eq!(err.to_string(), "the object has no uid");
    Ok(())
}

fn pod_spec(d: Desired) -> Result<k8s_openapi::api::core::v1::PodSpec> {
    d.deployment
        .spec
        .and_then(|s| s.template.spec)
        .context("a pod template")
}

fn container_env(d: &Desired) -> Vec<(String, String)> {
    let pod = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref());
    pod.map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let value = match (e.value, e.value_from) {
                (Some(v), _) => v,
                (None, Some(from)) => format!(
                    "from {}",
                    from.field_ref.map(|f| f.field_path).unwrap_or_default()
                ),
                (None, None) => String::new(),
            };
            (e.name, value)
        })
        .collect()
}

#[test]
fn operator_wide_runtime_settings_reach_every_pod_and_an_objects_own_entry_wins() -> Result<()> {
    let mut obj = load(&repo().join("examples/deploy.yaml"))?;
    obj.spec
        .env
        .push(yaml_serde::from_str("{name: WA8S_LOG, value: debug}")?);
    let config = Config {
        runtime_settings: ["WA8S_LOG=warn", "WA8S_ACCESS_LOG=json"]
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?,
        ..Config::default()
    };
    let d = desired(&obj, &resolved(ModuleKind::Http), &config)?;
    let env = container_env(&d);
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["WA8S_ACCESS_LOG", "CACHE_SIZE", "WA8S_LOG"],
        "{env:?}"
    );
    assert!(env.contains(&("WA8S_LOG".into(), "debug".into())));
    // The pod's policy lets the component see the object's names, not the runtime's.
    let template = d.deployment.spec.as_ref().map(|s| &s.template.metadata);
    let annotations = template
        .and_then(|m| m.as_ref()?.annotations.clone())
        .unwrap_or_default();
    let policy = wa8s_api::contract::Policy::from_annotations(&annotations)?;
    assert!(policy.env.contains(&"CACHE_SIZE".to_owned()));
    assert!(!policy.env.contains(&"WA8S_ACCESS_LOG".to_owned()));
    Ok(())
}

#[test]
fn a_pod_that_exports_traces_names_its_object_namespace_and_pod_unless_the_object_names_them()
-> Result<()> {
    let obj = load(&repo().join("examples/deploy.yaml"))?;
    let config = Config {
        runtime_settings: vec!["OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318".parse()?],
        ..Config::default()
    };
    let env = container_env(&desired(&obj, &resolved(ModuleKind::Http), &config)?);
    let tail: Vec<_> = env.iter().skip(env.len() - 3).cloned().collect();
    assert_eq!(
        tail,
        [
            ("OTEL_SERVICE_NAME".into(), "image-processor".into()),
            ("WA8S_POD_NAME".into(), "from metadata.name".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                "k8s.namespace.name=apps,k8s.pod.name=$(WA8S_POD_NAME)".into()
            ),
        ]
    );

    // Without export, no resource variables; with the object's own, those are kept.
    let plain = container_env(&desired(
        &obj,
        &resolved(ModuleKind::Http),
        &Config::default(),
    )?);
    assert!(!plain.iter().any(|(n, _)| n.starts_with("OTEL_")));
    let mut named = obj.clone();
    named.spec.env.push(yaml_serde::from_str(
        "{name: OTEL_SERVICE_NAME, value: processor}",
    )?);
    named.spec.env.push(yaml_serde::from_str(
        "{name: OTEL_RESOURCE_ATTRIBUTES, value: team=imaging}",
    )?);
    let env = container_env(&desired(&named, &resolved(ModuleKind::Http), &config)?);
    let otel: Vec<_> = env.iter().filter(|(n, _)| n.starts_with("OTEL_")).collect();
    assert_eq!(otel.len(), 3, "{env:?}");
    assert!(env.contains(&("OTEL_SERVICE_NAME".into(), "processor".into())));
    assert!(!env.iter().any(|(n, _)| n == "WA8S_POD_NAME"));
    Ok(())
}

#[test]
fn a_cli_modules_args_follow_the_placeholder_command() -> Result<()> {
    let mut obj = load(&repo().join("examples/deploy.yaml"))?;
    obj.spec.args = vec!["lookup".into(), "db.example.com".into()];
    let d = desired(&obj, &resolved(ModuleKind::Cli), &Config::default())?;
    let pod = pod_spec(d)?;
    let c = &pod.containers[0];
    assert_eq!(c.command.as_deref(), Some(&["/".to_owned()][..]));
    assert_eq!(
        c.args.as_deref(),
        Some(&["lookup".to_owned(), "db.example.com".to_owned()][..])
    );
    Ok(())
}

#[test]
fn the_objects_labels_reach_everything_it_makes_but_never_replace_the_operators_own() -> Result<()>
{
    let mut obj = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    obj.metadata.labels = Some(
        [
            ("cost-center", "4711"),
            ("app.kubernetes.io/instance", "a-helm-release"),
            ("app.kubernetes.io/managed-by", "Helm"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    obj.spec.pod_labels = [("team".to_owned(), "imaging".to_owned())].into();
    let d = desired(&obj, &resolved(ModuleKind::Http), &Config::default())?;
    let metas = [
        Some(&d.deployment.metadata),
        d.service.as_ref().map(|s| &s.metadata),
        d.hpa.as_ref().map(|h| &h.metadata),
        d.pdb.as_ref().map(|p| &p.metadata),
        d.deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref()),
    ];
    for meta in metas {
        let labels = meta
            .context("every object")?
            .labels
            .clone()
            .unwrap_or_default();
        assert_eq!(labels.get("cost-center").map(String::as_str), Some("4711"));
        assert_eq!(
            labels.get("app.kubernetes.io/instance").map(String::as_str),
            Some("image-processor")
        );
        assert_eq!(
            labels
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("wa8s-operator")
        );
    }
    let template = d
        .deployment
        .spec
        .and_then(|s| s.template.metadata)
        .context("template")?;
    assert_eq!(
        template
            .labels
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("imaging")
    );
    Ok(())
}

#[test]
fn two_or_more_pods_get_a_budget_of_one_unavailable_unless_the_object_sets_its_own() -> Result<()> {
    let seed = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    let budget = |obj: &WebAssembly| -> Result<Option<(String, String, String)>> {
        let d = desired(obj, &resolved(ModuleKind::Http), &Config::default())?;
        Ok(d.pdb.and_then(|p| p.spec).map(|s| {
            let show = |v: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>| {
                v.map(|v| serde_json::to_string(&v).unwrap_or_default())
                    .unwrap_or_default()
            };
            (
                show(s.min_available),
                show(s.max_unavailable),
                s.unhealthy_pod_eviction_policy.unwrap_or_default(),
            )
        }))
    };
    // The users' manifest: minReplicas 2.
    assert_eq!(
        budget(&seed)?,
        Some((String::new(), "1".into(), "AlwaysAllow".into()))
    );
    let mut one = seed.clone();
    one.spec.scaling = None;
    assert_eq!(budget(&one)?, None, "a single pod gets no budget");
    one.spec.replicas = Some(3);
    assert!(budget(&one)?.is_some());
    let mut own = seed.clone();
    own.spec.disruption_budget = Some(yaml_serde::from_str("{minAvailable: 50%}")?);
    assert_eq!(
        budget(&own)?,
        Some((r#""50%""#.into(), String::new(), "AlwaysAllow".into()))
    );
    Ok(())
}

#[test]
fn http_probes_use_the_components_port_and_spread_constraints_count_the_objects_pods() -> Result<()>
{
    let mut obj = load(&repo().join("../shared/fixtures/seed-deploy.yaml"))?;
    obj.spec.readiness_probe = Some(yaml_serde::from_str(
        "{httpGet: {path: /ready}, periodSeconds: 2}",
    )?);
    obj.spec.liveness_probe = Some(yaml_serde::from_str("{httpGet: {path: /healthz}}")?);
    obj.spec.topology_spread_constraints = vec![yaml_serde::from_str(
        "{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}",
    )?];
    let d = desired(&obj, &resolved(ModuleKind::Http), &Config::default())?;
    let pod = pod_spec(d)?;
    let c = &pod.containers[0];
    let ready = c.readiness_probe.as_ref().context("readiness")?;
    let get = ready.http_get.as_ref().context("an HTTP GET")?;
    assert_eq!(
        (
            get.path.as_deref(),
            serde_json::to_string(&get.port)?.as_str()
        ),
        (Some("/ready"), r#""http""#)
    );
    assert_eq!(ready.period_seconds, Some(2));
    assert!(ready.tcp_socket.is_none());
    let live = c.liveness_probe.as_ref().context("liveness")?;
    assert_eq!(
        live.http_get.as_ref().and_then(|g| g.path.as_deref()),
        Some("/healthz")
    );
    // Kubernetes' defaults stay Kubernetes': nothing the object did not set.
    assert_eq!((live.period_seconds, live.failure_threshold), (None, None));
    let spread = &pod.topology_spread_constraints.context("constraints")?[0];
    let selector = spread
        .label_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone());
    assert_eq!(
        selector,
        Some(wa8s_operator::desired::selector_labels("image-processor"))
    );

    // A wasi:cli component has no port to probe.
    let d = desired(&obj, &resolved(ModuleKind::Cli), &Config::default())?;
    let pod = pod_spec(d)?;
    assert!(pod.containers[0].liveness_probe.is_none());
    Ok(())
}
