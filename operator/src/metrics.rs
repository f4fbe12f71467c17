//! Prometheus metrics: reconciles by result, errors by reason, reconcile durations.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use kube::runtime::reflector::Store;
use wa8s_api::WebAssembly;

type Labels = Vec<(String, String)>;

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    resolve_duration: Family<Labels, Histogram, fn() -> Histogram>,
    objects: Family<Labels, Gauge>,
    watch_events: Family<Labels, Counter>,
    /// The controller's cache, counted by condition at each scrape.
    store: std::sync::OnceLock<Store<WebAssembly>>,
}

fn duration_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 12))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wa8s_operator");
        let reconciles = Family::<Labels, Counter>::default();
        let errors = Family::<Labels, Counter>::default();
        let duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        let resolve_duration = Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_buckets as fn() -> Histogram,
        );
        let objects = Family::<Labels, Gauge>::default();
        let watch_events = Family::<Labels, Counter>::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "watch_events",
            "Watch events of the objects a reconcile reads (kind), and whether each triggered one",
            watch_events.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed or found a problem a user must fix, by reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by result",
            duration.clone(),
        );
        registry.register(
            "resolve_duration_seconds",
            "Time resolving a module's tag (or checking its digest) at the registry took, by result",
            resolve_duration.clone(),
        );
        registry.register(
            "objects",
            "WebAssembly objects by condition type and status, as the operator's cache holds them",
            objects.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            resolve_duration,
            objects,
            watch_events,
            store: std::sync::OnceLock::new(),
        }
    }

    pub fn reconciled(&self, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        self.duration
            .get_or_create(&vec![("result".into(), result.into())])
            .observe(took.as_secs_f64());
    }

    /// A watch event of `kind` arrived; `triggered`: it was worth a reconcile.
    pub fn watch_event(&self, kind: &str, triggered: bool) {
        self.watch_events
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("triggered".into(), triggered.to_string()),
            ])
            .inc();
    }

    /// One resolve took `took`; `result` is `success` or the condition reason of its failure.
    pub fn resolved(&self, result: &str, took: Duration) {
        self.resolve_duration
            .get_or_create(&vec![("result".into(), result.into())])
            .observe(took.as_secs_f64());
    }

    /// Counts objects from the controller's cache at each scrape from now on.
    pub fn count_objects(&self, store: Store<WebAssembly>) {
        let _ = self.store.set(store);
    }

    fn count_objects_now(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
        for obj in store.state() {
            let conditions = obj.status.as_ref().map(|s| s.conditions.as_slice());
            match conditions {
                Some(c) if !c.is_empty() => {
                    for c in c {
                        *counts
                            .entry((c.type_.clone(), c.status.clone()))
                            .or_default() += 1;
                    }
                }
                // Not reconciled yet: not known to be ready.
                _ => {
                    *counts
                        .entry(("Ready".into(), "Unknown".into()))
                        .or_default() += 1
                }
            }
        }
        // Series whose count fell to zero disappear rather than linger.
        self.objects.clear();
        for ((condition, status), n) in counts {
            self.objects
                .get_or_create(&vec![
                    ("condition".into(), condition),
                    ("status".into(), status),
                ])
                .set(n);
        }
    }

    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.count_objects_now();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// The sum of the `wa8s_operator_reconciles_total` counters in a scrape of `/metrics` (the
/// tests and the benchmark read the operator as Prometheus would).
pub fn reconciles_in(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|l| l.starts_with("wa8s_operator_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use kube::runtime::{reflector, watcher};
    use wa8s_api::WebAssemblyStatus;

    fn object(name: &str, ready: Option<&str>) -> WebAssembly {
        let mut obj = WebAssembly::new(
            name,
            serde_json::from_value(serde_json::json!({
                "module": {"registry": "ghcr.io/a/b", "tag": "v1"}
            }))
            .expect("spec"),
        );
        obj.metadata.namespace = Some("default".into());
        obj.status = ready.map(|status| WebAssemblyStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: "Test".into(),
                message: String::new(),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: None,
            }],
            ..WebAssemblyStatus::default()
        });
        obj
    }

    #[test]
    fn objects_are_counted_by_condition_from_the_cache_at_each_scrape() {
        let metrics = Metrics::new();
        let (reader, mut writer) = reflector::store();
        metrics.count_objects(reader);
        for obj in [
            object("a", Some("True")),
            object("b", Some("True")),
            object("c", Some("False")),
            object("d", None),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(obj));
        }
        let text = metrics.encode();
        for line in [
            r#"wa8s_operator_objects{condition="Ready",status="True"} 2"#,
            r#"wa8s_operator_objects{condition="Ready",status="False"} 1"#,
            r#"wa8s_operator_objects{condition="Ready",status="Unknown"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        writer.apply_watcher_event(&watcher::Event::Delete(object("c", Some("False"))));
        let text = metrics.encode();
        assert!(!text.contains(r#"status="False""#), "{text}");
    }
}
