//! `helm upgrade` from the previous wa8s release to this one, on a real kind cluster with
//! objects running — what a platform team does on day two. The previous release (its chart and
//! images, built from its commit by `e2e/scripts/previous-release.sh` and cached) is installed
//! on nodes configured for the local registry by hand, as its users had to; the users'
//! manifest runs; then the chart of this tree upgrades it. Checked: a client requesting the
//! object's Service all along never sees an error; the CRD is the new one; every node gets the
//! new shim (containerd restarted only if its configuration changed: running pods keep their
//! shim process, new pods start the new binary) and the installer takes the registry hosts
//! over from the hand-written file; a second upgrade that changes the installer's pods but
//! not the shim changes nothing on the nodes; uninstall gives the nodes back as they were,
//! hand-written registry hosts included.
//!
//! Its own cluster (one control plane, one worker) and registry port: the kind suite's steps
//! change their nodes in ways this one must not see.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use wa8s_e2e::helm::Helm;
use wa8s_e2e::kind::KindCluster;

mod kind_common;
use kind_common::{
    RELEASE_NAMESPACE, Steps, containerd_pid, hello_from, helm_uninstall, jsonpath, node_label,
    push, running_pods, wait_ready,
};

const CLUSTER: &str = "wa8s-upgrade";
const REGISTRY_PORT: &str = "5002";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const GHCR_HOSTS: &str = "/etc/containerd/certs.d/ghcr.io/hosts.toml";
const SHIM: &str = "/usr/local/bin/containerd-shim-wa8s-v1";
/// Where the probe in the control-plane node writes one HTTP status per request.
const PROBE_LOG: &str = "/tmp/wa8s-probe.log";
const PROBE_STOP: &str = "/tmp/wa8s-probe.stop";
/// The probe writes this once it has stopped: its log is complete.
const PROBE_DONE: &str = "/tmp/wa8s-probe.done";

/// The previous release's directory: `chart/` and `images/*.tar`.
fn previous_release() -> Result<std::path::PathBuf> {
    let script = wa8s_e2e::repo_root().join("e2e/scripts/previous-release.sh");
    let out = wa8s_e2e::process::run_with_timeout(
        {
            let mut c = std::process::Command::new("bash");
            c.arg(&script);
            c
        },
        Duration::from_secs(2400),
    )?;
    ensure!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(dir.into())
}

