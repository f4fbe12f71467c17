//! The WebAssembly API against a real kube-apiserver (and etcd), driven with the real kubectl:
//! the CRD installs, the users' manifest applies verbatim, printer columns, `kubectl explain`
//! and the scale subresource work, and invalid objects are refused with messages that name
//! the offending field.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use wa8s_api::WebAssembly;
use wa8s_e2e::{ControlPlane, Kubectl, shared_dir};

fn kubectl() -> Result<Kubectl> {
    let cp = ControlPlane::shared().map_err(anyhow::Error::msg)?;
    let k = cp.kubectl();
    k.install_crd()?;
    Ok(k)
}

fn seed_yaml() -> Result<String> {
    let path = shared_dir().join("fixtures/seed-deploy.yaml");
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn seed_json() -> Result<Value> {
    Ok(yaml_serde::from_str(&seed_yaml()?)?)
}

#[test]
fn the_users_manifest_applies_verbatim_and_kubectl_get_shows_the_printer_columns() -> Result<()> {
    let k = kubectl()?;
    let ns = k.namespace("seed")?;
    let applied = k.apply(ns.name(), &seed_yaml()?)?;
    assert!(applied.success, "seed manifest refused: {}", applied.stderr);

    let table = k.ok(&["get", "wasm", "-n", ns.name()])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "MODULE", "TAG", "DIGEST", "READY", "DESIRED", "REPLICAS", "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains("image-processor")
            && table.contains("ghcr.io/myorg/image-processor")
            && table.contains("v1.2.3"),
        "{table}"
    );

    // What the API server stored is exactly what the user wrote, read back into the Rust types.
    let stored: WebAssembly = serde_json::from_str(&k.ok(&[
        "get",
        "webassembly",
        "image-processor",
        "-n",
        ns.name(),
        "-o",
        "json",
    ])?)?;
    let written: WebAssembly = serde_json::from_value(seed_json()?)?;
    assert_eq!(stored.spec, written.spec);
    Ok(())
}

#[test]
fn kubectl_explain_teaches_the_network_grant() -> Result<()> {
    let k = kubectl()?;
    // The OpenAPI document is published a moment after the CRD is established.
    let text = k.eventually(
        Duration::from_secs(60),
        "kubectl explain to know the CRD",
        |k| {
            k.ok(&["explain", "webassembly.spec.wasi.network"])
                .ok()
                .filter(|t| t.contains("allowedHosts"))
        },
    )?;
    // kubectl wraps lines to the terminal width; compare with whitespace folded.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for phrase in [
        "Without an `outbound: true` entry the guest can open no connection",
        "*.suffix",
        "Link-local, loopback and the node's own addresses stay blocked",
        "outbound",
    ] {
        assert!(
            text.contains(phrase),
            "explain output lacks {phrase:?}:\n{text}"
        );
    }
    let spec = k.ok(&["explain", "webassembly.spec"])?;
    for field in [
        "module",
        "resources",
        "env",
        "scaling",
        "wasi",
        "replicas",
        "imagePullSecrets",
        // Day two (issue 23).
        "podLabels",
        "podAnnotations",
        "serviceAnnotations",
        "serviceAccountName",
        "priorityClassName",
        "topologySpreadConstraints",
        "args",
        "readinessProbe",
        "livenessProbe",
        "disruptionBudget",
    ] {
        assert!(
            spec.contains(field),
            "explain webassembly.spec lacks {field}:\n{spec}"
        );
    }
    Ok(())
}

#[test]
fn kubectl_scale_sets_replicas_through_the_scale_subresource_and_is_refused_while_scaling_is_set()
-> Result<()> {
    let k = kubectl()?;
    let ns = k.namespace("scale")?;
    // The users' manifest autoscales: kubectl scale is refused with what to do instead, and
    // nothing changes.
    let applied = k.apply(ns.name(), &seed_yaml()?)?;
    assert!(applied.success, "{}", applied.stderr);
    let refused = k.run(&[
        "scale",
        "-n",
        ns.name(),
        "webassembly/image-processor",
        "--replicas=3",
    ])?;
    assert!(
        !refused.success
            && refused.stderr.contains("spec.replicas")
            && refused
                .stderr
                .contains("the HorizontalPodAutoscaler owns the replica count"),
        "{refused:?}"
    );
    // Nor may an apply set both.
    let mut both = seed_json()?;
    both["metadata"]["name"] = json!("both");
    both["spec"]["replicas"] = json!(2);
    let out = k.apply(ns.name(), &both.to_string())?;
    assert!(
        !out.success && out.stderr.contains("spec.replicas"),
        "{out:?}"
    );

    // Without scaling, kubectl scale sets spec.replicas.
    let mut fixed = seed_json()?;
    remove(&mut fixed, "/spec/scaling");
    let applied = k.apply(ns.name(), &fixed.to_string())?;
    assert!(applied.success, "{}", applied.stderr);
    k.ok(&[
        "scale",
        "-n",
        ns.name(),
        "webassembly/image-processor",
        "--replicas=3",
    ])?;
    let replicas = k.ok(&[
        "get",
        "wasm",
        "image-processor",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.replicas}",
    ])?;
    assert_eq!(replicas.trim(), "3");
    let scale = k.ok(&[
        "get",
        "--raw",
        &format!(
            "/apis/wa8s.reconciler.io/v1/namespaces/{}/webassemblies/image-processor/scale",
            ns.name()
        ),
    ])?;
    let scale: Value = serde_json::from_str(&scale)?;
    assert_eq!(scale["spec"]["replicas"], 3, "{scale}");
    Ok(())
}

