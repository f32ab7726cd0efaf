//! A small Signal client over signal-server's HTTP and WebSocket API, with the real libsignal
//! (`libsignal-protocol-syft`) doing the cryptography: PQXDH (X3DH + Kyber) to start a session
//! from a prekey bundle, then the Double Ratchet for every message.
//!
//! Shared by `examples/chat.rs` and `tests/interop.rs` (both include it with `#[path]`). Keys and
//! sessions live in libsignal's in-memory store, so a client lasts as long as the process.
//!
//! libsignal's store traits are `?Send`, so everything here runs on one task (never spawn it).
#![allow(dead_code)]

use std::collections::HashMap;
use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use libsignal_protocol_syft::{
    kem, message_decrypt, message_encrypt, process_prekey_bundle, CiphertextMessage,
    CiphertextMessageType, DeviceId, GenericSignedPreKey, IdentityKey, IdentityKeyPair,
    InMemSignalProtocolStore, KeyPair, KyberPreKeyRecord, KyberPreKeyStore, PreKeyBundle,
    PreKeyRecord, PreKeySignalMessage, PreKeyStore, ProtocolAddress, PublicKey, SignalMessage,
    SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
};
use rand::rngs::OsRng;
use rand::{Rng, TryRngCore as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Frame;

pub type Error = Box<dyn StdError + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Bound on every wait for the server (HTTP answer, WebSocket frame).
pub const WAIT: Duration = Duration::from_secs(30);

/// Builds an error from a message.
pub fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(value: &Value, what: &str) -> Result<Vec<u8>> {
    let text = value
        .as_str()
        .ok_or_else(|| format!("{what}: not a string: {value}"))?;
    Ok(B64.decode(text).map_err(|e| format!("{what}: {e}"))?)
}

fn as_u32(value: &Value, what: &str) -> Result<u32> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| format!("{what}: not a u32: {value}").into())
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `Retry-After` seconds of a 429 answer.
fn retry_after(res: &reqwest::Response) -> Option<u64> {
    if res.status() != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    res.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `name.deviceId` (the name may itself contain dots) as a libsignal address.
pub fn parse_address(address: &str) -> Result<ProtocolAddress> {
    let (name, device) = address
        .rsplit_once('.')
        .ok_or_else(|| format!("not an address: {address}"))?;
    let device: u8 = device
        .parse()
        .map_err(|_| format!("bad device id in {address}"))?;
    let device = DeviceId::new(device).map_err(|e| format!("{address}: {e}"))?;
    Ok(ProtocolAddress::new(name.to_string(), device))
}

/// The server's HTTP API: a base URL and a client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .expect("HTTP client"),
        }
    }

    /// Any request with an optional bearer token and JSON body: the status and the JSON answer
    /// (`Value::Null` when the body is empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let method = Method::from_bytes(method.as_bytes())?;
        let mut attempts = 0;
        let res = loop {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{}", self.base, path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let res = req.send().await?;
            // A server with rate limits on answers 429 with Retry-After: wait a little and retry.
            match retry_after(&res) {
                Some(secs) if attempts < 3 && secs <= 30 => {
                    attempts += 1;
                    eprintln!("(rate limited on {method} {path}; retrying in {secs} s)");
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                }
                _ => break res,
            }
        };
        let status = res.status();
        let text = res.text().await?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| format!("answer is not JSON: {text}"))?
        };
        Ok((status, value))
    }

    /// Like `call`, but any status other than `want` is an error.
    pub async fn expect(
        &self,
        want: StatusCode,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, value) = self.call(method, path, token, body).await?;
        if status != want {
            return fail(format!(
                "{method} {path}: expected {want}, got {status}: {value}"
            ));
        }
        Ok(value)
    }

    pub fn ws_base(&self) -> String {
        self.base.replacen("http", "ws", 1)
    }
}

/// One account with one device: its token, its libsignal identity and keys, its sessions.
pub struct Client {
    pub api: Api,
    pub username: String,
    pub token: String,
    pub registration_id: u32,
    pub device_id: DeviceId,
    pub identity: IdentityKeyPair,
    /// libsignal's own store: identity, prekeys (with private halves), sessions.
    pub store: InMemSignalProtocolStore,
    /// Registration ids of the peers we talk to, by username: the server checks that a
    /// message's inner `registrationId` is the recipient device's.
    peers: HashMap<String, u32>,
}

