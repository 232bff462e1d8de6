//! The scheduler every gateway runs. It follows the deployed functions ([`super::follow`]),
//! so a deployment, an update or a deletion starts, changes or stops a schedule at once; each
//! due firing becomes an asynchronous call on the queue:
//!
//! - Its call id is made from the function and the scheduled instant ([`call_id`]): gateways
//!   on one queue all enqueue the same call, which the queue takes once (the others get it as
//!   a duplicate), so a tick fires once however many gateways run.
//! - A firing is skipped (counted as missed) while the previous one is still queued, running
//!   or retrying, unless the function allows overlap.
//! - When the scheduler starts, for each schedule whose latest tick has no call, it looks back
//!   for the last tick that has one (within the queue's retention): if there is one, ticks were
//!   missed while no gateway ran, and the latest is run once (unless the function says to skip
//!   missed firings). A function that never fired (new) is not fired for past ticks.
//! - If the scheduler falls behind (a machine suspended), only the latest due tick runs.
//!
//! Calls carry the cron-connector's headers (`X-Topic: cron-function`, `X-Connector:
//! cron-connector`) and `X-Scheduled-At` (the instant, RFC 3339), with an empty body, `POST /`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::board::{Firing, TriggerLabels, TriggerRow};
use super::{CRON_TOPIC, Deployed, ScheduleSpec};
use crate::gateway::Gateway;
use crate::gateway::types::{FunctionDeployment, display_name};
use crate::queue::CallState;
use crate::queue::Enqueued;

/// The kind of trigger, in listings and metrics.
const KIND: &str = "schedule";

/// Longest sleep between two looks at the clock (the wall clock may jump, a machine may be
/// suspended).
const TICK: Duration = Duration::from_secs(1);

/// How many past ticks are looked at for the last firing, at start-up (and most missed ticks
/// counted at once).
const LOOK_BACK: usize = 1_000;

/// One scheduled function.
#[derive(Debug)]
struct Entry {
    /// What is deployed.
    spec: Arc<FunctionDeployment>,
    /// Its schedule.
    schedule: ScheduleSpec,
    /// The next tick to fire.
    next: Option<Timestamp>,
    /// The call of the last firing (this gateway's or another's).
    last_call: Option<String>,
    /// Calls whose failure was counted already (the last few).
    failed_seen: Vec<String>,
}

/// The call id of function `key`'s firing for `instant`: `cron:NAME.NAMESPACE:UNIX_SECONDS`,
/// or, when that is longer than a call id may be, the name part hashed.
pub fn call_id(key: &str, instant: Timestamp) -> String {
    let id = format!("cron:{key}:{}", instant.as_second());
    if id.len() <= 128 {
        return id;
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    format!(
        "cron:{}:{}",
        hex::encode(&digest[..16]),
        instant.as_second()
    )
}

/// Runs the scheduler until `stop`, following `deployed`.
pub async fn run(
    gateway: Arc<Gateway>,
    mut deployed: tokio::sync::watch::Receiver<Deployed>,
    retention: Duration,
    stop: CancellationToken,
) {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let now = deployed.borrow_and_update().clone();
    refresh(&gateway, &now, &mut entries, true, retention).await;
    loop {
        let now = Timestamp::now();
        for (key, entry) in entries.iter_mut() {
            let Some(next) = entry.next else { continue };
            if next > now {
                continue;
            }
            // Several ticks passed (a suspended machine): the latest runs, the others are missed.
            let due = entry
                .schedule
                .schedule
                .latest_at_or_before(now)
                .unwrap_or(next);
            let skipped = ticks_between(&entry.schedule, next, due);
            if skipped > 0 {
                let counters = &gateway.metrics.triggers;
                counters
                    .missed
                    .get_or_create(&labels(entry))
                    .inc_by(skipped);
            }
            fire(&gateway, key, entry, due, false).await;
            entry.next = entry.schedule.schedule.next_after(due);
            let next = entry.next.map(|t| t.to_string());
            gateway
                .triggers
                .update(key, KIND, |row| row.next_firing = next);
        }
        let wait = entries
            .values()
            .filter_map(|e| e.next)
            .min()
            .map(|t| t.duration_since(Timestamp::now()))
            // A tick already due (firing took a while) is run at once.
            .map(|d| Duration::try_from(d).unwrap_or(Duration::ZERO))
            .map_or(TICK, |d| d.min(TICK));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            changed = deployed.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = deployed.borrow_and_update().clone();
                refresh(&gateway, &now, &mut entries, false, retention).await;
            }
        }
    }
}

