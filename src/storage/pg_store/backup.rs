//! Backup and restore in the sled store's format (`sled_store::backup`), so that a deployment
//! moves between the stores with `backup` on one and `restore` into the other.
//!
//! A backup reads ONE snapshot (a `REPEATABLE READ, READ ONLY` transaction: writers are not
//! held up) and streams each table through a portal, `BATCH` rows at a time, in the order the
//! sled store writes its records. A restore is ONE transaction into an empty database, committed
//! only once every record passed the same checks as a sled restore (`Restoring`); a refused,
//! failed or killed one is rolled back and leaves the database empty.
//!
//! Devices are rows of their own, keyed by the id in their address: a linked device's keys and
//! queue are restored under that id, with nothing in the file that depends on either store.
//! Attachment rows are restored without a lease (no request writes them yet).

use std::io::{BufRead, Write};

use deadpool_postgres::Transaction;
use tokio_postgres::{IsolationLevel, Row};

use super::{
    attachments, db_id, device_id, devices, keys, messages, to_u32, to_u64, users, Cached, PgStore,
};
use crate::crypto::b64;
use crate::models::{Device, DeviceRef, Message, PreKey, SignedPreKey, User};
use crate::requests::KeyKind;
use crate::storage::attachments::{AttachmentId, Upload};
use crate::storage::sled_store::{
    key_out, read_backup, AttachmentRecord, DeviceRecord, MessageRecord, Record, RestoreTarget,
    UserRecord, Writer,
};
use crate::storage::{BackupSummary, ResetGrant, RestoreLimits, StoreError};

/// Rows fetched from a portal at a time: what a backup holds of one table at once.
const BATCH: i32 = 1000;

/// The tables a backup carries; a restore needs them all empty.
const DATA_TABLES: &str =
    "users, devices, prekeys, kyber_prekeys, messages, reset_tokens, invites, attachments";