/// What the client uploaded, so callers can check what the server hands out.
pub struct Uploaded {
    pub pre_key_ids: Vec<u32>,
    pub kyber_pre_key_ids: Vec<u32>,
    pub last_resort_kyber_id: Option<u32>,
    pub signed_pre_key_id: u32,
}

/// A message decrypted by `Client::decrypt`.
#[derive(Debug)]
pub struct Received {
    pub id: u64,
    pub sender: String,
    pub kind: CiphertextMessageType,
    pub text: String,
}

impl Client {
    /// Registers `username` and logs in. Nothing is uploaded yet.
    pub async fn register(api: &Api, username: &str, password: &str) -> Result<Client> {
        let creds = json!({"username": username, "password": password});
        api.expect(
            StatusCode::CREATED,
            "POST",
            "/auth/users",
            None,
            Some(&creds),
        )
        .await?;
        let login = api
            .expect(
                StatusCode::OK,
                "POST",
                "/auth/jwt/create",
                None,
                Some(&creds),
            )
            .await?;
        let token = login["token"]
            .as_str()
            .ok_or("login answer has no token")?
            .to_string();

        let mut rng = OsRng.unwrap_err();
        let identity = IdentityKeyPair::generate(&mut rng);
        // libsignal's registration ids are 14 bits, 1..=16380 (the server takes 0..=999999).
        let registration_id = rng.random_range(1..=16380);
        let store = InMemSignalProtocolStore::new(identity, registration_id)?;
        Ok(Client {
            api: api.clone(),
            username: username.to_string(),
            token,
            registration_id,
            device_id: DeviceId::new(1).expect("device id 1"),
            identity,
            store,
            peers: HashMap::new(),
        })
    }

    pub fn address(&self) -> ProtocolAddress {
        ProtocolAddress::new(self.username.clone(), self.device_id)
    }

    fn sign(&self, public_key: &[u8]) -> Result<Vec<u8>> {
        let mut rng = OsRng.unwrap_err();
        Ok(self
            .identity
            .private_key()
            .calculate_signature(public_key, &mut rng)?
            .into_vec())
    }

    /// A one-time EC prekey: saved in the store, returned as the server's `{keyId, publicKey}`.
    async fn new_pre_key(&mut self, id: u32) -> Result<Value> {
        let mut rng = OsRng.unwrap_err();
        let pair = KeyPair::generate(&mut rng);
        self.store
            .save_pre_key(id.into(), &PreKeyRecord::new(id.into(), &pair))
            .await?;
        Ok(json!({"keyId": id, "publicKey": b64(&pair.public_key.serialize())}))
    }

    /// A Kyber-1024 prekey signed by the identity key: saved, returned as
    /// `{keyId, publicKey, signature}`.
    async fn new_kyber_pre_key(&mut self, id: u32) -> Result<Value> {
        let mut rng = OsRng.unwrap_err();
        let pair = kem::KeyPair::generate(kem::KeyType::Kyber1024, &mut rng);
        let public = pair.public_key.serialize();
        let signature = self.sign(&public)?;
        let record = KyberPreKeyRecord::new(
            id.into(),
            Timestamp::from_epoch_millis(now_millis()),
            &pair,
            &signature,
        );
        self.store.save_kyber_pre_key(id.into(), &record).await?;
        Ok(json!({"keyId": id, "publicKey": b64(&public), "signature": b64(&signature)}))
    }

