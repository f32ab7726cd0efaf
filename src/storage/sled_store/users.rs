//! Accounts: the user record, its username and email indexes, and password-reset grants.

use sled::Transactional;

use super::totals::Count;
use super::{abort, decode, decode_tx, encode, keys, SledStore, StoreError};
use crate::models::User;

/// What a valid password-reset token grants: the user it was issued to, and the token version
/// it was issued under (a later password change voids it).
#[derive(Debug, Clone, PartialEq)]
pub struct ResetGrant {
    pub user_id: u64,
    pub token_version: u32,
    pub expires_at: u64,
}

impl SledStore {
    /// Creates a user; usernames and non-empty emails are unique case-insensitively. With
    /// `invite` (the hash of an invite token), the invite is used up in the same transaction.
    pub async fn create_user(
        &self,
        username: &str,
        email: &str,
        password_hash: String,
        invite: Option<&[u8]>,
    ) -> Result<User, StoreError> {
        let _writing = self.writing().await?;
        let user = User {
            id: self.next_id()?,
            username: username.to_string(),
            email: email.to_string(),
            password_hash,
            token_version: 0,
        };
        let name_key = username.to_lowercase();
        let email_key = email.to_lowercase();
        let id = keys::user(user.id);
        let record = encode(&user);
        (&self.users, &self.usernames, &self.emails, &self.invites).transaction(
            |(users, names, emails, invites)| {
                if names.get(name_key.as_bytes())?.is_some() {
                    return abort(StoreError::UsernameTaken);
                }
                if let Some(invite) = invite {
                    if invites.remove(invite)?.is_none() {
                        return abort(StoreError::InvalidInvite);
                    }
                }
                if !email_key.is_empty() {
                    if emails.get(email_key.as_bytes())?.is_some() {
                        return abort(StoreError::EmailTaken);
                    }
                    emails.insert(email_key.as_bytes(), &id)?;
                }
                names.insert(name_key.as_bytes(), &id)?;
                users.insert(&id, record.as_slice())?;
                Ok(())
            },
        )?;
        self.count(Count::Users, 1);
        self.count(Count::Invites, -i64::from(invite.is_some()));
        self.sync().await?;
        Ok(user)
    }

    pub fn user(&self, id: u64) -> Result<Option<User>, StoreError> {
        match self.users.get(keys::user(id))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Looks a user up by username, case-insensitively.
    pub fn user_by_name(&self, username: &str) -> Result<Option<User>, StoreError> {
        self.user_by_index(&self.usernames, &username.to_lowercase())
    }

    /// Looks a user up by email, case-insensitively.
    pub fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.user_by_index(&self.emails, &email.to_lowercase())
    }

    fn user_by_index(&self, index: &sled::Tree, key: &str) -> Result<Option<User>, StoreError> {
        match index.get(key.as_bytes())? {
            Some(id) => match keys::decode_u64(&id) {
                Some(id) => self.user(id),
                None => Err(StoreError::Corrupt("index entry".into())),
            },
            None => Ok(None),
        }
    }

    /// Replaces the password hash and bumps the token version, which revokes every token issued
    /// before. Returns the updated user.
    pub async fn set_password(
        &self,
        user_id: u64,
        password_hash: String,
    ) -> Result<User, StoreError> {
        let _writing = self.writing().await?;
        let key = keys::user(user_id);
        let user = self.users.transaction(|users| {
            let Some(v) = users.get(key)? else {
                return abort(StoreError::NoUser);
            };
            let mut user: User = decode_tx(&v)?;
            user.password_hash = password_hash.clone();
            user.token_version = user.token_version.wrapping_add(1);
            users.insert(&key, encode(&user))?;
            Ok(user)
        })?;
        self.sync().await?;
        Ok(user)
    }

