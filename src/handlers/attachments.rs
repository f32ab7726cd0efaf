//! The TUS routes of attachments (`docs/API.md`, "Attachments"): create, HEAD, PATCH, DELETE
//! for the uploader, GET for any account. Headers are read here; the body goes to
//! `attachments::upload`, detached, so a client hanging up mid-body still leaves the upload's
//! offset durable and its lease given back.

use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

use super::{detached, Answer};
use crate::app::App;
use crate::attachments::upload::{self, refused, Patch};
use crate::attachments::{encode_id, new_id, parse_id, BlobError, UNFINISHED_TTL_MS};
use crate::auth::{now_millis, Caller};
use crate::body::Body;
use crate::error::ApiError;
use crate::storage::attachments::{AttachmentId, Upload};

const OCTETS: &str = "application/offset+octet-stream";
pub const EXTENSIONS: &str = "creation,creation-with-upload,expiration,checksum,termination";

/// `Tus-Resumable: 1.0.0`, required on every request but OPTIONS and GET.
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable") {
        Some(v) if v == "1.0.0" => Ok(()),
        _ => Err(ApiError::UnsupportedVersion),
    }
}

/// A header as a plain decimal number; `invalid_data` naming it otherwise.
fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::field(name, "Must be a non-negative integer."))
}

/// `Upload-Checksum: sha256 <base64 digest>`.
fn checksum(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    use base64::Engine;
    let Some(v) = headers.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::field(
            "Upload-Checksum",
            "Must be sha256 and a base64 SHA-256 digest.",
        )
    };
    let (algorithm, digest) = v
        .to_str()
        .ok()
        .and_then(|t| t.trim().split_once(' '))
        .ok_or_else(bad)?;
    if algorithm != "sha256" {
        return Err(bad());
    }
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .map_err(|_| bad())?;
    digest.try_into().map(Some).map_err(|_| bad())
}

/// Whether a request has a body: a nonzero `Content-Length`, or a chunked one.
fn has_body(headers: &HeaderMap, body: &Body) -> bool {
    body.length()
        .map_or(headers.contains_key(header::TRANSFER_ENCODING), |n| n > 0)
}

fn octets(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.trim().eq_ignore_ascii_case(OCTETS) => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

/// An HTTP date (`Upload-Expires`).
fn http_date(ms: u64) -> HeaderValue {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    HeaderValue::from_str(&httpdate::fmt_http_date(time)).unwrap_or(HeaderValue::from_static(""))
}

fn set(res: &mut Response, name: &'static str, value: impl Into<HeaderValue>) {
    res.headers_mut().insert(name, value.into());
}

/// The caller's own upload, unexpired; 404 for anything else (ids do not leak).
async fn owned(app: &App, caller: &Caller, id: &str) -> Result<Upload, ApiError> {
    let id = parse_id(id).ok_or(ApiError::NoSuchAttachment)?;
    match app.storage.upload(&id).await? {
        Some(u) if u.owner == caller.id && !u.is_expired(now_millis()) => Ok(u),
        _ => Err(ApiError::NoSuchAttachment),
    }
}

/// OPTIONS /attachments: what this server speaks.
pub async fn options(app: App) -> Answer {
    let mut res = StatusCode::NO_CONTENT.into_response();
    set(&mut res, "tus-version", HeaderValue::from_static("1.0.0"));
    set(
        &mut res,
        "tus-extension",
        HeaderValue::from_static(EXTENSIONS),
    );
    set(&mut res, "tus-max-size", app.config.max_attachment_bytes);
    set(
        &mut res,
        "tus-checksum-algorithm",
        HeaderValue::from_static("sha256"),
    );
    Ok(res)
}

/// POST /attachments: a new upload, with its first chunk if a body came along.
pub async fn create(app: App, caller: Caller, headers: HeaderMap, body: Body) -> Answer {
    check_version(&headers)?;
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::field(
            "Upload-Defer-Length",
            "Uploads of unknown length are not supported; send Upload-Length.",
        ));
    }
    let length = number(&headers, "upload-length")?
        .ok_or_else(|| ApiError::field("Upload-Length", "This header is required."))?;
    if length == 0 {
        return Err(ApiError::field("Upload-Length", "Must be at least 1."));
    }
    if length > app.config.max_attachment_bytes {
        return Err(ApiError::PayloadTooLarge);
    }
    let with_body = has_body(&headers, &body);
    let checksum = if with_body {
        octets(&headers)?;
        checksum(&headers)?
    } else {
        None
    };
    app.limits.attachment_create(caller.id)?;
    let now = now_millis();
    let upload = Upload {
        id: new_id(),
        owner: caller.id,
        length,
        offset: 0,
        created_ms: now,
        expires_ms: now + UNFINISHED_TTL_MS,
        completed_ms: None,
    };
    app.storage
        .create_upload(&upload, crate::attachments::limits(&app.config))
        .await?
        .map_err(refused)?;
    let id = upload.id;
    let mut offset = None;
    if with_body {
        let patch = Patch {
            id,
            owner: caller.id,
            offset: 0,
            checksum,
            length: body.length(),
        };
        let written = detached(first_chunk(app.clone(), patch, body)).await?;
        offset = Some(written);
    }
    let mut res = StatusCode::CREATED.into_response();
    let location = format!("/attachments/{}", encode_id(&id));
    set(
        &mut res,
        "location",
        HeaderValue::from_str(&location).map_err(|_| ApiError::Internal("location".into()))?,
    );
    set(&mut res, "upload-expires", http_date(upload.expires_ms));
    if let Some(offset) = offset {
        set(&mut res, "upload-offset", offset);
    }
    Ok(res)
}

