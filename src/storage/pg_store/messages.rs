//! Message queues: one per device, in id order. Ids come from a sequence drawn under the
//! device lock, so within one queue ids grow in commit order (what paging relies on).

use std::collections::HashSet;
use std::sync::LazyLock;

use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use super::keys::lock_device;
use super::{db_id, device_id, to_u32, to_u64, Cached, Param, PgStore};
use crate::models::{DeviceRef, Message};
use crate::storage::{DeleteOutcome, StoreError};

const COLUMNS: &str =
    "id, sender_address, sender_registration_id, content, recipient_address, timestamp";

/// One message of one queue (a push).
static ONE: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {COLUMNS} FROM messages WHERE id = $3 AND user_id = $1 AND device_id = $2")
});

/// The first two messages after `$3`: when there are fewer, they are the page (one message is
/// always in a page, whatever its size). About a fifth cheaper for the database than `PAGE`
/// (pgbench, one statement against the other).
const FIRST_TWO: &str = "SELECT id, sender_address, sender_registration_id, content, \
     recipient_address, timestamp FROM messages \
     WHERE user_id = $1 AND device_id = $2 AND id > $3 ORDER BY id LIMIT 2";

/// A page of `messages_page`: `$4` messages at most, cut before the one that would take the
/// stored size over `$5` (at least one). A message's stored size is its text fields and a fixed
/// 24 bytes for the numbers.
const PAGE: &str = "SELECT id, sender_address, sender_registration_id, content, \
     recipient_address, timestamp FROM (SELECT id, sender_address, sender_registration_id, \
     content, recipient_address, timestamp, \
     sum(octet_length(content) + octet_length(sender_address) \
         + octet_length(recipient_address) + 24) OVER (ORDER BY id) AS bytes, \
     row_number() OVER (ORDER BY id) AS n \
     FROM messages WHERE user_id = $1 AND device_id = $2 AND id > $3 \
     ORDER BY id LIMIT $4) AS page \
     WHERE n = 1 OR bytes <= $5 ORDER BY id";

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
            let client = self.client().await?;
            enqueue_once(&client, recipient, message, cap).await
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
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let max_bytes = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        let (user, device, after) = (
            db_id(recipient.user),
            device_id(recipient.device),
            db_id(after),
        );
        // Most queues are empty or nearly so: a plain read of two answers them, and only a
        // longer queue takes the statement that cuts the page by size.
        let first = self
            .read(|db| async move {
                let params: [&Param<'_>; 3] = [&user, &device, &after];
                db.fetch_all(FIRST_TWO, &params).await
            })
            .await?;
        if first.len() < 2 {
            return first.iter().map(message).collect();
        }
        let rows = self
            .read(|db| async move {
                let params: [&Param<'_>; 5] = [&user, &device, &after, &limit, &max_bytes];
                db.fetch_all(PAGE, &params).await
            })
            .await?;
        rows.iter().map(message).collect()
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
        let (user, device, id) = (
            db_id(recipient.user),
            device_id(recipient.device),
            db_id(id),
        );
        let row = self
            .read(|db| async move { db.fetch_opt(&ONE, &[&user, &device, &id]).await })
            .await?;
        row.as_ref().map(message).transpose()
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
        // Reservations left by sends that failed between their two transactions.
        self.retrying(|| async {
            self.client()
                .await?
                .exec(
                    "DELETE FROM queue_reservations WHERE taken_at < now() - interval '1 minute'",
                    &[],
                )
                .await
        })
        .await?;
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

/// Locks the device row until the transaction ends; no row: the device is gone.
const LOCK_DEVICE: &str =
    "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2 FOR NO KEY UPDATE";

/// What queue `($1, $2)` holds for its cap: its messages and the room reserved by sends in
/// flight. A send is done with its reservation well within a minute (statements time out
/// after 5 s): an older one was left by a send that failed between its transactions.
macro_rules! queued {
    () => {
        "((SELECT count(*) FROM messages WHERE user_id = $1 AND device_id = $2) + \
         (SELECT count(*) FROM queue_reservations WHERE user_id = $1 AND device_id = $2 \
         AND taken_at > now() - interval '1 minute'))"
    };
}

/// Reserves room in the queue under key `$3`, with the message's id, unless it holds `$4`.
const RESERVE: &str = concat!(
    "INSERT INTO queue_reservations (key, message_id, user_id, device_id) \
     SELECT $3, nextval('message_ids'), $1, $2 WHERE ",
    queued!(),
    " < $4"
);

/// Swaps reservation `$1` for the message, with the reserved id: its id, or no row.
const SWAP: &str = "WITH r AS (DELETE FROM queue_reservations WHERE key = $1 \
     RETURNING message_id, user_id, device_id) \
     INSERT INTO messages (id, user_id, device_id, sender_address, sender_registration_id, \
     content, recipient_address, timestamp) \
     SELECT message_id, user_id, device_id, $2::text, $3::bigint, $4::text, $5::text, $6::bigint \
     FROM r RETURNING id";

/// One try of `enqueue`, in one round trip: two transactions sent together (tokio-postgres
/// pipelines what is polled together; the server runs them in order).
///
/// 1. Under the device's row lock, the room is counted (the queue's messages and the live
///    reservations) and, if there is some, reserved with the message's id; this commit does
///    not wait for the disk (`synchronous_commit = off`: the reservation needs no durability),
///    so the lock is held for microseconds, not across an fsync that the next send to the
///    device would wait on.
/// 2. One statement deletes the reservation and inserts the message with its id, committed
///    durably before this returns.
///
/// The cap stays exact: a send's room is counted from the moment its reservation commits
/// (under the lock the next sender then takes) until its message replaces it in one commit.
/// A failed statement rolls its transaction back; all are awaited, so the connection goes
/// back to the pool outside a transaction.
async fn enqueue_once(
    client: &deadpool_postgres::Object,
    recipient: DeviceRef,
    m: &Message,
    cap: u32,
) -> Result<Message, StoreError> {
    let (lock, reserve, swap) = tokio::try_join!(
        client.prepare_cached(LOCK_DEVICE),
        client.prepare_cached(RESERVE),
        client.prepare_cached(SWAP)
    )?;
    let (user, device) = (db_id(recipient.user), device_id(recipient.device));
    let key = rand::random::<i64>();
    let (registration_id, timestamp) = (i64::from(m.sender_registration_id), db_id(m.timestamp));
    let cap = i64::from(cap);
    let lock_params: [&Param<'_>; 2] = [&user, &device];
    let reserve_params: [&Param<'_>; 4] = [&user, &device, &key, &cap];
    let swap_params: [&Param<'_>; 6] = [
        &key,
        &m.sender_address,
        &registration_id,
        &m.content,
        &m.recipient_address,
        &timestamp,
    ];
    crate::round_trips::add(1);
    let (begin, locked, reserved, commit, row) = tokio::join!(
        client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off"),
        client.query_opt(&lock, &lock_params),
        client.execute(&reserve, &reserve_params),
        client.batch_execute("COMMIT"),
        client.query_opt(&swap, &swap_params),
    );
    begin?;
    if locked?.is_none() {
        return Err(StoreError::NoDevice);
    }
    let reserved = reserved?;
    commit?;
    if reserved == 0 {
        return Err(StoreError::QueueFull);
    }
    match row {
        Ok(Some(row)) => Ok(Message {
            id: to_u64(row.get(0)),
            ..m.clone()
        }),
        // The reservation went with its device (deleted in between): so did the message.
        Ok(None) => Err(StoreError::NoDevice),
        Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => Err(StoreError::NoDevice),
        Err(e) => Err(e.into()),
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
        .fetch_one(concat!("SELECT ", queued!()), &[&user, &device])
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
