//! Live delivery over WebSocket: the backlog oldest first, `queue_empty`, then new messages as
//! they are queued. Only an ack (or a DELETE) removes a message.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use warp::reply::Reply;
use warp::ws::{Message as Frame, WebSocket, Ws};

use super::Answer;
use crate::app::App;
use crate::hub::Push;
use crate::models::{MessageOut, User};

const PING_EVERY: Duration = Duration::from_secs(30);
/// A client silent for this long (no pong, no frame) is gone.
const IDLE_LIMIT: Duration = Duration::from_secs(75);
const BACKLOG_PAGE: usize = 500;

/// GET /messages/<regId>/ws
pub async fn upgrade(reg_id: u64, app: App, user: User, ws: Ws) -> Answer {
    app.own_device(&user, reg_id)?;
    let frame_limit = app.max_body() as usize;
    Ok(ws
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| session(app, user.id, socket))
        .into_response())
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

async fn session(app: App, user_id: u64, socket: WebSocket) {
    // Register before reading the backlog so that nothing queued in between is missed. A
    // message queued meanwhile may come both in the backlog and as a push: the pushes of ids the
    // backlog already sent are dropped. Pushes may arrive out of id order (concurrent senders
    // finish in any order), so only those exact ids are dropped, never "everything below".
    let (conn, mut pushes) = app.hub.register(user_id);
    let (mut tx, mut rx) = socket.split();
    let mut last_sent = 0u64;
    let mut sent_in_backlog: HashSet<u64> = HashSet::new();
    let backlog = async {
        loop {
            let page = app
                .storage
                .messages(user_id, last_sent, BACKLOG_PAGE)
                .map_err(|e| format!("{e:?}"))?;
            if page.is_empty() {
                break;
            }
            for m in &page {
                let json =
                    serde_json::to_string(&MessageOut::from(m)).map_err(|e| e.to_string())?;
                tx.send(message_frame(&json))
                    .await
                    .map_err(|e| e.to_string())?;
                last_sent = m.id;
            }
        }
        tx.send(Frame::text(r#"{"type":"queue_empty"}"#))
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = backlog.await {
        log::debug!("websocket of user {user_id} ended during backlog: {e}");
        app.hub.unregister(user_id, conn);
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(Push::Message(id, json)) => {
                    if !sent_in_backlog.remove(&id) && tx.send(message_frame(&json)).await.is_err() {
                        break;
                    }
                }
                Some(Push::Close) | None => break,
            },
            frame = rx.next() => match frame {
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    if frame.is_close() { break; }
                    if let Ok(text) = frame.to_str() {
                        handle_client_frame(&app, user_id, text).await;
                    }
                }
                Some(Err(_)) | None => break,
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_LIMIT { break; }
                if tx.send(Frame::ping(Vec::new())).await.is_err() { break; }
            }
        }
    }
    app.hub.unregister(user_id, conn);
    let _ = tx.send(Frame::close()).await;
    let _ = tx.close().await;
}

/// `{"type": "ack", "ids": [...]}` deletes the caller's own messages; anything else is ignored.
async fn handle_client_frame(app: &App, user_id: u64, text: &str) {
    let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
        return;
    };
    if frame.kind != "ack" || frame.ids.is_empty() {
        return;
    }
    let ids = &frame.ids[..frame.ids.len().min(crate::requests::MAX_DELETE_IDS)];
    if let Err(e) = app.storage.delete_messages(user_id, ids).await {
        log::error!("ack of user {user_id} failed: {e:?}");
    }
}