    /// Creates the device (`POST /device/<regId>`) with real libsignal keys: a signed EC prekey
    /// (id 1), the one-time EC prekeys `pre_key_ids`, the one-time Kyber prekeys
    /// `kyber_pre_key_ids` and, when given, a last-resort Kyber prekey with that id.
    pub async fn create_device(
        &mut self,
        pre_key_ids: impl IntoIterator<Item = u32>,
        kyber_pre_key_ids: impl IntoIterator<Item = u32>,
        last_resort_kyber_id: Option<u32>,
    ) -> Result<Uploaded> {
        let mut rng = OsRng.unwrap_err();
        let signed_pre_key_id = 1;
        let signed = KeyPair::generate(&mut rng);
        let signed_public = signed.public_key.serialize();
        let signed_signature = self.sign(&signed_public)?;
        self.store
            .save_signed_pre_key(
                signed_pre_key_id.into(),
                &SignedPreKeyRecord::new(
                    signed_pre_key_id.into(),
                    Timestamp::from_epoch_millis(now_millis()),
                    &signed,
                    &signed_signature,
                ),
            )
            .await?;

        let mut uploaded = Uploaded {
            pre_key_ids: Vec::new(),
            kyber_pre_key_ids: Vec::new(),
            last_resort_kyber_id,
            signed_pre_key_id,
        };
        let mut pre_keys = Vec::new();
        for id in pre_key_ids {
            pre_keys.push(self.new_pre_key(id).await?);
            uploaded.pre_key_ids.push(id);
        }
        let mut kyber = Vec::new();
        for id in kyber_pre_key_ids {
            kyber.push(self.new_kyber_pre_key(id).await?);
            uploaded.kyber_pre_key_ids.push(id);
        }
        let mut body = json!({
            "address": format!("{}.{}", self.username, self.device_id),
            "identityKey": b64(&self.identity.identity_key().serialize()),
            "registrationId": self.registration_id,
            "preKeys": pre_keys,
            "signedPreKey": {
                "keyId": signed_pre_key_id,
                "publicKey": b64(&signed_public),
                "signature": b64(&signed_signature),
            },
            "kyberPreKeys": kyber,
        });
        if let Some(id) = last_resort_kyber_id {
            body["lastResortKyberPreKey"] = self.new_kyber_pre_key(id).await?;
        }
        self.api
            .expect(
                StatusCode::CREATED,
                "POST",
                &format!("/device/{}", self.registration_id),
                Some(&self.token),
                Some(&body),
            )
            .await?;
        Ok(uploaded)
    }

    /// Tops up one-time EC prekeys: `POST /prekeys/<regId>`.
    pub async fn upload_pre_keys(&mut self, ids: impl IntoIterator<Item = u32>) -> Result<()> {
        let mut keys = Vec::new();
        for id in ids {
            keys.push(self.new_pre_key(id).await?);
        }
        let path = format!("/prekeys/{}", self.registration_id);
        self.upload(&path, json!({ "preKeys": keys }), "prekeys_stored")
            .await
    }

