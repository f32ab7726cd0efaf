//! Backup and restore in the sled store's format: a sled backup restored here backs up to the
//! same text (linked devices and attachment records too, and back to sled), a restore is all or
//! nothing into an empty database, and new ids continue above.

use super::{fresh_database, one, store};
use crate::models::{Device, Message};
use crate::storage::attachments::{UploadLimits, UploadRefused};
use crate::storage::fixtures::{
    at, device, ec, kyber, limits, linked_accounts, primary, upload, HASH,
};
use crate::storage::sled_store::temp;
use crate::storage::{restore_dir, BackupSummary, ResetGrant, Storage};

fn to(name: &str, registration_id: u32) -> Message {
    Message {
        id: 0,
        sender_address: "alice.1".into(),
        sender_registration_id: 9,
        content: format!(r#"{{"registrationId":{registration_id}}}"#),
        recipient_address: format!("{name}.1"),
        timestamp: 5,
    }
}

/// A sled store with two users (devices, both kinds of keys, queued messages, attachments: alice
/// one complete and one under way, bob one just created), an invite, a pending reset, and a
/// deleted account; answers its backup.
async fn sled_backup() -> (tempfile::TempDir, Vec<u8>, BackupSummary) {
    let (dir, a) = temp();
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let u = a
            .create_user(name, &format!("{name}@x.org"), HASH.into(), None)
            .await
            .unwrap();
        let d = Device {
            last_resort_kyber: Some(kyber(900)),
            ..device(&format!("{name}.1"))
        };
        a.create_device(u.id, &d, &ec(1..=3), &[kyber(1), kyber(2)])
            .await
            .unwrap();
        ids.push(u.id);
    }
    let gone = a.create_user("gone", "", HASH.into(), None).await.unwrap();
    a.delete_user(gone.id).await.unwrap();
    for (id, name) in ids.iter().zip(["alice", "bob"]) {
        a.enqueue(primary(*id), to(name, 7), 10).await.unwrap();
        a.enqueue(primary(*id), to(name, 7), 10).await.unwrap();
    }
    a.pop_prekeys(primary(ids[0])).await.unwrap();
    a.create_invite(&[3; 32], 11).await.unwrap();
    let grant = ResetGrant {
        user_id: ids[1],
        token_version: 2,
        expires_at: 1 << 40,
    };
    a.put_reset_token(&[4; 32], &grant).await.unwrap();
    let store = Storage::Sled(a.clone());
    upload(&store, ids[0], 1, 1000, 1000).await;
    upload(&store, ids[0], 2, 1000, 400).await;
    upload(&store, ids[1], 3, 50, 0).await;
    let mut out = Vec::new();
    let sum = a.backup(&mut out).await.unwrap();
    (dir, out, sum)
}

#[tokio::test]
async fn a_sled_backup_restored_here_backs_up_to_the_same_text_and_ids_continue_above() {
    let Some((pg, _)) = store().await else { return };
    let (_dir, first, sum) = sled_backup().await;
    assert_eq!(
        (sum.users, sum.messages, sum.reset_tokens, sum.attachments),
        (2, 4, 1, 3)
    );
    let restored = pg.restore(&mut first.as_slice(), &limits()).await.unwrap();
    assert_eq!(restored, sum);
    let mut second = Vec::new();
    assert_eq!(pg.backup(&mut second).await.unwrap(), sum);
    assert_eq!(
        String::from_utf8(first).unwrap(),
        String::from_utf8(second).unwrap()
    );
    let alice = pg.user_by_name("ALICE").await.unwrap().unwrap();
    assert_eq!(pg.stock(one(alice.id)).await.unwrap().prekeys, 2);
    let popped = pg.pop_prekeys(one(alice.id)).await.unwrap();
    assert!(popped.prekey.is_some() && popped.kyber.is_some());
    let top = pg.messages(one(alice.id), 0, 10).await.unwrap();
    assert_eq!(top.len(), 2);
    let carol = pg
        .create_user("carol", "", HASH.into(), None)
        .await
        .unwrap();
    let last = top.last().unwrap().id;
    assert!(carol.id > last, "user id {} is not above {last}", carol.id);
    pg.create_device(carol.id, &device("carol.1"), &[], &[])
        .await
        .unwrap();
    let m = pg.enqueue(one(carol.id), to("carol", 7), 10).await.unwrap();
    assert!(m.id > last, "message id {} is not above {last}", m.id);
}

