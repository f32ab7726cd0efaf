//! The typed client (`signal_server::client`, feature `client`) against the real server: every
//! route through its typed method, refusals as typed values, live delivery, and the raw escape
//! hatch.

use std::time::Duration;

use crate::helpers::{TestServer, PASSWORD};
use reqwest::Method;
use signal_server::client::{
    Client, Deleted, Error, Frame, KyberUpload, NewUser, PreKey, Session, SignedPreKey, WsAuth,
};
use signal_server::crypto::KeyPair;

/// Generous: only a hung server trips it.
const WAIT: Duration = Duration::from_secs(30);

/// A registered, logged-in user with a device of `reg_id` (EC prekeys 1..=3, Kyber 1..=2 and a
/// last-resort Kyber key), and a client carrying their token.
async fn user(server: &TestServer, username: &str, reg_id: u32) -> Client {
    user_with_identity(server, username, reg_id).await.0
}

async fn user_with_identity(server: &TestServer, username: &str, reg_id: u32) -> (Client, KeyPair) {
    let user = server.user_with_device(username, reg_id, 3, 2).await;
    (server.client_of(&user), user.identity)
}

fn refusal(result: Result<impl std::fmt::Debug, Error>) -> (u16, String) {
    let e = result.expect_err("a refusal");
    let (status, code) = e
        .status_code()
        .unwrap_or_else(|| panic!("not a refusal: {e}"));
    (status, code.to_string())
}

async fn next(session: &mut Session) -> Frame {
    let frame = tokio::time::timeout(WAIT, session.next()).await;
    frame
        .expect("a frame in time")
        .expect("frame")
        .expect("open")
}

#[tokio::test]
async fn accounts_routes_through_the_typed_client() {
    let server = TestServer::start().await;
    let anon = Client::new(&server.base).unwrap();
    anon.health().await.unwrap();
    let new = NewUser {
        username: "Carol".into(),
        password: PASSWORD.into(),
        email: Some("carol@example.org".into()),
        invite: None,
    };
    let info = anon.register(&new).await.unwrap();
    assert_eq!(
        (info.username.as_str(), info.email.as_str()),
        ("Carol", "carol@example.org")
    );

    let token = anon.login("carol", PASSWORD).await.unwrap();
    assert_eq!(anon.verify(&token).await.unwrap(), token);
    let fresh = anon.refresh(&token).await.unwrap();
    let carol = anon.with_token(&fresh);
    assert_eq!(carol.me().await.unwrap(), info);

    anon.reset("carol@example.org").await.unwrap();
    let unknown_uid = anon
        .reset_confirm("AAAA", "nope", "another-Voyage-43")
        .await;
    // Every bad uid/token pair answers alike (docs/API.md, password reset).
    assert_eq!(refusal(unknown_uid), (400, "invalid_token".into()));

    let new_password = "another-Voyage-43";
    carol.change_password(PASSWORD, new_password).await.unwrap();
    assert_eq!(refusal(carol.me().await), (401, "not_authenticated".into()));
    let carol = anon.with_token(&anon.login("carol", new_password).await.unwrap());
    carol.delete_me(new_password).await.unwrap();
    assert_eq!(
        refusal(anon.login("carol", new_password).await),
        (400, "invalid_credentials".into())
    );
}

