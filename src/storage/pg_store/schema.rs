//! The schema, as numbered migrations. `schema_version` holds the highest one applied; an
//! instance applies the missing ones at start (under an advisory lock, so instances starting
//! together apply each once) and refuses a database newer than it knows.
//!
//! Several devices per account: every device-owned row is keyed by (user_id, device_id), the
//! id in the device's address. Migration 2 marks the primary (`is_primary`, one per account)
//! and lets a device's id change with its rows following it (`ON UPDATE CASCADE`).

use super::PgStore;
use crate::storage::StoreError;

/// Unique index names, mapped to the errors the verbs return.
pub(super) const USERNAME_KEY: &str = "users_username_key";
pub(super) const EMAIL_KEY: &str = "users_email_key";
pub(super) const DEVICE_KEY: &str = "devices_pkey";
/// At most one primary device per account.
pub(super) const PRIMARY_KEY: &str = "devices_one_primary";
/// A device for a user that is gone.
pub(super) const DEVICE_USER: &str = "devices_user_id_fkey";

/// An idempotency record for a sending device that is gone.
pub(super) const IDEMPOTENCY_SENDER: &str = "idempotency_sender_fkey";
/// An attachment record for a user that is gone.
pub(super) const ATTACHMENT_OWNER: &str = "attachments_owner_fkey";

/// Any number: the advisory lock that serialises migrations between instances.
const MIGRATION_LOCK: i64 = 0x5167_6e61_6c5f_6462;

/// Migration n (1-based) is `MIGRATIONS[n - 1]`; never edit one that has shipped, add the next.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE SEQUENCE user_ids;
CREATE SEQUENCE message_ids;

