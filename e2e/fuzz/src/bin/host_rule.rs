//! allowedHosts patterns: the first line is parsed, the second matched against it.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let (pattern, host) = text.split_once('\n').unwrap_or((&text, "example.com"));
        if let Ok(rule) = pattern.parse::<wa8s_api::host_pattern::HostRule>() {
            assert_eq!(rule.to_string(), pattern);
            let _ = rule.allows("https", host, 443);
            let _ = rule.matches_host(host);
        }
    });
}
