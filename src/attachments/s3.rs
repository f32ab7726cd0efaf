//! Blobs in an S3-compatible bucket (`--attachments-s3 s3://bucket[/prefix]`, with
//! `--attachments-s3-endpoint` for a store other than AWS). S3 has no append, so a blob is a
//! chain of *segment* objects, `<prefix>/<id>/<start offset as 16 hex digits>`: a writer collects
//! bytes and PUTs them as a segment starting where its last one ended, once it holds `SEGMENT`
//! bytes and at every `sync` (a completed PUT is durable). A segment is part of the blob only
//! once the record's offset moved past it, so `read` follows the chain from offset 0 (the
//! segment starting at the current position, then the one where it ends) and skips every other
//! object: those are leftovers of writers that crashed or were discarded, removed with the blob.
//! A new writer starts at its record's offset, where no committed segment starts, so it only
//! ever overwrites leftovers.

use std::collections::BTreeMap;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{stream, Stream, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayloadMut, RetryConfig};
use warp::hyper::body::Bytes;

use super::blob_io::{BlobError, ByteStream};
use super::ids::{encode_id, parse_id};
use crate::storage::attachments::AttachmentId;

/// Bytes a writer collects before PUTting them as a segment: its memory, and the most a
/// crash can leave behind uncommitted. S3 wants multipart parts of at least 5 MiB, so a store
/// could one day join segments with a server-side copy.
const SEGMENT: usize = 8 << 20;
/// Bytes one ranged GET of a download asks for. Each is read whole before it is passed on,
/// so a slow client never holds a request to the object store open.
const READ_CHUNK: u64 = 1 << 20;
/// Downloaded chunks fetched ahead of the client.
const READ_AHEAD: usize = 2;

/// Where the blobs are and how to reach them: from the flags and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub bucket: String,
    /// The key prefix (no leading or trailing `/`; empty for the bucket's root).
    pub prefix: String,
    /// `None`: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl Settings {
    /// From `--attachments-s3`, `--attachments-s3-endpoint` and the environment (`env`:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION`).
    pub fn new(
        url: &str,
        endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        let (bucket, prefix) = parse_url(url)?;
        let endpoint = endpoint.map(parse_endpoint).transpose()?;
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let region = match (
            env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
            &endpoint,
        ) {
            (Some(region), _) => region,
            (None, Some(_)) => "us-east-1".into(),
            (None, None) => {
                return Err("--attachments-s3 on AWS needs AWS_REGION (the bucket's region)".into())
            }
        };
        let key = |name: &str| {
            env(name).ok_or_else(|| format!("--attachments-s3 needs {name} in the environment"))
        };
        Ok(Settings {
            bucket,
            prefix,
            endpoint,
            region,
            access_key_id: key("AWS_ACCESS_KEY_ID")?,
            secret_access_key: key("AWS_SECRET_ACCESS_KEY")?,
            session_token: env("AWS_SESSION_TOKEN"),
        })
    }
}

/// `s3://bucket[/prefix]` as bucket and prefix.
fn parse_url(url: &str) -> Result<(String, String), String> {
    let bad = |why: &str| format!("--attachments-s3 {url:?}: {why}; expected s3://bucket[/prefix]");
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !bucket_ok {
        return Err(bad(
            "a bucket name is 3 to 63 lowercase letters, digits, dots and hyphens",
        ));
    }
    if prefix.contains(['?', '#']) {
        return Err(bad("a prefix has no query or fragment"));
    }
    let prefix = Path::parse(prefix).map_err(|_| {
        bad("a prefix is segments separated by single slashes, none of them . or ..")
    })?;
    Ok((bucket.to_string(), prefix.to_string()))
}

/// An `http://` or `https://` endpoint, without a trailing `/`.
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let trimmed = endpoint.trim_end_matches('/');
    let host = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match host {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', '@']) => {
            Ok(trimmed.to_string())
        }
        _ => Err(format!(
            "--attachments-s3-endpoint {endpoint:?}: expected http(s)://host[:port]"
        )),
    }
}

