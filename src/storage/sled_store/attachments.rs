//! Attachment records (see `storage::attachments`): the record by id, an index by owner (an
//! account's uploads, for deleting them with it), an index by expiry (the sweep), and each
//! account's usage (unfinished uploads, bytes) so the limits need no scan. Every write touches
//! them together in one transaction. Leases live in memory: one process writes a sled database.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::Transactional;

use super::{abort, keys, SledStore, StoreError, TxResult};
use crate::storage::attachments::{
    Advance, AttachmentId, AttachmentTotals, Lease, Upload, UploadLimits, UploadRefused,
};

/// `owner ‖ length ‖ offset ‖ created ms ‖ expires ms ‖ completed ms (0: unfinished)`, u64 BE.
fn encode(u: &Upload) -> [u8; 48] {
    let mut v = [0u8; 48];
    let fields = [
        u.owner,
        u.length,
        u.offset,
        u.created_ms,
        u.expires_ms,
        u.completed_ms.unwrap_or(0),
    ];
    for (i, f) in fields.iter().enumerate() {
        v[i * 8..i * 8 + 8].copy_from_slice(&f.to_be_bytes());
    }
    v
}

pub(super) fn decode(id: &[u8], v: &[u8]) -> Result<Upload, StoreError> {
    let bad = || StoreError::Corrupt("an attachment record is damaged".into());
    let id: AttachmentId = id.try_into().map_err(|_| bad())?;
    if v.len() != 48 {
        return Err(bad());
    }
    let f = |i: usize| keys::decode_u64(&v[i * 8..]).unwrap_or(0);
    Ok(Upload {
        id,
        owner: f(0),
        length: f(1),
        offset: f(2),
        created_ms: f(3),
        expires_ms: f(4),
        completed_ms: Some(f(5)).filter(|&c| c != 0),
    })
}

fn owner_key(owner: u64, id: &AttachmentId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&owner.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}

fn expiry_key(expires_ms: u64, id: &AttachmentId) -> [u8; 24] {
    owner_key(expires_ms, id)
}

/// An account's usage: unfinished uploads (u32 BE) ‖ bytes (u64 BE).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    unfinished: u32,
    bytes: u64,
}

impl Usage {
    fn read(tree: &TransactionalTree, owner: u64) -> TxResult<Usage> {
        let Some(v) = tree.get(keys::user(owner))? else {
            return Ok(Usage::default());
        };
        match (keys::decode_u32(&v), v.get(4..).and_then(keys::decode_u64)) {
            (Some(unfinished), Some(bytes)) => Ok(Usage { unfinished, bytes }),
            _ => abort(StoreError::Corrupt(
                "an attachment usage record is damaged".into(),
            )),
        }
    }

    fn write(self, tree: &TransactionalTree, owner: u64) -> TxResult<()> {
        if self == Usage::default() {
            tree.remove(&keys::user(owner))?;
        } else {
            let mut v = [0u8; 12];
            v[..4].copy_from_slice(&self.unfinished.to_be_bytes());
            v[4..].copy_from_slice(&self.bytes.to_be_bytes());
            tree.insert(&keys::user(owner), &v)?;
        }
        Ok(())
    }
}

/// The trees of attachment records, and the leases of uploads being written.
pub(super) struct Trees {
    pub records: sled::Tree,
    pub owners: sled::Tree,
    pub expiry: sled::Tree,
    pub usage: sled::Tree,
    pub leases: std::sync::Mutex<std::collections::HashMap<AttachmentId, Lease>>,
}

/// A refusal carried out of a transaction (it aborts; nothing is written).
enum Outcome<T> {
    Done(T),
    Refused(UploadRefused),
}

fn refuse<T>(r: UploadRefused) -> TxResult<Outcome<T>> {
    Ok(Outcome::Refused(r))
}

fn outcome<T>(r: Result<Outcome<T>, StoreError>) -> Result<Result<T, UploadRefused>, StoreError> {
    r.map(|o| match o {
        Outcome::Done(v) => Ok(v),
        Outcome::Refused(r) => Err(r),
    })
}

impl SledStore {
    fn attachment_trees(&self) -> (&sled::Tree, &sled::Tree, &sled::Tree, &sled::Tree) {
        let t = &self.attachments;
        (&t.records, &t.owners, &t.expiry, &t.usage)
    }

