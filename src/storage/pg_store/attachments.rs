//! Attachment records (see `storage::attachments`): a row per upload, its lease in the row, so
//! every instance sees who writes an upload.
//!
//! - A creation holds the owner's user row (`FOR NO KEY UPDATE`, the account lock) and counts
//!   the owner's uploads in the NEXT statement: a statement reads the database as it was when
//!   it started, so a count in the locking statement itself would miss what a creation that held
//!   the lock before committed. The transaction takes one round trip (`create_once`).
//! - A lease is taken, renewed, moved and given back by single `UPDATE`s that compare the row's
//!   holder and offset: of two requests racing for an upload, on any instances, one updates the
//!   row and the other finds it changed (the second waits for the first's row lock, then checks
//!   the row as the first left it).
//! - Every verb commits before it answers (`synchronous_commit = on`); the rows go with the
//!   account (`ON DELETE CASCADE`).

use deadpool_postgres::Object;
use tokio_postgres::Row;

use super::{db_id, to_u64, Cached, Param, PgStore};
use crate::storage::attachments::{
    Advance, AttachmentId, AttachmentTotals, Lease, Upload, UploadLimits, UploadRefused,
};
use crate::storage::StoreError;

pub(super) const COLUMNS: &str =
    r#"id, owner, length, "offset", created_ms, expires_ms, completed_ms"#;

/// The account lock; no row: the account is gone.
const LOCK_OWNER: &str = "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE";

/// Inserts the upload if the owner (`$2`) has fewer than `$8` unfinished uploads and its
/// uploads' lengths (complete ones too, as the sled store counts them) with this one stay within
/// `$9`; answers (under the count cap, inserted). No insert for an account that is gone.
const CREATE: &str = r#"WITH used AS (
    SELECT count(*) FILTER (WHERE completed_ms IS NULL) AS unfinished,
        coalesce(sum(length), 0) AS bytes
    FROM attachments WHERE owner = $2::bigint),
added AS (
    INSERT INTO attachments (id, owner, length, "offset", created_ms, expires_ms, completed_ms)
    SELECT $1::bytea, $2::bigint, $3::bigint, $4::bigint, $5::bigint, $6::bigint, $7::bigint
    FROM used
    WHERE EXISTS (SELECT 1 FROM users WHERE id = $2::bigint)
        AND used.unfinished < $8::bigint AND used.bytes + $3::bigint <= $9::bigint
    RETURNING 1)
SELECT used.unfinished < $8::bigint, EXISTS (SELECT 1 FROM added) FROM used"#;

impl PgStore {
    pub async fn create_upload(
        &self,
        upload: &Upload,
        limits: UploadLimits,
    ) -> Result<Result<(), UploadRefused>, StoreError> {
        // A length past bigint's range is past any quota the database can keep.
        let (length, quota) = match i64::try_from(upload.length) {
            Ok(length) => (length, db_id(limits.quota_bytes)),
            Err(_) => (i64::MAX, -1),
        };
        let (owner, offset) = (db_id(upload.owner), db_id(upload.offset));
        let (created, expires) = (db_id(upload.created_ms), db_id(upload.expires_ms));
        let completed = upload.completed_ms.map(db_id);
        let max_unfinished = i64::from(limits.max_unfinished);
        let params: [&Param<'_>; 9] = [
            &upload.id.as_slice(),
            &owner,
            &length,
            &offset,
            &created,
            &expires,
            &completed,
            &max_unfinished,
            &quota,
        ];
        self.retrying(move || async move { create_once(&self.client().await?, &params).await })
            .await
    }

    pub async fn upload(&self, id: &AttachmentId) -> Result<Option<Upload>, StoreError> {
        self.timed(async { find(&self.client().await?, id).await })
            .await
    }

