//! Dead letters: the copies in the dead-letter stream, listing them, purging and redriving.

use super::*;

impl JetStreamQueue {
    /// The dead-letter subject of a call.
    pub(super) fn dead_subject(&self, call_id: &str) -> String {
        format!("{}.{}", self.names.dlq, record_key(call_id))
    }

    /// Call ids in the dead-letter stream.
    pub(super) async fn dead_letter_ids(&self) -> Result<Vec<String>, QueueError> {
        let prefix = format!("{}.", self.names.dlq);
        let mut subjects = self
            .dlq
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(unavailable)?;
        let mut ids = Vec::new();
        while let Some(item) = subjects.next().await {
            let (subject, _count) = item.map_err(unavailable)?;
            if let Some(id) = subject.strip_prefix(&prefix).and_then(call_id_from_key) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The calls a redrive or purge of `call_id`, or of every dead letter (`None`), looks at.
    pub(super) async fn dead_letter_targets(
        &self,
        call_id: Option<&str>,
    ) -> Result<Vec<String>, QueueError> {
        match call_id {
            Some(id) => Ok(vec![id.to_string()]),
            None => self.dead_letter_ids().await,
        }
    }

    /// The stored copy of a dead-lettered request, and its sequence in the dead-letter stream.
    pub(super) async fn dead_request(
        &self,
        call_id: &str,
    ) -> Result<Option<(QueueRequest, u64)>, QueueError> {
        match self
            .dlq
            .get_last_raw_message_by_subject(&self.dead_subject(call_id))
            .await
        {
            Ok(m) => serde_json::from_slice(&m.payload)
                .map(|request| Some((request, m.sequence)))
                .map_err(|source| QueueError::Corrupt {
                    call_id: call_id.to_string(),
                    source,
                }),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Removes a call's dead-letter copy if it is the one at `seq` or older (a newer one is
    /// a later dead letter of the same call).
    pub(super) async fn purge_dead_copy(&self, call_id: &str, seq: u64) -> Result<(), QueueError> {
        self.dlq
            .purge()
            .filter(self.dead_subject(call_id))
            .sequence(seq.saturating_add(1))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Removes a copy the record says is left over: the call is no longer a dead letter and
    /// not running either (a running call's owner may be dead-lettering it right now, copy
    /// first and record second).
    pub(super) async fn purge_left_over_copy(
        &self,
        record: &Record,
        seq: u64,
    ) -> Result<(), QueueError> {
        if record.dead || record.state == CallState::Running {
            return Ok(());
        }
        self.purge_dead_copy(&record.call_id, seq).await
    }

    /// Queues one dead letter again; whether it was one.
    pub(super) async fn redrive_one(&self, call_id: &str) -> Result<bool, QueueError> {
        let Some((request, copy)) = self.dead_request(call_id).await? else {
            return Ok(false);
        };
        let now = unix_ms();
        let mut old_callback = None;
        let mut redrive = |record: &mut Record| {
            if !record.dead {
                return Step::Keep(None);
            }
            old_callback = record
                .callback_seq
                .take()
                .map(|seq| (seq, record.callback_object.take()));
            record.state = CallState::Queued;
            record.dead = false;
            record.attempts = 0;
            record.retry_since = now;
            record.finished_at = None;
            record.owner = None;
            record.seq = None;
            record.callback = CallbackState::None;
            record.callback_attempts = 0;
            record.callback_error = None;
            record.callback_due = None;
            record.redrives += 1;
            Step::Write(Some(record.redrives))
        };
        let n = match self.modify(call_id, &mut redrive).await? {
            Some((Some(n), _)) => n,
            Some((None, current)) => {
                // Not a dead letter any more (redriven already): the copy is left over.
                self.purge_left_over_copy(&current.record, copy).await?;
                return Ok(false);
            }
            None => {
                // The record expired; the copy is still a dead letter.
                let mut record = Record::queued(&request);
                record.dead = true;
                let _ = redrive(&mut record);
                if self.write(&record, 0).await?.is_none() {
                    // Stored meanwhile by another redrive.
                    return Ok(false);
                }
                record.redrives
            }
        };
        if let Some((seq, object)) = old_callback {
            // The last outcome's callback, if still pending, is superseded.
            self.remove_callback(seq, object.as_deref()).await;
        }
        let payload = serde_json::to_vec(&request).map_err(|source| QueueError::Corrupt {
            call_id: call_id.to_string(),
            source,
        })?;
        if let Err(e) = self
            .publish_request(
                &request.function,
                &format!("{call_id}#r{n}"),
                payload.into(),
                None,
            )
            .await
        {
            // Put it back among the dead letters rather than leave it queued without a message
            // (unless the publish landed after all and a worker has it).
            let _ = self
                .modify(call_id, |record| {
                    if record.state != CallState::Queued
                        || record.attempts != 0
                        || record.redrives != n
                    {
                        return Step::Keep(());
                    }
                    record.state = CallState::Failed;
                    record.dead = true;
                    Step::Write(())
                })
                .await;
            return Err(e);
        }
        self.purge_dead_copy(call_id, copy).await?;
        Ok(true)
    }
}

impl JetStreamQueue {
    /// [`Queue::purge`]: removes one dead letter or all of them.
    pub(super) async fn purge_dead(&self, call_id: Option<&str>) -> Result<u64, QueueError> {
        self.connected()?;
        let ids = self.dead_letter_targets(call_id).await?;
        let mut n = 0;
        for id in ids {
            // The record first: a copy newer than it (the call redriven and dead again
            // since) comes with a newer revision, and the record's removal below fails.
            let found = self.read(&id).await?;
            let copy = self.dead_request(&id).await?.map(|(_, seq)| seq);
            let Some(Versioned { record, revision }) = found else {
                if let Some(seq) = copy {
                    self.purge_dead_copy(&id, seq).await?;
                    n += 1;
                }
                continue;
            };
            if !record.dead {
                continue;
            }
            match self
                .kv
                .purge_expect_revision(record_key(&id), Some(revision))
                .await
            {
                Ok(()) => {}
                Err(e) if e.kind() == kv::PurgeErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unavailable(e)),
            }
            if let Some(seq) = copy {
                self.purge_dead_copy(&id, seq).await?;
            }
            n += 1;
        }
        Ok(n)
    }
}
