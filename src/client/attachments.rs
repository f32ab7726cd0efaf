//! `/attachments`: encrypted blobs uploaded with TUS 1.0.0 (creation, creation-with-upload,
//! checksum `sha256`, termination) and downloaded whole or by range. The client never looks
//! inside a blob: encrypting it is the caller's business (see `examples/attachment.rs`).
//!
//! Every request but `GET` carries `Tus-Resumable: 1.0.0`. [`Client::upload`] and
//! [`Client::resume_upload`] are the resumable upload: after a dropped connection, a lost race
//! or a busy server they ask the server (`HEAD`) how much it holds and go on from there, so no
//! acknowledged byte is sent twice.

use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use super::{expect, Client, Error, RawAnswer};
use crate::crypto::b64;

/// The protocol version every TUS request names.
pub const TUS_VERSION: &str = "1.0.0";
/// The body type of a PATCH and of a creation-with-upload.
const CHUNK_TYPE: &str = "application/offset+octet-stream";
/// How many failed requests (see `resumable`) `upload` survives in a row before it
/// gives up; each one is followed by a `HEAD` and a resume.
const UPLOAD_RETRIES: u32 = 5;
/// The pause before resuming after the first failure; doubled after each further one.
const RESUME_PAUSE: Duration = Duration::from_millis(200);

/// A created upload: its id, the `Location` the server gave (a path, or a URL) and the offset
/// the server acknowledged (0 unless a first chunk was sent with the creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub id: String,
    pub location: String,
    pub offset: u64,
}

impl Client {
    /// `POST /attachments` (201): a new upload of `length` bytes, nothing sent yet.
    pub async fn create_upload(&self, length: u64) -> Result<Upload, Error> {
        self.create(length, None).await
    }

    /// `POST /attachments` with the first chunk as the body (TUS creation-with-upload, as
    /// Signal's clients upload): the upload and the offset the server kept of that chunk.
    pub async fn create_upload_with(
        &self,
        first_chunk: &[u8],
        length: u64,
    ) -> Result<Upload, Error> {
        self.create(length, Some(first_chunk)).await
    }

