//! Tokens: HS256 JWTs naming the user id, the user's token version and, for a token bound to a
//! device, that device and its stamp; and the check every authenticated request goes through
//! (signature, expiry, user still exists, version current, bound device still the same one).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::models::Principal;
use crate::models::User;
use crate::principals::Principals;
use crate::storage::Storage;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub username: String,
    /// The user's token version when issued.
    pub ver: u32,
    pub iat: u64,
    pub exp: u64,
    /// When the user logged in with a password; refresh keeps it.
    pub orig_iat: u64,
    /// The device the token is bound to, if any (see `Bound`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<u32>,
    /// That device's stamp (`Storage::device_stamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<u64>,
}

/// The device a token is bound to: it acts as that device only, and dies with it (unlinked, or
/// deleted and created again). Tokens without one are the account's (older clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub device: u32,
    pub stamp: u64,
}

/// What a checked token says (kept in the cache of checked tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verified {
    pub user_id: u64,
    pub ver: u32,
    pub exp: u64,
    pub orig_iat: u64,
    pub bound: Option<Bound>,
}

/// Checked tokens, so that a client's next request with the same token skips the base64, JSON
/// and HMAC work (a sixth of a request's CPU). Keyed by the whole token text, so a token that
/// differs in any byte is checked in full; expiry is checked on every hit; revocation is checked
/// on every request against the user's token version, cached or not. Sharded to keep lock
/// contention low; a full shard is simply emptied.
struct TokenCache {
    shards: Vec<Mutex<HashMap<Box<str>, Verified>>>,
}

const CACHE_SHARDS: usize = 16;
const CACHE_SHARD_ENTRIES: usize = 4096;

impl TokenCache {
    fn new() -> TokenCache {
        TokenCache {
            shards: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, token: &str) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Verified>> {
        // The signature's last bytes are as good as random: no hashing needed to pick a shard.
        let pick = token
            .bytes()
            .rev()
            .take(4)
            .fold(0usize, |a, b| a * 31 + usize::from(b));
        self.shards[pick % CACHE_SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, token: &str) -> Option<Verified> {
        self.shard(token).get(token).copied()
    }

    fn put(&self, token: &str, verified: Verified) {
        let mut shard = self.shard(token);
        if shard.len() >= CACHE_SHARD_ENTRIES {
            shard.clear();
        }
        shard.insert(token.into(), verified);
    }
}

pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: u64,
    refresh_max_age: u64,
    checked: TokenCache,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: u64, refresh_max_age: u64) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            refresh_max_age,
            checked: TokenCache::new(),
        }
    }

    /// A token for `user`, bound to a device or not; `orig_iat` is the time of the password
    /// login it descends from.
    pub fn issue(
        &self,
        user: &User,
        orig_iat: u64,
        bound: Option<Bound>,
    ) -> Result<String, ApiError> {
        let now = now_secs();
        let claims = Claims {
            sub: user.id.to_string(),
            username: user.username.clone(),
            ver: user.token_version,
            iat: now,
            exp: now.saturating_add(self.ttl),
            orig_iat,
            dev: bound.map(|b| b.device),
            dst: bound.map(|b| b.stamp),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("token encoding: {e}")))
    }

    /// Checks signature, algorithm and expiry (not whether the user still exists).
    pub fn decode(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }

    /// Signature, algorithm and expiry checked, through the cache of checked tokens.
    pub fn verify(&self, token: &str) -> Option<Verified> {
        if let Some(v) = self.checked.get(token) {
            return (now_secs() < v.exp).then_some(v);
        }
        let claims = self.decode(token)?;
        let verified = Verified {
            user_id: claims.sub.parse().ok()?,
            ver: claims.ver,
            exp: claims.exp,
            orig_iat: claims.orig_iat,
            bound: match (claims.dev, claims.dst) {
                (Some(device), Some(stamp)) => Some(Bound { device, stamp }),
                (None, None) => None,
                _ => return None,
            },
        };
        self.checked.put(token, verified);
        Some(verified)
    }

    /// Whether a token descending from the login at `orig_iat` may still be refreshed.
    pub fn refreshable(&self, verified: &Verified) -> bool {
        now_secs() <= verified.orig_iat.saturating_add(self.refresh_max_age)
    }
}

