//! The server in-process: the real `signal_server::run` on 127.0.0.1:0 with a data dir in a temp
//! folder (and sled there, or a PostgreSQL database: see `database`); users and their devices made through the typed client (`TestServer::user`,
//! `user_with_device`, `client_of`); and the raw requests (`call`, `get`, `post`, `delete`,
//! `call_raw`, `send`) that tests of exact statuses, bodies and hostile input use.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::client::{Client, LinkDevice, NewDevice, NewUser, PreKey, SignedPreKey};
use signal_server::crypto::KeyPair;
use signal_server::{App, Config};
use tokio::sync::oneshot;

pub const PASSWORD: &str = "tangerine-Voyage-42";

const CONTENT_JSON: &str = "application/json";

pub struct TestServer {
    pub base: String,
    pub app: App,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// A server with fast hashing and no rate limits.
    pub async fn start() -> TestServer {
        TestServer::start_with(&["--no-rate-limit"]).await
    }

    /// A server with extra command-line flags (e.g. `["--max-prekeys", "5"]`).
    pub async fn start_with(flags: &[&str]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "signal-server".to_string(),
            "--data-dir".into(),
            dir.path().display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--pbkdf2-iterations".into(),
            "1000".into(),
        ];
        args.extend(flags.iter().map(|s| s.to_string()));
        let config = <Config as clap::Parser>::parse_from(args);
        TestServer::start_config(config, dir).await
    }

    /// A server on `config` (sled in its data dir, or a database of its own on the PostgreSQL
    /// server the suite runs against; blobs in the data dir, or under a prefix of its own on the
    /// S3 server the suite runs against: see `database`).
    pub async fn start_config(mut config: Config, dir: tempfile::TempDir) -> TestServer {
        if config.database_url.is_none() {
            config.database_url = super::database_for(dir.path()).await;
        }
        if config.attachments_s3.is_none() && config.attachments_dir.is_none() {
            if let Some((url, endpoint)) = super::s3_for(dir.path()) {
                config.attachments_s3 = Some(url);
                config.attachments_s3_endpoint = Some(endpoint);
            }
        }
        let app = App::open(config).await.expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(signal_server::run(listener, app.clone(), async {
            let _ = rx.await;
        }));
        TestServer {
            base: format!("http://{addr}"),
            app,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            shutdown: Some(tx),
            handle: Some(handle),
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{}", self.base.replacen("http", "ws", 1), path)
    }

    /// Any request; the body is sent as JSON when given. Answers status and JSON body
    /// (`Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| (CONTENT_JSON, b.to_string().into_bytes()));
        let a = self
            .request(method, path, token.and_then(bearer), body)
            .await;
        (a.status, a.body)
    }

    /// A raw body (not necessarily JSON), sent without a content type.
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let auth = token.and_then(bearer);
        let a = self.request(method, path, auth, Some(("", body))).await;
        (a.status, a.body)
    }

    /// Any request with a raw `Authorization` value and a raw body sent as JSON, answered with
    /// its headers. Asserts what holds for every answer: never a 5xx, JSON unless empty, and an
    /// empty 204.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        authorization: Option<HeaderValue>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let body = body.map(|b| (CONTENT_JSON, b));
        let a = self.request(method, path, authorization, body).await;
        let (status, body) = (a.status, &a.body);
        assert!(status.as_u16() < 500, "{method} {path}: {status}: {body}");
        if status == StatusCode::NO_CONTENT {
            assert!(body.is_null(), "{method} {path}: 204 with a body: {body}");
        }
        a
    }

    /// The one place requests are built: an `Authorization` value and a body with its content
    /// type (`""`: none), both optional.
    async fn request(
        &self,
        method: &str,
        path: &str,
        authorization: Option<HeaderValue>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Answer {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, self.url(path));
        if let Some(a) = authorization {
            req = req.header(AUTHORIZATION, a);
        }
        if let Some((content_type, bytes)) = body {
            if !content_type.is_empty() {
                req = req.header(CONTENT_TYPE, content_type);
            }
            req = req.body(bytes);
        }
        answer(req).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call("GET", path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("POST", path, Some(token), Some(&body)).await
    }

    pub async fn delete(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call("DELETE", path, Some(token), Some(&body)).await
    }

    /// The typed client for this server, sharing its connection pool (no token).
    pub fn client(&self) -> Client {
        Client::with_http(&self.base, self.http.clone())
    }

    /// The typed client carrying `user`'s token.
    pub fn client_of(&self, user: &TestUser) -> Client {
        self.client().with_token(&user.token)
    }

    /// Registers `username` (password `PASSWORD`) and logs in.
    pub async fn user(&self, username: &str) -> TestUser {
        new_user(&self.client(), username).await
    }

    /// A password login that must succeed: the token.
    pub async fn login(&self, username: &str, password: &str) -> String {
        login(&self.client(), username, password).await
    }

    /// Registers a user and creates their device with `prekeys` EC and `kyber` Kyber one-time
    /// keys (ids 1..=n) and a last-resort Kyber key.
    pub async fn user_with_device(
        &self,
        username: &str,
        reg_id: u32,
        prekeys: u32,
        kyber: u32,
    ) -> TestUser {
        new_user_with_device(&self.client(), username, reg_id, prekeys, kyber).await
    }

    /// Links a device with `reg_id` to `user`'s account (see the free `link_device`): its
    /// device id, and the account as that device (`TestUser::device`).
    pub async fn link_device(
        &self,
        user: &TestUser,
        reg_id: u32,
        prekeys: u32,
        kyber: u32,
    ) -> (u32, TestUser) {
        link_device(&self.client(), user, reg_id, prekeys, kyber).await
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        self.dir
    }
}

