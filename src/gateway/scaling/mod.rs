//! A function's scaling policy, from OpenFaaS's `com.openfaas.scale.*` labels, with their names,
//! meanings and defaults: replicas stay within [min, max]; with `zero`, a function idle for
//! `zero-duration` goes to no replicas at all. Between min and max, one of two ways
//! ([`ScaleMode`]):
//! - no `type` or `target` label: as OpenFaaS CE scales, on a request-rate alert: while a
//!   function keeps above [`ALERT_RPS`] successful calls per second, it gains `factor` percent of
//!   `max` replicas at a time; once the rate falls, it goes back to `min`;
//! - `type` or `target` given: target tracking, `target` load per replica (of the kind `type`
//!   names) times `target-proportion`, as OpenFaaS Pro's autoscaler does.
//!
//! [`autoscaler`] applies the policy to every function, round after round.

pub mod autoscaler;

use std::collections::BTreeMap;
use std::time::Duration;

use super::registry::MAX_REPLICAS;
use super::types::FunctionDeployment;

/// `com.openfaas.scale.min`: fewest replicas (default 1).
pub const MIN: &str = "com.openfaas.scale.min";
/// `com.openfaas.scale.max`: most replicas (default 20).
pub const MAX: &str = "com.openfaas.scale.max";
/// `com.openfaas.scale.target`: load per replica to aim for (default 50).
pub const TARGET: &str = "com.openfaas.scale.target";
/// `com.openfaas.scale.type`: `capacity` (in-flight calls, default), `rps` or `cpu`.
pub const TYPE: &str = "com.openfaas.scale.type";
/// `com.openfaas.scale.target-proportion`: share of the target to aim for (default 0.90).
pub const TARGET_PROPORTION: &str = "com.openfaas.scale.target-proportion";
/// `com.openfaas.scale.zero`: scale to zero when idle (default false).
pub const ZERO: &str = "com.openfaas.scale.zero";
/// `com.openfaas.scale.zero-duration`: idle time before scaling to zero (default 15m).
pub const ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
/// `com.openfaas.scale.factor`: percent of `max` added per step of the rate alert (default 20;
/// 0 turns the alert's scaling off).
pub const FACTOR: &str = "com.openfaas.scale.factor";

/// The rate alert fires while a function's successful calls per second, over
/// [`ALERT_WINDOW`], stay above this for [`ALERT_FOR`].
pub const ALERT_RPS: f64 = 5.0;
/// The window the alert's rate is measured over.
pub const ALERT_WINDOW: Duration = Duration::from_secs(10);
/// How long the rate must stay above [`ALERT_RPS`] before the alert fires.
pub const ALERT_FOR: Duration = Duration::from_secs(5);
/// While the alert keeps firing, the time between two steps up.
pub const ALERT_REPEAT: Duration = Duration::from_secs(30);

/// How replicas are chosen between min and max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleMode {
    /// OpenFaaS CE's request-rate alert: `factor` percent of max per step up, back to min when
    /// the rate falls.
    Alert {
        /// Percent of `max` added per step (0 to 100; 0 = never step).
        factor: u64,
    },
    /// Target tracking: `target` × `target-proportion` load per replica.
    Target,
}

/// What load the autoscaler measures per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// Calls in flight.
    Capacity,
    /// Calls per second.
    Rps,
    /// CPU in millicores.
    Cpu,
}

/// A function's scaling policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalePolicy {
    /// Fewest replicas.
    pub min: u64,
    /// Most replicas.
    pub max: u64,
    /// Load per replica to aim for.
    pub target: f64,
    /// What load means.
    pub kind: LoadKind,
    /// Share of `target` to aim for.
    pub proportion: f64,
    /// Whether an idle function goes to zero replicas.
    pub zero: bool,
    /// How long idle before it does.
    pub zero_after: Duration,
    /// How replicas are chosen between min and max.
    pub mode: ScaleMode,
}

impl Default for ScalePolicy {
    fn default() -> Self {
        ScalePolicy {
            min: 1,
            max: 20,
            target: 50.0,
            kind: LoadKind::Capacity,
            proportion: 0.90,
            zero: false,
            zero_after: Duration::from_secs(15 * 60),
            mode: ScaleMode::Alert { factor: 20 },
        }
    }
}