#[tokio::test]
async fn attachment_records_come_here_as_sled_kept_them_and_count_against_the_limits() {
    let Some((pg, _)) = store().await else { return };
    let (_dir, first, _) = sled_backup().await;
    pg.restore(&mut first.as_slice(), &limits()).await.unwrap();
    let alice = pg.user_by_name("alice").await.unwrap().unwrap();
    let mut mine = pg.uploads_of(alice.id).await.unwrap();
    mine.sort();
    assert_eq!(mine, [[1; 16], [2; 16]]);
    let done = pg.upload(&[1; 16]).await.unwrap().unwrap();
    assert_eq!((done.offset, done.is_complete()), (1000, true));
    let half = pg.upload(&[2; 16]).await.unwrap().unwrap();
    assert_eq!((half.offset, half.is_complete()), (400, false));
    let totals = pg.attachment_totals().await.unwrap();
    assert_eq!(
        (totals.complete, totals.unfinished, totals.bytes),
        (1, 2, 1400)
    );
    // Alice holds 2,000 bytes and one unfinished upload.
    let two = UploadLimits {
        max_unfinished: 2,
        quota_bytes: 3000,
    };
    let mut next = half.clone();
    for (seed, length, answer) in [
        (4, 900, Ok(())),
        (5, 1, Err(UploadRefused::TooManyUnfinished)),
    ] {
        next.id = [seed; 16];
        next.length = length;
        next.offset = 0;
        assert_eq!(pg.create_upload(&next, two).await.unwrap(), answer);
    }
    // The sweep finds them by expiry.
    assert_eq!(
        pg.expired_uploads(u64::MAX >> 2, 10).await.unwrap().len(),
        4
    );
}

#[tokio::test]
async fn a_database_with_records_is_refused_and_left_as_it_was() {
    let Some((pg, _)) = store().await else { return };
    let (_dir, backup, _) = sled_backup().await;
    pg.create_user("zed", "", HASH.into(), None).await.unwrap();
    let err = pg.restore(&mut backup.as_slice(), &limits()).await;
    assert!(err.unwrap_err().to_string().contains("empty database"));
    assert_eq!(pg.totals().await.unwrap().users, 1);
}

