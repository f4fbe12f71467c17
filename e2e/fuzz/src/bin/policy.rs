//! The pod contract annotation, as the shim reads it from a pod.
use std::collections::BTreeMap;
use wa8s_api::contract::{POLICY_ANNOTATION, Policy};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let json = String::from_utf8_lossy(data).into_owned();
        let annotations = BTreeMap::from([(POLICY_ANNOTATION.to_owned(), json)]);
        if let Ok(policy) = Policy::from_annotations(&annotations) {
            assert_eq!(Policy::from_annotations(&policy.to_annotations()).ok(), Some(policy));
        }
    });
}
