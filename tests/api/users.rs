//! Accounts over real HTTP: registration, login, tokens, the caller's own account, password
//! change and reset (with a loopback SMTP server), hostile bodies, trailing slashes and the
//! anonymous rate limit. Every assertion is about API.md's contract.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::helpers::{TestServer, PASSWORD};
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &str = "users-test-secret-0123456789-abcdefghijkl";
const NEW_PASSWORD: &str = "Lighthouse-Quartz-917";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// A request with an optional raw `Authorization` value and an optional raw body. Asserts the
/// rules that hold for every answer: never 5xx, JSON unless empty, and 204 means an empty body.
async fn send(
    s: &TestServer,
    method: &str,
    path: &str,
    authorization: Option<HeaderValue>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut req = s
        .http
        .request(Method::from_bytes(method.as_bytes()).unwrap(), s.url(path));
    if let Some(a) = authorization {
        req = req.header(AUTHORIZATION, a);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    assert!(
        status.as_u16() < 500,
        "{method} {path}: server error {status}: {text}"
    );
    if status == StatusCode::NO_CONTENT {
        assert!(text.is_empty(), "{method} {path}: 204 with a body: {text}");
    }
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON ({status}): {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

fn bearer(token: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(&format!("Bearer {token}")).unwrap())
}

async fn post_json(s: &TestServer, path: &str, token: Option<&str>, body: Value) -> Answer {
    send(
        s,
        "POST",
        path,
        token.and_then(bearer),
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn register(s: &TestServer, username: &str, password: &str, email: Option<&str>) -> Answer {
    let mut body = json!({"username": username, "password": password});
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    post_json(s, "/auth/users", None, body).await
}

async fn login(s: &TestServer, username: &str, password: &str) -> Answer {
    post_json(
        s,
        "/auth/jwt/create",
        None,
        json!({"username": username, "password": password}),
    )
    .await
}

async fn me(s: &TestServer, token: &str) -> Answer {
    send(s, "GET", "/auth/users/me", bearer(token), None).await
}

/// Asserts a 400 `invalid_data` whose `errors` names `field`.
fn assert_invalid(a: &Answer, field: &str, what: &str) {
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{what}: {}", a.body);
    assert_eq!(a.body["code"], "invalid_data", "{what}: {}", a.body);
    assert!(a.body["message"].is_string(), "{what}: {}", a.body);
    assert!(
        !a.body["errors"][field].is_null(),
        "{what}: errors should name `{field}`: {}",
        a.body
    );
}

fn assert_code(a: &Answer, status: StatusCode, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.body["code"], code, "{what}: {}", a.body);
    assert!(a.body["message"].is_string(), "{what}: {}", a.body);
}

/// Asserts a 401 `not_authenticated` with `WWW-Authenticate: Bearer realm="api"`.
fn assert_401(a: &Answer, what: &str) {
    assert_code(a, StatusCode::UNAUTHORIZED, "not_authenticated", what);
    assert_eq!(
        a.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"api\""),
        "{what}: WWW-Authenticate"
    );
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with `secret` (HS256) carrying the server's claims.
fn craft(secret: &str, id: u64, username: &str, ver: u32, iat: u64, exp: u64, orig: u64) -> String {
    let claims = json!({
        "sub": id.to_string(), "username": username, "ver": ver,
        "iat": iat, "exp": exp, "orig_iat": orig,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode")
}

/// An unsigned `alg: none` token with valid-looking claims.
fn alg_none(id: u64, username: &str) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = e.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let t = now();
    let claims = json!({
        "sub": id.to_string(), "username": username, "ver": 0,
        "iat": t, "exp": t + 3600, "orig_iat": t,
    });
    format!("{header}.{}.", e.encode(claims.to_string()))
}

/// The `uid` of a reset mail for a user id (base64url of the decimal id, no padding).
fn uid_of(id: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_string())
}

async fn registered(s: &TestServer, username: &str, email: Option<&str>) -> (u64, String) {
    let a = register(s, username, PASSWORD, email).await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "register {username}: {}",
        a.body
    );
    let id = a.body["id"].as_u64().expect("id");
    let l = login(s, username, PASSWORD).await;
    assert_eq!(l.status, StatusCode::OK, "login {username}: {}", l.body);
    (id, l.body["token"].as_str().unwrap().to_string())
}

// ---------------------------------------------------------------------------------------------
// A loopback SMTP server (mailin drives the protocol; this is the TCP loop around it)
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

struct MailSink {
    tx: mpsc::UnboundedSender<Mail>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin::Handler for MailSink {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin::Response {
        self.from = from.to_string();
        self.to = to.to_vec();
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        let _ = self.tx.send(Mail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        });
        mailin::response::OK
    }
}

/// Starts an SMTP server on 127.0.0.1:0; answers its port and the mails it receives.
async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("smtp bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(smtp_session(stream, peer.ip(), tx.clone()));
        }
    });
    (port, rx)
}

async fn smtp_session(stream: TcpStream, ip: IpAddr, tx: mpsc::UnboundedSender<Mail>) {
    let sink = MailSink {
        tx,
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut session = mailin::SessionBuilder::new("users-test-smtp").build(ip, sink);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write
        .write_all(&session.greeting().buffer().unwrap())
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let res = session.process(&line);
        match res.action {
            mailin::Action::Reply => {
                if write.write_all(&res.buffer().unwrap()).await.is_err() {
                    return;
                }
            }
            mailin::Action::Close => {
                let _ = write.write_all(&res.buffer().unwrap()).await;
                return;
            }
            mailin::Action::NoReply => {}
            mailin::Action::UpgradeTls => return,
        }
    }
}

/// The next mail, waiting at most 30 s.
async fn next_mail(rx: &mut mpsc::UnboundedReceiver<Mail>) -> Mail {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no reset mail arrived within 30 s")
        .expect("smtp server stopped")
}

