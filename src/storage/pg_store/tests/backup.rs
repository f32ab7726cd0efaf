//! Backup and restore in the sled store's format: a sled backup restored here backs up to the
//! same text, a restore is all or nothing into an empty database, and new ids continue above.

use super::{fresh_database, one, store};
use crate::models::{Device, Message, SignedPreKey};
use crate::storage::fixtures::{device, ec, primary};
use crate::storage::sled_store::temp;
use crate::storage::{BackupSummary, ResetGrant, RestoreLimits};

const HASH: &str = "pbkdf2_sha256$1000$c2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

fn limits() -> RestoreLimits {
    RestoreLimits {
        max_message_bytes: 65_536,
        max_prekeys: 100,
        max_queued_messages: 10,
    }
}

fn kyber(key_id: u32) -> SignedPreKey {
    let mut public_key = vec![8u8; 1569];
    public_key[1] = 0;
    SignedPreKey {
        key_id,
        public_key,
        signature: vec![1; 64],
    }
}

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

/// A sled store with two users (devices, both kinds of keys, queued messages), an invite, a
/// pending reset, and a deleted account; answers its backup.
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
    let mut out = Vec::new();
    let sum = a.backup(&mut out).await.unwrap();
    (dir, out, sum)
}

#[tokio::test]
async fn a_sled_backup_restored_here_backs_up_to_the_same_text_and_ids_continue_above() {
    let Some((pg, _)) = store().await else { return };
    let (_dir, first, sum) = sled_backup().await;
    assert_eq!((sum.users, sum.messages, sum.reset_tokens), (2, 4, 1));
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
    // A cut-off file is refused too, and the database still takes the good one.
    let cut: String = text.lines().take(4).map(|l| format!("{l}\n")).collect();
    assert!(pg.restore(&mut cut.as_bytes(), &limits()).await.is_err());
    assert_eq!(pg.totals().await.unwrap(), Default::default());
    pg.restore(&mut text.as_bytes(), &limits()).await.unwrap();
    assert_eq!(pg.totals().await.unwrap().users, 2);
}