/// Sets the value at a JSON pointer, creating objects on the way.
fn set(doc: &mut Value, pointer: &str, value: Value) {
    let mut cur = doc;
    for key in pointer.trim_start_matches('/').split('/') {
        cur = match cur {
            Value::Array(items) => {
                let i: usize = key.parse().unwrap_or(items.len());
                if i >= items.len() {
                    items.push(Value::Null);
                }
                let last = items.len() - 1;
                &mut items[i.min(last)]
            }
            other => {
                if !other.is_object() {
                    *other = json!({});
                }
                other
                    .as_object_mut()
                    .map(|m| m.entry(key.to_owned()).or_insert(Value::Null))
                    .unwrap_or_else(|| unreachable!("just made an object"))
            }
        };
    }
    *cur = value;
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
        m.remove(key);
    }
}

/// One invalid manifest: a flaw applied to the seed, and what the refusal must say.
struct Case {
    flaw: &'static str,
    edit: fn(&mut Value),
    field: &'static str,
    says: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            flaw: "minReplicas above maxReplicas",
            edit: |v| set(v, "/spec/scaling/minReplicas", json!(200)),
            field: "spec.scaling.minReplicas",
            says: "must not be greater than maxReplicas",
        },
        Case {
            flaw: "memory utilization 0",
            edit: |v| set(v, "/spec/scaling/targetMemoryUtilization", json!(0)),
            field: "spec.scaling.targetMemoryUtilization",
            says: "greater than or equal to 1",
        },
        Case {
            flaw: "memory utilization 150",
            edit: |v| set(v, "/spec/scaling/targetMemoryUtilization", json!(150)),
            field: "spec.scaling.targetMemoryUtilization",
            says: "less than or equal to 100",
        },
        Case {
            flaw: "cpu utilization 101",
            edit: |v| set(v, "/spec/scaling/targetCPUUtilization", json!(101)),
            field: "spec.scaling.targetCPUUtilization",
            says: "less than or equal to 100",
        },
        Case {
            flaw: "maxReplicas 0",
            edit: |v| set(v, "/spec/scaling/maxReplicas", json!(0)),
            field: "spec.scaling.maxReplicas",
            says: "greater than or equal to 1",
        },
        Case {
            flaw: "scaling without any target",
            edit: |v| remove(v, "/spec/scaling/targetMemoryUtilization"),
            field: "spec.scaling",
            says: "set targetMemoryUtilization, targetCPUUtilization, or both",
        },
        Case {
            flaw: "memory target without a memory request",
            edit: |v| remove(v, "/spec/resources/memory"),
            field: "spec.scaling.targetMemoryUtilization",
            says: "needs spec.resources.memory",
        },
        Case {
            flaw: "an operator's label among the pod labels",
            edit: |v| {
                set(
                    v,
                    "/spec/podLabels",
                    json!({"app.kubernetes.io/instance": "other"}),
                )
            },
            field: "spec.podLabels",
            says: "labels are the operator's",
        },
        Case {
            flaw: "the policy annotation among the pod annotations",
            edit: |v| {
                set(
                    v,
                    "/spec/podAnnotations",
                    json!({"wa8s.reconciler.io/policy": "{}"}),
                )
            },
            field: "spec.podAnnotations",
            says: "annotations are the operator's",
        },
        Case {
            flaw: "a liveness probe needing two successes",
            edit: |v| {
                set(
                    v,
                    "/spec/livenessProbe",
                    json!({"httpGet": {"path": "/healthz"}, "successThreshold": 2}),
                )
            },
            field: "spec.livenessProbe.successThreshold",
            says: "must be 1 for a liveness probe",
        },
        Case {
            flaw: "a probe path without its slash",
            edit: |v| {
                set(
                    v,
                    "/spec/readinessProbe",
                    json!({"httpGet": {"path": "ready"}}),
                )
            },
            field: "spec.readinessProbe.httpGet.path",
            says: "'ready' is not a path",
        },
        Case {
            flaw: "both kinds of disruption budget",
            edit: |v| {
                set(
                    v,
                    "/spec/disruptionBudget",
                    json!({"minAvailable": 1, "maxUnavailable": 1}),
                )
            },
            field: "spec.disruptionBudget",
            says: "set exactly one of minAvailable and maxUnavailable",
        },
        Case {
            flaw: "negative replicas",
            edit: |v| set(v, "/spec/replicas", json!(-1)),
            field: "spec.replicas",
            says: "greater than or equal to 0",
        },
        Case {
            flaw: "relative fs path",
            edit: |v| set(v, "/spec/wasi/fs/0/path", json!("config")),
            field: "spec.wasi.fs[0].path",
            says: "'config' is relative",
        },
        Case {
            flaw: "fs path with ..",
            edit: |v| set(v, "/spec/wasi/fs/0/path", json!("/config/../etc")),
            field: "spec.wasi.fs[0].path",
            says: "contains a '.' or '..' segment",
        },
        Case {
            flaw: "fs path with trailing slash",
            edit: |v| set(v, "/spec/wasi/fs/0/path", json!("/config/")),
            field: "spec.wasi.fs[0].path",
            says: "is not normalized",
        },
        Case {
            flaw: "duplicate fs path",
            edit: |v| set(v, "/spec/wasi/fs/1/path", json!("/config")),
            field: "spec.wasi.fs",
            says: "uplicate",
        },
        Case {
            flaw: "readOnly together with maxSize",
            edit: |v| set(v, "/spec/wasi/fs/0/maxSize", json!("1Mi")),
            field: "spec.wasi.fs[0].maxSize",
            says: "cannot be combined with readOnly",
        },
        Case {
            flaw: "configMap source that is not read-only",
            edit: |v| {
                set(
                    v,
                    "/spec/wasi/fs/1/source",
                    json!({"configMap": {"name": "cfg"}}),
                )
            },
            field: "spec.wasi.fs[1].readOnly",
            says: "configMap and secret sources are read-only",
        },
        Case {
            flaw: "fs source naming two volumes",
            edit: |v| {
                set(
                    v,
                    "/spec/wasi/fs/0/source",
                    json!({"configMap": {"name": "a"}, "secret": {"secretName": "b"}}),
                )
            },
            field: "spec.wasi.fs[0].source",
            says: "name exactly one of configMap, secret, persistentVolumeClaim",
        },
        Case {
            flaw: "unparsable maxSize",
            edit: |v| set(v, "/spec/wasi/fs/1/maxSize", json!("1GB")),
            field: "spec.wasi.fs[1].maxSize",
            says: "must be a positive Kubernetes quantity",
        },
        Case {
            flaw: "negative memory",
            edit: |v| set(v, "/spec/resources/memory", json!("-32Mi")),
            field: "spec.resources.memory",
            says: "must be a positive Kubernetes quantity",
        },
        Case {
            flaw: "zero cpu",
            edit: |v| set(v, "/spec/resources/cpu", json!("0")),
            field: "spec.resources.cpu",
            says: "must be a positive Kubernetes quantity",
        },
        Case {
            flaw: "word instead of a quantity",
            edit: |v| set(v, "/spec/resources/memory", json!("lots")),
            field: "spec.resources.memory",
            says: "must be a positive Kubernetes quantity",
        },
        Case {
            flaw: "malformed tag",
            edit: |v| set(v, "/spec/module/tag", json!("v1 beta")),
            field: "spec.module.tag",
            says: "'v1 beta' is not a valid tag",
        },
        Case {
            flaw: "malformed digest",
            edit: |v| set(v, "/spec/module/digest", json!("sha256:xyz")),
            field: "spec.module.digest",
            says: "'sha256:xyz' is not a digest",
        },
        Case {
            flaw: "tag inside the registry reference",
            edit: |v| {
                set(
                    v,
                    "/spec/module/registry",
                    json!("ghcr.io/myorg/image-processor:v1.2.3"),
                )
            },
            field: "spec.module.registry",
            says: "is not a repository reference",
        },
        Case {
            flaw: "uppercase repository path",
            edit: |v| set(v, "/spec/module/registry", json!("ghcr.io/MyOrg/app")),
            field: "spec.module.registry",
            says: "is not a repository reference",
        },
        Case {
            flaw: "neither tag nor digest",
            edit: |v| remove(v, "/spec/module/tag"),
            field: "spec.module",
            says: "set module.tag, module.digest, or both",
        },
        Case {
            flaw: "malformed allowedHosts pattern",
            edit: |v| {
                set(
                    v,
                    "/spec/wasi/network/0/allowedHosts/0",
                    json!("exa mple.com"),
                )
            },
            field: "spec.wasi.network[0].allowedHosts[0]",
            says: "is not a host pattern",
        },
        Case {
            flaw: "wildcard in the middle of a host",
            edit: |v| {
                set(
                    v,
                    "/spec/wasi/network/0/allowedHosts/0",
                    json!("api.*.example.com"),
                )
            },
            field: "spec.wasi.network[0].allowedHosts[0]",
            says: "is not a host pattern",
        },
        Case {
            flaw: "port out of pattern",
            edit: |v| {
                set(
                    v,
                    "/spec/wasi/network/0/allowedHosts/0",
                    json!("api.example.com:123456"),
                )
            },
            field: "spec.wasi.network[0].allowedHosts[0]",
            says: "is not a host pattern",
        },
        Case {
            flaw: "outbound without hosts",
            edit: |v| set(v, "/spec/wasi/network/0/allowedHosts", json!([])),
            field: "spec.wasi.network[0].allowedHosts",
            says: "needs at least one allowedHosts entry",
        },
        Case {
            flaw: "hosts without outbound",
            edit: |v| set(v, "/spec/wasi/network/0/outbound", json!(false)),
            field: "spec.wasi.network[0].allowedHosts",
            says: "has no effect unless outbound: true",
        },
        Case {
            flaw: "env name starting with a digit",
            edit: |v| set(v, "/spec/env/0/name", json!("1CACHE")),
            field: "spec.env[0].name",
            says: "'1CACHE' is not a valid environment variable name",
        },
        Case {
            flaw: "granted env name with '='",
            edit: |v| set(v, "/spec/wasi/env/0", json!("A=B")),
            field: "spec.wasi.env[0]",
            says: "'A=B' is not a valid environment variable name",
        },
        Case {
            flaw: "env with value and valueFrom",
            edit: |v| {
                set(
                    v,
                    "/spec/env/0/valueFrom",
                    json!({"secretKeyRef": {"name": "s", "key": "k"}}),
                )
            },
            field: "spec.env[0].valueFrom",
            says: "set value or valueFrom, not both",
        },
        Case {
            flaw: "duplicate env name",
            edit: |v| {
                set(
                    v,
                    "/spec/env/1",
                    json!({"name": "CACHE_SIZE", "value": "1"}),
                )
            },
            field: "spec.env",
            says: "uplicate",
        },
        Case {
            flaw: "port out of range",
            edit: |v| set(v, "/spec/port", json!(70000)),
            field: "spec.port",
            says: "less than or equal to 65535",
        },
        Case {
            flaw: "unparsable request timeout",
            edit: |v| set(v, "/spec/limits/requestTimeout", json!("soon")),
            field: "spec.limits.requestTimeout",
            says: "'soon' is not a positive duration",
        },
        Case {
            flaw: "unknown field",
            edit: |v| set(v, "/spec/wasi/filesystem", json!([])),
            field: "spec.wasi.filesystem",
            says: "field not declared in schema",
        },
    ]
}

