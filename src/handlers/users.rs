//! Accounts: registration, tokens, the caller's own account, password change and reset.

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use warp::http::StatusCode;

use super::{detached, json, no_content, Answer};
use crate::app::App;
use crate::auth::{self, now_secs, Bound, Caller};
use crate::body::Body;
use crate::config::Registration;
use crate::crypto::b64;
use crate::error::{ApiError, FieldError};
use crate::models::{TokenOut, User, UserOut};
use crate::password::AccountClaim;
use crate::requests::{self, Register};
use crate::storage::ResetGrant;

/// POST /auth/users
pub async fn register(app: App, ip: Option<IpAddr>, body: Body) -> Answer {
    app.limits.anonymous(ip)?;
    if app.config.registration == Registration::Closed {
        return Err(ApiError::RegistrationClosed);
    }
    let value = body.json(app.max_body()).await?;
    let req = Register::parse(&value)?;
    let invite = match (app.config.registration, req.invite) {
        (Registration::Invite, Some(token)) => Some(Sha256::digest(token.as_bytes())),
        (Registration::Invite, None) => {
            return Err(ApiError::field(
                "invite",
                "An invite is required to register here.",
            ))
        }
        _ => None,
    };
    check_password("password", req.password, req.username, req.email)?;
    let hash = app.hasher.hash(req.password.to_string()).await?;
    let user = app
        .storage
        .create_user(
            req.username,
            req.email,
            hash,
            invite.as_ref().map(|h| &h[..]),
        )
        .await?;
    log::info!("user {} registered", user.id);
    json(StatusCode::CREATED, &UserOut::from(&user))
}

/// POST /auth/jwt/create
pub async fn login(app: App, ip: Option<IpAddr>, body: Body) -> Answer {
    app.limits.anonymous(ip)?;
    let value = body.json(app.max_body()).await?;
    let [username, password] = requests::strings(&value, ["username", "password"])?;
    let device = requests::login_device(&value)?;
    let user = app.storage.user_by_name(username).await?;
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    if !app.hasher.verify(password.to_string(), stored).await? {
        return Err(ApiError::InvalidCredentials);
    }
    let user = user.ok_or(ApiError::InvalidCredentials)?;
    // `deviceId`: a token bound to that device of the account (see POST /v2/devices).
    let bound = match device {
        Some(device) => {
            let at = crate::models::DeviceRef {
                user: user.id,
                device,
            };
            let stamp = app
                .storage
                .device_stamp(at)
                .await?
                .ok_or(ApiError::NoSuchDevice)?;
            Some(Bound { device, stamp })
        }
        None => None,
    };
    json(
        StatusCode::OK,
        &TokenOut {
            token: app.tokens.issue(&user, now_secs(), bound)?,
        },
    )
}

/// POST /auth/jwt/refresh
pub async fn refresh(app: App, body: Body) -> Answer {
    let value = body.json(app.max_body()).await?;
    let [token] = requests::strings(&value, ["token"])?;
    let caller = auth::user_for_token(&app.tokens, &app.hub.principals, &app.storage, token)
        .await
        .map_err(|_| ApiError::InvalidToken)?;
    if !app.tokens.refreshable(&caller.token) {
        return Err(ApiError::InvalidToken);
    }
    // A token bound to a device stays bound to it.
    let claims = caller.token;
    json(
        StatusCode::OK,
        &TokenOut {
            token: app.tokens.issue(&caller, claims.orig_iat, claims.bound)?,
        },
    )
}

/// POST /auth/jwt/verify
pub async fn verify(app: App, body: Body) -> Answer {
    let value = body.json(app.max_body()).await?;
    let [token] = requests::strings(&value, ["token"])?;
    auth::user_for_token(&app.tokens, &app.hub.principals, &app.storage, token)
        .await
        .map_err(|_| ApiError::InvalidToken)?;
    json(
        StatusCode::OK,
        &TokenOut {
            token: token.to_string(),
        },
    )
}

/// GET /auth/users/me
pub async fn me(user: Caller) -> Answer {
    json(StatusCode::OK, &UserOut::from(&user.principal.user))
}

/// DELETE /auth/users/me
pub async fn delete_me(app: App, user: Caller, body: Body) -> Answer {
    app.not_linked(&user).await?;
    let value = body.json(app.max_body()).await?;
    let [current] = requests::strings(&value, ["current_password"])?;
    let _claim = check_current_password(&app, &user, current).await?;
    let user_id = user.id;
    detached(async move { delete_account(&app, user_id).await }).await?;
    log::info!("user {user_id} deleted");
    no_content()
}

/// Deletes an account with everything it holds, closes its sockets, and removes its attachment
/// blobs (any left, say by a crash, are swept as blobs without a record).
pub async fn delete_account(app: &App, user_id: u64) -> Result<(), ApiError> {
    let attachments = app.storage.uploads_of(user_id).await?;
    app.storage.delete_user(user_id).await?;
    app.hub.close_account(user_id);
    for id in attachments {
        if let Err(e) = app.blobs.delete(&id).await {
            log::warn!("a deleted account's attachment blob was not removed (the sweep will): {e}");
        }
    }
    Ok(())
}

