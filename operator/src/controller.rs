//! The reconcile loop: for each `RealtimeGateway`, apply the owned objects, read the gateways'
//! connection counts, decide the replica count (in [`crate::scaling`]), and report.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::crd::{Condition, RealtimeGateway, RealtimeGatewayStatus};
use crate::metrics::Metrics;
use crate::resources::{self, MANAGER};
use crate::scaling::{self, Decision, Limit, Policy, Recommendation};
use crate::{Error, Result, stats};

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// How often each resource is re-evaluated (connection counts change without API events).
    pub interval: Duration,
    /// Recent recommendations per resource (`namespace/name`), for the stabilization windows.
    history: Mutex<HashMap<String, Vec<(Instant, u32)>>>,
    /// Failures in a row per resource, for the backoff; a successful reconcile resets it.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// `instance` names this operator replica in the Events it records (its pod name).
    pub fn new(client: Client, metrics: Arc<Metrics>, interval: Duration, instance: Option<String>) -> Arc<Context> {
        let recorder = Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance });
        Arc::new(Context {
            client,
            metrics,
            recorder,
            interval,
            history: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The recommendations of `key` as ages, dropping those older than `keep`.
    fn recent(&self, key: &str, keep: Duration) -> Vec<Recommendation> {
        let mut all = self.history.lock().unwrap();
        let entries = all.entry(key.to_owned()).or_default();
        entries.retain(|(at, _)| at.elapsed() <= keep);
        entries
            .iter()
            .map(|(at, desired)| Recommendation { age_secs: at.elapsed().as_secs(), desired: *desired })
            .collect()
    }

    fn remember(&self, key: &str, recommendation: u32) {
        self.history.lock().unwrap().entry(key.to_owned()).or_default().push((Instant::now(), recommendation));
    }

    /// Forgets every resource but those of `keys` (`namespace/name`): the deleted ones'
    /// recommendations, failures and metric series.
    pub fn forget_all_but(&self, keys: impl IntoIterator<Item = String>) {
        let keep: std::collections::HashSet<String> = keys.into_iter().collect();
        let gone: Vec<String> = {
            let history = self.history.lock().unwrap();
            let failures = self.failures.lock().unwrap();
            history.keys().chain(failures.keys()).filter(|k| !keep.contains(*k)).cloned().collect()
        };
        for key in gone {
            self.history.lock().unwrap().remove(&key);
            self.failures.lock().unwrap().remove(&key);
            self.metrics.forget(&key);
        }
    }

    /// The resources the operator remembers something of.
    pub fn remembered(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.history.lock().unwrap().keys().cloned().collect();
        keys.extend(self.failures.lock().unwrap().keys().cloned());
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Runs the controller until the process ends.
///
/// A resource is reconciled when its spec changes (a new generation: the operator's own status
/// writes are not one), when an object it owns changes, and every `interval`. What the operator
/// remembers of a resource (its recent recommendations, its failures, its metric series) goes
/// when the resource does.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let (rtgws, deployments) = match &namespace {
        Some(ns) => (
            Api::<RealtimeGateway>::namespaced(ctx.client.clone(), ns),
            Api::<Deployment>::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::all(ctx.client.clone())),
    };
    let (reader, writer) = reflector::store();
    let resources = watcher(rtgws, watcher::Config::default()).default_backoff().reflect(writer).applied_objects();
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let known = reader.clone();
    Controller::for_stream(spec_changes(resources), reader)
        .owns(deployments, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile round failed");
            }
            ctx.forget_all_but(known.state().iter().map(|r| key_of(r)));
            std::future::ready(())
        })
        .await;
}

/// The resources' watch events that call for a reconcile: each new generation (a spec change),
/// never a change of status alone.
pub fn spec_changes<S>(resources: S) -> impl Stream<Item = Result<RealtimeGateway, watcher::Error>>
where
    S: Stream<Item = Result<RealtimeGateway, watcher::Error>>,
{
    resources.predicate_filter(predicates::generation, Default::default())
}

/// Whether `rtgw` is the controller owner `meta` names.
fn owned_by(meta: &ObjectMeta, rtgw: &RealtimeGateway) -> bool {
    meta.owner_references.iter().flatten().any(|owner| {
        owner.controller == Some(true)
            && owner.kind == "RealtimeGateway"
            && owner.name == rtgw.name_any()
            && rtgw.uid().is_none_or(|uid| owner.uid == uid)
    })
}

fn key_of(rtgw: &RealtimeGateway) -> String {
    format!("{}/{}", rtgw.namespace().unwrap_or_default(), rtgw.name_any())
}

