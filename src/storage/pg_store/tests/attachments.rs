//! Attachment records: limits checked with the creation, leases, completion, deletion, and
//! races between instances.

use super::*;
use crate::storage::attachments::{
    Advance, AttachmentId, AttachmentTotals, Lease, Upload, UploadLimits, UploadRefused,
};

const DAY: u64 = 86_400_000;
/// Creation time of the uploads here; they expire a day later.
const T0: u64 = 1_000;
const LIMITS: UploadLimits = UploadLimits {
    max_unfinished: 3,
    quota_bytes: 100,
};
/// Lease holders in the upper half of `u64`, where a clamped conversion would make them one.
const H1: u64 = u64::MAX;
const H2: u64 = u64::MAX - 1;
const H3: u64 = 3;

fn id(n: u8) -> AttachmentId {
    [n; 16]
}

fn new_upload(n: u8, owner: u64, length: u64) -> Upload {
    Upload {
        id: id(n),
        owner,
        length,
        offset: 0,
        created_ms: T0,
        expires_ms: T0 + DAY,
        completed_ms: None,
    }
}

fn lease(holder: u64, until_ms: u64) -> Lease {
    Lease { holder, until_ms }
}

/// A step of `holder` from `from` to `to` at `now_ms`, renewing the lease for a minute.
fn step(n: u8, holder: u64, from: u64, to: u64, now_ms: u64) -> Advance {
    Advance {
        id: id(n),
        lease: lease(holder, now_ms + 60_000),
        from,
        to,
        now_ms,
        expires_ms: now_ms + 30 * DAY,
        release: false,
    }
}

async fn account(s: &PgStore, name: &str) -> u64 {
    s.create_user(name, "", "h".into(), None).await.unwrap().id
}

async fn create(s: &PgStore, u: &Upload, limits: UploadLimits) -> Result<(), UploadRefused> {
    s.create_upload(u, limits).await.unwrap()
}

#[test]
fn the_attachment_verbs_futures_can_run_on_any_runtime_thread() {
    fn send<T: Send>(_: T) {}
    let s: Option<PgStore> = None;
    if let Some(s) = s {
        send(s.create_upload(&new_upload(1, 1, 1), LIMITS));
        send(s.claim_upload(&id(1), 1, 0, lease(1, 1), 1));
        send(s.advance_upload(step(1, 1, 0, 1, 1)));
        send(s.release_upload(&id(1), 1));
        send(s.delete_upload(&id(1), None));
        send(s.expired_uploads(1, 1));
    }
}

#[tokio::test]
async fn uploads_are_created_within_the_limits_and_a_refused_one_stores_nothing() {
    let Some((s, _)) = store().await else { return };
    let a = account(&s, "a").await;
    create(&s, &new_upload(1, a, 40), LIMITS).await.unwrap();
    create(&s, &new_upload(2, a, 40), LIMITS).await.unwrap();
    assert_eq!(
        create(&s, &new_upload(3, a, 21), LIMITS).await,
        Err(UploadRefused::Quota)
    );
    assert_eq!(s.upload(&id(3)).await.unwrap(), None);
    // Up to the quota exactly.
    create(&s, &new_upload(3, a, 20), LIMITS).await.unwrap();
    assert_eq!(
        create(&s, &new_upload(4, a, 0), LIMITS).await,
        Err(UploadRefused::TooManyUnfinished)
    );
    assert_eq!(s.upload(&id(4)).await.unwrap(), None);
    assert_eq!(s.uploads_of(a).await.unwrap(), [id(1), id(2), id(3)]);
    assert_eq!(s.upload(&id(2)).await.unwrap(), Some(new_upload(2, a, 40)));

    // Another account has limits of its own; a gone one has none.
    let b = account(&s, "b").await;
    create(&s, &new_upload(5, b, 100), LIMITS).await.unwrap();
    assert!(matches!(
        s.create_upload(&new_upload(6, b + 100, 1), LIMITS).await,
        Err(StoreError::NoUser)
    ));
    // An id is never stored twice; the failed transaction is over when the verb answers.
    let c = account(&s, "c").await;
    assert!(matches!(
        s.create_upload(&new_upload(5, c, 0), LIMITS).await,
        Err(StoreError::Db(_))
    ));
    let open: i64 = s
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
    let totals = s.attachment_totals().await.unwrap();
    assert_eq!(
        totals,
        AttachmentTotals {
            complete: 0,
            unfinished: 4,
            bytes: 0
        }
    );
}

