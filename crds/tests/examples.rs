//! Every example manifest (and the users' seed manifest) deserializes into the Rust types and
//! serializes back without losing or changing anything.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;
use wa8s_api::WebAssembly;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).map_err(anyhow::Error::from))
        .filter(|v| !matches!(v, Ok(serde_json::Value::Null)))
        .collect()
}

fn round_trip(value: &serde_json::Value) -> Result<serde_json::Value> {
    let typed: WebAssembly = serde_json::from_value(value.clone())?;
    Ok(serde_json::to_value(&typed)?)
}

#[test]
fn every_example_manifest_round_trips_through_the_rust_types_without_loss() -> Result<()> {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples"))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        for doc in documents(&path)? {
            if doc["kind"] != "WebAssembly" {
                continue;
            }
            let back = round_trip(&doc).with_context(|| format!("{}", path.display()))?;
            assert_eq!(back, doc, "{} changed in a round trip", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected at least 3 example objects, found {checked}"
    );
    Ok(())
}

#[test]
fn the_users_seed_manifest_round_trips_and_matches_the_deploy_example() -> Result<()> {
    let seed_path = repo().join("../shared/fixtures/seed-deploy.yaml");
    let seed = documents(&seed_path)?;
    assert_eq!(seed.len(), 1);
    assert_eq!(round_trip(&seed[0])?, seed[0]);
    let example = documents(&repo().join("examples/deploy.yaml"))?;
    assert_eq!(
        example, seed,
        "examples/deploy.yaml must mirror the users' manifest"
    );
    Ok(())
}

#[test]
fn unknown_fields_are_visible_as_a_round_trip_difference() -> Result<()> {
    // Guards the round-trip test itself: a field the types do not know must not vanish silently.
    let mut doc = documents(&repo().join("examples/deploy.yaml"))?.remove(0);
    doc["spec"]["wasi"]["filesystem"] = serde_json::json!([]);
    assert_ne!(round_trip(&doc)?, doc);
    Ok(())
}
