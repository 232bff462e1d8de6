//! The autoscaler: every `interval`, each function's load is measured and its replica count set
//! within its `com.openfaas.scale.*` [min, max] ([`ScalePolicy`]), one of two ways.
//!
//! **Rate alert** (the default: no `type` or `target` label), as OpenFaaS CE scales: the rate of
//! successful (2xx) calls over the last [`ALERT_WINDOW`]; once it has stayed above
//! [`ALERT_RPS`] for [`ALERT_FOR`] the alert fires and the function gains
//! [`ScalePolicy::alert_step`] replicas (`factor` percent of max, rounded up), and again every
//! [`ALERT_REPEAT`] while it keeps firing; once the rate has stayed at or below the threshold as
//! long, the function returns to min.
//!
//! **Target tracking** (a `type` or `target` label): the count is set to
//! `ceil(load / (target × target-proportion))`. Load is what the function's
//! `com.openfaas.scale.type` names: calls in flight (`capacity`, sync and async calls alike,
//! sampled each round), calls per second (`rps`, over the last round), or CPU in millicores
//! (`cpu`, over the last round, when the provider can tell). Scaling up happens at once;
//! scaling down only to the highest count wanted during the last `scale_down_window`, so a
//! short lull does not drop replicas that the next burst needs.
//!
//! Either way, a function with `com.openfaas.scale.zero=true` that saw no call for `zero-duration` goes to
//! zero replicas; its next call wakes it (see [`crate::gateway::registry::Registry::resolve`]). Every
//! change is logged, and the figures behind it are in the metrics
//! (`gateway_service_target_load`, `gateway_service_load`, `gateway_service_desired_replicas`,
//! `gateway_service_replicas`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{ALERT_FOR, ALERT_REPEAT, ALERT_RPS, ALERT_WINDOW, LoadKind, ScaleMode, ScalePolicy};
use crate::gateway::Gateway;
use crate::gateway::types::display_name;

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
    /// The rate alert's state.
    alert: Alert,
}

/// What the rate alert remembers of one function.
#[derive(Debug, Default)]
struct Alert {
    /// Successful calls counted at each round, oldest first, reaching back [`ALERT_WINDOW`].
    samples: VecDeque<(Instant, u64)>,
    /// Since when the rate has been above [`ALERT_RPS`] without a break.
    above_since: Option<Instant>,
    /// When the alert last added replicas; `None` while it is not firing.
    stepped: Option<Instant>,
    /// Since when the rate has been back at or below [`ALERT_RPS`] while firing.
    below_since: Option<Instant>,
}

