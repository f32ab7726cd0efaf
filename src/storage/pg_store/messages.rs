//! Message queues: one per device, in id order. Ids come from a sequence drawn under the
//! device lock, so within one queue ids grow in commit order (what paging relies on).

use std::collections::HashSet;

use tokio_postgres::Row;

use super::keys::lock_device;
use super::{db_id, device_id, to_u32, to_u64, Cached, PgStore};
use crate::models::{DeviceRef, Message};
use crate::storage::{DeleteOutcome, StoreError};

const COLUMNS: &str =
    "id, sender_address, sender_registration_id, content, recipient_address, timestamp";

/// The stored size of a message, as a page's byte budget counts it: its text fields and a
/// fixed 24 bytes for the numbers.
const SIZE: &str = "octet_length(content) + octet_length(sender_address) \
                    + octet_length(recipient_address) + 24";

/// Messages one sweep statement deletes at most.
const SWEEP_BATCH: i64 = 5000;
/// How long one sweep goes on deleting batches.
const SWEEP_TIME: std::time::Duration = std::time::Duration::from_secs(2);

impl PgStore {
    /// Queues a message for one device unless its queue holds `cap` messages already
    /// (`NoDevice` if it is gone). The message id is assigned here; the message is committed
    /// when this returns.
    pub async fn enqueue(
        &self,
        recipient: DeviceRef,
        message: Message,
        cap: u32,
    ) -> Result<Message, StoreError> {
        let message = &message;
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let queued = queue_one(&tx, recipient, message, cap).await?;
            tx.commit().await?;
            Ok(queued)
        })
        .await
    }

    /// The oldest `limit` queued messages of one device with an id above `after`.
    pub async fn messages(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.messages_page(recipient, after, limit, usize::MAX)
            .await
    }

    /// Like `messages`, but the page also ends before the message that would take its stored
    /// size over `max_bytes` (it always holds at least one message); the database cuts it, so
    /// the rest is never sent.
    pub async fn messages_page(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>, StoreError> {
        self.timed(async {
            let sql = format!(
                "SELECT {COLUMNS} FROM (SELECT {COLUMNS}, \
                   sum({SIZE}) OVER (ORDER BY id) AS bytes, row_number() OVER (ORDER BY id) AS n \
                   FROM messages WHERE user_id = $1 AND device_id = $2 AND id > $3 \
                   ORDER BY id LIMIT $4) AS page \
                 WHERE n = 1 OR bytes <= $5 ORDER BY id"
            );
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .fetch_all(
                    &sql,
                    &[
                        &db_id(recipient.user),
                        &device_id(recipient.device),
                        &db_id(after),
                        &limit,
                        &max_bytes,
                    ],
                )
                .await?;
            rows.iter().map(message).collect()
        })
        .await
    }

    /// Ids of one device's queue after `after` (see `Storage::queued_ids`): the index alone.
    pub async fn queued_ids(
        &self,
        recipient: DeviceRef,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        self.timed(async {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .fetch_all(
                    "SELECT id FROM messages WHERE user_id = $1 AND device_id = $2 AND id > $3 \
                     ORDER BY id LIMIT $4",
                    &[
                        &db_id(recipient.user),
                        &device_id(recipient.device),
                        &db_id(after),
                        &limit,
                    ],
                )
                .await?;
            Ok(rows.iter().map(|r| to_u64(r.get(0))).collect())
        })
        .await
    }

    /// One queued message of one device, if it is still there.
    pub async fn message(
        &self,
        recipient: DeviceRef,
        id: u64,
    ) -> Result<Option<Message>, StoreError> {
        self.timed(async {
            let sql = format!(
                "SELECT {COLUMNS} FROM messages WHERE id = $3 AND user_id = $1 AND device_id = $2"
            );
            let row = self
                .client()
                .await?
                .fetch_opt(
                    &sql,
                    &[
                        &db_id(recipient.user),
                        &device_id(recipient.device),
                        &db_id(id),
                    ],
                )
                .await?;
            row.as_ref().map(message).transpose()
        })
        .await
    }

    /// Deletes the given messages of one device's queue, reporting per id (an id repeated is
    /// deleted once, then not found; another queue's, even another device's of the same
    /// account, is `NotOwner`); committed when it returns. One statement: what it deleted, and
    /// which of the other ids are in another queue.
    pub async fn delete_messages(
        &self,
        recipient: DeviceRef,
        ids: &[u64],
    ) -> Result<Vec<DeleteOutcome>, StoreError> {
        let wanted: Vec<i64> = ids.iter().map(|&id| db_id(id)).collect();
        let rows = self
            .retrying(|| async {
                let client = self.client().await?;
                client
                    .fetch_all(
                        "WITH gone AS (DELETE FROM messages \
                           WHERE user_id = $1 AND device_id = $2 AND id = ANY($3) RETURNING id) \
                         SELECT id, true FROM gone UNION ALL SELECT id, false FROM messages \
                         WHERE id = ANY($3) AND (user_id, device_id) <> ($1, $2)",
                        &[
                            &db_id(recipient.user),
                            &device_id(recipient.device),
                            &wanted,
                        ],
                    )
                    .await
            })
            .await?;
        let mut deleted = HashSet::new();
        let mut foreign = HashSet::new();
        for row in rows {
            let (id, mine): (i64, bool) = (row.get(0), row.get(1));
            if mine {
                deleted.insert(id);
            } else {
                foreign.insert(id);
            }
        }
        Ok(wanted
            .iter()
            .map(|id| {
                if deleted.remove(id) {
                    DeleteOutcome::Deleted
                } else if foreign.contains(id) {
                    DeleteOutcome::NotOwner
                } else {
                    DeleteOutcome::NotFound
                }
            })
            .collect())
    }

    /// Deletes messages queued before `cutoff_ms`; tells how many. In batches of
    /// `SWEEP_BATCH`, each committed on its own, for at most `SWEEP_TIME`: a large backlog is
    /// worked off over several sweeps instead of one statement that runs into the timeout and
    /// is rolled back every time.
    pub async fn sweep_expired(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let started = std::time::Instant::now();
        let mut removed = 0;
        loop {
            let n = self
                .retrying(move || async move {
                    self.client()
                        .await?
                        .exec(
                            "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
                             WHERE timestamp < $1 LIMIT $2)",
                            &[&db_id(cutoff_ms), &SWEEP_BATCH],
                        )
                        .await
                })
                .await?;
            removed += n as usize;
            if n < SWEEP_BATCH as u64 || started.elapsed() > SWEEP_TIME {
                return Ok(removed);
            }
        }
    }

    pub async fn queue_len(&self, recipient: DeviceRef) -> Result<u32, StoreError> {
        self.timed(async {
            let n: i64 = self
                .client()
                .await?
                .fetch_one(
                    "SELECT count(*) FROM messages WHERE user_id = $1 AND device_id = $2",
                    &[&db_id(recipient.user), &device_id(recipient.device)],
                )
                .await?
                .get(0);
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }
}

/// In `tx`: queues `m` for one device unless its queue holds `cap` messages already, under the
/// device's lock (`NoDevice` if it is gone). Returns it with its id.
pub(super) async fn queue_one(
    tx: &impl Cached,
    recipient: DeviceRef,
    m: &Message,
    cap: u32,
) -> Result<Message, StoreError> {
    let (user, device) = (db_id(recipient.user), device_id(recipient.device));
    lock_device(tx, recipient).await?;
    let queued: i64 = tx
        .fetch_one(
            "SELECT count(*) FROM messages WHERE user_id = $1 AND device_id = $2",
            &[&user, &device],
        )
        .await?
        .get(0);
    if queued >= i64::from(cap) {
        return Err(StoreError::QueueFull);
    }
    let row = tx
        .fetch_one(
            "INSERT INTO messages (user_id, device_id, sender_address, \
             sender_registration_id, content, recipient_address, timestamp) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            &[
                &user,
                &device,
                &m.sender_address,
                &i64::from(m.sender_registration_id),
                &m.content,
                &m.recipient_address,
                &db_id(m.timestamp),
            ],
        )
        .await?;
    Ok(Message {
        id: to_u64(row.get(0)),
        ..m.clone()
    })
}

pub(super) fn message(row: &Row) -> Result<Message, StoreError> {
    Ok(Message {
        id: to_u64(row.get(0)),
        sender_address: row.get(1),
        sender_registration_id: to_u32(row.get(2), "registration id")?,
        content: row.get(3),
        recipient_address: row.get(4),
        timestamp: to_u64(row.get(5)),
    })
}