/// The object store client for `settings` (no request yet).
fn client(settings: &Settings) -> Result<AmazonS3, String> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&settings.bucket)
        .with_region(&settings.region)
        .with_access_key_id(&settings.access_key_id)
        .with_secret_access_key(&settings.secret_access_key)
        .with_client_options(
            ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(60)),
        )
        // A request that still fails after a few tries fails the client's request, which the
        // client resumes; minutes of retries would only hold its connection.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        });
    if let Some(token) = &settings.session_token {
        builder = builder.with_token(token);
    }
    builder = match &settings.endpoint {
        // MinIO, Garage, SeaweedFS and the like answer path-style requests
        // (`<endpoint>/<bucket>/<key>`), often over plain HTTP on a private network.
        Some(endpoint) => builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false),
        // AWS wants `<bucket>.s3.<region>.amazonaws.com`.
        None => builder.with_virtual_hosted_style_request(true),
    };
    builder
        .build()
        .map_err(|e| format!("--attachments-s3: {e}"))
}

pub struct S3Blobs {
    store: Arc<AmazonS3>,
    /// `<prefix>` as a path (empty: the bucket's root).
    root: Path,
    where_: String,
    segment: usize,
    read_chunk: u64,
}

fn io(e: object_store::Error) -> BlobError {
    BlobError::Io(e.to_string())
}

impl S3Blobs {
    /// The bucket `settings` name, after one listing showed it is there and the credentials
    /// work.
    pub async fn open(settings: &Settings) -> Result<S3Blobs, String> {
        let at = match &settings.endpoint {
            Some(endpoint) => format!("at {endpoint}"),
            None => format!("on AWS ({})", settings.region),
        };
        let location = match settings.prefix.as_str() {
            "" => format!("s3://{}", settings.bucket),
            prefix => format!("s3://{}/{prefix}", settings.bucket),
        };
        let blobs = S3Blobs {
            store: Arc::new(client(settings)?),
            root: Path::from(settings.prefix.as_str()),
            where_: format!("attachments in {location} {at}"),
            segment: SEGMENT,
            read_chunk: READ_CHUNK,
        };
        // One page of one listing: a missing bucket, wrong credentials or an endpoint that
        // does not answer stop the start here, not the first upload.
        if let Some(Err(e)) = blobs.store.list(blobs.prefix()).next().await {
            return Err(format!(
                "{}: the bucket cannot be listed: {e}",
                blobs.where_
            ));
        }
        Ok(blobs)
    }

    /// The prefix to list, `None` for the whole bucket (an empty path would list `/`).
    fn prefix(&self) -> Option<&Path> {
        Some(&self.root).filter(|p| !p.as_ref().is_empty())
    }

    fn dir(&self, id: &AttachmentId) -> Path {
        self.root.child(encode_id(id))
    }

    /// The segments of `id` as start → size (objects whose name is not an offset are left out).
    async fn segments(&self, id: &AttachmentId) -> Result<BTreeMap<u64, u64>, BlobError> {
        Ok(self
            .objects(id)
            .await?
            .iter()
            .filter_map(|o| Some((parse_start(o.location.filename()?)?, o.size)))
            .collect())
    }

    /// The most a writer collects before it PUTs a segment.
    pub fn segment_bytes(&self) -> usize {
        self.segment
    }

    pub async fn writer(&self, id: &AttachmentId, offset: u64) -> Result<S3Writer, BlobError> {
        Ok(S3Writer {
            store: self.store.clone(),
            dir: self.dir(id),
            segment: self.segment,
            buf: PutPayloadMut::new(),
            flushed: offset,
            synced: offset,
            unsynced: Vec::new(),
        })
    }