/// An answer with its headers.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends a request; its status, headers and JSON body (`Value::Null` for an empty body).
async fn answer(req: reqwest::RequestBuilder) -> Answer {
    let res = req.send().await.expect("request");
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// An `Authorization: Bearer <token>` value for `TestServer::send`.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    Some(HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"))
}

pub struct TestUser {
    pub username: String,
    pub id: u64,
    pub token: String,
    pub reg_id: u32,
    pub identity: KeyPair,
    /// The private half of `identity`, which every device of the account holds (a linked
    /// device gets it from the primary): see `TestUser::device`.
    pub secret: [u8; 32],
}

impl TestUser {
    /// A device with real, correctly signed keys: `prekeys` EC and `kyber` Kyber one-time keys
    /// (ids 1..=n), signed prekey 1, and the last-resort Kyber key 999999 when asked.
    pub fn new_device(
        &self,
        device_id: u32,
        prekeys: u32,
        kyber: u32,
        last_resort: bool,
    ) -> NewDevice {
        NewDevice {
            address: format!("{}.{device_id}", self.username),
            identity_key: self.identity.public.to_vec(),
            registration_id: self.reg_id,
            pre_keys: (1..=prekeys).map(PreKey::generate).collect(),
            signed_pre_key: SignedPreKey::generate_ec(&self.identity, 1),
            kyber_pre_keys: (1..=kyber)
                .map(|id| SignedPreKey::random_kyber(&self.identity, id))
                .collect(),
            last_resort_kyber_pre_key: last_resort
                .then(|| SignedPreKey::random_kyber(&self.identity, 999_999)),
        }
    }

    /// `new_device` as the JSON body of `POST /device/`, for tests that alter it.
    pub fn device_body(
        &self,
        device_id: u32,
        prekeys: u32,
        kyber: u32,
        last_resort: bool,
    ) -> Value {
        let device = self.new_device(device_id, prekeys, kyber, last_resort);
        let mut body = serde_json::to_value(device).expect("device JSON");
        // Always present, as the original clients send it.
        body["kyberPreKeys"] = body.get("kyberPreKeys").cloned().unwrap_or(json!([]));
        body
    }
}

/// On any server (in-process or the binary, `client` without a token): registers `username`
/// with `PASSWORD` and logs in.
pub async fn new_user(client: &Client, username: &str) -> TestUser {
    let new = NewUser {
        username: username.into(),
        password: PASSWORD.into(),
        ..NewUser::default()
    };
    let info = client.register(&new).await;
    let info = info.unwrap_or_else(|e| panic!("register {username}: {e}"));
    let secret = rand::random();
    TestUser {
        username: username.to_string(),
        id: info.id,
        token: login(client, username, PASSWORD).await,
        reg_id: 0,
        identity: KeyPair::from_secret(secret),
        secret,
    }
}