    /// Deletes a user with their device, keys and queued messages. Messages they sent to others
    /// stay. The account record goes first, in one transaction with its indexes, so the user and
    /// their tokens are gone even if the clean-up after it is interrupted.
    pub async fn delete_user(&self, user_id: u64) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        let key = keys::user(user_id);
        (&self.users, &self.usernames, &self.emails).transaction(|(users, names, emails)| {
            let Some(v) = users.remove(&key)? else {
                return abort(StoreError::NoUser);
            };
            let user: User = decode_tx(&v)?;
            names.remove(user.username.to_lowercase().as_bytes())?;
            if !user.email.is_empty() {
                emails.remove(user.email.to_lowercase().as_bytes())?;
            }
            Ok(())
        })?;
        self.count(Count::Users, -1);
        self.remove_device_data(user_id)?;
        self.remove_uploads_of(user_id)?;
        self.sync().await
    }

    /// Stores a reset grant under the hash of its token.
    pub async fn put_reset_token(
        &self,
        token_hash: &[u8],
        grant: &ResetGrant,
    ) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        let value = keys::reset_grant(grant.user_id, grant.expires_at, grant.token_version);
        self.reset_tokens.insert(token_hash, &value)?;
        self.sync().await
    }

    /// Removes and returns the grant for a token hash: a token works once.
    pub async fn take_reset_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<ResetGrant>, StoreError> {
        let _writing = self.writing().await?;
        let Some(v) = self.reset_tokens.remove(token_hash)? else {
            return Ok(None);
        };
        self.sync().await?;
        decode_grant(&v).map(Some)
    }

    /// The grant for a token hash, left in place: lets a reset be checked in full before the
    /// token is taken, so a refused new password does not use the token up.
    pub fn reset_grant(&self, token_hash: &[u8]) -> Result<Option<ResetGrant>, StoreError> {
        match self.reset_tokens.get(token_hash)? {
            Some(v) => decode_grant(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Drops expired reset grants; run by the background sweeper.
    pub async fn sweep_reset_tokens(&self, now: u64) -> Result<usize, StoreError> {
        let _writing = self.writing().await?;
        let mut removed = 0;
        for entry in self.reset_tokens.iter() {
            let (k, v) = entry?;
            let expired = v
                .get(8..16)
                .and_then(keys::decode_u64)
                .is_none_or(|t| t <= now);
            if expired
                && self
                    .reset_tokens
                    .compare_and_swap(&k, Some(&v), None::<&[u8]>)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stores an invite under the hash of its token.
    pub async fn create_invite(
        &self,
        token_hash: &[u8],
        created_at: u64,
    ) -> Result<(), StoreError> {
        let _writing = self.writing().await?;
        if self
            .invites
            .insert(token_hash, &created_at.to_be_bytes())?
            .is_none()
        {
            self.count(Count::Invites, 1);
        }
        self.sync().await
    }

    /// Up to `limit` users with ids above `after`, by id: the operator's list, a page at a time.
    pub fn users_page(&self, after: u64, limit: usize) -> Result<Vec<User>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.users
            .range(keys::user(from)..)
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }
}

/// A stored reset grant: user id ‖ expiry ‖ token version (see `keys::reset_grant`).
fn decode_grant(v: &[u8]) -> Result<ResetGrant, StoreError> {
    (|| {
        Some(ResetGrant {
            user_id: keys::decode_u64(v.get(0..8)?)?,
            expires_at: keys::decode_u64(v.get(8..16)?)?,
            token_version: keys::decode_u32(v.get(16..20)?)?,
        })
    })()
    .ok_or_else(|| StoreError::Corrupt("reset grant".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn usernames_and_emails_are_unique_case_insensitively() {
        let (_dir, s) = super::super::temp();
        let a = s
            .create_user("Alice", "a@x.org", "h".into(), None)
            .await
            .unwrap();
        assert!(matches!(
            s.create_user("alice", "", "h".into(), None).await,
            Err(StoreError::UsernameTaken)
        ));
        assert!(matches!(
            s.create_user("bob", "A@X.org", "h".into(), None).await,
            Err(StoreError::EmailTaken)
        ));
        assert_eq!(s.user_by_name("ALICE").unwrap().unwrap().id, a.id);
        assert_eq!(
            s.user_by_email("a@X.ORG").unwrap().unwrap().username,
            "Alice"
        );
    }

    #[tokio::test]
    async fn deleted_usernames_can_be_registered_again_with_a_new_id() {
        let (_dir, s) = super::super::temp();
        let a = s
            .create_user("carol", "c@x.org", "h".into(), None)
            .await
            .unwrap();
        s.delete_user(a.id).await.unwrap();
        assert!(s.user(a.id).unwrap().is_none());
        let b = s
            .create_user("Carol", "c@x.org", "h".into(), None)
            .await
            .unwrap();
        assert_ne!(a.id, b.id);
    }

    #[tokio::test]
    async fn an_invite_registers_one_user_only() {
        let (_dir, s) = super::super::temp();
        s.create_invite(b"inv", 1).await.unwrap();
        s.create_user("one", "", "h".into(), Some(b"inv"))
            .await
            .unwrap();
        assert!(matches!(
            s.create_user("two", "", "h".into(), Some(b"inv")).await,
            Err(StoreError::InvalidInvite)
        ));
        assert!(s.user_by_name("two").unwrap().is_none());
    }

    #[tokio::test]
    async fn reset_tokens_work_once() {
        let (_dir, s) = super::super::temp();
        let grant = ResetGrant {
            user_id: 9,
            token_version: 2,
            expires_at: 100,
        };
        s.put_reset_token(b"hash", &grant).await.unwrap();
        assert_eq!(s.reset_grant(b"hash").unwrap(), Some(grant.clone()));
        assert_eq!(s.take_reset_token(b"hash").await.unwrap(), Some(grant));
        assert_eq!(s.take_reset_token(b"hash").await.unwrap(), None);
    }
}
