//! Leader election on a `coordination.k8s.io/v1` Lease, so only one replica reconciles.
//!
//! Acquire: take the Lease when it is free, expired, or already ours, with the resourceVersion
//! as a precondition (two candidates cannot both win). Hold: renew every third of the lease
//! duration; a replica that cannot renew before its lease runs out stops leading (the binary
//! exits, and its Deployment restarts it as a candidate).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// Why leadership was lost or could not be sought.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("lease {name}: {source}")]
    Kube {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("lease {name} is now held by {holder}")]
    Lost { name: String, holder: String },
    #[error("lease {name} could not be renewed for {elapsed:?}")]
    Expired { name: String, elapsed: Duration },
}

/// One candidate for one Lease.
#[derive(Clone)]
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish()
    }
}

enum Attempt {
    Won,
    HeldBy(String),
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElection {
            api,
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    fn kube(&self) -> impl FnOnce(kube::Error) -> Error + '_ {
        |source| Error::Kube {
            name: self.name.clone(),
            source,
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) -> Result<(), Error> {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Won) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
                    return Ok(());
                }
                Ok(Attempt::HeldBy(holder)) => {
                    if holder != last_holder {
                        tracing::info!(lease = %self.name, %holder, "waiting for the leader's lease to expire");
                        last_holder = holder;
                    }
                }
                // Conflicts (someone else won the race) and API hiccups: try again.
                Err(e) => tracing::debug!("acquiring the lease: {e}"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until renewal fails for longer than the lease lasts, or someone else holds it.
    pub async fn hold(&self) -> Error {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire().await {
                Ok(Attempt::Won) => last_ok = std::time::Instant::now(),
                Ok(Attempt::HeldBy(holder)) => {
                    return Error::Lost {
                        name: self.name.clone(),
                        holder,
                    };
                }
                Err(e) => {
                    tracing::warn!("renewing the lease: {e}");
                    if last_ok.elapsed() >= self.duration {
                        return Error::Expired {
                            name: self.name.clone(),
                            elapsed: last_ok.elapsed(),
                        };
                    }
                }
            }
        }
    }

    async fn try_acquire(&self) -> Result<Attempt, Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(self.kube())? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.api
                .create(&PostParams::default(), &lease)
                .await
                .map_err(self.kube())?;
            return Ok(Attempt::Won);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expires = spec
            .renew_time
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(Timestamp::UNIX_EPOCH)
            .checked_add(SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(seconds),
            )))
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() && expires > now {
            return Ok(Attempt::HeldBy(holder));
        }
        let mut new = spec;
        if !ours {
            new.acquire_time = Some(MicroTime(now));
            new.lease_transitions = Some(new.lease_transitions.unwrap_or(0) + 1);
        }
        new.holder_identity = Some(self.identity.clone());
        new.lease_duration_seconds = Some(seconds);
        new.renew_time = Some(MicroTime(now));
        lease.spec = Some(new);
        // `replace` carries the resourceVersion we read: a concurrent winner makes this a
        // conflict, not a second leader.
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(self.kube())?;
        Ok(Attempt::Won)
    }
}
