//! Values, accepted and refused, on which the CRD's CEL rules and the Rust parsers must agree:
//! allowedHosts entries ([`HostRule`](crate::host_pattern::HostRule)), `wasi.fs` paths
//! ([`GuestPath::validate`](crate::GuestPath::validate)) and environment variable names
//! ([`EnvName::validate`](crate::EnvName::validate)). The unit tests hold the parsers to the
//! verdicts; the API suite (e2e/tests/api.rs) applies every value to a real API server and
//! holds its admission to the parsers' verdicts, both ways.

use crate::{EnvName, GuestPath};

/// `(value, accepted)` pairs for `spec.wasi.network[].allowedHosts[]`.
pub fn host_patterns() -> Vec<(String, bool)> {
    let label = |n: usize| "a".repeat(n);
    // 63 + 1 + 63 + 1 + 63 + 1 + 61 = 253 characters: the longest DNS name.
    let longest_name = format!("{0}.{0}.{0}.{1}", label(63), label(61));
    let accepted = [
        "*",
        "*:*",
        "*://*",
        "*://*:*",
        "example.com",
        "EXAMPLE.Com",
        "a",
        "a-b.c-d.e",
        "123.example.com",
        "api.example.com:443",
        "api.example.com:*",
        "a:1",
        "a:65535",
        "*.internal.example.com",
        "*.internal.example.com:8443",
        "https://api.example.com",
        "http://api.example.com:8080",
        "tcp://db.internal:5432",
        "udp://dns.internal:53",
        "*://api.example.com:1",
        "1.2.3.4",
        "10.0.0.7:8080",
        "1.2.3.999",
        "[::1]",
        "[::]",
        "[fd00::7]:80",
        "[FD00::7]",
        "[2001:db8::1]:443",
        "https://[2001:db8:0:0:0:0:0:1]:8443",
        "[64:ff9b::1.2.3.4]",
    ]
    .map(|s| (s.to_owned(), true));
    let refused = [
        "",
        "exa mple.com",
        "api.*.example.com",
        "*example.com",
        "*.",
        "*.*.example.com",
        "ftp://example.com",
        "HTTP://example.com",
        "http://",
        "http://http://example.com",
        "://example.com",
        "example.com:0",
        "example.com:00",
        "example.com:080",
        "example.com:+80",
        "example.com:-1",
        "example.com:65536",
        "example.com:99999",
        "example.com:123456",
        "example.com:",
        "example.com:http",
        "a:1:2",
        "-a.example.com",
        "a-.example.com",
        "a..b",
        ".example.com",
        "example.com.",
        "_srv.example.com",
        "\u{e9}.example.com",
        "::1",
        "[:::]",
        "[::1",
        "::1]",
        "[::1]x",
        "[::1]:",
        "[::1]:0",
        "[1.2.3.4]",
        "[fe80::1%eth0]",
        "[::ffff:1.2.3.4]",
        "[12345::1]",
        "[1:2:3:4:5:6:7:8:9]",
        "[]",
    ]
    .map(|s| (s.to_owned(), false));
    let mut all: Vec<(String, bool)> = accepted.into_iter().chain(refused).collect();
    all.extend([
        (label(63), true),
        (format!("{}.example.com", label(64)), false),
        (longest_name.clone(), true),
        (format!("*.{longest_name}"), true),
        (format!("https://*.{longest_name}:65535"), true),
        (format!("a{longest_name}"), false),
        (format!("*.a{longest_name}"), false),
        (format!("https://*.a{longest_name}:65535"), false),
    ]);
    all
}

