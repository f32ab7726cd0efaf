//! Key uploads, key stock, and the prekey bundle that hands one-time keys out.

use warp::http::StatusCode;

use super::{json, Answer};
use crate::app::App;
use crate::auth::Caller;
use crate::body::Body;
use crate::error::ApiError;
use crate::models::{
    BundleOut, BundlesOut, CodeOut, DeviceBundleOut, PreKeyCountOut, PreKeyOut, SignedPreKeyOut,
};
use crate::models::{Device, User};
use crate::requests;

/// POST /prekeys/<regId>
pub async fn upload_prekeys(reg_id: u64, app: App, user: Caller, body: Body) -> Answer {
    let device = app.own_device(&user, reg_id).await?.of(user.id);
    let value = body.json(app.max_body()).await?;
    let keys = requests::prekey_upload(&value)?;
    app.storage
        .add_prekeys(device, &keys, app.config.max_prekeys)
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
pub async fn upload_kyber(reg_id: u64, app: App, user: Caller, body: Body) -> Answer {
    let device = app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
    let (keys, last_resort) = requests::kyber_upload(&value, &device.identity_key)?;
    app.storage
        .add_kyber_prekeys(
            device.of(user.id),
            &keys,
            last_resort.as_ref(),
            app.config.max_prekeys,
        )
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
pub async fn stock(reg_id: u64, app: App, user: Caller) -> Answer {
    let device = app.own_device(&user, reg_id).await?;
    let stock = app.storage.stock(device.of(user.id)).await?;
    json(
        StatusCode::OK,
        &PreKeyCountOut {
            pre_key_count: stock.prekeys,
            kyber_pre_key_count: stock.kyber_prekeys,
        },
    )
}

/// POST /signedprekey/<regId>
pub async fn upload_signed(reg_id: u64, app: App, user: Caller, body: Body) -> Answer {
    let device = app.own_device(&user, reg_id).await?;
    let value = body.json(app.max_body()).await?;
    let key = requests::signed_prekey_upload(&value, &device.identity_key)?;
    app.storage
        .set_signed_prekey(device.of(user.id), &key)
        .await?;
    json(
        StatusCode::OK,
        &CodeOut {
            code: "signed_prekey_stored",
            message: "Signed prekey successfully stored",
        },
    )
}

/// The account named in a bundle path (percent-decoded, any case), with its primary device.
async fn recipient(app: &App, username: &str) -> Result<(User, Option<Device>), ApiError> {
    let name = percent_encoding::percent_decode_str(username).decode_utf8_lossy();
    app.storage
        .recipient(&name)
        .await?
        .ok_or(ApiError::NoRecipient)
}

/// GET /prekeybundle/<username>/<regId>: the recipient's primary device.
pub async fn bundle(username: String, reg_id: u64, app: App, user: Caller) -> Answer {
    app.own_device(&user, reg_id).await?;
    let (target, device) = recipient(&app, &username).await?;
    let device = device.ok_or(ApiError::RecipientNoDevice)?;
    app.limits.bundle(user.id, target.id)?;
    let popped = app.storage.pop_prekeys(device.of(target.id)).await?;
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

/// GET /v2/prekeybundle/<username>/<regId>: every device of the recipient (without the calling
/// device when it asks for its own account), each giving one-time keys once.
pub async fn bundles(username: String, reg_id: u64, app: App, user: Caller) -> Answer {
    let caller = app.own_device(&user, reg_id).await?;
    let (target, _) = recipient(&app, &username).await?;
    let mut devices = app.storage.devices(target.id).await?;
    let identity_key = match devices.first() {
        Some(primary) => crate::crypto::b64::encode(&primary.identity_key),
        None => return Err(ApiError::RecipientNoDevice),
    };
    if target.id == user.id {
        devices.retain(|d| d.id() != caller.id());
    }
    app.limits.bundle(user.id, target.id)?;
    // Concurrent pops share their flush.
    let pops = devices
        .iter()
        .map(|d| app.storage.pop_prekeys(d.of(target.id)));
    let popped = futures_util::future::try_join_all(pops).await?;
    let devices = devices
        .iter()
        .zip(&popped)
        .map(|(d, p)| DeviceBundleOut {
            device_id: d.id(),
            registration_id: d.registration_id,
            signed_pre_key: SignedPreKeyOut::from(&d.signed_prekey),
            pre_key: p.prekey.as_ref().map(PreKeyOut::from),
            kyber_pre_key: p
                .kyber
                .as_ref()
                .or(d.last_resort_kyber.as_ref())
                .map(SignedPreKeyOut::from),
        })
        .collect();
    json(
        StatusCode::OK,
        &BundlesOut {
            identity_key,
            devices,
        },
    )
}
