//! Hostile clients against the password routes, over real HTTP: floods of wrong
//! `current_password`s, a flood of logins against the bounded hashing queue, and guessing at
//! `POST /auth/password/reset/confirm`. Each test counts answers; none measures time.

use crate::helpers::{config_on, TestServer, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use signal_server::handlers::users::issue_reset_token;

const NEW_PASSWORD: &str = "Lighthouse-Quartz-917";

/// Status, `Retry-After` (seconds) and JSON body (`Null` when empty) of one request.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

async fn send(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Answer {
    let mut req = s
        .http
        .request(method.parse().expect("method"), s.url(path))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let text = res.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
    }
}

/// Asserts a 429 `throttled` with a `Retry-After` of at least a second.
fn assert_throttled(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        a.body
    );
    assert_eq!(a.body["code"], "throttled", "{what}: {}", a.body);
    assert!(a.retry_after >= Some(1), "{what}: Retry-After");
}

/// A server whose new password hashes take `iterations` PBKDF2 rounds, with extra flags.
async fn server_hashing(iterations: u32, flags: &[&str]) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let iterations = iterations.to_string();
    let args = [&["--pbkdf2-iterations", iterations.as_str()], flags].concat();
    TestServer::start_config(config_on(dir.path(), &args), dir).await
}

// ---------------------------------------------------------------------------------------------
// current_password: a per-account budget, one check at a time
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_flood_of_wrong_current_passwords_is_throttled_before_hashing() {
    let s = TestServer::start_with(&[]).await;
    let u = s.user("guesser").await;
    let wrong = json!({"current_password": "Wrong-Password-77", "new_password": NEW_PASSWORD});
    let answers = futures_util::future::join_all(
        (0..40).map(|_| send(&s, "POST", "/auth/password", Some(&u.token), wrong.clone())),
    )
    .await;
    let checked = answers
        .iter()
        .filter(|a| a.status == StatusCode::BAD_REQUEST)
        .count();
    for a in answers
        .iter()
        .filter(|a| a.status != StatusCode::BAD_REQUEST)
    {
        assert_throttled(a, "a guess beyond the budget");
    }
    assert!(
        (1..=5).contains(&checked),
        "only the budget of 5 is checked against the hash, got {checked}"
    );

    // Sequential guesses use up what is left of the budget, then every check is refused,
    // the right password and account deletion included (one budget per account).
    let mut refused = None;
    for _ in checked..6 {
        let a = send(&s, "POST", "/auth/password", Some(&u.token), wrong.clone()).await;
        if a.status != StatusCode::BAD_REQUEST {
            refused = Some(a);
            break;
        }
        assert_eq!(a.body["code"], "invalid_data", "{}", a.body);
    }
    assert_throttled(&refused.expect("refused within 5 checks"), "sixth check");
    let right = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let a = send(&s, "POST", "/auth/password", Some(&u.token), right).await;
    assert_throttled(&a, "right password after the budget");
    let delete = json!({"current_password": PASSWORD});
    let a = send(&s, "DELETE", "/auth/users/me", Some(&u.token), delete).await;
    assert_throttled(&a, "account deletion after the budget");

    // A refused request changed nothing; another account has its own budget.
    assert_eq!(s.get("/auth/users/me", &u.token).await.0, StatusCode::OK);
    s.login("guesser", PASSWORD).await;
    let other = s.user("bystander").await;
    let body = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let a = send(&s, "POST", "/auth/password", Some(&other.token), body).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
}

#[tokio::test]
async fn an_account_has_one_password_check_in_flight_at_a_time() {
    // Rate limits off: this bound holds without them.
    let s = TestServer::start().await;
    let u = s.user("hog").await;
    let body = json!({"current_password": PASSWORD});
    let claim = s.app.hasher.claim(u.id).expect("no check in flight yet");
    let a = send(&s, "DELETE", "/auth/users/me", Some(&u.token), body.clone()).await;
    assert_throttled(&a, "a check while another is in flight");
    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let a = send(&s, "POST", "/auth/password", Some(&u.token), change).await;
    assert_throttled(&a, "a change while another check is in flight");
    assert_eq!(s.get("/auth/users/me", &u.token).await.0, StatusCode::OK);

    drop(claim);
    let a = send(&s, "DELETE", "/auth/users/me", Some(&u.token), body).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
}

