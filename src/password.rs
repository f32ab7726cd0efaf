//! Password hashing (PBKDF2-SHA256 in Django's format, so the iteration count travels with the
//! hash) and the strength rules applied at registration, change and reset.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pbkdf2::pbkdf2_hmac;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::crypto::b64;
use crate::error::ApiError;

/// How many hashes may wait, per core, while every core is hashing (unless `--hash-queue` says
/// otherwise). Beyond that a request is refused at once (503) instead of making every login wait
/// behind a flood: at 600,000 iterations (~0.16 s a hash) a full queue is about 1.3 s of work.
const WAITING_PER_CORE: usize = 8;

/// The longest a hash waits for a core before it is refused (503), for when hashes are slower
/// than expected (a loaded machine, a high iteration count).
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Runs PBKDF2 off the async threads, at most one hash per core at a time, so that a login storm
/// queues up instead of starving every other request of CPU. The queue is bounded in length and
/// in wait, and one account has at most one password check in flight (see `claim`).
#[derive(Clone)]
pub struct Hasher {
    iterations: u32,
    permits: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    busy_accounts: Arc<Mutex<HashSet<u64>>>,
}

impl Hasher {
    /// A hasher for new hashes of `iterations` rounds, with at most `max_waiting` hashes
    /// waiting for a core (`WAITING_PER_CORE` per core when not given).
    pub fn new(iterations: u32, max_waiting: Option<usize>) -> Hasher {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hasher {
            iterations,
            permits: Arc::new(Semaphore::new(cores)),
            waiting: Arc::default(),
            max_waiting: max_waiting.unwrap_or(cores * WAITING_PER_CORE),
            busy_accounts: Arc::default(),
        }
    }

    /// Hashes a new password with the configured iteration count. 503 `unavailable` when the
    /// hashing queue is full.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        let iterations = self.iterations;
        self.blocking(move || hash_with(&password, &rand::random::<[u8; 16]>(), iterations))
            .await
    }

    /// Checks `password` against `stored`; with no stored hash (unknown user) it spends the same
    /// work on a dummy hash and answers false. 503 `unavailable` when the hashing queue is full.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let iterations = self.iterations;
        self.blocking(move || match stored {
            Some(stored) => verify_hash(&password, &stored),
            None => {
                let _ = hash_with(&password, b"dummy-salt-dummy", iterations);
                false
            }
        })
        .await
    }

    /// Marks `account` as having a password check in flight until the claim is dropped. A second
    /// concurrent claim is refused (429, retry in a second), so one account never holds more
    /// than one core or one place in the queue, however many requests it sends at once.
    pub fn claim(&self, account: u64) -> Result<AccountClaim, ApiError> {
        let mut busy = lock(&self.busy_accounts);
        if !busy.insert(account) {
            return Err(ApiError::Throttled {
                retry_after_secs: 1,
            });
        }
        Ok(AccountClaim {
            account,
            busy: self.busy_accounts.clone(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self.permit().await?;
        // The permit moves into the blocking task: a client that disconnects drops this future,
        // but the hash it started still holds its core until it ends.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            work()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("password hashing task: {e}")))
    }

    /// A core to hash on: at once if one is free, else after a bounded wait in a bounded queue.
    async fn permit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            log::debug!("password hashing queue full; request refused");
            return Err(ApiError::Unavailable);
        }
        let _waiting = Waiting(&self.waiting);
        match tokio::time::timeout(MAX_WAIT, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                log::debug!("no core free for password hashing in time; request refused");
                Err(ApiError::Unavailable)
            }
        }
    }
}

/// One account's password check in flight (see `Hasher::claim`); released on drop.
pub struct AccountClaim {
    account: u64,
    busy: Arc<Mutex<HashSet<u64>>>,
}

impl Drop for AccountClaim {
    fn drop(&mut self) {
        lock(&self.busy).remove(&self.account);
    }
}

/// A place in the hashing queue, given back on drop (also when the request is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The set stays consistent even if a holder panicked, so a poisoned lock is still usable.
fn lock(set: &Mutex<HashSet<u64>>) -> std::sync::MutexGuard<'_, HashSet<u64>> {
    set.lock().unwrap_or_else(|e| e.into_inner())
}

fn hash_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let salt = b64::encode(salt).trim_end_matches('=').to_string();
    let mut out = [0u8; 32];
    pbkdf2_hmac::<Sha256>(password.as_bytes(), salt.as_bytes(), iterations, &mut out);
    format!("pbkdf2_sha256${iterations}${salt}${}", b64::encode(&out))
}

