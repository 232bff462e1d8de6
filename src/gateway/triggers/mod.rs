//! Functions run without an HTTP client, from the durable queue: on a schedule, with
//! OpenFaaS's cron-connector annotations (`topic: cron-function`, `schedule: "*/5 * * * *"`),
//! and by NATS messages, with the nats-connector's (`topic: subject1,subject2`).
//!
//! - [`schedule`]: the schedule syntax (five cron fields, descriptors, `@every`, `CRON_TZ=`).
//! - [`schedules`]: the scheduler every gateway runs: each firing is an asynchronous call on
//!   the queue whose call id is made from the function and the scheduled instant, so gateways
//!   sharing a queue fire each tick once.
//! - [`subjects`]: NATS subjects (the nats-connector's `topic`): a message becomes an
//!   asynchronous call, once across gateways (a queue group); a reply subject gets the result.
//! - [`board`]: what `GET /system/triggers` and the metrics show.
//!
//! [`TriggerSpec::of`] reads and checks a function's annotations; a deployment whose
//! annotations do not parse is refused, naming the annotation and the accepted form.
//! [`follow`] reads them once per change of the deployed set, for both kinds.

pub mod board;
pub mod schedule;
pub mod schedules;
pub mod subjects;

use std::sync::Arc;

use schedule::Schedule;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::types::FunctionDeployment;

/// The annotation naming what triggers a function (the connectors' `topic`): a comma-separated
/// list, `cron-function` for a schedule.
pub const TOPIC: &str = "topic";
/// The topic that means "on a schedule".
pub const CRON_TOPIC: &str = "cron-function";
/// The schedule, with [`CRON_TOPIC`].
pub const SCHEDULE: &str = "schedule";
/// `run-once` (default): a firing missed while no gateway ran is run once when one is back;
/// `skip`: it is not.
pub const MISSED: &str = "com.fgateway.schedule.missed";
/// `skip` (default): a firing is skipped while the previous one is still queued or running;
/// `allow`: firings may overlap.
pub const OVERLAP: &str = "com.fgateway.schedule.overlap";
/// Where a firing's result is POSTed, as `X-Callback-Url` does for an asynchronous call.
pub const CALLBACK_URL: &str = "com.fgateway.schedule.callback-url";

/// A function's schedule, from its annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    /// When.
    pub schedule: Schedule,
    /// Whether a firing missed while no gateway ran is left out.
    pub skip_missed: bool,
    /// Whether firings may overlap.
    pub allow_overlap: bool,
    /// Where results go.
    pub callback_url: Option<String>,
}

/// What triggers a function, from its annotations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TriggerSpec {
    /// Its schedule.
    pub schedule: Option<ScheduleSpec>,
    /// The NATS subjects whose messages call it (the other topics).
    pub subjects: Vec<String>,
}

/// The accepted form of a NATS subject, for error messages.
pub const SUBJECT_FORM: &str = "NATS subjects separated by commas: tokens of letters, digits, \
    - and _ joined by dots (e.g. orders.created), * for one token, > for the rest";

/// Checks one NATS subject (`*` and `>` wildcards allowed).
fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        let ok = match *token {
            "" => false,
            "*" => true,
            ">" => i == tokens.len() - 1,
            t => t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        };
        if !ok {
            return Err(format!(
                "annotation {TOPIC}: {subject:?} is not a subject; accepted: {SUBJECT_FORM}"
            ));
        }
    }
    Ok(())
}