    pub async fn claim_upload(
        &self,
        id: &AttachmentId,
        owner: u64,
        offset: u64,
        lease: Lease,
        now_ms: u64,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        self.timed(async {
            let client = self.client().await?;
            let sql = format!(
                r#"UPDATE attachments SET lease_holder = $4, lease_until_ms = $5
                WHERE id = $1 AND owner = $2 AND "offset" = $3 AND completed_ms IS NULL
                AND expires_ms > $6
                AND (lease_holder IS NULL OR lease_holder = $4 OR lease_until_ms <= $6)
                RETURNING {COLUMNS}"#
            );
            let claimed = client
                .fetch_opt(
                    &sql,
                    &[
                        &id.as_slice(),
                        &db_id(owner),
                        &db_id(offset),
                        &holder(lease.holder),
                        &db_id(lease.until_ms),
                        &db_id(now_ms),
                    ],
                )
                .await?;
            if let Some(row) = claimed {
                return Ok(Ok(upload(&row)?));
            }
            // Why not, as the row is now (a statement of its own sees the latest commit).
            let found = find(&client, id).await?;
            Ok(Err(refusal(found, owner, now_ms)))
        })
        .await
    }

    pub async fn advance_upload(
        &self,
        step: Advance,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        // The step that completes the upload, or a request's last, gives the lease back.
        let sql = format!(
            r#"UPDATE attachments SET "offset" = $4::bigint,
            completed_ms = CASE WHEN $4::bigint = length THEN $6::bigint END,
            expires_ms = CASE WHEN $4::bigint = length THEN $7::bigint ELSE expires_ms END,
            lease_holder = CASE WHEN $4::bigint = length OR $8 THEN NULL ELSE lease_holder END,
            lease_until_ms = CASE WHEN $4::bigint = length OR $8 THEN NULL ELSE $5::bigint END
            WHERE id = $1 AND lease_holder = $2 AND "offset" = $3 AND completed_ms IS NULL
            AND $4::bigint <= length
            RETURNING {COLUMNS}"#
        );
        self.timed(async {
            let row = self
                .client()
                .await?
                .fetch_opt(
                    &sql,
                    &[
                        &step.id.as_slice(),
                        &holder(step.lease.holder),
                        &db_id(step.from),
                        &db_id(step.to),
                        &db_id(step.lease.until_ms),
                        // As the sled store keeps it (0 there means unfinished).
                        &db_id(step.now_ms.max(1)),
                        &db_id(step.expires_ms),
                        &step.release,
                    ],
                )
                .await?;
            match row {
                Some(row) => Ok(Ok(upload(&row)?)),
                None => Ok(Err(UploadRefused::LeaseLost)),
            }
        })
        .await
    }