#[tokio::test]
async fn a_claim_is_refused_for_another_account_offset_holder_an_expired_or_complete_upload() {
    let Some((s, _)) = store().await else { return };
    let (a, b) = (account(&s, "a").await, account(&s, "b").await);
    let u = new_upload(1, a, 10);
    create(&s, &u, LIMITS).await.unwrap();
    let now = T0 + 1_000;
    let claim = |owner, offset, holder, now_ms| {
        let s = s.clone();
        async move {
            let l = lease(holder, now_ms + 30_000);
            s.claim_upload(&id(1), owner, offset, l, now_ms)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(b, 0, H1, now).await, Err(UploadRefused::NoSuchUpload));
    let unknown = s.claim_upload(&id(9), a, 0, lease(H1, now + 1), now).await;
    assert_eq!(unknown.unwrap(), Err(UploadRefused::NoSuchUpload));
    assert_eq!(
        claim(a, 5, H1, now).await,
        Err(UploadRefused::OffsetMismatch(0))
    );
    assert_eq!(claim(a, 0, H1, now).await, Ok(u.clone()));
    // Held by another until it runs out; its holder may claim again.
    assert_eq!(
        claim(a, 0, H2, now).await,
        Err(UploadRefused::OffsetMismatch(0))
    );
    assert_eq!(claim(a, 0, H1, now).await, Ok(u.clone()));
    assert_eq!(
        claim(a, 0, H1, u.expires_ms).await,
        Err(UploadRefused::NoSuchUpload)
    );

    s.advance_upload(step(1, H1, 0, 10, now))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim(a, 10, H2, now).await, Err(UploadRefused::Complete));
    assert_eq!(
        claim(b, 10, H2, now).await,
        Err(UploadRefused::NoSuchUpload)
    );
}

#[tokio::test]
async fn only_the_holder_at_the_offset_advances_and_the_last_step_completes() {
    let Some((s, _)) = store().await else { return };
    let a = account(&s, "a").await;
    let one_at_a_time = UploadLimits {
        max_unfinished: 1,
        quota_bytes: 100,
    };
    create(&s, &new_upload(1, a, 10), one_at_a_time)
        .await
        .unwrap();
    let now = T0 + 1_000;
    let l = lease(H1, now + 30_000);
    s.claim_upload(&id(1), a, 0, l, now).await.unwrap().unwrap();
    for refused in [
        step(1, H2, 0, 4, now),
        step(1, H1, 3, 4, now),
        step(1, H1, 0, 11, now),
        step(9, H1, 0, 4, now),
    ] {
        let outcome = s.advance_upload(refused).await.unwrap();
        assert_eq!(outcome, Err(UploadRefused::LeaseLost), "{refused:?}");
    }
    let moved = s.advance_upload(step(1, H1, 0, 4, now)).await.unwrap();
    assert_eq!(moved.map(|u| (u.offset, u.completed_ms)), Ok((4, None)));
    assert_eq!(s.upload(&id(1)).await.unwrap().unwrap().offset, 4);
    // The lease was renewed to the step's: another holder still finds it held.
    let later = now + 45_000;
    let other = s
        .claim_upload(&id(1), a, 4, lease(H2, later + 1), later)
        .await;
    assert_eq!(other.unwrap(), Err(UploadRefused::OffsetMismatch(4)));
    assert_eq!(
        create(&s, &new_upload(2, a, 10), one_at_a_time).await,
        Err(UploadRefused::TooManyUnfinished)
    );

    let done = s
        .advance_upload(step(1, H1, 4, 10, later))
        .await
        .unwrap()
        .unwrap();
    let want = Upload {
        offset: 10,
        completed_ms: Some(later),
        expires_ms: later + 30 * DAY,
        ..new_upload(1, a, 10)
    };
    assert_eq!(done, want);
    assert_eq!(s.upload(&id(1)).await.unwrap(), Some(want));
    // Complete: immutable, and no longer one of the unfinished (its bytes still count).
    let again = s.advance_upload(step(1, H1, 10, 10, later)).await.unwrap();
    assert_eq!(again, Err(UploadRefused::LeaseLost));
    create(&s, &new_upload(2, a, 90), one_at_a_time)
        .await
        .unwrap();
    assert_eq!(
        s.attachment_totals().await.unwrap(),
        AttachmentTotals {
            complete: 1,
            unfinished: 1,
            bytes: 10
        }
    );
}