#[test]
fn invalid_manifests_are_refused_with_a_message_naming_the_field() -> Result<()> {
    let k = kubectl()?;
    let ns = k.namespace("invalid")?;
    let cases = cases();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let mut doc = seed_json()?;
        doc["metadata"]["name"] = json!(format!("invalid-{i}"));
        (case.edit)(&mut doc);
        let out = k.apply(ns.name(), &doc.to_string())?;
        if out.success {
            failures.push(format!("{}: accepted, expected refusal", case.flaw));
        } else if !(out.stderr.contains(case.field) && out.stderr.contains(case.says)) {
            failures.push(format!(
                "{}: refusal does not name {:?} with {:?}:\n    {}",
                case.flaw,
                case.field,
                case.says,
                out.stderr.trim()
            ));
        }
    }
    // Nothing was stored, and the unmodified manifest is accepted in the same namespace, so the
    // refusals above are about the flaws and not about the namespace or the CRD.
    let stored = k.ok(&["get", "wasm", "-n", ns.name(), "-o", "name"])?;
    if !stored.trim().is_empty() {
        failures.push(format!("refused objects were stored anyway: {stored}"));
    }
    let control = k.apply(ns.name(), &seed_yaml()?)?;
    if !control.success {
        failures.push(format!(
            "the unmodified seed was refused: {}",
            control.stderr
        ));
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    Ok(())
}