#[tokio::test]
async fn a_bad_record_rolls_the_whole_restore_back() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let pg = super::PgStore::connect(&url).await.unwrap();
    let (_dir, backup, _) = sled_backup().await;
    let text = String::from_utf8(backup).unwrap();
    // The last message names a message id of the first: refused on its line, after the rest.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let first_message = lines
        .iter()
        .position(|l| l.contains(r#""type":"message""#))
        .unwrap();
    let end = lines.len() - 1;
    lines.insert(end, lines[first_message].clone());
    lines[end + 1] = format!(r#"{{"type":"end","records":{}}}"#, end + 1);
    let crafted = lines.join("\n") + "\n";
    let err = pg
        .restore(&mut crafted.as_bytes(), &limits())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert_eq!(pg.totals().await.unwrap(), Default::default());
    // So is an attachment of an account that is not in the file, the last record of all.
    let orphan = text.replace(r#""owner":2,"#, r#""owner":9,"#);
    assert_ne!(orphan, text);
    let err = pg
        .restore(&mut orphan.as_bytes(), &limits())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not restored"), "{err}");
    assert_eq!(pg.totals().await.unwrap(), Default::default());
    assert_eq!(pg.attachment_totals().await.unwrap(), Default::default());
    // A cut-off file is refused too, and the database still takes the good one.
    let cut: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    assert!(pg.restore(&mut cut.as_bytes(), &limits()).await.is_err());
    assert_eq!(pg.totals().await.unwrap(), Default::default());
    pg.restore(&mut text.as_bytes(), &limits()).await.unwrap();
    assert_eq!(pg.totals().await.unwrap().users, 2);
}

/// Device `id` of user `user`.
async fn backup_of(s: &Storage) -> String {
    let mut out = Vec::new();
    s.backup(&mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

/// Restores `text` into a new sled data dir, and answers that store.
async fn sled_restore(text: &str) -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let options = crate::storage::StorageOptions {
        cache_capacity: 8 << 20,
        flush_timeout: std::time::Duration::from_secs(30),
    };
    let db = dir.path().join("db");
    restore_dir(&db, &mut text.as_bytes(), &limits(), &options)
        .await
        .unwrap();
    // The restore's store lets go of the database's lock once its threads have stopped.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Storage::open_sled(&db, &options) {
            Ok(s) => return (dir, s),
            Err(e) if std::time::Instant::now() > deadline => panic!("open: {e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Each of alice's devices has its own keys and queue.
async fn assert_alice_served(s: &Storage) {
    let devices = s.devices(1).await.unwrap();
    let ids: Vec<(u32, u32)> = devices
        .iter()
        .map(|d| (d.id(), d.registration_id))
        .collect();
    assert_eq!(ids, [(1, 7), (2, 12), (3, 11)]);
    for (id, prekeys, kyber) in [(1, 3, 1), (2, 2, 1), (3, 1, 0)] {
        let stock = s.stock(at(1, id)).await.unwrap();
        assert_eq!(
            (stock.prekeys, stock.kyber_prekeys),
            (prekeys, kyber),
            "device {id}"
        );
        let queue = s.messages(at(1, id), 0, 10).await.unwrap();
        assert_eq!(queue.len(), 1, "device {id}");
        assert_eq!(queue[0].recipient_address, format!("alice.{id}"));
    }
    let popped = s.pop_prekeys(at(1, 2)).await.unwrap();
    assert_eq!(popped.prekey.map(|k| k.key_id), Some(1));
    assert_eq!(popped.kyber.map(|k| k.key_id), Some(5));
}

#[tokio::test]
async fn linked_devices_go_from_sled_to_here_and_back_to_the_same_text() {
    let Some((pg, _)) = store().await else { return };
    let (_dir, sled) = temp();
    let sled = Storage::Sled(sled);
    linked_accounts(&sled).await;
    let first = backup_of(&sled).await;
    assert!(first.contains(r#""linked":true"#) && first.contains(r#""device":3"#));
    let sum = pg.restore(&mut first.as_bytes(), &limits()).await.unwrap();
    assert_eq!(
        (sum.devices, sum.prekeys, sum.kyber_prekeys, sum.messages),
        (4, 8, 2, 4)
    );
    let pg = Storage::Postgres(pg);
    let second = backup_of(&pg).await;
    assert_eq!(first, second);
    // And back to sled, through PostgreSQL's file.
    let (_dir2, again) = sled_restore(&second).await;
    assert_eq!(backup_of(&again).await, first);
    assert_alice_served(&pg).await;
    assert_alice_served(&again).await;
}

#[tokio::test]
async fn linked_devices_made_here_back_up_and_restore_to_the_same_text() {
    let Some((a, _)) = store().await else { return };
    let a = Storage::Postgres(a);
    linked_accounts(&a).await;
    let first = backup_of(&a).await;
    let Some((b, _)) = store().await else { return };
    // A linked device before its primary is refused, and nothing stays.
    let orphan: Vec<&str> = first
        .lines()
        .filter(|l| !l.contains(r#""address":"alice.1""#))
        .collect();
    let end = format!(r#"{{"type":"end","records":{}}}"#, orphan.len() - 1);
    let orphan = orphan[..orphan.len() - 1].join("\n") + "\n" + &end + "\n";
    let err = b
        .restore(&mut orphan.as_bytes(), &limits())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("primary device"), "{err}");
    assert_eq!(b.totals().await.unwrap(), Default::default());

    b.restore(&mut first.as_bytes(), &limits()).await.unwrap();
    let b = Storage::Postgres(b);
    assert_eq!(backup_of(&b).await, first);
    assert_alice_served(&b).await;
    let newest = b.messages(at(1, 3), 0, 10).await.unwrap()[0].id;
    let carol = b.create_user("carol", "", HASH.into(), None).await.unwrap();
    assert!(
        carol.id > newest,
        "user id {} is not above {newest}",
        carol.id
    );
}

#[tokio::test]
async fn a_primary_whose_id_is_not_1_gets_its_keys_and_queue_back() {
    let Some((pg, _)) = store().await else { return };
    let (_dir, sled) = temp();
    let sled = Storage::Sled(sled);
    let zed = sled
        .create_user("zed", "", HASH.into(), None)
        .await
        .unwrap();
    sled.create_device(zed.id, &device("zed.3"), &ec(1..=2), &[kyber(1)])
        .await
        .unwrap();
    let m = Message {
        recipient_address: "zed.3".into(),
        ..to("zed", 7)
    };
    sled.enqueue(at(zed.id, 3), m, 10).await.unwrap();
    let first = backup_of(&sled).await;
    pg.restore(&mut first.as_bytes(), &limits()).await.unwrap();
    let pg = Storage::Postgres(pg);
    assert_eq!(backup_of(&pg).await, first);
    let stock = pg.stock(at(zed.id, 3)).await.unwrap();
    assert_eq!((stock.prekeys, stock.kyber_prekeys), (2, 1));
    assert_eq!(pg.messages(at(zed.id, 3), 0, 10).await.unwrap().len(), 1);
}
