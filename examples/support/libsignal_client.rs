//! A small Signal client over signal-server's HTTP and WebSocket API, with the real libsignal
//! (`libsignal-protocol-syft`) doing the cryptography: PQXDH (X3DH + Kyber) to start a session
//! from a prekey bundle, then the Double Ratchet for every message.
//!
//! Shared by `examples/chat.rs`, `examples/linked.rs`, `examples/attachment.rs` and
//! `tests/api/interop/` (all include it with `#[path]`). A `Client` is one device of one account;
//! `linked_devices.rs` adds the accounts with several devices (`/v2/...`), `attachments.rs`
//! encrypted attachments and their pointers. Keys and sessions live in libsignal's in-memory
//! store, so a client lasts as long as the process. The requests go through the typed client
//! (`signal_server::client`); answers of the one-device routes are handed to the callers as JSON
//! values, as the server sent them.
//!
//! libsignal's store traits are `?Send`, so everything here runs on one task (never spawn it).
#![allow(dead_code)]

#[path = "attachments.rs"]
pub mod attachments;
#[path = "linked_devices.rs"]
mod linked_devices;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use libsignal_protocol_syft::{
    kem, message_decrypt, message_encrypt, process_prekey_bundle, CiphertextMessage,
    CiphertextMessageType, DeviceId, GenericSignedPreKey, IdentityKey, IdentityKeyPair,
    InMemSignalProtocolStore, KeyPair, KyberPreKeyRecord, KyberPreKeyStore, PreKeyBundle,
    PreKeyRecord, PreKeySignalMessage, PreKeyStore, ProtocolAddress, PublicKey, SignalMessage,
    SignedPreKeyRecord, SignedPreKeyStore, Timestamp,
};
use rand::rngs::OsRng;
use rand::{Rng, TryRngCore as _};
use serde_json::{json, Value};
use signal_server::client::{
    self as http, Deleted, Frame, KyberUpload, Method, NewDevice, NewUser,
    SignedPreKey as SignedKey, StatusCode, WsAuth,
};

pub type Error = Box<dyn StdError + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Bound on every wait for the server (HTTP answer, WebSocket frame).
pub const WAIT: Duration = Duration::from_secs(30);

/// Builds an error from a message.
pub fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