    pub async fn read(
        &self,
        id: &AttachmentId,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, BlobError> {
        let segments = self.segments(id).await?;
        let parts = chain(&segments, start, end)
            .map_err(|why| BlobError::Io(format!("blob {}: {why}", encode_id(id))))?;
        let chunk = self.read_chunk;
        let requests = parts.into_iter().flat_map(move |(at, range)| {
            let steps = range.clone().step_by(chunk as usize);
            steps.map(move |from| (at, from..(from + chunk).min(range.end)))
        });
        let (store, dir) = (self.store.clone(), self.dir(id));
        let chunks = stream::iter(requests)
            .map(move |(at, range)| {
                let (store, location) = (store.clone(), dir.child(segment_name(at)));
                async move { store.get_range(&location, range).await }
            })
            .buffered(READ_AHEAD)
            .map_err(std::io::Error::other);
        Ok(Box::pin(SyncStream(Mutex::new(chunks.boxed()))))
    }

    /// Every object under `id`'s directory.
    async fn objects(&self, id: &AttachmentId) -> Result<Vec<object_store::ObjectMeta>, BlobError> {
        let dir = self.dir(id);
        self.store.list(Some(&dir)).try_collect().await.map_err(io)
    }

    pub async fn delete(&self, id: &AttachmentId) -> Result<(), BlobError> {
        let objects = self.objects(id).await?;
        let store = &self.store;
        stream::iter(objects)
            .map(|o| async move { store.delete(&o.location).await })
            .buffer_unordered(4)
            .try_collect::<()>()
            .await
            .map_err(io)
    }

    pub async fn len(&self, id: &AttachmentId) -> Result<Option<u64>, BlobError> {
        let segments = self.segments(id).await?;
        Ok((!segments.is_empty()).then(|| chained_len(&segments)))
    }

    pub async fn ids(&self) -> Result<Vec<AttachmentId>, BlobError> {
        let listed = self
            .store
            .list_with_delimiter(self.prefix())
            .await
            .map_err(io)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| parse_id(p.filename()?))
            .collect())
    }

    pub fn describe(&self) -> String {
        self.where_.clone()
    }
}

/// A segment's object name: its start offset as 16 lowercase hex digits (so names sort as
/// offsets do).
fn segment_name(start: u64) -> String {
    format!("{start:016x}")
}

fn parse_start(name: &str) -> Option<u64> {
    let hex = name.len() == 16 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then(|| u64::from_str_radix(name, 16).ok()).flatten()
}

/// The parts of `segments` (start → size) that hold `start..end`, as (segment start, range
/// inside the segment), following the chain from offset 0.
fn chain(
    segments: &BTreeMap<u64, u64>,
    start: u64,
    end: u64,
) -> Result<Vec<(u64, Range<u64>)>, String> {
    let mut parts = Vec::new();
    let mut at = 0;
    while at < end {
        let size = match segments.get(&at) {
            Some(&size) if size > 0 => size,
            _ => return Err(format!("no segment starts at offset {at}")),
        };
        let next = at + size;
        if next > start {
            parts.push((at, start.max(at) - at..end.min(next) - at));
        }
        at = next;
    }
    Ok(parts)
}

/// How far the chain from offset 0 reaches: the bytes `read` can serve (objects off the chain
/// are left out, as `read` leaves them out).
fn chained_len(segments: &BTreeMap<u64, u64>) -> u64 {
    let mut at = 0;
    while let Some(&size) = segments.get(&at).filter(|size| **size > 0) {
        at += size;
    }
    at
}

pub struct S3Writer {
    store: Arc<AmazonS3>,
    /// `<prefix>/<id>`.
    dir: Path,
    segment: usize,
    buf: PutPayloadMut,
    /// Where the next segment starts (the end of the last one PUT).
    flushed: u64,
    synced: u64,
    /// Starts of the segments PUT since the last `sync` (for `discard`).
    unsynced: Vec<u64>,
}

impl S3Writer {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        self.buf.push(bytes);
        if self.buf.content_length() >= self.segment {
            self.put_segment().await?;
        }
        Ok(())
    }

    /// PUTs what is buffered as the segment starting at `flushed`.
    async fn put_segment(&mut self) -> Result<(), BlobError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.buf).freeze();
        let len = payload.content_length() as u64;
        // Remembered before the PUT: one that failed may still have landed.
        self.unsynced.push(self.flushed);
        let location = self.dir.child(segment_name(self.flushed));
        self.store.put(&location, payload).await.map_err(io)?;
        self.flushed += len;
        Ok(())
    }

    pub async fn sync(&mut self) -> Result<u64, BlobError> {
        self.put_segment().await?;
        self.unsynced.clear();
        self.synced = self.flushed;
        Ok(self.synced)
    }

    pub async fn discard(&mut self) -> Result<(), BlobError> {
        self.buf = PutPayloadMut::new();
        self.flushed = self.synced;
        for start in std::mem::take(&mut self.unsynced) {
            let location = self.dir.child(segment_name(start));
            self.store.delete(&location).await.map_err(io)?;
        }
        Ok(())
    }
}

/// A `Send` stream made `Sync`, as warp's bodies must be: it is only ever polled through
/// `&mut`, so the mutex is never locked.
struct SyncStream<S>(Mutex<S>);

impl<S: Stream + Unpin> Stream for SyncStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        Pin::new(inner).poll_next(cx)
    }
}

#[cfg(test)]
mod tests;