#[tokio::test]
async fn a_lease_run_out_lets_another_request_take_the_upload_and_the_first_loses_it() {
    let Some((s, _)) = store().await else { return };
    let a = account(&s, "a").await;
    create(&s, &new_upload(1, a, 10), LIMITS).await.unwrap();
    let claim = |offset, holder, now_ms: u64| {
        let s = s.clone();
        async move {
            let l = lease(holder, now_ms + 1_000);
            s.claim_upload(&id(1), a, offset, l, now_ms).await.unwrap()
        }
    };
    assert!(claim(0, H1, 2_000).await.is_ok());
    assert_eq!(
        claim(0, H2, 2_999).await,
        Err(UploadRefused::OffsetMismatch(0))
    );
    assert!(claim(0, H2, 3_000).await.is_ok());
    let lost = s.advance_upload(step(1, H1, 0, 5, 3_000)).await.unwrap();
    assert_eq!(lost, Err(UploadRefused::LeaseLost));
    s.advance_upload(step(1, H2, 0, 5, 3_000))
        .await
        .unwrap()
        .unwrap();

    // Giving back a lease one no longer holds changes nothing; the holder's frees it at once.
    s.release_upload(&id(1), H1).await.unwrap();
    assert_eq!(
        claim(5, H3, 3_100).await,
        Err(UploadRefused::OffsetMismatch(5))
    );
    s.release_upload(&id(1), H2).await.unwrap();
    assert!(claim(5, H3, 3_100).await.is_ok());

    // A request's last step gives the lease back with the offset it writes.
    let last = Advance {
        release: true,
        ..step(1, H3, 5, 7, 3_200)
    };
    s.advance_upload(last).await.unwrap().unwrap();
    assert!(claim(7, H1, 3_300).await.is_ok());
}

#[tokio::test]
async fn an_upload_is_deleted_by_its_owner_or_the_sweep_never_by_another_account() {
    let Some((s, _)) = store().await else { return };
    let (a, b) = (account(&s, "a").await, account(&s, "b").await);
    for n in 1..=3 {
        create(&s, &new_upload(n, a, 10), LIMITS).await.unwrap();
    }
    assert!(!s.delete_upload(&id(1), Some(b)).await.unwrap());
    assert!(s.upload(&id(1)).await.unwrap().is_some());
    assert!(s.delete_upload(&id(1), Some(a)).await.unwrap());
    assert!(!s.delete_upload(&id(1), Some(a)).await.unwrap());
    assert_eq!(s.upload(&id(1)).await.unwrap(), None);

    // A writer whose upload is deleted meanwhile loses its lease.
    let now = T0 + 1;
    let l = lease(H1, now + 1_000);
    s.claim_upload(&id(2), a, 0, l, now).await.unwrap().unwrap();
    assert!(s.delete_upload(&id(2), None).await.unwrap());
    let lost = s.advance_upload(step(2, H1, 0, 5, now)).await.unwrap();
    assert_eq!(lost, Err(UploadRefused::LeaseLost));
    assert_eq!(s.uploads_of(a).await.unwrap(), [id(3)]);
}

