//! A send to every device of an account: one message per device, all or none, checked against
//! the devices the account has at that moment.

use std::collections::BTreeMap;

use super::devices::lock_devices;
use super::{db_id, device_id, to_u64, Cached, PgStore};
use crate::models::{Device, Message, Outgoing};
use crate::storage::{check_devices, StoreError};

impl PgStore {
    /// Queues one message per device of account `recipient`, all or none, in one transaction
    /// holding its device rows (locked in id order, each the lock `enqueue` takes): `NoDevice`
    /// if it has none, then `check_devices` against them (without `skip`; `DevicesChanged`),
    /// then every queue's `cap` (`QueueFull`). Ids are drawn from the sequence under those
    /// locks, in the order given; each message gets its device's address as recipient. Returns
    /// them in the order given.
    pub async fn enqueue_all(
        &self,
        recipient: u64,
        skip: Option<u32>,
        outgoing: Vec<Outgoing>,
        cap: u32,
    ) -> Result<Vec<Message>, StoreError> {
        let outgoing = &outgoing;
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let stored = queue_all(&tx, recipient, skip, outgoing, cap).await?;
            super::commit(tx).await?;
            Ok(stored)
        })
        .await
    }
}

/// In `tx`: the checks and writes of `enqueue_all`, holding the account's device rows.
pub(super) async fn queue_all(
    tx: &impl Cached,
    recipient: u64,
    skip: Option<u32>,
    outgoing: &[Outgoing],
    cap: u32,
) -> Result<Vec<Message>, StoreError> {
    let user = db_id(recipient);
    let devices: Vec<Device> = lock_devices(tx, user)
        .await?
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    if devices.is_empty() {
        return Err(StoreError::NoDevice);
    }
    check_devices(&devices, skip, outgoing).map_err(StoreError::DevicesChanged)?;
    if outgoing.is_empty() {
        return Ok(Vec::new());
    }
    check_caps(tx, user, outgoing, cap).await?;
    let ids = draw_ids(tx, outgoing.len()).await?;
    let stored: Vec<Message> = outgoing
        .iter()
        .zip(ids)
        .map(|(o, id)| Message {
            id,
            recipient_address: devices.iter().find(|d| d.id() == o.device).map_or_else(
                || o.message.recipient_address.clone(),
                |d| d.address.clone(),
            ),
            ..o.message.clone()
        })
        .collect();
    insert_all(tx, user, outgoing, &stored).await?;
    Ok(stored)
}

/// Under the device locks: `QueueFull` if any queue would hold more than `cap` messages with
/// the ones `outgoing` adds to it.
async fn check_caps(
    tx: &impl Cached,
    user: i64,
    outgoing: &[Outgoing],
    cap: u32,
) -> Result<(), StoreError> {
    // Per device: the messages it gets, and those it has.
    let mut queues: BTreeMap<u32, (i64, i64)> = BTreeMap::new();
    for o in outgoing {
        queues.entry(o.device).or_default().0 += 1;
    }
    let ids: Vec<i32> = queues.keys().map(|&d| device_id(d)).collect();
    let rows = tx
        .fetch_all(
            "SELECT device_id, count(*) FROM messages \
             WHERE user_id = $1 AND device_id = ANY($2) GROUP BY device_id",
            &[&user, &ids],
        )
        .await?;
    for row in &rows {
        let device = u32::try_from(row.get::<_, i32>(0)).unwrap_or_default();
        if let Some(queue) = queues.get_mut(&device) {
            queue.1 = row.get(1);
        }
    }
    if queues
        .values()
        .any(|&(new, has)| has + new > i64::from(cap))
    {
        return Err(StoreError::QueueFull);
    }
    Ok(())
}

/// `n` message ids from the sequence, ascending.
async fn draw_ids(tx: &impl Cached, n: usize) -> Result<Vec<u64>, StoreError> {
    let rows = tx
        .fetch_all(
            "SELECT nextval('message_ids') FROM generate_series(1, $1::bigint)",
            &[&i64::try_from(n).unwrap_or(i64::MAX)],
        )
        .await?;
    let mut ids: Vec<u64> = rows.iter().map(|row| to_u64(row.get(0))).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Writes `stored[i]` into the queue of device `outgoing[i].device`, in one statement.
async fn insert_all(
    tx: &impl Cached,
    user: i64,
    outgoing: &[Outgoing],
    stored: &[Message],
) -> Result<(), StoreError> {
    let ids: Vec<i64> = stored.iter().map(|m| db_id(m.id)).collect();
    let devices: Vec<i32> = outgoing.iter().map(|o| device_id(o.device)).collect();
    let senders: Vec<&str> = stored.iter().map(|m| m.sender_address.as_str()).collect();
    let registrations: Vec<i64> = stored
        .iter()
        .map(|m| i64::from(m.sender_registration_id))
        .collect();
    let contents: Vec<&str> = stored.iter().map(|m| m.content.as_str()).collect();
    let recipients: Vec<&str> = stored
        .iter()
        .map(|m| m.recipient_address.as_str())
        .collect();
    let timestamps: Vec<i64> = stored.iter().map(|m| db_id(m.timestamp)).collect();
    tx.exec(
        "INSERT INTO messages (id, user_id, device_id, sender_address, sender_registration_id, \
         content, recipient_address, timestamp) \
         SELECT m.id, $1, m.device, m.sender, m.registration, m.content, m.recipient, \
         m.timestamp FROM unnest($2::bigint[], $3::integer[], $4::text[], $5::bigint[], \
         $6::text[], $7::text[], $8::bigint[]) \
         AS m(id, device, sender, registration, content, recipient, timestamp)",
        &[
            &user,
            &ids,
            &devices,
            &senders,
            &registrations,
            &contents,
            &recipients,
            &timestamps,
        ],
    )
    .await?;
    Ok(())
}
