//! What the triggers did and will do, for `GET /system/triggers` and the metrics
//! (`gateway_trigger_firings_total`, `gateway_trigger_failures_total`,
//! `gateway_trigger_missed_total`, each by `function_name` and `kind`).

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

/// `function_name` and `kind` (`schedule` or `nats`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// The function (`NAME`, or `NAME.NAMESPACE` outside the default namespace).
    pub function_name: String,
    /// What triggers it.
    pub kind: String,
}

/// The triggers' counters (registered by the gateway's metrics).
#[derive(Debug, Clone, Default)]
pub struct TriggerCounters {
    /// Calls this gateway queued for a trigger.
    pub firings: Family<TriggerLabels, Counter>,
    /// Firings that could not be queued, or whose call failed.
    pub failures: Family<TriggerLabels, Counter>,
    /// Ticks that did not run: while no gateway ran (beyond the one run on return), or skipped
    /// because the previous firing was still queued or running.
    pub missed: Family<TriggerLabels, Counter>,
}

/// One firing.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Firing {
    /// The scheduled instant (RFC 3339).
    pub scheduled_at: String,
    /// Its asynchronous call.
    pub call_id: String,
    /// The call's state (`queued`, `running`, `succeeded`...), read when listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// One trigger, as `GET /system/triggers` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRow {
    /// The function's name.
    pub function: String,
    /// Its namespace.
    pub namespace: String,
    /// `schedule` or `nats`.
    pub kind: &'static str,
    /// The schedule, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The NATS subjects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// The last firing seen (fired here or by another gateway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_firing: Option<Firing>,
    /// The next scheduled instant (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_firing: Option<String>,
}

/// The triggers this gateway runs, by function key and kind.
#[derive(Debug, Default)]
pub struct Board {
    /// The rows, by (function key, kind).
    rows: Mutex<BTreeMap<(String, &'static str), TriggerRow>>,
}

impl Board {
    /// Sets (or replaces) the row of function `key` (its kind is the row's).
    pub fn set(&self, key: &str, row: TriggerRow) {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((key.to_string(), row.kind), row);
    }

    /// Changes the `kind` row of function `key`, if there is one.
    pub fn update(&self, key: &str, kind: &'static str, change: impl FnOnce(&mut TriggerRow)) {
        if let Some(row) = self
            .rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&(key.to_string(), kind))
        {
            change(row);
        }
    }

    /// Forgets the `kind` rows of the functions not in `keep`.
    pub fn retain(&self, kind: &'static str, keep: impl Fn(&str) -> bool) {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(k, row_kind), _| *row_kind != kind || keep(k));
    }

    /// Every row, by function key.
    pub fn rows(&self) -> Vec<TriggerRow> {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}
