//! Every reason the operator can write into a condition (or a reconcile-error metric) is
//! explained in docs/troubleshooting.md, so a user who reads one can look it up.

use std::path::PathBuf;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// CamelCase string literals of two words or more in a source file's non-test part: the
/// reasons (and a few other names, filtered below).
fn camel_literals(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or(source);
    let mut found = Vec::new();
    for piece in code.split('"').skip(1).step_by(2) {
        let words = piece.chars().filter(char::is_ascii_uppercase).count();
        let camel = piece.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && piece.chars().all(|c| c.is_ascii_alphanumeric())
            && words >= 2;
        if camel {
            found.push(piece.to_owned());
        }
    }
    found
}

#[test]
fn every_reason_the_operator_writes_is_explained_in_the_troubleshooting_guide() {
    let guide = std::fs::read_to_string(repo().join("docs/troubleshooting.md"))
        .expect("docs/troubleshooting.md");
    // Type names and condition types, not reasons.
    let not_reasons = ["OciResolver", "ModuleResolved"];
    let mut missing = Vec::new();
    let mut seen = 0;
    for file in ["status.rs", "resolve.rs", "controller.rs"] {
        let source = std::fs::read_to_string(repo().join("operator/src").join(file))
            .expect("operator source");
        for reason in camel_literals(&source) {
            if not_reasons.contains(&reason.as_str()) {
                continue;
            }
            seen += 1;
            if !guide.contains(&format!("`{reason}`")) {
                missing.push(format!("{reason} ({file})"));
            }
        }
    }
    assert!(seen >= 25, "only {seen} reasons found: the scan is broken");
    assert!(
        missing.is_empty(),
        "not in docs/troubleshooting.md: {missing:?}"
    );
}
