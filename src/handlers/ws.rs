//! Live delivery over WebSocket: the backlog oldest first, `queue_empty`, then new messages as
//! they are queued. Only an ack (or a DELETE) removes a message.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Bytes;
use warp::reply::Reply;

use super::ws_upgrade::{Frame, WebSocket, Ws};
use super::Answer;
use crate::app::App;
use crate::auth::{now_secs, Caller};
use crate::hub::{CloseReason, Registration, RESYNC_EVERY};
use crate::models::{DeviceRef, Message, MessageOut};

const PING_EVERY: Duration = Duration::from_secs(30);
/// A client silent for this long (no pong, no frame) is gone.
const IDLE_LIMIT: Duration = Duration::from_secs(75);
const BACKLOG_PAGE: usize = 500;
/// Longest a new connection waits for the session it replaces to end.
const REPLACED_WAIT: Duration = Duration::from_secs(5);
/// Stored bytes of one backlog page: a client that stops reading holds at most this much.
const BACKLOG_PAGE_BYTES: usize = 1 << 20;

/// GET /messages/<regId>/ws
pub async fn upgrade(reg_id: u64, app: App, user: Caller, ws: Ws) -> Answer {
    let own = app.own_device(&user, reg_id).await?;
    let (device, stamp) = (own.of(user.id), own.stamp);
    let grant = Grant {
        device,
        stamp,
        version: user.token_version,
        expires: user.token.exp,
    };
    let frame_limit = app.max_body() as usize;
    Ok(ws
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| session(app, grant, socket))
        .into_response())
}

/// What a socket was opened with, and must still hold to go on: the device (the same one, not
/// a later device with its id) and the token (not expired, its version still the account's).
#[derive(Clone, Copy)]
struct Grant {
    device: DeviceRef,
    stamp: u64,
    version: u32,
    /// Expiry of the token, in Unix seconds.
    expires: u64,
}

impl Grant {
    /// Why the socket must close now, if it must: checked when it opens, on every re-read of
    /// the queue and (with other instances, whose signals can be lost) before every delivery.
    async fn revoked(&self, app: &App) -> Result<Option<CloseReason>, String> {
        if now_secs() >= self.expires {
            return Ok(Some(CloseReason::TokenExpired));
        }
        let failed = |e| format!("{e:?}");
        match app.storage.user(self.device.user).await.map_err(failed)? {
            None => return Ok(Some(CloseReason::DeviceRemoved)),
            Some(user) if user.token_version != self.version => {
                return Ok(Some(CloseReason::TokenRevoked))
            }
            Some(_) => {}
        }
        let stamp = app
            .storage
            .device_stamp(self.device)
            .await
            .map_err(failed)?;
        Ok((stamp != Some(self.stamp)).then_some(CloseReason::DeviceRemoved))
    }

    /// When the token expires, on the clock sessions sleep on.
    fn deadline(&self) -> Instant {
        let left = self.expires.saturating_sub(now_secs());
        Instant::now() + Duration::from_secs(left.min(u64::from(u32::MAX)))
    }
}

#[derive(Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    ids: Vec<u64>,
}