/// The ticks strictly between `from` and `to` (at most [`LOOK_BACK`]).
fn ticks_between(schedule: &ScheduleSpec, from: Timestamp, to: Timestamp) -> u64 {
    let mut n = 0;
    let mut t = from;
    while n < LOOK_BACK as u64 {
        match schedule.schedule.next_after(t) {
            Some(next) if next < to => {
                n += 1;
                t = next;
            }
            _ => break,
        }
    }
    n
}

/// The metrics labels of `entry`'s function.
fn labels(entry: &Entry) -> TriggerLabels {
    TriggerLabels {
        function_name: display_name(&entry.spec.service, entry.spec.namespace()),
        kind: KIND.into(),
    }
}

/// Brings `entries` in line with what is deployed; at start-up (`starting`), runs the firing
/// each schedule missed while no gateway ran.
async fn refresh(
    gateway: &Gateway,
    deployed: &Deployed,
    entries: &mut BTreeMap<String, Entry>,
    starting: bool,
    retention: Duration,
) {
    let mut seen: HashMap<String, (Arc<FunctionDeployment>, ScheduleSpec)> = HashMap::new();
    for t in deployed.iter() {
        if let Some(schedule) = &t.triggers.schedule {
            seen.insert(t.spec.key(), (Arc::clone(&t.spec), schedule.clone()));
        }
    }
    entries.retain(|key, _| seen.contains_key(key));
    gateway.triggers.retain(KIND, |key| seen.contains_key(key));
    let now = Timestamp::now();
    for (key, (spec, schedule)) in seen {
        match entries.get_mut(&key) {
            Some(entry) if entry.schedule == schedule => entry.spec = spec,
            _ => {
                let next = schedule.schedule.next_after(now);
                let mut entry = Entry {
                    spec,
                    schedule,
                    next,
                    last_call: None,
                    failed_seen: Vec::new(),
                };
                gateway
                    .triggers
                    .set(&key, row(&entry.spec, &entry.schedule, next));
                if starting {
                    catch_up(gateway, &key, &mut entry, now, retention).await;
                }
                entries.insert(key, entry);
            }
        }
    }
}

/// Lists the schedules of `deployed` at once, before the scheduler's first round (which may
/// wait on the queue to catch up on missed ticks): a gateway lists its stack's schedules from
/// the moment it accepts connections.
pub fn list(gateway: &Gateway, deployed: &Deployed) {
    let now = Timestamp::now();
    for t in deployed.iter() {
        if let Some(schedule) = &t.triggers.schedule {
            let next = schedule.schedule.next_after(now);
            gateway
                .triggers
                .set(&t.spec.key(), row(&t.spec, schedule, next));
        }
    }
}

/// A schedule's row on the board, before any firing.
fn row(spec: &FunctionDeployment, schedule: &ScheduleSpec, next: Option<Timestamp>) -> TriggerRow {
    TriggerRow {
        function: spec.service.clone(),
        namespace: spec.namespace().to_string(),
        kind: KIND,
        schedule: Some(schedule.schedule.text().to_string()),
        subjects: Vec::new(),
        last_firing: None,
        next_firing: next.map(|t| t.to_string()),
    }
}

