//! Password hashing (PBKDF2-SHA256 in Django's format, so the iteration count travels with the
//! hash) and the strength rules applied at registration, change and reset.

use std::sync::Arc;

use pbkdf2::pbkdf2_hmac;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use crate::crypto::b64;

/// Runs PBKDF2 off the async threads, at most one hash per core at a time, so that a login storm
/// queues up instead of starving every other request of CPU.
#[derive(Clone)]
pub struct Hasher {
    iterations: u32,
    permits: Arc<Semaphore>,
}

impl Hasher {
    pub fn new(iterations: u32) -> Hasher {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hasher {
            iterations,
            permits: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Hashes a new password with the configured iteration count.
    pub async fn hash(&self, password: String) -> String {
        let iterations = self.iterations;
        self.blocking(move || hash_with(&password, &rand::random::<[u8; 16]>(), iterations))
            .await
            .unwrap_or_default()
    }

    /// Checks `password` against `stored`; with no stored hash (unknown user) it spends the same
    /// work on a dummy hash and answers false.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        let iterations = self.iterations;
        self.blocking(move || match stored {
            Some(stored) => verify_hash(&password, &stored),
            None => {
                let _ = hash_with(&password, b"dummy-salt-dummy", iterations);
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let _permit = self.permits.acquire().await.ok()?;
        tokio::task::spawn_blocking(work).await.ok()
    }
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