#[tokio::test]
async fn the_sweep_finds_expired_uploads_oldest_expiry_first() {
    let Some((s, _)) = store().await else { return };
    let a = account(&s, "a").await;
    let many = UploadLimits {
        max_unfinished: 10,
        quota_bytes: 1_000,
    };
    for (n, expires_ms) in [(1, 300), (2, 100), (3, 200), (4, 100), (5, 900)] {
        let u = Upload {
            expires_ms,
            ..new_upload(n, a, 10)
        };
        create(&s, &u, many).await.unwrap();
    }
    let ids = |found: Vec<Upload>| found.iter().map(|u| u.id[0]).collect::<Vec<_>>();
    assert_eq!(ids(s.expired_uploads(300, 10).await.unwrap()), [2, 4, 3, 1]);
    assert_eq!(ids(s.expired_uploads(300, 2).await.unwrap()), [2, 4]);
    assert_eq!(ids(s.expired_uploads(99, 10).await.unwrap()), [0u8; 0]);
}

#[tokio::test]
async fn deleting_an_account_removes_its_upload_records() {
    let Some((s, _)) = store().await else { return };
    let (a, b) = (account(&s, "a").await, account(&s, "b").await);
    create(&s, &new_upload(1, a, 10), LIMITS).await.unwrap();
    create(&s, &new_upload(2, a, 10), LIMITS).await.unwrap();
    create(&s, &new_upload(3, b, 10), LIMITS).await.unwrap();
    let now = T0 + 1;
    s.claim_upload(&id(1), a, 0, lease(H1, now + 1), now)
        .await
        .unwrap()
        .unwrap();
    s.advance_upload(step(1, H1, 0, 10, now))
        .await
        .unwrap()
        .unwrap();

    s.delete_user(a).await.unwrap();
    assert_eq!(s.uploads_of(a).await.unwrap(), Vec::<AttachmentId>::new());
    assert_eq!(s.upload(&id(1)).await.unwrap(), None);
    assert_eq!(s.upload(&id(2)).await.unwrap(), None);
    assert_eq!(s.uploads_of(b).await.unwrap(), [id(3)]);
    let totals = s.attachment_totals().await.unwrap();
    assert_eq!((totals.complete, totals.unfinished), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_claims_racing_on_two_instances_exactly_one_wins() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let a = account(&s1, "a").await;
    create(&s1, &new_upload(1, a, 10), LIMITS).await.unwrap();
    let now = T0 + 1;
    let claims: Vec<_> = (0..16u64)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            // Half of the holders in the upper half of u64.
            let holder = (i << 63) | (i + 1);
            tokio::spawn(async move {
                let l = lease(holder, now + 60_000);
                s.claim_upload(&id(1), a, 0, l, now).await.unwrap()
            })
        })
        .collect();
    let mut won = 0;
    for c in claims {
        match c.await.unwrap() {
            Ok(_) => won += 1,
            Err(refused) => assert_eq!(refused, UploadRefused::OffsetMismatch(0)),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creations_racing_on_two_instances_stay_within_the_cap_and_the_quota() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let (a, b) = (account(&s1, "a").await, account(&s1, "b").await);
    // a runs into the count cap, b into the quota.
    let capped = UploadLimits {
        max_unfinished: 5,
        quota_bytes: 1_000,
    };
    let quota = UploadLimits {
        max_unfinished: 100,
        quota_bytes: 50,
    };
    let creates: Vec<_> = (0..40u8)
        .map(|n| {
            let s = if n % 2 == 0 { s1.clone() } else { s2.clone() };
            let (owner, limits) = if n < 20 { (a, capped) } else { (b, quota) };
            tokio::spawn(async move { s.create_upload(&new_upload(n, owner, 10), limits).await })
        })
        .collect();
    let mut created = 0;
    for (n, c) in creates.into_iter().enumerate() {
        let refusal = if n < 20 {
            UploadRefused::TooManyUnfinished
        } else {
            UploadRefused::Quota
        };
        match c.await.unwrap().unwrap() {
            Ok(()) => created += 1,
            Err(refused) => assert_eq!(refused, refusal, "upload {n}"),
        }
    }
    assert_eq!(created, 10);
    assert_eq!(s1.uploads_of(a).await.unwrap().len(), 5);
    assert_eq!(s2.uploads_of(b).await.unwrap().len(), 5);
}
