//! The CRD's own schema and CEL rules for allowedHosts entries, fs paths and env names,
//! evaluated in-process (kube-cel: the Kubernetes CEL libraries in Rust) over the grammar
//! tables, and compared with the Rust parsers both ways. A fast check beside the API suite,
//! which applies the same tables to a real kube-apiserver (Go's CEL and IP parser) and remains
//! the acceptance test.

use kube_cel::KubeCelExt;
use kube_cel::cel::{Context, Program, Value as Cel};
use schemars::JsonSchema;
use serde_json::Value;
use wa8s_api::grammar_examples::{env_names, guest_paths, host_patterns};
use wa8s_api::host_pattern::HostRule;
use wa8s_api::{EnvName, GuestPath, HostPattern};

/// Whether a string schema (length bounds, then every CEL rule) admits `value`, as the API
/// server decides it: a rule that errors refuses.
fn admits(schema: &Value, value: &str) -> Result<bool, String> {
    let len = value.chars().count() as u64;
    let bound = |key: &str| schema.get(key).and_then(Value::as_u64);
    if bound("maxLength").is_some_and(|max| len > max)
        || bound("minLength").is_some_and(|min| len < min)
    {
        return Ok(false);
    }
    let rules = schema["x-kubernetes-validations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for rule in rules {
        let text = rule["rule"].as_str().ok_or("a rule without text")?;
        let program = Program::compile(text).map_err(|e| format!("{text}: {e}"))?;
        let mut ctx = Context::default().with_all();
        ctx.add_variable_from_value("self", value.to_owned());
        if program.execute(&ctx).ok() != Some(Cel::Bool(true)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("a schema is JSON")
}

/// The table entries where the schema's verdict differs from `parse`'s.
fn disagreements(
    schema: Value,
    table: Vec<(String, bool)>,
    parse: fn(&str) -> bool,
) -> Vec<String> {
    table
        .into_iter()
        .filter_map(|(value, _)| {
            let cel = admits(&schema, &value);
            (cel != Ok(parse(&value)))
                .then(|| format!("{value:?}: CEL {cel:?}, parser {}", parse(&value)))
        })
        .collect()
}

#[test]
fn the_allowed_hosts_rules_admit_exactly_what_host_rule_accepts() {
    let wrong = disagreements(schema::<HostPattern>(), host_patterns(), |v| {
        v.parse::<HostRule>().is_ok()
    });
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_fs_path_rules_admit_exactly_what_guest_path_validation_accepts() {
    let wrong = disagreements(schema::<GuestPath>(), guest_paths(), |v| {
        GuestPath::validate(v).is_ok()
    });
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_env_name_rules_admit_exactly_what_env_name_validation_accepts() {
    let wrong = disagreements(schema::<EnvName>(), env_names(), |v| {
        EnvName::validate(v).is_ok()
    });
    assert!(wrong.is_empty(), "{wrong:#?}");
}
