//! Function logs from the pods: every running container of a function's pods is followed
//! (`pods/log?follow=true`), and its lines go into the gateway's function log, named after
//! the pod, as the other providers' replicas' lines do; so `/system/logs` (follow, since,
//! tail), `faas-cli logs` and the UI read them merged across replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::LogParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};

use crate::gateway::logs::FunctionLogs;
use crate::gateway::provider::replica_log::ReplicaLog;
use crate::gateway::types::FUNCTION_NAME_LABEL;

/// A running container: its pod's uid and its restart count (a restarted container is a new
/// log stream).
type Run = (String, i32);

/// Follows the logs of every running function container until aborted.
pub async fn follow(client: Client, logs: Arc<FunctionLogs>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut followed: HashMap<Run, tokio::task::AbortHandle> = HashMap::new();
    let mut events = std::pin::pin!(
        watcher::watcher(pods, watcher::Config::default().labels(FUNCTION_NAME_LABEL))
            .default_backoff()
    );
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => {
                // Streams that ended (their container exited) are dropped first.
                followed.retain(|_, task| !task.is_finished());
                let Some(run) = running(&pod) else { continue };
                if followed.contains_key(&run) {
                    continue;
                }
                let task = tokio::spawn(follow_one(client.clone(), Arc::clone(&logs), pod));
                followed.insert(run, task.abort_handle());
            }
            Ok(Event::Delete(pod)) => {
                let uid = pod.uid().unwrap_or_default();
                followed.retain(|(u, _), task| {
                    if *u == uid {
                        task.abort();
                    }
                    *u != uid
                });
            }
            Ok(Event::Init | Event::InitDone) => {}
            Err(e) => tracing::warn!(error = %e, "watching the functions' pods"),
        }
    }
}

/// The pod's first container when it runs.
fn running(pod: &Pod) -> Option<Run> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    status.state.as_ref()?.running.as_ref()?;
    Some((pod.uid()?, status.restart_count))
}

/// How often in a row a log stream that broke, ended or could not be opened is opened again
/// before the container is given up on (it stopped; a restarted one is followed anew).
const REOPEN: u32 = 30;

/// Follows one container's log into the function's log. A stream that breaks or ends is
/// opened again from the second of the last line passed on (lines at or before that line's
/// stamp are not passed on twice).
async fn follow_one(client: Client, logs: Arc<FunctionLogs>, pod: Pod) {
    let Some(namespace) = pod.namespace() else {
        return;
    };
    let name = pod.name_any();
    let Some(function) = pod.labels().get(FUNCTION_NAME_LABEL).cloned() else {
        return;
    };
    let sink = ReplicaLog {
        logs,
        name: function,
        namespace: namespace.clone(),
        instance: name.clone(),
    };
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut last: Option<Timestamp> = None;
    let mut failures = 0;
    while failures < REOPEN {
        let params = LogParams {
            follow: true,
            timestamps: true,
            // The API takes whole seconds: from the start of the last line's second.
            since_time: last.and_then(|t| Timestamp::from_second(t.as_second()).ok()),
            ..LogParams::default()
        };
        let stream = match api.log_stream(&name, &params).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(pod = %name, namespace, error = %e, "cannot follow the pod's log yet");
                failures += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let mut lines = stream.lines();
        let mut passed = false;
        while let Some(line) = lines.next().await {
            let Ok(line) = line else { break };
            let (stamp, text) = stamped(&line);
            if let (Some(stamp), Some(last)) = (stamp, last)
                && stamp <= last
            {
                continue;
            }
            last = stamp.or(last);
            passed = true;
            sink.pass_on(text.trim_end_matches('\r'));
        }
        failures = if passed { 0 } else { failures + 1 };
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// A line the kubelet stamped (`2026-12-07T02:53:24.331041123Z text`): its stamp and text.
fn stamped(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(' ') {
        Some((stamp, text)) => match stamp.parse::<Timestamp>() {
            Ok(t) => (Some(t), text),
            Err(_) => (None, line),
        },
        None => (line.parse::<Timestamp>().ok(), ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_stamps_are_split_off() {
        let (t, text) =
            stamped("2026-12-07T02:53:24.331041123Z 2026/12/07 02:53:24 Forking fprocess.");
        assert_eq!(text, "2026/12/07 02:53:24 Forking fprocess.");
        assert_eq!(t.map(|t| t.as_second()), Some(1_796_612_004));
        assert_eq!(stamped("no stamp here"), (None, "no stamp here"));
    }
}
