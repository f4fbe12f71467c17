//! Status as a pure function of what the reconcile observed: conditions with reasons a user
//! can act on, and transition times that only move when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use wa8s_api::{ModuleStatus, ServiceStatus, WebAssemblyStatus};

pub const READY: &str = "Ready";
pub const MODULE_RESOLVED: &str = "ModuleResolved";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// How resolving `spec.module` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// `digest` is what `reference` names now.
    Resolved {
        reference: String,
        digest: String,
        pinned: bool,
    },
    /// It failed; `reason` is a CamelCase condition reason.
    Failed { reason: String, message: String },
}

/// The Deployment as the reconcile found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Rollout {
    /// Replicas the Deployment wants (its spec, set by us or the HPA).
    pub desired: i32,
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// The Deployment's own generation was seen by its controller.
    pub observed: bool,
    /// The Deployment controller gave up (`ProgressDeadlineExceeded`): its message.
    pub stalled: Option<String>,
}

/// A pod that cannot run the module (crash loop, startup failure): from its container
/// status, including the shim's termination message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodFailure {
    pub pod: String,
    pub reason: String,
    pub message: String,
}

/// Everything the status is computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub resolution: Resolution,
    /// The digest the Deployment runs (the resolved one, or the last good one while
    /// resolution fails).
    pub running: Option<String>,
    pub rollout: Option<Rollout>,
    pub pod_failure: Option<PodFailure>,
    pub service: Option<ServiceStatus>,
    pub selector: String,
    /// A grant the runtime would refuse (`field: problem`): nothing new is applied until the
    /// object is fixed.
    pub invalid_grant: Option<String>,
}

/// Condition reason for a grant the runtime would refuse.
pub const INVALID_GRANT: &str = "InvalidGrant";

/// `sha256:` and the first 12 hex digits.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) => format!("{algo}:{}", &hex[..hex.len().min(12)]),
        None => digest.chars().take(19).collect(),
    }
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

