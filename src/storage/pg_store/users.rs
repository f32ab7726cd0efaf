//! Accounts, password-reset grants and invites.

use tokio_postgres::Row;

use std::sync::{Arc, LazyLock};

use super::devices::{device_at, lock_devices, DEVICE_COLUMNS, DEVICE_FROM};
use super::{db_id, to_u32, to_u64, Cached, PgStore};
use crate::models::{Device, User};
use crate::models::{Member, Principal};
use crate::storage::{ResetGrant, StoreError};

pub(super) const USER_COLUMNS: &str = "id, username, email, password_hash, token_version";

/// `Storage::principal`: the user (`USER_COLUMNS` of `u`) with each device's member fields.
const PRINCIPAL: &str = "SELECT u.id, u.username, u.email, u.password_hash, u.token_version, \
     d.address, d.registration_id, d.identity_key, d.incarnation \
     FROM users u LEFT JOIN devices d ON d.user_id = u.id WHERE u.id = $1 \
     ORDER BY d.is_primary DESC, d.device_id";

/// `Storage::recipient`: the user (`USER_COLUMNS` of `u`) with its primary's `DEVICE_COLUMNS`.
static RECIPIENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT u.id, u.username, u.email, u.password_hash, u.token_version, {DEVICE_COLUMNS} \
         FROM users u LEFT JOIN ({DEVICE_FROM}) ON d.user_id = u.id AND d.is_primary \
         WHERE lower(u.username) = lower($1)"
    )
});

impl PgStore {
    /// Creates a user; usernames and non-empty emails are unique case-insensitively. With
    /// `invite` (the hash of an invite token), the invite is used up in the same transaction.
    /// Refusals come in the sled store's order: username, invite, email.
    pub async fn create_user(
        &self,
        username: &str,
        email: &str,
        password_hash: String,
        invite: Option<&[u8]>,
    ) -> Result<User, StoreError> {
        let password_hash = password_hash.as_str();
        self.retrying(move || self.create_user_once(username, email, password_hash, invite))
            .await
    }

    async fn create_user_once(
        &self,
        username: &str,
        email: &str,
        password_hash: &str,
        invite: Option<&[u8]>,
    ) -> Result<User, StoreError> {
        let mut client = self.client().await?;
        let tx = super::begin(&mut client).await?;
        let taken = tx
            .fetch_opt(
                "SELECT 1 FROM users WHERE lower(username) = lower($1)",
                &[&username],
            )
            .await?;
        if taken.is_some() {
            return Err(StoreError::UsernameTaken);
        }
        if let Some(invite) = invite {
            let used = tx
                .exec("DELETE FROM invites WHERE token_hash = $1", &[&invite])
                .await?;
            if used == 0 {
                return Err(StoreError::InvalidInvite);
            }
        }
        // The unique indexes decide between concurrent creates (and check the email).
        let row = tx
            .fetch_one(
                &format!(
                    "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3) \
                     RETURNING {USER_COLUMNS}"
                ),
                &[&username, &email, &password_hash],
            )
            .await?;
        super::commit(tx).await?;
        user(&row)
    }