/// The first chunk of a creation. The client learns the upload's address only from the answer,
/// so an upload whose first chunk failed or was cut off is deleted: nothing is left behind.
async fn first_chunk(app: App, patch: Patch, body: Body) -> Result<u64, ApiError> {
    let id = patch.id;
    let written = upload::write(app.clone(), patch, body.into_chunks()).await;
    match written {
        Ok(w) if !w.cut => Ok(w.offset),
        other => {
            app.storage.delete_upload(&id, None).await?;
            if let Err(e) = app.blobs.delete(&id).await {
                log::warn!("a refused upload's blob was not deleted (the sweep will): {e}");
            }
            Err(other.err().unwrap_or(ApiError::RequestTimeout))
        }
    }
}

/// HEAD /attachments/<id>: how far the upload is.
pub async fn head(app: App, caller: Caller, id: String, headers: HeaderMap) -> Answer {
    check_version(&headers)?;
    let upload = owned(&app, &caller, &id).await?;
    let mut res = StatusCode::OK.into_response();
    set(&mut res, "upload-offset", upload.offset);
    set(&mut res, "upload-length", upload.length);
    if !upload.is_complete() {
        set(&mut res, "upload-expires", http_date(upload.expires_ms));
    }
    set(
        &mut res,
        "cache-control",
        HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

/// PATCH /attachments/<id>: the next bytes, at the upload's offset.
pub async fn patch(app: App, caller: Caller, id: String, headers: HeaderMap, body: Body) -> Answer {
    check_version(&headers)?;
    let upload = owned(&app, &caller, &id).await?;
    if upload.is_complete() {
        return Err(ApiError::UploadComplete);
    }
    octets(&headers)?;
    let offset = number(&headers, "upload-offset")?
        .ok_or_else(|| ApiError::field("Upload-Offset", "This header is required."))?;
    let checksum = checksum(&headers)?;
    let patch = Patch {
        id: upload.id,
        owner: caller.id,
        offset,
        checksum,
        length: body.length(),
    };
    let written = detached(upload::write(app.clone(), patch, body.into_chunks())).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    set(&mut res, "upload-offset", written.offset);
    Ok(res)
}

/// DELETE /attachments/<id>: gone for everyone (TUS termination).
pub async fn delete(app: App, caller: Caller, id: String, headers: HeaderMap) -> Answer {
    check_version(&headers)?;
    let upload = owned(&app, &caller, &id).await?;
    detached(remove(app.clone(), upload.id, Some(caller.id))).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Removes the record, then the blob (a blob left by a crash in between is swept).
pub async fn remove(app: App, id: AttachmentId, owner: Option<u64>) -> Result<(), ApiError> {
    if !app.storage.delete_upload(&id, owner).await? {
        return Err(ApiError::NoSuchAttachment);
    }
    if let Err(e) = app.blobs.delete(&id).await {
        log::warn!("a deleted attachment's blob was not removed (the sweep will): {e}");
    }
    Ok(())
}

/// GET /attachments/<id>: a complete attachment, whole or a `Range` of it.
pub async fn download(app: App, _caller: Caller, id: String, headers: HeaderMap) -> Answer {
    let id = parse_id(&id).ok_or(ApiError::NoSuchAttachment)?;
    let upload = match app.storage.upload(&id).await? {
        Some(u) if u.is_complete() && !u.is_expired(now_millis()) => u,
        _ => return Err(ApiError::NoSuchAttachment),
    };
    let length = upload.length;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(text) => range(text, length)?,
        None => None,
    };
    let (start, end) = range.unwrap_or((0, length));
    let stream = match app.blobs.read(&id, start, end).await {
        Ok(stream) => stream,
        Err(e) => return Err(unreadable(&app, &id, e).await),
    };
    let mut res = warp::reply::stream(stream).into_response();
    if range.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        let text = format!("bytes {start}-{}/{length}", end - 1);
        if let Ok(v) = HeaderValue::from_str(&text) {
            set(&mut res, "content-range", v);
        }
    }
    set(&mut res, "content-length", end - start);
    set(
        &mut res,
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    set(&mut res, "accept-ranges", HeaderValue::from_static("bytes"));
    set(
        &mut res,
        "cache-control",
        HeaderValue::from_static("private, immutable"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", encode_id(&id))) {
        set(&mut res, "etag", etag);
    }
    Ok(res)
}

/// A blob that cannot be read: 404 when there is none (its record outlived it, as after a
/// restore without the blob store), as for an attachment that expired; 500 otherwise.
async fn unreadable(app: &App, id: &AttachmentId, e: BlobError) -> ApiError {
    match app.blobs.len(id).await {
        Ok(None) => {
            log::warn!("an attachment's blob is missing (signal-server fsck lists them)");
            ApiError::NoSuchAttachment
        }
        _ => ApiError::Internal(format!("blob store: {e}")),
    }
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range as `start..end`; `None` for what is not
/// a single byte range (ignored: the whole attachment is sent); 416 when it lies outside.
fn range(text: &str, length: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let outside = ApiError::RangeNotSatisfiable(length);
    match (a.trim(), b.trim()) {
        ("", n) => match num(n) {
            Some(0) => Err(outside),
            Some(n) => Ok(Some((length.saturating_sub(n), length))),
            None => Ok(None),
        },
        (a, b) => {
            let Some(start) = num(a) else {
                return Ok(None);
            };
            let end = match b {
                "" => length,
                b => match num(b) {
                    Some(e) if e >= start => e.saturating_add(1).min(length),
                    _ => return Ok(None),
                },
            };
            if start >= length {
                return Err(outside);
            }
            Ok(Some((start, end)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_http_says() {
        assert_eq!(range("bytes=0-9", 100).unwrap(), Some((0, 10)));
        assert_eq!(range("bytes=90-", 100).unwrap(), Some((90, 100)));
        assert_eq!(range("bytes=-10", 100).unwrap(), Some((90, 100)));
        assert_eq!(range("bytes=-1000", 100).unwrap(), Some((0, 100)));
        assert_eq!(range("bytes=50-1000", 100).unwrap(), Some((50, 100)));
        assert!(matches!(
            range("bytes=100-", 100),
            Err(ApiError::RangeNotSatisfiable(100))
        ));
        assert!(matches!(
            range("bytes=-0", 100),
            Err(ApiError::RangeNotSatisfiable(100))
        ));
        assert_eq!(range("bytes=0-1,5-6", 100).unwrap(), None);
        assert_eq!(range("items=0-1", 100).unwrap(), None);
        assert_eq!(range("bytes=9-3", 100).unwrap(), None);
    }

    #[test]
    fn dates_are_imf_fixdate() {
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            http_date(1_709_251_200_000),
            "Fri, 01 Mar 2024 00:00:00 GMT"
        );
    }
}