/// The status for `observed`, keeping `previous` transition times where a condition's status
/// did not change.
pub fn status(
    previous: Option<&WebAssemblyStatus>,
    observed: &Observed,
    now: Time,
) -> WebAssemblyStatus {
    let generation = observed.generation;
    let mut conditions = Vec::new();

    let resolved = match &observed.resolution {
        Resolution::Resolved {
            reference,
            digest,
            pinned,
        } => {
            let message = if *pinned {
                format!("pinned to {digest}")
            } else {
                format!("{reference} is {digest}")
            };
            conditions.push(condition(
                MODULE_RESOLVED,
                true,
                if *pinned { "Pinned" } else { "Resolved" },
                message,
                generation,
            ));
            true
        }
        Resolution::Failed { reason, message } => {
            let message = match &observed.running {
                Some(d) => format!("{message} (pods keep running {})", short_digest(d)),
                None => message.clone(),
            };
            conditions.push(condition(
                MODULE_RESOLVED,
                false,
                reason,
                message,
                generation,
            ));
            false
        }
    };

    let rollout = observed.rollout.clone().unwrap_or_default();
    let complete = observed.rollout.is_some()
        && rollout.observed
        && rollout.updated >= rollout.desired
        && rollout.replicas == rollout.updated
        && rollout.available >= rollout.desired;
    let (progressing, p_reason, p_message) = match (&observed.rollout, &rollout.stalled) {
        (None, _) => (false, "NoDeployment", "nothing is deployed yet".to_owned()),
        (Some(_), Some(why)) => (false, "ProgressDeadlineExceeded", why.clone()),
        (Some(_), None) if complete => (
            false,
            "Complete",
            format!(
                "{}/{} pods run the current version",
                rollout.updated, rollout.desired
            ),
        ),
        (Some(_), None) => (
            true,
            "RollingOut",
            format!(
                "{} of {} pods updated, {} available",
                rollout.updated, rollout.desired, rollout.available
            ),
        ),
    };
    conditions.push(condition(
        PROGRESSING,
        progressing,
        p_reason,
        p_message,
        generation,
    ));

    let (degraded, d_reason, d_message) = match (
        &observed.invalid_grant,
        &observed.pod_failure,
        &observed.resolution,
    ) {
        (Some(why), _, _) => (true, INVALID_GRANT, why.clone()),
        (None, Some(f), _) => (
            true,
            f.reason.as_str(),
            format!("pod {}: {}", f.pod, f.message),
        ),
        (None, None, Resolution::Failed { reason, message }) if observed.running.is_some() => (
            true,
            reason.as_str(),
            format!("cannot follow spec.module: {message}"),
        ),
        (None, None, _) if rollout.stalled.is_some() => (
            true,
            "ProgressDeadlineExceeded",
            rollout.stalled.clone().unwrap_or_default(),
        ),
        _ => (false, "AsExpected", "no problems observed".to_owned()),
    };
    conditions.push(condition(
        DEGRADED, degraded, d_reason, d_message, generation,
    ));

    let ready_pods = rollout.ready.max(0);
    let (ready, r_reason, r_message) = if let Some(why) = &observed.invalid_grant {
        (false, INVALID_GRANT.to_owned(), why.clone())
    } else if observed.rollout.is_none() {
        match &observed.resolution {
            Resolution::Failed { reason, message } => (false, reason.clone(), message.clone()),
            Resolution::Resolved { .. } => (
                false,
                "NoDeployment".to_owned(),
                "the Deployment does not exist yet".to_owned(),
            ),
        }
    } else if rollout.desired > 0
        && ready_pods >= rollout.desired
        && rollout.available >= rollout.desired
    {
        (
            true,
            "Available".to_owned(),
            format!("{ready_pods}/{} pods ready", rollout.desired),
        )
    } else if rollout.desired == 0 {
        (false, "ScaledToZero".to_owned(), "replicas is 0".to_owned())
    } else if let Some(f) = &observed.pod_failure {
        (
            false,
            f.reason.clone(),
            format!(
                "{ready_pods}/{} pods ready; pod {}: {}",
                rollout.desired, f.pod, f.message
            ),
        )
    } else {
        (
            false,
            "PodsNotReady".to_owned(),
            format!("{ready_pods}/{} pods ready", rollout.desired),
        )
    };
    conditions.insert(
        0,
        condition(
            READY,
            ready && (resolved || observed.running.is_some()),
            &r_reason,
            r_message,
            generation,
        ),
    );

    // Transition times move only when the status flips.
    for c in &mut conditions {
        let before = previous.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_));
        c.last_transition_time = match before {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => now.clone(),
        };
    }

    WebAssemblyStatus {
        observed_generation: generation,
        conditions,
        module: observed.running.as_ref().map(|digest| ModuleStatus {
            digest: digest.clone(),
            short_digest: Some(short_digest(digest)),
            reference: match &observed.resolution {
                Resolution::Resolved { reference, .. } => Some(pinned_reference(reference, digest)),
                Resolution::Failed { .. } => previous
                    .and_then(|p| p.module.as_ref())
                    .and_then(|m| m.reference.clone()),
            },
        }),
        replicas: observed.rollout.as_ref().map(|r| r.replicas),
        desired_replicas: observed.rollout.as_ref().map(|r| r.desired),
        ready_replicas: observed.rollout.as_ref().map(|r| r.ready),
        selector: Some(observed.selector.clone()),
        service: observed.service.clone(),
    }
}

/// `registry@digest` from `registry:tag` (or `registry`) and a digest.
pub fn pinned_reference(reference: &str, digest: &str) -> String {
    let repo = reference.split('@').next().unwrap_or(reference);
    // A ':' after the last '/' is a tag; one before it is a registry port.
    let repo = match repo.rfind(':') {
        Some(i) if i > repo.rfind('/').unwrap_or(0) => &repo[..i],
        _ => repo,
    };
    format!("{repo}@{digest}")
}