impl TriggerSpec {
    /// Reads `spec`'s annotations; the error names the annotation and the accepted form.
    pub fn of(spec: &FunctionDeployment) -> Result<TriggerSpec, String> {
        let Some(topic) = spec.annotation(TOPIC) else {
            return Ok(TriggerSpec::default());
        };
        let mut scheduled = false;
        let mut subjects = Vec::new();
        for t in topic.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if t == CRON_TOPIC {
                scheduled = true;
            } else {
                check_subject(t)?;
                if !subjects.iter().any(|s| s == t) {
                    subjects.push(t.to_string());
                }
            }
        }
        if !scheduled {
            return Ok(TriggerSpec {
                schedule: None,
                subjects,
            });
        }
        let text = spec.annotation(SCHEDULE).ok_or_else(|| {
            format!(
                "annotation {SCHEDULE} is missing, and {TOPIC}: {CRON_TOPIC} needs it; accepted: {}",
                schedule::ACCEPTED
            )
        })?;
        let schedule = Schedule::parse(text).map_err(|e| {
            format!(
                "annotation {SCHEDULE}: {e}; accepted: {}",
                schedule::ACCEPTED
            )
        })?;
        let skip_missed = match spec.annotation(MISSED).map(str::trim) {
            None | Some("run-once") => false,
            Some("skip") => true,
            Some(other) => {
                return Err(format!(
                    "annotation {MISSED}: {other:?}; accepted: run-once (the default) or skip"
                ));
            }
        };
        let allow_overlap = match spec.annotation(OVERLAP).map(str::trim) {
            None | Some("skip") => false,
            Some("allow") => true,
            Some(other) => {
                return Err(format!(
                    "annotation {OVERLAP}: {other:?}; accepted: skip (the default) or allow"
                ));
            }
        };
        let callback_url = match spec.annotation(CALLBACK_URL).map(str::trim) {
            None => None,
            Some(url) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| format!("annotation {CALLBACK_URL}: {url:?}: {e}"))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(format!(
                        "annotation {CALLBACK_URL}: {url:?}; accepted: an http or https URL"
                    ));
                }
                Some(url.to_string())
            }
        };
        Ok(TriggerSpec {
            schedule: Some(ScheduleSpec {
                schedule,
                skip_missed,
                allow_overlap,
                callback_url,
            }),
            subjects,
        })
    }
}

/// The asynchronous call a trigger queues: `POST /` to `function` with `body`, carrying the
/// connectors' headers, `X-Call-Id`, `X-Topic` and `X-Connector` (`topic`), and `extra` ones.
pub fn queued_call(
    call_id: &str,
    function: &str,
    (topic, connector): (&str, &str),
    body: Vec<u8>,
    callback_url: Option<String>,
    extra: &[(&str, String)],
) -> crate::queue::QueueRequest {
    let mut header = std::collections::BTreeMap::new();
    header.insert("X-Call-Id".to_string(), vec![call_id.to_string()]);
    header.insert("X-Topic".to_string(), vec![topic.to_string()]);
    header.insert("X-Connector".to_string(), vec![connector.to_string()]);
    for (name, value) in extra {
        header.insert((*name).to_string(), vec![value.clone()]);
    }
    crate::queue::QueueRequest {
        header,
        host: String::new(),
        body,
        method: "POST".into(),
        path: "/".into(),
        query_string: String::new(),
        function: function.to_string(),
        callback_url,
        call_id: call_id.to_string(),
        enqueued_at: crate::queue::unix_ms(),
        attempt: 0,
    }
}

/// A deployed function that has triggers, with them.
#[derive(Debug, Clone)]
pub struct Triggered {
    /// What is deployed.
    pub spec: Arc<FunctionDeployment>,
    /// Its triggers.
    pub triggers: TriggerSpec,
}

/// The deployed functions that have triggers, as [`follow`] sends them.
pub type Deployed = Arc<[Triggered]>;

/// Reads the deployed functions' triggers now, and again after each change of the deployed
/// set (until `stop`); the schedules and the subjects follow the receiver.
pub fn follow(gateway: &Arc<super::Gateway>, stop: CancellationToken) -> watch::Receiver<Deployed> {
    let read = |gateway: &super::Gateway| -> Deployed {
        gateway
            .registry
            .specs()
            .into_iter()
            // Deployments were checked when made; one that no longer parses has no triggers.
            .filter_map(|spec| {
                let triggers = TriggerSpec::of(&spec).ok()?;
                let some = triggers.schedule.is_some() || !triggers.subjects.is_empty();
                some.then_some(Triggered { spec, triggers })
            })
            .collect()
    };
    let mut changes = gateway.registry.watch_changes();
    changes.mark_unchanged();
    let (tx, rx) = watch::channel(read(gateway));
    let gateway = Arc::downgrade(gateway);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            tx.send_replace(read(&gateway));
        }
    });
    rx
}