    pub async fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        self.user_where("id = $1", &db_id(id)).await
    }

    /// Looks a user up by username, case-insensitively.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.user_where("lower(username) = lower($1)", &username)
            .await
    }

    /// Looks a user up by email, case-insensitively (never the empty "no email").
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        if email.is_empty() {
            return Ok(None);
        }
        self.user_where("lower(email) = lower($1) AND email <> ''", &email)
            .await
    }

    /// The account with its devices (see `Storage::principal`): one statement.
    pub async fn principal(&self, user_id: u64) -> Result<Option<Principal>, StoreError> {
        let id = db_id(user_id);
        let rows = self
            .read(|db| async move { db.fetch_all(PRINCIPAL, &[&id]).await })
            .await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut devices = Vec::with_capacity(rows.len());
        for row in &rows {
            if let Some(address) = row.get::<_, Option<String>>(5) {
                devices.push(Arc::new(Member {
                    address,
                    registration_id: to_u32(row.get(6), "registration id")?,
                    identity_key: row.get(7),
                    stamp: row.get::<_, i64>(8) as u64,
                }));
            }
        }
        Ok(Some(Principal {
            user: user(first)?,
            devices,
        }))
    }

    /// A user by username with its primary device (see `Storage::recipient`): one statement.
    pub async fn recipient(
        &self,
        username: &str,
    ) -> Result<Option<(User, Option<Device>)>, StoreError> {
        let row = self
            .read(|db| async move { db.fetch_opt(&RECIPIENT, &[&username]).await })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let device = match row.get::<_, Option<String>>(5) {
            Some(_) => Some(device_at(&row, 5)?),
            None => None,
        };
        Ok(Some((user(&row)?, device)))
    }

    async fn user_where(
        &self,
        condition: &str,
        value: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<Option<User>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE {condition}");
        let row = self
            .read(|db| async move { db.fetch_opt(&sql, &[value]).await })
            .await?;
        row.as_ref().map(user).transpose()
    }

    /// Every user with an id above `after_id`, in id order, at most `limit` (admin listing).
    pub async fn users_page(&self, after_id: u64, limit: usize) -> Result<Vec<User>, StoreError> {
        self.timed(async {
            let sql =
                format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2");
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .fetch_all(&sql, &[&db_id(after_id), &limit])
                .await?;
            rows.iter().map(user).collect()
        })
        .await
    }

    /// Replaces the password hash and bumps the token version, which revokes every token issued
    /// before. Returns the updated user.
    pub async fn set_password(
        &self,
        user_id: u64,
        password_hash: String,
    ) -> Result<User, StoreError> {
        self.timed(async {
            let sql = format!(
                "UPDATE users SET password_hash = $2, token_version = (token_version + 1) % 4294967296 \
                 WHERE id = $1 RETURNING {USER_COLUMNS}"
            );
            let row = self
                .client()
                .await?
                .fetch_opt(&sql, &[&db_id(user_id), &password_hash])
                .await?;
            user(&row.ok_or(StoreError::NoUser)?)
        })
        .await
    }

    /// Deletes a user with their devices, keys and queued messages (the rest follows the user
    /// row by `ON DELETE CASCADE`). Messages they sent to others stay. The user row, then the
    /// device rows in id order, are locked first: the order every verb locks them in, so a send
    /// to all of the account's devices meanwhile waits instead of deadlocking.
    pub async fn delete_user(&self, user_id: u64) -> Result<(), StoreError> {
        self.retrying(move || async move {
            let mut client = self.client().await?;
            let tx = super::begin(&mut client).await?;
            let user = db_id(user_id);
            tx.fetch_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
                .await?
                .ok_or(StoreError::NoUser)?;
            lock_devices(&tx, user).await?;
            tx.exec("DELETE FROM users WHERE id = $1", &[&user]).await?;
            super::commit(tx).await?;
            Ok(())
        })
        .await
    }

    /// Stores a reset grant under the hash of its token (replacing one stored under it).
    pub async fn put_reset_token(
        &self,
        token_hash: &[u8],
        grant: &ResetGrant,
    ) -> Result<(), StoreError> {
        self.timed(async {
            self.client()
                .await?
                .exec(
                    "INSERT INTO reset_tokens (token_hash, user_id, expires_at, token_version) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO UPDATE SET \
                     user_id = excluded.user_id, expires_at = excluded.expires_at, \
                     token_version = excluded.token_version",
                    &[
                        &token_hash,
                        &db_id(grant.user_id),
                        &db_id(grant.expires_at),
                        &i64::from(grant.token_version),
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// Removes and returns the grant for a token hash: a token works once (one `DELETE`, so
    /// of two concurrent takers one gets it).
    pub async fn take_reset_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<ResetGrant>, StoreError> {
        self.grant_query(
            "DELETE FROM reset_tokens WHERE token_hash = $1 \
             RETURNING user_id, expires_at, token_version",
            token_hash,
        )
        .await
    }

    /// The grant for a token hash, left in place: lets a reset be checked in full before the
    /// token is taken, so a refused new password does not use the token up.
    pub async fn reset_grant(&self, token_hash: &[u8]) -> Result<Option<ResetGrant>, StoreError> {
        self.grant_query(
            "SELECT user_id, expires_at, token_version FROM reset_tokens WHERE token_hash = $1",
            token_hash,
        )
        .await
    }

    async fn grant_query(
        &self,
        sql: &str,
        token_hash: &[u8],
    ) -> Result<Option<ResetGrant>, StoreError> {
        self.timed(async {
            let row = self.client().await?.fetch_opt(sql, &[&token_hash]).await?;
            row.map(|row| {
                Ok(ResetGrant {
                    user_id: to_u64(row.get(0)),
                    expires_at: to_u64(row.get(1)),
                    token_version: to_u32(row.get(2), "token version")?,
                })
            })
            .transpose()
        })
        .await
    }

    /// Drops reset grants expired at `now` (s); run by the background sweeper.
    pub async fn sweep_reset_tokens(&self, now: u64) -> Result<usize, StoreError> {
        self.timed(async {
            let n = self
                .client()
                .await?
                .exec(
                    "DELETE FROM reset_tokens WHERE expires_at <= $1",
                    &[&db_id(now)],
                )
                .await?;
            Ok(n as usize)
        })
        .await
    }

    /// Stores an invite under the hash of its token.
    pub async fn create_invite(
        &self,
        token_hash: &[u8],
        created_at: u64,
    ) -> Result<(), StoreError> {
        self.timed(async {
            self.client()
                .await?
                .exec(
                    "INSERT INTO invites (token_hash, created_at) VALUES ($1, $2) \
                     ON CONFLICT (token_hash) DO UPDATE SET created_at = excluded.created_at",
                    &[&token_hash, &db_id(created_at)],
                )
                .await?;
            Ok(())
        })
        .await
    }
}

pub(super) fn user(row: &Row) -> Result<User, StoreError> {
    Ok(User {
        id: to_u64(row.get(0)),
        username: row.get(1),
        email: row.get(2),
        password_hash: row.get(3),
        token_version: to_u32(row.get(4), "token version")?,
    })
}
