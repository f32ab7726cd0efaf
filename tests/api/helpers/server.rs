//! Test harness shared by the integration tests: the real server (`signal_server::run`) on
//! 127.0.0.1:0 with a sled data dir in a temp folder, a small HTTP client, and real key material
//! (X25519 keys with XEdDSA signatures, Kyber-sized keys signed the same way).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use signal_server::crypto::{b64, KeyPair};
use signal_server::{App, Config};
use tokio::sync::oneshot;

pub const PASSWORD: &str = "tangerine-Voyage-42";

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

    pub async fn start_config(config: Config, dir: tempfile::TempDir) -> TestServer {
        let app = App::open(config).expect("app");
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
        let mut req = self.http.request(
            Method::from_bytes(method.as_bytes()).unwrap(),
            self.url(path),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        answer(req).await
    }

    /// A raw body (not necessarily JSON).
    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                self.url(path),
            )
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
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

    /// Registers `username` (password `PASSWORD`) and logs in.
    pub async fn user(&self, username: &str) -> TestUser {
        let (status, body) = self
            .call(
                "POST",
                "/auth/users",
                None,
                Some(&json!({"username": username, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {username}: {body}");
        let token = self.login(username, PASSWORD).await;
        TestUser {
            username: username.to_string(),
            id: body["id"].as_u64().unwrap(),
            token,
            reg_id: 0,
            identity: KeyPair::generate(),
        }
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/auth/jwt/create",
                None,
                Some(&json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        body["token"].as_str().unwrap().to_string()
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
        let mut user = self.user(username).await;
        user.reg_id = reg_id;
        let body = user.device_body(1, prekeys, kyber, true);
        let (status, res) = self
            .post(&format!("/device/{reg_id}"), &user.token, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "create device: {res}");
        user
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

/// Sends a request; its status and JSON body (`Value::Null` for an empty body).
async fn answer(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("request");
    let status = res.status();
    let text = res.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, value)
}

pub struct TestUser {
    pub username: String,
    pub id: u64,
    pub token: String,
    pub reg_id: u32,
    pub identity: KeyPair,
}

impl TestUser {
    /// A device registration body with real, correctly signed keys.
    pub fn device_body(
        &self,
        device_id: u32,
        prekeys: u32,
        kyber: u32,
        last_resort: bool,
    ) -> Value {
        let mut body = json!({
            "address": format!("{}.{device_id}", self.username),
            "identityKey": b64::encode(&self.identity.public),
            "registrationId": self.reg_id,
            "preKeys": ec_prekeys(1..=prekeys),
            "signedPreKey": signed_ec(&self.identity, 1),
            "kyberPreKeys": kyber_prekeys(&self.identity, 1..=kyber),
        });
        if last_resort {
            body["lastResortKyberPreKey"] = signed_kyber(&self.identity, 999_999);
        }
        body
    }
}

/// One-time EC prekeys with the given ids.
pub fn ec_prekeys(ids: impl IntoIterator<Item = u32>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| json!({"keyId": id, "publicKey": b64::encode(&KeyPair::generate().public)}))
            .collect(),
    )
}

/// A signed EC prekey, signed by `identity`.
pub fn signed_ec(identity: &KeyPair, key_id: u32) -> Value {
    let key = KeyPair::generate().public;
    json!({"keyId": key_id, "publicKey": b64::encode(&key), "signature": b64::encode(&identity.sign(&key))})
}

/// A Kyber-sized public key (type byte 0x08 + 1568 random bytes).
pub fn kyber_key() -> Vec<u8> {
    let mut key = vec![0x08u8];
    key.extend((0..1568).map(|_| rand::random::<u8>()));
    key
}

/// A Kyber prekey signed by `identity`.
pub fn signed_kyber(identity: &KeyPair, key_id: u32) -> Value {
    let key = kyber_key();
    json!({"keyId": key_id, "publicKey": b64::encode(&key), "signature": b64::encode(&identity.sign(&key))})
}

pub fn kyber_prekeys(identity: &KeyPair, ids: impl IntoIterator<Item = u32>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| signed_kyber(identity, id))
            .collect(),
    )
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