#[test]
fn an_admission_policy_keeps_objects_to_the_allowed_registries() -> Result<()> {
    let k = kubectl()?;
    let ns = k.namespace("registries")?;
    let n = ns.name();
    k.ok(&[
        "label",
        "namespace",
        n,
        "wa8s.reconciler.io/restrict-registries=true",
    ])?;
    let example =
        std::fs::read_to_string(wa8s_e2e::repo_root().join("examples/restrict-registries.yaml"))?;
    let applied = k.apply(n, &example)?;
    assert!(
        applied.success,
        "the example policy was refused: {}",
        applied.stderr
    );
    let mut other = seed_json()?;
    set(
        &mut other,
        "/spec/module/registry",
        json!("docker.io/someone/miner"),
    );
    let other = serde_json::to_string(&other)?;
    // The API server compiles and starts enforcing a new policy within seconds.
    let refused = k.eventually(Duration::from_secs(60), "the policy to refuse", |k| {
        let out = k.apply(n, &other).ok()?;
        (!out.success).then_some(out.stderr)
    })?;
    assert!(
        refused.contains("docker.io/someone/miner is not in an allowed registry"),
        "{refused}"
    );
    // The users' manifest names an allowed registry and still applies verbatim.
    let applied = k.apply(n, &seed_yaml()?)?;
    assert!(applied.success, "{}", applied.stderr);
    k.ok(&[
        "delete",
        "validatingadmissionpolicybinding",
        "wa8s-allowed-registries",
    ])?;
    k.ok(&[
        "delete",
        "validatingadmissionpolicy",
        "wa8s-allowed-registries",
    ])?;
    Ok(())
}

