//! The generated CRD: committed copies match the Rust types, and the API surface users rely on
//! (subresources, printer columns, names, field docs) is present.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray,
};
use wa8s_api::crd;

#[test]
fn committed_crd_files_match_what_the_rust_types_generate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for output in crd::OUTPUTS {
        let committed = std::fs::read_to_string(root.join(output.path)).unwrap_or_default();
        let generated = crd::render(output).expect("CRD renders");
        assert!(
            committed == generated,
            "{} is out of date with crds/src; run `cargo run -p wa8s-api --bin crdgen -- --write` and commit the result",
            output.path
        );
    }
}

#[test]
fn the_committed_field_reference_matches_the_schema_and_names_every_spec_field() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let committed = std::fs::read_to_string(root.join(crd::REFERENCE_PATH)).unwrap_or_default();
    let generated = crd::reference();
    assert!(
        committed == generated,
        "{} is out of date with crds/src; run `cargo run -p wa8s-api --bin crdgen -- --write` and commit the result",
        crd::REFERENCE_PATH
    );
    for field in [
        "`spec.module.registry`",
        "`spec.wasi.network[].allowedHosts`",
        "`spec.readinessProbe.httpGet.path`",
        "`spec.disruptionBudget.maxUnavailable`",
        "`status.desiredReplicas`",
    ] {
        assert!(generated.contains(field), "{field} is not in the reference");
    }
    assert!(generated.contains("kubectl explain pod.spec.affinity"));
}

#[test]
fn the_crd_serves_v1_with_status_and_scale_subresources() {
    let crd = crd::definition();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("webassemblies.wa8s.reconciler.io")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["wasm".to_owned()]));
    let v1 = &crd.spec.versions[0];
    assert_eq!(
        (v1.name.as_str(), v1.served, v1.storage),
        ("v1", true, true)
    );
    let sub = v1.subresources.as_ref().expect("subresources");
    assert!(sub.status.is_some());
    let scale = sub.scale.as_ref().expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
}

#[test]
fn printer_columns_show_module_digest_ready_and_age() {
    let crd = crd::definition();
    let columns: Vec<_> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    for want in [
        ("Module", ".spec.module.registry"),
        ("Digest", ".status.module.shortDigest"),
        ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
        ("Age", ".metadata.creationTimestamp"),
    ] {
        assert!(
            columns.contains(&want),
            "missing column {want:?} in {columns:?}"
        );
    }
}

fn undocumented(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    for (name, prop) in schema.properties.iter().flatten() {
        let here = format!("{path}.{name}");
        if prop.description.as_deref().unwrap_or("").trim().is_empty() {
            out.push(here.clone());
        }
        undocumented(prop, &here, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    let crd = crd::definition();
    let root = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    let mut missing = Vec::new();
    for top in ["spec", "status"] {
        let schema = &root.properties.as_ref().expect("properties")[top];
        undocumented(schema, top, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

#[test]
fn descriptions_are_unwrapped_so_kubectl_explain_can_wrap_them() {
    let yaml = crd::render(&crd::OUTPUTS[0]).expect("CRD renders");
    assert!(
        yaml.contains("Hosts the guest may reach. Each entry is `host`, `*.suffix`, `*`, an IP literal (`10.0.0.7`"),
        "doc comment line breaks leaked into descriptions"
    );
}