// ---------------------------------------------------------------------------------------------
// The hashing queue is bounded
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_login_flood_beyond_the_hashing_queue_is_refused_with_503() {
    // Slow hashes (logins of unknown users hash at the configured count) and no rate limits,
    // so only the queue bound can refuse. The server runs one hash per core and lets 2 wait;
    // the flood is larger than that and arrives long before the first hash ends.
    let flags = [
        "--no-rate-limit",
        "--hash-queue",
        "2",
        "--listen",
        "127.0.0.1:0",
    ];
    let s = server_hashing(400_000, &flags).await;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let flood = cores * 2 + 16;
    let answers = futures_util::future::join_all((0..flood).map(|i| {
        let body = json!({"username": format!("nobody{i}"), "password": "Wrong-Password-77"});
        send(&s, "POST", "/auth/jwt/create", None, body)
    }))
    .await;
    let mut refused = 0;
    for a in &answers {
        if a.status == StatusCode::SERVICE_UNAVAILABLE {
            refused += 1;
            assert_eq!(a.body["code"], "unavailable", "{}", a.body);
            assert_eq!(a.retry_after, Some(1), "503 carries Retry-After");
        } else {
            assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
            assert_eq!(a.body["code"], "invalid_credentials", "{}", a.body);
        }
    }
    assert!(refused >= 1, "a flood of {flood} was all queued");

    // The server is not wedged: once the flood is over, hashing works again.
    let body = json!({"username": "nobody", "password": "Wrong-Password-77"});
    let a = send(&s, "POST", "/auth/jwt/create", None, body).await;
    assert_eq!(a.body["code"], "invalid_credentials", "{}", a.body);
}

// ---------------------------------------------------------------------------------------------
// Reset confirm: the token first, one answer for every bad uid/token, the anonymous budget
// ---------------------------------------------------------------------------------------------

async fn confirm(s: &TestServer, uid: &str, token: &str, password: &str) -> Answer {
    let body = json!({"uid": uid, "token": token, "new_password": password});
    send(s, "POST", "/auth/password/reset/confirm", None, body).await
}

/// The `uid` of a reset mail for a user id (base64url of the decimal id, no padding).
fn uid_of(id: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_string())
}