/// `GET /system/triggers`: every trigger with its last firing (and that call's state, read
/// now) and its next.
pub async fn listing(gateway: &super::Gateway) -> Vec<board::TriggerRow> {
    let mut rows = gateway.triggers.rows();
    for row in &mut rows {
        if let Some(firing) = &mut row.last_firing
            && let Ok(Some(status)) = gateway.queue.status(&firing.call_id).await
        {
            firing.state = Some(status.state.as_str().to_string());
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(annotations: &[(&str, &str)]) -> FunctionDeployment {
        FunctionDeployment {
            service: "tick".into(),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..FunctionDeployment::default()
        }
    }

    #[test]
    fn the_cron_connectors_annotations_make_a_schedule() {
        let t = TriggerSpec::of(&spec(&[(TOPIC, CRON_TOPIC), (SCHEDULE, "*/5 * * * *")])).unwrap();
        let s = t.schedule.unwrap();
        assert_eq!(s.schedule.text(), "*/5 * * * *");
        assert!(!s.skip_missed && !s.allow_overlap && s.callback_url.is_none());
        let t = TriggerSpec::of(&spec(&[
            (TOPIC, "orders, cron-function"),
            (SCHEDULE, "@every 1s"),
            (MISSED, "skip"),
            (OVERLAP, "allow"),
            (CALLBACK_URL, "http://example.com/hook"),
        ]))
        .unwrap();
        assert_eq!(t.subjects, ["orders"]);
        let s = t.schedule.unwrap();
        assert!(s.skip_missed && s.allow_overlap);
        assert_eq!(s.callback_url.as_deref(), Some("http://example.com/hook"));
    }

    #[test]
    fn no_topic_or_another_topic_is_no_schedule() {
        assert_eq!(TriggerSpec::of(&spec(&[])).unwrap(), TriggerSpec::default());
        assert_eq!(
            TriggerSpec::of(&spec(&[(SCHEDULE, "@hourly")])).unwrap(),
            TriggerSpec::default()
        );
        let t = TriggerSpec::of(&spec(&[(TOPIC, "orders.created, audit.>, jobs.*.done")])).unwrap();
        assert_eq!(t.schedule, None);
        assert_eq!(t.subjects, ["orders.created", "audit.>", "jobs.*.done"]);
    }

    #[test]
    fn bad_subjects_are_named_with_the_accepted_form() {
        for bad in ["orders..created", "a b", "audit.>.x", "ord$rs"] {
            let err = TriggerSpec::of(&spec(&[(TOPIC, bad)])).unwrap_err();
            assert!(
                err.contains("is not a subject") && err.contains("NATS subjects"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn bad_annotations_are_named_with_the_accepted_form() {
        for (annotations, says) in [
            (vec![(TOPIC, CRON_TOPIC)], "annotation schedule is missing"),
            (
                vec![(TOPIC, CRON_TOPIC), (SCHEDULE, "every minute")],
                "annotation schedule:",
            ),
            (
                vec![
                    (TOPIC, CRON_TOPIC),
                    (SCHEDULE, "@hourly"),
                    (MISSED, "never"),
                ],
                "run-once (the default) or skip",
            ),
            (
                vec![(TOPIC, CRON_TOPIC), (SCHEDULE, "@hourly"), (OVERLAP, "yes")],
                "skip (the default) or allow",
            ),
            (
                vec![
                    (TOPIC, CRON_TOPIC),
                    (SCHEDULE, "@hourly"),
                    (CALLBACK_URL, "ftp://x/"),
                ],
                "an http or https URL",
            ),
        ] {
            let err = TriggerSpec::of(&spec(&annotations)).unwrap_err();
            assert!(err.contains(says), "{annotations:?}: {err}");
        }
        let err = TriggerSpec::of(&spec(&[(TOPIC, CRON_TOPIC), (SCHEDULE, "* *")])).unwrap_err();
        assert!(err.contains("five cron fields"), "{err}");
    }
}
