//! `helm install wa8s` on a fresh node, as users do it: the chart from its directory with the
//! images imported into the node's containerd (built by `e2e/scripts/images.sh`), then the
//! release as a forge publishes it (`e2e/scripts/release.sh publish` to the cluster's
//! registry: multi-platform images, signatures, SBOM attestations, the chart pinned to the
//! images' digests), installed with `helm install oci://…` and pulled by digest. Each
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
    install_run_uninstall_checking(cluster, helm, chart, faults, &|_| Ok(()))
}

/// [`install_run_uninstall`], with `installed` checked once the node is ready.
fn install_run_uninstall_checking(
    cluster: &Cluster,
    helm: &Helm,
    chart: &[&str],
    faults: bool,
    installed: &dyn Fn(&Kubectl) -> Result<()>,
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
    installed(&kubectl)?;
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
fn helm_install_from_the_chart_directory_and_of_the_signed_release_from_an_oci_registry_prepares_the_node_and_uninstall_restores_it()
-> Result<()> {
    let cluster = Cluster::fresh()?;
    for image in images()? {
        wa8s_e2e::node::import_image(cluster.state_dir(), &image)?;
    }
    let helm = Helm::new(Some(cluster.kubeconfig()))?;
    let chart = wa8s_e2e::repo_root().join("charts/wa8s");
    install_run_uninstall(&cluster, &helm, &[&chart.to_string_lossy()], false)?;

    // The release, published to the cluster's registry as the forge publishes it to GHCR
    // (`release.sh publish`: both platforms' images pushed and signed, their SBOMs attested,
    // the chart pinned to the images' digests, pushed and signed, everything verified), then
    // installed from there: the kubelet pulls the released images by digest.
    let release = publish_release(cluster.registry())?;
    a_moved_tag_or_a_borrowed_signature_fails_verification(&release)?;
    let args = [
        release.chart.as_str(),
        "--version",
        env!("CARGO_PKG_VERSION"),
        "--plain-http",
    ];
    let pinned = |k: &Kubectl| -> Result<()> {
        for (name, selector) in [
            ("wa8s-operator", "app.kubernetes.io/component=operator"),
            (
                "wa8s-node-installer",
                "app.kubernetes.io/component=node-installer",
            ),
        ] {
            let images = k.ok(&[
                "get",
                "pods",
                "-n",
                RELEASE_NAMESPACE,
                "-l",
                selector,
                "-o=jsonpath={.items[*].spec.containers[*].image}",
            ])?;
            let want = &release.images[name];
            ensure!(
                !images.is_empty() && images.split(' ').all(|i| i == want),
                "{name}'s pods run {images:?}, not the released {want}"
            );
        }
        Ok(())
    };
    install_run_uninstall_checking(&cluster, &helm, &args, true, &pinned)?;
    Ok(())
}

/// What `release.sh publish` put in a registry.
struct Release {
    /// `oci://…/charts/wa8s`.
    chart: String,
    /// Image name → `repository@digest` of its index.
    images: std::collections::BTreeMap<String, String>,
    /// The public key the release was signed with.
    public_key: PathBuf,
    cosign: PathBuf,
    /// Holds the signing key.
    _keys: tempfile::TempDir,
}

/// The forge release's files (chart, SBOMs, static CLIs, public key) laid side by side as
/// users download them: `sha256sum -c SHA256SUMS` there checks every file it names, and
/// names both static CLIs.
fn checksums_verify_side_by_side(release: &std::path::Path) -> Result<()> {
    let flat = tempfile::tempdir()?;
    let mut copied = 0;
    for sub in ["chart", "sbom", "cli", "."] {
        for entry in std::fs::read_dir(release.join(sub))? {
            let path = entry?.path();
            if path.is_file() {
                let name = path.file_name().context("a file without a name")?;
                std::fs::copy(&path, flat.path().join(name))?;
                copied += 1;
            }
        }
    }
    let sums = std::fs::read_to_string(flat.path().join("SHA256SUMS"))?;
    for arch in ["amd64", "arm64"] {
        ensure!(
            sums.lines()
                .any(|l| l.ends_with(&format!("-linux-{arch}")) && l.contains("  wa8s-")),
            "SHA256SUMS names no static linux/{arch} CLI:\n{sums}"
        );
    }
    let checked = std::process::Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(flat.path())
        .output()?;
    ensure!(
        checked.status.success(),
        "sha256sum -c SHA256SUMS over the release's {copied} files side by side failed:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    Ok(())
}

/// `release.sh publish` to `registry` with a throwaway key. The images and SBOMs come from
/// `release.sh build` (test.sh runs it before the tests).
fn publish_release(registry: &str) -> Result<Release> {
    // Where release.sh puts it, as it decides.
    let dir = std::env::var_os("WA8S_RELEASE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| wa8s_e2e::repo_root().join("target/wa8s-release"));
    ensure!(
        dir.join("images").is_dir(),
        "{} is missing: build the release first (e2e/scripts/release.sh build; the test script does)",
        dir.display()
    );
    let cosign = wa8s_e2e::binaries::ensure(&["cosign"])?["cosign"].clone();
    let keys = tempfile::tempdir()?;
    let generated = std::process::Command::new(&cosign)
        .args(["generate-key-pair"])
        .current_dir(keys.path())
        .env("COSIGN_PASSWORD", "")
        .output()?;
    ensure!(
        generated.status.success(),
        "cosign generate-key-pair: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let published = std::process::Command::new("bash")
        .arg(wa8s_e2e::repo_root().join("e2e/scripts/release.sh"))
        .args(["publish", "--registry"])
        .arg(format!("{registry}/reconcilerio"))
        .arg("--key")
        .arg(keys.path().join("cosign.key"))
        .arg("--plain-http")
        .env("COSIGN_PASSWORD", "")
        .stderr(std::process::Stdio::inherit())
        .output()?;
    ensure!(
        published.status.success(),
        "release.sh publish failed ({}); its log is above",
        published.status
    );
    let pushed = std::fs::read_to_string(dir.join("pushed.txt"))?;
    let mut images = std::collections::BTreeMap::new();
    let mut chart = None;
    for line in pushed.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields.as_slice() {
            ["chart", oci, ..] => {
                chart = Some(oci.rsplit_once(':').map_or(*oci, |(r, _)| r).to_owned())
            }
            [name, reference, ..] => {
                images.insert((*name).to_owned(), (*reference).to_owned());
            }
            _ => bail!("unexpected line in pushed.txt: {line:?}"),
        }
    }
    ensure!(images.len() == 2, "pushed.txt names {images:?}");
    // Both platforms were pushed under each index.
    for (name, reference) in &images {
        let line = pushed
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default();
        ensure!(
            line.contains("linux/amd64=sha256:") && line.contains("linux/arm64=sha256:"),
            "{reference} is not an index of linux/amd64 and linux/arm64: {line}"
        );
    }
    checksums_verify_side_by_side(&dir)?;
    Ok(Release {
        chart: chart.context("pushed.txt names no chart")?,
        images,
        public_key: dir.join("cosign.pub"),
        cosign,
        _keys: keys,
    })
}

fn curl(args: &[&str]) -> Result<Vec<u8>> {
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "30"])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "curl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// `cosign verify` of `reference` with the release's key; the error is cosign's stderr.
fn verify(release: &Release, reference: &str) -> Result<(), String> {
    let out = std::process::Command::new(&release.cosign)
        .args(["verify", "--key"])
        .arg(&release.public_key)
        .args([
            "--insecure-ignore-tlog=true",
            "--allow-http-registry",
            "--allow-insecure-registry",
            reference,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An attacker who can push to the registry but has not the key: the operator's tag moved
/// to other bytes (the index with one annotation more) fails `cosign verify`, and so does
/// that index with the genuine signature copied next to it. The genuine index still
/// verifies, and the tag is put back.
fn a_moved_tag_or_a_borrowed_signature_fails_verification(release: &Release) -> Result<()> {
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    let genuine = &release.images["wa8s-operator"];
    let (repository, digest) = genuine.split_once('@').context("no digest")?;
    let (host, path) = repository.split_once('/').context("no registry host")?;
    let base = format!("http://{host}/v2/{path}/manifests");
    let tag = env!("CARGO_PKG_VERSION");
    verify(release, genuine).map_err(|e| anyhow::anyhow!("the genuine index: {e}"))?;

    let bytes = curl(&[
        "-H",
        &format!("Accept: {INDEX}"),
        &format!("{base}/{digest}"),
    ])?;
    let mut index: serde_json::Value = serde_json::from_slice(&bytes)?;
    index["annotations"] =
        serde_json::json!({ "org.opencontainers.image.description": "tampered" });
    let tampered = serde_json::to_vec(&index)?;
    let put = |reference: &str, body: &[u8], media_type: &str| -> Result<()> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), body)?;
        curl(&[
            "-X",
            "PUT",
            "-H",
            &format!("Content-Type: {media_type}"),
            "--data-binary",
            &format!("@{}", file.path().display()),
            &format!("{base}/{reference}"),
        ])?;
        Ok(())
    };
    put(tag, &tampered, INDEX)?;
    let moved = verify(release, &format!("{repository}:{tag}"));
    let tampered_digest = format!(
        "sha256:{:x}",
        <sha2::Sha256 as sha2::Digest>::digest(&tampered)
    );
    // cosign keeps a signature under the tag sha256-<hex>.sig beside the image.
    let sig_tag = |d: &str| format!("{}.sig", d.replace(':', "-"));
    let signature = curl(&[
        "-H",
        &format!("Accept: {MANIFEST}"),
        &format!("{base}/{}", sig_tag(digest)),
    ])?;
    put(&sig_tag(&tampered_digest), &signature, MANIFEST)?;
    let borrowed = verify(release, &format!("{repository}@{tampered_digest}"));
    put(tag, &bytes, INDEX)?;
    ensure!(
        moved.is_err(),
        "cosign verified the moved tag {repository}:{tag}"
    );
    ensure!(
        borrowed.is_err(),
        "cosign verified {tampered_digest} with the signature of {digest}"
    );
    if let (Err(moved), Err(borrowed)) = (&moved, &borrowed) {
        eprintln!(
            "tampering detected: moved tag: {}; borrowed signature: {}",
            moved.lines().last().unwrap_or_default(),
            borrowed.lines().last().unwrap_or_default()
        );
    }
    verify(release, &format!("{repository}:{tag}"))
        .map_err(|e| anyhow::anyhow!("the tag put back: {e}"))?;
    Ok(())
}
