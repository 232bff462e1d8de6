//! Gateways sharing a cluster, through `coordination.k8s.io/v1` Leases in one namespace:
//!
//! - each gateway keeps a Lease of its own (`fgateway-member-ID`), renewed every [`RENEW`],
//!   that carries its calls per function (annotation `fgateway/activity`); every gateway
//!   reads the others' (those renewed within [`TERM`]) and counts them in with its own, so
//!   invocation counts and the autoscaler's load are the whole cluster's;
//! - one gateway at a time holds the Lease `fgateway-autoscaler` and runs the autoscaler and
//!   scale to zero. It renews it every [`RENEW`]; another takes it over once it has not been
//!   renewed for [`TERM`] (a gateway that stops gives it up at once). Every change is a
//!   compare-and-set on the Lease's resource version, so two gateways cannot both hold it.
//!
//! Whether a lease is live is judged by this gateway's own clock, as client-go's leader
//! election judges it: a lease is live while its resource version changed within its term,
//! counted from when this gateway saw the change (`Sightings`). Clocks that disagree
//! between nodes cannot make a held lease look lapsed, or a lapsed one live; a lease first
//! seen is given its term. The leader also removes member leases that have not changed for a
//! minute, `STALE` (gateways killed before they could remove their own).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::gateway::metrics::{GatewayMetrics, PeerActivity};

/// How often leases are renewed and the others read.
pub const RENEW: Duration = Duration::from_secs(2);

/// How long a lease holds without renewal.
pub const TERM: Duration = Duration::from_secs(10);

/// How long a member lease may go unchanged before the leader removes it.
const STALE: Duration = Duration::from_secs(60);

/// The autoscaler's lease.
const LEADER: &str = "fgateway-autoscaler";

/// The annotation carrying a gateway's calls.
const ACTIVITY: &str = "fgateway/activity";

/// The label of the gateways' own leases.
const MEMBER: (&str, &str) = ("app.kubernetes.io/component", "fgateway-member");

/// When this gateway saw each lease change: lease name to (resource version, when seen).
#[derive(Debug, Default)]
struct Sightings(std::sync::Mutex<HashMap<String, (String, std::time::Instant)>>);