    async fn create(&self, length: u64, chunk: Option<&[u8]>) -> Result<Upload, Error> {
        let length = length.to_string();
        let mut headers = vec![("upload-length", length.as_str())];
        if chunk.is_some() {
            headers.push(("content-type", CHUNK_TYPE));
        }
        let body = chunk.map(<[u8]>::to_vec).unwrap_or_default();
        let answer = self
            .tus(Method::POST, "/attachments", body, &headers)
            .await?;
        let answer = expect(answer, StatusCode::CREATED)?;
        let location = header(&answer, LOCATION.as_str())?.to_string();
        let id = location
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| undecodable(&answer, format!("Location without an id: {location}")))?
            .to_string();
        let offset = match chunk {
            Some(_) => number(&answer, "upload-offset")?,
            None => 0,
        };
        Ok(Upload {
            id,
            location,
            offset,
        })
    }

    /// `HEAD /attachments/<id>` (200): the offset the server holds durably and the upload's
    /// length. A HEAD answer has no body, so a refusal's `code` is the one the routes document
    /// for its status (`no_such_attachment` for 404, `http_<status>` when there is none).
    pub async fn upload_offset(&self, id: &str) -> Result<(u64, u64), Error> {
        let path = format!("/attachments/{id}");
        let answer = self.tus(Method::HEAD, &path, Vec::new(), &[]).await?;
        if answer.status != StatusCode::OK {
            return Err(Error::refused_without_body(
                answer.status.as_u16(),
                head_code(answer.status),
                super::retry_after(&answer),
            ));
        }
        Ok((
            number(&answer, "upload-offset")?,
            number(&answer, "upload-length")?,
        ))
    }

    /// `PATCH /attachments/<id>` (204): `chunk` written at `offset` (which must be the
    /// server's offset: 409 `offset_mismatch` otherwise). With `checksum`, the chunk's SHA-256
    /// travels in `Upload-Checksum` and a chunk damaged on the way is refused (460
    /// `checksum_mismatch`) instead of stored. Answers the new offset.
    pub async fn patch_upload(
        &self,
        id: &str,
        offset: u64,
        chunk: &[u8],
        checksum: bool,
    ) -> Result<u64, Error> {
        let path = format!("/attachments/{id}");
        let offset = offset.to_string();
        let sum = format!("sha256 {}", b64::encode(&Sha256::digest(chunk)));
        let mut headers = vec![
            ("upload-offset", offset.as_str()),
            ("content-type", CHUNK_TYPE),
        ];
        if checksum {
            headers.push(("upload-checksum", sum.as_str()));
        }
        let answer = self
            .tus(Method::PATCH, &path, chunk.to_vec(), &headers)
            .await?;
        number(&expect(answer, StatusCode::NO_CONTENT)?, "upload-offset")
    }

    /// Uploads `bytes` in chunks of `chunk_size` (checksummed) and answers the attachment's id.
    /// A request that gets no answer, or a 409/460/503 (another request moved the offset or
    /// still holds the upload, a chunk was damaged on the way, the server is busy), is not an
    /// end: the server's offset is read back with `HEAD` and the upload goes on from it, up to
    /// `UPLOAD_RETRIES` failures in a row. Other refusals end it at once.
    pub async fn upload(&self, bytes: &[u8], chunk_size: usize) -> Result<String, Error> {
        let mut failures = 0;
        let upload = loop {
            match self.create_upload(bytes.len() as u64).await {
                // An upload made for a lost answer is never used; it expires.
                Err(e) if resumable(&e) && failures < UPLOAD_RETRIES => {
                    failures = pause(failures).await
                }
                other => break other?,
            }
        };
        self.send_from(&upload.id, bytes, chunk_size, upload.offset)
            .await?;
        Ok(upload.id)
    }

    /// Finishes the upload `id` of `bytes` (all of them, as first given) that an earlier run
    /// left unfinished (the app was killed, the network went away): asks the server's offset
    /// with `HEAD` and sends the rest as `upload` does.
    pub async fn resume_upload(
        &self,
        id: &str,
        bytes: &[u8],
        chunk_size: usize,
    ) -> Result<(), Error> {
        let (offset, _) = self.resume_offset(id, bytes.len() as u64, 0).await?;
        self.send_from(id, bytes, chunk_size, offset).await
    }

    /// PATCHes `bytes[offset..]` in chunks, resuming from the server's offset after a failure.
    async fn send_from(
        &self,
        id: &str,
        bytes: &[u8],
        chunk_size: usize,
        mut offset: u64,
    ) -> Result<(), Error> {
        let chunk_size = chunk_size.max(1);
        let length = bytes.len() as u64;
        let mut failures = 0;
        while offset < length {
            let start = usize::try_from(offset).map_err(Error::transport)?;
            let chunk = &bytes[start..bytes.len().min(start.saturating_add(chunk_size))];
            match self.patch_upload(id, offset, chunk, true).await {
                Ok(next) if next > offset && next <= length => (offset, failures) = (next, 0),
                Ok(next) => return Err(stuck(offset, next)),
                Err(e) if resumable(&e) && failures < UPLOAD_RETRIES => {
                    failures = pause(failures).await;
                    (offset, failures) = self.resume_offset(id, length, failures).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The server's offset of an upload being resumed (checked against its length), asked
    /// again while `HEAD` gets no answer and `failures` allows; answers it with the failures
    /// counted so far.
    async fn resume_offset(
        &self,
        id: &str,
        length: u64,
        mut failures: u32,
    ) -> Result<(u64, u32), Error> {
        let (offset, server_length) = loop {
            match self.upload_offset(id).await {
                Err(e) if resumable(&e) && failures < UPLOAD_RETRIES => {
                    failures = pause(failures).await
                }
                other => break other?,
            }
        };
        if server_length != length || offset > length {
            return Err(Error::Decode {
                status: StatusCode::OK.as_u16(),
                detail: format!(
                    "HEAD says {offset} of {server_length} bytes; the upload has {length}"
                ),
            });
        }
        Ok((offset, failures))
    }

    /// `DELETE /attachments/<id>` (204): the upload or attachment is gone for everyone.
    pub async fn delete_upload(&self, id: &str) -> Result<(), Error> {
        let path = format!("/attachments/{id}");
        let answer = self.tus(Method::DELETE, &path, Vec::new(), &[]).await?;
        expect(answer, StatusCode::NO_CONTENT).map(|_| ())
    }

    /// `GET /attachments/<id>` (200): the whole blob of a complete attachment.
    pub async fn download(&self, id: &str) -> Result<Vec<u8>, Error> {
        let answer = self.get(id, &[]).await?;
        Ok(expect(answer, StatusCode::OK)?.body)
    }

    /// `GET /attachments/<id>` with `Range: bytes=start-end` (206): bytes `start..=end`
    /// (416 `range_not_satisfiable` when `start` is past the end).
    pub async fn download_range(&self, id: &str, start: u64, end: u64) -> Result<Vec<u8>, Error> {
        let range = format!("bytes={start}-{end}");
        let answer = self.get(id, &[("range", range.as_str())]).await?;
        Ok(expect(answer, StatusCode::PARTIAL_CONTENT)?.body)
    }

    /// A download needs no `Tus-Resumable` (a browser's plain fetch works), so none is sent.
    async fn get(&self, id: &str, headers: &[(&str, &str)]) -> Result<RawAnswer, Error> {
        let path = format!("/attachments/{id}");
        self.report(&Method::GET, &path, None, &[]);
        let answer = self.raw(Method::GET, &path, Vec::new(), headers).await?;
        self.report(&Method::GET, &path, Some(answer.status), &[]);
        Ok(answer)
    }

    /// One TUS request: `headers` plus `Tus-Resumable`, with the client's 429 retries (a
    /// creation is rate limited).
    async fn tus(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<RawAnswer, Error> {
        let mut all = vec![("tus-resumable", TUS_VERSION)];
        all.extend_from_slice(headers);
        self.exchange_bytes(method, path, body, &all).await
    }
}

/// The `code` a body-less refusal (of `HEAD`) stands for, as the routes document it; other
/// statuses read `http_<status>`.
fn head_code(status: StatusCode) -> String {
    let code = match status.as_u16() {
        400 => "invalid_data",
        401 => "not_authenticated",
        404 => "no_such_attachment",
        412 => "unsupported_version",
        429 => "throttled",
        500 => "internal_error",
        503 => "unavailable",
        other => return format!("http_{other}"),
    };
    code.to_string()
}

/// Failures `upload` recovers from by asking the server where it stands: no answer, a moved
/// offset (or an upload another request still holds), a chunk damaged on the way, a server
/// briefly out of room to read bodies (503, `Retry-After: 1`).
fn resumable(e: &Error) -> bool {
    match e {
        Error::Transport(_) => true,
        Error::Refused(r) => matches!(r.status, 409 | 460 | 503) && r.code != "upload_complete",
        Error::Decode { .. } => false,
    }
}

/// Sleeps before the next try (`RESUME_PAUSE`, doubled per failure in a row) and counts it.
async fn pause(failures: u32) -> u32 {
    tokio::time::sleep(RESUME_PAUSE * 2u32.pow(failures)).await;
    failures + 1
}

/// A PATCH answered 204 with an offset that did not move forward within the upload.
fn stuck(offset: u64, next: u64) -> Error {
    Error::Decode {
        status: StatusCode::NO_CONTENT.as_u16(),
        detail: format!("a PATCH at {offset} answered Upload-Offset {next}"),
    }
}

/// A header of a wanted answer, as text.
fn header<'a>(answer: &'a RawAnswer, name: &str) -> Result<&'a str, Error> {
    text(&answer.headers, name).ok_or_else(|| undecodable(answer, format!("no {name} header")))
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

/// A numeric header (`Upload-Offset`, `Upload-Length`) of a wanted answer.
fn number(answer: &RawAnswer, name: &str) -> Result<u64, Error> {
    let value = header(answer, name)?;
    value
        .parse()
        .map_err(|_| undecodable(answer, format!("{name} is not a number: {value:?}")))
}

fn undecodable(answer: &RawAnswer, detail: String) -> Error {
    Error::Decode {
        status: answer.status.as_u16(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_less_refusals_get_the_documented_codes() {
        assert_eq!(head_code(StatusCode::NOT_FOUND), "no_such_attachment");
        assert_eq!(
            head_code(StatusCode::PRECONDITION_FAILED),
            "unsupported_version"
        );
        assert_eq!(head_code(StatusCode::IM_A_TEAPOT), "http_418");
    }

    #[test]
    fn only_lost_answers_and_lost_offsets_are_resumed() {
        let refused = |status, code: &str| {
            let body = format!(r#"{{"code":"{code}","message":""}}"#);
            Error::refused(status, body.as_bytes(), None)
        };
        assert!(resumable(&Error::Transport("reset".into())));
        assert!(resumable(&refused(409, "offset_mismatch")));
        assert!(resumable(&refused(460, "checksum_mismatch")));
        assert!(resumable(&refused(503, "unavailable")));
        assert!(!resumable(&refused(409, "upload_complete")));
        assert!(!resumable(&refused(404, "no_such_attachment")));
        assert!(!resumable(&refused(413, "payload_too_large")));
        assert!(!resumable(&refused(507, "insufficient_storage")));
    }
}
