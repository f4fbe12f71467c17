//! Quantities (resources.memory, maxSize) and durations (requestTimeout).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let text = String::from_utf8_lossy(data);
        let q = wa8s_api::Quantity::from(text.as_ref());
        let _ = q.to_bytes();
        let _ = q.to_milli();
        let _ = wa8s_api::contract::parse_duration_ms(&text);
    });
}
