//! Which watch events are worth a reconcile.
//!
//! Every write the operator makes comes back to it as a watch event, and owned objects change
//! for reasons no status reads (an HPA's metrics every 15 s, a PDB's pod counts, a pod moving
//! between phases). Unfiltered, each object cost ~2.7 reconciles to converge, each a dozen
//! API calls. Here each watched kind is reduced to the part of it a reconcile reads (its
//! *projection*), and an event passes only when that part changed and the change is not the
//! answer to the operator's own write.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;

/// One watched object: kind, namespace and name, hashed (the filters keep 16 bytes per
/// object, not its name; a collision costs at worst one extra or one missed trigger, which
/// the periodic reconcile repairs).
fn key<K: Resource<DynamicType = ()>>(obj: &K) -> u64 {
    let mut h = DefaultHasher::new();
    K::kind(&()).hash(&mut h);
    obj.meta().namespace.hash(&mut h);
    obj.meta().name.hash(&mut h);
    h.finish()
}

fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// The hash of `value`'s JSON (for API types, which do not implement `Hash`).
pub fn hash_json<T: Serialize>(value: &T) -> u64 {
    serde_json::to_vec(value).map_or(0, |bytes| hash_of(&bytes))
}

/// What the operator itself just wrote, so the watch event that reports the write does not
/// trigger another reconcile of the object that made it.
#[derive(Debug, Default)]
pub struct Echoes {
    /// Object → the resourceVersion its last write by us produced, or `DELETED`.
    written: Mutex<HashMap<u64, u64>>,
}

/// Marks a deletion the operator asked for.
const DELETED: u64 = u64::MAX;