    pub async fn release_upload(
        &self,
        id: &AttachmentId,
        holder_id: u64,
    ) -> Result<(), StoreError> {
        self.timed(async {
            self.client()
                .await?
                .exec(
                    "UPDATE attachments SET lease_holder = NULL, lease_until_ms = NULL \
                     WHERE id = $1 AND lease_holder = $2",
                    &[&id.as_slice(), &holder(holder_id)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    pub async fn delete_upload(
        &self,
        id: &AttachmentId,
        owner: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.timed(async {
            let removed = self
                .client()
                .await?
                .exec(
                    "DELETE FROM attachments WHERE id = $1 \
                     AND ($2::bigint IS NULL OR owner = $2::bigint)",
                    &[&id.as_slice(), &owner.map(db_id)],
                )
                .await?;
            Ok(removed == 1)
        })
        .await
    }

    pub async fn uploads_of(&self, owner: u64) -> Result<Vec<AttachmentId>, StoreError> {
        self.timed(async {
            let rows = self
                .client()
                .await?
                .fetch_all(
                    "SELECT id FROM attachments WHERE owner = $1 ORDER BY id",
                    &[&db_id(owner)],
                )
                .await?;
            rows.iter().map(|row| attachment_id(row.get(0))).collect()
        })
        .await
    }

    pub async fn expired_uploads(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Upload>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM attachments WHERE expires_ms <= $1 \
             ORDER BY expires_ms, id LIMIT $2"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.timed(async {
            let rows = self
                .client()
                .await?
                .fetch_all(&sql, &[&db_id(now_ms), &limit])
                .await?;
            rows.iter().map(upload).collect()
        })
        .await
    }

    pub async fn attachment_totals(&self) -> Result<AttachmentTotals, StoreError> {
        self.timed(async {
            let row = self
                .client()
                .await?
                .fetch_one(
                    r#"SELECT count(*) FILTER (WHERE completed_ms IS NOT NULL),
                    count(*) FILTER (WHERE completed_ms IS NULL),
                    coalesce(sum("offset"), 0)::bigint FROM attachments"#,
                    &[],
                )
                .await?;
            Ok(AttachmentTotals {
                complete: to_u64(row.get(0)),
                unfinished: to_u64(row.get(1)),
                bytes: to_u64(row.get(2)),
            })
        })
        .await
    }
}

/// One try of `create_upload`, `CREATE`'s parameters (the owner's id second) in hand: the
/// transaction in one round trip. The statements are sent in the order they are first polled
/// (tokio-postgres's pipelining), and the server runs them in that order; a failed one makes
/// `COMMIT` roll back. All four are awaited, so the connection goes back to the pool outside a
/// transaction.
async fn create_once(
    client: &Object,
    params: &[&Param<'_>; 9],
) -> Result<Result<(), UploadRefused>, StoreError> {
    let (lock, create) = tokio::try_join!(
        client.prepare_cached(LOCK_OWNER),
        client.prepare_cached(CREATE)
    )?;
    crate::round_trips::add(1);
    let (begin, user, row, commit) = tokio::join!(
        client.batch_execute("BEGIN"),
        client.query_opt(&lock, &params[1..2]),
        client.query_one(&create, params),
        client.batch_execute("COMMIT"),
    );
    let ((), user, row, ()) = (begin?, user?, row?, commit?);
    if user.is_none() {
        return Err(StoreError::NoUser);
    }
    let (under_cap, added): (bool, bool) = (row.get(0), row.get(1));
    Ok(match (under_cap, added) {
        (_, true) => Ok(()),
        (false, false) => Err(UploadRefused::TooManyUnfinished),
        (true, false) => Err(UploadRefused::Quota),
    })
}

/// The record of `id`, whoever owns it.
async fn find(db: &impl Cached, id: &AttachmentId) -> Result<Option<Upload>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM attachments WHERE id = $1");
    let row = db.fetch_opt(&sql, &[&id.as_slice()]).await?;
    row.as_ref().map(upload).transpose()
}

/// Why a claim of `owner`'s upload found no row to update, `found` being the row as it is now;
/// a row that would have been claimed changed in between (another request's lease came and
/// went): the offset is the answer then, as for a race lost.
fn refusal(found: Option<Upload>, owner: u64, now_ms: u64) -> UploadRefused {
    match found {
        Some(u) if u.owner != owner || u.is_expired(now_ms) => UploadRefused::NoSuchUpload,
        None => UploadRefused::NoSuchUpload,
        Some(u) if u.is_complete() => UploadRefused::Complete,
        Some(u) => UploadRefused::OffsetMismatch(u.offset),
    }
}

/// A lease holder as the database keeps it: bit for bit, so two random holders never meet
/// (clamping the upper half of `u64` to `i64::MAX`, as `db_id` does, would make them one).
fn holder(h: u64) -> i64 {
    h as i64
}

fn attachment_id(id: &[u8]) -> Result<AttachmentId, StoreError> {
    id.try_into()
        .map_err(|_| StoreError::Corrupt("an attachment id is not 16 bytes".into()))
}

/// A row of `COLUMNS`.
pub(super) fn upload(row: &Row) -> Result<Upload, StoreError> {
    Ok(Upload {
        id: attachment_id(row.get(0))?,
        owner: to_u64(row.get(1)),
        length: to_u64(row.get(2)),
        offset: to_u64(row.get(3)),
        created_ms: to_u64(row.get(4)),
        expires_ms: to_u64(row.get(5)),
        completed_ms: row.get::<_, Option<i64>>(6).map(to_u64),
    })
}
