//! Attachments between two clients, as Signal's apps exchange them: the sender seals the file
//! (`attachment_cipher.rs`), uploads the blob with the typed client's resumable TUS upload and
//! sends the pointer (id, key, digest, size) inside a Double Ratchet message; the receiver
//! decrypts the message, downloads the blob and opens it. The server sees a blob and a message,
//! both ciphertext, and never a key.

#[path = "attachment_cipher.rs"]
pub mod cipher;

use serde_json::Value;

use super::{fail, Client, Received, Result};
use cipher::{Pointer, Sealed};

/// What went to the peer: the pointer (kept by the sender, e.g. to delete the blob later) and
/// the message as the server stored it.
pub struct SentAttachment {
    pub pointer: Pointer,
    pub blob_len: usize,
    pub stored: Value,
}

impl Client {
    /// Uploads `sealed.blob` (`chunk_size` bytes per PATCH) and answers the attachment id.
    pub async fn upload_blob(&self, sealed: &Sealed, chunk_size: usize) -> Result<String> {
        Ok(self.http().upload(&sealed.blob, chunk_size).await?)
    }

    /// Sends the pointer to an uploaded attachment to `peer` (a session must exist) as the
    /// JSON text of a message.
    pub async fn send_pointer(&mut self, peer: &str, pointer: &Pointer) -> Result<Value> {
        let text = serde_json::to_string(pointer)?;
        Ok(self.send(peer, &text).await?.1)
    }

    /// Seals `plaintext`, uploads it and sends the pointer to `peer`.
    pub async fn send_attachment(
        &mut self,
        peer: &str,
        plaintext: &[u8],
        chunk_size: usize,
    ) -> Result<SentAttachment> {
        let sealed = cipher::seal(plaintext);
        let id = self.upload_blob(&sealed, chunk_size).await?;
        let pointer = sealed.pointer(&id);
        let stored = self.send_pointer(peer, &pointer).await?;
        Ok(SentAttachment {
            pointer,
            blob_len: sealed.blob.len(),
            stored,
        })
    }

    /// Decrypts a message carrying a pointer: the message and the pointer.
    pub async fn receive_pointer(&mut self, message: &Value) -> Result<(Received, Pointer)> {
        let received = self.decrypt(message).await?;
        let pointer = serde_json::from_str(&received.text)
            .map_err(|e| format!("message {} is not an attachment pointer: {e}", received.id))?;
        Ok((received, pointer))
    }

    /// Downloads the blob `pointer` names, checks its digest and MAC and decrypts it.
    pub async fn fetch_attachment(&self, pointer: &Pointer) -> Result<Vec<u8>> {
        let blob = self.http().download(&pointer.id).await?;
        match cipher::open(&blob, pointer) {
            Ok(plaintext) => Ok(plaintext),
            Err(e) => fail(format!("attachment {}: {e}", pointer.id)),
        }
    }

    /// `receive_pointer`, then `fetch_attachment`.
    pub async fn receive_attachment(&mut self, message: &Value) -> Result<(Received, Vec<u8>)> {
        let (received, pointer) = self.receive_pointer(message).await?;
        let plaintext = self.fetch_attachment(&pointer).await?;
        Ok((received, plaintext))
    }
}
