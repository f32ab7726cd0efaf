//! Setup through the typed client: users, devices and prekey stock. Any failure ends the run
//! (exit code 2): the measurements would mean nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use signal_server::client::{self, Client, KyberUpload, NewDevice, NewUser, PreKey, SignedPreKey};
use signal_server::crypto::KeyPair;

/// The server, as the setup sees it.
pub struct Api {
    pub client: Client,
    /// `host:port`, for the measured requests' `Host` header.
    pub host: String,
    pub password: String,
}

#[derive(Clone)]
pub struct User {
    pub name: String,
    pub token: String,
    pub reg_id: u32,
}

fn unique_name(prefix: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static N: AtomicUsize = AtomicUsize::new(0);
    let run = RUN.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("{prefix}{run}x{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The answer, or the end of the run.
fn must<T>(what: &str, result: Result<T, client::Error>) -> T {
    result.unwrap_or_else(|e| {
        eprintln!("setup failed: {what}: {e}");
        std::process::exit(2);
    })
}

/// The keys of a device: the creation body and the top-up uploads (100 keys per request).
struct Keys {
    device: NewDevice,
    prekeys: Vec<Vec<PreKey>>,
    kyber: Vec<Vec<SignedPreKey>>,
}

fn keys(name: &str, reg_id: u32, prekeys: u32, kyber: u32) -> Keys {
    let identity = KeyPair::generate();
    let ec: Vec<PreKey> = (1..=prekeys).map(PreKey::generate).collect();
    let mut ec = ec.chunks(100).map(<[PreKey]>::to_vec);
    let kyber: Vec<SignedPreKey> = (1..=kyber)
        .map(|id| SignedPreKey::random_kyber(&identity, id))
        .collect();
    let device = NewDevice {
        address: format!("{name}.1"),
        identity_key: identity.public.to_vec(),
        registration_id: reg_id,
        pre_keys: ec.next().unwrap_or_default(),
        signed_pre_key: SignedPreKey::generate_ec(&identity, 1),
        kyber_pre_keys: Vec::new(),
        last_resort_kyber_pre_key: Some(SignedPreKey::random_kyber(&identity, 16_000_000)),
    };
    Keys {
        device,
        prekeys: ec.collect(),
        kyber: kyber.chunks(100).map(<[SignedPreKey]>::to_vec).collect(),
    }
}

impl Api {
    pub fn new(base: &str, host: &str, password: &str) -> Api {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        Api {
            client: Client::with_http(base, http),
            host: host.to_string(),
            password: password.to_string(),
        }
    }

    pub async fn login(&self, name: &str) -> String {
        must("login", self.client.login(name, &self.password).await)
    }

    /// Registers a user, logs in, and (with `device`) creates a device with `prekeys` one-time
    /// EC prekeys and `kyber` one-time Kyber prekeys (uploaded 100 at a time) and a last-resort
    /// Kyber key.
    async fn user(&self, prefix: &str, device: bool, prekeys: u32, kyber: u32) -> User {
        let name = unique_name(prefix);
        let new = NewUser {
            username: name.clone(),
            password: self.password.clone(),
            ..NewUser::default()
        };
        must("register", self.client.register(&new).await);
        let token = self.login(&name).await;
        let reg_id = rand::rng().random_range(1..=999_999u32);
        let user = User {
            name,
            token,
            reg_id,
        };
        if !device {
            return user;
        }
        let name = user.name.clone();
        let keys = tokio::task::spawn_blocking(move || keys(&name, reg_id, prekeys, kyber));
        let keys = keys.await.expect("key generation");
        let me = self.client.with_token(&user.token);
        must("device", me.create_device(&keys.device).await);
        for batch in &keys.prekeys {
            must("prekeys", me.upload_prekeys(reg_id, batch).await);
        }
        for batch in keys.kyber {
            let upload = KyberUpload {
                kyber_pre_keys: batch,
                last_resort_kyber_pre_key: None,
            };
            must("kyber prekeys", me.upload_kyber(reg_id, &upload).await);
        }
        user
    }

    /// `n` users made 8 at a time.
    pub async fn users(
        self: &Arc<Self>,
        n: usize,
        prefix: &'static str,
        device: bool,
        prekeys: u32,
        kyber: u32,
    ) -> Vec<User> {
        let t = Instant::now();
        let permits = Arc::new(tokio::sync::Semaphore::new(8));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let api = self.clone();
                let permits = permits.clone();
                tokio::spawn(async move {
                    let _p = permits.acquire().await.expect("semaphore");
                    api.user(prefix, device, prekeys, kyber).await
                })
            })
            .collect();
        let mut users = Vec::with_capacity(n);
        for h in handles {
            users.push(h.await.expect("setup task"));
        }
        eprintln!(
            "INFO setup: {n} users ({prekeys} EC + {kyber} Kyber one-time prekeys each) in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        users
    }
}
