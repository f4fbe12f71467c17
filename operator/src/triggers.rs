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
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use wa8s_api::WebAssembly;

/// One watched object: kind, namespace and name, hashed (the filters keep 16 bytes per
/// object, not its name; a collision costs at worst one extra or one missed trigger, which
/// the periodic reconcile repairs).
fn key<K: Resource<DynamicType = ()>>(obj: &K) -> u64 {
    let meta = obj.meta();
    key_of(
        &K::kind(&()),
        meta.namespace.as_deref(),
        meta.name.as_deref(),
    )
}

fn key_of(kind: &str, namespace: Option<&str>, name: Option<&str>) -> u64 {
    hash_of(&(kind, namespace, name))
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

/// What the operator itself is writing or just wrote, so the watch event that reports the
/// write does not trigger another reconcile of the object that made it.
///
/// The event can arrive before the write's response (measured: a third of Deployment and
/// half of Service creations at 1000 objects), so a write is announced before it is sent;
/// events for it meanwhile are held until the response says whether they were ours.
#[derive(Debug)]
pub struct Echoes {
    written: Mutex<HashMap<u64, Write>>,
    /// Owners to reconcile because an event held during their write was not the write's.
    retrigger: tokio::sync::mpsc::UnboundedSender<ObjectRef<WebAssembly>>,
}

#[derive(Debug)]
enum Write {
    /// Sent, no response yet: the events that arrived meanwhile (resourceVersion hash, and
    /// whether the projection changed), and the answer to the write before it whose event
    /// has not come yet (two writes in a row: the initial replicas after a create).
    InFlight {
        held: Vec<(u64, bool)>,
        earlier: Option<u64>,
    },
    /// Answered with this resourceVersion (hashed), its event not seen yet.
    Done(u64),
    /// A deletion we asked for.
    Deleting,
}

/// What the filter should make of an applied object.
#[derive(Debug, PartialEq, Eq)]
enum Echo {
    /// The event our write produced.
    Ours,
    /// A write is in flight: held until it answers.
    Held,
    /// Not ours.
    No,
}

impl Echoes {
    /// Echoes, and the stream of owners to reconcile again (for `Controller::reconcile_on`).
    pub fn new() -> (
        Self,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<WebAssembly>>,
    ) {
        let (retrigger, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Echoes {
                written: Mutex::default(),
                retrigger,
            },
            rx,
        )
    }

    /// Runs `write` of the `K` named `namespace/name` for `owner`, so that its watch event
    /// triggers nothing.
    pub async fn write<K, F>(
        &self,
        owner: &WebAssembly,
        namespace: &str,
        name: &str,
        write: F,
    ) -> Result<K, kube::Error>
    where
        K: Resource<DynamicType = ()>,
        F: Future<Output = Result<K, kube::Error>>,
    {
        let guard = InFlight {
            echoes: self,
            key: key_of(&K::kind(&()), Some(namespace), Some(name)),
            owner: ObjectRef::from_obj(owner),
            answered: None,
        };
        guard
            .echoes
            .lock()
            .entry(guard.key)
            .and_modify(|w| {
                let earlier = match w {
                    Write::Done(rv) => Some(*rv),
                    _ => None,
                };
                *w = Write::InFlight {
                    held: Vec::new(),
                    earlier,
                };
            })
            .or_insert(Write::InFlight {
                held: Vec::new(),
                earlier: None,
            });
        let mut guard = guard;
        let result = write.await;
        if let Ok(obj) = &result {
            guard.answered = obj.meta().resource_version.as_deref().map(hash_of);
        }
        drop(guard);
        result
    }

    /// Records that we are deleting `obj`: its deletion event is ours.
    pub fn deleting<K: Resource<DynamicType = ()>>(&self, obj: &K) {
        self.lock().insert(key(obj), Write::Deleting);
    }

    /// What the event of an applied object with `rv` is, `changed` its projection.
    fn classify(&self, key: u64, rv: Option<&str>, changed: bool) -> Echo {
        let rv = rv.map(hash_of);
        let mut written = self.lock();
        match (written.get_mut(&key), rv) {
            (Some(Write::InFlight { earlier, .. }), Some(rv)) if *earlier == Some(rv) => {
                *earlier = None;
                Echo::Ours
            }
            (Some(Write::InFlight { held, .. }), Some(rv)) => {
                held.push((rv, changed));
                Echo::Held
            }
            (Some(Write::Done(ours)), Some(rv)) if *ours == rv => {
                written.remove(&key);
                Echo::Ours
            }
            _ => Echo::No,
        }
    }

    fn is_our_deletion(&self, key: u64) -> bool {
        let mut written = self.lock();
        if matches!(written.get(&key), Some(Write::Deleting)) {
            written.remove(&key);
            return true;
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Write>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A write in flight; dropping it (answered, failed or cancelled) settles what it held.
struct InFlight<'a> {
    echoes: &'a Echoes,
    key: u64,
    owner: ObjectRef<WebAssembly>,
    /// The resourceVersion (hashed) the write produced, once it succeeded.
    answered: Option<u64>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut written = self.echoes.lock();
        let Some(Write::InFlight { held, .. }) = written.remove(&self.key) else {
            return;
        };
        let ours_seen = self
            .answered
            .is_some_and(|ours| held.iter().any(|(rv, _)| *rv == ours));
        // An event held meanwhile that was someone else's change is owed its reconcile.
        let owed = held
            .iter()
            .any(|(rv, changed)| *changed && Some(*rv) != self.answered);
        if let Some(ours) = self.answered
            && !ours_seen
        {
            written.insert(self.key, Write::Done(ours));
        }
        drop(written);
        if owed {
            let _ = self.echoes.retrigger.send(self.owner.clone());
        }
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
                let changed = before != Some(now);
                match self
                    .echoes
                    .classify(k, obj.resource_version().as_deref(), changed)
                {
                    Echo::Ours | Echo::Held => None,
                    Echo::No => changed.then_some(obj),
                }
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

/// The `WebAssembly` objects to reconcile from their watch events: those new to the
/// operator and those whose spec or labels changed (a new `generation`). Its status is the
/// operator's own, so a status write (same generation) triggers nothing. 16 bytes per object,
/// forgotten on deletion.
#[derive(Debug, Default)]
pub struct Objects {
    seen: HashMap<u64, u64>,
}

impl Objects {
    pub fn decide(&mut self, event: watcher::Event<WebAssembly>) -> Option<WebAssembly> {
        match event {
            watcher::Event::Init | watcher::Event::InitDone => None,
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                let meta = obj.meta();
                // The uid too: an object deleted and made again while the watch was down.
                let now = hash_of(&(&meta.uid, meta.generation, &meta.labels));
                (self.seen.insert(key(&obj), now) != Some(now)).then_some(obj)
            }
            watcher::Event::Delete(obj) => {
                self.seen.remove(&key(&obj));
                None
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

/// A kind's relevant events, as the controller's trigger stream; each event counted in
/// `metrics` by whether it triggered.
pub fn filter<K, S>(
    events: S,
    mut relevance: Relevance<K>,
    metrics: Arc<crate::metrics::Metrics>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    use futures::StreamExt;
    events.filter_map(move |event| {
        std::future::ready(match event {
            Ok(event) => {
                let counted = !matches!(event, watcher::Event::Init | watcher::Event::InitDone);
                let passed = relevance.decide(event);
                if counted {
                    metrics.watch_event(&K::kind(&()), passed.is_some());
                }
                passed.map(Ok)
            }
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

    fn echoes() -> (
        Arc<Echoes>,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<WebAssembly>>,
    ) {
        let (echoes, rx) = Echoes::new();
        (Arc::new(echoes), rx)
    }

    fn owner() -> WebAssembly {
        crate::fixtures::object(json!({ "module": { "registry": "ghcr.io/a/b", "tag": "v1" } }))
    }

    /// Our write of `obj`, answered at once.
    fn wrote(echoes: &Echoes, obj: &Deployment) {
        let answer = obj.clone();
        futures::executor::block_on(echoes.write(&owner(), "apps", "hello", async { Ok(answer) }))
            .expect("written");
    }

    fn deployments(echoes: &Arc<Echoes>) -> Relevance<Deployment> {
        Relevance::new(deployment, None, echoes.clone())
    }

    #[test]
    fn the_event_answering_the_operators_own_write_triggers_no_reconcile() {
        let (echoes, _rx) = echoes();
        let mut r = deployments(&echoes);
        let ours = deployment_at("10", 0);
        wrote(&echoes, &ours);
        assert!(r.decide(watcher::Event::Apply(ours)).is_none());
        assert_eq!(echoes.len(), 0, "an echo is consumed");
    }

    #[test]
    fn a_change_someone_else_made_to_an_owned_object_triggers_a_reconcile() {
        let (echoes, _rx) = echoes();
        let mut r = deployments(&echoes);
        let ours = deployment_at("10", 0);
        wrote(&echoes, &ours);
        assert!(r.decide(watcher::Event::Apply(ours.clone())).is_none());
        let mut edited = deployment_at("11", 0);
        edited.spec.as_mut().expect("spec").replicas = Some(5);
        assert!(r.decide(watcher::Event::Apply(edited)).is_some());
    }

    #[test]
    fn rollout_progress_triggers_a_reconcile_and_a_timestamp_only_update_does_not() {
        let (echoes, _rx) = echoes();
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
        let (echoes, _rx) = echoes();
        let mut r = deployments(&echoes);
        let d = deployment_at("10", 0);
        assert!(r.decide(watcher::Event::InitApply(d.clone())).is_none());
        assert!(r.decide(watcher::Event::Delete(d.clone())).is_some());
        echoes.deleting(&d);
        assert!(r.decide(watcher::Event::Delete(d)).is_none());
    }

    #[test]
    fn a_relist_triggers_only_objects_that_changed_while_the_watch_was_down() {
        let (echoes, _rx) = echoes();
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
        let (echoes, _rx) = echoes();
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

    /// Our write of a Deployment, sent and not answered yet.
    struct Pending<'a> {
        write: std::pin::Pin<Box<dyn Future<Output = Result<Deployment, kube::Error>> + 'a>>,
        answer: futures::channel::oneshot::Sender<Deployment>,
    }

    fn poll(write: &mut Pending<'_>) -> std::task::Poll<Result<Deployment, kube::Error>> {
        let waker = futures::task::noop_waker();
        write
            .write
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    }

    fn sent<'a>(echoes: &'a Echoes, owner: &'a WebAssembly) -> Pending<'a> {
        let (answer, answered) = futures::channel::oneshot::channel::<Deployment>();
        let mut pending = Pending {
            write: Box::pin(echoes.write(owner, "apps", "hello", async {
                Ok(answered.await.expect("answered"))
            })),
            answer,
        };
        assert!(poll(&mut pending).is_pending(), "the request is sent");
        pending
    }

    fn answer(mut pending: Pending<'_>, with: Deployment) {
        let (answer, _) = futures::channel::oneshot::channel();
        std::mem::replace(&mut pending.answer, answer)
            .send(with)
            .expect("the write is waiting");
        assert!(poll(&mut pending).is_ready());
    }

    #[test]
    fn an_echo_that_arrives_before_the_writes_response_triggers_nothing() {
        let owner = owner();
        let (echoes, mut rx) = echoes();
        let mut r = deployments(&echoes);
        let ours = deployment_at("10", 0);
        let write = sent(&echoes, &owner);
        assert!(
            r.decide(watcher::Event::Apply(ours.clone())).is_none(),
            "held while the write is in flight"
        );
        answer(write, ours);
        assert!(rx.try_recv().is_err(), "it was our own write: nothing owed");
        assert_eq!(echoes.len(), 0);
    }

    #[test]
    fn someone_elses_change_held_during_our_write_still_reconciles_the_owner() {
        let owner = owner();
        let (echoes, mut rx) = echoes();
        let mut r = deployments(&echoes);
        let write = sent(&echoes, &owner);
        let mut theirs = deployment_at("10", 0);
        theirs.spec.as_mut().expect("spec").replicas = Some(7);
        assert!(r.decide(watcher::Event::Apply(theirs)).is_none());
        answer(write, deployment_at("11", 0));
        let owed = rx.try_recv().expect("the owner is reconciled again");
        assert_eq!(owed.name, "hello");
        // Our own echo, arriving after the response, is still recognized.
        assert!(
            r.decide(watcher::Event::Apply(deployment_at("11", 0)))
                .is_none()
        );
    }

    #[test]
    fn the_echo_of_a_first_write_arriving_during_a_second_is_still_ours() {
        let owner = owner();
        let (echoes, mut rx) = echoes();
        let mut r = deployments(&echoes);
        let first = deployment_at("10", 0);
        wrote(&echoes, &first);
        let second = sent(&echoes, &owner);
        assert!(r.decide(watcher::Event::Apply(first)).is_none());
        let mut scaled = deployment_at("11", 0);
        scaled.spec.as_mut().expect("spec").replicas = Some(3);
        assert!(r.decide(watcher::Event::Apply(scaled.clone())).is_none());
        answer(second, scaled);
        assert!(rx.try_recv().is_err(), "both events were ours");
        assert_eq!(echoes.len(), 0);
    }

    #[test]
    fn a_write_that_is_dropped_mid_flight_does_not_hold_later_events() {
        let owner = owner();
        let (echoes, mut rx) = echoes();
        let mut r = deployments(&echoes);
        let write = sent(&echoes, &owner);
        assert!(
            r.decide(watcher::Event::Apply(deployment_at("10", 0)))
                .is_none()
        );
        drop(write);
        assert!(rx.try_recv().is_ok(), "what was held is owed its reconcile");
        assert!(
            r.decide(watcher::Event::Apply(deployment_at("12", 3)))
                .is_some()
        );
    }

    fn object(generation: i64, team: &str, ready: i32) -> WebAssembly {
        let mut obj = owner();
        obj.metadata.generation = Some(generation);
        obj.metadata.labels = Some([("team".to_owned(), team.to_owned())].into());
        obj.status = Some(wa8s_api::WebAssemblyStatus {
            ready_replicas: Some(ready),
            ..Default::default()
        });
        obj
    }

    #[test]
    fn an_object_is_reconciled_when_new_or_its_spec_or_labels_changed_and_not_for_its_status() {
        use watcher::Event::{Apply, Delete, InitApply};
        let mut objects = Objects::default();
        let steps = [
            (InitApply(object(1, "a", 0)), true, "new"),
            (Apply(object(1, "a", 1)), false, "a status write"),
            (Apply(object(2, "a", 1)), true, "a spec change"),
            (Apply(object(2, "b", 1)), true, "a label change"),
            (Delete(object(2, "b", 1)), false, "deleted"),
            (
                Apply(object(1, "b", 0)),
                true,
                "made again under the same name",
            ),
        ];
        for (event, reconciled, what) in steps {
            assert_eq!(objects.decide(event).is_some(), reconciled, "{what}");
        }
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
        let (echoes, _rx) = echoes();
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