/// The server's refusal (status, `code`, body) when that is what `e` is, e.g. the 409 or 410 of
/// `Client::send_all`.
pub fn refusal(e: &Error) -> Option<&http::Refusal> {
    e.downcast_ref::<http::Error>()?.refusal()
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

/// A typed answer as the JSON the server sent.
fn to_json(value: &impl serde::Serialize) -> Result<Value> {
    Ok(serde_json::to_value(value)?)
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

/// The server's HTTP API: a base URL and the typed client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    http: http::Client,
}

impl Api {
    /// A server with rate limits on answers 429 with Retry-After: the client waits a little and
    /// retries (up to 3 times), saying so on stderr.
    pub fn new(base: &str) -> Api {
        let trace = Arc::new(
            |method: &Method, path: &str, status: Option<StatusCode>, _: &[u8]| {
                if status == Some(StatusCode::TOO_MANY_REQUESTS) {
                    eprintln!("(rate limited on {method} {path}; retrying if Retry-After allows)");
                }
            },
        );
        let http = http::Client::new(base).expect("HTTP client");
        Api {
            base: http.base().to_string(),
            http: http.with_retries(3).with_trace(trace),
        }
    }

    /// The typed client, carrying `token`.
    fn as_user(&self, token: &str) -> http::Client {
        self.http.with_token(token)
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
        let client = match token {
            Some(t) => self.as_user(t),
            None => self.http.clone(),
        };
        let res = client.request(method, path, body).await?;
        let value = if res.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&res.body).map_err(|_| {
                format!("answer is not JSON: {}", String::from_utf8_lossy(&res.body))
            })?
        };
        Ok((res.status, value))
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

/// One device of an account: the account's token and identity, the device's libsignal keys and
/// its sessions (one per peer device).
pub struct Client {
    pub api: Api,
    pub username: String,
    pub token: String,
    pub registration_id: u32,
    pub device_id: DeviceId,
    pub identity: IdentityKeyPair,
    /// libsignal's own store: identity, prekeys (with private halves), sessions.
    pub store: InMemSignalProtocolStore,
    /// The registration id of every peer device we have a session with: the server checks it
    /// against the recipient device's (the inner `registrationId` of `POST /messages`, the one
    /// beside each ciphertext of `POST /v2/messages`).
    peers: HashMap<ProtocolAddress, u32>,
}

/// What the client uploaded, so callers can check what the server hands out.
pub struct Uploaded {
    pub pre_key_ids: Vec<u32>,
    pub kyber_pre_key_ids: Vec<u32>,
    pub last_resort_kyber_id: Option<u32>,
    pub signed_pre_key_id: u32,
}

/// The public keys a new device uploads (`POST /device`, `POST /v2/devices`).
struct DeviceKeys {
    pre_keys: Vec<http::PreKey>,
    signed_pre_key: SignedKey,
    kyber_pre_keys: Vec<SignedKey>,
    last_resort: Option<SignedKey>,
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
        let new = NewUser {
            username: username.to_string(),
            password: password.to_string(),
            ..NewUser::default()
        };
        api.http.register(&new).await?;
        let token = api.http.login(username, password).await?;

        let identity = IdentityKeyPair::generate(&mut OsRng.unwrap_err());
        Client::install(api, username, &token, identity, None)
    }

    /// A device of the account `username` with the identity key pair `identity`: a new
    /// registration id (never `taken`), an empty store, device id 1 until linked as another.
    fn install(
        api: &Api,
        username: &str,
        token: &str,
        identity: IdentityKeyPair,
        taken: Option<u32>,
    ) -> Result<Client> {
        let mut rng = OsRng.unwrap_err();
        // libsignal's registration ids are 14 bits, 1..=16380 (the server takes 0..=999999).
        let registration_id = loop {
            let id = rng.random_range(1..=16380);
            if Some(id) != taken {
                break id;
            }
        };
        let store = InMemSignalProtocolStore::new(identity, registration_id)?;
        Ok(Client {
            api: api.clone(),
            username: username.to_string(),
            token: token.to_string(),
            registration_id,
            device_id: DeviceId::new(1).expect("device id 1"),
            identity,
            store,
            peers: HashMap::new(),
        })
    }

    /// The typed client, carrying this user's token.
    fn http(&self) -> http::Client {
        self.api.as_user(&self.token)
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

    /// A one-time EC prekey: saved in the store, returned for the server.
    async fn new_pre_key(&mut self, id: u32) -> Result<http::PreKey> {
        let mut rng = OsRng.unwrap_err();
        let pair = KeyPair::generate(&mut rng);
        self.store
            .save_pre_key(id.into(), &PreKeyRecord::new(id.into(), &pair))
            .await?;
        Ok(http::PreKey {
            key_id: id,
            public_key: pair.public_key.serialize().to_vec(),
        })
    }

    /// A Kyber-1024 prekey signed by the identity key: saved, returned for the server.
    async fn new_kyber_pre_key(&mut self, id: u32) -> Result<SignedKey> {
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
        Ok(SignedKey {
            key_id: id,
            public_key: public.to_vec(),
            signature,
        })
    }

    /// Creates the device (`POST /device/`) with real libsignal keys: a signed EC prekey
    /// (id 1), the one-time EC prekeys `pre_key_ids`, the one-time Kyber prekeys
    /// `kyber_pre_key_ids` and, when given, a last-resort Kyber prekey with that id.
    pub async fn create_device(
        &mut self,
        pre_key_ids: impl IntoIterator<Item = u32>,
        kyber_pre_key_ids: impl IntoIterator<Item = u32>,
        last_resort_kyber_id: Option<u32>,
    ) -> Result<Uploaded> {
        let (keys, uploaded) = self
            .new_keys(pre_key_ids, kyber_pre_key_ids, last_resort_kyber_id)
            .await?;
        let device = NewDevice {
            address: format!("{}.{}", self.username, self.device_id),
            identity_key: self.identity.identity_key().serialize().to_vec(),
            registration_id: self.registration_id,
            pre_keys: keys.pre_keys,
            signed_pre_key: keys.signed_pre_key,
            kyber_pre_keys: keys.kyber_pre_keys,
            last_resort_kyber_pre_key: keys.last_resort,
        };
        self.http().create_device(&device).await?;
        Ok(uploaded)
    }

    /// A device's first keys (see `create_device`), saved in the store with their private halves:
    /// the public halves for the server, and what they are.
    async fn new_keys(
        &mut self,
        pre_key_ids: impl IntoIterator<Item = u32>,
        kyber_pre_key_ids: impl IntoIterator<Item = u32>,
        last_resort_kyber_id: Option<u32>,
    ) -> Result<(DeviceKeys, Uploaded)> {
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
        let last_resort = match last_resort_kyber_id {
            Some(id) => Some(self.new_kyber_pre_key(id).await?),
            None => None,
        };
        let keys = DeviceKeys {
            pre_keys,
            signed_pre_key: SignedKey {
                key_id: signed_pre_key_id,
                public_key: signed_public.to_vec(),
                signature: signed_signature,
            },
            kyber_pre_keys: kyber,
            last_resort,
        };
        Ok((keys, uploaded))
    }

    /// Tops up one-time EC prekeys: `POST /prekeys/<regId>`.
    pub async fn upload_pre_keys(&mut self, ids: impl IntoIterator<Item = u32>) -> Result<()> {
        let mut keys = Vec::new();
        for id in ids {
            keys.push(self.new_pre_key(id).await?);
        }
        let stored = self
            .http()
            .upload_prekeys(self.registration_id, &keys)
            .await?;
        expect_code(&stored, "prekeys_stored")
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
        let upload = KyberUpload {
            kyber_pre_keys: keys,
            last_resort_kyber_pre_key: None,
        };
        let stored = self
            .http()
            .upload_kyber(self.registration_id, &upload)
            .await?;
        expect_code(&stored, "kyber_prekeys_stored")
    }

    /// `GET /prekeys/<regId>`: how many one-time EC and Kyber prekeys the server still holds.
    pub async fn prekey_counts(&self) -> Result<(u64, u64)> {
        let counts = self.http().stock(self.registration_id).await?;
        Ok((
            counts.pre_key_count.into(),
            counts.kyber_pre_key_count.into(),
        ))
    }

    /// `GET /prekeybundle/<username>/<regId>`: the server's JSON answer.
    pub async fn fetch_bundle(&self, username: &str) -> Result<Value> {
        let bundle = self.http().bundle(username, self.registration_id).await?;
        to_json(&bundle)
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
        self.peers.insert(address, bundle.registration_id()?);
        Ok(json)
    }

    /// The peer's libsignal address on the one-device routes: its username and device 1 (the
    /// primary, the only device the old routes reach).
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
        let (kind, message) = self.encrypt(&address, text).await?;
        let stored = self
            .http()
            .send(self.registration_id, username, &message)
            .await?;
        Ok((kind, to_json(&stored)?))
    }

    /// Encrypts `text` for the peer device `address` (a session must exist): the ciphertext
    /// type and the envelope the server stores verbatim, `{"registrationId", "type", "body"}`
    /// (the old routes read `registrationId` from it; the new ones leave it alone).
    async fn encrypt(
        &mut self,
        address: &ProtocolAddress,
        text: &str,
    ) -> Result<(CiphertextMessageType, String)> {
        let registration_id = *self
            .peers
            .get(address)
            .ok_or_else(|| format!("no session with {address}"))?;
        let mut rng = OsRng.unwrap_err();
        let ciphertext = message_encrypt(
            text.as_bytes(),
            address,
            &mut self.store.session_store,
            &mut self.store.identity_store,
            SystemTime::now(),
            &mut rng,
        )
        .await?;
        let kind = ciphertext.message_type();
        let inner = json!({
            "registrationId": registration_id,
            "type": kind as u8,
            "body": B64.encode(ciphertext.serialize()),
        });
        Ok((kind, inner.to_string()))
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
            self.peers.insert(address.clone(), reg as u32);
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
        let queue = self.http().fetch(self.registration_id, None).await?;
        queue.iter().map(to_json).collect()
    }

    /// `DELETE /messages/<regId>` with `ids`; every id must answer "success".
    pub async fn delete_messages(&self, ids: &[u64]) -> Result<()> {
        let outcomes = self
            .http()
            .delete_messages(self.registration_id, ids)
            .await?;
        if outcomes.iter().any(|o| *o != Deleted::Success) {
            return fail(format!("delete {ids:?}: {outcomes:?}"));
        }
        Ok(())
    }

    /// Opens `GET /messages/<regId>/ws` with the token in `?token=`.
    pub async fn connect(&self) -> Result<Live> {
        let http = self.http();
        let connect = http.connect(self.registration_id, WsAuth::Query);
        let session = tokio::time::timeout(WAIT, connect)
            .await
            .map_err(|_| "WebSocket handshake timed out")??;
        Ok(Live { session })
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
    session: http::Session,
}

impl Live {
    /// The next `message` or `queue_empty` frame (pings and pongs skipped), bounded by `WAIT`.
    pub async fn next(&mut self) -> Result<Event> {
        let frame = tokio::time::timeout(WAIT, self.session.next())
            .await
            .map_err(|_| "no WebSocket frame from the server in time")??
            .ok_or("the server closed the WebSocket")?;
        match frame {
            Frame::Message { message } => Ok(Event::Message(to_json(&message)?)),
            Frame::QueueEmpty => Ok(Event::QueueEmpty),
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
        Ok(self.session.ack(ids).await?)
    }

    pub async fn close(self) -> Result<()> {
        Ok(self.session.close().await?)
    }
}

/// A successful upload must say what it stored.
fn expect_code(stored: &http::Stored, code: &str) -> Result<()> {
    if stored.code != code {
        return fail(format!("expected {code}, got {stored:?}"));
    }
    Ok(())
}
