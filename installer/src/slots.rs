//! A rolling install: at most N nodes restart containerd at once. Before it changes its node,
//! an installer pod takes one of N restart slots — Leases `<daemonset>-restart-<i>` in the
//! release namespace — and gives it back once the node is labelled (or its work failed). A
//! slot whose holder died is free again when its lease runs out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// Why a slot could not be read, taken or given back.
#[derive(Debug, thiserror::Error)]
#[error("restart slot {lease}: {source}")]
pub struct Error {
    lease: String,
    #[source]
    source: kube::Error,
}

/// The N restart slots of one DaemonSet.
#[derive(Clone)]
pub struct Slots {
    api: Api<Lease>,
    prefix: String,
    count: u32,
    holder: String,
    /// How long a taken slot stays taken without its holder (a pod killed mid-restart).
    hold: Duration,
}

/// A slot this node holds until [`Held::release`].
#[derive(Debug)]
pub struct Held {
    api: Api<Lease>,
    lease: String,
    holder: String,
}

impl Slots {
    /// `count` slots named after `daemonset`, taken by `holder` (the node's name) for at
    /// most `hold` each.
    pub fn new(api: Api<Lease>, daemonset: &str, count: u32, holder: &str, hold: Duration) -> Self {
        Slots {
            api,
            prefix: format!("{daemonset}-restart"),
            count: count.max(1),
            holder: holder.to_owned(),
            hold,
        }
    }

    /// Waits until a slot is free and takes it.
    pub async fn acquire(&self) -> Held {
        let mut told = false;
        loop {
            for i in 0..self.count {
                let lease = format!("{}-{i}", self.prefix);
                match self.try_take(&lease).await {
                    Ok(true) => {
                        tracing::info!(%lease, "took a restart slot ({} node(s) at once)", self.count);
                        return Held {
                            api: self.api.clone(),
                            lease,
                            holder: self.holder.clone(),
                        };
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            if !told {
                tracing::info!(
                    "waiting for a restart slot: {} node(s) restart containerd at once",
                    self.count
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_secs(2)).await; // poll interval
        }
    }

    /// Takes `lease` if nobody holds it (or its holder's time ran out, or it is ours).
    async fn try_take(&self, lease: &str) -> Result<bool, Error> {
        let kube = |source| Error {
            lease: lease.to_owned(),
            source,
        };
        let now = Timestamp::now();
        let seconds = i32::try_from(self.hold.as_secs()).unwrap_or(i32::MAX);
        let spec = LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        };
        let Some(mut existing) = self.api.get_opt(lease).await.map_err(kube)? else {
            let new = Lease {
                metadata: ObjectMeta {
                    name: Some(lease.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
            };
            return match self.api.create(&PostParams::default(), &new).await {
                Ok(_) => Ok(true),
                // Another node created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(kube(e)),
            };
        };
        let current = existing.spec.clone().unwrap_or_default();
        let holder = current.holder_identity.unwrap_or_default();
        let expires = current
            .renew_time
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
            .checked_add(SignedDuration::from_secs(i64::from(
                current.lease_duration_seconds.unwrap_or(0),
            )))
            .unwrap_or(Timestamp::UNIX_EPOCH);
        if !holder.is_empty() && holder != self.holder && expires > now {
            return Ok(false);
        }
        existing.spec = Some(spec);
        // The resourceVersion read above makes this a compare-and-swap: of two nodes
        // taking the same free slot, one gets a conflict.
        match self
            .api
            .replace(lease, &PostParams::default(), &existing)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(kube(e)),
        }
    }
}

impl Held {
    /// Gives the slot back (a failure is logged: the slot then frees itself when its lease
    /// runs out).
    pub async fn release(self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.lease).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            self.api
                .replace(&self.lease, &PostParams::default(), &lease)
                .await
                .map(drop)
        }
        .await;
        match result {
            Ok(()) => tracing::info!(lease = %self.lease, "gave the restart slot back"),
            Err(e) => tracing::warn!(lease = %self.lease, "giving the restart slot back: {e}"),
        }
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("prefix", &self.prefix)
            .field("count", &self.count)
            .finish()
    }
}
