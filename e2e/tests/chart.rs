//! The Helm chart with the real `helm` (v3, built from its Go module): lint, rendered-manifest
//! snapshots for default and non-default values, schema rejections, the operator's RBAC kept
//! equal to the rules its tests run under, every value documented, and the chart pushed to
//! and rendered from an OCI registry.
//!
//! Snapshots live in `e2e/tests/snapshots/`; after an intended change, refresh them with
//! `WA8S_UPDATE_SNAPSHOTS=1 cargo test -p wa8s-e2e --test chart`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use wa8s_e2e::helm::Helm;
use yaml_serde::Value;

/// The Kubernetes version charts are rendered for (the e2e cluster's).
const KUBE_VERSION: &str = "1.35.4";

fn chart_dir() -> PathBuf {
    wa8s_e2e::repo_root().join("charts/wa8s")
}

fn run_helm(args: &[&str]) -> Result<std::process::Output> {
    Helm::new(None)?.run(args)
}

fn helm_ok(args: &[&str]) -> Result<String> {
    Helm::new(None)?.ok(args)
}

/// `helm template` of the chart directory as release `wa8s` in `wa8s-system`.
fn template(extra: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec![
        "template",
        "wa8s",
        &chart,
        "--namespace",
        "wa8s-system",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend(extra);
    helm_ok(&args)
}

fn custom_values() -> String {
    chart_dir()
        .join("ci/custom-values.yaml")
        .display()
        .to_string()
}

fn documents(rendered: &str) -> Result<Vec<Value>> {
    rendered
        .split("\n---")
        .map(yaml_serde::from_str::<Value>)
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .map(|d| d.context("rendered manifest is not YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered chart"))
}

fn check_snapshot(name: &str, rendered: &str) -> Result<()> {
    let path = wa8s_e2e::repo_root().join("e2e/tests/snapshots").join(name);
    if std::env::var_os("WA8S_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().context("snapshot dir")?)?;
        std::fs::write(&path, rendered)?;
        return Ok(());
    }
    let want = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (create it with WA8S_UPDATE_SNAPSHOTS=1)",
            path.display()
        )
    })?;
    if want != rendered {
        let first = want
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(rendered.lines().count()));
        bail!(
            "the rendered chart differs from {} from line {}:\n  snapshot: {:?}\n  rendered: {:?}\nIf the change is intended: WA8S_UPDATE_SNAPSHOTS=1 cargo test -p wa8s-e2e --test chart",
            path.display(),
            first + 1,
            want.lines().nth(first).unwrap_or("<end>"),
            rendered.lines().nth(first).unwrap_or("<end>"),
        );
    }
    Ok(())
}

#[test]
fn helm_lint_is_clean_with_default_and_non_default_values() -> Result<()> {
    let chart = chart_dir().display().to_string();
    for extra in [vec![], vec!["-f".to_owned(), custom_values()]] {
        let mut args = vec!["lint", "--strict", &chart, "--kube-version", KUBE_VERSION];
        args.extend(extra.iter().map(String::as_str));
        let out = helm_ok(&args)?;
        ensure!(out.contains("0 chart(s) failed"), "{out}");
        ensure!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }
    Ok(())
}

#[test]
fn the_rendered_manifests_match_their_snapshots() -> Result<()> {
    check_snapshot("chart-default.yaml", &template(&[])?)?;
    check_snapshot(
        "chart-custom-values.yaml",
        &template(&["-f", &custom_values()])?,
    )?;
    Ok(())
}