/// One reconcile of one resource.
pub async fn reconcile(rtgw: Arc<RealtimeGateway>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let name = rtgw.name_any();
    let ns = rtgw.namespace().ok_or_else(|| Error::Invalid("RealtimeGateway must be namespaced".into()))?;
    let key = format!("{ns}/{name}");
    ctx.metrics.reconciles.with_label_values(&[&key]).inc();
    let result = match crate::crd::validate(&rtgw.spec) {
        Ok(()) => reconcile_inner(&rtgw, &ctx, &ns, &key).await,
        Err(problems) => report_invalid(&rtgw, &ctx, &ns, problems.join("; ")).await,
    };
    ctx.metrics.duration.with_label_values(&[&key]).observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.failures.lock().unwrap().remove(&key);
    }
    result
}

/// A spec the gateways can't run with: nothing is applied (the running fleet, if any, stays as it
/// is); the status says why in `Ready=False`, `AbleToScale=False` and `ScalingActive=False`, all
/// with reason `InvalidSpec`, and a Warning Event too.
async fn report_invalid(rtgw: &RealtimeGateway, ctx: &Context, ns: &str, message: String) -> Result<Action> {
    let previous = rtgw.status.clone().unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions: Vec<Condition> = ["Ready", "AbleToScale", "ScalingActive"]
        .into_iter()
        .map(|type_| condition(&previous.conditions, rtgw, &now, type_, ("False", "InvalidSpec"), &message))
        .collect();
    let rtgws: Api<RealtimeGateway> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({ "status": { "observedGeneration": rtgw.metadata.generation, "conditions": conditions } });
    rtgws.patch_status(&rtgw.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidSpec".into(),
        note: Some(message.clone()),
        action: "Validate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &rtgw.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record the InvalidSpec event");
    }
    Err(Error::Invalid(message))
}

async fn reconcile_inner(rtgw: &RealtimeGateway, ctx: &Context, ns: &str, key: &str) -> Result<Action> {
    let spec = &rtgw.spec;
    let name = rtgw.name_any();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let policy = Policy::from_spec(spec);

    let existing = deployments.get_opt(&name).await?;
    let current = existing.as_ref().and_then(|d| d.spec.replicas).map_or(policy.min, |r| r.max(0) as u32);
    let ready_replicas = existing.as_ref().and_then(|d| d.status.as_ref()?.ready_replicas).unwrap_or(0).max(0) as u32;

    let pod_list = pods.list(&ListParams::default().labels(&resources::selector(rtgw))).await?;
    // Every pod with an address, ready or not: one that is not ready still holds its streams
    // (its readiness fails while NATS is unreachable), and counting it as empty would scale
    // down pods full of clients. A ready pod that does not answer is missing (it blocks scaling
    // down); one that is not ready and does not answer serves nobody (starting, crashing).
    let scraped: Vec<(String, bool)> =
        pod_list.items.iter().filter_map(|pod| Some((stats::address(pod)?, stats::is_ready(pod)))).collect();
    let answers = futures_util::future::join_all(scraped.iter().map(|(a, _)| stats::fetch(a))).await;
    let counts: Vec<Option<u64>> = answers
        .into_iter()
        .zip(&scraped)
        .filter_map(|(answer, (_, ready))| match answer {
            Some(stats) => Some(Some(stats.connections)),
            None if *ready => Some(None),
            None => None,
        })
        .collect();

    let keep =
        Duration::from_secs(u64::from(policy.up.stabilization_seconds.max(policy.down.stabilization_seconds)) + 60);
    let history = ctx.recent(key, keep);
    let decision = scaling::decide(&policy, current, &counts, &history);
    ctx.remember(key, decision.recommendation);

    // An object of one of these names that is not this resource's belongs to something else:
    // applying ours would take it over (a Service's selector merged with ours, this resource as
    // its owner, so that deleting the resource deletes it). Nothing is applied then.
    let services = Api::<Service>::namespaced(ctx.client.clone(), ns);
    let pdbs = Api::<PodDisruptionBudget>::namespaced(ctx.client.clone(), ns);
    let service = services.get_opt(&name).await?;
    let pdb = pdbs.get_opt(&name).await?;
    let foreign = [
        ("Deployment", existing.as_ref().map(|d| &d.metadata)),
        ("Service", service.as_ref().map(|s| &s.metadata)),
        ("PodDisruptionBudget", pdb.as_ref().map(|p| &p.metadata)),
    ]
    .into_iter()
    .find_map(|(kind, meta)| meta.filter(|meta| !owned_by(meta, rtgw)).map(|_| kind));
    if let Some(kind) = foreign {
        let message = format!(
            "a {kind} named {name} exists in {ns} and is not this resource's: rename the RealtimeGateway, or remove that {kind}"
        );
        return report_invalid(rtgw, ctx, ns, message).await;
    }

    let apply = PatchParams::apply(MANAGER).force();
    deployments.patch(&name, &apply, &Patch::Apply(resources::deployment(rtgw, decision.desired))).await?;
    services.patch(&name, &apply, &Patch::Apply(resources::service(rtgw))).await?;
    pdbs.patch(&name, &apply, &Patch::Apply(resources::pdb(rtgw))).await?;

    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let previous = rtgw.status.clone().unwrap_or_default();
    let mut last_scale_time = previous.last_scale_time.clone();
    if existing.is_some() && decision.desired != current {
        last_scale_time = Some(now.clone());
        let direction = if decision.desired > current { "up" } else { "down" };
        ctx.metrics.scale_events.with_label_values(&[key, direction]).inc();
        tracing::info!(resource = key, from = current, to = decision.desired, reason = %decision.reason, "scaling");
        let event = Event {
            type_: EventType::Normal,
            reason: if direction == "up" { "ScaledUp".into() } else { "ScaledDown".into() },
            note: Some(format!("{current} → {} replicas: {}", decision.desired, decision.reason)),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &rtgw.object_ref(&())).await {
            tracing::warn!(error = %e, "could not record the scaling event");
        }
    }
    ctx.metrics.desired.with_label_values(&[key]).set(i64::from(decision.desired));
    ctx.metrics.connections.with_label_values(&[key]).set(decision.connections as i64);

    let status = RealtimeGatewayStatus {
        replicas: current,
        ready_replicas,
        desired_replicas: decision.desired,
        connections: decision.connections,
        last_scale_time,
        observed_generation: rtgw.metadata.generation,
        conditions: conditions(
            rtgw,
            &previous.conditions,
            &decision,
            Reports { pods: counts.len(), answered: counts.iter().flatten().count() },
            existing.is_some().then_some(ready_replicas),
        ),
    };
    let rtgws: Api<RealtimeGateway> = Api::namespaced(ctx.client.clone(), ns);
    rtgws.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(Action::requeue(ctx.interval))
}