#[tokio::test]
async fn reset_confirm_answers_every_bad_uid_or_token_alike() {
    let s = TestServer::start().await;
    let body =
        json!({"username": "victim", "password": PASSWORD, "email": "secret.mail@example.org"});
    let (status, _) = s.call("POST", "/auth/users", None, Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let victim = s.app.storage.user_by_name("victim").await.unwrap().unwrap();
    let other = s.user("other").await;
    let (uid, token) = issue_reset_token(&s.app, &victim).await.expect("token");
    let other_record = s.app.storage.user(other.id).await.unwrap().unwrap();
    let (_, other_token) = issue_reset_token(&s.app, &other_record)
        .await
        .expect("token");

    // Guesses at the email through the strength rules, unknown and malformed uids, a real
    // token under another uid: one answer for all of them.
    let cases = [
        (uid.clone(), "wrong-token".to_string(), "secret.mail-2024"),
        (uid.clone(), "wrong-token".to_string(), "secret"),
        (uid.clone(), "wrong-token".to_string(), NEW_PASSWORD),
        (uid.clone(), other_token.clone(), NEW_PASSWORD),
        (uid.clone(), String::new(), "x"),
        (uid_of(other.id), token.clone(), NEW_PASSWORD),
        (
            uid_of(victim.id + 1000),
            "wrong-token".to_string(),
            NEW_PASSWORD,
        ),
        (uid_of(victim.id + 1000), token.clone(), "secret.mail-2024"),
        ("!!!".to_string(), "wrong-token".to_string(), NEW_PASSWORD),
        (String::new(), token.clone(), NEW_PASSWORD),
    ];
    let first = confirm(&s, &cases[0].0, &cases[0].1, cases[0].2).await;
    assert_eq!(first.status, StatusCode::BAD_REQUEST, "{}", first.body);
    assert_eq!(first.body["code"], "invalid_token", "{}", first.body);
    for (uid, token, password) in &cases[1..] {
        let a = confirm(&s, uid, token, password).await;
        assert_eq!(
            (a.status, &a.body),
            (first.status, &first.body),
            "uid {uid:?}, token {token:.12?}, password {password:?}"
        );
    }

    // None of that used the token up; a weak password with the right token is refused and
    // leaves it usable too; then it works once.
    let a = confirm(&s, &uid, &token, "secret.mail-2024").await;
    assert_eq!(a.body["code"], "invalid_data", "{}", a.body);
    assert!(!a.body["errors"]["new_password"].is_null(), "{}", a.body);
    let a = confirm(&s, &uid, &token, NEW_PASSWORD).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    let a = confirm(&s, &uid, &token, "Another-Fresh-Pass-31").await;
    assert_eq!((a.status, &a.body), (first.status, &first.body), "reused");
    s.login("victim", NEW_PASSWORD).await;
}

#[tokio::test]
async fn a_token_made_void_by_a_password_change_answers_like_any_bad_token() {
    let s = TestServer::start().await;
    let u = s.user("changer").await;
    let user = s.app.storage.user(u.id).await.unwrap().unwrap();
    let (uid, token) = issue_reset_token(&s.app, &user).await.expect("token");
    let change = json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD});
    let a = send(&s, "POST", "/auth/password", Some(&u.token), change).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    // Even a weak password gets the token answer, not the strength one.
    for password in ["changer1", "Another-Fresh-Pass-31"] {
        let a = confirm(&s, &uid, &token, password).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
        assert_eq!(a.body["code"], "invalid_token", "{password}: {}", a.body);
    }
    s.login("changer", NEW_PASSWORD).await;
}

#[tokio::test]
async fn concurrent_confirms_with_one_token_set_one_password() {
    let s = TestServer::start().await;
    let u = s.user("racer").await;
    let user = s.app.storage.user(u.id).await.unwrap().unwrap();
    let (uid, token) = issue_reset_token(&s.app, &user).await.expect("token");
    let passwords: Vec<String> = (0..8).map(|i| format!("Racing-Lighthouse-{i}7")).collect();
    let answers =
        futures_util::future::join_all(passwords.iter().map(|p| confirm(&s, &uid, &token, p)))
            .await;
    let won: Vec<&String> = passwords
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.status == StatusCode::NO_CONTENT)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(won.len(), 1, "exactly one confirm succeeds");
    for a in answers
        .iter()
        .filter(|a| a.status != StatusCode::NO_CONTENT)
    {
        assert_eq!(a.body["code"], "invalid_token", "{}", a.body);
    }
    s.login("racer", won[0]).await;
}

#[tokio::test]
async fn reset_confirm_shares_the_anonymous_budget() {
    let s = TestServer::start_with(&[]).await;
    let mut answers = Vec::new();
    for i in 0..25 {
        answers.push(confirm(&s, &uid_of(i), "guess", NEW_PASSWORD).await);
    }
    assert!(
        answers[..20]
            .iter()
            .all(|a| a.body["code"] == "invalid_token"),
        "the burst of 20 is checked"
    );
    let throttled = answers[20..]
        .iter()
        .find(|a| a.status != StatusCode::BAD_REQUEST);
    assert_throttled(
        throttled.expect("a 429"),
        "a guess beyond the anonymous burst",
    );
    // One budget with login and register.
    let body = json!({"username": "someone", "password": PASSWORD});
    let a = send(&s, "POST", "/auth/jwt/create", None, body).await;
    assert_throttled(&a, "login after the confirm burst");
}