impl ScalePolicy {
    /// The policy of `spec`; `Err` names the label and the accepted form.
    pub fn of(spec: &FunctionDeployment) -> Result<ScalePolicy, String> {
        let empty = BTreeMap::new();
        let labels = spec.labels.as_ref().unwrap_or(&empty);
        let get = |name: &str| labels.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let invalid = |name: &str, value: &str, form: &str| {
            format!("invalid label {name}={value:?}: expected {form}")
        };
        let mut policy = ScalePolicy::default();
        let count = |name: &str, value: &str| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= MAX_REPLICAS)
                .ok_or_else(|| {
                    invalid(
                        name,
                        value,
                        &format!("a replica count from 0 to {MAX_REPLICAS}"),
                    )
                })
        };
        if let Some(v) = get(MIN) {
            policy.min = count(MIN, v)?;
        }
        if let Some(v) = get(MAX) {
            policy.max = count(MAX, v)?;
            if policy.max == 0 {
                return Err(invalid(MAX, v, "at least 1"));
            }
        }
        if policy.min > policy.max {
            return Err(format!(
                "label {MIN}={} is above {MAX}={}",
                policy.min, policy.max
            ));
        }
        if let Some(v) = get(FACTOR) {
            let factor = v
                .parse::<u64>()
                .ok()
                .filter(|f| *f <= 100)
                .ok_or_else(|| invalid(FACTOR, v, "a percentage from 0 to 100"))?;
            policy.mode = ScaleMode::Alert { factor };
        }
        if get(TARGET).is_some() || get(TYPE).is_some() {
            policy.mode = ScaleMode::Target;
        }
        if let Some(v) = get(TARGET) {
            policy.target = v
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| invalid(TARGET, v, "a positive number"))?;
        }
        if let Some(v) = get(TYPE) {
            policy.kind = match v {
                "capacity" => LoadKind::Capacity,
                "rps" => LoadKind::Rps,
                "cpu" => LoadKind::Cpu,
                _ => return Err(invalid(TYPE, v, "capacity, rps or cpu")),
            };
        }
        if let Some(v) = get(TARGET_PROPORTION) {
            policy.proportion = v
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p > 0.0 && *p <= 1.0)
                .ok_or_else(|| invalid(TARGET_PROPORTION, v, "a number above 0 and at most 1"))?;
        }
        if let Some(v) = get(ZERO) {
            policy.zero =
                crate::config::parse::boolean(v).map_err(|_| invalid(ZERO, v, "true or false"))?;
        }
        if let Some(v) = get(ZERO_DURATION) {
            policy.zero_after = crate::config::parse::duration(v)
                .ok()
                .flatten()
                .ok_or_else(|| invalid(ZERO_DURATION, v, "a duration such as 15m"))?;
        }
        Ok(policy)
    }

    /// `replicas` brought into [min, max].
    pub fn clamp(&self, replicas: u64) -> u64 {
        replicas.clamp(self.min, self.max)
    }

    /// The rate alert's step: `factor` percent of `max`, rounded up (0 when the factor is 0 or
    /// the policy tracks a target).
    pub fn alert_step(&self) -> u64 {
        match self.mode {
            ScaleMode::Alert { factor } => (self.max * factor).div_ceil(100),
            ScaleMode::Target => 0,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deployment with `labels` (for tests here and in the autoscaler's).
    pub(crate) fn with(labels: &[(&str, &str)]) -> FunctionDeployment {
        FunctionDeployment {
            service: "f".into(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_labels() {
        assert_eq!(ScalePolicy::of(&with(&[])).unwrap(), ScalePolicy::default());
        let p = ScalePolicy::of(&with(&[
            (MIN, "2"),
            (MAX, "4"),
            (TARGET, "2"),
            (TYPE, "rps"),
            (TARGET_PROPORTION, "0.5"),
            (ZERO, "true"),
            (ZERO_DURATION, "2s"),
        ]))
        .unwrap();
        assert_eq!((p.min, p.max, p.kind, p.zero), (2, 4, LoadKind::Rps, true));
        assert_eq!(p.zero_after, Duration::from_secs(2));
        assert_eq!((p.clamp(1), p.clamp(3), p.clamp(9)), (2, 3, 4));
    }

    #[test]
    fn the_rate_alert_is_the_default_and_a_target_label_turns_it_off() {
        let p = ScalePolicy::of(&with(&[(MIN, "1"), (MAX, "2")])).unwrap();
        assert_eq!(p.mode, ScaleMode::Alert { factor: 20 });
        assert_eq!(p.alert_step(), 1, "20% of 2, rounded up");
        let p = ScalePolicy::of(&with(&[(MAX, "20"), (FACTOR, "50")])).unwrap();
        assert_eq!(p.alert_step(), 10);
        assert_eq!(
            ScalePolicy::of(&with(&[(FACTOR, "0")]))
                .unwrap()
                .alert_step(),
            0
        );
        assert_eq!(
            ScalePolicy::of(&with(&[(FACTOR, "100")]))
                .unwrap()
                .alert_step(),
            20
        );
        for explicit in [(TYPE, "capacity"), (TARGET, "5")] {
            let p = ScalePolicy::of(&with(&[explicit])).unwrap();
            assert_eq!(p.mode, ScaleMode::Target, "{explicit:?}");
        }
    }

    #[test]
    fn bad_labels_name_themselves() {
        for labels in [
            vec![(MIN, "-1")],
            vec![(MIN, "5"), (MAX, "4")],
            vec![(MAX, "1000")],
            vec![(MAX, "0")],
            vec![(TARGET, "0")],
            vec![(TYPE, "memory")],
            vec![(TARGET_PROPORTION, "1.5")],
            vec![(ZERO, "sometimes")],
            vec![(ZERO_DURATION, "soon")],
            vec![(FACTOR, "150")],
            vec![(FACTOR, "-5")],
        ] {
            let err = ScalePolicy::of(&with(&labels)).unwrap_err();
            assert!(err.contains("com.openfaas.scale."), "{err}");
        }
    }
}
