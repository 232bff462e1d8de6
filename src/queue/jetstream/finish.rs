//! Finishing a call: recording its final outcome and queueing its callback in one step; and
//! scheduling a retry.

use super::*;

impl JetStreamQueue {
    /// Records the final outcome of a call `owner` holds, queues its callback, and acks (or,
    /// for a dead letter, terms) its message.
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
        // Keep the lease while a slow outcome is stored (a large body, a dead-letter copy); a
        // small one takes two round trips, well inside the two thirds of the lease that are
        // left at least.
        if (dead || outcome.body.len() > self.max_payload() / 2)
            && let Err(e) = message.ack_with(self.renewal(lease)).await
        {
            tracing::debug!(call_id, error = %e, "cannot extend the lease before finishing");
        }
        let copy = if dead {
            // The copy first: a dead letter must never exist without its request.
            let ack = self
                .js
                .send_publish(
                    self.dead_subject(call_id),
                    Publish::build().payload(message.payload.clone()),
                )
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)?;
            Some(ack.sequence)
        } else {
            None
        };
        // A small outcome's callback rides on the request message, kept unacked until the
        // callback is delivered: one write records the outcome and the pending callback. A
        // large one, or a dead letter's, gets a callback message of its own first.
        let carried = !dead
            && current.record.callback_url.is_some()
            && outcome.body.len() <= self.result_cap()
            && headers_size(&outcome.headers) <= FRAMING / 2;
        let callback = match &current.record.callback_url {
            Some(url) if !carried => Some(
                self.publish_callback(&current.record, url, &outcome)
                    .await?,
            ),
            _ => None,
        };
        let (head, truncated) = cap(&outcome.body, self.result_cap());
        let now = unix_ms();
        let state = CallState::ended(&outcome, dead);
        let attempts = current.record.attempts;
        let settled = self
            .modify_from(call_id, Some(current), |record| {
                if !record.held_by(owner) || record.attempts != attempts {
                    return Step::Keep(false);
                }
                record.state = state;
                record.dead = dead;
                record.owner = None;
                record.finished_at = Some(now);
                record.status_code = Some(outcome.status);
                record.last_error = outcome.error.clone();
                record.result = Some(base64::engine::general_purpose::STANDARD.encode(head));
                record.result_truncated = truncated;
                record.callback_due = None;
                record.callback_seq = None;
                record.callback_object = None;
                match &callback {
                    Some((seq, object)) => {
                        record.callback = CallbackState::Pending;
                        record.callback_due = Some(now.saturating_add(ms(claim)));
                        record.callback_seq = Some(*seq);
                        record.callback_object = object.clone();
                    }
                    None if carried => {
                        record.callback = CallbackState::Pending;
                        record.callback_due = Some(now.saturating_add(ms(claim)));
                        record.result_headers = outcome.headers.clone();
                        record.duration = Some(outcome.duration);
                    }
                    None => record.callback = CallbackState::None,
                }
                Step::Write(true)
            })
            .await?;
        let settled = match settled {
            Some((true, v)) => v,
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
                return Ok(false);
            }
        };
        let mut message = Some(message);
        if carried || callback.is_some() {
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
            message, current, ..
        }) = self.take_held(call_id, owner)
        else {
            return Ok(());
        };
        let next = unix_ms().saturating_add(ms(delay));
        let done = self
            .modify_from(call_id, Some(current), |record| {
                if !record.held_by(owner) {
                    return Step::Keep(false);
                }
                record.state = CallState::Retrying;
                record.owner = None;
                record.next_attempt_at = Some(next);
                record.status_code = Some(outcome.status);
                record.last_error = outcome.error.clone();
                Step::Write(true)
            })
            .await?
            .is_some_and(|(ok, _)| ok);
        if done {
            // Should this nak be lost, the message comes back after its lease and is
            // handed back until `next_attempt_at`.
            message.double_ack_with(nak(delay)).await.map_err(boxed)?;
        }
        Ok(())
    }
}

/// About how many bytes `headers` take in a record.
fn headers_size(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len() + 8).sum()
}
