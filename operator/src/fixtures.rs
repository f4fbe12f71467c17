//! Test fixtures for reconciling without a cluster: a resolver that answers on cue and a mock
//! API server that expects a scripted sequence of calls (after kube-rs's controller-rs).

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use wa8s_api::{Module, WebAssembly};

use crate::controller::{Context, Settings};
use crate::desired::Resolved;
use crate::metrics::Metrics;
use crate::resolve::{Resolve, ResolveError, reference};

/// Every scripted call must arrive within this, or the scenario fails (not hangs).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub const NS: &str = "apps";
pub const NAME: &str = "hello";
pub const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Resolves every module to the same answer.
#[derive(Debug)]
pub struct FakeResolver(pub Result<Resolved, ResolveError>);

#[async_trait::async_trait]
impl Resolve for FakeResolver {
    async fn resolve(
        &self,
        module: &Module,
        _: Vec<(String, String)>,
    ) -> Result<(String, Resolved), ResolveError> {
        self.0.clone().map(|r| (reference(module), r))
    }
}

/// A stored object as the API server would hand it to the controller.
pub fn object(spec: Value) -> WebAssembly {
    serde_json::from_value(json!({
        "apiVersion": "wa8s.reconciler.io/v1",
        "kind": "WebAssembly",
        "metadata": { "name": NAME, "namespace": NS, "uid": "u-1", "generation": 1 },
        "spec": spec,
    }))
    .expect("a valid object")
}

/// How the mock API server answers one call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 404 with a Status body, as for a missing object.
    NotFound,
    /// The request's own body (server-side apply and event creation return the object).
    Echo,
    /// This object.
    Json(Value),
}

/// One call the reconcile must make next.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// The request's path; a trailing `*` matches any rest (generated names).
    pub path: String,
    pub reply: Reply,
}

impl Call {
    fn matches(&self, method: &Method, path: &str) -> bool {
        *method == self.method
            && match self.path.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => path == self.path,
            }
    }

    fn new(method: Method, path: String, reply: Reply) -> Self {
        Call {
            method,
            path,
            reply,
        }
    }
}

fn deployment_path() -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{NAME}")
}

fn service_path() -> String {
    format!("/api/v1/namespaces/{NS}/services/{NAME}")
}

fn pdb_path() -> String {
    format!("/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets/{NAME}")
}

fn hpa_path() -> String {
    format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/{NAME}")
}

/// The scripted conversations.
#[derive(Debug)]
pub enum Scenario {
    /// No Deployment yet, the module resolves to an HTTP component: Deployment and Service
    /// applied, no HPA, pods listed, an event per condition, status written.
    FirstApply,
    /// No Deployment yet and the tag does not resolve: the Service is looked up (to know what
    /// kind of module runs), nothing applied, status written.
    ResolveFailed,
    /// No Deployment yet and nothing to apply (an invalid grant): status written.
    NothingApplied,
    /// The object was applied before and this Deployment (with its status) is live: applied
    /// again, and an event only for the two conditions that change (Ready, Progressing).
    RolloutComplete(Value),
    /// The registry is down while this Deployment runs: the Service is found (so the module
    /// serves HTTP) and everything is applied again on the running digest; ModuleResolved and
    /// Degraded change with the same reason (an event and its series).
    RegistryOutage(Value),
}