impl Sightings {
    /// Notes `lease` as seen now; how long it has gone unchanged, by this gateway's clock.
    fn unchanged_for(&self, lease: &Lease) -> Duration {
        let name = lease.metadata.name.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get(&name) {
            Some((v, at)) if *v == version => at.elapsed(),
            _ => {
                seen.insert(name, (version, std::time::Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// Whether `lease` is held and changed within its term (noting it as seen now).
    fn live(&self, lease: &Lease) -> bool {
        let Some(spec) = &lease.spec else {
            return false;
        };
        let (Some(_), Some(term)) = (&spec.holder_identity, spec.lease_duration_seconds) else {
            return false;
        };
        let term = Duration::from_secs(u64::try_from(term).unwrap_or(0));
        self.unchanged_for(lease) < term
    }

    /// Forgets the leases not in `names`.
    fn keep_only(&self, names: &std::collections::HashSet<&str>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|name, _| names.contains(name.as_str()));
    }
}

/// This gateway among the others.
pub struct Coordination {
    /// The API client.
    client: Client,
    /// Where the leases are.
    namespace: String,
    /// This gateway's id.
    id: String,
    /// Whether this gateway holds the autoscaler's lease.
    leads: AtomicBool,
    /// When this gateway last renewed the autoscaler's lease: it stops acting as the leader
    /// before the lease can lapse for the others, however slow the next renewal is.
    renewed: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the leases were seen to change.
    sightings: Sightings,
}

impl std::fmt::Debug for Coordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordination")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .field("leads", &self.leads)
            .field("sightings", &self.sightings)
            .finish_non_exhaustive()
    }
}

/// The namespace leases go in: the gateway's own in a pod (its service account's), else
/// `default`.
pub fn lease_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl Coordination {
    /// This gateway, with a fresh id.
    pub fn new(client: Client, namespace: String) -> Coordination {
        Coordination {
            client,
            namespace,
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            leads: AtomicBool::new(false),
            renewed: std::sync::Mutex::new(None),
            sightings: Sightings::default(),
        }
    }

    /// Whether this gateway runs the autoscaler now.
    pub fn leads(&self) -> bool {
        let fresh = self
            .renewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < TERM - RENEW);
        fresh && self.leads.load(Ordering::Relaxed)
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Renews, reads and elects every [`RENEW`] until aborted.
    pub async fn run(self: Arc<Self>, metrics: Arc<GatewayMetrics>) {
        loop {
            if let Err(e) = self.publish(&metrics).await {
                tracing::warn!(namespace = %self.namespace, error = %e, "cannot renew this gateway's lease");
            }
            match self.read_peers().await {
                Ok(peers) => metrics.set_peers(peers),
                Err(e) => {
                    tracing::warn!(namespace = %self.namespace, error = %e, "cannot read the other gateways' leases")
                }
            }
            let asked = std::time::Instant::now();
            let leads = match self.elect().await {
                Ok(leads) => leads,
                Err(e) => {
                    tracing::warn!(namespace = %self.namespace, error = %e, "cannot renew or take the autoscaler's lease");
                    false
                }
            };
            if leads {
                // Counted from before the request: the lease was renewed at least that late.
                *self
                    .renewed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(asked);
            }
            if leads != self.leads.swap(leads, Ordering::Relaxed) {
                tracing::info!(gateway = %self.id, leads, "autoscaler lease {}", if leads { "taken" } else { "lost" });
            }
            tokio::time::sleep(RENEW).await;
        }
    }

    /// Writes this gateway's lease with its calls.
    async fn publish(&self, metrics: &GatewayMetrics) -> Result<(), kube::Error> {
        let activity = serde_json::to_string(&metrics.own_activity()).unwrap_or_default();
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("fgateway-member-{}", self.id)),
                labels: Some(BTreeMap::from([(MEMBER.0.into(), MEMBER.1.into())])),
                annotations: Some(BTreeMap::from([(ACTIVITY.into(), activity)])),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.id.clone()),
                lease_duration_seconds: Some(seconds(TERM)),
                renew_time: Some(MicroTime(Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        let name = format!("fgateway-member-{}", self.id);
        self.api()
            .patch(
                &name,
                &PatchParams::apply("fgateway").force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(drop)
    }

    /// The live gateways' published calls, but this one's. The leader removes member leases
    /// unchanged for [`STALE`].
    async fn read_peers(&self) -> Result<HashMap<String, PeerActivity>, kube::Error> {
        let selector = format!("{}={}", MEMBER.0, MEMBER.1);
        let api = self.api();
        let leases = api.list(&ListParams::default().labels(&selector)).await?;
        let mut names: std::collections::HashSet<&str> = leases
            .items
            .iter()
            .filter_map(|l| l.metadata.name.as_deref())
            .collect();
        names.insert(LEADER);
        self.sightings.keep_only(&names);
        if self.leads() {
            for lease in &leases.items {
                if self.sightings.unchanged_for(lease) >= STALE {
                    self.remove_stale(&api, lease).await;
                }
            }
        }
        Ok(leases
            .items
            .iter()
            .filter(|l| self.sightings.live(l))
            .filter_map(|l| {
                let holder = l.spec.as_ref()?.holder_identity.clone()?;
                if holder == self.id {
                    return None;
                }
                let activity = l.metadata.annotations.as_ref()?.get(ACTIVITY)?;
                Some((holder, serde_json::from_str(activity).ok()?))
            })
            .collect())
    }

    /// Removes a member lease left by a gateway that is gone, unless it changed since it was
    /// read (a precondition on its resource version).
    async fn remove_stale(&self, api: &Api<Lease>, lease: &Lease) {
        let Some(name) = &lease.metadata.name else {
            return;
        };
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                resource_version: lease.metadata.resource_version.clone(),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => tracing::info!(lease = %name, "removed the lease of a gateway that is gone"),
            Err(e) => tracing::debug!(lease = %name, error = %e, "cannot remove a stale lease"),
        }
    }

    /// Renews the autoscaler's lease if this gateway holds it, or takes it when nobody holds
    /// it live; whether this gateway holds it now.
    async fn elect(&self) -> Result<bool, kube::Error> {
        let api = self.api();
        let now = Timestamp::now();
        let spec = LeaseSpec {
            holder_identity: Some(self.id.clone()),
            lease_duration_seconds: Some(seconds(TERM)),
            renew_time: Some(MicroTime(now)),
            acquire_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        };
        let Some(mut current) = api.get_opt(LEADER).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(LEADER.into()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another gateway created it first.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let holder = current
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone());
        let ours = holder.as_deref() == Some(self.id.as_str());
        if !ours && self.sightings.live(&current) {
            return Ok(false);
        }
        let mut next = spec;
        if ours {
            // Renewed: acquired when it was first taken.
            next.acquire_time = current.spec.as_ref().and_then(|s| s.acquire_time.clone());
        }
        current.spec = Some(next);
        // At the version read: a gateway that took or renewed it in between wins.
        match api.replace(LEADER, &PostParams::default(), &current).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the autoscaler's lease up (if held) and removes this gateway's own lease.
    pub async fn leave(&self) {
        let api = self.api();
        if self.leads.swap(false, Ordering::Relaxed)
            && let Ok(Some(mut current)) = api.get_opt(LEADER).await
            && current
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.id.as_str())
        {
            if let Some(spec) = current.spec.as_mut() {
                spec.holder_identity = None;
            }
            if let Err(e) = api.replace(LEADER, &PostParams::default(), &current).await {
                tracing::debug!(error = %e, "cannot give the autoscaler's lease up");
            }
        }
        let name = format!("fgateway-member-{}", self.id);
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            tracing::debug!(error = %e, "cannot remove this gateway's lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(version: &str, holder: Option<&str>) -> Lease {
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("fgateway-member-a".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(seconds(TERM)),
                // A clock far off: liveness does not read it.
                renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn leases_are_judged_by_when_they_were_seen_to_change() {
        let s = Sightings::default();
        assert!(s.live(&lease("1", Some("a"))), "first seen: given its term");
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.unchanged_for(&lease("1", Some("a"))) >= Duration::from_millis(20));
        assert_eq!(s.unchanged_for(&lease("2", Some("a"))), Duration::ZERO);
        assert!(!s.live(&lease("3", None)), "given up");
        s.keep_only(&std::collections::HashSet::new());
        assert!(s.0.lock().unwrap().is_empty());
    }
}