/// The decoded text body of a mail (7bit, quoted-printable or base64).
fn mail_text(mail: &Mail) -> String {
    let data = mail.data.replace("\r\n", "\n");
    let (headers, body) = data.split_once("\n\n").unwrap_or(("", &data));
    let encoding = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-transfer-encoding")
                .then(|| v.trim().to_ascii_lowercase())
        })
        .unwrap_or_default();
    match encoding.as_str() {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("base64 mail body"),
            )
            .into_owned()
        }
        "quoted-printable" => {
            let joined = body.replace("=\n", "");
            let mut out = Vec::new();
            let bytes = joined.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
                    if let Ok(b) = u8::from_str_radix(&joined[i + 1..(i + 3).min(joined.len())], 16)
                    {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        _ => body.to_string(),
    }
}

/// `uid:` and `token:` from a reset mail.
fn reset_fields(mail: &Mail) -> (String, String) {
    let text = mail_text(mail);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{name}` line in the mail: {text}"))
    };
    (field("uid:"), field("token:"))
}

async fn smtp_app() -> (TestServer, mpsc::UnboundedReceiver<Mail>) {
    let (port, rx) = smtp_server().await;
    let url = format!("smtp://127.0.0.1:{port}");
    let s = TestServer::start_with(&[
        "--no-rate-limit",
        "--smtp-url",
        &url,
        "--smtp-from",
        "noreply@signal.test",
    ])
    .await;
    (s, rx)
}

/// A raw HTTP/1.1 request with a chunked body, over its own TCP connection. Answers the status
/// and the body text.
async fn chunked_request(s: &TestServer, path: &str, chunks: Vec<Vec<u8>>) -> (u16, String) {
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(head.as_bytes()).await;
    for chunk in chunks {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer and stop reading before the end: write errors are expected.
        if stream.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if response_complete(&raw) {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let body = match content_length(head) {
        Some(n) => body.get(..n).unwrap_or(body).to_string(),
        None => body.to_string(),
    };
    (status, body)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

fn response_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) => content_length(head).is_some_and(|n| body.len() >= n),
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn register_answers_201_with_email_username_as_given_and_integer_id() {
    let s = TestServer::start().await;
    let a = register(&s, "MiXeD.Case+x@y-z_1", PASSWORD, None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["username"], "MiXeD.Case+x@y-z_1");
    assert_eq!(a.body["email"], "", "no email → empty string");
    assert!(a.body["id"].is_u64(), "{}", a.body);
    let obj = a.body.as_object().unwrap();
    assert_eq!(obj.len(), 3, "exactly email, username, id: {}", a.body);

    let b = register(&s, "withmail", PASSWORD, Some("With.Mail@Example.org")).await;
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(b.body["email"], "With.Mail@Example.org");
    assert_eq!(b.body["username"], "withmail");
    assert_ne!(a.body["id"], b.body["id"], "ids are distinct");
}

#[tokio::test]
async fn register_accepts_every_allowed_username_character_and_150_chars() {
    let s = TestServer::start().await;
    for name in [
        "a",
        "Z",
        "0",
        "user@host",
        "first.last",
        "plus+tag",
        "dash-ed",
        "under_score",
        "AZaz09@.+-_",
    ] {
        let a = register(&s, name, PASSWORD, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{name}: {}", a.body);
        assert_eq!(a.body["username"], name);
    }
    let long = "L".repeat(150);
    let a = register(&s, &long, PASSWORD, None).await;
    assert_eq!(a.status, StatusCode::CREATED, "150 chars: {}", a.body);
    assert_eq!(a.body["username"], long.as_str());
}

#[tokio::test]
async fn register_refuses_invalid_usernames_naming_the_field() {
    let s = TestServer::start().await;
    let long = "x".repeat(151);
    for name in [
        "",
        long.as_str(),
        "has space",
        "slash/name",
        "colon:name",
        "ünïcode",
        "tab\tname",
        "semi;colon",
        "quote\"name",
        "new\nline",
    ] {
        let a = register(&s, name, PASSWORD, None).await;
        assert_invalid(&a, "username", &format!("username {name:?}"));
    }
}

#[tokio::test]
async fn register_refuses_a_username_taken_in_any_case() {
    let s = TestServer::start().await;
    assert_eq!(
        register(&s, "Taken_Name", PASSWORD, None).await.status,
        StatusCode::CREATED
    );
    for dup in ["Taken_Name", "taken_name", "TAKEN_NAME", "tAkEn_NaMe"] {
        let a = register(&s, dup, PASSWORD, None).await;
        assert_invalid(&a, "username", &format!("duplicate {dup}"));
    }
}

#[tokio::test]
async fn register_email_is_optional_validated_and_unique_case_insensitively() {
    let s = TestServer::start().await;
    // Two users without email may coexist; so may an explicit empty email.
    for name in ["nomail1", "nomail2"] {
        let a = register(&s, name, PASSWORD, None).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let a = register(&s, "emptymail", PASSWORD, Some("")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(a.body["email"], "");

    for bad in [
        "not-an-email",
        "missing-at.example.org",
        "two@@example.org",
        "@example.org",
        "spaces in@example.org",
    ] {
        let a = register(&s, "badmail", PASSWORD, Some(bad)).await;
        assert_invalid(&a, "email", &format!("email {bad:?}"));
    }
    let long = format!("{}@example.org", "e".repeat(300));
    assert_invalid(
        &register(&s, "badmail", PASSWORD, Some(&long)).await,
        "email",
        "300-char email",
    );

    let a = register(&s, "mailowner", PASSWORD, Some("Owner@Example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    for dup in [
        "Owner@Example.org",
        "owner@example.org",
        "OWNER@EXAMPLE.ORG",
    ] {
        let a = register(&s, "mailthief", PASSWORD, Some(dup)).await;
        assert_invalid(&a, "email", &format!("duplicate email {dup}"));
    }
    // None of the refused registrations created the account.
    let a = register(&s, "mailthief", PASSWORD, Some("thief@example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

#[tokio::test]
async fn register_refuses_weak_passwords_naming_the_password_field() {
    let s = TestServer::start().await;
    let cases: [(&str, &str, Option<&str>, &str); 8] = [
        ("weak1", "Sh0rt!x", None, "7 chars"),
        ("weak2", "", None, "empty"),
        ("weak3", "84736291057", None, "all digits"),
        ("weak4", "password123", None, "common"),
        ("weak5", "password", None, "common"),
        ("weak6", "qwertyuiop", None, "common keyboard walk"),
        (
            "marmalade_fox",
            "marmalade_fox1",
            None,
            "close to the username",
        ),
        (
            "weak8",
            "quintessa.vorhees",
            Some("quintessa.vorhees@example.org"),
            "close to the email",
        ),
    ];
    for (user, password, email, what) in cases {
        let a = register(&s, user, password, email).await;
        assert_invalid(&a, "password", what);
        assert!(
            a.body["errors"].get("username").is_none(),
            "{what}: only the password is wrong: {}",
            a.body
        );
        // Nothing was stored: the username is still free.
        let l = login(&s, user, password).await;
        assert_code(
            &l,
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            &format!("{what}: no account"),
        );
    }
    let a = register(&s, "marmalade_fox", PASSWORD, None).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
}

#[tokio::test]
async fn register_reports_every_bad_field_together() {
    let s = TestServer::start().await;
    let a = post_json(
        &s,
        "/auth/users",
        None,
        json!({"username": "bad name", "password": "123", "email": "nope"}),
    )
    .await;
    assert_invalid(&a, "username", "all bad");
    assert_invalid(&a, "email", "all bad");
    let a = post_json(&s, "/auth/users", None, json!({"email": "a@b.org"})).await;
    assert_invalid(&a, "username", "missing username");
    assert_invalid(&a, "password", "missing password");
}

// ---------------------------------------------------------------------------------------------
// Login, refresh, verify
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_matches_the_username_case_insensitively_and_token_authenticates() {
    let s = TestServer::start().await;
    let (id, _) = registered(&s, "CaseUser", None).await;
    for name in ["CaseUser", "caseuser", "CASEUSER", "cAsEuSeR"] {
        let l = login(&s, name, PASSWORD).await;
        assert_eq!(l.status, StatusCode::OK, "{name}: {}", l.body);
        let token = l.body["token"].as_str().expect("token");
        assert_eq!(l.body.as_object().unwrap().len(), 1, "{}", l.body);
        let m = me(&s, token).await;
        assert_eq!(m.status, StatusCode::OK, "{}", m.body);
        assert_eq!(m.body["id"], id);
        assert_eq!(m.body["username"], "CaseUser", "stored as registered");
    }
}

#[tokio::test]
async fn login_wrong_password_and_unknown_user_answer_identically() {
    let s = TestServer::start().await;
    registered(&s, "realuser", None).await;
    let wrong = login(&s, "realuser", "Not-The-Password-99").await;
    let unknown = login(&s, "ghostuser", "Not-The-Password-99").await;
    let unknown2 = login(&s, "ghostuser", PASSWORD).await;
    for a in [&wrong, &unknown, &unknown2] {
        assert_code(
            a,
            StatusCode::BAD_REQUEST,
            "invalid_credentials",
            "bad login",
        );
        assert!(a.body.get("token").is_none());
    }
    assert_eq!(wrong.body, unknown.body, "identical bodies");
    assert_eq!(wrong.body, unknown2.body, "identical bodies");
}

#[tokio::test]
async fn login_missing_or_mistyped_fields_are_invalid_data() {
    let s = TestServer::start().await;
    registered(&s, "loginfields", None).await;
    let a = post_json(
        &s,
        "/auth/jwt/create",
        None,
        json!({"username": "loginfields"}),
    )
    .await;
    assert_invalid(&a, "password", "missing password");
    let a = post_json(&s, "/auth/jwt/create", None, json!({"password": PASSWORD})).await;
    assert_invalid(&a, "username", "missing username");
    let a = post_json(
        &s,
        "/auth/jwt/create",
        None,
        json!({"username": "loginfields", "password": null}),
    )
    .await;
    assert_invalid(&a, "password", "null password");
    let a = post_json(
        &s,
        "/auth/jwt/create",
        None,
        json!({"username": 12345, "password": PASSWORD}),
    )
    .await;
    assert_invalid(&a, "username", "numeric username");
    let a = post_json(
        &s,
        "/auth/jwt/create",
        None,
        json!({"username": "loginfields", "password": ["x"]}),
    )
    .await;
    assert_invalid(&a, "password", "array password");
}

#[tokio::test]
async fn verify_returns_the_same_token_and_refresh_a_working_new_one() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "tokenuser", None).await;
    let v = post_json(&s, "/auth/jwt/verify", None, json!({"token": token})).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
    assert_eq!(v.body, json!({"token": token}));

    let r = post_json(&s, "/auth/jwt/refresh", None, json!({"token": token})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let fresh = r.body["token"].as_str().expect("token").to_string();
    let m = me(&s, &fresh).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.body);
    assert_eq!(m.body["id"], id);
    let v = post_json(&s, "/auth/jwt/verify", None, json!({"token": fresh})).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
}

#[tokio::test]
async fn verify_and_refresh_refuse_garbage_and_forged_tokens() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "garbage", None).await;
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{flipped}{}", &sig[1..]);
    let tampered_sig = parts.join(".");
    let other_secret = craft(
        "a-completely-different-secret-0123456789",
        id,
        "garbage",
        0,
        now(),
        now() + 3600,
        now(),
    );
    for bad in [
        "garbage".to_string(),
        "".to_string(),
        "a.b.c".to_string(),
        "Bearer x.y.z".to_string(),
        tampered_sig,
        other_secret,
        alg_none(id, "garbage"),
        "x".repeat(10_000),
    ] {
        for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
            let a = post_json(&s, path, None, json!({"token": bad})).await;
            assert_code(
                &a,
                StatusCode::BAD_REQUEST,
                "invalid_token",
                &format!("{path} {:.40}", bad),
            );
        }
    }
    for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
        let a = post_json(&s, path, None, json!({"token": 12345})).await;
        assert_invalid(&a, "token", &format!("{path} numeric token"));
        let a = post_json(&s, path, None, json!({"tok": token})).await;
        assert_invalid(&a, "token", &format!("{path} missing token"));
    }
}

#[tokio::test]
async fn expired_alg_none_and_foreign_secret_tokens_are_refused() {
    let s = TestServer::start_with(&["--no-rate-limit", "--jwt-secret", SECRET]).await;
    let (id, _) = registered(&s, "crafty", None).await;
    let t = now();

    // Sanity: a token crafted the way the server makes them is accepted.
    let good = craft(SECRET, id, "crafty", 0, t, t + 600, t);
    let a = me(&s, &good).await;
    assert_eq!(a.status, StatusCode::OK, "crafted valid token: {}", a.body);
    assert_eq!(a.body["id"], id);
    let a = post_json(&s, "/auth/jwt/verify", None, json!({"token": good})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Expired, correctly signed.
    let expired = craft(SECRET, id, "crafty", 0, t - 7200, t - 3600, t - 7200);
    assert_401(&me(&s, &expired).await, "expired on /me");
    for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
        let a = post_json(&s, path, None, json!({"token": expired})).await;
        assert_code(&a, StatusCode::BAD_REQUEST, "invalid_token", path);
    }
    // Expired a second ago.
    let just = craft(SECRET, id, "crafty", 0, t - 100, t - 1, t - 100);
    assert_401(&me(&s, &just).await, "just expired on /me");

    // alg: none and another secret.
    let none = alg_none(id, "crafty");
    assert_401(&me(&s, &none).await, "alg none on /me");
    let foreign = craft(
        "another-secret-entirely-0123456789abcd",
        id,
        "crafty",
        0,
        t,
        t + 600,
        t,
    );
    assert_401(&me(&s, &foreign).await, "foreign secret on /me");
    for bad in [&none, &foreign] {
        let a = post_json(&s, "/auth/jwt/verify", None, json!({"token": bad})).await;
        assert_code(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "verify forged",
        );
    }

    // A stale token version, and a user id that does not exist.
    let stale = craft(SECRET, id, "crafty", 1, t, t + 600, t);
    assert_401(&me(&s, &stale).await, "wrong ver on /me");
    let nobody = craft(SECRET, id + 1000, "crafty", 0, t, t + 600, t);
    assert_401(&me(&s, &nobody).await, "unknown user on /me");
}

#[tokio::test]
async fn refresh_stops_after_the_max_age_from_the_original_login() {
    let s = TestServer::start_with(&["--no-rate-limit", "--jwt-secret", SECRET]).await;
    let (id, _) = registered(&s, "oldlogin", None).await;
    let t = now();
    // Still valid, but the login it descends from is 8 days old (default max age: 7 days).
    let old = craft(SECRET, id, "oldlogin", 0, t, t + 600, t - 8 * 86_400);
    let a = post_json(&s, "/auth/jwt/verify", None, json!({"token": old})).await;
    assert_eq!(a.status, StatusCode::OK, "still valid: {}", a.body);
    let a = post_json(&s, "/auth/jwt/refresh", None, json!({"token": old})).await;
    assert_code(
        &a,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "refresh too old",
    );
    // A recent login refreshes.
    let recent = craft(SECRET, id, "oldlogin", 0, t, t + 600, t - 86_400);
    let a = post_json(&s, "/auth/jwt/refresh", None, json!({"token": recent})).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
}

// ---------------------------------------------------------------------------------------------
// Authorization header
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bearer_and_jwt_prefixes_work_in_any_case() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "prefixes", None).await;
    for prefix in ["Bearer", "bearer", "BEARER", "bEaReR", "JWT", "jwt", "Jwt"] {
        let h = HeaderValue::from_str(&format!("{prefix} {token}")).unwrap();
        let a = send(&s, "GET", "/auth/users/me", Some(h), None).await;
        assert_eq!(a.status, StatusCode::OK, "{prefix}: {}", a.body);
        assert_eq!(a.body["id"], id);
    }
}

#[tokio::test]
async fn missing_or_malformed_authorization_is_401_with_bearer_challenge() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "malformed", None).await;
    let a = send(&s, "GET", "/auth/users/me", None, None).await;
    assert_401(&a, "no header");
    let bad_values = vec![
        "".to_string(),
        "Bearer".to_string(),
        "Bearer ".to_string(),
        token.clone(),
        format!("Basic {token}"),
        format!("Token {token}"),
        format!("Bearer{token}"),
        "Bearer garbage".to_string(),
        "Bearer a.b.c".to_string(),
        format!("Bearer {token}x"),
    ];
    for v in bad_values {
        let h = HeaderValue::from_str(&v).unwrap();
        let a = send(&s, "GET", "/auth/users/me", Some(h), None).await;
        assert_401(&a, &format!("header {v:.30?}"));
    }
    // The same on the other authenticated account routes.
    let a = post_json(
        &s,
        "/auth/password",
        None,
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_401(&a, "password change without token");
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        None,
        Some(
            json!({"current_password": PASSWORD})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_401(&a, "delete without token");
    // Nothing happened.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn non_utf8_authorization_header_is_401_not_another_error() {
    let s = TestServer::start().await;
    registered(&s, "nonutf8", None).await;
    for raw in [&b"Bearer \xff\xfe"[..], b"\xe9\xe9 token", b"JWT \x80abc"] {
        let h = HeaderValue::from_bytes(raw).unwrap();
        let a = send(&s, "GET", "/auth/users/me", Some(h.clone()), None).await;
        assert_401(&a, &format!("GET /auth/users/me {raw:?}"));
        let a = send(
            &s,
            "POST",
            "/auth/password",
            Some(h),
            Some(
                json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await;
        assert_401(&a, &format!("POST /auth/password {raw:?}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The caller's own account
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_me_answers_email_username_and_id() {
    let s = TestServer::start().await;
    let a = register(&s, "MeUser", PASSWORD, Some("Me.User@Example.org")).await;
    let id = a.body["id"].as_u64().unwrap();
    let token = login(&s, "meuser", PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let m = me(&s, &token).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.body);
    assert_eq!(
        m.body,
        json!({"email": "Me.User@Example.org", "username": "MeUser", "id": id})
    );
    let (id2, t2) = registered(&s, "nomailme", None).await;
    assert_eq!(
        me(&s, &t2).await.body,
        json!({"email": "", "username": "nomailme", "id": id2})
    );
}

#[tokio::test]
async fn delete_me_needs_the_current_password() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "keepme", None).await;
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        bearer(&token),
        Some(
            json!({"current_password": "Wrong-Password-77"})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_invalid(&a, "current_password", "wrong current_password");
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        bearer(&token),
        Some(json!({"password": PASSWORD}).to_string().into_bytes()),
    )
    .await;
    assert_invalid(&a, "current_password", "missing current_password");
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        bearer(&token),
        Some(json!({"current_password": 42}).to_string().into_bytes()),
    )
    .await;
    assert_invalid(&a, "current_password", "numeric current_password");
    // Still there.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
    assert_eq!(login(&s, "keepme", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn deleted_users_tokens_stay_dead_even_after_the_username_is_registered_again() {
    let s = TestServer::start().await;
    let (old_id, old_token) = registered(&s, "Phoenix", Some("phoenix@example.org")).await;
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        bearer(&old_token),
        Some(
            json!({"current_password": PASSWORD})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(a.body, Value::Null);
    assert_401(&me(&s, &old_token).await, "old token after delete");
    let v = post_json(&s, "/auth/jwt/verify", None, json!({"token": old_token})).await;
    assert_code(
        &v,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "verify after delete",
    );
    let l = login(&s, "Phoenix", PASSWORD).await;
    assert_code(
        &l,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "login after delete",
    );

    // The username and the email are free again.
    let a = register(&s, "phoenix", PASSWORD, Some("phoenix@example.org")).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let new_id = a.body["id"].as_u64().unwrap();
    assert_ne!(new_id, old_id, "a new id");
    assert_401(&me(&s, &old_token).await, "old token after re-registration");
    let r = post_json(&s, "/auth/jwt/refresh", None, json!({"token": old_token})).await;
    assert_code(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "refresh old token",
    );

    let new_token = login(&s, "PHOENIX", PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let m = me(&s, &new_token).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.body["id"], new_id);
    assert_eq!(m.body["username"], "phoenix");
}

#[tokio::test]
async fn deleting_twice_with_the_same_token_is_401() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "twice", None).await;
    let body = json!({"current_password": PASSWORD})
        .to_string()
        .into_bytes();
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        bearer(&token),
        Some(body.clone()),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = send(&s, "DELETE", "/auth/users/me", bearer(&token), Some(body)).await;
    assert_401(&a, "second delete");
}

// ---------------------------------------------------------------------------------------------
// Password change
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn password_change_refuses_a_wrong_current_or_weak_new_password() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "changer", Some("changer@example.org")).await;
    let a = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": "Wrong-Password-77", "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_invalid(&a, "current_password", "wrong current");
    for weak in [
        "short",
        "12345678901",
        "password123",
        "changer2024",
        "Changer!!",
    ] {
        let a = post_json(
            &s,
            "/auth/password",
            Some(&token),
            json!({"current_password": PASSWORD, "new_password": weak}),
        )
        .await;
        assert_invalid(&a, "new_password", &format!("weak new {weak}"));
    }
    let a = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": PASSWORD}),
    )
    .await;
    assert_invalid(&a, "new_password", "missing new");
    // Nothing changed.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
    assert_eq!(login(&s, "changer", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn password_change_revokes_old_tokens_and_swaps_the_password() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "rotator", None).await;
    let second = login(&s, "rotator", PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let a = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(a.body, Value::Null, "204 has an empty body");
    assert_401(&me(&s, &token).await, "the token that changed it");
    assert_401(&me(&s, &second).await, "another older token");
    let r = post_json(&s, "/auth/jwt/refresh", None, json!({"token": token})).await;
    assert_code(
        &r,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "refresh revoked",
    );

    let old = login(&s, "rotator", PASSWORD).await;
    assert_code(
        &old,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "old password",
    );
    let new = login(&s, "rotator", NEW_PASSWORD).await;
    assert_eq!(new.status, StatusCode::OK, "{}", new.body);
    let m = me(&s, new.body["token"].as_str().unwrap()).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.body["id"], id);
}

// ---------------------------------------------------------------------------------------------
// Password reset
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn password_reset_mails_a_single_use_token_that_sets_a_new_password() {
    let (s, mut mails) = smtp_app().await;
    let (id, old_token) = registered(&s, "Forgetful", Some("Forgetful.One@Example.org")).await;

    let a = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "forgetful.one@example.org"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);

    let mail = next_mail(&mut mails).await;
    assert_eq!(
        mail.from, "noreply@signal.test",
        "envelope sender is --smtp-from"
    );
    assert_eq!(
        mail.to.iter().map(|t| t.to_lowercase()).collect::<Vec<_>>(),
        vec!["forgetful.one@example.org".to_string()],
        "mailed to the account's address"
    );
    let (uid, token) = reset_fields(&mail);
    assert!(!token.is_empty());
    assert_eq!(uid, uid_of(id), "uid encodes the user id");
    assert!(
        !mail.data.contains(PASSWORD),
        "the mail does not carry the password"
    );

    // A wrong token does not work (and does not burn the right one).
    let a = post_json(
        &s,
        "/auth/password/reset/confirm",
        None,
        json!({"uid": uid, "token": format!("{token}x"), "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_code(&a, StatusCode::BAD_REQUEST, "invalid_token", "wrong token");
    assert_eq!(me(&s, &old_token).await.status, StatusCode::OK);

    let a = post_json(
        &s,
        "/auth/password/reset/confirm",
        None,
        json!({"uid": uid, "token": token, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT, "{}", a.body);
    assert_eq!(a.body, Value::Null);

    // Single use.
    let a = post_json(
        &s,
        "/auth/password/reset/confirm",
        None,
        json!({"uid": uid, "token": token, "new_password": "Another-Fresh-Pass-31"}),
    )
    .await;
    assert_code(&a, StatusCode::BAD_REQUEST, "invalid_token", "token reused");

    // Old tokens revoked; the new password (not the old, not the refused one) logs in.
    assert_401(&me(&s, &old_token).await, "old token after reset");
    let l = login(&s, "forgetful", PASSWORD).await;
    assert_code(
        &l,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "old password",
    );
    let l = login(&s, "forgetful", "Another-Fresh-Pass-31").await;
    assert_code(
        &l,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "reused-token password",
    );
    let l = login(&s, "forgetful", NEW_PASSWORD).await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.body);
    let m = me(&s, l.body["token"].as_str().unwrap()).await;
    assert_eq!(m.body["id"], id);
}

#[tokio::test]
async fn password_reset_confirm_refuses_a_weak_new_password() {
    let (s, mut mails) = smtp_app().await;
    let (_, old_token) = registered(&s, "weakreset", Some("weakreset@example.org")).await;
    let a = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "weakreset@example.org"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let (uid, token) = reset_fields(&next_mail(&mut mails).await);
    for weak in ["short", "password123", "99999999999", "weakreset1"] {
        let a = post_json(
            &s,
            "/auth/password/reset/confirm",
            None,
            json!({"uid": uid, "token": token, "new_password": weak}),
        )
        .await;
        assert_invalid(&a, "new_password", &format!("weak {weak}"));
    }
    // The password did not change and tokens still work.
    assert_eq!(
        login(&s, "weakreset", PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(me(&s, &old_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn password_reset_for_an_unknown_email_is_204_and_sends_no_mail() {
    let (s, mut mails) = smtp_app().await;
    registered(&s, "known", Some("known@example.org")).await;
    let unknown = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "stranger@example.org"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NO_CONTENT, "{}", unknown.body);
    let known = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "known@example.org"}),
    )
    .await;
    assert_eq!(known.status, StatusCode::NO_CONTENT);
    assert_eq!(unknown.body, known.body, "indistinguishable answers");
    assert_eq!(
        unknown.headers.get("content-length"),
        known.headers.get("content-length")
    );

    // The known address's mail arrives; nothing is ever addressed to the stranger.
    let mut received = vec![next_mail(&mut mails).await];
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(m) = mails.try_recv() {
        received.push(m);
    }
    assert_eq!(received.len(), 1, "exactly one mail: {received:?}");
    assert_eq!(received[0].to, vec!["known@example.org".to_string()]);
}

#[tokio::test]
async fn password_reset_without_smtp_still_answers_204() {
    let s = TestServer::start().await;
    registered(&s, "nosmtp", Some("nosmtp@example.org")).await;
    for email in ["nosmtp@example.org", "unknown@example.org"] {
        let a = post_json(&s, "/auth/password/reset", None, json!({"email": email})).await;
        assert_eq!(a.status, StatusCode::NO_CONTENT, "{email}: {}", a.body);
    }
    // The account is untouched.
    assert_eq!(login(&s, "nosmtp", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn password_reset_refuses_a_malformed_email() {
    let s = TestServer::start().await;
    let long = format!("{}@example.org", "x".repeat(300));
    for bad in [
        "not-an-email",
        "a@",
        "@b.org",
        "",
        "two@@x.org",
        long.as_str(),
    ] {
        let a = post_json(&s, "/auth/password/reset", None, json!({"email": bad})).await;
        assert_invalid(&a, "email", &format!("email {bad:.30?}"));
    }
    for bad in [
        json!({"email": 42}),
        json!({"email": ["a@b.org"]}),
        json!({"mail": "a@b.org"}),
    ] {
        let a = post_json(&s, "/auth/password/reset", None, bad.clone()).await;
        assert_invalid(&a, "email", &format!("{bad}"));
    }
}

#[tokio::test]
async fn password_reset_confirm_refuses_wrong_tokens_and_bad_fields() {
    let s = TestServer::start().await;
    let (id, token) = registered(&s, "confirmer", Some("confirmer@example.org")).await;
    let a = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "confirmer@example.org"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    for wrong in ["wrong-token", "", "x", &token] {
        let a = post_json(
            &s,
            "/auth/password/reset/confirm",
            None,
            json!({"uid": uid_of(id), "token": wrong, "new_password": NEW_PASSWORD}),
        )
        .await;
        assert_code(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_token",
            &format!("token {wrong:.20?}"),
        );
    }
    // An unknown or undecodable uid: the same 400 `invalid_token` as a bad token, so uids
    // cannot be enumerated.
    for uid in [uid_of(id + 1000), "!!!".to_string(), "".to_string()] {
        let a = post_json(
            &s,
            "/auth/password/reset/confirm",
            None,
            json!({"uid": uid, "token": "whatever", "new_password": NEW_PASSWORD}),
        )
        .await;
        assert_code(
            &a,
            StatusCode::BAD_REQUEST,
            "invalid_token",
            &format!("uid {uid:?}"),
        );
    }
    let a = post_json(
        &s,
        "/auth/password/reset/confirm",
        None,
        json!({"uid": uid_of(id), "token": "t"}),
    )
    .await;
    assert_invalid(&a, "new_password", "missing new_password");
    let a = post_json(
        &s,
        "/auth/password/reset/confirm",
        None,
        json!({"uid": 5, "token": "t", "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_invalid(&a, "uid", "numeric uid");
    // Nothing changed.
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
    assert_eq!(
        login(&s, "confirmer", PASSWORD).await.status,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// Every account route that takes a body: (method, path, needs a token).
const BODY_ROUTES: [(&str, &str, bool); 8] = [
    ("POST", "/auth/users", false),
    ("POST", "/auth/jwt/create", false),
    ("POST", "/auth/jwt/refresh", false),
    ("POST", "/auth/jwt/verify", false),
    ("POST", "/auth/password/reset", false),
    ("POST", "/auth/password/reset/confirm", false),
    ("POST", "/auth/password", true),
    ("DELETE", "/auth/users/me", true),
];

#[tokio::test]
async fn malformed_json_is_400_malformed_json_on_every_account_route() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "hostile", None).await;
    let deep = "[".repeat(100_000);
    let bodies: Vec<Vec<u8>> = vec![
        b"{\"username\":".to_vec(),
        b"{username: 'x'}".to_vec(),
        b"not json at all".to_vec(),
        b"".to_vec(),
        b"{\"a\":1}}".to_vec(),
        vec![0xff, 0xfe, b'{', b'}'],
        deep.into_bytes(),
    ];
    for (method, path, auth) in BODY_ROUTES {
        for body in &bodies {
            let a = send(
                &s,
                method,
                path,
                if auth { bearer(&token) } else { None },
                Some(body.clone()),
            )
            .await;
            assert_code(
                &a,
                StatusCode::BAD_REQUEST,
                "malformed_json",
                &format!("{method} {path} {:.20?}", String::from_utf8_lossy(body)),
            );
        }
    }
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_top_level_shapes_are_403_incorrect_arguments_on_every_account_route() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "shapes", None).await;
    let shapes = [
        json!([]),
        json!([{"username": "x", "password": PASSWORD}]),
        json!({}),
        json!("a string"),
        json!(42),
        json!(true),
        json!(null),
    ];
    for (method, path, auth) in BODY_ROUTES {
        for shape in &shapes {
            let a = send(
                &s,
                method,
                path,
                if auth { bearer(&token) } else { None },
                Some(shape.to_string().into_bytes()),
            )
            .await;
            assert_code(
                &a,
                StatusCode::FORBIDDEN,
                "incorrect_arguments",
                &format!("{method} {path} {shape}"),
            );
        }
    }
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn wrong_field_types_are_400_invalid_data_naming_the_field() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "typist", None).await;
    let wrong = [
        json!(123),
        json!(1.5),
        json!(["x"]),
        json!({"a": 1}),
        json!(true),
    ];
    for w in &wrong {
        let cases = [
            (
                "/auth/users",
                json!({"username": w, "password": PASSWORD}),
                "username",
                None,
            ),
            (
                "/auth/users",
                json!({"username": "typed", "password": w}),
                "password",
                None,
            ),
            (
                "/auth/users",
                json!({"username": "typed", "password": PASSWORD, "email": w}),
                "email",
                None,
            ),
            (
                "/auth/jwt/create",
                json!({"username": w, "password": PASSWORD}),
                "username",
                None,
            ),
            (
                "/auth/jwt/create",
                json!({"username": "typist", "password": w}),
                "password",
                None,
            ),
            ("/auth/jwt/verify", json!({"token": w}), "token", None),
            ("/auth/jwt/refresh", json!({"token": w}), "token", None),
            ("/auth/password/reset", json!({"email": w}), "email", None),
            (
                "/auth/password/reset/confirm",
                json!({"uid": "MQ", "token": w, "new_password": NEW_PASSWORD}),
                "token",
                None,
            ),
            (
                "/auth/password",
                json!({"current_password": w, "new_password": NEW_PASSWORD}),
                "current_password",
                Some(token.as_str()),
            ),
            (
                "/auth/password",
                json!({"current_password": PASSWORD, "new_password": w}),
                "new_password",
                Some(token.as_str()),
            ),
        ];
        for (path, body, field, tok) in cases {
            let a = post_json(&s, path, tok, body.clone()).await;
            assert_invalid(&a, field, &format!("{path} {body}"));
        }
    }
    // Nothing was created or changed.
    assert_code(
        &login(&s, "typed", PASSWORD).await,
        StatusCode::BAD_REQUEST,
        "invalid_credentials",
        "typed",
    );
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_extra_fields_are_ignored() {
    let s = TestServer::start().await;
    let a = post_json(
        &s,
        "/auth/users",
        None,
        json!({"username": "extra", "password": PASSWORD, "is_admin": true, "id": 1,
               "nested": {"x": [1, 2]}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert!(a.body.get("is_admin").is_none());
    let l = post_json(
        &s,
        "/auth/jwt/create",
        None,
        json!({"username": "extra", "password": PASSWORD, "otp": "123456"}),
    )
    .await;
    assert_eq!(l.status, StatusCode::OK, "{}", l.body);
    let token = l.body["token"].as_str().unwrap().to_string();
    let v = post_json(
        &s,
        "/auth/jwt/verify",
        None,
        json!({"token": token, "extra": 1}),
    )
    .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.body);
    let p = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "confirm": "x"}),
    )
    .await;
    assert_eq!(p.status, StatusCode::NO_CONTENT, "{}", p.body);
}

#[tokio::test]
async fn huge_strings_are_400_invalid_data() {
    let s = TestServer::start().await;
    let (_, token) = registered(&s, "huge", None).await;
    let a = register(&s, &"u".repeat(200), PASSWORD, None).await;
    assert_invalid(&a, "username", "200-char username");
    let a = register(&s, &"u".repeat(100_000), PASSWORD, None).await;
    assert_invalid(&a, "username", "100 kB username");
    let big_password: String = "Zq9!xW".repeat(17_000); // ~100 kB
    let a = register(&s, "hugepass", &big_password, None).await;
    assert_invalid(&a, "password", "100 kB password");
    let a = register(
        &s,
        "hugemail",
        PASSWORD,
        Some(&format!("{}@x.org", "m".repeat(100_000))),
    )
    .await;
    assert_invalid(&a, "email", "100 kB email");
    let a = post_json(
        &s,
        "/auth/password",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": big_password}),
    )
    .await;
    assert_invalid(&a, "new_password", "100 kB new password");
    // A huge login is just a failed login, never a server error.
    let a = login(&s, &"u".repeat(100_000), &big_password).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert!(
        a.body["code"] == "invalid_credentials" || a.body["code"] == "invalid_data",
        "{}",
        a.body
    );
    assert_eq!(login(&s, "huge", PASSWORD).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_max_body_bytes_are_413() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-body-bytes", "2048"]).await;
    let (_, token) = registered(&s, "bigbody", None).await;
    let big = json!({"username": "x".repeat(4096), "password": PASSWORD});
    for (method, path, auth) in BODY_ROUTES {
        let a = send(
            &s,
            method,
            path,
            if auth { bearer(&token) } else { None },
            Some(big.to_string().into_bytes()),
        )
        .await;
        assert_code(
            &a,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("{method} {path}"),
        );
    }
    // Just under the limit is fine (and fails only on its own rules).
    let padded = json!({"username": "smallbody", "password": PASSWORD, "pad": "p".repeat(1900)});
    assert!(padded.to_string().len() <= 2048);
    let a = post_json(&s, "/auth/users", None, padded).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn chunked_bodies_are_read_up_to_the_limit() {
    let s = TestServer::start_with(&["--no-rate-limit", "--max-body-bytes", "2048"]).await;
    // A small chunked body works.
    let body = json!({"username": "chunky", "password": PASSWORD}).to_string();
    let (head, tail) = body.split_at(10);
    let (status, text) = chunked_request(&s, "/auth/users", vec![head.into(), tail.into()]).await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["username"], "chunky");

    // Over the limit: 413.
    let mut chunks = vec![b"{\"username\":\"".to_vec()];
    chunks.extend((0..8).map(|_| vec![b'a'; 1024]));
    chunks.push(format!("\",\"password\":\"{PASSWORD}\"}}").into_bytes());
    let (status, text) = chunked_request(&s, "/auth/users", chunks).await;
    assert_eq!(status, 413, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_eq!(v["code"], "payload_too_large");
}

// ---------------------------------------------------------------------------------------------
// Trailing slashes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn account_routes_answer_identically_with_and_without_trailing_slash() {
    let s = TestServer::start().await;
    // Register: both 201 with the same shape.
    let a = post_json(
        &s,
        "/auth/users",
        None,
        json!({"username": "slash1", "password": PASSWORD}),
    )
    .await;
    let b = post_json(
        &s,
        "/auth/users/",
        None,
        json!({"username": "slash2", "password": PASSWORD}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(b.status, StatusCode::CREATED, "{}", b.body);
    assert_eq!(b.body["username"], "slash2");
    // Same error for the same bad body.
    let bad = json!({"username": "bad name", "password": "1"});
    let a = post_json(&s, "/auth/users", None, bad.clone()).await;
    let b = post_json(&s, "/auth/users/", None, bad).await;
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Login.
    let creds = json!({"username": "slash1", "password": PASSWORD});
    let a = post_json(&s, "/auth/jwt/create", None, creds.clone()).await;
    let b = post_json(&s, "/auth/jwt/create/", None, creds).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(b.status, StatusCode::OK, "{}", b.body);
    let token = b.body["token"].as_str().unwrap().to_string();
    let wrong = json!({"username": "slash1", "password": "Wrong-Pass-123"});
    let a = post_json(&s, "/auth/jwt/create", None, wrong.clone()).await;
    let b = post_json(&s, "/auth/jwt/create/", None, wrong).await;
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Me, with and without a token.
    let a = send(&s, "GET", "/auth/users/me", bearer(&token), None).await;
    let b = send(&s, "GET", "/auth/users/me/", bearer(&token), None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let a = send(&s, "GET", "/auth/users/me", None, None).await;
    let b = send(&s, "GET", "/auth/users/me/", None, None).await;
    assert_401(&a, "no slash");
    assert_401(&b, "slash");

    // Verify and refresh.
    for path in ["/auth/jwt/verify", "/auth/jwt/refresh"] {
        let a = post_json(&s, path, None, json!({"token": token})).await;
        let b = post_json(&s, &format!("{path}/"), None, json!({"token": token})).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
        assert_eq!(b.status, StatusCode::OK, "{path}/: {}", b.body);
        let a = post_json(&s, path, None, json!({"token": "junk"})).await;
        let b = post_json(&s, &format!("{path}/"), None, json!({"token": "junk"})).await;
        assert_eq!((a.status, &a.body), (b.status, &b.body), "{path}");
    }

    // Password change and delete: same refusal for a wrong current password.
    let body = json!({"current_password": "Wrong-Pass-123", "new_password": NEW_PASSWORD});
    let a = post_json(&s, "/auth/password", Some(&token), body.clone()).await;
    let b = post_json(&s, "/auth/password/", Some(&token), body).await;
    assert_invalid(&a, "current_password", "no slash");
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let body = json!({"current_password": "Wrong-Pass-123"})
        .to_string()
        .into_bytes();
    let a = send(
        &s,
        "DELETE",
        "/auth/users/me",
        bearer(&token),
        Some(body.clone()),
    )
    .await;
    let b = send(&s, "DELETE", "/auth/users/me/", bearer(&token), Some(body)).await;
    assert_invalid(&a, "current_password", "no slash");
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Reset and confirm.
    let a = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "x@example.org"}),
    )
    .await;
    let b = post_json(
        &s,
        "/auth/password/reset/",
        None,
        json!({"email": "x@example.org"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let body = json!({"uid": "MQ", "token": "nope", "new_password": NEW_PASSWORD});
    let a = post_json(&s, "/auth/password/reset/confirm", None, body.clone()).await;
    let b = post_json(&s, "/auth/password/reset/confirm/", None, body).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!((a.status, &a.body), (b.status, &b.body));

    // Successful password change and delete through the slashed routes.
    let b = post_json(
        &s,
        "/auth/password/",
        Some(&token),
        json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
    )
    .await;
    assert_eq!(b.status, StatusCode::NO_CONTENT, "{}", b.body);
    let token = login(&s, "slash1", NEW_PASSWORD).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let b = send(
        &s,
        "DELETE",
        "/auth/users/me/",
        bearer(&token),
        Some(
            json!({"current_password": NEW_PASSWORD})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(b.status, StatusCode::NO_CONTENT, "{}", b.body);
    assert_401(&me(&s, &token).await, "deleted via slash route");
}

// ---------------------------------------------------------------------------------------------
// Anonymous rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn anonymous_routes_are_throttled_per_ip_after_a_burst_of_20() {
    let s = TestServer::start_with(&[]).await;
    let started = Instant::now();
    let mut token = None;
    for i in 0..20 {
        let a = if i % 2 == 0 {
            register(&s, &format!("burst{i}"), PASSWORD, None).await
        } else {
            login(&s, &format!("burst{}", i - 1), PASSWORD).await
        };
        assert_ne!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "attempt {} is within the burst: {}",
            i + 1,
            a.body
        );
        if let Some(t) = a.body["token"].as_str() {
            token = Some(t.to_string());
        }
    }
    // The budget refills one request every 6 s; allow for a slow machine.
    let refilled = (started.elapsed().as_secs() / 6) as usize;
    let mut throttled = None;
    for attempt in 0..=refilled + 1 {
        let a = login(&s, "burst0", PASSWORD).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(a);
            break;
        }
        assert!(
            attempt <= refilled,
            "not throttled after the burst: {}",
            a.body
        );
    }
    let a = throttled.expect("a 429 after 20 anonymous attempts");
    assert_code(
        &a,
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "21st attempt",
    );
    let retry = a
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("Retry-After in whole seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Registration and reset share the same budget.
    let r = register(&s, "afterburst", PASSWORD, None).await;
    assert_code(&r, StatusCode::TOO_MANY_REQUESTS, "throttled", "register");
    let r = post_json(
        &s,
        "/auth/password/reset",
        None,
        json!({"email": "a@b.org"}),
    )
    .await;
    assert_code(&r, StatusCode::TOO_MANY_REQUESTS, "throttled", "reset");
    // Authenticated routes are not affected.
    let token = token.expect("a login within the burst");
    assert_eq!(me(&s, &token).await.status, StatusCode::OK);
}
