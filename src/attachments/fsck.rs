//! `signal-server fsck`, the attachments' part: every record whose bytes the blob store should
//! hold (an offset above 0) has its blob, at least as long as the offset, and every blob has a
//! record. It walks every account's uploads and lists the blob store: the operator command
//! runs it, never a request.
//!
//! A record is written before its blob and removed before it, so on a running server the blobs
//! are listed first (a blob that appears later has its record already), and a record found
//! without its blob is read again (it may have been deleted meanwhile, its blob after it).

use std::fmt::Write;

use super::encode_id;
use crate::app::App;
use crate::storage::attachments::AttachmentId;

/// Ids reported one by one per kind of problem; beyond this they are only counted.
const SHOWN: usize = 10;

/// The report's lines, and whether a record lacks bytes (downloads of it fail).
pub struct Checked {
    pub lines: Vec<String>,
    pub damaged: bool,
}

/// What the walk of the records found.
#[derive(Default)]
struct Records {
    ok: u64,
    without_blob: Vec<AttachmentId>,
    /// (id, the blob's length, the record's offset)
    short: Vec<(AttachmentId, u64, u64)>,
}

/// Checks the records against the blob store and the blob store against the records.
pub async fn check(app: &App) -> Result<Checked, String> {
    let listed = app.blobs.ids().await.map_err(|e| e.to_string())?;
    let records = walk(app).await?;
    let mut leftovers = Vec::new();
    for id in &listed {
        if app
            .storage
            .upload(id)
            .await
            .map_err(|e| e.to_string())?
            .is_none()
        {
            leftovers.push(*id);
        }
    }
    let damaged = !records.without_blob.is_empty() || !records.short.is_empty();
    Ok(Checked {
        lines: vec![records_line(&records), blobs_line(listed.len(), &leftovers)],
        damaged,
    })
}

/// Every account's uploads, each checked against its blob.
async fn walk(app: &App) -> Result<Records, String> {
    let mut found = Records::default();
    let mut after = 0;
    loop {
        let page = app
            .storage
            .users_page(after, 256)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = last.id;
        for user in &page {
            let ids = app.storage.uploads_of(user.id).await;
            for id in ids.map_err(|e| e.to_string())? {
                check_one(app, &id, &mut found).await?;
            }
        }
    }
    Ok(found)
}

async fn check_one(app: &App, id: &AttachmentId, found: &mut Records) -> Result<(), String> {
    let upload = || async { app.storage.upload(id).await.map_err(|e| e.to_string()) };
    let blob = || async { app.blobs.len(id).await.map_err(|e| e.to_string()) };
    let Some(record) = upload().await? else {
        return Ok(());
    };
    match blob().await? {
        _ if record.offset == 0 => found.ok += 1,
        Some(len) if len >= record.offset => found.ok += 1,
        Some(len) => found.short.push((*id, len, record.offset)),
        // Deleted meanwhile (the record first, then its blob)?
        None => match upload().await? {
            Some(again) if again.offset > 0 && blob().await?.is_none() => {
                found.without_blob.push(*id)
            }
            Some(_) => found.ok += 1,
            None => {}
        },
    }
    Ok(())
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn records_line(r: &Records) -> String {
    let ok = plural(r.ok, "record", "records");
    if r.without_blob.is_empty() && r.short.is_empty() {
        return format!("attachment records\tok, {ok}");
    }
    let mut line = format!("attachment records\tDAMAGED: {ok} ok");
    if !r.without_blob.is_empty() {
        let ids: Vec<String> = r.without_blob.iter().map(encode_id).collect();
        let _ = write!(line, ", {} without their blob: {}", ids.len(), shown(&ids));
    }
    if !r.short.is_empty() {
        let ids: Vec<String> = r
            .short
            .iter()
            .map(|(id, len, offset)| format!("{} ({len} of {offset} bytes)", encode_id(id)))
            .collect();
        let _ = write!(
            line,
            ", {} with a blob shorter than their offset: {}",
            ids.len(),
            shown(&ids)
        );
    }
    line
}

fn blobs_line(listed: usize, leftovers: &[AttachmentId]) -> String {
    let blobs = plural(listed as u64, "blob", "blobs");
    if leftovers.is_empty() {
        return format!("attachment blobs\tok, {blobs}");
    }
    let ids: Vec<String> = leftovers.iter().map(encode_id).collect();
    format!(
        "attachment blobs\t{blobs}, {} without a record (left over; the hourly sweep removes \
         them): {}",
        ids.len(),
        shown(&ids)
    )
}

/// The first `SHOWN` of `items`, and `...` if there are more.
fn shown(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    if items.len() > SHOWN {
        text.push_str(" ...");
    }
    text
}