/// How many pods the operator asked for their connections, and how many answered.
#[derive(Clone, Copy)]
struct Reports {
    pods: usize,
    answered: usize,
}

/// The status conditions: `Ready` (the Deployment had `desired` replicas ready when read; `ready`
/// is `None` before it exists), and HPA's AbleToScale, ScalingActive, ScalingLimited.
fn conditions(
    rtgw: &RealtimeGateway,
    previous: &[Condition],
    d: &Decision,
    reports: Reports,
    ready: Option<u32>,
) -> Vec<Condition> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let limited = match d.limit {
        Some(Limit::TooFewReplicas) => ("True", "TooFewReplicas"),
        Some(Limit::TooManyReplicas) => ("True", "TooManyReplicas"),
        Some(Limit::ScaleUpLimit) => ("True", "ScaleUpLimit"),
        Some(Limit::ScaleDownLimit) => ("True", "ScaleDownLimit"),
        None => ("False", "DesiredWithinRange"),
    };
    let active = match reports {
        Reports { answered: 1.., .. } => ("True", "ValidMetricFound"),
        Reports { pods: 0, .. } => ("False", "NoReadyPods"),
        Reports { .. } => ("False", "FailedGetMetrics"),
    };
    let (is_ready, ready_message) = match ready {
        None => (("False", "Creating"), "the gateway Deployment is being created".to_owned()),
        Some(n) if n >= d.desired => (("True", "ReplicasReady"), format!("{n} of {} gateways ready", d.desired)),
        Some(n) => (("False", "ReplicasNotReady"), format!("{n} of {} gateways ready", d.desired)),
    };
    vec![
        condition(previous, rtgw, &now, "Ready", is_ready, &ready_message),
        condition(previous, rtgw, &now, "AbleToScale", ("True", "SucceededRescale"), &d.reason),
        condition(previous, rtgw, &now, "ScalingActive", active, &d.reason),
        condition(previous, rtgw, &now, "ScalingLimited", limited, &d.reason),
    ]
}

/// One condition; its transition time moves only when its status changes.
fn condition(
    previous: &[Condition],
    rtgw: &RealtimeGateway,
    now: &Time,
    type_: &str,
    (status, reason): (&str, &str),
    message: &str,
) -> Condition {
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: since,
        observed_generation: rtgw.metadata.generation,
    }
}

/// On failure: count it, and retry with a backoff that grows with the failures in a row (a
/// successful reconcile starts it over).
pub fn error_policy(rtgw: Arc<RealtimeGateway>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", rtgw.namespace().unwrap_or_default(), rtgw.name_any());
    ctx.metrics.failures.with_label_values(&[&key, error.label()]).inc();
    tracing::warn!(resource = key, error = %error, "reconcile failed");
    let in_a_row = {
        let mut failures = ctx.failures.lock().unwrap();
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    Action::requeue(backoff(in_a_row))
}

/// 5 s, 10 s, 20 s, … capped at 5 minutes.
pub fn backoff(failures_in_a_row: u32) -> Duration {
    Duration::from_secs((5u64 << failures_in_a_row.saturating_sub(1).min(6)).min(300))
}
