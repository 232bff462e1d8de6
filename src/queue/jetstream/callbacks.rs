//! Pending callbacks: their messages, stored bodies too large for one, claiming one to deliver,
//! and recording how its delivery went.

use super::*;

/// Why a stored callback body could not be read.
pub(super) enum BodyError {
    /// It is not there (expired or removed).
    Gone,
    /// The server failed.
    Queue(QueueError),
}

impl JetStreamQueue {
    /// Publishes the callback message of a finished call; its sequence and the object holding
    /// its body, if the body did not fit.
    pub(super) async fn publish_callback(
        &self,
        record: &Record,
        url: &str,
        outcome: &Outcome,
    ) -> Result<(u64, Option<String>), QueueError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut message = CallbackMessage {
            call_id: record.call_id.clone(),
            function: record.function.clone(),
            url: url.to_string(),
            attempts: record.attempts,
            status: outcome.status,
            headers: outcome.headers.clone(),
            body: Some(b64.encode(&outcome.body)),
            body_object: None,
            duration: outcome.duration,
            error: outcome.error.clone(),
        };
        let mut payload = serde_json::to_vec(&message).map_err(|source| QueueError::Corrupt {
            call_id: record.call_id.clone(),
            source,
        })?;
        if payload.len() + FRAMING > self.max_payload() {
            let name = format!("{}#{}", record.call_id, uuid::Uuid::new_v4());
            let mut body: &[u8] = &outcome.body;
            self.results
                .put(name.as_str(), &mut body)
                .await
                .map_err(unavailable)?;
            message.body = None;
            message.body_object = Some(name);
            payload = serde_json::to_vec(&message).map_err(|source| QueueError::Corrupt {
                call_id: record.call_id.clone(),
                source,
            })?;
        }
        let ack = self
            .js
            .send_publish(
                format!("{}.{}", self.names.callbacks, record_key(&record.call_id)),
                Publish::build().payload(payload.into()),
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok((ack.sequence, message.body_object))
    }

    /// Removes a callback message and its stored body (best effort: a leftover is dropped by
    /// whichever dispatcher sees it).
    pub(super) async fn remove_callback(&self, seq: u64, object: Option<&str>) {
        if let Err(e) = self.callbacks.delete_message(seq).await {
            tracing::debug!(seq, error = %e, "callback message already gone");
        }
        if let Some(name) = object
            && let Err(e) = self.results.delete(name).await
        {
            tracing::debug!(object = name, error = %e, "stored callback body already gone");
        }
    }