/// POST /auth/password
pub async fn change_password(app: App, user: Caller, body: Body) -> Answer {
    app.not_linked(&user).await?;
    let value = body.json(app.max_body()).await?;
    let [current, new] = requests::strings(&value, ["current_password", "new_password"])?;
    // The claim stays held through the new hash: one account, one hash in flight.
    let _claim = check_current_password(&app, &user, current).await?;
    check_password("new_password", new, &user.username, &user.email)?;
    let hash = app.hasher.hash(new.to_string()).await?;
    set_password(app, user.id, hash).await?;
    no_content()
}

/// Sets a password, which revokes every older token of the account, and closes the sockets
/// opened with one (here and on the other instances), even if the client hangs up meanwhile.
pub async fn set_password(app: App, user_id: u64, hash: String) -> Result<User, ApiError> {
    detached(async move {
        let user = app.storage.set_password(user_id, hash).await?;
        app.hub.revoke(user_id, user.token_version);
        Ok(user)
    })
    .await
}

/// POST /auth/password/reset
pub async fn reset(app: App, ip: Option<IpAddr>, body: Body) -> Answer {
    app.limits.anonymous(ip)?;
    let value = body.json(app.max_body()).await?;
    let [email] = requests::strings(&value, ["email"])?;
    if email.is_empty() {
        return Err(ApiError::field("email", "Enter a valid email address."));
    }
    requests::check_email(email).map_err(|e| ApiError::field("email", e))?;
    if let Some(user) = app.storage.user_by_email(email).await? {
        let (uid, token) = issue_reset_token(&app, &user).await?;
        app.mailer
            .send_reset(&user.email, &user.username, &uid, &token);
    }
    no_content()
}

/// A single-use reset token for `user`, stored only as its hash: `(uid, token)`.
pub async fn issue_reset_token(app: &App, user: &User) -> Result<(String, String), ApiError> {
    let token = b64::encode(&rand::random::<[u8; 32]>()).replace(['+', '/', '='], "");
    let grant = ResetGrant {
        user_id: user.id,
        token_version: user.token_version,
        expires_at: now_secs().saturating_add(app.config.reset_token_ttl),
    };
    app.storage
        .put_reset_token(&Sha256::digest(token.as_bytes()), &grant)
        .await?;
    Ok((encode_uid(user.id), token))
}

/// POST /auth/password/reset/confirm
///
/// Nothing about the account is looked at before the token checks out, and every bad
/// uid/token answers the same `invalid_token`, so the route tells a guesser nothing (not the
/// email through the strength rules, not which uids exist).
pub async fn reset_confirm(app: App, ip: Option<IpAddr>, body: Body) -> Answer {
    app.limits.anonymous(ip)?;
    let value = body.json(app.max_body()).await?;
    let [uid, token, new] = requests::strings(&value, ["uid", "token", "new_password"])?;
    let token_hash = Sha256::digest(token.as_bytes());
    let (user, grant) = reset_grantee(&app, uid, &token_hash).await?;
    check_password("new_password", new, &user.username, &user.email)?;
    let hash = app.hasher.hash(new.to_string()).await?;
    // The token is taken only now, so a refused password or a full hashing queue leaves it
    // usable; taking it is atomic, so of two concurrent confirms only one sets a password. Taken
    // and used in one detached step: a client that hangs up in between loses neither.
    detached(async move {
        if app.storage.take_reset_token(&token_hash).await? != Some(grant) {
            return Err(ApiError::InvalidToken);
        }
        set_password(app, user.id, hash).await
    })
    .await?;
    no_content()
}

/// The user a reset token was issued to, and its grant, if the token exists, names the user of
/// `uid`, has not expired and predates no password change. Looks without taking the token.
async fn reset_grantee(
    app: &App,
    uid: &str,
    token_hash: &[u8],
) -> Result<(User, ResetGrant), ApiError> {
    let grant = app
        .storage
        .reset_grant(token_hash)
        .await?
        .filter(|g| decode_uid(uid) == Some(g.user_id) && g.expires_at > now_secs())
        .ok_or(ApiError::InvalidToken)?;
    let user = app
        .storage
        .user(grant.user_id)
        .await?
        .filter(|u| u.token_version == grant.token_version)
        .ok_or(ApiError::InvalidToken)?;
    Ok((user, grant))
}

/// Checks the caller's `current_password`: one check in flight per account and a per-account
/// budget, both before the hash, so a flood of guesses is refused without being hashed. The
/// returned claim keeps the account's slot until the caller is done hashing.
async fn check_current_password(
    app: &App,
    user: &User,
    password: &str,
) -> Result<AccountClaim, ApiError> {
    let claim = app.hasher.claim(user.id)?;
    app.limits.password_check(user.id)?;
    let stored = Some(user.password_hash.clone());
    if app.hasher.verify(password.to_string(), stored).await? {
        Ok(claim)
    } else {
        Err(ApiError::field("current_password", "Invalid password."))
    }
}

pub fn check_password(
    field: &str,
    password: &str,
    username: &str,
    email: &str,
) -> Result<(), ApiError> {
    let reasons = crate::password::weaknesses(password, username, email);
    if reasons.is_empty() {
        return Ok(());
    }
    let mut errors = crate::error::FieldErrors::new();
    errors.insert(field.to_string(), FieldError::Messages(reasons));
    Err(ApiError::InvalidData(errors))
}

/// The `uid` of a reset mail: the user id, base64url without padding (as Django does).
fn encode_uid(id: u64) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.to_string())
}

fn decode_uid(uid: &str) -> Option<u64> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(uid.trim_end_matches('='))
        .ok()?;
    std::str::from_utf8(&bytes).ok()?.parse().ok()
}
