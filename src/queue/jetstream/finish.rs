//! Finishing a call: recording its final outcome and queueing its callback in one step; and
//! scheduling a retry.

use std::convert::Infallible;
use std::pin::pin;

use futures_util::future::Either;

use super::*;

/// How [`JetStreamQueue::store_outcome`] stores an outcome.
struct Finish {
    /// How long the worker keeps the callback's first delivery.
    claim: Duration,
    /// A dead letter.
    dead: bool,
    /// The callback rides on the request message.
    carried: bool,
    /// How long elections are ridden out.
    within: Duration,
}

/// Renews a lease every third of it (at once too when `now`), until dropped.
async fn keep_lease(message: &Message, renewal: AckKind, lease: Duration, now: bool) -> Infallible {
    if now && let Err(e) = message.ack_with(renewal).await {
        tracing::debug!(error = %e, "cannot extend the lease before finishing");
    }
    loop {
        tokio::time::sleep(lease / 3).await;
        if let Err(e) = message.ack_with(renewal).await {
            tracing::debug!(error = %e, "cannot extend the lease while finishing");
        }
    }
}

impl JetStreamQueue {
    /// Records the final outcome of a call `owner` holds, queues its callback, and acks (or,
    /// for a dead letter, terms) its message.
    ///
    /// While a leader election or a restart keeps the bucket or a stream from taking the
    /// writes, they are tried again for up to a lease or the callback's `claim`, whichever is
    /// longer, and the lease is renewed meanwhile: a call that finished keeps its outcome
    /// rather than running again once its lease lapses, and a write that landed although its
    /// answer was lost is recognised when the server is back, so the callback goes out at
    /// once rather than after the claim.
    pub(super) async fn finalize(
        &self,
        call_id: &str,
        owner: &str,
        outcome: Outcome,
        claim: Duration,
        dead: bool,
    ) -> Result<bool, QueueError> {
        let Some(Held {
            message,
            current,
            lease,
            ..
        }) = self.take_held(call_id, owner)
        else {
            return Ok(false);
        };
        // A small outcome's callback rides on the request message, kept unacked until the
        // callback is delivered: one write records the outcome and the pending callback. A
        // large one, or a dead letter's, gets a callback message of its own first.
        let carried = !dead
            && current.record.callback_url.is_some()
            && outcome.body.len() <= self.result_cap()
            && headers_size(&outcome.headers) <= FRAMING / 2;
        // A slow outcome (a large body, a dead-letter copy) has its lease renewed at once; a
        // small one takes two round trips, well inside the two thirds of the lease left at
        // least, unless an election holds it up.
        let slow = dead || outcome.body.len() > self.max_payload() / 2;
        let stored = {
            let store = pin!(self.store_outcome(
                call_id,
                owner,
                &message,
                current,
                &outcome,
                Finish {
                    claim,
                    dead,
                    carried,
                    within: lease.max(claim),
                },
            ));
            let keep = pin!(keep_lease(&message, self.renewal(lease), lease, slow));
            match futures_util::future::select(store, keep).await {
                Either::Left((stored, _)) => stored?,
                Either::Right((never, _)) => match never {},
            }
        };
        let Some((settled, queued)) = stored else {
            return Ok(false);
        };
        let mut message = Some(message);
        if carried || queued {
            // The first delivery is this process's: its record saves a read. A carried
            // callback's request message stays unacked until the callback is delivered (or
            // moved to the callback stream): should this process die, it comes back, and the
            // worker that takes it queues the callback.
            let carrier = if carried { message.take() } else { None };
            self.settled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    call_id.to_string(),
                    Settled {
                        current: settled,
                        carrier,
                    },
                );
        }
        if let Some(message) = message {
            // A dead letter's term is confirmed (it is rare, and the message must not come
            // back); a success's ack is not waited for (a redelivery is dropped: the record is
            // final).
            let acked = if dead {
                message.double_ack_with(AckKind::Term).await
            } else {
                message.ack().await
            };
            if let Err(e) = acked {
                tracing::warn!(call_id, error = %e, "cannot ack a finished call's message");
            }
        }
        Ok(true)
    }

    /// The writes of [`Self::finalize`]: the dead-letter copy, the callback message, then the
    /// record, each tried again through elections until `how.within` has passed. The record as
    /// written and whether a callback message was queued; `None` when the lease was lost
    /// (what this call wrote is removed again).
    async fn store_outcome(
        &self,
        call_id: &str,
        owner: &str,
        message: &Message,
        current: Versioned,
        outcome: &Outcome,
        how: Finish,
    ) -> Result<Option<(Versioned, bool)>, QueueError> {
        let deadline = tokio::time::Instant::now() + how.within;
        let attempts = current.record.attempts;
        // Names this outcome (this finish, not only this attempt: a redriven call counts its
        // attempts from zero again): a publish tried again after its answer was lost is
        // deduplicated by the server rather than stored twice.
        let tag = format!("{owner}.{attempts}.{}", uuid::Uuid::new_v4().simple());
        let copy = if how.dead {
            // The copy first: a dead letter must never exist without its request.
            let ack = within(
                deadline,
                how.within,
                "store the dead-letter copy",
                || async {
                    self.js
                        .send_publish(
                            self.dead_subject(call_id),
                            Publish::build()
                                .payload(message.payload.clone())
                                .message_id(format!("dead:{call_id}:{tag}")),
                        )
                        .await
                        .map_err(unavailable)?
                        .await
                        .map_err(unavailable)
                },
            )
            .await?;
            Some(ack.sequence)
        } else {
            None
        };
        let callback = match &current.record.callback_url {
            // A large body goes to the object store first, which may take longer than one
            // attempt of a small write: each attempt gets a third of the bound.
            Some(url) if !how.carried => Some(
                within_each(
                    deadline,
                    how.within,
                    (how.within / 3).max(ATTEMPT),
                    "queue the callback",
                    || self.publish_callback(&current.record, url, outcome, &tag),
                )
                .await?,
            ),
            _ => None,
        };
        let (head, truncated) = cap(&outcome.body, self.result_cap());
        let result = base64::engine::general_purpose::STANDARD.encode(head);
        let now = unix_ms();
        let state = CallState::ended(outcome, how.dead);
        let mut first = Some(current);
        let settled = within(deadline, how.within, "record the outcome", || {
            self.modify_from(call_id, first.take(), |record| {
                // This very write, landed on an attempt whose answer was lost.
                if record.owner.is_none()
                    && record.attempts == attempts
                    && record.state == state
                    && record.finished_at == Some(now)
                {
                    return Step::Keep(true);
                }
                if !record.held_by(owner) || record.attempts != attempts {
                    return Step::Keep(false);
                }
                record.state = state;
                record.dead = how.dead;
                record.owner = None;
                record.finished_at = Some(now);
                record.status_code = Some(outcome.status);
                record.last_error.clone_from(&outcome.error);
                record.result = Some(result.clone());
                record.result_truncated = truncated;
                // The worker's claim counts from this attempt, not from the first: a write that
                // lands late still leaves it the whole claim to deliver.
                let due = unix_ms().saturating_add(ms(how.claim));
                record.callback_due = None;
                record.callback_seq = None;
                record.callback_object = None;
                match &callback {
                    Some((seq, object)) => {
                        record.callback = CallbackState::Pending;
                        record.callback_due = Some(due);
                        record.callback_seq = Some(*seq);
                        record.callback_object.clone_from(object);
                    }
                    None if how.carried => {
                        record.callback = CallbackState::Pending;
                        record.callback_due = Some(due);
                        record.result_headers.clone_from(&outcome.headers);
                        record.duration = Some(outcome.duration);
                    }
                    None => record.callback = CallbackState::None,
                }
                Step::Write(true)
            })
        })
        .await?;
        match settled {
            Some((true, v)) => Ok(Some((v, callback.is_some()))),
            lost => {
                lease_lost(call_id);
                if let Some((seq, object)) = &callback {
                    self.remove_callback(*seq, object.as_deref()).await;
                }
                // Remove the copy, unless the call's new owner has dead-lettered it meanwhile
                // or is doing so (the stream keeps one copy per call: a later one may have
                // replaced it, or replace it in a moment).
                if let Some(seq) = copy {
                    let _ = match lost {
                        Some((_, now)) => self.purge_left_over_copy(&now.record, seq).await,
                        None => self.purge_dead_copy(call_id, seq).await,
                    };
                }
                Ok(None)
            }
        }
    }

    /// Result bytes a status record keeps: the configured cap, within what one record can carry.
    pub(super) fn result_cap(&self) -> usize {
        let room = self.max_payload().saturating_sub(FRAMING * 4) / 4 * 3;
        self.config.result_cap.min(room)
    }
}