impl Alert {
    /// Records the count of successful calls at `now`; returns the rate over the window.
    fn rate(&mut self, now: Instant, succeeded: u64) -> f64 {
        self.samples.push_back((now, succeeded));
        // Keep one sample at or past the window's start, so the rate spans the whole window.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= ALERT_WINDOW)
        {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some((t, first)) if *t < now => {
                succeeded.saturating_sub(*first) as f64 / now.duration_since(*t).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// The count the alert wants for a function at `current` replicas, given `rate`. The alert
    /// fires once the rate has stayed above [`ALERT_RPS`] for [`ALERT_FOR`], and resolves once it
    /// has stayed at or below it as long (a rate hovering at the threshold does not flap).
    fn desired(&mut self, now: Instant, rate: f64, policy: &ScalePolicy, current: u64) -> u64 {
        if policy.alert_step() == 0 {
            // A zero factor: the alert scales nothing, and a count set by hand stays.
            self.reset();
            return policy.clamp(current);
        }
        let held =
            |since: Option<Instant>| since.is_some_and(|t| now.duration_since(t) >= ALERT_FOR);
        if rate > ALERT_RPS {
            self.above_since.get_or_insert(now);
            self.below_since = None;
        } else {
            self.above_since = None;
            if self.stepped.is_some() {
                self.below_since.get_or_insert(now);
            }
        }
        match self.stepped {
            // Resolved: back to min.
            Some(_) if held(self.below_since) => {
                self.reset();
                policy.min.max(1)
            }
            Some(at) if self.above_since.is_none() || now.duration_since(at) < ALERT_REPEAT => {
                policy.clamp(current)
            }
            _ if held(self.above_since) => {
                self.stepped = Some(now);
                policy.clamp(current.saturating_add(policy.alert_step()))
            }
            _ => policy.clamp(current),
        }
    }

    /// Forgets the alert: the next one starts from nothing.
    fn reset(&mut self) {
        self.above_since = None;
        self.below_since = None;
        self.stepped = None;
    }
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
    if !gateway.registry.provider().leads() {
        // Another gateway on the cluster scales; what this one tracked is stale once it leads.
        tracked.clear();
        return;
    }
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
            alert: Alert::default(),
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
        let rate = state.alert.rate(now, activity.succeeded);
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
            state.alert.reset();
            0
        } else if policy.zero && idle {
            state.alert.reset();
            0
        } else if let ScaleMode::Alert { .. } = policy.mode {
            state.alert.desired(now, rate, &policy, current)
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
        let (per_replica, load) = match policy.mode {
            ScaleMode::Alert { .. } => (ALERT_RPS, rate),
            ScaleMode::Target => (per_replica, load),
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
                mode = match policy.mode {
                    ScaleMode::Alert { .. } => "rate alert",
                    ScaleMode::Target => "target",
                },
                kind = ?policy.kind,
                "autoscaled"
            ),
            Err(e) => tracing::warn!(function = %label, error = %e, "cannot autoscale"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(labels: &[(&str, &str)]) -> ScalePolicy {
        ScalePolicy::of(&super::super::tests::with(labels)).unwrap()
    }

    /// Drives the alert at one round a second with `rps` successful calls per second for
    /// `seconds`; returns the counts it wanted, starting from `current`.
    fn drive(
        alert: &mut Alert,
        clock: &mut (Instant, u64),
        p: &ScalePolicy,
        current: &mut u64,
        rps: u64,
        seconds: u64,
    ) -> Vec<u64> {
        let mut seen = Vec::new();
        for _ in 0..seconds {
            clock.0 += Duration::from_secs(1);
            clock.1 += rps;
            let rate = alert.rate(clock.0, clock.1);
            *current = alert.desired(clock.0, rate, p, *current);
            seen.push(*current);
        }
        seen
    }

    #[test]
    fn the_rate_alert_steps_up_while_firing_and_returns_to_min() {
        let p = policy(&[
            ("com.openfaas.scale.min", "1"),
            ("com.openfaas.scale.max", "4"),
        ]);
        let mut alert = Alert::default();
        let mut clock = (Instant::now(), 0);
        let mut current = 1;
        // 4 calls a second never fires.
        assert!(
            drive(&mut alert, &mut clock, &p, &mut current, 4, 60)
                .iter()
                .all(|c| *c == 1)
        );
        // 10 a second: the rate passes 5 after a few rounds, fires 5 s later, steps by 1 (20% of
        // 4, rounded up), then again every 30 s.
        let seen = drive(&mut alert, &mut clock, &p, &mut current, 10, 75);
        let first = seen.iter().position(|c| *c == 2).unwrap();
        assert!(
            (5..=12).contains(&first),
            "first step after {first} s: {seen:?}"
        );
        assert_eq!(seen[first + 29], 2, "{seen:?}");
        assert_eq!(seen[first + 30], 3, "{seen:?}");
        // The load stops: back to min once the window's rate has stayed under 5 for 5 s.
        let seen = drive(&mut alert, &mut clock, &p, &mut current, 0, 20);
        let back = seen.iter().position(|c| *c == 1).unwrap();
        assert!(
            (5..=11).contains(&back),
            "back to min after {back} s: {seen:?}"
        );
        assert!(seen[back..].iter().all(|c| *c == 1));
        // A rate that dips under the threshold for a moment does not resolve the alert.
        // A rate hovering at the threshold: under it for less than 5 s does not resolve.
        let mut alert = Alert::default();
        let mut at = clock.0;
        let mut current = 1;
        let mut feed = |rate: f64, seconds: u64, current: &mut u64| {
            (0..seconds)
                .map(|_| {
                    at += Duration::from_secs(1);
                    *current = alert.desired(at, rate, &p, *current);
                    *current
                })
                .collect::<Vec<u64>>()
        };
        feed(8.0, 6, &mut current);
        assert_eq!(current, 2);
        let mut seen = Vec::new();
        for _ in 0..5 {
            seen.extend(feed(4.9, 3, &mut current));
            seen.extend(feed(5.1, 1, &mut current));
        }
        assert!(seen.iter().all(|c| *c == 2), "no flapping: {seen:?}");
        assert_eq!(feed(4.9, 6, &mut current).last(), Some(&1));
    }

    #[test]
    fn a_zero_factor_never_steps_and_a_manual_scale_stays() {
        let p = policy(&[
            ("com.openfaas.scale.factor", "0"),
            ("com.openfaas.scale.max", "5"),
        ]);
        let mut alert = Alert::default();
        let mut clock = (Instant::now(), 0);
        let mut current = 3;
        // A burst, then quiet: with a zero factor, a count set by hand stays throughout.
        let mut seen = drive(&mut alert, &mut clock, &p, &mut current, 50, 40);
        seen.extend(drive(&mut alert, &mut clock, &p, &mut current, 0, 40));
        assert!(seen.iter().all(|c| *c == 3), "{seen:?}");
        let p = policy(&[("com.openfaas.scale.max", "5")]);
        let mut alert = Alert::default();
        let mut current = 3;
        let seen = drive(&mut alert, &mut clock, &p, &mut current, 1, 40);
        assert!(seen.iter().all(|c| *c == 3), "{seen:?}");
    }
}
