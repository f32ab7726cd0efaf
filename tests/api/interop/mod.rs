//! Interop: real libsignal clients (`libsignal-protocol-syft`) talking through the real
//! `signal-server` binary. Only with `--features interop` (libsignal is AGPL and needs `protoc`):
//!
//! ```sh
//! cargo test --features interop --test api interop::
//! ```
//!
//! Every test starts the built binary on a temp data dir (`crate::helpers::Binary`; on PostgreSQL
//! when `SIGNAL_SERVER_TEST_DATABASE_URL` is set, like the rest of the suite) and drives it
//! with the client in `examples/support/libsignal_client.rs` (shared with `examples/chat.rs`,
//! `examples/linked.rs` and `examples/attachment.rs`):
//! - `one_device`: device creation with libsignal keys, bundle fetch, PQXDH, Double Ratchet
//!   messages over REST and the live WebSocket, one-time prekeys consumed, and the last-resort
//!   Kyber key once they run out;
//! - `linked`: accounts with several devices: a linked device, a session with each device of a
//!   peer, one send for all of them, sync copies to the sender's own account, and the 409/410 a
//!   sender gets (and recovers from) when a device is unlinked or reinstalled;
//! - `attachment`: an encrypted attachment (sealed as Signal's apps seal them, uploaded with
//!   TUS and resumed after an interruption) whose pointer travels in a Double Ratchet message
//!   and opens to the same bytes; the cipher's own tests run here too (`client::attachments`).

mod attachment;
#[path = "../../../examples/support/libsignal_client.rs"]
mod client;
mod linked;
mod one_device;

use std::time::Duration;

use crate::helpers::{fresh_data_dir, Binary, PASSWORD};
use client::{Api, Client, Received};
use libsignal_protocol_syft::CiphertextMessageType;

/// The built binary on a fresh data dir (and, when the suite runs on PostgreSQL, a fresh
/// database), which lives as long as the returned guard.
async fn start_server() -> (tempfile::TempDir, Binary, Api) {
    let dir = fresh_data_dir().await;
    let server = Binary::start(dir.path(), &[]).await;
    let api = Api::new(&server.base);
    (dir, server, api)
}

/// Unwraps a client result, naming what failed (the client's errors are boxed).
trait Must<T> {
    fn must(self, what: &str) -> T;
}

impl<T> Must<T> for client::Result<T> {
    fn must(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

async fn user(api: &Api, name: &str, ec: u32, kyber: u32, last_resort: Option<u32>) -> Client {
    let mut c = Client::register(api, name, PASSWORD).await.must("register");
    c.create_device(1..=ec, 1..=kyber, last_resort)
        .await
        .must("create device");
    c
}

/// Checks a decrypted message.
fn same(got: &Received, sender: &Client, kind: CiphertextMessageType, text: &str) {
    assert_eq!(got.text, text, "plaintext");
    assert_eq!(got.sender, sender.username, "sender");
    assert_eq!(got.kind, kind, "ciphertext type of {text:?}");
}

/// Waits (bounded) until `c`'s queue is empty: acks get no reply, so the server deletes the
/// acknowledged messages a moment later.
async fn drained(c: &Client) {
    let mut left = usize::MAX;
    for _ in 0..250 {
        left = c.queued().await.must("queue").len();
        if left == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{}'s queue still holds {left} messages after the acks",
        c.username
    );
}
