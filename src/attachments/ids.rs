//! Attachment ids: 16 random bytes, shown as base64url without padding (22 characters).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::storage::attachments::AttachmentId;

/// `id` as it appears in paths: base64url without padding (22 characters).
pub fn encode_id(id: &AttachmentId) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

/// The id of a path segment, if it is one (exactly 22 characters of base64url).
pub fn parse_id(text: &str) -> Option<AttachmentId> {
    if text.len() != 22 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    // 22 characters carry 132 bits: the last 4 must be zero, or two texts would name one id.
    (encode_id(&bytes.clone().try_into().ok()?) == text)
        .then(|| bytes.try_into().ok())
        .flatten()
}

/// A fresh id: 16 random bytes.
pub fn new_id() -> AttachmentId {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_22_characters_and_read_back_only_in_their_one_spelling() {
        let id = new_id();
        let text = encode_id(&id);
        assert_eq!(text.len(), 22);
        assert_eq!(parse_id(&text), Some(id));
        assert_eq!(parse_id(&text[..21]), None);
        assert_eq!(parse_id("AAAAAAAAAAAAAAAAAAAAAA"), Some([0; 16]));
        // The same 128 bits with a nonzero tail: another spelling, refused.
        assert_eq!(parse_id("AAAAAAAAAAAAAAAAAAAAAB"), None);
        assert_eq!(parse_id("AAAAAAAAAAAAAAAAAAAAA+"), None);
    }
}
