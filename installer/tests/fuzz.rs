//! containerd configuration edits fed generated input: the real configurations in
//! `tests/fixtures/` with their lines shuffled, cut or mutated, and arbitrary text. No edit may
//! panic; an edit either refuses (leaving the file alone) or yields TOML that parses, keeps
//! the runtime when read again, and gives back the rest of the file when the runtime is
//! removed.
//! `PROPTEST_CASES` bounds the count; failures are kept in `tests/fuzz.proptest-regressions`.

use proptest::prelude::*;
use wa8s_installer::containerd_config::{Change, Runtime, add_runtime, remove_runtime};

/// Every file of `tests/<dir>` with extension `ext` (any, for `None`).
fn files(dir: &str, ext: Option<&str>) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| ext.is_none_or(|ext| p.extension().is_some_and(|e| e == ext)))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("file")).into_owned())
        .collect()
}

fn fixtures() -> Vec<String> {
    files("fixtures", Some("toml"))
}

fn check(text: &str) {
    let runtime = Runtime::default();
    let Ok(change) = add_runtime(text, "config.toml", &runtime) else {
        return;
    };
    let edited = match change {
        Change::Unchanged => return,
        Change::Write(edited) => edited,
    };
    assert!(
        edited.parse::<toml_edit::DocumentMut>().is_ok(),
        "the edit is not TOML:\n{edited}"
    );
    assert_eq!(
        add_runtime(&edited, "config.toml", &runtime).ok(),
        Some(Change::Unchanged),
        "applying twice changed the file"
    );
    // The installer restores its saved original when the file is unchanged since; this is
    // the path for a file others edited too, which keeps everything but the runtime (toml_edit
    // ends a document with a newline, and writes a blank line's CRLF as LF).
    let lf = |t: &str| t.trim_end().replace("\r\n", "\n");
    match remove_runtime(&edited, "config.toml", &runtime.handler) {
        Ok(Change::Write(back)) => {
            assert_eq!(lf(&back), lf(text), "removing did not give back the rest")
        }
        other => panic!("removing after adding: {other:?}"),
    }
}

#[test]
fn every_fixture_takes_the_runtime_and_gives_it_back() {
    for text in fixtures() {
        check(&text);
    }
    // The coverage-guided fuzzer's corpus (e2e/scripts/fuzz.sh), crashes it found included.
    for text in files("corpus/containerd_config", None) {
        check(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_real_configurations_never_panic_an_edit(
        which in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
        keep in any::<prop::sample::Index>(),
        insert in prop_oneof![
            Just(String::new()),
            "\\[[a-z.\"]{0,30}\\]\n",
            "[a-z_]{1,10} = (\"[a-z]{0,5}\"|[0-9]{1,3}|true|\\[\\])\n",
            "version = [0-9]\n",
            ".{0,20}\n",
        ],
    ) {
        let texts = fixtures();
        let text = &texts[which.index(texts.len())];
        let lines: Vec<&str> = text.lines().collect();
        let at = cut.index(lines.len() + 1);
        let len = keep.index(lines.len() - at + 1);
        let mut mutated: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
        mutated.push(insert.clone());
        mutated.extend(lines[at + len..].iter().map(|l| l.to_string()));
        check(&mutated.join("\n"));
    }

    #[test]
    fn arbitrary_text_never_panics_an_edit(text in ".{0,200}") {
        check(&text);
    }
}