    /// Tops up one-time Kyber prekeys: `POST /kyberprekeys/<regId>`.
    pub async fn upload_kyber_pre_keys(
        &mut self,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<()> {
        let mut keys = Vec::new();
        for id in ids {
            keys.push(self.new_kyber_pre_key(id).await?);
        }
        let path = format!("/kyberprekeys/{}", self.registration_id);
        self.upload(
            &path,
            json!({ "kyberPreKeys": keys }),
            "kyber_prekeys_stored",
        )
        .await
    }

    /// A key upload that must answer 200 with `code`.
    async fn upload(&self, path: &str, body: serde_json::Value, code: &str) -> Result<()> {
        let v = self
            .api
            .expect(StatusCode::OK, "POST", path, Some(&self.token), Some(&body))
            .await?;
        if v["code"] != code {
            return fail(format!("POST {path}: {v}"));
        }
        Ok(())
    }

    /// `GET /prekeys/<regId>`: how many one-time EC and Kyber prekeys the server still holds.
    pub async fn prekey_counts(&self) -> Result<(u64, u64)> {
        let v = self
            .api
            .expect(
                StatusCode::OK,
                "GET",
                &format!("/prekeys/{}", self.registration_id),
                Some(&self.token),
                None,
            )
            .await?;
        match (v["preKeyCount"].as_u64(), v["kyberPreKeyCount"].as_u64()) {
            (Some(ec), Some(kyber)) => Ok((ec, kyber)),
            _ => fail(format!("bad prekey counts: {v}")),
        }
    }

    /// `GET /prekeybundle/<username>/<regId>`: the server's JSON answer.
    pub async fn fetch_bundle(&self, username: &str) -> Result<Value> {
        self.api
            .expect(
                StatusCode::OK,
                "GET",
                &format!("/prekeybundle/{username}/{}", self.registration_id),
                Some(&self.token),
                None,
            )
            .await
    }

    /// Fetches `username`'s bundle and starts a session with it (PQXDH). Answers the bundle as
    /// the server sent it.
    pub async fn start_session(&mut self, username: &str) -> Result<Value> {
        let json = self.fetch_bundle(username).await?;
        let (address, bundle) = bundle_from_json(&json)?;
        let mut rng = OsRng.unwrap_err();
        process_prekey_bundle(
            &address,
            &mut self.store.session_store,
            &mut self.store.identity_store,
            &bundle,
            SystemTime::now(),
            &mut rng,
        )
        .await?;
        self.peers
            .insert(address.name().to_string(), bundle.registration_id()?);
        Ok(json)
    }

    /// The peer's libsignal address: its username and device 1 (one device per user).
    fn peer_address(&self, username: &str) -> ProtocolAddress {
        ProtocolAddress::new(username.to_string(), DeviceId::new(1).expect("device id 1"))
    }

    /// Encrypts `text` for `username` (a session must exist) and sends it with
    /// `POST /messages/<regId>`. Answers the ciphertext type and the server's 201 answer.
    pub async fn send(
        &mut self,
        username: &str,
        text: &str,
    ) -> Result<(CiphertextMessageType, Value)> {
        let address = self.peer_address(username);
        let registration_id = *self
            .peers
            .get(username)
            .ok_or_else(|| format!("no session with {username}"))?;
        let mut rng = OsRng.unwrap_err();
        let ciphertext = message_encrypt(
            text.as_bytes(),
            &address,
            &mut self.store.session_store,
            &mut self.store.identity_store,
            SystemTime::now(),
            &mut rng,
        )
        .await?;
        let kind = ciphertext.message_type();
        // The server stores `message` verbatim; it only reads `registrationId` from it.
        let inner = json!({
            "registrationId": registration_id,
            "type": kind as u8,
            "body": b64(ciphertext.serialize()),
        });
        let body = json!({"recipient": username, "message": inner.to_string()});
        let answer = self
            .api
            .expect(
                StatusCode::CREATED,
                "POST",
                &format!("/messages/{}", self.registration_id),
                Some(&self.token),
                Some(&body),
            )
            .await?;
        Ok((kind, answer))
    }

    /// Decrypts one message as the server delivers it (`{"id", "senderAddress",
    /// "senderRegistrationID", "content", ...}`). A PreKey message starts the session on this
    /// side (and uses up our one-time EC prekey in the local store).
    pub async fn decrypt(&mut self, message: &Value) -> Result<Received> {
        let id = message["id"]
            .as_u64()
            .ok_or_else(|| format!("message without id: {message}"))?;
        let sender = message["senderAddress"]
            .as_str()
            .ok_or_else(|| format!("message without senderAddress: {message}"))?;
        let address = parse_address(sender)?;
        let content: Value = serde_json::from_str(
            message["content"]
                .as_str()
                .ok_or_else(|| format!("message without content: {message}"))?,
        )?;
        if as_u32(&content["registrationId"], "registrationId")? != self.registration_id {
            return fail(format!("message {id} is not for our registration id"));
        }
        let bytes = unb64(&content["body"], "body")?;
        let kind = u8::try_from(as_u32(&content["type"], "type")?)
            .ok()
            .and_then(|t| CiphertextMessageType::try_from(t).ok())
            .ok_or_else(|| format!("unknown ciphertext type: {}", content["type"]))?;
        let ciphertext = match kind {
            CiphertextMessageType::PreKey => {
                CiphertextMessage::PreKeySignalMessage(PreKeySignalMessage::try_from(&bytes[..])?)
            }
            CiphertextMessageType::Whisper => {
                CiphertextMessage::SignalMessage(SignalMessage::try_from(&bytes[..])?)
            }
            other => return fail(format!("unexpected ciphertext type {other:?}")),
        };
        let mut rng = OsRng.unwrap_err();
        let plain = message_decrypt(
            &ciphertext,
            &address,
            &mut self.store.session_store,
            &mut self.store.identity_store,
            &mut self.store.pre_key_store,
            &self.store.signed_pre_key_store,
            &mut self.store.kyber_pre_key_store,
            &mut rng,
        )
        .await?;
        if let Some(reg) = message["senderRegistrationID"].as_u64() {
            self.peers.insert(address.name().to_string(), reg as u32);
        }
        Ok(Received {
            id,
            sender: address.name().to_string(),
            kind,
            text: String::from_utf8(plain)?,
        })
    }

    /// `GET /messages/<regId>`: the queued messages, oldest first (reading deletes nothing).
    pub async fn queued(&self) -> Result<Vec<Value>> {
        let v = self
            .api
            .expect(
                StatusCode::OK,
                "GET",
                &format!("/messages/{}", self.registration_id),
                Some(&self.token),
                None,
            )
            .await?;
        match v {
            Value::Array(items) => Ok(items),
            other => fail(format!("queue is not a list: {other}")),
        }
    }

    /// `DELETE /messages/<regId>` with `ids`; every id must answer "success".
    pub async fn delete_messages(&self, ids: &[u64]) -> Result<()> {
        let v = self
            .api
            .expect(
                StatusCode::OK,
                "DELETE",
                &format!("/messages/{}", self.registration_id),
                Some(&self.token),
                Some(&json!(ids)),
            )
            .await?;
        let want = json!(vec!["success"; ids.len()]);
        if v != want {
            return fail(format!("delete {ids:?}: {v}"));
        }
        Ok(())
    }

    /// Opens `GET /messages/<regId>/ws` with the token in `?token=`.
    pub async fn connect(&self) -> Result<Live> {
        let url = format!(
            "{}/messages/{}/ws?token={}",
            self.api.ws_base(),
            self.registration_id,
            self.token
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| "WebSocket handshake timed out")??;
        Ok(Live { ws })
    }
}

/// Turns the server's bundle answer into the peer's address and a libsignal `PreKeyBundle`.
pub fn bundle_from_json(v: &Value) -> Result<(ProtocolAddress, PreKeyBundle)> {
    let address = parse_address(
        v["address"]
            .as_str()
            .ok_or_else(|| format!("bundle without address: {v}"))?,
    )?;
    let identity = IdentityKey::decode(&unb64(&v["identityKey"], "identityKey")?)?;
    let pre_key = match v.get("preKey") {
        None | Some(Value::Null) => None,
        Some(k) => Some((
            as_u32(&k["keyId"], "preKey.keyId")?.into(),
            PublicKey::deserialize(&unb64(&k["publicKey"], "preKey.publicKey")?)?,
        )),
    };
    let spk = &v["signedPreKey"];
    let kyber = v
        .get("kyberPreKey")
        .ok_or("the bundle has no Kyber prekey; PQXDH needs one")?;
    let bundle = PreKeyBundle::new(
        as_u32(&v["registrationId"], "registrationId")?,
        address.device_id(),
        pre_key,
        as_u32(&spk["keyId"], "signedPreKey.keyId")?.into(),
        PublicKey::deserialize(&unb64(&spk["publicKey"], "signedPreKey.publicKey")?)?,
        unb64(&spk["signature"], "signedPreKey.signature")?,
        as_u32(&kyber["keyId"], "kyberPreKey.keyId")?.into(),
        kem::PublicKey::deserialize(&unb64(&kyber["publicKey"], "kyberPreKey.publicKey")?)?,
        unb64(&kyber["signature"], "kyberPreKey.signature")?,
        identity,
    )?;
    Ok((address, bundle))
}

/// A frame from the live connection.
#[derive(Debug)]
pub enum Event {
    Message(Value),
    QueueEmpty,
}

/// A live `GET /messages/<regId>/ws` connection.
pub struct Live {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Live {
    /// The next `message` or `queue_empty` frame (pings and pongs skipped), bounded by `WAIT`.
    pub async fn next(&mut self) -> Result<Event> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .map_err(|_| "no WebSocket frame from the server in time")?
                .ok_or("the server closed the WebSocket")??;
            let text = match frame {
                Frame::Text(text) => text,
                Frame::Ping(_) | Frame::Pong(_) => continue,
                other => return fail(format!("unexpected WebSocket frame: {other:?}")),
            };
            let v: Value = serde_json::from_str(text.as_str())?;
            return match v["type"].as_str() {
                Some("message") => Ok(Event::Message(v["message"].clone())),
                Some("queue_empty") => Ok(Event::QueueEmpty),
                _ => fail(format!("unexpected frame: {v}")),
            };
        }
    }

    /// Reads up to `queue_empty`: the backlog the server sends first.
    pub async fn backlog(&mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            match self.next().await? {
                Event::Message(m) => out.push(m),
                Event::QueueEmpty => return Ok(out),
            }
        }
    }

    /// The next message frame (a `queue_empty` here is an error).
    pub async fn next_message(&mut self) -> Result<Value> {
        match self.next().await? {
            Event::Message(m) => Ok(m),
            Event::QueueEmpty => fail("expected a message, got queue_empty"),
        }
    }

    /// `{"type": "ack", "ids": [...]}`: the server deletes those messages.
    pub async fn ack(&mut self, ids: &[u64]) -> Result<()> {
        let frame = json!({"type": "ack", "ids": ids}).to_string();
        self.ws.send(Frame::Text(frame.into())).await?;
        Ok(())
    }

    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await?;
        Ok(())
    }
}
