//! NATS subjects as triggers (the nats-connector's `topic` annotation): every gateway
//! subscribes to each subject a function names, in one queue group ([`QUEUE_GROUP`]), so a
//! message goes to one gateway, which turns it into an asynchronous call on the durable queue
//! for each function naming that subject: the message's payload as the body, `X-Topic` (the
//! subject) and `X-Connector: nats-connector`. A message with a reply subject gets the
//! function's result published there once the call has finished (its body, with the call's
//! `X-Call-Id` and `X-Function-Status` as headers), as long as the gateway that took the
//! message runs until then.
//!
//! Subscriptions follow deployments ([`super::follow`]), at once; the client resubscribes by
//! itself after it reconnects (a NATS restart).
//!
//! Subjects that belong to NATS itself (`$JS.`, `$KV.`, ...), to replies (`_INBOX.`) or to the
//! queue (its requests, dead letters and callbacks, when the queue is on NATS) are never
//! triggers ([`reserved`]): a deployment naming one is refused, and a wildcard that also
//! matches them takes none of their messages. A message there is not the users' own, and a
//! call made of the queue's own message would be published there again, without end.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::board::{Firing, TriggerLabels, TriggerRow};
use super::{Deployed, TriggerSpec};
use crate::gateway::Gateway;
use crate::gateway::invoke::new_call_id;
use crate::gateway::types::display_name;
use crate::queue::{CallState, Enqueued};

/// The queue group every gateway subscribes in.
pub const QUEUE_GROUP: &str = "fgateway-triggers";

/// The kind of trigger, in listings and metrics.
const KIND: &str = "nats";

/// Messages of one subject being queued at once.
const IN_FLIGHT: usize = 64;

/// How soon a subscription the client could not make is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Functions (key, label) per subject.
type Routes = Arc<RwLock<HashMap<String, Vec<(String, String)>>>>;