impl PgStore {
    /// Writes every record to `out`, from one snapshot of the database.
    pub async fn backup(&self, out: &mut (dyn Write + Send)) -> Result<BackupSummary, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        // A large table streams for longer than the sessions' statement timeout.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        let mut w = Writer::start(out)?;
        let sum = BackupSummary {
            users: stream(&tx, &mut w, USERS, user_record).await?,
            devices: stream(&tx, &mut w, &devices_where(""), device_record).await?,
            prekeys: stream(&tx, &mut w, PREKEYS, prekey_record).await?,
            kyber_prekeys: stream(&tx, &mut w, KYBER_PREKEYS, kyber_record).await?,
            messages: stream(&tx, &mut w, MESSAGES, message_record).await?,
            invites: stream(&tx, &mut w, INVITES, invite_record).await?,
            reset_tokens: stream(&tx, &mut w, RESET_TOKENS, reset_token_record).await?,
            attachments: stream(&tx, &mut w, &attachments_sql(), attachment_record).await?,
        };
        w.end()?;
        tx.commit().await?;
        Ok(sum)
    }

    /// Loads a backup into this database, which must hold no records, in one transaction;
    /// new ids (both sequences) continue above the largest restored one.
    pub async fn restore(
        &self,
        input: &mut (dyn BufRead + Send),
        limits: &RestoreLimits,
    ) -> Result<BackupSummary, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // No server writes meanwhile (they wait, then time out), and no statement of a large
        // restore is cut off by the sessions' statement timeout.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = 0; LOCK TABLE {DATA_TABLES} IN EXCLUSIVE MODE"
        ))
        .await?;
        let any = DATA_TABLES
            .split(", ")
            .map(|t| format!("EXISTS (SELECT 1 FROM {t})"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let holds_records: bool = tx.query_one(&format!("SELECT {any}"), &[]).await?.get(0);
        if holds_records {
            return Err(StoreError::Corrupt(
                "restore needs an empty database, and this one holds records".into(),
            ));
        }
        let target = PgTarget { tx: &tx };
        let (sum, max_id) = read_backup(input, limits, target).await?;
        if max_id > 0 {
            for sequence in ["user_ids", "message_ids"] {
                tx.query_one(
                    &format!(
                        "SELECT setval('{sequence}', GREATEST($1, last_value)) FROM {sequence}"
                    ),
                    &[&db_id(max_id)],
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(sum)
    }
}

/// Streams the rows of `sql` as records; answers how many.
async fn stream(
    tx: &Transaction<'_>,
    w: &mut Writer<'_>,
    sql: &str,
    record: fn(&Row) -> Result<Record, StoreError>,
) -> Result<u64, StoreError> {
    let portal = tx.bind(sql, &[]).await?;
    let mut n = 0;
    loop {
        let rows = tx.query_portal(&portal, BATCH).await?;
        if rows.is_empty() {
            return Ok(n);
        }
        for row in &rows {
            w.put(&record(row)?)?;
            n += 1;
        }
    }
}

// Each table in the sled store's order: by user, then device by device (the primary first,
// then linked devices by id), then by key or message id.

const USERS: &str =
    "SELECT id, username, email, password_hash, token_version FROM users ORDER BY id";

/// The devices (`filter`: a `WHERE` clause, or nothing) in the backup's order: the columns
/// `devices::device` reads, then the user id and whether it is the primary.
fn devices_where(filter: &str) -> String {
    format!(
        "SELECT d.address, d.registration_id, d.identity_key, d.signed_prekey_id, \
         d.signed_prekey, d.signed_prekey_signature, k.key_id, k.public_key, k.signature, \
         d.user_id, d.is_primary FROM devices d LEFT JOIN kyber_prekeys k ON k.last_resort \
         AND (k.user_id, k.device_id) = (d.user_id, d.device_id) {filter} \
         ORDER BY d.user_id, d.is_primary DESC, d.device_id"
    )
}

/// Each row then names its device: whether it is the primary, and its id.
const PREKEYS: &str = "SELECT p.user_id, p.key_id, p.public_key, d.is_primary, p.device_id \
     FROM prekeys p JOIN devices d ON (d.user_id, d.device_id) = (p.user_id, p.device_id) \
     ORDER BY p.user_id, d.is_primary DESC, p.device_id, p.key_id";

const KYBER_PREKEYS: &str = "SELECT p.user_id, p.key_id, p.public_key, d.is_primary, \
     p.device_id, p.signature FROM kyber_prekeys p \
     JOIN devices d ON (d.user_id, d.device_id) = (p.user_id, p.device_id) \
     WHERE NOT p.last_resort ORDER BY p.user_id, d.is_primary DESC, p.device_id, p.key_id";

/// The columns `messages::message` reads, then the recipient and its device.
const MESSAGES: &str = "SELECT m.id, m.sender_address, m.sender_registration_id, m.content, \
     m.recipient_address, m.timestamp, m.user_id, d.is_primary, m.device_id FROM messages m \
     JOIN devices d ON (d.user_id, d.device_id) = (m.user_id, m.device_id) \
     ORDER BY m.user_id, d.is_primary DESC, m.device_id, m.id";

const INVITES: &str = "SELECT token_hash, created_at FROM invites ORDER BY token_hash";

/// Grants of deleted accounts are left out, as the sled store leaves them out.
const RESET_TOKENS: &str = "SELECT t.token_hash, t.user_id, t.expires_at, t.token_version \
     FROM reset_tokens t WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = t.user_id) \
     ORDER BY t.token_hash";

fn user_record(row: &Row) -> Result<Record, StoreError> {
    let u = users::user(row)?;
    Ok(Record::User(UserRecord {
        id: u.id,
        username: u.username,
        email: u.email,
        password_hash: u.password_hash,
        token_version: u.token_version,
    }))
}

fn device_record(row: &Row) -> Result<Record, StoreError> {
    let d = devices::device(row)?;
    let linked = !row.get::<_, bool>(10);
    Ok(Record::Device(DeviceRecord::of(
        to_u64(row.get(9)),
        &d,
        linked,
    )))
}

/// How a key or message row names its device (columns `primary` and `primary + 1`): by id if
/// linked, by nothing if the primary.
fn named(row: &Row, primary: usize) -> Result<Option<u32>, StoreError> {
    if row.get::<_, bool>(primary) {
        return Ok(None);
    }
    let id: i32 = row.get(primary + 1);
    to_u32(id.into(), "device id").map(Some)
}

fn prekey_record(row: &Row) -> Result<Record, StoreError> {
    let mut key = key_out(&SignedPreKey {
        key_id: to_u32(row.get(1), "key id")?,
        public_key: row.get(2),
        signature: Vec::new(),
    });
    key.signature = None;
    Ok(Record::PreKey {
        user: to_u64(row.get(0)),
        device: named(row, 3)?,
        key,
    })
}

fn kyber_record(row: &Row) -> Result<Record, StoreError> {
    let key = SignedPreKey {
        key_id: to_u32(row.get(1), "key id")?,
        public_key: row.get(2),
        signature: row.get(5),
    };
    Ok(Record::KyberPreKey {
        user: to_u64(row.get(0)),
        device: named(row, 3)?,
        key: key_out(&key),
    })
}

fn message_record(row: &Row) -> Result<Record, StoreError> {
    let m = messages::message(row)?;
    let device = named(row, 7)?;
    Ok(Record::Message(MessageRecord::of(
        to_u64(row.get(6)),
        device,
        m,
    )))
}

fn invite_record(row: &Row) -> Result<Record, StoreError> {
    Ok(Record::Invite {
        hash: b64::encode(row.get::<_, &[u8]>(0)),
        created: to_u64(row.get(1)),
    })
}

fn reset_token_record(row: &Row) -> Result<Record, StoreError> {
    Ok(Record::ResetToken {
        hash: b64::encode(row.get::<_, &[u8]>(0)),
        user: to_u64(row.get(1)),
        expires: to_u64(row.get(2)),
        version: to_u32(row.get(3), "token version")?,
    })
}

/// By id, as sled orders them (`bytea` compares byte by byte).
fn attachments_sql() -> String {
    format!(
        "SELECT {} FROM attachments ORDER BY id",
        attachments::COLUMNS
    )
}

fn attachment_record(row: &Row) -> Result<Record, StoreError> {
    let upload = attachments::upload(row)?;
    Ok(Record::Attachment(AttachmentRecord::of(&upload)))
}

/// A restore's writes, into its one transaction.
struct PgTarget<'a> {
    tx: &'a Transaction<'a>,
}

impl PgTarget<'_> {
    async fn exists(&self, sql: &str, params: &[&super::Param<'_>]) -> Result<bool, StoreError> {
        Ok(self.tx.fetch_opt(sql, params).await?.is_some())
    }
}

impl RestoreTarget for PgTarget<'_> {
    async fn user(&mut self, id: u64) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {} FROM users WHERE id = $1", users::USER_COLUMNS);
        let row = self.tx.fetch_opt(&sql, &[&db_id(id)]).await?;
        row.as_ref().map(users::user).transpose()
    }

    async fn username_taken(&mut self, lowercased: &str) -> Result<bool, StoreError> {
        self.exists(
            "SELECT 1 FROM users WHERE lower(username) = lower($1)",
            &[&lowercased],
        )
        .await
    }

    async fn email_taken(&mut self, lowercased: &str) -> Result<bool, StoreError> {
        self.exists(
            "SELECT 1 FROM users WHERE lower(email) = lower($1) AND email <> ''",
            &[&lowercased],
        )
        .await
    }

    async fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        self.tx
            .exec(
                "INSERT INTO users (id, username, email, password_hash, token_version) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &db_id(u.id),
                    &u.username,
                    &u.email,
                    &u.password_hash,
                    &i64::from(u.token_version),
                ],
            )
            .await
            .map_err(|e| match e {
                // The unique indexes lower with the database's locale: a non-ASCII email that
                // Rust lowers differently is still refused, as a bad record.
                StoreError::UsernameTaken | StoreError::EmailTaken => StoreError::Corrupt(format!(
                    "user {}: username or email is an earlier user's (unique \
                     case-insensitively)",
                    u.id
                )),
                other => other,
            })?;
        Ok(())
    }

    async fn devices(&mut self, user: u64) -> Result<Vec<Device>, StoreError> {
        let sql = devices_where("WHERE d.user_id = $1");
        let rows = self.tx.fetch_all(&sql, &[&db_id(user)]).await?;
        rows.iter().map(devices::device).collect()
    }

    async fn put_device(
        &mut self,
        user: u64,
        d: &Device,
        linked: Option<u64>,
    ) -> Result<(), StoreError> {
        devices::insert(self.tx, d.of(user), d, linked.is_none()).await
    }

    async fn has_prekey(
        &mut self,
        at: DeviceRef,
        kind: KeyKind,
        id: u32,
    ) -> Result<bool, StoreError> {
        let sql = match kind {
            KeyKind::Ec => {
                "SELECT 1 FROM prekeys WHERE user_id = $1 AND device_id = $2 AND key_id = $3"
            }
            KeyKind::Kyber => {
                "SELECT 1 FROM kyber_prekeys WHERE user_id = $1 AND device_id = $2 \
                 AND key_id = $3 AND NOT last_resort"
            }
        };
        let params: [&super::Param<'_>; 3] =
            [&db_id(at.user), &device_id(at.device), &i64::from(id)];
        self.exists(sql, &params).await
    }

    async fn put_prekey(
        &mut self,
        at: DeviceRef,
        kind: KeyKind,
        key: &SignedPreKey,
    ) -> Result<(), StoreError> {
        match kind {
            KeyKind::Ec => {
                let key = PreKey {
                    key_id: key.key_id,
                    public_key: key.public_key.clone(),
                };
                keys::upsert_prekeys_of(self.tx, at, &[key]).await
            }
            KeyKind::Kyber => {
                keys::upsert_kyber_of(self.tx, at, std::slice::from_ref(key), false).await
            }
        }
    }

    async fn has_message(&mut self, id: u64) -> Result<bool, StoreError> {
        self.exists("SELECT 1 FROM messages WHERE id = $1", &[&db_id(id)])
            .await
    }

    async fn put_message(&mut self, to: DeviceRef, m: &Message) -> Result<(), StoreError> {
        self.tx
            .exec(
                "INSERT INTO messages (id, user_id, device_id, sender_address, \
                 sender_registration_id, content, recipient_address, timestamp) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &db_id(m.id),
                    &db_id(to.user),
                    &device_id(to.device),
                    &m.sender_address,
                    &i64::from(m.sender_registration_id),
                    &m.content,
                    &m.recipient_address,
                    &db_id(m.timestamp),
                ],
            )
            .await?;
        Ok(())
    }

    async fn has_invite(&mut self, hash: &[u8]) -> Result<bool, StoreError> {
        self.exists("SELECT 1 FROM invites WHERE token_hash = $1", &[&hash])
            .await
    }

    async fn put_invite(&mut self, hash: &[u8], created: u64) -> Result<(), StoreError> {
        self.tx
            .exec(
                "INSERT INTO invites (token_hash, created_at) VALUES ($1, $2)",
                &[&hash, &db_id(created)],
            )
            .await?;
        Ok(())
    }

    async fn has_reset_token(&mut self, hash: &[u8]) -> Result<bool, StoreError> {
        self.exists("SELECT 1 FROM reset_tokens WHERE token_hash = $1", &[&hash])
            .await
    }

    async fn put_reset_token(&mut self, hash: &[u8], grant: &ResetGrant) -> Result<(), StoreError> {
        self.tx
            .exec(
                "INSERT INTO reset_tokens (token_hash, user_id, expires_at, token_version) \
                 VALUES ($1, $2, $3, $4)",
                &[
                    &hash,
                    &db_id(grant.user_id),
                    &db_id(grant.expires_at),
                    &i64::from(grant.token_version),
                ],
            )
            .await?;
        Ok(())
    }

    async fn has_upload(&mut self, id: &AttachmentId) -> Result<bool, StoreError> {
        self.exists("SELECT 1 FROM attachments WHERE id = $1", &[&id.as_slice()])
            .await
    }

    async fn put_upload(&mut self, u: &Upload) -> Result<(), StoreError> {
        self.tx
            .exec(
                r#"INSERT INTO attachments (id, owner, length, "offset", created_ms, expires_ms,
                 completed_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
                &[
                    &u.id.as_slice(),
                    &db_id(u.owner),
                    &db_id(u.length),
                    &db_id(u.offset),
                    &db_id(u.created_ms),
                    &db_id(u.expires_ms),
                    &u.completed_ms.map(db_id),
                ],
            )
            .await?;
        Ok(())
    }
}
