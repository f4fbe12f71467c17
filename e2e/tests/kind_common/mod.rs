//! What the kind suites share: steps with timings, pushing to the cluster's registry, waiting
//! for objects, reading nodes.
#![allow(dead_code)] // each suite uses its own part

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use wa8s_e2e::Kubectl;
use wa8s_e2e::kind::KindCluster;

pub const RELEASE_NAMESPACE: &str = "wa8s-system";
pub const READY: Duration = Duration::from_secs(300);

/// Logs a step with the time since the start, so a slow machine shows where time went.
pub struct Steps(pub Instant);
impl Steps {
    pub fn step(&self, what: &str) {
        eprintln!("[kind +{:>5.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

pub fn push(c: &KindCluster, wasm: &[u8], repository_tag: &str) -> Result<String> {
    wa8s_e2e::registry::push_with_cli(
        &wa8s_e2e::repo_root().join("target/debug/wa8s"),
        wasm,
        &format!("{}/{repository_tag}", c.registry()),
    )
}

pub fn jsonpath(k: &Kubectl, ns: &str, object: &str, path: &str) -> Result<String> {
    Ok(k.ok(&["get", object, "-n", ns, "-o", &format!("jsonpath={path}")])?)
}

/// `kubectl wait` for the object's Ready condition, with its state in the error.
pub fn wait_ready(k: &Kubectl, ns: &str, name: &str) -> Result<()> {
    let out = k.run(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        &format!("--timeout={}s", READY.as_secs()),
        &format!("webassembly/{name}"),
    ])?;
    if out.success {
        return Ok(());
    }
    let get = |args: &[&str]| k.run(args).map(|o| o.stdout).unwrap_or_default();
    bail!(
        "{ns}/{name} not Ready: {}\n{}\n{}\nevents:\n{}\noperator:\n{}",
        out.stderr,
        get(&["get", "webassembly,deploy,pods", "-n", ns, "-o", "wide"]),
        get(&[
            "get",
            &format!("webassembly/{name}"),
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions}"
        ]),
        get(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"]),
        get(&[
            "logs",
            "-n",
            RELEASE_NAMESPACE,
            "deploy/wa8s-operator",
            "--tail=30"
        ]),
    )
}

/// `pod name → node` of the object's running pods.
pub fn running_pods(k: &Kubectl, ns: &str, name: &str) -> Result<BTreeMap<String, String>> {
    let out = k.ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("app.kubernetes.io/instance={name}"),
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}{\" \"}{.spec.nodeName}{\" \"}{.metadata.deletionTimestamp}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // A pod being deleted (third field) no longer counts.
            (f.len() == 2).then(|| (f[0].to_owned(), f[1].to_owned()))
        })
        .collect())
}

/// GET `url` from inside node container `node` until the hello component answers (kube-proxy
/// programs a Service a moment after its endpoints are ready), for up to 30 s.
pub fn hello_from(c: &KindCluster, node: &str, url: &str) -> Result<()> {
    let mut last = String::new();
    let answered =
        wa8s_e2e::process::eventually(Duration::from_secs(30), Duration::from_millis(500), || {
            match c.exec(node, &["curl", "-sS", "-m", "5", url]) {
                Ok(answer) if answer.trim() == "hello from wasm" => Some(()),
                Ok(answer) => {
                    last = answer;
                    None
                }
                Err(e) => {
                    last = e.to_string();
                    None
                }
            }
        });
    answered.with_context(|| format!("{url} from {node}: {last}"))
}

pub fn node_label(k: &Kubectl, node: &str) -> String {
    k.ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.metadata.labels.wa8s\\.reconciler\\.io/runtime}",
    ])
    .unwrap_or_default()
}

pub fn containerd_pid(c: &KindCluster, node: &str) -> Result<String> {
    Ok(c.exec(
        node,
        &[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "containerd",
        ],
    )?
    .trim()
    .to_owned())
}

/// `helm uninstall wa8s`, waiting (its pre-delete hook restores every node first).
pub fn helm_uninstall(helm: &wa8s_e2e::helm::Helm) -> Result<()> {
    helm.ok(&[
        "uninstall",
        "wa8s",
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
        "--timeout",
        "5m",
    ])?;
    Ok(())
}
