//! The caller's devices: the primary (`/device/`: create, read, delete with every other) and
//! the linked ones (`/v2/devices`: link, list, unlink).

use warp::http::StatusCode;

use super::{detached, json, no_content, Answer};
use crate::app::App;
use crate::auth::{now_secs, Bound, Caller};
use crate::body::Body;
use crate::error::ApiError;
use crate::models::{CodeOut, Device, DeviceOut, DeviceRef, LinkedOut, ListedDeviceOut};
use crate::requests::NewDevice;

/// POST /device/<anything>
pub async fn create(app: App, user: Caller, body: Body) -> Answer {
    app.not_linked(&user).await?;
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

/// GET /device/<anything>: the caller's device whose registrationId follows `/device/`, else
/// the primary.
pub async fn show(tail: warp::path::Tail, app: App, user: Caller) -> Answer {
    let mut devices = app.storage.devices(user.id).await?;
    let wanted = tail.as_str().trim_end_matches('/').parse::<u32>().ok();
    let at = devices
        .iter()
        .position(|d| Some(d.registration_id) == wanted)
        .unwrap_or(0);
    if devices.is_empty() {
        return Err(ApiError::NoDevice);
    }
    let device = devices.swap_remove(at);
    let out = device_out(&app, &device, user.id).await?;
    json(StatusCode::OK, &out)
}

async fn device_out(app: &App, device: &Device, user: u64) -> Result<DeviceOut, ApiError> {
    let stock = app.storage.stock(device.of(user)).await?;
    Ok(DeviceOut {
        address: device.address.clone(),
        registration_id: device.registration_id,
        identity_key: crate::crypto::b64::encode(&device.identity_key),
        signed_pre_key_id: device.signed_prekey.key_id,
        pre_key_count: stock.prekeys,
        kyber_pre_key_count: stock.kyber_prekeys,
        has_last_resort_kyber_pre_key: device.last_resort_kyber.is_some(),
    })
}

/// DELETE /device/<anything>: every device of the account.
pub async fn delete(app: App, user: Caller) -> Answer {
    app.not_linked(&user).await?;
    let user_id = user.id;
    detached(async move {
        app.storage.delete_device(user_id).await?;
        app.hub.close_account(user_id);
        Ok(())
    })
    .await?;
    log::info!("user {user_id} deleted their devices");
    no_content()
}

/// POST /v2/devices
pub async fn link(app: App, user: Caller, body: Body) -> Answer {
    app.not_linked(&user).await?;
    let value = body.json(app.max_body()).await?;
    let new = NewDevice::parse_linked(&value, app.config.max_prekeys as usize)?;
    let device = Device {
        address: String::new(),
        registration_id: new.registration_id,
        identity_key: new.identity_key,
        signed_prekey: new.signed_prekey,
        last_resort_kyber: new.last_resort_kyber,
    };
    let linked = app
        .storage
        .link_device(
            user.id,
            &device,
            &new.prekeys,
            &new.kyber_prekeys,
            app.config.max_devices,
        )
        .await?;
    log::info!("user {} linked device {}", user.id, linked.id());
    let at = linked.of(user.id);
    // Read after the commit: a concurrent unlink and link of the same id leaves a stamp of
    // another registrationId, and no token then.
    let stamp = match app.storage.device_stamp(at).await? {
        Some(stamp) => stamp,
        None => return Err(ApiError::NoSuchDevice),
    };
    let bound = Bound {
        device: at.device,
        stamp,
    };
    json(
        StatusCode::CREATED,
        &LinkedOut {
            device_id: linked.id(),
            address: &linked.address,
            token: app.tokens.issue(&user, now_secs(), Some(bound))?,
        },
    )
}

/// GET /v2/devices
pub async fn list(app: App, user: Caller) -> Answer {
    let devices = app.storage.devices(user.id).await?;
    let mut out = Vec::with_capacity(devices.len());
    for d in &devices {
        out.push(ListedDeviceOut {
            device_id: d.id(),
            device: device_out(&app, d, user.id).await?,
        });
    }
    json(StatusCode::OK, &out)
}

/// DELETE /v2/devices/<deviceId>
pub async fn unlink(device_id: u64, app: App, user: Caller) -> Answer {
    let device = DeviceRef {
        user: user.id,
        device: u32::try_from(device_id).map_err(|_| ApiError::NoSuchDevice)?,
    };
    // A linked device's token may unlink that device only.
    if user.token.bound.is_none_or(|b| b.device != device.device) {
        app.not_linked(&user).await?;
    }
    detached(async move {
        app.storage.unlink_device(device).await?;
        app.hub.close(device);
        Ok(())
    })
    .await?;
    log::info!("user {} unlinked device {device_id}", user.id);
    no_content()
}