/// Who is calling: the token's account (as `principals` keeps it) and what the token says (its
/// device, if bound). Derefs to the user.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub token: Verified,
}

impl std::ops::Deref for Caller {
    type Target = User;
    fn deref(&self) -> &User {
        &self.principal.user
    }
}

/// The caller a valid token names: signature and expiry good, the user still exists, the token's
/// version is the user's current one (password change and reset bump it), and a bound token's
/// device is still the one it was bound to. The account comes from `principals`; one that does
/// not account for a token it may be too old for (a newer version, a device it does not list
/// or with another stamp) is read again once before the token is refused.
pub async fn user_for_token(
    tokens: &Tokens,
    principals: &Principals,
    storage: &Storage,
    token: &str,
) -> Result<Caller, ApiError> {
    let verified = tokens.verify(token).ok_or(ApiError::NotAuthenticated)?;
    let mut fresh = false;
    loop {
        let principal = principals
            .load(storage, verified.user_id, fresh)
            .await?
            .ok_or(ApiError::NotAuthenticated)?;
        let version = principal.user.token_version;
        let device_ok = verified.bound.is_none_or(|bound| {
            principal
                .device(bound.device)
                .is_some_and(|d| d.stamp == bound.stamp)
        });
        if version == verified.ver && device_ok {
            return Ok(Caller {
                principal,
                token: verified,
            });
        }
        // Versions only grow: an older token is refused without a read.
        if fresh || version > verified.ver {
            return Err(ApiError::NotAuthenticated);
        }
        fresh = true;
    }
}

/// The token in an `Authorization` header value: `Bearer <jwt>` or `JWT <jwt>`, any case.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let ok = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("jwt");
    let token = token.trim();
    (ok && !token.is_empty()).then_some(token)
}

/// The configured secret, or the one kept in the data dir (created with mode 0600 on first start).
pub fn load_or_create_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> std::io::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    match std::fs::read(&path) {
        Ok(secret) if secret.len() >= 32 => return Ok(secret),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} is shorter than 32 bytes",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = new_secret();
    let tmp = data_dir.join("jwt_secret.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(&secret)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(secret)
}

/// A fresh signing secret: 48 random bytes, base64 (so it can also be passed as text).
pub fn new_secret() -> Vec<u8> {
    crate::crypto::b64::encode(&rand::random::<[u8; 48]>()).into_bytes()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: 4,
            username: "dave".into(),
            email: String::new(),
            password_hash: String::new(),
            token_version: 3,
        }
    }

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let t = Tokens::new(b"0123456789abcdef0123456789abcdef", 60, 600);
        let token = t.issue(&user(), now_secs(), None).unwrap();
        let claims = t.decode(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.ver), ("4", 3));
        assert_eq!(t.verify(&token).unwrap().bound, None);
        let bound = Bound {
            device: 2,
            stamp: u64::MAX - 1,
        };
        let to_device = t.issue(&user(), now_secs(), Some(bound)).unwrap();
        assert_eq!(t.verify(&to_device).unwrap().bound, Some(bound));
        // The cached answer is the same as the full check, and a changed token is not served.
        let v = t.verify(&token).unwrap();
        assert_eq!(t.verify(&token), Some(v));
        assert_eq!((v.user_id, v.ver), (4, 3));
        let mut forged = token.clone();
        forged.pop();
        forged.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert!(t.verify(&forged).is_none());
        let other = Tokens::new(b"another secret, another secret!!", 60, 600);
        assert!(other.decode(&token).is_none());
        // alg: none
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = crate::crypto::b64::encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(t
            .decode(&format!(
                "{}.{}.",
                none_header.trim_end_matches('='),
                parts[1]
            ))
            .is_none());
    }

    #[test]
    fn bearer_accepts_both_prefixes_in_any_case() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("jwt abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