/// Why the trigger servers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A URL of the list is not one.
    #[error("triggers_nats: {0}; accepted: comma-separated nats:// or tls:// URLs")]
    Url(#[source] crate::queue::jetstream::SetupError),
    /// The client could not be made.
    #[error("triggers_nats: cannot connect")]
    Connect(#[source] async_nats::ConnectError),
}

/// Whether messages on `subject` are not for triggers: NATS's own (a first token starting
/// with `$`), replies (`_INBOX.`), or the queue's (`ROOT.` with a root of `roots`, from
/// [`crate::queue::Queue::nats_subject_roots`]).
pub fn reserved(subject: &str, roots: &[String]) -> bool {
    let (first, more) = match subject.split_once('.') {
        Some((first, _)) => (first, true),
        None => (subject, false),
    };
    first.starts_with('$') || (more && (first == "_INBOX" || roots.iter().any(|r| r == first)))
}

/// Why `spec` cannot be deployed on `gateway`: a subject its `topic` names is [`reserved`].
pub fn refusal(
    gateway: &Gateway,
    spec: &crate::gateway::types::FunctionDeployment,
) -> Option<String> {
    let subjects = TriggerSpec::of(spec).ok()?.subjects;
    let roots = gateway.queue.nats_subject_roots();
    let taken = subjects.iter().find(|s| reserved(s, &roots))?;
    let mut own: Vec<String> = roots.iter().map(|r| format!("{r}.>")).collect();
    own.push("_INBOX.>".into());
    Some(format!(
        "annotation {}: {taken:?} is where NATS or the queue publish their own messages \
         ({}); accepted: {} outside those",
        super::TOPIC,
        own.join(", "),
        super::SUBJECT_FORM
    ))
}

/// Connects to the trigger server(s) at `urls` (comma-separated; any one that is up will
/// do), retrying in the background while none is up.
pub async fn connect(urls: &str) -> Result<async_nats::Client, ConnectError> {
    let servers = crate::queue::jetstream::servers(urls).map_err(ConnectError::Url)?;
    async_nats::ConnectOptions::new()
        .name("fgateway-triggers")
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(ConnectError::Connect)
}

/// Runs the subscriptions until `stop`, following `deployed`.
pub async fn run(
    gateway: Arc<Gateway>,
    client: async_nats::Client,
    mut deployed: tokio::sync::watch::Receiver<Deployed>,
    stop: CancellationToken,
) {
    let routes: Routes = Arc::default();
    let roots: Arc<[String]> = gateway.queue.nats_subject_roots().into();
    let mut subscribed: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut refused = std::collections::BTreeSet::new();
    loop {
        let now = deployed.borrow_and_update().clone();
        let wanted = wanted(&gateway, &now, &roots, &mut refused);
        *routes.write().unwrap_or_else(PoisonError::into_inner) = wanted.clone();
        subscribed.retain(|subject, task| {
            let keep = wanted.contains_key(subject);
            if !keep {
                // Dropping the subscription (with its task) unsubscribes.
                task.abort();
                tracing::info!(subject, "unsubscribed");
            }
            keep
        });
        for subject in wanted.keys() {
            if subscribed.contains_key(subject) {
                continue;
            }
            match client
                .queue_subscribe(subject.clone(), QUEUE_GROUP.to_string())
                .await
            {
                Ok(subscription) => {
                    tracing::info!(subject, group = QUEUE_GROUP, "subscribed");
                    let task = tokio::spawn(serve(
                        Arc::clone(&gateway),
                        client.clone(),
                        Arc::clone(&routes),
                        Arc::clone(&roots),
                        subject.clone(),
                        subscription,
                    ));
                    subscribed.insert(subject.clone(), task);
                }
                Err(e) => tracing::warn!(subject, error = %e, "cannot subscribe"),
            }
        }
        let all = subscribed.len() == wanted.len();
        tokio::select! {
            () = stop.cancelled() => break,
            changed = deployed.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(RETRY), if !all => {}
        }
    }
    for (_, task) in subscribed {
        task.abort();
    }
}

/// The subjects the deployed functions name, with their functions; the board's rows follow.
/// A [`reserved`] subject is left out, with a warning the first time (`refused`): deployments
/// naming one are refused, but one may come from before, or from the cluster.
fn wanted(
    gateway: &Gateway,
    deployed: &Deployed,
    roots: &[String],
    refused: &mut std::collections::BTreeSet<String>,
) -> HashMap<String, Vec<(String, String)>> {
    let mut wanted: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut keys = Vec::new();
    for t in deployed.iter() {
        let spec = &t.spec;
        let mut subjects = t.triggers.subjects.clone();
        subjects.retain(|subject| {
            let ok = !reserved(subject, roots);
            if !ok && refused.insert(subject.clone()) {
                tracing::warn!(
                    subject,
                    function = %spec.key(),
                    "not subscribed: NATS or the queue publish their own messages there"
                );
            }
            ok
        });
        if subjects.is_empty() {
            continue;
        }
        let key = spec.key();
        let label = display_name(&spec.service, spec.namespace());
        for subject in &subjects {
            wanted
                .entry(subject.clone())
                .or_default()
                .push((key.clone(), label.clone()));
        }
        let mut changed = true;
        gateway.triggers.update(&key, KIND, |row| {
            changed = row.subjects != subjects;
        });
        if changed {
            gateway.triggers.set(
                &key,
                TriggerRow {
                    function: spec.service.clone(),
                    namespace: spec.namespace().to_string(),
                    kind: KIND,
                    schedule: None,
                    subjects,
                    last_firing: None,
                    next_firing: None,
                },
            );
        }
        keys.push(key);
    }
    gateway
        .triggers
        .retain(KIND, |k| keys.iter().any(|key| key == k));
    wanted
}

/// Turns each message of `subscription` into calls of the subject's functions, up to
/// [`IN_FLIGHT`] messages at a time (so that the queue can store them together).
async fn serve(
    gateway: Arc<Gateway>,
    client: async_nats::Client,
    routes: Routes,
    roots: Arc<[String]>,
    subject: String,
    subscription: async_nats::Subscriber,
) {
    // A wildcard also matches what NATS and the queue publish; those are not triggers.
    subscription
        .filter(|message| std::future::ready(!reserved(&message.subject, &roots)))
        .for_each_concurrent(IN_FLIGHT, |message| {
            let (gateway, client, routes, subject) = (&gateway, &client, &routes, &subject);
            async move {
                let functions = routes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(subject)
                    .cloned()
                    .unwrap_or_default();
                for (key, label) in functions {
                    let call_id = enqueue(gateway, &key, &label, &message).await;
                    if let (Some(call_id), Some(reply)) = (call_id, message.reply.clone()) {
                        tokio::spawn(reply_when_done(
                            Arc::clone(gateway),
                            client.clone(),
                            call_id,
                            reply,
                        ));
                    }
                }
            }
        })
        .await;
}

/// Queues one call of function `key` for `message`; its call id, once stored.
async fn enqueue(
    gateway: &Gateway,
    key: &str,
    label: &str,
    message: &async_nats::Message,
) -> Option<String> {
    let labels = TriggerLabels {
        function_name: label.to_string(),
        kind: KIND.into(),
    };
    let call_id = new_call_id();
    let request = super::queued_call(
        &call_id,
        label,
        (&message.subject, "nats-connector"),
        message.payload.to_vec(),
        None,
        &[],
    );
    match gateway.queue.enqueue(request, None).await {
        Ok(Enqueued::New(_) | Enqueued::Duplicate(_)) => {
            gateway
                .metrics
                .triggers
                .firings
                .get_or_create(&labels)
                .inc();
            gateway.wake.notify_one();
            let at = jiff::Timestamp::now().to_string();
            let id = call_id.clone();
            gateway.triggers.update(key, KIND, |row| {
                row.last_firing = Some(Firing {
                    scheduled_at: at,
                    call_id: id,
                    state: None,
                });
            });
            Some(call_id)
        }
        Err(e) => {
            gateway
                .metrics
                .triggers
                .failures
                .get_or_create(&labels)
                .inc();
            tracing::warn!(function = key, subject = %message.subject, error = %e, "cannot queue a message's call");
            None
        }
    }
}

/// Publishes the result of `call_id` to `reply` once the call has finished (polling its
/// status, for at most the calls' own time limit and its retries' worth of it).
async fn reply_when_done(
    gateway: Arc<Gateway>,
    client: async_nats::Client,
    call_id: String,
    reply: async_nats::Subject,
) {
    let limit = gateway.config.upstream_timeout * 4 + Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    while tokio::time::Instant::now() < deadline {
        match gateway.queue.status(&call_id).await {
            Ok(Some(status))
                if matches!(
                    status.state,
                    CallState::Succeeded | CallState::Failed | CallState::Cancelled
                ) =>
            {
                let body: Vec<u8> = match (&status.result, &status.result_base64) {
                    (Some(text), _) => text.clone().into_bytes(),
                    (None, Some(b64)) => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .unwrap_or_default()
                    }
                    (None, None) => Vec::new(),
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("X-Call-Id", call_id.as_str());
                headers.insert("X-Call-State", status.state.as_str());
                if let Some(code) = status.status_code {
                    headers.insert("X-Function-Status", code.to_string().as_str());
                }
                if status.result_truncated {
                    headers.insert("X-Result-Truncated", "true");
                }
                if let Err(e) = client
                    .publish_with_headers(reply, headers, body.into())
                    .await
                {
                    tracing::warn!(call_id, error = %e, "cannot publish a call's result to its reply subject");
                }
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(call_id, error = %e, "reading a call's status"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
    tracing::warn!(call_id, "no result to publish to the reply subject in time");
}

#[cfg(test)]
mod tests {
    use super::reserved;

    #[test]
    fn the_servers_the_replies_and_the_queues_subjects_are_reserved() {
        let roots = ["faas-request".to_string(), "faas-request-dlq".to_string()];
        for s in [
            "$JS.API.INFO",
            "$KV.faas-request-calls.x",
            "_INBOX.abc.1",
            "faas-request.fn",
            "faas-request-dlq.fn",
        ] {
            assert!(reserved(s, &roots), "{s}");
        }
        for s in [
            "orders.created",
            "faas-requests.fn",
            "faas",
            "_INBOXES.x",
            "faas-request",
            "_INBOX",
        ] {
            assert!(!reserved(s, &roots), "{s}");
        }
        assert!(!reserved("faas-request.fn", &[]));
    }
}