impl Scenario {
    pub fn calls(&self, obj: &WebAssembly) -> Vec<Call> {
        let (live, applied) = match self {
            Scenario::RolloutComplete(d) | Scenario::RegistryOutage(d) => {
                (Reply::Json(d.clone()), Reply::Json(d.clone()))
            }
            _ => (Reply::NotFound, Reply::Echo),
        };
        let get_deployment = Call::new(Method::GET, deployment_path(), live);
        let apply = [
            Call::new(Method::PATCH, deployment_path(), applied),
            Call::new(Method::PATCH, service_path(), Reply::Echo),
            Call::new(Method::GET, hpa_path(), Reply::NotFound),
            Call::new(Method::GET, pdb_path(), Reply::NotFound),
        ];
        let middle: Vec<Call> = match self {
            Scenario::FirstApply | Scenario::RolloutComplete(_) => apply.into(),
            Scenario::RegistryOutage(_) => {
                let service = json!({ "apiVersion": "v1", "kind": "Service",
                                      "metadata": { "name": NAME, "namespace": NS } });
                std::iter::once(Call::new(Method::GET, service_path(), Reply::Json(service)))
                    .chain(apply)
                    .collect()
            }
            Scenario::ResolveFailed => {
                vec![Call::new(Method::GET, service_path(), Reply::NotFound)]
            }
            Scenario::NothingApplied => Vec::new(),
        };
        // An event per changed condition (a new object's four are all new); a second
        // condition with the same reason (Ready and ModuleResolved both TagNotFound) joins
        // the first's series: a PATCH.
        let (count, series_at) = match self {
            Scenario::FirstApply => (4, None),
            Scenario::ResolveFailed => (4, Some(1)),
            Scenario::NothingApplied => (4, Some(3)),
            Scenario::RolloutComplete(_) => (2, None),
            Scenario::RegistryOutage(_) => (2, Some(1)),
        };
        let events = (0..count).map(|i| {
            let path = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
            if series_at == Some(i) {
                Call::new(Method::PATCH, format!("{path}/{NAME}.*"), Reply::Echo)
            } else {
                Call::new(Method::POST, path, Reply::Echo)
            }
        });
        let list_pods = Call::new(
            Method::GET,
            format!("/api/v1/namespaces/{NS}/pods"),
            Reply::Json(
                json!({ "apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [] }),
            ),
        );
        let status = Call::new(
            Method::PATCH,
            format!("/apis/wa8s.reconciler.io/v1/namespaces/{NS}/webassemblies/{NAME}/status"),
            Reply::Json(serde_json::to_value(obj).expect("serializable")),
        );
        // Resolving reads the pods' ServiceAccount for its pull secrets (none here).
        let get_account = Call::new(
            Method::GET,
            format!("/api/v1/namespaces/{NS}/serviceaccounts/default"),
            Reply::NotFound,
        );
        [get_deployment, get_account]
            .into_iter()
            .chain(middle)
            .chain([list_pods])
            .chain(events)
            .chain([status])
            .collect()
    }
}

/// A call as the mock API server received it.
#[derive(Debug)]
pub struct Seen {
    pub path: String,
    pub body: Value,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A context whose client talks to a mock API server, and the server's handle.
pub fn context(resolver: FakeResolver) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Context::new(
        Client::new(service, NS),
        Arc::new(resolver),
        Settings::default(),
        Arc::new(Metrics::new()),
    );
    (Arc::new(ctx), handle)
}

/// Answers `calls` in order, failing on any other call, and returns what it received once
/// the client is gone (which proves no call came after the script).
pub fn serve(mut handle: Handle, calls: Vec<Call>) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        for (i, call) in calls.into_iter().enumerate() {
            let (request, send) = tokio::time::timeout(CALL_TIMEOUT, handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("call {i} ({} {}) never came", call.method, call.path))
                .unwrap_or_else(|| {
                    panic!(
                        "the client left before call {i} ({} {})",
                        call.method, call.path
                    )
                });
            let (parts, body) = request.into_parts();
            assert!(
                call.matches(&parts.method, parts.uri.path()),
                "call {i}: expected {} {}, got {} {}",
                call.method,
                call.path,
                parts.method,
                parts.uri.path()
            );
            let bytes = body.collect_bytes().await.expect("a request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, reply) = match call.reply {
                Reply::NotFound => (
                    StatusCode::NOT_FOUND,
                    json!({ "kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "NotFound", "code": 404,
                            "message": format!("{} not found", parts.uri.path()) }),
                ),
                Reply::Echo => (StatusCode::OK, body.clone()),
                Reply::Json(v) => (StatusCode::OK, v),
            };
            let response = Response::builder()
                .status(status)
                .body(Body::from(
                    serde_json::to_vec(&reply).expect("serializable"),
                ))
                .expect("a response");
            send.send_response(response);
            seen.push(Seen {
                path: parts.uri.path().to_owned(),
                body,
            });
        }
        let extra = tokio::time::timeout(CALL_TIMEOUT, handle.next_request())
            .await
            .expect("the client to be dropped after the reconcile");
        if let Some((request, _)) = extra {
            panic!(
                "unexpected call after the script: {} {}",
                request.method(),
                request.uri()
            );
        }
        seen
    })
}
