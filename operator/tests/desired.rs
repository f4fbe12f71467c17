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
    let pod = d
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .context("pod")?;
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
