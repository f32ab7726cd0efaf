//! Key uploads, key stock, and the prekey bundle that hands one-time keys out.

use warp::http::StatusCode;

use super::{json, Answer};
use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;
use crate::models::{BundleOut, CodeOut, PreKeyCountOut, PreKeyOut, SignedPreKeyOut, User};
use crate::requests;

/// POST /prekeys/<regId>
pub async fn upload_prekeys(reg_id: u64, app: App, user: User, body: Body) -> Answer {
    app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
    let keys = requests::prekey_upload(&value)?;
    app.storage
        .add_prekeys(user.id, &keys, app.config.max_prekeys)
        .await?;
    json(
        StatusCode::OK,
        &CodeOut {
            code: "prekeys_stored",
            message: "Prekeys successfully stored",
        },
    )
}

/// POST /kyberprekeys/<regId>
pub async fn upload_kyber(reg_id: u64, app: App, user: User, body: Body) -> Answer {
    let device = app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
    let (keys, last_resort) = requests::kyber_upload(&value, &device.identity_key)?;
    app.storage
        .add_kyber_prekeys(user.id, &keys, last_resort.as_ref(), app.config.max_prekeys)
        .await?;
    json(
        StatusCode::OK,
        &CodeOut {
            code: "kyber_prekeys_stored",
            message: "Kyber prekeys successfully stored",
        },
    )
}

/// GET /prekeys/<regId>
pub async fn stock(reg_id: u64, app: App, user: User) -> Answer {
    app.own_device(&user, reg_id).await?;
    let stock = app.storage.stock(user.id).await?;
    json(
        StatusCode::OK,
        &PreKeyCountOut {
            pre_key_count: stock.prekeys,
            kyber_pre_key_count: stock.kyber_prekeys,
        },
    )
}

/// POST /signedprekey/<regId>
pub async fn upload_signed(reg_id: u64, app: App, user: User, body: Body) -> Answer {
    let device = app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
    let key = requests::signed_prekey_upload(&value, &device.identity_key)?;
    app.storage.set_signed_prekey(user.id, &key).await?;
    json(
        StatusCode::OK,
        &CodeOut {
            code: "signed_prekey_stored",
            message: "Signed prekey successfully stored",
        },
    )
}

/// GET /prekeybundle/<username>/<regId>
pub async fn bundle(username: String, reg_id: u64, app: App, user: User) -> Answer {
    app.own_device(&user, reg_id).await?;
    let name = percent_encoding::percent_decode_str(&username).decode_utf8_lossy();
    let target = app
        .storage
        .user_by_name(&name)
        .await?
        .ok_or(ApiError::NoRecipient)?;
    let device = app
        .storage
        .device(target.id)
        .await?
        .ok_or(ApiError::RecipientNoDevice)?;
    app.limits.bundle(user.id, target.id)?;
    let popped = app.storage.pop_prekeys(target.id).await?;
    let kyber = popped.kyber.as_ref().or(device.last_resort_kyber.as_ref());
    json(
        StatusCode::OK,
        &BundleOut {
            address: &device.address,
            identity_key: crate::crypto::b64::encode(&device.identity_key),
            registration_id: device.registration_id,
            pre_key: popped.prekey.as_ref().map(PreKeyOut::from),
            signed_pre_key: SignedPreKeyOut::from(&device.signed_prekey),
            kyber_pre_key: kyber.map(SignedPreKeyOut::from),
        },
    )
}