impl Echoes {
    /// Records `obj` as the API server returned it from our write.
    pub fn wrote<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        if let Some(rv) = obj.meta().resource_version.as_deref() {
            self.lock().insert(key(obj), hash_of(rv));
        }
    }

    /// Records that we are deleting `obj`: its deletion event is ours.
    pub fn deleting<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.lock().insert(key(obj), DELETED);
    }

    /// Whether this applied `obj` is the one our last write produced (consumed if so).
    fn is_echo(&self, key: u64, rv: Option<&str>) -> bool {
        let mut written = self.lock();
        match (written.get(&key), rv) {
            (Some(&ours), Some(rv)) if ours == hash_of(rv) => {
                written.remove(&key);
                true
            }
            _ => false,
        }
    }

    fn is_our_deletion(&self, key: u64) -> bool {
        self.lock().remove(&key) == Some(DELETED)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Turns a kind's watch events into the objects whose change deserves a reconcile.
#[derive(Debug)]
pub struct Relevance<K> {
    /// Object → hash of its projection, as last seen.
    seen: HashMap<u64, u64>,
    projection: fn(&K) -> u64,
    /// The projection an object is taken to have before it was first seen: `None` makes
    /// every new object relevant; a pod's is "no failure", so a healthy new pod is not.
    unseen: Option<u64>,
    echoes: Arc<Echoes>,
}

impl<K: Resource<DynamicType = ()>> Relevance<K> {
    pub fn new(projection: fn(&K) -> u64, unseen: Option<u64>, echoes: Arc<Echoes>) -> Self {
        Relevance {
            seen: HashMap::new(),
            projection,
            unseen,
            echoes,
        }
    }

    /// The object to trigger its owner's reconcile with, if this event is one.
    pub fn decide(&mut self, event: watcher::Event<K>) -> Option<K> {
        match event {
            watcher::Event::Init | watcher::Event::InitDone => None,
            // A (re)list: objects seen for the first time are covered by their owners' own
            // first reconcile; after a relist only what changed while the watch was down.
            watcher::Event::InitApply(obj) => {
                let now = (self.projection)(&obj);
                let before = self.seen.insert(key(&obj), now);
                before.is_some_and(|b| b != now).then_some(obj)
            }
            watcher::Event::Apply(obj) => {
                let k = key(&obj);
                let now = (self.projection)(&obj);
                let before = self.seen.insert(k, now).or(self.unseen);
                if self.echoes.is_echo(k, obj.resource_version().as_deref()) {
                    return None;
                }
                (before != Some(now)).then_some(obj)
            }
            watcher::Event::Delete(obj) => {
                let k = key(&obj);
                let before = self.seen.remove(&k).or(self.unseen);
                if self.echoes.is_our_deletion(k) {
                    return None;
                }
                // Something removed what the operator made (it is made again), or a failing
                // pod went away (the failure leaves the status).
                (self.unseen.is_none() || before != self.unseen).then_some(obj)
            }
        }
    }
}

/// A Deployment as a reconcile reads it: its spec (a change by someone else is reverted)
/// and the rollout status reports.
pub fn deployment(d: &Deployment) -> u64 {
    hash_of(&(hash_json(&d.spec), crate::controller::rollout(d)))
}

/// A pod as a reconcile reads it: only whether and why it cannot run its module.
pub fn pod(p: &Pod) -> u64 {
    hash_of(&crate::controller::failure_of(p))
}

/// What a pod with no failure projects to (a new healthy pod triggers nothing).
pub fn healthy_pod() -> u64 {
    hash_of(&None::<crate::status::PodFailure>)
}

/// An owned kind's relevant events, as the controller's trigger stream.
pub fn filter<K, S>(
    events: S,
    mut relevance: Relevance<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    use futures::StreamExt;
    events.filter_map(move |event| {
        std::future::ready(match event {
            Ok(event) => relevance.decide(event).map(Ok),
            Err(e) => Some(Err(e)),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn deployment_at(rv: &str, ready: i32) -> Deployment {
        serde_json::from_value(json!({
            "metadata": { "name": "hello", "namespace": "apps", "resourceVersion": rv,
                          "generation": 1 },
            "spec": { "replicas": 2, "selector": {}, "template": {} },
            "status": { "observedGeneration": 1, "replicas": 2, "readyReplicas": ready,
                        "conditions": [{ "type": "Available", "status": "True",
                                         "lastUpdateTime": format!("2026-12-07T10:00:{rv:0>2}Z") }] },
        }))
        .expect("a Deployment")
    }

    fn deployments(echoes: &Arc<Echoes>) -> Relevance<Deployment> {
        Relevance::new(deployment, None, echoes.clone())
    }

    #[test]
    fn the_event_answering_the_operators_own_write_triggers_no_reconcile() {
        let echoes = Arc::new(Echoes::default());
        let mut r = deployments(&echoes);
        let ours = deployment_at("10", 0);
        echoes.wrote(&ours);
        assert!(r.decide(watcher::Event::Apply(ours)).is_none());
        assert_eq!(echoes.len(), 0, "an echo is consumed");
    }

    #[test]
    fn a_change_someone_else_made_to_an_owned_object_triggers_a_reconcile() {
        let echoes = Arc::new(Echoes::default());
        let mut r = deployments(&echoes);
        let ours = deployment_at("10", 0);
        echoes.wrote(&ours);
        assert!(r.decide(watcher::Event::Apply(ours.clone())).is_none());
        let mut edited = deployment_at("11", 0);
        edited.spec.as_mut().expect("spec").replicas = Some(5);
        assert!(r.decide(watcher::Event::Apply(edited)).is_some());
    }

    #[test]
    fn rollout_progress_triggers_a_reconcile_and_a_timestamp_only_update_does_not() {
        let echoes = Arc::new(Echoes::default());
        let mut r = deployments(&echoes);
        assert!(
            r.decide(watcher::Event::Apply(deployment_at("10", 0)))
                .is_some()
        );
        assert!(
            r.decide(watcher::Event::Apply(deployment_at("11", 1)))
                .is_some(),
            "a pod became ready"
        );
        assert!(
            r.decide(watcher::Event::Apply(deployment_at("12", 1)))
                .is_none(),
            "only a condition's lastUpdateTime moved"
        );
    }

    #[test]
    fn an_owned_object_someone_deleted_triggers_a_reconcile_and_one_we_deleted_does_not() {
        let echoes = Arc::new(Echoes::default());
        let mut r = deployments(&echoes);
        let d = deployment_at("10", 0);
        assert!(r.decide(watcher::Event::InitApply(d.clone())).is_none());
        assert!(r.decide(watcher::Event::Delete(d.clone())).is_some());
        echoes.deleting(&d);
        assert!(r.decide(watcher::Event::Delete(d)).is_none());
    }

    #[test]
    fn a_relist_triggers_only_objects_that_changed_while_the_watch_was_down() {
        let echoes = Arc::new(Echoes::default());
        let mut r = deployments(&echoes);
        assert!(
            r.decide(watcher::Event::InitApply(deployment_at("10", 0)))
                .is_none(),
            "the first list: the owners' own first reconciles cover it"
        );
        assert!(
            r.decide(watcher::Event::InitApply(deployment_at("10", 0)))
                .is_none()
        );
        assert!(
            r.decide(watcher::Event::InitApply(deployment_at("13", 2)))
                .is_some()
        );
    }

    #[test]
    fn an_owned_objects_status_churn_does_not_trigger_when_only_its_spec_is_read() {
        let echoes = Arc::new(Echoes::default());
        let mut r: Relevance<Service> =
            Relevance::new(|s: &Service| hash_json(&s.spec), None, echoes.clone());
        let service = |rv: &str, ingress: &str| -> Service {
            serde_json::from_value(json!({
                "metadata": { "name": "hello", "namespace": "apps", "resourceVersion": rv },
                "spec": { "ports": [{ "port": 80 }] },
                "status": { "loadBalancer": { "ingress": [{ "ip": ingress }] } },
            }))
            .expect("a Service")
        };
        assert!(
            r.decide(watcher::Event::InitApply(service("1", "10.0.0.1")))
                .is_none()
        );
        assert!(
            r.decide(watcher::Event::Apply(service("2", "10.0.0.2")))
                .is_none()
        );
    }

    fn pod_with(rv: &str, waiting: Option<&str>) -> Pod {
        let state = match waiting {
            Some(reason) => json!({ "waiting": { "reason": reason, "message": "no" } }),
            None => json!({ "running": {} }),
        };
        serde_json::from_value(json!({
            "metadata": { "name": "hello-1", "namespace": "apps", "resourceVersion": rv },
            "status": { "containerStatuses": [{ "name": "module", "image": "i", "imageID": "",
                        "ready": waiting.is_none(), "restartCount": 0, "state": state }] },
        }))
        .expect("a Pod")
    }

    #[test]
    fn a_pod_triggers_a_reconcile_only_when_it_starts_or_stops_failing() {
        let echoes = Arc::new(Echoes::default());
        let mut r = Relevance::new(pod, Some(healthy_pod()), echoes);
        assert!(
            r.decide(watcher::Event::Apply(pod_with(
                "1",
                Some("ContainerCreating")
            )))
            .is_none(),
            "a new pod that is starting"
        );
        assert!(
            r.decide(watcher::Event::Apply(pod_with("2", None)))
                .is_none()
        );
        assert!(
            r.decide(watcher::Event::Apply(pod_with(
                "3",
                Some("CrashLoopBackOff")
            )))
            .is_some()
        );
        assert!(
            r.decide(watcher::Event::Apply(pod_with(
                "4",
                Some("CrashLoopBackOff")
            )))
            .is_none(),
            "still failing the same way"
        );
        assert!(
            r.decide(watcher::Event::Delete(pod_with(
                "5",
                Some("CrashLoopBackOff")
            )))
            .is_some(),
            "the failing pod is gone"
        );
        assert!(
            r.decide(watcher::Event::Delete(pod_with("6", None)))
                .is_none()
        );
    }
}
