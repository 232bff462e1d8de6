//! The autoscaler: every `interval`, each function's load is measured and its replica count
//! set to `ceil(load / (target × target-proportion))`, within its `com.openfaas.scale.*`
//! [min, max] ([`ScalePolicy`]).
//!
//! Load is what the function's `com.openfaas.scale.type` names: calls in flight (`capacity`,
//! sync and async calls alike, sampled each round), calls per second (`rps`, over the last
//! round), or CPU in millicores (`cpu`, over the last round, when the provider can tell).
//! Scaling up happens at once; scaling down only to the highest count wanted during the last
//! `scale_down_window`, so a short lull does not drop replicas that the next burst needs. A
//! function with `com.openfaas.scale.zero=true` that saw no call for `zero-duration` goes to
//! zero replicas; its next call wakes it (see [`super::registry::Registry::resolve`]). Every
//! change is logged, and the figures behind it are in the metrics
//! (`gateway_service_target_load`, `gateway_service_load`, `gateway_service_desired_replicas`,
//! `gateway_service_replicas`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::scaling::{LoadKind, ScalePolicy};
use super::types::display_name;

/// How the autoscaler runs.
#[derive(Debug, Clone, Copy)]
pub struct AutoscalerConfig {
    /// Time between two rounds.
    pub interval: Duration,
    /// How long load must stay low before replicas are removed.
    pub scale_down_window: Duration,
}

/// What the autoscaler remembers of one function between rounds.
#[derive(Debug)]
struct Tracked {
    /// Finished calls at the last round (for `rps`).
    finished: u64,
    /// CPU seconds at the last round (for `cpu`).
    cpu: Option<f64>,
    /// When the last round ran.
    at: Instant,
    /// Counts wanted during the scale-down window, oldest first.
    wanted: VecDeque<(Instant, u64)>,
    /// When the autoscaler first saw the function (its idle time starts there when it was
    /// never called).
    seen: Instant,
}

/// Runs rounds until `stop`.
pub async fn run(gateway: Arc<Gateway>, config: AutoscalerConfig, stop: CancellationToken) {
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(config.interval) => {}
        }
        round(&gateway, &config, &mut tracked);
    }
}

/// One round over every function.
fn round(gateway: &Gateway, config: &AutoscalerConfig, tracked: &mut HashMap<String, Tracked>) {
    let now = Instant::now();
    let specs = gateway.registry.specs();
    tracked.retain(|key, _| specs.iter().any(|s| s.key() == *key));
    for spec in specs {
        let Ok(policy) = ScalePolicy::of(&spec) else {
            continue;
        };
        let key = spec.key();
        let label = display_name(&spec.service, spec.namespace());
        let Some((current, changed_at)) = gateway.registry.replicas(&key) else {
            continue;
        };
        let activity = gateway.metrics.activity(&label);
        // Calls waiting for a replica (a cold start) are load too.
        let waiting = gateway.registry.waiting(&key) as i64;
        let cpu = (policy.kind == LoadKind::Cpu)
            .then(|| gateway.registry.provider().cpu_seconds(&key))
            .flatten();
        let state = tracked.entry(key.clone()).or_insert_with(|| Tracked {
            finished: activity.finished,
            cpu,
            at: now,
            wanted: VecDeque::new(),
            seen: now,
        });
        let elapsed = now.duration_since(state.at).as_secs_f64().max(1e-3);
        let load = match policy.kind {
            LoadKind::Capacity => (activity.in_flight + waiting).max(0) as f64,
            LoadKind::Rps => activity.finished.saturating_sub(state.finished) as f64 / elapsed,
            LoadKind::Cpu => match (cpu, state.cpu) {
                (Some(now_s), Some(before)) => (now_s - before).max(0.0) * 1000.0 / elapsed,
                _ => 0.0,
            },
        };
        state.finished = activity.finished;
        state.cpu = cpu;
        state.at = now;

        let per_replica = policy.target * policy.proportion;
        let wanted = policy.clamp((load / per_replica).ceil() as u64);
        state.wanted.push_back((now, wanted));
        while state
            .wanted
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > config.scale_down_window)
        {
            state.wanted.pop_front();
        }
        // Idle counts from the last call, and from the last change of the replica count: a
        // function woken by a call that is still waiting for its replica is not idle.
        let idle_since = activity
            .last
            .unwrap_or(state.seen)
            .max(state.seen)
            .max(changed_at);
        let idle = activity.in_flight <= 0
            && waiting == 0
            && now.duration_since(idle_since) >= policy.zero_after;
        let desired = if current == 0 {
            // Scaled to zero (by the autoscaler or by hand): the next call wakes it.
            0
        } else if policy.zero && idle {
            0
        } else if wanted >= current {
            wanted
        } else if now.duration_since(changed_at) < config.scale_down_window {
            // Just changed (a cold start, a manual scale): give it the window first.
            current
        } else {
            // Down only as far as the highest count wanted in the window, and never to zero:
            // only an idle function with com.openfaas.scale.zero goes there.
            state
                .wanted
                .iter()
                .map(|(_, w)| *w)
                .max()
                .unwrap_or(wanted)
                .min(current)
                .max(1)
        };
        gateway
            .metrics
            .scaling
            .record(&label, per_replica, load, desired, current);
        if desired == current {
            continue;
        }
        match gateway.registry.autoscale(&key, &spec, desired) {
            Ok(()) => tracing::info!(
                function = %label,
                from = current,
                to = desired,
                load,
                target = per_replica,
                kind = ?policy.kind,
                "autoscaled"
            ),
            Err(e) => tracing::warn!(function = %label, error = %e, "cannot autoscale"),
        }
    }
}