/// Applies (as a server-side dry run) the seed with `value` at `pointer`, for every table
/// entry, and lists the entries where the API server's admission differs from `parse`.
fn admission_disagreements(
    k: &Kubectl,
    namespace: &str,
    pointer: &str,
    table: Vec<(String, bool)>,
    parse: impl Fn(&str) -> bool,
) -> Result<Vec<String>> {
    let mut wrong = Vec::new();
    for (value, _) in table {
        let mut doc = seed_json()?;
        set(&mut doc, pointer, json!(value));
        let out = k.run_with_stdin(
            &[
                "apply",
                "--server-side",
                "--dry-run=server",
                "--field-manager=wa8s-e2e",
                "-n",
                namespace,
                "-f",
                "-",
            ],
            Some(&doc.to_string()),
        )?;
        if out.success != parse(&value) {
            wrong.push(format!(
                "{pointer} = {value:?}: API server {}, the Rust parser {}{}",
                if out.success { "admits" } else { "refuses" },
                if out.success { "refuses" } else { "admits" },
                if out.success {
                    String::new()
                } else {
                    format!(" ({})", out.stderr.trim())
                }
            ));
        }
    }
    Ok(wrong)
}

#[test]
fn the_crds_cel_rules_admit_exactly_what_the_runtimes_parsers_accept() -> Result<()> {
    use wa8s_api::grammar_examples::{env_names, guest_paths, host_patterns};
    use wa8s_api::host_pattern::HostRule;
    use wa8s_api::{EnvName, GuestPath};

    let k = kubectl()?;
    let ns = k.namespace("grammar")?;
    let n = ns.name();
    // Where a value goes in the seed, the values, and the Rust parser's verdict.
    type Table = (&'static str, Vec<(String, bool)>, fn(&str) -> bool);
    let tables: [Table; 3] = [
        (
            "/spec/wasi/network/0/allowedHosts/0",
            host_patterns(),
            |v| v.parse::<HostRule>().is_ok(),
        ),
        ("/spec/wasi/fs/0/path", guest_paths(), |v| {
            GuestPath::validate(v).is_ok()
        }),
        ("/spec/wasi/env/0", env_names(), |v| {
            EnvName::validate(v).is_ok()
        }),
    ];
    let mut wrong = Vec::new();
    for (pointer, table, parse) in tables {
        wrong.extend(admission_disagreements(&k, n, pointer, table, parse)?);
    }
    // A dry run stores nothing: the namespace is still empty.
    let stored = k.ok(&["get", "wasm", "-n", n, "-o", "name"])?;
    assert!(stored.trim().is_empty(), "dry runs stored {stored}");
    if !wrong.is_empty() {
        bail!(
            "{} values judged differently:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }
    Ok(())
}