#[tokio::test]
async fn device_key_and_message_routes_through_the_typed_client() {
    let server = TestServer::start().await;
    let alice = user(&server, "alice", 1717).await;
    let (bob, bob_identity) = user_with_identity(&server, "Bob", 4242).await;

    let device = bob.device().await.unwrap();
    assert_eq!(
        (device.address.as_str(), device.pre_key_count),
        ("Bob.1", 3)
    );
    let stock = bob.stock(4242).await.unwrap();
    assert_eq!((stock.pre_key_count, stock.kyber_pre_key_count), (3, 2));

    // Bundles hand out the lowest ids first; the name is matched case-insensitively.
    let bundle = alice.bundle("bob", 1717).await.unwrap();
    assert_eq!(bundle.registration_id, 4242);
    assert_eq!(bundle.identity_key, device.identity_key);
    assert_eq!(bundle.pre_key.map(|k| k.key_id), Some(1));
    assert_eq!(bundle.kyber_pre_key.map(|k| k.key_id), Some(1));

    let identity = KeyPair::generate();
    let other = alice.with_token(bob.token().unwrap());
    // Bob's keys must be signed by Bob's identity: a foreign signature is refused, typed.
    let foreign = SignedPreKey::generate_ec(&identity, 2);
    let refused = other
        .upload_signed_prekey(4242, &foreign)
        .await
        .unwrap_err();
    let refused = refused.refusal().unwrap();
    assert_eq!(
        (refused.status, refused.code.as_str()),
        (400, "invalid_data")
    );
    assert!(refused.errors.is_some(), "{refused:?}");

    let own = SignedPreKey::generate_ec(&bob_identity, 2);
    let stored = bob.upload_signed_prekey(4242, &own).await.unwrap();
    assert_eq!(stored.code, "signed_prekey_stored");
    assert_eq!(bob.device().await.unwrap().signed_pre_key_id, 2);
    let upload = KyberUpload {
        kyber_pre_keys: vec![],
        last_resort_kyber_pre_key: Some(SignedPreKey::random_kyber(&bob_identity, 101)),
    };
    let stored = bob.upload_kyber(4242, &upload).await.unwrap();
    assert_eq!(stored.code, "kyber_prekeys_stored");
    let stored = bob
        .upload_prekeys(4242, &[PreKey::generate(7)])
        .await
        .unwrap();
    assert_eq!(stored.code, "prekeys_stored");
    // An upload with neither part is an empty object: the wrong shape for the route.
    let empty = bob.upload_kyber(4242, &KyberUpload::default()).await;
    assert_eq!(refusal(empty), (403, "incorrect_arguments".into()));
    let upload = KyberUpload {
        kyber_pre_keys: vec![SignedPreKey::random_kyber(&identity, 9)],
        last_resort_kyber_pre_key: None,
    };
    assert_eq!(refusal(bob.upload_kyber(4242, &upload).await).0, 400);
    assert_eq!(
        refusal(bob.stock(1717).await),
        (403, "device_changed".into())
    );

    let text = crate::helpers::message_text(4242, "hi");
    let sent = alice.send(1717, "bob", &text).await.unwrap();
    assert_eq!(
        (sent.sender_address.as_str(), sent.content.as_str()),
        ("alice.1", &*text)
    );
    alice.send(1717, "bob", &text).await.unwrap();
    let queue = bob.fetch(4242, Some(1)).await.unwrap();
    assert_eq!(queue, vec![sent.clone()]);
    assert_eq!(bob.fetch(4242, None).await.unwrap().len(), 2);
    assert_eq!(
        refusal(bob.fetch(4242, Some(0)).await),
        (400, "invalid_data".into())
    );

    let wrong_owner = alice.delete_messages(1717, &[sent.id]).await.unwrap();
    assert_eq!(wrong_owner, vec![Deleted::NotMessageOwner]);
    let deleted = bob.delete_messages(4242, &[sent.id, 999]).await.unwrap();
    assert_eq!(deleted, vec![Deleted::Success, Deleted::NonExistent]);

    bob.delete_device().await.unwrap();
    assert_eq!(refusal(bob.device().await), (400, "no_device".into()));
}

#[tokio::test]
async fn throttled_refusals_carry_retry_after() {
    // Rate limits on: register, login and reset share 20 per client IP, then 1 every 6 s.
    let server = TestServer::start_with(&[]).await;
    let anon = Client::new(&server.base).unwrap();
    let mut last = None;
    for _ in 0..25 {
        match anon.login("nobody", PASSWORD).await.unwrap_err() {
            Error::Refused(r) if r.status == 429 => {
                last = Some(r);
                break;
            }
            e => assert_eq!(e.status_code(), Some((400, "invalid_credentials"))),
        }
    }
    let refusal = last.expect("throttled within 25 logins");
    assert_eq!(refusal.code, "throttled");
    assert!(refusal.retry_after.is_some_and(|s| s > 0), "{refusal:?}");
}

#[tokio::test]
async fn websocket_session_gives_typed_frames_with_either_auth() {
    let server = TestServer::start().await;
    let alice = user(&server, "alice", 1717).await;
    let bob = user(&server, "bob", 4242).await;
    let queued = alice
        .send(1717, "bob", &crate::helpers::message_text(4242, "1"))
        .await
        .unwrap();

    let mut live = bob.connect(4242, WsAuth::Query).await.unwrap();
    let message = Frame::Message {
        message: queued.clone(),
    };
    assert_eq!(next(&mut live).await, message);
    assert_eq!(next(&mut live).await, Frame::QueueEmpty);
    let new = alice
        .send(1717, "bob", &crate::helpers::message_text(4242, "2"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut live).await,
        Frame::Message {
            message: new.clone()
        }
    );
    live.ack(&[queued.id, new.id]).await.unwrap();
    live.close().await.unwrap();

    // The acks are applied in order with the connection; a fresh one finds the queue empty.
    let mut live = bob.connect(4242, WsAuth::Header).await.unwrap();
    assert_eq!(next(&mut live).await, Frame::QueueEmpty);
    live.close().await.unwrap();

    let refused = bob.with_token("forged").connect(4242, WsAuth::Header).await;
    assert_eq!(
        refusal(refused.map(|_| ())),
        (401, "not_authenticated".into())
    );
    assert_eq!(
        refusal(bob.connect(1717, WsAuth::Query).await.map(|_| ())).0,
        403
    );
}

#[tokio::test]
async fn raw_sends_what_it_is_given() {
    let server = TestServer::start().await;
    let anon = Client::new(&server.base).unwrap();
    let answer = anon
        .raw(
            Method::POST,
            "/auth/users",
            b"{".to_vec(),
            &[("content-type", "application/json")],
        )
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 400);
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["code"], "malformed_json");

    // An explicit Authorization header wins over the client's token.
    let bob = user(&server, "bob", 4242).await;
    let answer = bob
        .raw(
            Method::GET,
            "/auth/users/me",
            Vec::new(),
            &[("authorization", "Bearer x")],
        )
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 401);
    assert!(answer.headers.contains_key("www-authenticate"));
    let answer = bob
        .raw(Method::GET, "/auth/users/me", Vec::new(), &[])
        .await
        .unwrap();
    assert_eq!(answer.status.as_u16(), 200);
}