impl JetStreamQueue {
    /// [`Queue::retry_later`]: records the outcome and schedules the next attempt.
    pub(super) async fn retry_call_later(
        &self,
        call_id: &str,
        owner: &str,
        delay: Duration,
        outcome: Outcome,
    ) -> Result<(), QueueError> {
        let Some(Held {
            message,
            current,
            lease,
            ..
        }) = self.take_held(call_id, owner)
        else {
            return Ok(());
        };
        let next = unix_ms().saturating_add(ms(delay));
        let deadline = tokio::time::Instant::now() + lease;
        let mut first = Some(current);
        // Through an election, as finalize: the lease is kept while the write is retried.
        let done = {
            let write = pin!(within(deadline, lease, "schedule the retry", || {
                self.modify_from(call_id, first.take(), |record| {
                    // This very write, landed on an attempt whose answer was lost.
                    if record.owner.is_none()
                        && record.state == CallState::Retrying
                        && record.next_attempt_at == Some(next)
                    {
                        return Step::Keep(true);
                    }
                    if !record.held_by(owner) {
                        return Step::Keep(false);
                    }
                    record.state = CallState::Retrying;
                    record.owner = None;
                    record.next_attempt_at = Some(next);
                    record.status_code = Some(outcome.status);
                    record.last_error.clone_from(&outcome.error);
                    Step::Write(true)
                })
            }));
            let keep = pin!(keep_lease(&message, self.renewal(lease), lease, false));
            match futures_util::future::select(write, keep).await {
                Either::Left((written, _)) => written?.is_some_and(|(ok, _)| ok),
                Either::Right((never, _)) => match never {},
            }
        };
        if done {
            // Should this nak be lost, the message comes back after its lease and is
            // handed back until `next_attempt_at`.
            if let Err(e) = message.double_ack_with(nak(delay)).await {
                tracing::debug!(call_id, error = %e, "cannot delay the retry's message; it is handed back until then");
            }
        }
        Ok(())
    }
}

/// About how many bytes `headers` take in a record.
fn headers_size(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum()
}