CREATE TABLE users (
    id bigint PRIMARY KEY DEFAULT nextval('user_ids'),
    username text NOT NULL,
    -- '' when none was given
    email text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    token_version bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE email <> '';

CREATE TABLE devices (
    user_id bigint NOT NULL,
    device_id integer NOT NULL,
    address text NOT NULL,
    registration_id bigint NOT NULL,
    identity_key bytea NOT NULL,
    signed_prekey_id bigint NOT NULL,
    signed_prekey bytea NOT NULL,
    signed_prekey_signature bytea NOT NULL,
    CONSTRAINT devices_pkey PRIMARY KEY (user_id, device_id),
    CONSTRAINT devices_user_id_fkey FOREIGN KEY (user_id) REFERENCES users ON DELETE CASCADE
);

CREATE TABLE prekeys (
    user_id bigint NOT NULL,
    device_id integer NOT NULL,
    key_id bigint NOT NULL,
    public_key bytea NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);

-- One-time Kyber prekeys, and the device's one last-resort Kyber prekey (never popped).
CREATE TABLE kyber_prekeys (
    user_id bigint NOT NULL,
    device_id integer NOT NULL,
    last_resort boolean NOT NULL,
    key_id bigint NOT NULL,
    public_key bytea NOT NULL,
    signature bytea NOT NULL,
    PRIMARY KEY (user_id, device_id, last_resort, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE UNIQUE INDEX kyber_prekeys_one_last_resort ON kyber_prekeys (user_id, device_id)
    WHERE last_resort;

-- A queue per device; the sender is not a reference (their messages outlive their account).
CREATE TABLE messages (
    id bigint PRIMARY KEY DEFAULT nextval('message_ids'),
    user_id bigint NOT NULL,
    device_id integer NOT NULL,
    sender_address text NOT NULL,
    sender_registration_id bigint NOT NULL,
    content text NOT NULL,
    recipient_address text NOT NULL,
    -- ms since the epoch, as the sender's server stamped it
    timestamp bigint NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE
);
CREATE INDEX messages_queue ON messages (user_id, device_id, id);
CREATE INDEX messages_timestamp ON messages (timestamp);

-- Keyed by the hash of the token; the user may be gone (the reset then finds no one).
CREATE TABLE reset_tokens (
    token_hash bytea PRIMARY KEY,
    user_id bigint NOT NULL,
    expires_at bigint NOT NULL,
    token_version bigint NOT NULL
);
CREATE INDEX reset_tokens_expiry ON reset_tokens (expires_at);

CREATE TABLE invites (
    token_hash bytea PRIMARY KEY,
    created_at bigint NOT NULL
);

-- Deployment-wide values: 'jwt_secret'.
CREATE TABLE settings (
    key text PRIMARY KEY,
    value bytea NOT NULL
);
"#,
    r#"
-- Every device so far is its account's primary. This build names the column in each insert;
-- the default serves instances of the version before, still running during a rolling upgrade,
-- which create primaries only (a second one per account is refused by the index).
ALTER TABLE devices ADD COLUMN is_primary boolean NOT NULL DEFAULT true;
CREATE UNIQUE INDEX devices_one_primary ON devices (user_id) WHERE is_primary;

-- A device's id changes with it: its keys and queue follow.
ALTER TABLE prekeys DROP CONSTRAINT prekeys_user_id_device_id_fkey,
    ADD CONSTRAINT prekeys_user_id_device_id_fkey FOREIGN KEY (user_id, device_id)
    REFERENCES devices ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE kyber_prekeys DROP CONSTRAINT kyber_prekeys_user_id_device_id_fkey,
    ADD CONSTRAINT kyber_prekeys_user_id_device_id_fkey FOREIGN KEY (user_id, device_id)
    REFERENCES devices ON DELETE CASCADE ON UPDATE CASCADE;
ALTER TABLE messages DROP CONSTRAINT messages_user_id_device_id_fkey,
    ADD CONSTRAINT messages_user_id_device_id_fkey FOREIGN KEY (user_id, device_id)
    REFERENCES devices ON DELETE CASCADE ON UPDATE CASCADE;

-- The primary's id is the one in its address (`<username>.<id>`), as for every device now.
UPDATE devices SET device_id = substring(address FROM '\.([0-9]{1,9})$')::integer
    WHERE address ~ '\.[0-9]{1,9}$'
    AND device_id <> substring(address FROM '\.([0-9]{1,9})$')::integer;
"#,
    r#"
-- What tells a device from an earlier one with the same id (tokens bound to a device and open
-- sockets compare it): new at every insert, also by instances of the version before.
CREATE SEQUENCE device_incarnations;
ALTER TABLE devices ADD COLUMN incarnation bigint NOT NULL DEFAULT nextval('device_incarnations');
"#,
    r#"
-- The answers of sends made with an Idempotency-Key (route 1: POST /messages, 2: POST
-- /v2/messages), inserted in the send's transaction: the primary key lets one send per key
-- commit, whichever instance runs it. They go with the sending device.
CREATE TABLE idempotency (
    user_id bigint NOT NULL,
    device_id integer NOT NULL,
    route smallint NOT NULL,
    key text NOT NULL,
    -- ms since the epoch; the sweep removes rows a day old
    created_at bigint NOT NULL,
    -- sha256 of the request body
    body_hash bytea NOT NULL,
    status smallint NOT NULL,
    answer bytea NOT NULL,
    PRIMARY KEY (user_id, device_id, route, key),
    CONSTRAINT idempotency_sender_fkey FOREIGN KEY (user_id, device_id) REFERENCES devices
        ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX idempotency_created ON idempotency (created_at);
"#,
    r#"
-- Attachment records (the blobs live in the blob store). Times are ms since the epoch. A
-- request writing an upload holds its lease (`lease_holder` until `lease_until_ms`), taken and
-- moved by compare-and-swap updates of the row. They go with their owner's account.
CREATE TABLE attachments (
    id bytea PRIMARY KEY CHECK (octet_length(id) = 16),
    owner bigint NOT NULL,
    length bigint NOT NULL,
    "offset" bigint NOT NULL CHECK ("offset" BETWEEN 0 AND length),
    created_ms bigint NOT NULL,
    expires_ms bigint NOT NULL,
    -- NULL while unfinished
    completed_ms bigint,
    lease_holder bigint,
    lease_until_ms bigint,
    CONSTRAINT attachments_owner_fkey FOREIGN KEY (owner) REFERENCES users ON DELETE CASCADE
);
CREATE INDEX attachments_owner ON attachments (owner);
-- The sweep's order: by expiry, then id.
CREATE INDEX attachments_expiry ON attachments (expires_ms, id);
"#,
    r#"
-- Room a send has taken in a device's queue, numbered, between its two transactions (see
-- messages.rs): the first reserves under the device lock and commits without waiting for the
-- disk; the second swaps the reservation for the message, durably. Unlogged: a crash ends every
-- send in flight, and their reservations with them. One left by a send that failed between
-- the two counts for a minute at most (`taken_at`), and the sweep removes it; they go with
-- their device.
CREATE UNLOGGED TABLE queue_reservations (
    key bigint PRIMARY KEY,
    message_id bigint NOT NULL,
    user_id bigint NOT NULL,
    device_id integer NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (user_id, device_id) REFERENCES devices ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX queue_reservations_queue ON queue_reservations (user_id, device_id);
"#,
];

/// The schema version this build writes and reads.
pub(super) const VERSION: i32 = MIGRATIONS.len() as i32;

/// Applies the migrations the database lacks, all in one transaction.
pub(super) async fn migrate(store: &PgStore) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Quiet: "relation already exists, skipping" on every start is no news.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning; \
         CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)",
    )
    .await?;
    let found: i32 = tx
        .query_opt("SELECT version FROM schema_version", &[])
        .await?
        .map_or(0, |row| row.get(0));
    if found > VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {found}, this build knows up to version {VERSION}; \
             run the signal-server version that wrote it"
        )));
    }
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        log::info!("database: applying schema migration {}", n + 1);
        tx.batch_execute(sql).await?;
    }
    tx.execute("DELETE FROM schema_version", &[]).await?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES ($1)",
        &[&VERSION],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