#[test]
fn values_that_violate_the_schema_are_rejected_with_the_field_named() -> Result<()> {
    let cases = [
        ("operator.replicas=-1", "/operator/replicas"),
        (
            "installer.restart.method=reboot",
            "/installer/restart/method",
        ),
        (
            "operatr.replicas=2",
            "additional properties 'operatr' not allowed",
        ),
        (
            "installer.restart.method=command",
            "/installer/restart/command",
        ),
        ("operator.resolveInterval=soon", "/operator/resolveInterval"),
        ("installer.shimDir=relative/bin", "/installer/shimDir"),
        (
            r"operator.mirrors.ghcr\.io=not/a/host",
            "/operator/mirrors/ghcr.io",
        ),
        ("traces.env.DATABASE_URL=x", "'DATABASE_URL' does not match"),
        ("traces.otlpEndpoint=collector:4318", "/traces/otlpEndpoint"),
        ("workloads.logFormat=yaml", "/workloads/logFormat"),
    ];
    for (set, named) in cases {
        let chart = chart_dir().display().to_string();
        let out = run_helm(&[
            "template",
            "wa8s",
            &chart,
            "--kube-version",
            KUBE_VERSION,
            "--set",
            set,
        ])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "--set {set} was accepted");
        ensure!(
            stderr.contains("don't meet the specifications of the schema")
                && stderr.contains(named),
            "--set {set}: {stderr}"
        );
    }
    // A combination the schema cannot express is refused by the chart itself.
    let out = run_helm(&[
        "template",
        "wa8s",
        &chart_dir().display().to_string(),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "operator.replicas=2",
        "--set",
        "operator.leaderElection=false",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("needs operator.leaderElection=true"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_chart_grants_the_operator_exactly_the_rules_its_tests_run_under() -> Result<()> {
    let rendered = documents(&template(&[])?)?;
    let reference =
        std::fs::read_to_string(wa8s_e2e::repo_root().join("operator/rbac/operator.yaml"))?;
    let reference = documents(&reference)?;
    for (kind, chart_name, reference_name) in [
        ("ClusterRole", "wa8s-operator", "wa8s-operator"),
        (
            "Role",
            "wa8s-operator-leader-election",
            "wa8s-operator-leader-election",
        ),
    ] {
        let got = &find(&rendered, kind, chart_name)?["rules"];
        let want = &find(&reference, kind, reference_name)?["rules"];
        ensure!(
            got == want,
            "{kind} {chart_name} rules differ from operator/rbac/operator.yaml:\n{}\nvs\n{}",
            yaml_serde::to_string(got)?,
            yaml_serde::to_string(want)?
        );
    }
    Ok(())
}

#[test]
fn the_operator_pod_meets_the_restricted_pod_security_profile() -> Result<()> {
    let docs = documents(&template(&[])?)?;
    let pod = &find(&docs, "Deployment", "wa8s-operator")?["spec"]["template"]["spec"];
    ensure!(pod["securityContext"]["runAsNonRoot"] == true);
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault");
    let container = &pod["containers"][0]["securityContext"];
    ensure!(container["allowPrivilegeEscalation"] == false);
    ensure!(container["capabilities"]["drop"][0] == "ALL");
    ensure!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
    Ok(())
}

fn leaf_keys(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Mapping(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = k.as_str().unwrap_or_default();
                let path = if prefix.is_empty() {
                    key.to_owned()
                } else {
                    format!("{prefix}.{key}")
                };
                // Free-form maps (selectors, resources) are documented as one value.
                let free_form = ["resources", "nodeSelector", "podAnnotations", "labels"]
                    .iter()
                    .any(|f| path.ends_with(f));
                if free_form {
                    out.push(path);
                } else {
                    leaf_keys(&path, v, out);
                }
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[test]
fn every_value_is_documented_in_the_chart_readme() -> Result<()> {
    let values: Value =
        yaml_serde::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml"))?)?;
    let readme = std::fs::read_to_string(chart_dir().join("README.md"))?;
    let mut keys = Vec::new();
    leaf_keys("", &values, &mut keys);
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    ensure!(
        missing.is_empty(),
        "charts/wa8s/README.md does not list {missing:?}"
    );
    Ok(())
}

#[test]
fn the_chart_is_pushed_to_an_oci_registry_and_renders_from_there() -> Result<()> {
    let registry = wa8s_e2e::registry::Registry::start()?;
    let out = tempfile::tempdir()?;
    let dest = out.path().display().to_string();
    helm_ok(&["package", &chart_dir().display().to_string(), "-d", &dest])?;
    let package = Path::new(&dest).join(concat!("wa8s-", env!("CARGO_PKG_VERSION"), ".tgz"));
    ensure!(
        package.exists(),
        "helm package wrote no {}",
        package.display()
    );
    let repo = format!("oci://{}/charts", registry.addr());
    let pushed = run_helm(&[
        "push",
        &package.display().to_string(),
        &repo,
        "--plain-http",
    ])?;
    ensure!(
        pushed.status.success(),
        "helm push: {}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let from_registry = helm_ok(&[
        "template",
        "wa8s",
        &format!("{repo}/wa8s"),
        "--version",
        env!("CARGO_PKG_VERSION"),
        "--plain-http",
        "--namespace",
        "wa8s-system",
        "--kube-version",
        KUBE_VERSION,
    ])?;
    ensure!(
        from_registry == template(&[])?,
        "the chart from the registry renders differently from the chart directory"
    );
    Ok(())
}

/// `target/<profile>/<name>`, built beside this test (`build_wa8s_binaries` in
/// `e2e/scripts/prerequisites.sh`).
fn built(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary's directory")?;
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "no {name} in {}: build the wa8s binaries first (see build_wa8s_binaries in e2e/scripts/prerequisites.sh)",
        dir.display()
    );
    Ok(path)
}

/// A flag the chart renders but the binary does not know would crash-loop the pod. clap
/// reaches a trailing `--help` (and exits 0) only when every argument before it parsed.
#[test]
fn every_flag_the_chart_passes_is_one_its_binary_accepts() -> Result<()> {
    let containers = [
        ("Deployment", "wa8s-operator", "wa8s-operator"),
        ("DaemonSet", "wa8s-node-installer", "wa8s-node-installer"),
        (
            "Job",
            "wa8s-node-installer-uninstall",
            "wa8s-node-installer",
        ),
    ];
    for rendered in [template(&[])?, template(&["-f", &custom_values()])?] {
        let docs = documents(&rendered)?;
        for (kind, name, binary) in containers {
            let spec = &find(&docs, kind, name)?["spec"]["template"]["spec"]["containers"][0];
            let args: Vec<String> = spec["args"]
                .as_sequence()
                .with_context(|| format!("{kind} {name} has no args"))?
                .iter()
                .map(|a| a.as_str().map(str::to_owned).context("a non-string arg"))
                .collect::<Result<_>>()?;
            let mut cmd = Command::new(built(binary)?);
            cmd.args(&args).arg("--help").env_clear();
            let out = wa8s_e2e::process::run_with_timeout(cmd, std::time::Duration::from_secs(30))?;
            ensure!(
                out.status.success(),
                "{kind} {name} runs {binary} with {args:?}, which it refuses:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(())
}