fn shim_digest(c: &KindCluster, node: &str) -> Result<String> {
    Ok(c.exec(node, &["sha256sum", SHIM])?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[test]
fn helm_upgrade_from_the_previous_release_keeps_objects_serving_and_re_prepares_nodes_only_for_a_new_shim()
-> Result<()> {
    let s = Steps(Instant::now());
    s.step("the previous release: its chart and images (cached by version and commit)");
    let previous = previous_release()?;
    let previous_chart = previous.join("chart");
    let previous_version = std::fs::read_to_string(previous_chart.join("Chart.yaml"))?
        .lines()
        .find_map(|l| l.strip_prefix("version: "))
        .context("the previous chart's version")?
        .trim()
        .to_owned();
    ensure!(
        previous_version != env!("CARGO_PKG_VERSION"),
        "the previous release has this tree's version {previous_version}"
    );

    s.step("kind create cluster (1 control plane, 1 worker), nodes configured by hand for the registry");
    KindCluster::remove(CLUSTER)?;
    let c = KindCluster::up(
        CLUSTER,
        1,
        &["--registry-port", REGISTRY_PORT, "--node-registry-hosts"],
    )?;
    let k = c.kubectl().clone();
    let nodes = c.nodes()?;
    let control_plane = format!("{CLUSTER}-control-plane");
    let originals: BTreeMap<String, (String, String)> = nodes
        .iter()
        .map(|n| {
            Ok((
                n.clone(),
                (
                    c.exec(n, &["cat", CONTAINERD_CONFIG])?,
                    c.exec(n, &["cat", GHCR_HOSTS])?,
                ),
            ))
        })
        .collect::<Result<_>>()?;

    s.step("kind load image-archive: the previous release's images and this tree's");
    let mut images: Vec<_> = ["wa8s-operator.tar", "wa8s-node-installer.tar"]
        .iter()
        .map(|n| previous.join("images").join(n))
        .collect();
    images.extend(wa8s_e2e::image::wa8s_tarballs()?);
    c.load(&images)?;

    s.step(&format!(
        "helm install wa8s {previous_version} (the previous chart)"
    ));
    let helm = Helm::new(Some(c.kubeconfig()))?;
    let registry = c.registry_from_nodes().to_owned();
    let mirror = format!("operator.mirrors.ghcr\\.io={registry}");
    let insecure = format!("operator.insecureRegistries[0]={registry}");
    // `helm install|upgrade wa8s CHART` in the release namespace, waiting, with `extra`.
    let release = |verb: &str, chart: &std::path::Path, extra: &[&str]| -> Result<()> {
        let chart = chart.to_string_lossy();
        let mut args = vec![
            verb,
            "wa8s",
            &chart,
            "--namespace",
            RELEASE_NAMESPACE,
            "--wait",
            "--timeout",
            "5m",
        ];
        args.extend_from_slice(extra);
        helm.ok(&args)?;
        Ok(())
    };
    let registry_values = ["--set", &mirror, "--set", &insecure];
    release(
        "install",
        &previous_chart,
        &[&["--create-namespace"], &registry_values[..]].concat(),
    )?;
    for node in &nodes {
        k.eventually(
            Duration::from_secs(180),
            "the node installer's label",
            |k| (node_label(k, node) == "ready").then_some(()),
        )?;
    }

    s.step("the users' manifest, verbatim, served by the previous release");
    push(
        &c,
        wa8s_test_components::HTTP_COMPONENT,
        "myorg/image-processor:v1.2.3",
    )?;
    let seed_ns = k.namespace("seed")?;
    let n = seed_ns.name();
    let seed = std::fs::read_to_string(wa8s_e2e::shared_dir().join("fixtures/seed-deploy.yaml"))?;
    let applied = k.apply(n, &seed)?;
    ensure!(applied.success, "seed manifest refused: {}", applied.stderr);
    wait_ready(&k, n, "image-processor")?;
    k.eventually(Duration::from_secs(120), "2 running pods", |k| {
        running_pods(k, n, "image-processor")
            .ok()
            .filter(|p| p.len() == 2)
    })?;
    let cluster_ip = jsonpath(&k, n, "svc/image-processor", "{.spec.clusterIP}")?;
    let url = format!("http://{cluster_ip}/");
    hello_from(&c, &control_plane, &url)?;

    s.step("a client requests the Service five times a second from here on");
    // In the control-plane node, beside the cluster's own components: a request that fails
    // in any way is a line other than 200.
    let probe = format!(
        "rm -f {PROBE_LOG} {PROBE_STOP} {PROBE_DONE}; while [ ! -e {PROBE_STOP} ]; do curl -s -o /dev/null -m 2 -w '%{{http_code}}\\n' {url} >>{PROBE_LOG} || true; sleep 0.2; done; touch {PROBE_DONE}"
    );
    c.podman(&["exec", "-d", &control_plane, "sh", "-c", &probe])?;
    let probe_lines = || -> Vec<String> {
        c.exec(&control_plane, &["cat", PROBE_LOG])
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    wa8s_e2e::process::eventually(Duration::from_secs(30), Duration::from_millis(500), || {
        (probe_lines().len() >= 5).then_some(())
    })
    .context("the probe never answered")?;

    s.step(&format!(
        "helm upgrade to {} (this tree's chart, same values)",
        env!("CARGO_PKG_VERSION")
    ));
    let per_node = |read: &dyn Fn(&str) -> Result<String>| -> Result<BTreeMap<String, String>> {
        nodes.iter().map(|n| Ok((n.clone(), read(n)?))).collect()
    };
    let pids = per_node(&|n| containerd_pid(&c, n))?;
    let configs = per_node(&|n| Ok(c.exec(n, &["cat", CONTAINERD_CONFIG])?))?;
    let shims = per_node(&|n| shim_digest(&c, n))?;
    // What the upgrade must change: the previous CRD lacks this release's fields, and the
    // previous operator runs.
    let pod_labels_type = |k: &wa8s_e2e::Kubectl| {
        k.ok(&[
            "get",
            "crd",
            "webassemblies.wa8s.reconciler.io",
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.podLabels.type}",
        ])
    };
    let operator_image = |k: &wa8s_e2e::Kubectl| {
        k.ok(&[
            "get",
            "deploy/wa8s-operator",
            "-n",
            RELEASE_NAMESPACE,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
    };
    ensure!(
        pod_labels_type(&k)?.is_empty(),
        "the previous CRD already has spec.podLabels"
    );
    let image = operator_image(&k)?;
    ensure!(image.ends_with(&format!(":{previous_version}")), "{image}");
    let pods_before = running_pods(&k, n, "image-processor")?;
    let chart = wa8s_e2e::repo_root().join("charts/wa8s");
    release("upgrade", &chart, &registry_values)?;

    s.step("every node has the new shim and the installer's registry hosts; containerd restarted only for a changed configuration");
    for node in &nodes {
        k.eventually(Duration::from_secs(180), "the new shim on the node", |_| {
            (shim_digest(&c, node).ok()? != shims[node.as_str()]).then_some(())
        })?;
        k.eventually(Duration::from_secs(180), "the node labelled ready", |k| {
            (node_label(k, node) == "ready").then_some(())
        })?;
        let config_changed = c.exec(node, &["cat", CONTAINERD_CONFIG])? != configs[node.as_str()];
        let restarted = containerd_pid(&c, node)? != pids[node.as_str()];
        ensure!(
            restarted == config_changed,
            "{node}: containerd restarted: {restarted}, its configuration changed: {config_changed}"
        );
        let hosts = c.exec(node, &["cat", GHCR_HOSTS])?;
        ensure!(
            hosts.contains("wa8s node installer") && hosts.contains(&registry),
            "{node}'s {GHCR_HOSTS} is not the installer's:\n{hosts}"
        );
    }

    s.step("the CRD, the operator and the object are the new release's");
    let crd_field = pod_labels_type(&k)?;
    ensure!(
        crd_field == "object",
        "the CRD was not upgraded (spec.podLabels: {crd_field:?})"
    );
    let image = operator_image(&k)?;
    ensure!(
        image.ends_with(concat!(":", env!("CARGO_PKG_VERSION"))),
        "{image}"
    );
    // Written only by this release's operator.
    k.eventually(Duration::from_secs(120), "status.desiredReplicas", |k| {
        (jsonpath(
            k,
            n,
            "webassembly/image-processor",
            "{.status.desiredReplicas}",
        )
        .ok()?
            == "2")
            .then_some(())
    })?;
    wait_ready(&k, n, "image-processor")?;
    let pods_after = k.eventually(Duration::from_secs(120), "2 running pods", |k| {
        running_pods(k, n, "image-processor")
            .ok()
            .filter(|p| p.len() == 2)
    })?;
    eprintln!(
        "pods before the upgrade {:?}, after {:?}",
        pods_before.keys().collect::<Vec<_>>(),
        pods_after.keys().collect::<Vec<_>>()
    );

    s.step("the client saw no error through the upgrade");
    c.exec(&control_plane, &["touch", PROBE_STOP])?;
    wa8s_e2e::process::eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        c.exec(&control_plane, &["test", "-e", PROBE_DONE]).ok()
    })
    .context("the probe did not stop")?;
    let lines = probe_lines();
    let failed: Vec<(usize, &String)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.as_str() != "200")
        .collect();
    ensure!(
        failed.is_empty() && lines.len() >= 50,
        "{} of {} requests failed during the upgrade (line, status): {failed:?}",
        failed.len(),
        lines.len()
    );
    eprintln!("{} requests during the upgrade, all 200", lines.len());

    s.step("an upgrade that changes the installer's pods but not the shim restarts no containerd");
    let pids = per_node(&|n| containerd_pid(&c, n))?;
    let installer_pods = |k: &wa8s_e2e::Kubectl| -> Result<Vec<String>> {
        Ok(k.ok(&[
            "get",
            "pods",
            "-n",
            RELEASE_NAMESPACE,
            "-l",
            "app.kubernetes.io/component=node-installer",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
    };
    let before = installer_pods(&k)?;
    release(
        "upgrade",
        &chart,
        &["--reuse-values", "--set", "logging.format=json"],
    )?;
    let installers = k.eventually(Duration::from_secs(180), "new installer pods", |k| {
        let names = installer_pods(k).ok()?;
        (names.len() == nodes.len() && names.iter().all(|p| !before.contains(p))).then_some(names)
    })?;
    for pod in &installers {
        let log = k.eventually(Duration::from_secs(120), "the install's outcome", |k| {
            let log = k.ok(&["logs", "-n", RELEASE_NAMESPACE, pod]).ok()?;
            log.contains("install: ").then_some(log)
        })?;
        ensure!(
            log.contains("nothing to change"),
            "{pod} changed its node though the shim is the same:\n{log}"
        );
    }
    for node in &nodes {
        ensure!(
            containerd_pid(&c, node)? == pids[node.as_str()],
            "containerd on {node} restarted though nothing on the node changed"
        );
    }
    hello_from(&c, &control_plane, &url)?;

    s.step("helm uninstall gives every node back as it was, hand-written registry hosts included");
    drop(seed_ns);
    helm_uninstall(&helm)?;
    for node in &nodes {
        let (config, hosts) = &originals[node.as_str()];
        ensure!(
            &c.exec(node, &["cat", CONTAINERD_CONFIG])? == config,
            "{node}'s containerd configuration differs after uninstall"
        );
        ensure!(
            &c.exec(node, &["cat", GHCR_HOSTS])? == hosts,
            "{node}'s hand-written {GHCR_HOSTS} was not given back"
        );
    }
    s.step("done; kind delete cluster");
    c.down()?;
    Ok(())
}
