//! Idempotency records (see `storage::idempotency`): a row per (sending device, route, key),
//! inserted in the send's own transaction. Its primary key is what keeps a send from being
//! queued twice across instances: the second transaction to insert under a key waits for the
//! first, finds its row, rolls back and answers what the first stored. The rows go with the
//! sending device (`ON DELETE CASCADE`).

use super::fanout::queue_all;
use super::messages::queue_one;
use super::{db_id, device_id, to_u64, Cached, PgStore};
use crate::models::{DeviceRef, Message, Outgoing};
use crate::storage::idempotency::{Remember, Remembered, SendKey, Sent, SWEEP_LIMIT};
use crate::storage::StoreError;

const KEY: &str = "user_id = $1 AND device_id = $2 AND route = $3 AND key = $4";

impl PgStore {
    pub async fn remembered(&self, key: &SendKey) -> Result<Option<Remembered>, StoreError> {
        self.timed(async { stored(&self.client().await?, key).await })
            .await
    }

    /// `enqueue` with the send's record in the same transaction (see `Storage::enqueue_once`).
    pub async fn enqueue_once(
        &self,
        recipient: DeviceRef,
        message: Message,
        cap: u32,
        remember: &Remember<'_>,
    ) -> Result<Sent<Message>, StoreError> {
        let message = &message;
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            if let Some(found) = stored(&tx, remember.key).await? {
                return Ok(Sent::Answered(found));
            }
            let queued = queue_one(&tx, recipient, message, cap).await?;
            let record = remember.record(std::slice::from_ref(&queued));
            if let Some(found) = insert(&tx, remember.key, &record).await? {
                // Dropping `tx` rolls the messages back.
                return Ok(Sent::Answered(found));
            }
            super::commit(tx).await?;
            Ok(Sent::Queued(queued, record))
        })
        .await
    }

    /// `enqueue_all` with the send's record in the same transaction.
    pub async fn enqueue_all_once(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
        remember: &Remember<'_>,
    ) -> Result<Sent<Vec<Message>>, StoreError> {
        let outgoing = &outgoing;
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            if let Some(found) = stored(&tx, remember.key).await? {
                return Ok(Sent::Answered(found));
            }
            let queued = queue_all(&tx, recipient, skip, outgoing, cap).await?;
            let record = remember.record(&queued);
            if let Some(found) = insert(&tx, remember.key, &record).await? {
                return Ok(Sent::Answered(found));
            }
            super::commit(tx).await?;
            Ok(Sent::Queued(queued, record))
        })
        .await
    }

    /// Removes up to `SWEEP_LIMIT` records made before `cutoff_ms`, in one statement.
    pub async fn sweep_idempotency(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let limit = i64::try_from(SWEEP_LIMIT).unwrap_or(i64::MAX);
        let n = self
            .retrying(move || async move {
                self.client()
                    .await?
                    .exec(
                        "DELETE FROM idempotency WHERE (user_id, device_id, route, key) IN \
                         (SELECT user_id, device_id, route, key FROM idempotency \
                          WHERE created_at < $1 LIMIT $2)",
                        &[&db_id(cutoff_ms), &limit],
                    )
                    .await
            })
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// The record under `key`, as the statement's snapshot sees it.
async fn stored(db: &impl Cached, key: &SendKey) -> Result<Option<Remembered>, StoreError> {
    let sql = format!("SELECT created_at, body_hash, status, answer FROM idempotency WHERE {KEY}");
    let row = db
        .fetch_opt(
            &sql,
            &[
                &db_id(key.sender.user),
                &device_id(key.sender.device),
                &i16::from(key.route),
                &key.key,
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let hash: Vec<u8> = row.get(1);
    Ok(Some(Remembered {
        created_ms: to_u64(row.get(0)),
        body_hash: hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("an idempotency body hash is not 32 bytes".into()))?,
        status: u16::try_from(row.get::<_, i16>(2)).unwrap_or_default(),
        body: row.get(3),
    }))
}

/// Inserts `record` under `key`, unless a row is there (one another transaction committed
/// meanwhile: the insert waited for it); that row is returned then.
async fn insert(
    tx: &impl Cached,
    key: &SendKey,
    record: &Remembered,
) -> Result<Option<Remembered>, StoreError> {
    let status = i16::try_from(record.status).unwrap_or(i16::MAX);
    let inserted = tx
        .exec(
            "INSERT INTO idempotency (user_id, device_id, route, key, created_at, body_hash, \
             status, answer) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            &[
                &db_id(key.sender.user),
                &device_id(key.sender.device),
                &i16::from(key.route),
                &key.key,
                &db_id(record.created_ms),
                &record.body_hash.as_slice(),
                &status,
                &record.body,
            ],
        )
        .await?;
    if inserted == 1 {
        return Ok(None);
    }
    // A new statement, a new snapshot: it sees the row that stopped the insert.
    match stored(tx, key).await? {
        Some(found) => Ok(Some(found)),
        // Gone again meanwhile (its device deleted): nothing to answer; the client retries.
        None => Err(StoreError::Unavailable(
            "an idempotency record vanished during a send".into(),
        )),
    }
}