/// `(value, accepted)` pairs for `spec.wasi.fs[].path`.
pub fn guest_paths() -> Vec<(String, bool)> {
    let long = |n: usize| format!("/{}", "p".repeat(n - 1));
    let mut all: Vec<(String, bool)> = [
        ("/", true),
        ("/config", true),
        ("/a/b/c", true),
        ("/a.b", true),
        ("/.hidden", true),
        ("/...", true),
        ("/a b", true),
        ("", false),
        ("config", false),
        ("./config", false),
        ("/config/", false),
        ("//", false),
        ("/a//b", false),
        ("/a/./b", false),
        ("/a/..", false),
        ("/..", false),
        ("/.", false),
    ]
    .map(|(s, ok)| (s.to_owned(), ok))
    .into_iter()
    .collect();
    all.extend([
        (long(GuestPath::MAX_LEN), true),
        (long(GuestPath::MAX_LEN + 1), false),
    ]);
    all
}

/// `(value, accepted)` pairs for `spec.env[].name` and `spec.wasi.env[]`.
pub fn env_names() -> Vec<(String, bool)> {
    let mut all: Vec<(String, bool)> = [
        ("A", true),
        ("_", true),
        ("-", true),
        (".", true),
        ("a.b-c_D9", true),
        ("CACHE_DIR", true),
        ("", false),
        ("1CACHE", false),
        ("A=B", false),
        ("A B", false),
        ("\u{e9}t\u{e9}", false),
    ]
    .map(|(s, ok)| (s.to_owned(), ok))
    .into_iter()
    .collect();
    all.extend([
        ("x".repeat(EnvName::MAX_LEN), true),
        ("x".repeat(EnvName::MAX_LEN + 1), false),
    ]);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HostPattern;
    use crate::host_pattern::HostRule;

    fn disagreements(
        table: Vec<(String, bool)>,
        parse: impl Fn(&str) -> Result<(), String>,
    ) -> Vec<String> {
        table
            .into_iter()
            .filter_map(|(value, accepted)| {
                let verdict = parse(&value);
                (verdict.is_ok() != accepted).then(|| format!("{value:?}: {verdict:?}"))
            })
            .collect()
    }

    #[test]
    fn host_rule_gives_every_table_entry_its_verdict() {
        let wrong = disagreements(host_patterns(), |v| {
            v.parse::<HostRule>().map(drop).map_err(|e| e.to_string())
        });
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn guest_path_validation_gives_every_table_entry_its_verdict() {
        let wrong = disagreements(guest_paths(), GuestPath::validate);
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn env_name_validation_gives_every_table_entry_its_verdict() {
        let wrong = disagreements(env_names(), EnvName::validate);
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn the_longest_admitted_pattern_fits_the_schemas_max_length() {
        let longest = host_patterns()
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(v, _)| v.len())
            .max();
        assert_eq!(longest, Some(HostPattern::MAX_LEN));
    }

    #[test]
    fn check_grants_names_the_field_of_the_first_grant_the_runtime_would_refuse() {
        let spec = |wasi: serde_json::Value| -> crate::WebAssemblySpec {
            serde_json::from_value(serde_json::json!({
                "module": { "registry": "ghcr.io/a/b", "tag": "v1" },
                "env": [{ "name": "OK", "value": "1" }],
                "wasi": wasi,
            }))
            .expect("a spec")
        };
        for (wasi, field, says) in [
            (
                serde_json::json!({ "fs": [{ "path": "/a" }, { "path": "/b/" }] }),
                "spec.wasi.fs[1].path: ",
                "is not normalized",
            ),
            (
                serde_json::json!({ "env": ["OK", "1BAD"] }),
                "spec.wasi.env[1]: ",
                "not a valid environment variable name",
            ),
            (
                serde_json::json!({ "network": [{ "outbound": true,
                    "allowedHosts": ["a.example.com", "[::ffff:1.2.3.4]"] }] }),
                "spec.wasi.network[0].allowedHosts[1]: ",
                "IPv4-mapped",
            ),
        ] {
            let err = spec(wasi).check_grants().expect_err(field).to_string();
            assert!(err.starts_with(field) && err.contains(says), "{err}");
        }
        assert!(
            spec(serde_json::json!({ "env": ["OK"] }))
                .check_grants()
                .is_ok()
        );
    }
}
