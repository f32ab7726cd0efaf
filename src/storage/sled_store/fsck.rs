//! `signal-server fsck`: reads every record of every tree and reports what cannot be read or
//! decoded. sled's iterator repeats a read error forever, so a tree is read up to its first
//! unreadable page and reported from there; the other trees are still read.

use std::fmt::Write;

use serde::de::DeserializeOwned;

use super::linked::LinkedDevice;
use super::{decode, keys, SledStore};
use crate::models::{Device, Message, SignedPreKey, User};

/// Bad records reported one by one per tree; beyond this they are only counted.
const SHOWN: usize = 10;

/// What `fsck` found: one line per tree, and whether anything is damaged.
pub struct FsckReport {
    pub lines: Vec<String>,
    pub damaged: bool,
}

/// How a tree's records must look: key length, and a check of the value.
struct Shape {
    name: &'static str,
    key_len: Option<usize>,
    /// Whether keys may be shown (not for hashes of tokens).
    show_keys: bool,
    value_ok: fn(&[u8]) -> bool,
}

fn decodes<T: DeserializeOwned>(v: &[u8]) -> bool {
    decode::<T>(v).is_ok()
}

fn id_value(v: &[u8]) -> bool {
    v.len() == 8
}

impl SledStore {
    /// Reads every record of every tree (a full scan: for operators, never a request path).
    pub fn fsck(&self) -> FsckReport {
        let shape = |name, key_len, show_keys, value_ok| Shape {
            name,
            key_len,
            show_keys,
            value_ok,
        };
        let trees: [(&sled::Tree, Shape); 18] = [
            (&self.meta, shape(super::META, None, true, |_| true)),
            (
                &self.users,
                shape(super::USERS, Some(8), true, decodes::<User>),
            ),
            (
                &self.usernames,
                shape(super::USERNAMES, None, true, id_value),
            ),
            (&self.emails, shape(super::EMAILS, None, true, id_value)),
            (
                &self.devices,
                shape(super::DEVICES, Some(8), true, decodes::<Device>),
            ),
            (
                &self.linked_devices,
                shape(
                    super::LINKED_DEVICES,
                    Some(12),
                    true,
                    decodes::<LinkedDevice>,
                ),
            ),
            (
                &self.prekeys,
                shape(super::PREKEYS, Some(12), true, |v| v.len() == 33),
            ),
            (
                &self.kyber_prekeys,
                shape(
                    super::KYBER_PREKEYS,
                    Some(12),
                    true,
                    decodes::<SignedPreKey>,
                ),
            ),
            (
                &self.messages,
                shape(super::MESSAGES, Some(16), true, decodes::<Message>),
            ),
            (
                &self.message_index,
                shape(super::MESSAGE_INDEX, Some(8), true, |v| v.len() == 16),
            ),
            (
                &self.reset_tokens,
                shape(super::RESET_TOKENS, None, false, |v| v.len() == 20),
            ),
            (&self.invites, shape(super::INVITES, None, false, id_value)),
            (
                &self.idempotency,
                shape(
                    super::IDEMPOTENCY,
                    None,
                    false,
                    super::idempotency::is_record,
                ),
            ),
            (
                &self.idempotency_times,
                shape(super::IDEMPOTENCY_TIMES, None, false, |v| v.is_empty()),
            ),
            (
                &self.attachments.records,
                shape(super::ATTACHMENTS, Some(16), true, |v| v.len() == 48),
            ),
            (
                &self.attachments.owners,
                shape(super::ATTACHMENT_OWNERS, Some(24), true, |v| v.is_empty()),
            ),
            (
                &self.attachments.expiry,
                shape(super::ATTACHMENT_EXPIRY, Some(24), true, |v| v.is_empty()),
            ),
            (
                &self.attachments.usage,
                shape(super::ATTACHMENT_USAGE, Some(8), true, |v| v.len() == 12),
            ),
        ];
        let mut report = FsckReport {
            lines: Vec::new(),
            damaged: false,
        };
        for (tree, shape) in trees {
            let (line, damaged) = check_tree(tree, &shape);
            report.lines.push(line);
            report.damaged |= damaged;
        }
        report
    }
}