fn message_frame(json: &str) -> Frame {
    Frame::text(format!(r#"{{"type":"message","message":{json}}}"#))
}

fn message_frame_of(m: &Message) -> Result<Frame, String> {
    let json = serde_json::to_string(&MessageOut::from(m)).map_err(|e| e.to_string())?;
    Ok(message_frame(&json))
}

/// The sending half of a session: every frame either reaches the socket within the idle timeout
/// or ends the session, and a close from the hub (a newer connection, shutdown, device removed,
/// token revoked) or the token's expiry ends it at once, even while a slow client keeps a frame
/// waiting.
struct Outbox {
    tx: SplitSink<WebSocket, Frame>,
    closed: watch::Receiver<Option<CloseReason>>,
    expires: Instant,
    timeout: Duration,
    /// Why the server ends the session, once it knows.
    reason: Option<CloseReason>,
}

impl Outbox {
    async fn send(&mut self, frame: Frame) -> Result<(), String> {
        tokio::select! {
            biased;
            _ = self.closed.changed() => Err(self.closing()),
            () = tokio::time::sleep_until(self.expires) => {
                self.reason = Some(CloseReason::TokenExpired);
                Err("token expired".into())
            },
            sent = tokio::time::timeout(self.timeout, self.tx.send(frame)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("client not reading".into()),
            },
        }
    }

    /// Takes the hub's reason for closing (it has closed or replaced this connection).
    fn closing(&mut self) -> String {
        self.reason = self.reason.or(*self.closed.borrow());
        "closed by the server".into()
    }

    /// A close frame (with the server's reason, if it has one), if the client takes it in time.
    async fn close(mut self) {
        let frame = match self.reason {
            Some(reason) => Frame::Close(Some(CloseFrame {
                code: reason.code().into(),
                reason: reason.text().into(),
            })),
            None => Frame::Close(None),
        };
        let _ = tokio::time::timeout(self.timeout, async {
            let _ = self.tx.send(frame).await;
            let _ = self.tx.close().await;
        })
        .await;
    }
}

async fn session(app: App, grant: Grant, socket: WebSocket) {
    let device = grant.device;
    // Declared first so it drops last: the socket counts as open until it is gone.
    let _open = app.hub.open_socket();
    // Register before reading the backlog so that nothing queued in between is missed.
    let Registration {
        conn,
        mut pushes,
        closed,
        mut resync,
        running,
        replaced,
    } = app.hub.register(device, grant.version);
    // Acks the replaced session received before this connection opened are applied before this
    // one reads the queue (a client that acks, closes and reconnects gets no acked message).
    if let Some(mut replaced) = replaced {
        let _ = tokio::time::timeout(REPLACED_WAIT, replaced.changed()).await;
    }
    let (tx, mut rx) = socket.split();
    let mut out = Outbox {
        tx,
        closed,
        expires: grant.deadline(),
        timeout: Duration::from_secs(app.config.idle_timeout.max(1)),
        reason: None,
    };
    let mut sent = Sent {
        ids: HashSet::new(),
        keep: app.hub.has_remote(),
    };
    // Checked once registered: a device removed or a password changed since the upgrade's own
    // check (the hub's close came before this socket was there to get it) ends it here.
    let backlog = match still_granted(&app, &grant, &mut out).await {
        Ok(()) => match send_backlog(&app, device, &mut sent, &mut out).await {
            Ok(()) => out.send(Frame::text(r#"{"type":"queue_empty"}"#)).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match backlog {
        Ok(()) => {
            let mut feeds = Feeds {
                pushes: &mut pushes,
                resync: &mut resync,
                rx: &mut rx,
            };
            live(&app, &grant, &mut out, &mut feeds, sent).await;
        }
        Err(e) => log::debug!("websocket of {device} ended during backlog: {e}"),
    }
    // Every ack this session took is applied: a newer connection may read the queue now, while
    // this one says goodbye to a client that may be gone.
    drop(running);
    app.hub.unregister(device, conn);
    out.close().await;
}

/// Ends the session (with the reason) if what opened it no longer holds.
async fn still_granted(app: &App, grant: &Grant, out: &mut Outbox) -> Result<(), String> {
    match grant.revoked(app).await? {
        None => Ok(()),
        Some(reason) => {
            out.reason = Some(reason);
            Err(reason.text().into())
        }
    }
}

/// The ids a connection has sent. Alone, only the backlog's are kept, each until its push
/// comes (a message queued while the backlog was read comes both ways). With other instances,
/// every id is kept while it is in the queue, since a resync and a push may both bring it.
struct Sent {
    ids: HashSet<u64>,
    keep: bool,
}

impl Sent {
    /// Whether `id` is to be sent now (and counts as sent from here on).
    fn first_time(&mut self, id: u64) -> bool {
        if self.keep {
            self.ids.insert(id)
        } else {
            !self.ids.remove(&id)
        }
    }
}

/// What a live session listens to besides its own closing.
struct Feeds<'a> {
    pushes: &'a mut mpsc::Receiver<u64>,
    /// Changes when the hub asks every session to re-read its queue (signals may have been lost).
    resync: &'a mut watch::Receiver<()>,
    rx: &'a mut SplitStream<WebSocket>,
}

/// After the backlog: pushes, client frames (acks), pings, the token's expiry and, every
/// `RESYNC_EVERY` (and when the hub asks), a check that the socket is still granted, with other
/// instances also a re-read of the queue, until either side ends it.
async fn live(app: &App, grant: &Grant, out: &mut Outbox, feeds: &mut Feeds<'_>, mut sent: Sent) {
    let device = grant.device;
    // Pings keep the connection from counting as idle while no message comes.
    let mut ping = tokio::time::interval(PING_EVERY.min(out.timeout / 2));
    let mut reread = tokio::time::interval(RESYNC_EVERY);
    reread.reset();
    let mut last_heard = Instant::now();
    let mut batch = Vec::new();
    let ended = loop {
        tokio::select! {
            _ = out.closed.changed() => {
                out.closing();
                return;
            },
            () = tokio::time::sleep_until(out.expires) => {
                out.reason = Some(CloseReason::TokenExpired);
                return;
            },
            received = feeds.pushes.recv_many(&mut batch, BACKLOG_PAGE) => {
                // The hub let go of the connection: its reason is there too.
                if received == 0 {
                    out.closing();
                    return;
                }
                // Other instances' close signals can be lost: check before delivering theirs.
                if sent.keep {
                    if let Err(e) = still_granted(app, grant, out).await { break e; }
                }
                let ids = std::mem::take(&mut batch);
                for &id in &ids {
                    if let Err(e) = push_message(app, device, id, &mut sent, out).await {
                        return log::debug!("websocket of {device} ended: {e}");
                    }
                }
                batch = ids;
                batch.clear();
            },
            due = resync_due(&mut reread, feeds.resync) => {
                if !due {
                    out.closing();
                    return;
                }
                if let Err(e) = still_granted(app, grant, out).await { break e; }
                if sent.keep {
                    if let Err(e) = resync_queue(app, device, &mut sent, out).await { break e; }
                }
            },
            frame = feeds.rx.next() => match frame {
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    if frame.is_close() { return; }
                    if let Frame::Text(text) = &frame {
                        // An ack deletes from the device's queue: not from a later device's with
                        // its id, whose unlink signal this instance may have missed.
                        if sent.keep {
                            if let Err(e) = still_granted(app, grant, out).await { break e; }
                        }
                        handle_client_frame(app, device, text.as_str()).await;
                    }
                }
                Some(Err(_)) | None => return,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_LIMIT { return; }
                if out.send(Frame::Ping(Bytes::new())).await.is_err() { return; }
            }
        }
    };
    log::debug!("websocket of {device} ended: {ended}");
}

/// When to re-read the queue: every `RESYNC_EVERY`, and whenever the hub asks. False once the hub
/// is gone (shutdown).
async fn resync_due(every: &mut tokio::time::Interval, asked: &mut watch::Receiver<()>) -> bool {
    tokio::select! {
        _ = every.tick() => true,
        changed = asked.changed() => changed.is_ok(),
    }
}

/// Sends the backlog oldest first, each id counted as sent.
async fn send_backlog(
    app: &App,
    device: DeviceRef,
    sent: &mut Sent,
    out: &mut Outbox,
) -> Result<(), String> {
    let mut last_read = 0u64;
    loop {
        let page = app
            .storage
            .messages_page(device, last_read, BACKLOG_PAGE, BACKLOG_PAGE_BYTES)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let Some(last) = page.last() else { break };
        last_read = last.id;
        for m in &page {
            if sent.ids.insert(m.id) {
                out.send(message_frame_of(m)?).await?;
            }
        }
    }
    Ok(())
}

/// Ids read at once by a re-read of the queue.
const RESYNC_PAGE: usize = 5000;

/// Re-reads the queue (another instance's signal may have been lost): its ids only, then the
/// messages this connection has not sent yet, so an idle socket over a large queue reads a few
/// bytes per message, not the queue. Ids no longer queued are forgotten.
async fn resync_queue(
    app: &App,
    device: DeviceRef,
    sent: &mut Sent,
    out: &mut Outbox,
) -> Result<(), String> {
    let failed = |e| format!("{e:?}");
    let mut queued = HashSet::new();
    let mut after = 0u64;
    loop {
        let ids = app
            .storage
            .queued_ids(device, after, RESYNC_PAGE)
            .await
            .map_err(failed)?;
        let Some(&last) = ids.last() else { break };
        after = last;
        for id in ids {
            queued.insert(id);
            if !sent.ids.insert(id) {
                continue;
            }
            if let Some(m) = app.storage.message(device, id).await.map_err(failed)? {
                out.send(message_frame_of(&m)?).await?;
            }
        }
    }
    sent.ids.retain(|id| queued.contains(id));
    Ok(())
}

/// Sends a message queued since the session registered, unless the backlog sent it already (a
/// message queued while the backlog was read comes both ways). Pushes may arrive out of id order
/// (concurrent senders finish in any order), so only those exact ids are skipped, never
/// "everything below". A message acknowledged meanwhile is skipped too.
async fn push_message(
    app: &App,
    device: DeviceRef,
    id: u64,
    sent: &mut Sent,
    out: &mut Outbox,
) -> Result<(), String> {
    if !sent.first_time(id) {
        return Ok(());
    }
    match app
        .storage
        .message(device, id)
        .await
        .map_err(|e| format!("{e:?}"))?
    {
        Some(m) => out.send(message_frame_of(&m)?).await,
        None => Ok(()),
    }
}

/// `{"type": "ack", "ids": [...]}` deletes the caller's own messages; anything else is ignored.
async fn handle_client_frame(app: &App, device: DeviceRef, text: &str) {
    let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
        return;
    };
    if frame.kind != "ack" || frame.ids.is_empty() {
        return;
    }
    let ids = &frame.ids[..frame.ids.len().min(crate::requests::MAX_DELETE_IDS)];
    if let Err(e) = app.storage.delete_messages(device, ids).await {
        log::error!("ack of {device} failed: {e:?}");
    }
}
