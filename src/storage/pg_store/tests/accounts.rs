//! Accounts, reset tokens and invites.

use super::*;

#[tokio::test]
async fn usernames_and_emails_are_unique_case_insensitively() {
    let Some((s, _)) = store().await else { return };
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
    // "No email" is not an email: many users have none.
    s.create_user("carol", "", "h".into(), None).await.unwrap();
    s.create_user("dave", "", "h".into(), None).await.unwrap();
    assert_eq!(s.user_by_name("ALICE").await.unwrap().unwrap().id, a.id);
    assert_eq!(
        s.user_by_email("a@X.ORG").await.unwrap().unwrap().username,
        "Alice"
    );
    assert!(s.user_by_email("").await.unwrap().is_none());
    assert_eq!(s.user(a.id).await.unwrap().unwrap().email, "a@x.org");
    assert!(s.user(a.id + 1000).await.unwrap().is_none());
    let page = s.users_page(0, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["Alice", "carol"]
    );
    let rest = s.users_page(page[1].id, 10).await.unwrap();
    assert_eq!(
        rest.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["dave"]
    );
}

#[tokio::test]
async fn a_password_change_bumps_the_token_version() {
    let Some((s, _)) = store().await else { return };
    let a = s.create_user("a", "", "old".into(), None).await.unwrap();
    assert_eq!(a.token_version, 0);
    let changed = s.set_password(a.id, "new".into()).await.unwrap();
    assert_eq!(
        (changed.password_hash.as_str(), changed.token_version),
        ("new", 1)
    );
    assert_eq!(s.user(a.id).await.unwrap().unwrap().token_version, 1);
    assert!(matches!(
        s.set_password(a.id + 1, "x".into()).await,
        Err(StoreError::NoUser)
    ));
}

#[tokio::test]
async fn deleting_a_user_removes_their_device_keys_and_queue_but_not_what_they_sent() {
    let Some((s, _)) = store().await else { return };
    let a = s
        .create_user("a", "a@x.org", "h".into(), None)
        .await
        .unwrap();
    s.create_device(a.id, &with_last_resort("a.1"), &ec(1..=5), &kyber(1..=5))
        .await
        .unwrap();
    let b = user_with_device(&s, "b").await;
    s.enqueue(one(a.id), message("to a", 1), 10).await.unwrap();
    let sent = s.enqueue(one(b), message("from a", 1), 10).await.unwrap();

    s.delete_user(a.id).await.unwrap();
    assert!(s.user(a.id).await.unwrap().is_none());
    assert!(s.device(a.id).await.unwrap().is_none());
    assert_eq!(s.stock(one(a.id)).await.unwrap().prekeys, 0);
    assert_eq!(s.queue_len(one(a.id)).await.unwrap(), 0);
    assert_eq!(s.message(one(b), sent.id).await.unwrap(), Some(sent));
    let totals = s.totals().await.unwrap();
    assert_eq!(
        (totals.users, totals.prekeys, totals.kyber_prekeys),
        (1, 0, 0)
    );
    assert!(matches!(s.delete_user(a.id).await, Err(StoreError::NoUser)));
    // The name and email are free again; the id is never reused.
    let again = s
        .create_user("A", "A@x.org", "h".into(), None)
        .await
        .unwrap();
    assert!(again.id > b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_token_is_taken_once_even_by_concurrent_takers() {
    let Some((s, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let grant = ResetGrant {
        user_id: 9,
        token_version: 2,
        expires_at: 100,
    };
    s.put_reset_token(b"hash", &grant).await.unwrap();
    assert_eq!(s.reset_grant(b"hash").await.unwrap(), Some(grant.clone()));
    assert_eq!(s2.reset_grant(b"hash").await.unwrap(), Some(grant.clone()));
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 { s.clone() } else { s2.clone() };
            tokio::spawn(async move { s.take_reset_token(b"hash").await.unwrap() })
        })
        .collect();
    let mut taken = Vec::new();
    for t in takers {
        taken.extend(t.await.unwrap());
    }
    assert_eq!(taken, [grant]);
    assert_eq!(s.take_reset_token(b"hash").await.unwrap(), None);
}

#[tokio::test]
async fn an_invite_registers_one_user_only() {
    let Some((s, _)) = store().await else { return };
    s.create_user("taken", "", "h".into(), None).await.unwrap();
    s.create_invite(b"inv", 1).await.unwrap();
    // A refused registration does not use the invite up.
    assert!(matches!(
        s.create_user("Taken", "", "h".into(), Some(b"inv")).await,
        Err(StoreError::UsernameTaken)
    ));
    s.create_user("one", "", "h".into(), Some(b"inv"))
        .await
        .unwrap();
    assert!(matches!(
        s.create_user("two", "", "h".into(), Some(b"inv")).await,
        Err(StoreError::InvalidInvite)
    ));
    assert!(s.user_by_name("two").await.unwrap().is_none());
    assert_eq!(s.totals().await.unwrap().invites, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_registrations_of_one_name_on_two_instances_one_wins() {
    let Some((s1, url)) = store().await else {
        return;
    };
    let s2 = PgStore::connect(&url).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            let name = if i % 3 == 0 { "Same" } else { "same" };
            tokio::spawn(async move { s.create_user(name, "", "h".into(), None).await })
        })
        .collect();
    let (mut won, mut taken) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::UsernameTaken) => taken += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((won, taken), (1, 31));
}