/// One tree: its line of the report, and whether it is damaged.
fn check_tree(tree: &sled::Tree, shape: &Shape) -> (String, bool) {
    let (mut ok, mut bad) = (0u64, Vec::new());
    let mut last_good: Option<sled::IVec> = None;
    for entry in tree.iter() {
        let (k, v) = match entry {
            Ok(kv) => kv,
            Err(e) => {
                let after = match &last_good {
                    Some(k) => format!("after key {}", show(shape, k)),
                    None => "at its start".into(),
                };
                let mut line = format!(
                    "{}\tDAMAGED: unreadable {after} ({e}); {ok} records read before it",
                    shape.name
                );
                list_bad(&mut line, shape, &bad);
                return (line, true);
            }
        };
        if shape.key_len.is_some_and(|n| n != k.len()) || !(shape.value_ok)(&v) {
            bad.push(k.clone());
        } else {
            ok += 1;
        }
        last_good = Some(k);
    }
    let records = if ok == 1 { "record" } else { "records" };
    if bad.is_empty() {
        return (format!("{}\tok, {ok} {records}", shape.name), false);
    }
    let mut line = format!("{}\tDAMAGED: {ok} {records} ok", shape.name);
    list_bad(&mut line, shape, &bad);
    (line, true)
}

fn list_bad(line: &mut String, shape: &Shape, bad: &[sled::IVec]) {
    if bad.is_empty() {
        return;
    }
    let shown: Vec<String> = bad.iter().take(SHOWN).map(|k| show(shape, k)).collect();
    let _ = write!(line, ", {} undecodable: {}", bad.len(), shown.join(" "));
    if bad.len() > SHOWN {
        line.push_str(" ...");
    }
}

/// A key as the operator can look it up: ids as numbers, names as text, hashes not at all.
fn show(shape: &Shape, key: &[u8]) -> String {
    if !shape.show_keys {
        return format!("<{} bytes>", key.len());
    }
    match shape.key_len {
        // An attachment's id, as in its path and its blob's name.
        Some(16) if shape.name == super::ATTACHMENTS => {
            crate::attachments::encode_id(&key.try_into().unwrap_or_default())
        }
        Some(8) => keys::decode_u64(key).map_or_else(|| hex(key), |id| id.to_string()),
        Some(_) => {
            let user = keys::decode_u64(key).unwrap_or_default();
            let rest = key.get(8..).map(hex).unwrap_or_default();
            format!("{user}/{rest}")
        }
        None => String::from_utf8(key.to_vec()).unwrap_or_else(|_| hex(key)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::backup::tests::linked_store;
    use super::*;

    fn line<'a>(report: &'a FsckReport, tree: &str) -> &'a str {
        let found = report
            .lines
            .iter()
            .find(|l| l.starts_with(&format!("{tree}\t")));
        found.map(String::as_str).unwrap_or_default()
    }

    #[tokio::test]
    async fn linked_devices_are_read_and_a_damaged_one_is_named() {
        let (_dir, s) = linked_store().await;
        let report = s.fsck();
        assert!(!report.damaged, "{:?}", report.lines);
        assert_eq!(
            line(&report, "linked_devices"),
            "linked_devices\tok, 2 records"
        );
        s.linked_devices
            .insert(keys::linked(1, 4), b"not a device".as_slice())
            .unwrap();
        let report = s.fsck();
        assert!(report.damaged);
        assert_eq!(
            line(&report, "linked_devices"),
            "linked_devices\tDAMAGED: 2 records ok, 1 undecodable: 1/00000004"
        );
    }

    #[tokio::test]
    async fn attachment_records_are_read_and_a_damaged_one_is_named_by_its_id() {
        let (_dir, s) = super::super::attachments::tests::store_with_uploads().await;
        let report = s.fsck();
        assert!(!report.damaged, "{:?}", report.lines);
        assert_eq!(line(&report, "attachments"), "attachments\tok, 3 records");
        assert_eq!(
            line(&report, "attachment_usage"),
            "attachment_usage\tok, 2 records"
        );
        s.attachments
            .records
            .insert([9u8; 16], b"short".as_slice())
            .unwrap();
        let report = s.fsck();
        assert!(report.damaged);
        let id = crate::attachments::encode_id(&[9; 16]);
        assert_eq!(
            line(&report, "attachments"),
            format!("attachments\tDAMAGED: 3 records ok, 1 undecodable: {id}")
        );
    }
}
