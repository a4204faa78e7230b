//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never both act.
//!
//! The holder renews every third of the lease duration; anyone may take a lease whose renew time
//! is older than its duration, or that nobody holds. Writes use the lease's resourceVersion, so
//! two candidates can't both win a takeover. A replica that stops gives the lease up, so a
//! standby takes over at once rather than after the lease runs out.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;

pub struct LeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    pub duration: Duration,
}

impl LeaderLease {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderLease { api, name: name.into(), identity: identity.into(), duration }
    }

    /// Tries to take or renew the lease; true when this replica holds it afterwards.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |acquired: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: acquired.or(Some(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        };
        match self.api.get_opt(&self.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(spec(None, 0)),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let current = lease.spec.clone().unwrap_or_default();
                let mine = current.holder_identity.as_deref() == Some(self.identity.as_str());
                let expired = match (&current.renew_time, current.lease_duration_seconds) {
                    (Some(MicroTime(renewed)), Some(secs)) => {
                        *renewed + SignedDuration::from_secs(i64::from(secs)) < now
                    }
                    _ => true,
                };
                if !mine && !expired {
                    return Ok(false);
                }
                let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
                lease.spec = Some(spec(if mine { current.acquire_time } else { None }, transitions));
                match self.api.replace(&self.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Gives the lease up if this replica holds it (clears the holder and the renew time).
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            // Someone else wrote it meanwhile: it is no longer ours to give up.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            other => other.map(drop),
        }
    }
}
