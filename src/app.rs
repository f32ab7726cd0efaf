//! The application state every handler gets: configuration, storage, token keys, the password
//! hasher, rate limits, live-delivery hub and mailer. Cheap to clone (one `Arc`).

use std::ops::Deref;
use std::sync::Arc;

use crate::auth::{Caller, Tokens};
use crate::body::BodyLimits;
use crate::config::Config;
use crate::cors::Cors;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::models::Member;
use crate::password::Hasher;
use crate::ratelimit::RateLimits;
use crate::storage::{PgStore, Storage, StorageOptions};

pub struct State {
    pub config: Config,
    pub storage: Storage,
    pub tokens: Tokens,
    pub hasher: Hasher,
    pub limits: RateLimits,
    pub hub: Hub,
    pub mailer: Mailer,
    pub metrics: Metrics,
    pub cors: Arc<Cors>,
    pub bodies: BodyLimits,
    /// Keyed sends running on this instance (see `idempotency`).
    pub in_flight: Arc<crate::idempotency::InFlight>,
    /// Where attachment bytes live.
    pub blobs: crate::attachments::Blobs,
}

#[derive(Clone)]
pub struct App(Arc<State>);

impl Deref for App {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl App {
    /// Opens storage (sled in `config.data_dir`, or PostgreSQL with `--database-url`) and sets
    /// everything up. The caller holds the data-dir lock (see `datadir::lock`).
    pub async fn open(config: Config) -> crate::failure::Result<App> {
        crate::datadir::prepare(&config.data_dir)?;
        let (storage, secret) = open_storage(&config).await?;
        let mailer = Mailer::new(
            config.smtp_url.as_deref(),
            &config.smtp_from,
            config.public_url.as_deref(),
        )?;
        let cors = Cors::new(&config.cors_origin)?;
        let blobs = crate::attachments::open_blobs(&config).await?;
        Ok(App(Arc::new(State {
            tokens: Tokens::new(&secret, config.token_ttl, config.refresh_max_age),
            hasher: Hasher::new(config.pbkdf2_iterations, config.hash_queue),
            limits: RateLimits::new(!config.no_rate_limit),
            hub: Hub::default(),
            mailer,
            metrics: Metrics::default(),
            cors: Arc::new(cors),
            bodies: BodyLimits::from_config(&config),
            in_flight: Arc::default(),
            blobs,
            storage,
            config,
        })))
    }

    /// The caller's device with the `<regId>` of the path (any device of the account; with a
    /// token bound to a device, that device only). From the caller's cached account; a
    /// `<regId>` it does not list has the account read again first (a device linked since).
    pub async fn own_device(&self, caller: &Caller, reg_id: u64) -> Result<Arc<Member>, ApiError> {
        let device = match caller.principal.by_registration_id(reg_id) {
            Some(found) => found.clone(),
            None => {
                let principal = self
                    .hub
                    .principals
                    .load(&self.storage, caller.id, true)
                    .await?
                    .ok_or(ApiError::NotAuthenticated)?;
                if principal.devices.is_empty() {
                    return Err(ApiError::NoDevice);
                }
                let found = principal.by_registration_id(reg_id);
                found.cloned().ok_or(ApiError::DeviceChanged)?
            }
        };
        match caller.token.bound {
            Some(bound) if bound.device != device.id() => Err(ApiError::DeviceChanged),
            _ => Ok(device),
        }
    }

    /// Refuses a caller whose token is bound to a linked device: what changes the whole account
    /// (its password, its devices, the account itself) is the primary's.
    pub async fn not_linked(&self, caller: &Caller) -> Result<(), ApiError> {
        let Some(bound) = caller.token.bound else {
            return Ok(());
        };
        match self.storage.device(caller.id).await? {
            Some(primary) if primary.id() == bound.device => Ok(()),
            _ => Err(ApiError::LinkedDevice),
        }
    }

    /// What `idempotency::begin` needs of the state.
    pub fn sends(&self) -> (&Arc<crate::idempotency::InFlight>, &Storage, u64) {
        (&self.in_flight, &self.storage, self.max_body())
    }

    pub fn max_body(&self) -> u64 {
        self.config.max_body_bytes
    }
}

/// The store the configuration names, and the JWT secret: `--jwt-secret`, else the one kept
/// beside the data (sled: a file in the data dir; PostgreSQL: a row, shared by every instance).
async fn open_storage(config: &Config) -> crate::failure::Result<(Storage, Vec<u8>)> {
    if let Some(url) = &config.database_url {
        let pg = PgStore::connect(url)
            .await
            .map_err(|e| format!("cannot use the database: {e}"))?;
        let secret = match &config.jwt_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => pg.jwt_secret(&crate::auth::new_secret()).await?,
        };
        return Ok((Storage::Postgres(pg), secret));
    }
    let storage = Storage::open_sled(&config.data_dir.join("db"), &StorageOptions::of(config))
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let secret = crate::auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir)
        .map_err(|e| format!("JWT secret: {e}"))?;
    Ok((storage, secret))
}