fn verify_hash(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2_sha256"), Some(iterations), Some(salt), Some(expected), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iterations), Some(expected)) = (iterations.parse::<u32>(), b64::decode(expected))
    else {
        return false;
    };
    let mut out = [0u8; 32];
    pbkdf2_hmac::<Sha256>(
        password.as_bytes(),
        salt.as_bytes(),
        iterations.max(1),
        &mut out,
    );
    bool::from(out.as_slice().ct_eq(&expected))
}

/// Longest accepted password, in characters.
pub const MAX_PASSWORD_CHARS: usize = 1024;

/// The strength rules: at least 8 characters, not all digits, not too close to the username or
/// email, and not guessable by the zxcvbn estimator (score 2 or more of 4). Returns the reasons a
/// password is refused; empty when it is accepted.
pub fn weaknesses(password: &str, username: &str, email: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    let chars = password.chars().count();
    if chars < 8 {
        reasons.push("This password is too short. It must contain at least 8 characters.".into());
    }
    if chars > MAX_PASSWORD_CHARS {
        reasons.push(format!(
            "Ensure this field has no more than {MAX_PASSWORD_CHARS} characters."
        ));
        return reasons;
    }
    if !password.is_empty() && password.chars().all(|c| c.is_ascii_digit()) {
        reasons.push("This password is entirely numeric.".into());
    }
    if too_similar(password, username)
        || too_similar(password, email)
        || too_similar(password, email_local(email))
    {
        reasons.push("The password is too similar to the username or email.".into());
    }
    if reasons.is_empty() {
        // zxcvbn's cost grows with length; a long password's prefix already tells if it is weak.
        let head: String = password.chars().take(64).collect();
        let score = zxcvbn::zxcvbn(&head, &[username, email_local(email)]).score();
        if (score as u8) < 2 {
            reasons.push("This password is too common or too easy to guess.".into());
        }
    }
    reasons
}

fn email_local(email: &str) -> &str {
    email.split('@').next().unwrap_or("")
}

fn too_similar(password: &str, attribute: &str) -> bool {
    if attribute.chars().count() < 3 {
        return false;
    }
    let p = password.to_lowercase();
    let a = attribute.to_lowercase();
    p.contains(&a) || a.contains(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_carry_their_iterations() {
        let h = hash_with("correct horse", b"0123456789abcdef", 10);
        assert!(h.starts_with("pbkdf2_sha256$10$"));
        assert!(verify_hash("correct horse", &h));
        assert!(!verify_hash("correct horsf", &h));
        assert!(!verify_hash("x", "garbage"));
    }

    #[tokio::test]
    async fn a_full_hashing_queue_refuses_at_once_and_cancelled_waiters_leave_it() {
        let h = Hasher::new(1, Some(3));
        let cores = h.permits.available_permits() as u32;
        let busy = h.permits.clone().acquire_many_owned(cores).await.unwrap();
        let waiters: Vec<_> = (0..h.max_waiting)
            .map(|_| {
                let h = h.clone();
                tokio::spawn(async move { h.hash("x".into()).await })
            })
            .collect();
        while h.waiting.load(Ordering::SeqCst) < h.max_waiting {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            h.verify("x".into(), None).await,
            Err(ApiError::Unavailable)
        ));
        // A waiter whose request goes away gives its place back.
        waiters[0].abort();
        while h.waiting.load(Ordering::SeqCst) == h.max_waiting {
            tokio::task::yield_now().await;
        }
        drop(busy);
        for w in waiters.into_iter().skip(1) {
            assert!(w.await.unwrap().is_ok());
        }
        assert_eq!(h.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_account_has_one_claim_at_a_time() {
        let h = Hasher::new(1, None);
        let claim = h.claim(7).unwrap();
        assert!(matches!(h.claim(7), Err(ApiError::Throttled { .. })));
        h.claim(8).unwrap();
        drop(claim);
        h.claim(7).unwrap();
    }

    #[test]
    fn weak_passwords_are_refused_with_reasons() {
        assert!(!weaknesses("short", "bob", "").is_empty());
        assert!(!weaknesses("12345678901", "bob", "").is_empty());
        assert!(!weaknesses("password", "bob", "").is_empty());
        assert!(!weaknesses("aliceinwonder", "aliceinwonder", "").is_empty());
        assert!(!weaknesses("bobbyTables99", "x", "bobbytables99@x.org").is_empty());
        assert!(weaknesses("tangerine-Voyage-42", "bob", "bob@x.org").is_empty());
    }
}
