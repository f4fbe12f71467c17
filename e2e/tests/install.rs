//! `helm install wa8s` on a fresh node, as users do it: the chart from its directory with the
//! images imported into the node's containerd (built by `e2e/scripts/images.sh`), then the
//! chart from an OCI registry with the images pushed to and pulled from that registry. Each
//! time: the node installer prepares containerd (which is restarted and picks the runtime
//! up), the operator runs in a pod, a component is served, and `helm uninstall` gives
//! containerd's configuration back byte for byte. The second round adds faults: the
//! operator's pod deleted in the middle of a rollout, and an installer pod that starts after
//! the uninstall request.
//!
//! The node has no systemd: the chart is told to restart containerd with the node's restart
//! script (`installer.restart.method=command`), which is what a non-systemd node would do.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use wa8s_e2e::helm::Helm;
use wa8s_e2e::kubectl::Kubectl;
use wa8s_e2e::scenario::Cluster;

const NODE: &str = "wa8s-node";
const RELEASE_NAMESPACE: &str = "wa8s-system";

/// The image tarballs `e2e/scripts/images.sh` wrote.
fn images() -> Result<Vec<PathBuf>> {
    wa8s_e2e::image::wa8s_tarballs()
}

/// The values this cluster needs (see `wa8s_e2e::node::chart_values`), and a longer wait
/// for the nodes on uninstall.
fn values(cluster: &Cluster) -> Result<Vec<String>> {
    let mut values = wa8s_e2e::node::chart_values(
        cluster.state_dir(),
        cluster.api_port()?,
        cluster.registry(),
        free_port()?,
    );
    values.push("installer.uninstallTimeout=3m".to_owned());
    // A moved tag shows within the fault step's patience.
    values.push("operator.resolveInterval=10s".to_owned());
    Ok(values)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn node_label(kubectl: &Kubectl) -> Result<String> {
    Ok(kubectl.ok(&[
        "get",
        "node",
        NODE,
        "-o",
        "jsonpath={.metadata.labels.wa8s\\.reconciler\\.io/runtime}",
    ])?)
}

/// Names of the release's pods matching `selector` (only running ones with `running`).
fn release_pods(k: &Kubectl, selector: &str, running: bool) -> Result<String> {
    let mut args = vec!["get", "pods", "-n", RELEASE_NAMESPACE, "-l", selector];
    if running {
        args.push("--field-selector=status.phase=Running");
    }
    args.push("-o=jsonpath={.items[*].metadata.name}");
    Ok(k.ok(&args)?)
}

fn containerd_pid(cluster: &Cluster) -> Result<String> {
    let pids = std::fs::read_to_string(cluster.state_dir().join("pids"))?;
    pids.lines()
        .find_map(|l| l.strip_prefix("containerd "))
        .and_then(|rest| rest.split(' ').next())
        .map(str::to_owned)
        .context("no containerd in the pids file")
}

/// Installs with `chart` (a directory or an oci:// reference), runs a component, uninstalls;
/// checks what the node looks like after each step. With `faults`, also deletes the
/// operator's pod mid-rollout and restarts the installer during the uninstall.
fn install_run_uninstall(
    cluster: &Cluster,
    helm: &Helm,
    chart: &[&str],
    faults: bool,
) -> Result<()> {
    let kubectl = cluster.kubectl();
    let config = wa8s_e2e::node::containerd_config_file(cluster.state_dir());
    let shim =
        wa8s_e2e::node::installed_shim_dir(cluster.state_dir()).join("containerd-shim-wa8s-v1");
    let original = std::fs::read(&config)?;
    let pid_before = containerd_pid(cluster)?;

    let mut args = vec![
        "install",
        "wa8s",
        "--namespace",
        RELEASE_NAMESPACE,
        "--create-namespace",
        "--wait",
        "--timeout",
        "5m",
    ];
    args.extend(chart);
    let values = values(cluster)?;
    for v in &values {
        args.extend(["--set", v.as_str()]);
    }
    let step = std::time::Instant::now();
    helm.ok(&args)?;
    // Step times go to the log, so a slow machine shows before a deadline fails.
    eprintln!("helm install --wait: {:.1?}", step.elapsed());

    // The installer labels the node once the restarted containerd answers.
    let labelled = kubectl.eventually(Duration::from_secs(180), "the node label", |k| {
        node_label(k).ok().filter(|l| l == "ready")
    });
    if labelled.is_err() {
        let logs = kubectl
            .run(&[
                "logs",
                "-n",
                RELEASE_NAMESPACE,
                "daemonset/wa8s-node-installer",
            ])
            .map(|o| o.stdout + &o.stderr)
            .unwrap_or_default();
        bail!("the node was not labelled wa8s.reconciler.io/runtime=ready; installer log:\n{logs}");
    }
    let patched = std::fs::read_to_string(&config)?;
    ensure!(
        patched.contains("io.containerd.wa8s.v1") && patched.contains("wa8s.reconciler.io/policy"),
        "the installer did not add the runtime:\n{patched}"
    );
    ensure!(shim.is_file(), "no shim at {}", shim.display());
    ensure!(
        containerd_pid(cluster)? != pid_before,
        "containerd was not restarted"
    );

    // A component, served by the operator running in its pod and the installed runtime.
    let ns = kubectl.namespace("install")?;
    cluster.push(
        wa8s_test_components::HTTP_COMPONENT,
        "myorg/image-processor:v1.2.3",
    )?;
    let seed = std::fs::read_to_string(wa8s_e2e::shared_dir().join("fixtures/seed-deploy.yaml"))?;
    // helm --wait does not wait for a CRD to be served; users' next apply would.
    kubectl.wait_crd_established()?;
    let step = std::time::Instant::now();
    let applied = kubectl.apply(ns.name(), &seed)?;
    ensure!(applied.success, "seed manifest refused: {}", applied.stderr);
    let ready = kubectl.run(&[
        "wait",
        "-n",
        ns.name(),
        "--for=condition=Ready",
        "--timeout=180s",
        "webassembly/image-processor",
    ])?;
    if !ready.success {
        let mut state = String::new();
        for args in [
            &[
                "get",
                "webassembly,deploy,pods",
                "-n",
                ns.name(),
                "-o",
                "wide",
            ][..],
            &["get", "events", "-n", ns.name(), "--sort-by=.lastTimestamp"],
            &["get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide"],
            &[
                "logs",
                "-n",
                RELEASE_NAMESPACE,
                "deploy/wa8s-operator",
                "--tail=20",
            ],
        ] {
            if let Ok(o) = kubectl.run(args) {
                state += &format!("--- kubectl {}\n{}{}", args.join(" "), o.stdout, o.stderr);
            }
        }
        bail!("image-processor not Ready: {}\n{state}", ready.stderr);
    }
    eprintln!("apply -> image-processor Ready: {:.1?}", step.elapsed());
    let forward = kubectl.port_forward(ns.name(), "svc/image-processor", 80)?;
    let (status, body) = wa8s_e2e::http::get(forward.addr(), "/", Duration::from_secs(10))?;
    ensure!(status == 200, "HTTP {status}: {body}");
    drop(forward);
    if faults {
        the_operator_pod_deleted_in_the_middle_of_a_rollout_is_replaced_and_finishes_it(
            cluster,
            &kubectl,
            ns.name(),
        )?;
    }
    // Gone before the operator is: its objects are garbage-collected by owner references.
    kubectl.ok(&[
        "delete",
        "namespace",
        ns.name(),
        "--wait=true",
        "--timeout=120s",
    ])?;
    drop(ns);

    let pid_installed = containerd_pid(cluster)?;
    if faults {
        installer_started_after_the_uninstall_request_restores_the_node(cluster, &kubectl)?;
    }
    let step = std::time::Instant::now();
    if let Err(e) = helm.ok(&[
        "uninstall",
        "wa8s",
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "5m",
    ]) {
        let mut logs = String::new();
        for target in [
            "job/wa8s-node-installer-uninstall",
            "daemonset/wa8s-node-installer",
        ] {
            if let Ok(o) = kubectl.run(&["logs", "-n", RELEASE_NAMESPACE, target, "--tail=20"]) {
                logs += &format!("--- {target}\n{}{}", o.stdout, o.stderr);
            }
        }
        bail!("{e:#}\n{logs}");
    }
    eprintln!("helm uninstall --wait: {:.1?}", step.elapsed());
    // The pre-delete hook waited for the node: the configuration is back to its bytes.
    ensure!(
        std::fs::read(&config)? == original,
        "containerd's configuration differs after helm uninstall:\n{}",
        std::fs::read_to_string(&config)?
    );
    ensure!(!shim.exists(), "the shim is still at {}", shim.display());
    ensure!(
        node_label(&kubectl)?.is_empty(),
        "the node is still labelled"
    );
    ensure!(
        containerd_pid(cluster)? != pid_installed,
        "containerd was not restarted after the runtime was removed"
    );
    kubectl.ok(&[
        "delete",
        "namespace",
        RELEASE_NAMESPACE,
        "--wait=true",
        "--timeout=120s",
    ])?;
    Ok(())
}

/// The tag the seed manifest names moves, so the operator rolls the Deployment to the new
/// digest; its pod is deleted while the rollout is under way. The chart's Deployment starts
/// another, which takes the Lease over and finishes: the old pod is gone, the new one holds
/// the Lease, the status says the rollout completed (a transition after the deletion) on
/// the new digest and Ready, and the object still has exactly one Deployment, Service and
/// HPA.
fn the_operator_pod_deleted_in_the_middle_of_a_rollout_is_replaced_and_finishes_it(
    cluster: &Cluster,
    kubectl: &Kubectl,
    ns: &str,
) -> Result<()> {
    let operator_pods = |k: &Kubectl| release_pods(k, "app.kubernetes.io/component=operator", true);
    let jsonpath = |k: &Kubectl, object: &str, path: &str| {
        k.ok(&["get", object, "-n", ns, "-o", &format!("jsonpath={path}")])
    };
    let before = operator_pods(kubectl)?;
    let v2 = cluster.push(
        &wa8s_e2e::scenario::variant(wa8s_test_components::HTTP_COMPONENT, "rolled"),
        "myorg/image-processor:v1.2.3",
    )?;
    kubectl.eventually(
        Duration::from_secs(120),
        "the Deployment on the moved tag",
        |k| {
            jsonpath(
                k,
                "deploy/image-processor",
                "{.spec.template.spec.containers[0].image}",
            )
            .ok()
            .filter(|image| image.ends_with(&v2))
        },
    )?;
    // The rollout cannot finish within this moment (a new pod must start and be ready, the
    // old ones must stop), so whatever reports it finished is the replacement.
    let deleted_at = time::OffsetDateTime::now_utc();
    kubectl.ok(&[
        "delete",
        "pod",
        "-n",
        RELEASE_NAMESPACE,
        before.trim(),
        "--wait=false",
    ])?;
    let converged = kubectl.eventually(
        Duration::from_secs(240),
        "the rollout reported finished by a new operator pod that holds the Lease",
        |k| {
            let now = operator_pods(k).ok()?;
            let holder = k
                .ok(&[
                    "get",
                    "lease/wa8s-operator",
                    "-n",
                    RELEASE_NAMESPACE,
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ])
                .ok()?;
            let status = jsonpath(
                k,
                "webassembly/image-processor",
                "{.status.module.digest} {.status.readyReplicas} {.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Progressing\")].status}",
            )
            .ok()?;
            let progressing_since = jsonpath(
                k,
                "webassembly/image-processor",
                "{.status.conditions[?(@.type==\"Progressing\")].lastTransitionTime}",
            )
            .ok()?;
            let since = time::OffsetDateTime::parse(
                &progressing_since,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()?;
            let replaced = !now.is_empty() && !now.contains(before.trim()) && holder == now;
            (replaced && status == format!("{v2} 2 True False") && since >= deleted_at.replace_nanosecond(0).ok()?)
                .then_some(())
        },
    );
    if converged.is_err() {
        let state = kubectl
            .run(&["get", "webassembly,deploy,rs,pods", "-n", ns, "-o", "wide"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        bail!("the rollout did not finish after the operator pod was replaced:\n{state}");
    }
    for kind in ["deployments", "services", "horizontalpodautoscalers"] {
        let names = kubectl.ok(&[
            "get",
            kind,
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/instance=image-processor",
            "-o",
            "name",
        ])?;
        ensure!(
            names.lines().count() == 1,
            "expected one of {kind} for image-processor, found: {names:?}"
        );
    }
    Ok(())
}

/// An installer pod that starts after `helm uninstall` asked for the nodes to be restored
/// (evicted, rescheduled, its node rebooted) restores its node instead of preparing it again.
/// Made deterministic by taking the pod off the node (a node selector nothing matches) before
/// the request, and letting it come back after.
fn installer_started_after_the_uninstall_request_restores_the_node(
    cluster: &Cluster,
    kubectl: &Kubectl,
) -> Result<()> {
    let ds = "daemonset/wa8s-node-installer";
    let selector = "app.kubernetes.io/component=node-installer";
    let patch = |spec: &str| {
        kubectl.ok(&[
            "patch",
            ds,
            "-n",
            RELEASE_NAMESPACE,
            "--type=merge",
            "-p",
            spec,
        ])
    };
    patch(r#"{"spec":{"template":{"spec":{"nodeSelector":{"wa8s-e2e/nowhere":"true"}}}}}"#)?;
    kubectl.eventually(Duration::from_secs(60), "the installer pod gone", |k| {
        release_pods(k, selector, false)
            .ok()
            .filter(|names| names.trim().is_empty())
    })?;
    // What the chart's pre-delete hook does first.
    kubectl.ok(&[
        "annotate",
        ds,
        "-n",
        RELEASE_NAMESPACE,
        "wa8s.reconciler.io/uninstall=true",
    ])?;
    patch(r#"{"spec":{"template":{"spec":{"nodeSelector":null}}}}"#)?;
    let unlabelled = kubectl.eventually(Duration::from_secs(120), "the label removed", |k| {
        node_label(k).ok().filter(|l| l.is_empty())
    });
    let logs = kubectl
        .run(&["logs", "-n", RELEASE_NAMESPACE, "-l", selector, "--tail=20"])
        .map(|o| o.stdout + &o.stderr)
        .unwrap_or_default();
    if unlabelled.is_err() {
        let containerd =
            wa8s_e2e::control_plane::tail(&cluster.state_dir().join("containerd.log"), 15);
        let pods = kubectl
            .run(&["get", "pods", "-n", RELEASE_NAMESPACE, "-o", "wide"])
            .map(|o| o.stdout)
            .unwrap_or_default();
        bail!(
            "the new installer pod did not restore the node; its log:\n{logs}\n{pods}\ncontainerd's log:\n{containerd}"
        );
    }
    ensure!(
        logs.contains("restoring the node instead of installing"),
        "the node was restored, but not by the new pod; its log:\n{logs}"
    );
    Ok(())
}

#[test]
fn helm_install_from_the_chart_directory_and_from_an_oci_registry_prepares_the_node_and_uninstall_restores_it()
-> Result<()> {
    let cluster = Cluster::fresh()?;
    for image in images()? {
        wa8s_e2e::node::import_image(cluster.state_dir(), &image)?;
    }
    let helm = Helm::new(Some(cluster.kubeconfig()))?;
    let chart = wa8s_e2e::repo_root().join("charts/wa8s");
    install_run_uninstall(&cluster, &helm, &[&chart.to_string_lossy()], false)?;

    // The same chart, pushed to the cluster's registry and installed from there, with the
    // images pushed there too and pulled by the kubelet (pull policy Always).
    let version = env!("CARGO_PKG_VERSION");
    let mut image_values = Vec::new();
    for (name, value) in [
        ("wa8s-operator", "operator"),
        ("wa8s-node-installer", "installer"),
    ] {
        let repository = format!("{}/wa8s/{name}", cluster.registry());
        wa8s_e2e::node::push_image(
            cluster.state_dir(),
            &format!("ghcr.io/reconcilerio/{name}:{version}"),
            &format!("{repository}:{version}"),
        )?;
        image_values.push(format!("{value}.image.repository={repository}"));
        image_values.push(format!("{value}.image.pullPolicy=Always"));
    }
    let packaged = tempfile::tempdir()?;
    helm.ok(&[
        "package",
        &chart.to_string_lossy(),
        "-d",
        &packaged.path().to_string_lossy(),
    ])?;
    let repository = format!("oci://{}/charts", cluster.registry());
    helm.ok(&[
        "push",
        &packaged
            .path()
            .join(concat!("wa8s-", env!("CARGO_PKG_VERSION"), ".tgz"))
            .to_string_lossy(),
        &repository,
        "--plain-http",
    ])?;
    let reference = format!("{repository}/wa8s");
    let mut args = vec![
        reference.as_str(),
        "--version",
        env!("CARGO_PKG_VERSION"),
        "--plain-http",
    ];
    for v in &image_values {
        args.extend(["--set", v.as_str()]);
    }
    install_run_uninstall(&cluster, &helm, &args, true)?;
    Ok(())
}