/// A password login that must succeed: the token.
pub async fn login(client: &Client, username: &str, password: &str) -> String {
    let token = client.login(username, password).await;
    token.unwrap_or_else(|e| panic!("login {username}: {e}"))
}

/// A new user (as `new_user`) with a device: `prekeys` EC and `kyber` Kyber one-time keys (ids
/// 1..=n) and a last-resort Kyber key.
pub async fn new_user_with_device(
    client: &Client,
    username: &str,
    reg_id: u32,
    prekeys: u32,
    kyber: u32,
) -> TestUser {
    let mut user = new_user(client, username).await;
    user.reg_id = reg_id;
    let device = user.new_device(1, prekeys, kyber, true);
    let created = client.with_token(&user.token).create_device(&device).await;
    let created = created.unwrap_or_else(|e| panic!("create device of {username}: {e}"));
    assert_eq!(created.code, "device_created");
    user
}

/// Links a device with `reg_id` to `user`'s account (`POST /v2/devices`), which must succeed:
/// `prekeys` EC and `kyber` Kyber one-time keys (ids 1..=n) and a last-resort Kyber key, all
/// signed by the account's identity. Answers the id the server gave it, and the account as that
/// device (`TestUser::device`), so that every helper taking a `TestUser` acts on it.
pub async fn link_device(
    client: &Client,
    user: &TestUser,
    reg_id: u32,
    prekeys: u32,
    kyber: u32,
) -> (u32, TestUser) {
    let body = user.link_body(reg_id, prekeys, kyber);
    let linked = client.with_token(&user.token).link_device(&body).await;
    let linked = linked.unwrap_or_else(|e| panic!("link {reg_id} to {}: {e}", user.username));
    let address = format!("{}.{}", user.username, linked.device_id);
    assert_eq!(linked.address, address, "the address of the linked device");
    // The device uses the token bound to it, as a linked client does.
    let device = TestUser {
        token: linked.token,
        ..user.device(reg_id)
    };
    (linked.device_id, device)
}

impl TestUser {
    /// The same account (name, token, identity) as its device with `reg_id`: what a linked
    /// device of it uses.
    pub fn device(&self, reg_id: u32) -> TestUser {
        TestUser {
            username: self.username.clone(),
            id: self.id,
            token: self.token.clone(),
            reg_id,
            identity: KeyPair::from_secret(self.secret),
            secret: self.secret,
        }
    }

    /// The body of `POST /v2/devices` for a device of this account with `reg_id`: real keys
    /// signed by the account's identity (`prekeys` EC and `kyber` Kyber one-time keys with ids
    /// 1..=n, signed prekey 1, last-resort Kyber key 999999).
    pub fn link_body(&self, reg_id: u32, prekeys: u32, kyber: u32) -> LinkDevice {
        // The address of `new_device` is not part of a link: the server picks the id.
        let new = self.device(reg_id).new_device(0, prekeys, kyber, true);
        LinkDevice {
            identity_key: new.identity_key,
            registration_id: new.registration_id,
            pre_keys: new.pre_keys,
            signed_pre_key: new.signed_pre_key,
            kyber_pre_keys: new.kyber_pre_keys,
            last_resort_kyber_pre_key: new.last_resort_kyber_pre_key,
        }
    }
}

/// The JSON text of a message addressed to a device with `registration_id`.
pub fn message_text(registration_id: u32, body: &str) -> String {
    json!({"registrationId": registration_id, "type": 1, "body": body}).to_string()
}

// ---- backup and restore ----

impl TestServer {
    /// A server (fast hashing, no rate limits) on an existing data dir, e.g. a restored one.
    pub async fn start_in(dir: tempfile::TempDir) -> TestServer {
        let args = [
            "signal-server",
            "--data-dir",
            &dir.path().display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--pbkdf2-iterations",
            "1000",
            "--no-rate-limit",
        ]
        .map(str::to_string);
        let config = <Config as clap::Parser>::parse_from(args);
        TestServer::start_config(config, dir).await
    }
}