/// At start-up: runs once the latest tick of `entry` that no gateway ran, if ticks were missed
/// (an earlier tick has a call within `retention`).
async fn catch_up(
    gateway: &Gateway,
    key: &str,
    entry: &mut Entry,
    now: Timestamp,
    retention: Duration,
) {
    let Some(latest) = entry.schedule.schedule.latest_at_or_before(now) else {
        return;
    };
    if let Ok(Some(_)) = gateway.queue.status(&call_id(key, latest)).await {
        entry.last_call = Some(call_id(key, latest));
        return;
    }
    let oldest = now
        .checked_sub(jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN);
    let mut tick = latest;
    let mut missed = 0u64;
    let mut found = false;
    for _ in 0..LOOK_BACK {
        let Some(before) = entry.schedule.schedule.previous_before(tick) else {
            break;
        };
        if before < oldest {
            break;
        }
        missed += 1;
        if let Ok(Some(_)) = gateway.queue.status(&call_id(key, before)).await {
            found = true;
            break;
        }
        tick = before;
    }
    // No earlier firing: a function that has not fired yet, not one that missed ticks.
    if !found {
        return;
    }
    // `missed` counts the ticks after the last one that ran, the latest among them included.
    let counter = gateway
        .metrics
        .triggers
        .missed
        .get_or_create(&labels(entry))
        .clone();
    if entry.schedule.skip_missed {
        counter.inc_by(missed);
        tracing::info!(function = key, missed, "missed scheduled firings skipped");
        return;
    }
    counter.inc_by(missed - 1);
    tracing::info!(function = key, missed, at = %latest, "running a missed scheduled firing");
    fire(gateway, key, entry, latest, true).await;
}

/// Enqueues `entry`'s firing for `instant` (unless the previous one still runs and overlap is
/// not allowed), and records it.
async fn fire(
    gateway: &Gateway,
    key: &str,
    entry: &mut Entry,
    instant: Timestamp,
    catching_up: bool,
) {
    let c = &gateway.metrics.triggers;
    let labels = labels(entry);
    let previous = entry.last_call.clone().or_else(|| {
        entry
            .schedule
            .schedule
            .previous_before(instant)
            .map(|t| call_id(key, t))
    });
    if let Some(previous) = previous {
        match gateway.queue.status(&previous).await {
            Ok(Some(status)) => {
                if status.state == CallState::Failed && !entry.failed_seen.contains(&previous) {
                    c.failures.get_or_create(&labels).inc();
                    entry.failed_seen.push(previous.clone());
                    if entry.failed_seen.len() > 8 {
                        entry.failed_seen.remove(0);
                    }
                }
                let busy = matches!(
                    status.state,
                    CallState::Queued | CallState::Running | CallState::Retrying
                );
                if busy && !entry.schedule.allow_overlap {
                    c.missed.get_or_create(&labels).inc();
                    tracing::info!(
                        function = key,
                        at = %instant,
                        previous = %previous,
                        "scheduled firing skipped: the previous one is still {}",
                        status.state.as_str()
                    );
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(function = key, error = %e, "cannot read the previous firing's call")
            }
        }
    }
    let id = call_id(key, instant);
    let mut extra = vec![("X-Scheduled-At", instant.to_string())];
    if catching_up {
        extra.push(("X-Missed", "true".to_string()));
    }
    let request = super::queued_call(
        &id,
        &labels.function_name,
        (CRON_TOPIC, "cron-connector"),
        Vec::new(),
        entry.schedule.callback_url.clone(),
        &extra,
    );
    match gateway.queue.enqueue(request, None).await {
        Ok(enqueued) => {
            if matches!(enqueued, Enqueued::New(_)) {
                c.firings.get_or_create(&labels).inc();
                gateway.wake.notify_one();
                tracing::debug!(function = key, call_id = %id, at = %instant, "scheduled firing queued");
            }
            entry.last_call = Some(id.clone());
            gateway.triggers.update(key, KIND, |row| {
                row.last_firing = Some(Firing {
                    scheduled_at: instant.to_string(),
                    call_id: id,
                    state: None,
                });
            });
        }
        Err(e) => {
            c.failures.get_or_create(&labels).inc();
            tracing::warn!(function = key, at = %instant, error = %e, "cannot queue a scheduled firing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_name_the_function_and_the_instant_within_128_characters() {
        let t: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        assert_eq!(
            call_id("tick.openfaas-fn", t),
            "cron:tick.openfaas-fn:1796637600"
        );
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        let id = call_id(&long, t);
        assert!(id.len() <= 128, "{id}");
        assert!(
            id.starts_with("cron:") && id.ends_with(":1796637600"),
            "{id}"
        );
        assert!(crate::gateway::asynchronous::valid_call_id(&id));
    }
}
