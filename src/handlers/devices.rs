//! The caller's one device: create, read, delete.

use warp::http::StatusCode;

use super::{json, no_content, Answer};
use crate::app::App;
use crate::body::Body;
use crate::error::ApiError;
use crate::models::{CodeOut, Device, DeviceOut, User};
use crate::requests::NewDevice;

/// POST /device/<anything>
pub async fn create(app: App, user: User, body: Body) -> Answer {
    let value = body.json(app.max_body()).await?;
    let new = NewDevice::parse(&value, app.config.max_prekeys as usize)?;
    if !new.username.eq_ignore_ascii_case(&user.username) {
        return Err(ApiError::field(
            "address",
            "The address must name your own username.",
        ));
    }
    let device = Device {
        address: format!("{}.{}", new.username, new.device_id),
        registration_id: new.registration_id,
        identity_key: new.identity_key,
        signed_prekey: new.signed_prekey,
        last_resort_kyber: new.last_resort_kyber,
    };
    app.storage
        .create_device(user.id, &device, &new.prekeys, &new.kyber_prekeys)
        .await?;
    log::info!("user {} created device {}", user.id, device.address);
    json(
        StatusCode::CREATED,
        &CodeOut {
            code: "device_created",
            message: "Device successfully created",
        },
    )
}

/// GET /device/<anything>
pub async fn show(app: App, user: User) -> Answer {
    let device = app
        .storage
        .device(user.id)
        .await?
        .ok_or(ApiError::NoDevice)?;
    let stock = app.storage.stock(user.id).await?;
    json(
        StatusCode::OK,
        &DeviceOut {
            address: &device.address,
            registration_id: device.registration_id,
            identity_key: crate::crypto::b64::encode(&device.identity_key),
            signed_pre_key_id: device.signed_prekey.key_id,
            pre_key_count: stock.prekeys,
            kyber_pre_key_count: stock.kyber_prekeys,
            has_last_resort_kyber_pre_key: device.last_resort_kyber.is_some(),
        },
    )
}

/// DELETE /device/<anything>
pub async fn delete(app: App, user: User) -> Answer {
    app.storage.delete_device(user.id).await?;
    app.hub.close(user.id);
    log::info!("user {} deleted their device", user.id);
    no_content()
}
