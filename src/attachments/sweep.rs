//! The attachment sweep: records that expired go, their blobs after them; then blobs without a
//! record (left by a crash between the two steps, or by an account's deletion) go too.

use crate::app::App;
use crate::auth::now_millis;

/// Expired records one round deletes at most (the next round goes on).
const PER_ROUND: usize = 1000;

/// What one round removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    pub leftover_blobs: usize,
}

/// Deletes expired uploads (records, then blobs).
pub async fn expired(app: &App) -> Result<usize, String> {
    let uploads = app
        .storage
        .expired_uploads(now_millis(), PER_ROUND)
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    for upload in uploads {
        if app
            .storage
            .delete_upload(&upload.id, Some(upload.owner))
            .await
            .map_err(|e| e.to_string())?
        {
            n += 1;
        }
        app.blobs
            .delete(&upload.id)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(n)
}

/// Deletes blobs that have no record. A record is written before its blob and deleted before
/// it, so a blob seen without one is left over, never one being started.
pub async fn leftovers(app: &App) -> Result<usize, String> {
    let ids = app.blobs.ids().await.map_err(|e| e.to_string())?;
    let mut n = 0;
    for id in ids {
        if app
            .storage
            .upload(&id)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            app.blobs.delete(&id).await.map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    Ok(n)
}

/// One round of both.
pub async fn round(app: &App, with_leftovers: bool) -> Swept {
    let mut swept = Swept::default();
    match expired(app).await {
        Ok(n) => swept.expired = n,
        Err(e) => log::error!("attachment sweep failed: {e}"),
    }
    if with_leftovers {
        match leftovers(app).await {
            Ok(n) => swept.leftover_blobs = n,
            Err(e) => log::error!("sweep of attachment blobs without a record failed: {e}"),
        }
    }
    if swept != Swept::default() {
        log::info!(
            "deleted {} expired attachments and {} blobs without a record",
            swept.expired,
            swept.leftover_blobs
        );
    }
    app.metrics
        .attachment_sweep(swept.expired + swept.leftover_blobs);
    swept
}
