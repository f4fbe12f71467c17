//! Every parser of outside input in `crds`, fed generated input: allowedHosts patterns and
//! the hosts they are matched against, quantities, durations, and the pod contract
//! annotation. None may panic; what parses must mean what it says (a pattern prints back as
//! written and parses again to the same rule; a policy survives its annotation).
//!
//! Each target first replays its committed corpus (`tests/corpus/<target>/`: the shapes that
//! sit on the grammar's edges, and every input the coverage-guided fuzzer of
//! `e2e/scripts/fuzz.sh` found crashing, which it copies there), then runs generated cases: `PROPTEST_CASES`
//! bounds the count (CI sets it), and a failure is shrunk and kept in
//! `tests/fuzz.proptest-regressions`, which is committed and replayed first.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wa8s_api::Quantity;
use wa8s_api::contract::{POLICY_ANNOTATION, Policy, parse_duration_ms};
use wa8s_api::host_pattern::HostRule;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("seed"))
        .collect()
}

fn check_host_rule(text: &str, host: &str, port: u16) {
    if let Ok(rule) = text.parse::<HostRule>() {
        assert_eq!(rule.to_string(), text, "a pattern prints as written");
        assert_eq!(text.parse::<HostRule>().ok(), Some(rule.clone()));
        let _ = rule.allows("https", host, port);
        let _ = rule.matches_host(host);
        if let Some(ip) = rule.literal_ip() {
            assert!(
                rule.matches_host(&ip.to_string()),
                "{text} does not match its own IP"
            );
        }
    }
}

fn check_policy(json: &str) {
    let annotations = BTreeMap::from([(POLICY_ANNOTATION.to_owned(), json.to_owned())]);
    if let Ok(policy) = Policy::from_annotations(&annotations) {
        let again = Policy::from_annotations(&policy.to_annotations()).expect("re-read");
        assert_eq!(again, policy, "a policy survives its annotation");
    }
}

#[test]
fn the_committed_corpora_parse_without_panicking() {
    for seed in corpus("host_rule") {
        // As the fuzz target reads it: a pattern, then a host on the next line.
        let text = String::from_utf8_lossy(&seed);
        let (pattern, host) = text.split_once('\n').unwrap_or((&text, "example.com"));
        check_host_rule(pattern, host, 443);
    }
    for seed in corpus("policy") {
        check_policy(&String::from_utf8_lossy(&seed));
    }
    for seed in corpus("quantity") {
        let text = String::from_utf8_lossy(&seed);
        let _ = Quantity::from(text.as_ref()).to_bytes();
        let _ = parse_duration_ms(&text);
    }
}

/// Patterns from the grammar's alphabet, so generated cases hit its edges rather than
/// being refused at the first character.
fn pattern() -> impl Strategy<Value = String> {
    let scheme = prop_oneof![
        Just(""),
        Just("http://"),
        Just("https://"),
        Just("tcp://"),
        Just("udp://"),
        Just("*://"),
        Just("ftp://"),
        Just("://")
    ];
    let host = prop_oneof![
        Just("*".to_owned()),
        "[a-z0-9-]{0,8}(\\.[a-z0-9-]{0,8}){0,3}",
        "\\*\\.[a-z0-9.-]{0,12}",
        "[0-9.]{1,15}",
        "\\[[0-9a-f:.]{0,20}\\]",
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
        ".{0,12}",
    ];
    let port = prop_oneof![
        Just(String::new()),
        Just(":*".to_owned()),
        (0u32..100_000).prop_map(|p| format!(":{p}")),
        ":[0-9a-z]{0,6}",
    ];
    (scheme, host, port).prop_map(|(s, h, p)| format!("{s}{h}{p}"))
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn host_patterns_never_panic_and_print_back_as_written(
        text in pattern(),
        host in prop_oneof![".{0,40}", "[a-z.\\u{e9}\\u{1F600}]{0,20}"],
        port: u16,
    ) {
        check_host_rule(&text, &host, port);
    }

    #[test]
    fn arbitrary_text_is_never_a_panicking_pattern(text in ".{0,40}", host in ".{0,40}") {
        check_host_rule(&text, &host, 80);
    }

    #[test]
    fn quantities_never_panic(text in "[0-9.eE+-]{0,12}(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|)?") {
        let q = Quantity::from(text.as_str());
        let _ = q.to_bytes();
        let _ = q.to_milli();
    }

    #[test]
    fn binary_quantities_are_exact(n in 0u64..(1 << 20), unit in 0usize..4) {
        let (suffix, scale) = [("", 1u64), ("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30)][unit];
        let q = Quantity::from(format!("{n}{suffix}").as_str());
        prop_assert_eq!(q.to_bytes(), n.checked_mul(scale));
    }

    #[test]
    fn durations_never_panic_and_mean_what_they_say(text in ".{0,16}", n in 0u64..1_000_000) {
        let _ = parse_duration_ms(&text);
        prop_assert_eq!(parse_duration_ms(&format!("{n}ms")), Some(n));
        prop_assert_eq!(parse_duration_ms(&format!("{n}s")), Some(n * 1000));
    }

    #[test]
    fn policy_annotations_never_panic(json in "\\{.{0,80}\\}|.{0,40}") {
        check_policy(&json);
    }

    #[test]
    fn generated_policies_survive_their_annotation(
        env in proptest::collection::vec("[A-Z_]{1,8}", 0..4),
        hosts in proptest::collection::vec(pattern(), 0..4),
        memory in proptest::option::of(1u64..(1 << 40)),
        timeout in 1u64..1_000_000,
        concurrency in 1u32..10_000,
        port in 1u16..,
    ) {
        let mut policy = Policy::deny_all();
        policy.env = env;
        policy.allowed_hosts = hosts;
        policy.limits.memory_bytes = memory;
        policy.limits.request_timeout_ms = timeout;
        policy.limits.max_concurrent_requests = concurrency;
        policy.port = port;
        let again = Policy::from_annotations(&policy.to_annotations());
        prop_assert_eq!(again.ok(), Some(policy));
    }
}