/// The conditions whose status changed between `before` and `after`: (type, new status,
/// reason, message), for events.
pub fn transitions(
    before: Option<&WebAssemblyStatus>,
    after: &WebAssemblyStatus,
) -> Vec<Condition> {
    after
        .conditions
        .iter()
        .filter(|c| {
            let old = before.and_then(|b| b.conditions.iter().find(|o| o.type_ == c.type_));
            old.is_none_or(|o| o.status != c.status || o.reason != c.reason)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn at(secs: i64) -> Time {
        Time(
            k8s_openapi::jiff::Timestamp::from_second(secs)
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        )
    }

    fn healthy() -> Observed {
        Observed {
            generation: Some(3),
            resolution: Resolution::Resolved {
                reference: "ghcr.io/myorg/app:v1".into(),
                digest: D.into(),
                pinned: false,
            },
            running: Some(D.into()),
            rollout: Some(Rollout {
                desired: 2,
                replicas: 2,
                updated: 2,
                ready: 2,
                available: 2,
                observed: true,
                stalled: None,
            }),
            pod_failure: None,
            service: None,
            selector: "a=b".into(),
            invalid_grant: None,
        }
    }

    fn cond<'a>(s: &'a WebAssemblyStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    #[test]
    fn a_complete_rollout_is_ready_resolved_not_progressing_and_not_degraded() {
        let s = status(None, &healthy(), at(100));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, MODULE_RESOLVED).reason, "Resolved");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, PROGRESSING).reason, "Complete");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        let m = s.module.expect("module");
        assert_eq!(m.short_digest.as_deref(), Some("sha256:0123456789ab"));
        assert_eq!(
            m.reference.as_deref(),
            Some(format!("ghcr.io/myorg/app@{D}").as_str())
        );
    }

    #[test]
    fn transition_times_move_only_when_the_status_flips() {
        let first = status(None, &healthy(), at(100));
        let again = status(Some(&first), &healthy(), at(200));
        assert_eq!(cond(&again, READY).last_transition_time, at(100));
        let mut unready = healthy();
        if let Some(r) = unready.rollout.as_mut() {
            r.ready = 1;
            r.available = 1;
        }
        let flipped = status(Some(&again), &unready, at(300));
        assert_eq!(cond(&flipped, READY).status, "False");
        assert_eq!(cond(&flipped, READY).reason, "PodsNotReady");
        assert_eq!(cond(&flipped, READY).message, "1/2 pods ready");
        assert_eq!(cond(&flipped, READY).last_transition_time, at(300));
        assert_eq!(
            transitions(Some(&again), &flipped).len(),
            2,
            "Ready and Progressing flipped"
        );
    }

    #[test]
    fn a_registry_outage_keeps_the_running_digest_and_says_so() {
        let mut o = healthy();
        o.resolution = Resolution::Failed {
            reason: "RegistryUnavailable".into(),
            message: "ghcr.io: connection refused".into(),
        };
        let before = status(None, &healthy(), at(1));
        let s = status(Some(&before), &o, at(2));
        assert_eq!(cond(&s, MODULE_RESOLVED).status, "False");
        assert!(
            cond(&s, MODULE_RESOLVED)
                .message
                .contains("pods keep running sha256:0123456789ab")
        );
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(
            cond(&s, READY).status,
            "True",
            "the running pods still serve"
        );
        assert_eq!(
            s.module.and_then(|m| m.reference),
            before.module.and_then(|m| m.reference)
        );
    }

    #[test]
    fn a_tag_that_never_resolved_is_not_ready_with_the_registry_reason() {
        let mut o = healthy();
        o.resolution = Resolution::Failed {
            reason: "TagNotFound".into(),
            message: "ghcr.io/myorg/app:v9: not found in the registry".into(),
        };
        o.running = None;
        o.rollout = None;
        let s = status(None, &o, at(1));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "TagNotFound");
        assert!(s.module.is_none());
        assert_eq!(
            cond(&s, DEGRADED).status,
            "False",
            "nothing runs, so nothing is degraded"
        );
    }

    #[test]
    fn crash_looping_pods_surface_the_shims_message() {
        let mut o = healthy();
        if let Some(r) = o.rollout.as_mut() {
            r.ready = 0;
            r.available = 0;
        }
        o.pod_failure = Some(PodFailure {
            pod: "app-1".into(),
            reason: "CrashLoopBackOff".into(),
            message: "component imports wasi:keyvalue/store which this host does not provide"
                .into(),
        });
        let s = status(None, &o, at(1));
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert_eq!(cond(&s, DEGRADED).reason, "CrashLoopBackOff");
        assert!(cond(&s, READY).message.contains("wasi:keyvalue/store"));
    }

    #[test]
    fn pinned_references_drop_the_tag_but_keep_a_registry_port() {
        assert_eq!(
            pinned_reference("localhost:5000/x:v1", D),
            format!("localhost:5000/x@{D}")
        );
        assert_eq!(
            pinned_reference("localhost:5000/x", D),
            format!("localhost:5000/x@{D}")
        );
        assert_eq!(
            pinned_reference("ghcr.io/a/b@sha256:00", D),
            format!("ghcr.io/a/b@{D}")
        );
    }
}