    pub async fn create_upload(
        &self,
        upload: &Upload,
        limits: UploadLimits,
    ) -> Result<Result<(), UploadRefused>, StoreError> {
        let _writing = self.writing().await?;
        let id = upload.id;
        let done = (
            &self.users,
            &self.attachments.records,
            &self.attachments.owners,
            &self.attachments.expiry,
            &self.attachments.usage,
        )
            .transaction(|(users, records, owners, expiry, usage)| {
                if users.get(keys::user(upload.owner))?.is_none() {
                    return abort(StoreError::NoUser);
                }
                if records.get(id)?.is_some() {
                    return abort(StoreError::Db("an attachment id came up twice".into()));
                }
                let mut used = Usage::read(usage, upload.owner)?;
                if used.unfinished >= limits.max_unfinished {
                    return refuse(UploadRefused::TooManyUnfinished);
                }
                match used.bytes.checked_add(upload.length) {
                    Some(b) if b <= limits.quota_bytes => used.bytes = b,
                    _ => return refuse(UploadRefused::Quota),
                }
                used.unfinished += 1;
                used.write(usage, upload.owner)?;
                records.insert(&id, &encode(upload)[..])?;
                owners.insert(&owner_key(upload.owner, &id), &[])?;
                expiry.insert(&expiry_key(upload.expires_ms, &id), &[])?;
                Ok(Outcome::Done(()))
            })
            .map_err(StoreError::from);
        let done = outcome(done)?;
        if done.is_ok() {
            self.sync().await?;
        }
        Ok(done)
    }

    pub fn upload(&self, id: &AttachmentId) -> Result<Option<Upload>, StoreError> {
        match self.attachments.records.get(id)? {
            Some(v) => decode(id, &v).map(Some),
            None => Ok(None),
        }
    }

    pub fn claim_upload(
        &self,
        id: &AttachmentId,
        owner: u64,
        offset: u64,
        lease: Lease,
        now_ms: u64,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        let mut leases = self.leases();
        let Some(upload) = self.upload(id)?.filter(|u| u.owner == owner) else {
            return Ok(Err(UploadRefused::NoSuchUpload));
        };
        if upload.is_expired(now_ms) {
            return Ok(Err(UploadRefused::NoSuchUpload));
        }
        if upload.is_complete() {
            return Ok(Err(UploadRefused::Complete));
        }
        let taken = leases
            .get(id)
            .is_some_and(|l| l.holder != lease.holder && l.until_ms > now_ms);
        if taken || upload.offset != offset {
            return Ok(Err(UploadRefused::OffsetMismatch(upload.offset)));
        }
        leases.insert(*id, lease);
        Ok(Ok(upload))
    }

    pub async fn advance_upload(
        &self,
        step: Advance,
    ) -> Result<Result<Upload, UploadRefused>, StoreError> {
        let _writing = self.writing().await?;
        // Held across the write: a claim cannot slip in between the check and the write.
        let written = {
            let mut leases = self.leases();
            if leases.get(&step.id).map(|l| l.holder) != Some(step.lease.holder) {
                return Ok(Err(UploadRefused::LeaseLost));
            }
            let (records, _, expiry, usage) = self.attachment_trees();
            let done = (records, expiry, usage)
                .transaction(|(records, expiry, usage)| {
                    let Some(v) = records.get(step.id)? else {
                        return refuse(UploadRefused::LeaseLost);
                    };
                    let mut upload =
                        decode(&step.id, &v).map_err(ConflictableTransactionError::Abort)?;
                    if upload.offset != step.from || upload.is_complete() || step.to > upload.length
                    {
                        return refuse(UploadRefused::LeaseLost);
                    }
                    upload.offset = step.to;
                    if step.to == upload.length {
                        expiry.remove(&expiry_key(upload.expires_ms, &step.id))?;
                        upload.completed_ms = Some(step.now_ms.max(1));
                        upload.expires_ms = step.expires_ms;
                        expiry.insert(&expiry_key(upload.expires_ms, &step.id), &[])?;
                        let mut used = Usage::read(usage, upload.owner)?;
                        used.unfinished = used.unfinished.saturating_sub(1);
                        used.write(usage, upload.owner)?;
                    }
                    records.insert(&step.id, &encode(&upload)[..])?;
                    Ok(Outcome::Done(upload))
                })
                .map_err(StoreError::from);
            let done = outcome(done)?;
            match &done {
                Ok(u) if u.is_complete() => {
                    leases.remove(&step.id);
                }
                Ok(_) if step.release => {
                    leases.remove(&step.id);
                }
                Ok(_) => {
                    leases.insert(step.id, step.lease);
                }
                Err(_) => {}
            }
            done
        };
        if written.is_ok() {
            self.sync().await?;
        }
        Ok(written)
    }

