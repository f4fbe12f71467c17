//! The OCI parsers fed generated input: image references, manifests and indexes, the
//! streaming component inspector (whole and in arbitrary pieces), and layered images' tar
//! layers. None may panic; the inspector must say the same of a binary however it is cut.
//! Each target replays its committed corpus (`tests/corpus/`, with every crash the
//! coverage-guided fuzzer of `e2e/scripts/fuzz.sh` found) first; `PROPTEST_CASES` bounds
//! the generated cases, and failures are kept in `tests/fuzz.proptest-regressions`.

use proptest::prelude::*;
use wa8s_oci::artifact::{Inspector, inspect, wasm_from_tars};
use wa8s_oci::{image, parse_reference};
use wa8s_test_components as guests;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("seed"))
        .collect()
}

/// Inspects `bytes` whole and fed in the given pieces: the answers must agree.
fn check_inspector(bytes: &[u8], cuts: &[usize]) {
    let whole = inspect(bytes);
    let mut inspector = Inspector::default();
    let mut at = 0;
    let mut fed = Ok(());
    for cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let end = (*cut).clamp(at, bytes.len());
        fed = inspector.feed(&bytes[at..end]);
        if fed.is_err() {
            break;
        }
        at = end;
    }
    let pieces = fed.and_then(|()| inspector.finish(wa8s_oci::sha256_digest(bytes)));
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => assert_eq!((&a.imports, &a.exports), (&b.imports, &b.exports)),
        (Err(_), Err(_)) => {}
        _ => panic!("whole: {whole:?}\npieces: {pieces:?}"),
    }
}

#[test]
fn the_committed_corpus_and_the_test_guests_parse_without_panicking() {
    // Each as its fuzz target reads it (e2e/fuzz/src/bin/), crashes it found included.
    for seed in corpus("manifest") {
        let _ = image::parse("seed", &seed);
    }
    for seed in corpus("reference") {
        let _ = parse_reference(&String::from_utf8_lossy(&seed));
    }
    for seed in corpus("inspector") {
        if let Some((cut, wasm)) = seed.split_first() {
            check_inspector(wasm, &[(*cut as usize * wasm.len()) / 255]);
        }
    }
    for seed in corpus("tar_layers") {
        if let Some((flag, layer)) = seed.split_first() {
            let _ = wasm_from_tars(&[(layer.to_vec(), flag & 1 == 1)], None, 1 << 20);
        }
    }
    for wasm in [
        guests::HTTP_COMPONENT,
        guests::HELLO_CORE,
        guests::SOCKPROBE_COMPONENT,
    ] {
        check_inspector(wasm, &[1, 7, 8, 9, 100, 4096]);
        assert!(inspect(wasm).is_ok());
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
    fn references_never_panic(text in "([a-z0-9.:-]{0,20}/){0,3}[a-z0-9._-]{0,20}(:[a-zA-Z0-9._-]{0,10})?(@sha256:[0-9a-f]{0,64})?|.{0,60}") {
        let _ = parse_reference(&text);
    }

    #[test]
    fn manifests_never_panic(seed in 0usize..5, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8), noise in proptest::collection::vec(any::<u8>(), 0..200)) {
        let seeds = corpus("manifest");
        let mut raw = seeds[seed % seeds.len()].clone();
        for (at, byte) in flips {
            let i = at.index(raw.len());
            raw[i] = byte;
        }
        let _ = image::parse("mutated", &raw);
        let _ = image::parse("noise", &noise);
    }

    #[test]
    fn the_inspector_agrees_with_itself_on_mutated_components(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cuts in proptest::collection::vec(0usize..20_000, 0..12),
        truncate in any::<prop::sample::Index>(),
    ) {
        let mut wasm = [guests::HTTP_COMPONENT, guests::HELLO_CORE, guests::SOCKPROBE_COMPONENT][which].to_vec();
        for (at, byte) in flips {
            let i = at.index(wasm.len());
            wasm[i] = byte;
        }
        let mut cuts = cuts;
        cuts.sort();
        check_inspector(&wasm, &cuts);
        let cut = truncate.index(wasm.len());
        check_inspector(&wasm[..cut], &cuts);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_inspector(bytes in proptest::collection::vec(any::<u8>(), 0..512), cuts in proptest::collection::vec(0usize..512, 0..6)) {
        let mut cuts = cuts;
        cuts.sort();
        check_inspector(&bytes, &cuts);
        let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
        wasm.extend(&bytes);
        check_inspector(&wasm, &cuts);
    }

    #[test]
    fn tar_layers_never_panic(layers in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..2048), any::<bool>()), 0..3), entry in proptest::option::of("[a-z/.]{0,12}")) {
        let _ = wasm_from_tars(&layers, entry.as_deref(), 1 << 20);
    }
}
