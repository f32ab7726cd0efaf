//! Signals between instances on one database (see `hub`): this instance's go out as
//! `NOTIFY signal_server`, one statement per batch through the pool; the others' come in on a
//! connection of its own that `LISTEN`s, reconnecting after a second when it is lost. After every
//! (re)connect the hub is asked to resync, since signals sent meanwhile were missed. Signals are
//! hints: the message is committed before its signal is sent, and sessions re-read their queue.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Socket};

use super::{tls, PgStore};
use crate::hub::Signal;
use crate::models::DeviceRef;

const CHANNEL: &str = "signal_server";
/// Signals sent in one statement at the most.
const BATCH: usize = 256;
/// Wait before listening again after the connection was lost.
const RECONNECT: Duration = Duration::from_secs(1);

/// What the listener hands to the hub.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Another instance's signal.
    Signal(Signal),
    /// Signals may have been missed (the listener was not connected): re-read every queue.
    Resync,
}

impl PgStore {
    /// Sends `outgoing` to the other instances and hands theirs to `incoming` until the
    /// returned tasks are aborted.
    pub fn relay_signals(
        &self,
        outgoing: mpsc::Receiver<Signal>,
        incoming: impl Fn(Incoming) + Send + Sync + 'static,
    ) -> [tokio::task::JoinHandle<()>; 2] {
        let instance = rand::random::<u64>();
        [
            tokio::spawn(send(self.clone(), instance, outgoing)),
            tokio::spawn(listen(self.clone(), instance, incoming)),
        ]
    }
}

async fn send(store: PgStore, instance: u64, mut outgoing: mpsc::Receiver<Signal>) {
    let mut batch = Vec::with_capacity(BATCH);
    while outgoing.recv_many(&mut batch, BATCH).await > 0 {
        let payloads: Vec<String> = batch.drain(..).map(|s| encode(instance, s)).collect();
        let sent = async {
            let client = store.client().await?;
            let statement = client
                .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .await?;
            client.execute(&statement, &[&CHANNEL, &payloads]).await?;
            Ok::<_, super::StoreError>(())
        };
        // A lost signal delays a message (sessions re-read); it is not worth a retry queue.
        if let Err(e) = store.timed(sent).await {
            log::debug!("signals to other instances dropped: {e}");
        }
    }
}

async fn listen(store: PgStore, instance: u64, incoming: impl Fn(Incoming) + Send + Sync) {
    loop {
        let config = (*store.config).clone();
        let outcome = match config.get_ssl_mode() {
            SslMode::Require => match tls() {
                Ok(tls) => listen_once(&config, tls, instance, &incoming).await,
                Err(e) => {
                    log::error!("signals from other instances: {e}");
                    return;
                }
            },
            _ => listen_once(&config, tokio_postgres::NoTls, instance, &incoming).await,
        };
        if let Err(e) = outcome {
            log::warn!("signals from other instances: {e}; listening again shortly");
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// One listening connection, until it is lost.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    instance: u64,
    incoming: &(impl Fn(Incoming) + Send + Sync),
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done?;
                listened = true;
                incoming(Incoming::Resync);
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some(signal) = decode(instance, n.payload()) {
                        incoming(Incoming::Signal(signal));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }
}

/// `<instance hex> q <user> <device> <id>`, `<instance> c <user> [<device>]`,
/// `<instance> o <user> <device> <at_ms>`, `<instance> r <user> <version>`.
fn encode(instance: u64, signal: Signal) -> String {
    match signal {
        Signal::Queued { device: d, id } => {
            format!("{instance:x} q {} {} {id}", d.user, d.device)
        }
        Signal::Close { user, device: None } => format!("{instance:x} c {user}"),
        Signal::Close {
            user,
            device: Some(device),
        } => format!("{instance:x} c {user} {device}"),
        Signal::Opened { device: d, at_ms } => {
            format!("{instance:x} o {} {} {at_ms}", d.user, d.device)
        }
        Signal::Revoked { user, version } => format!("{instance:x} r {user} {version}"),
    }
}

/// Another instance's signal; none for this instance's own or anything unreadable.
fn decode(instance: u64, payload: &str) -> Option<Signal> {
    let mut parts = payload.split(' ');
    let from = u64::from_str_radix(parts.next()?, 16).ok()?;
    if from == instance {
        return None;
    }
    let kind = parts.next()?;
    let user = parts.next()?.parse().ok()?;
    let device = parts.next().map(str::parse::<u32>);
    let arg = parts.next().map(str::parse::<u64>);
    if parts.next().is_some() {
        return None;
    }
    let at = |device| DeviceRef { user, device };
    match (kind, device, arg) {
        ("q", Some(Ok(d)), Some(Ok(id))) => Some(Signal::Queued { device: at(d), id }),
        ("c", None, None) => Some(Signal::Close { user, device: None }),
        ("c", Some(Ok(d)), None) => Some(Signal::Close {
            user,
            device: Some(d),
        }),
        ("o", Some(Ok(d)), Some(Ok(at_ms))) => Some(Signal::Opened {
            device: at(d),
            at_ms,
        }),
        // The version rides where a device id goes.
        ("r", Some(Ok(version)), None) => Some(Signal::Revoked { user, version }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_read_back_as_written_and_own_ones_are_ignored() {
        for signal in [
            Signal::Queued {
                device: DeviceRef { user: 7, device: 2 },
                id: 9,
            },
            Signal::Close {
                user: 7,
                device: None,
            },
            Signal::Close {
                user: 7,
                device: Some(3),
            },
            Signal::Opened {
                device: DeviceRef { user: 7, device: 1 },
                at_ms: 1_700_000_000_000,
            },
            Signal::Revoked {
                user: 7,
                version: u32::MAX,
            },
        ] {
            assert_eq!(decode(1, &encode(2, signal)), Some(signal));
            assert_eq!(decode(2, &encode(2, signal)), None);
        }
        for junk in [
            "",
            "zz q 1 2 3",
            "1 q x 1 2",
            "1 q 1 2",
            "1 c 1 x",
            "1 c 1 2 3",
            "1 x 1 2 3",
            "1 r 1",
            "1 r 1 2 3",
        ] {
            assert_eq!(decode(2, junk), None, "{junk:?}");
        }
    }
}