    pub fn release_upload(&self, id: &AttachmentId, holder: u64) {
        let mut leases = self.leases();
        if leases.get(id).is_some_and(|l| l.holder == holder) {
            leases.remove(id);
        }
    }

    pub async fn delete_upload(
        &self,
        id: &AttachmentId,
        owner: Option<u64>,
    ) -> Result<bool, StoreError> {
        let _writing = self.writing().await?;
        let (records, owners, expiry, usage) = self.attachment_trees();
        let removed = (records, owners, expiry, usage)
            .transaction(|(records, owners, expiry, usage)| {
                let Some(v) = records.get(id)? else {
                    return Ok(false);
                };
                let upload = decode(id, &v).map_err(ConflictableTransactionError::Abort)?;
                if owner.is_some_and(|o| o != upload.owner) {
                    return Ok(false);
                }
                forget(&upload, records, owners, expiry, usage)?;
                Ok(true)
            })
            .map_err(StoreError::from)?;
        if removed {
            self.leases().remove(id);
            self.sync().await?;
        }
        Ok(removed)
    }

    pub fn uploads_of(&self, owner: u64) -> Result<Vec<AttachmentId>, StoreError> {
        let mut ids = Vec::new();
        for key in self
            .attachments
            .owners
            .scan_prefix(keys::user(owner))
            .keys()
        {
            let key = key?;
            if let Ok(id) = AttachmentId::try_from(&key[8..]) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Removes the records of `owner`'s uploads (with the account; the sweep removes the blobs).
    pub(super) fn remove_uploads_of(&self, owner: u64) -> Result<(), StoreError> {
        for id in self.uploads_of(owner)? {
            let (records, owners, expiry, usage) = self.attachment_trees();
            (records, owners, expiry, usage).transaction(|(records, owners, expiry, usage)| {
                if let Some(v) = records.get(id)? {
                    let upload = decode(&id, &v).map_err(ConflictableTransactionError::Abort)?;
                    forget(&upload, records, owners, expiry, usage)?;
                }
                Ok(())
            })?;
            self.leases().remove(&id);
        }
        Ok(())
    }

    pub fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<Upload>, StoreError> {
        let mut found = Vec::new();
        for key in self
            .attachments
            .expiry
            .range(..keys::user(now_ms.saturating_add(1)))
        {
            let (key, _) = key?;
            if found.len() >= limit {
                break;
            }
            if let Some(upload) = self.upload(&key[8..].try_into().unwrap_or_default())? {
                if upload.is_expired(now_ms) {
                    found.push(upload);
                }
            }
        }
        Ok(found)
    }

    /// Puts a record as it is (a restore's: checked by the restore's rules, not against limits)
    /// with its index entries and its share of the owner's usage, in one transaction.
    pub(super) fn put_upload_record(&self, upload: &Upload) -> Result<(), StoreError> {
        let (records, owners, expiry, usage) = self.attachment_trees();
        (records, owners, expiry, usage).transaction(|(records, owners, expiry, usage)| {
            let mut used = Usage::read(usage, upload.owner)?;
            used.bytes = used.bytes.saturating_add(upload.length);
            if !upload.is_complete() {
                used.unfinished = used.unfinished.saturating_add(1);
            }
            used.write(usage, upload.owner)?;
            records.insert(&upload.id, &encode(upload)[..])?;
            owners.insert(&owner_key(upload.owner, &upload.id), &[])?;
            expiry.insert(&expiry_key(upload.expires_ms, &upload.id), &[])?;
            Ok(())
        })?;
        Ok(())
    }

    pub fn attachment_totals(&self) -> Result<AttachmentTotals, StoreError> {
        let mut totals = AttachmentTotals::default();
        for entry in self.attachments.records.iter() {
            let (id, v) = entry?;
            let upload = decode(&id, &v)?;
            if upload.is_complete() {
                totals.complete += 1;
            } else {
                totals.unfinished += 1;
            }
            totals.bytes += upload.offset;
        }
        Ok(totals)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<AttachmentId, Lease>> {
        self.attachments
            .leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes `upload`'s record, its index entries and its share of the owner's usage.
fn forget(
    upload: &Upload,
    records: &TransactionalTree,
    owners: &TransactionalTree,
    expiry: &TransactionalTree,
    usage: &TransactionalTree,
) -> TxResult<()> {
    records.remove(&upload.id)?;
    owners.remove(&owner_key(upload.owner, &upload.id))?;
    expiry.remove(&expiry_key(upload.expires_ms, &upload.id))?;
    let mut used = Usage::read(usage, upload.owner)?;
    used.bytes = used.bytes.saturating_sub(upload.length);
    if !upload.is_complete() {
        used.unfinished = used.unfinished.saturating_sub(1);
    }
    used.write(usage, upload.owner)
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::backup::tests::linked_store;
    use super::*;
    use crate::storage::fixtures::{limits, upload};
    use crate::storage::Storage;

    /// `linked_store` with uploads: alice's complete one and one under way, bob's just created.
    pub(in crate::storage::sled_store) async fn store_with_uploads(
    ) -> (tempfile::TempDir, SledStore) {
        let (dir, s) = linked_store().await;
        let store = Storage::Sled(s.clone());
        upload(&store, 1, 1, 1000, 1000).await;
        upload(&store, 1, 2, 1000, 400).await;
        upload(&store, 2, 3, 50, 0).await;
        (dir, s)
    }

    #[tokio::test]
    async fn attachments_come_back_with_their_indexes_and_usage() {
        let (_dir, a) = store_with_uploads().await;
        let mut first = Vec::new();
        let sum = a.backup(&mut first).await.unwrap();
        assert_eq!(sum.attachments, 3);
        let text = String::from_utf8(first).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains(r#""version":3"#), "{}", lines[0]);
        // Last before the end record, by id, each naming its owner and its state.
        let n = lines.len();
        let expected = [
            (1, r#""offset":1000,"#, true),
            (1, r#""offset":400,"#, false),
            (2, r#""offset":0,"#, false),
        ];
        for (line, (owner, offset, complete)) in lines[n - 4..n - 1].iter().zip(expected) {
            assert!(line.starts_with(r#"{"type":"attachment","id":""#), "{line}");
            assert!(line.contains(&format!(r#""owner":{owner},"#)), "{line}");
            assert!(line.contains(offset), "{line}");
            assert_eq!(line.contains(r#""completed":"#), complete, "{line}");
        }

        let (_dir2, b) = super::super::temp();
        assert_eq!(
            b.restore(&mut text.as_bytes(), &limits()).await.unwrap(),
            sum
        );
        let mut second = Vec::new();
        b.backup(&mut second).await.unwrap();
        assert_eq!(text, String::from_utf8(second).unwrap());
        for seed in 1..=3u8 {
            assert_eq!(
                b.upload(&[seed; 16]).unwrap(),
                a.upload(&[seed; 16]).unwrap()
            );
        }
        assert_eq!(
            b.attachment_totals().unwrap(),
            a.attachment_totals().unwrap()
        );
        // The indexes: by owner, by expiry.
        assert_eq!(b.uploads_of(1).unwrap(), [[1; 16], [2; 16]]);
        assert_eq!(b.expired_uploads(u64::MAX - 1, 10).unwrap().len(), 3);
        // The usage: alice holds 2,000 bytes and one unfinished upload.
        let store = Storage::Sled(b.clone());
        let two = UploadLimits {
            max_unfinished: 2,
            quota_bytes: 3000,
        };
        let mut next = b.upload(&[2; 16]).unwrap().unwrap();
        for (seed, length, answer) in [
            (4, 900, Ok(())),
            (5, 1, Err(UploadRefused::TooManyUnfinished)),
        ] {
            next.id = [seed; 16];
            next.length = length;
            next.offset = 0;
            assert_eq!(store.create_upload(&next, two).await.unwrap(), answer);
        }
        let roomy = UploadLimits {
            max_unfinished: 10,
            ..two
        };
        next.length = 101;
        assert_eq!(
            store.create_upload(&next, roomy).await.unwrap(),
            Err(UploadRefused::Quota)
        );
        // An account's deletion takes its records, found through the owner index.
        b.delete_user(1).await.unwrap();
        assert_eq!(b.upload(&[1; 16]).unwrap(), None);
        assert!(b.upload(&[3; 16]).unwrap().is_some());
    }
}