    /// Decides about one fetched callback message: a job to deliver now, or nothing.
    pub(super) async fn claim_callback(
        &self,
        message: Message,
        claim: Duration,
    ) -> Result<Option<CallbackJob>, QueueError> {
        let seq = message.info().map_err(boxed)?.stream_sequence;
        let Ok(cb) = serde_json::from_slice::<CallbackMessage>(&message.payload) else {
            tracing::error!(subject = %message.subject, "unreadable callback message; dropped");
            message.ack_with(AckKind::Term).await.map_err(boxed)?;
            return Ok(None);
        };
        let now = unix_ms();
        let record = self.read(&cb.call_id).await?.map(|v| v.record);
        let decision = match &record {
            Some(r) if r.callback == CallbackState::Pending && r.callback_seq == Some(seq) => {
                match r.callback_due {
                    Some(due) if due > now => Decision::Later(Duration::from_millis(due - now)),
                    _ => Decision::Take,
                }
            }
            // Its outcome is not recorded yet (the worker is between the two steps).
            Some(r)
                if r.callback == CallbackState::None
                    && r.state == CallState::Running
                    && r.attempts == cb.attempts =>
            {
                Decision::Later(claim)
            }
            // Delivered, given up, superseded, or the call is gone.
            _ => Decision::Drop,
        };
        match decision {
            Decision::Drop => {
                message.ack().await.map_err(boxed)?;
                if let Some(name) = &cb.body_object
                    && record.is_none_or(|r| r.callback_object.as_ref() != Some(name))
                {
                    let _ = self.results.delete(name).await;
                }
                return Ok(None);
            }
            Decision::Later(d) => {
                message.ack_with(nak(d)).await.map_err(boxed)?;
                return Ok(None);
            }
            Decision::Take => {}
        }
        let body = match (&cb.body, &cb.body_object) {
            (Some(b), _) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, Some(name)) => match self.read_body(name).await {
                Ok(body) => body,
                Err(BodyError::Gone) => {
                    tracing::error!(call_id = %cb.call_id, object = %name, "the callback's stored body is gone; giving up on it");
                    message.ack().await.map_err(boxed)?;
                    self.callback_result(
                        &cb.call_id,
                        false,
                        None,
                        Some("the stored callback body is gone"),
                    )
                    .await?;
                    return Ok(None);
                }
                Err(BodyError::Queue(e)) => return Err(e),
            },
            (None, None) => Vec::new(),
        };
        message.double_ack_with(nak(claim)).await.map_err(boxed)?;
        let delivery_attempts = record.map_or(0, |r| r.callback_attempts);
        self.claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(cb.call_id.clone(), message);
        Ok(Some(CallbackJob {
            call_id: cb.call_id,
            function: cb.function,
            url: cb.url,
            outcome: Outcome {
                status: cb.status,
                headers: cb.headers,
                body,
                duration: cb.duration,
                error: cb.error,
            },
            attempts: cb.attempts,
            delivery_attempts,
        }))
    }

    pub(super) async fn read_body(&self, name: &str) -> Result<Vec<u8>, BodyError> {
        let mut object = match self.results.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Err(BodyError::Gone);
            }
            Err(e) => return Err(BodyError::Queue(unavailable(e))),
        };
        let mut body = Vec::new();
        object
            .read_to_end(&mut body)
            .await
            .map_err(|e| BodyError::Queue(unavailable(e)))?;
        Ok(body)
    }
}

impl JetStreamQueue {
    /// [`Queue::callback_result`]: records a callback's delivery, or schedules its next try.
    pub(super) async fn record_callback_result(
        &self,
        call_id: &str,
        delivered: bool,
        retry_in: Option<Duration>,
        error: Option<&str>,
    ) -> Result<(), QueueError> {
        let claimed = self
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(call_id);
        let settled = self
            .settled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(call_id);
        let now = unix_ms();
        let (state, retry_in) = CallbackState::after_attempt(delivered, retry_in);
        let due = retry_in.map(|d| now.saturating_add(ms(d)));
        // The callback this process delivered: a record whose pending callback is another
        // one (the call was redriven and finished again meanwhile) is not touched.
        let delivered_seq = claimed
            .as_ref()
            .and_then(|m| m.info().ok().map(|i| i.stream_sequence))
            .or_else(|| settled.as_ref().and_then(|v| v.record.callback_seq));
        let changed = self
            .modify_from(call_id, settled, |record| {
                if record.callback != CallbackState::Pending
                    || delivered_seq.is_some_and(|s| record.callback_seq != Some(s))
                {
                    return Step::Keep(None);
                }
                record.callback = state;
                record.callback_attempts += 1;
                record.callback_error = error.map(str::to_string);
                record.callback_due = due;
                Step::Write(
                    record
                        .callback_seq
                        .map(|seq| (seq, record.callback_object.clone())),
                )
            })
            .await?;
        let Some((Some((seq, object)), _)) = changed else {
            return Ok(());
        };
        match (delivered, retry_in) {
            (false, Some(d)) => {
                // A claimed message comes back when the retry is due; one never fetched
                // (the first, inline attempt failed) is handed back until then by
                // whichever dispatcher fetches it.
                if let Some(message) = claimed {
                    message.double_ack_with(nak(d)).await.map_err(boxed)?;
                }
            }
            // Done with, delivered or not: remove the message (held here, elsewhere, or
            // never fetched) and its stored body.
            _ => self.remove_callback(seq, object.as_deref()).await,
        }
        Ok(())
    }
}
