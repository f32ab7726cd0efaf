//! Operator commands (`signal-server users list`, `backup`, ...). A running server listens on
//! `<data-dir>/admin.sock` (mode 0600, so only its own user and root reach it): the command line
//! sends one JSON request line and prints what comes back; the last line of every answer is a
//! status line. With no server running, the command takes the data-dir lock and runs in-process.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::app::App;
use crate::config::{Command, UsersCommand};
use crate::failure::Result;

mod cli;

pub use cli::run_cli;

pub const SOCKET: &str = "admin.sock";

/// The last line of every answer on the admin socket.
#[derive(Serialize, Deserialize)]
struct Status {
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `command` against `app`, writing its output lines to `out`.
pub async fn execute(app: &App, command: Command, out: &mut Vec<u8>) -> Result<()> {
    let w = |out: &mut Vec<u8>, line: String| {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    };
    match command {
        Command::Users(UsersCommand::List) => {
            // `device` lists every device's address (the primary first); `queued` is their sum.
            w(out, "id\tusername\temail\tdevice\tqueued".into());
            let mut after = 0;
            loop {
                let page = app.storage.users_page(after, 256).await?;
                let Some(last) = page.last() else { break };
                after = last.id;
                for user in page {
                    let devices = app.storage.devices(user.id).await?;
                    let mut queued = 0u64;
                    for d in &devices {
                        queued += u64::from(app.storage.queue_len(d.of(user.id)).await?);
                    }
                    let addresses: Vec<&str> = devices.iter().map(|d| d.address.as_str()).collect();
                    let address = match addresses.is_empty() {
                        true => "-".to_string(),
                        false => addresses.join(","),
                    };
                    w(
                        out,
                        format!(
                            "{}\t{}\t{}\t{address}\t{queued}",
                            user.id,
                            user.username,
                            crate::validate::printable(&user.email)
                        ),
                    );
                }
            }
        }
        Command::Users(UsersCommand::Delete { username }) => {
            let user = find(app, &username).await?;
            crate::handlers::users::delete_account(app, user.id).await?;
            w(
                out,
                format!("deleted user {} (id {})", user.username, user.id),
            );
        }
        Command::Users(UsersCommand::SetPassword { username, password }) => {
            let user = find(app, &username).await?;
            crate::handlers::users::check_password(
                "password",
                &password,
                &user.username,
                &user.email,
            )?;
            let hash = app.hasher.hash(password).await?;
            crate::handlers::users::set_password(app.clone(), user.id, hash).await?;
            w(
                out,
                format!(
                    "password of {} set; their older tokens are revoked",
                    user.username
                ),
            );
        }
        Command::Users(UsersCommand::Create {
            username,
            email,
            password,
        }) => {
            let user = create_user(app, &username, &email, password).await?;
            w(
                out,
                format!("created user {} (id {})", user.username, user.id),
            );
        }
        Command::Users(UsersCommand::ResetToken { username }) => {
            let user = find(app, &username).await?;
            let (uid, token) = crate::handlers::users::issue_reset_token(app, &user).await?;
            w(out, format!("uid: {uid}\ntoken: {token}\n(POST /auth/password/reset/confirm with uid, token, new_password)"));
        }
        Command::Invites { count } => {
            for _ in 0..count.clamp(1, 1000) {
                let token = crate::crypto::b64::encode(&rand::random::<[u8; 18]>())
                    .replace(['+', '/', '='], "");
                app.storage
                    .create_invite(&Sha256::digest(token.as_bytes()), crate::auth::now_secs())
                    .await?;
                w(out, token);
            }
        }
        Command::Stats => {
            // Counted once per process (at once in a running server), then kept by the verbs.
            app.storage.count_totals().await?;
            let t = app.storage.totals().await?;
            w(out, format!("users\t{}\ndevices\t{}\nqueued_messages\t{}\nprekeys\t{}\nkyber_prekeys\t{}\ninvites\t{}\nwebsocket_connections\t{}",
                t.users, t.devices, t.queued_messages, t.prekeys, t.kyber_prekeys, t.invites, app.hub.connections()));
            // Named as in /metrics; a scan on sled, as there.
            let a = app.storage.attachment_totals().await?;
            w(
                out,
                format!(
                    "attachments\t{}\nattachment_uploads_in_progress\t{}\nattachment_bytes\t{}",
                    a.complete, a.unfinished, a.bytes
                ),
            );
        }
        Command::Backup { .. } => {
            app.storage.backup(out).await?;
        }
        Command::Restore { .. } => return Err("restore runs only with the server stopped".into()),
        Command::Fsck => fsck(app, out).await?,
    }
    Ok(())
}

/// Reads every record, and checks attachment records and blobs against each other; the report
/// goes to `out` when all is well, and is the error otherwise (so that the command exits
/// non-zero and prints it).
async fn fsck(app: &App, out: &mut Vec<u8>) -> Result<()> {
    let report = app.storage.fsck().await?;
    let mut lines = report.lines;
    // Attachments are walked through the store's verbs: a damaged database may stop the walk.
    let checked = crate::attachments::fsck::check(app).await;
    let what = match (report.damaged, &checked) {
        (true, _) => Some("the database is damaged"),
        (false, Err(_)) => Some("attachments could not be checked"),
        (false, Ok(c)) if c.damaged => Some("attachments are missing bytes their records promise"),
        (false, Ok(_)) => None,
    };
    match checked {
        Ok(c) => lines.extend(c.lines),
        Err(e) => lines.push(format!("attachments\tnot checked: {e}")),
    }
    let text = lines.join("\n");
    let Some(what) = what else {
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
        return Ok(());
    };
    Err(format!("{what}:\n{text}\n(see \"When things go wrong\" in docs/SELF_HOSTING.md)").into())
}

async fn find(app: &App, username: &str) -> Result<crate::models::User> {
    app.storage
        .user_by_name(username)
        .await?
        .ok_or_else(|| format!("no user named {username}").into())
}

/// An account made by the operator: the checks of `POST /auth/users` (username rules, email,
/// password strength, unique name and email), whatever `--registration` says.
async fn create_user(
    app: &App,
    username: &str,
    email: &str,
    password: String,
) -> Result<crate::models::User> {
    let value = serde_json::json!({"username": username, "email": email, "password": password});
    let req = crate::requests::Register::parse(&value)?;
    crate::handlers::users::check_password("password", req.password, req.username, req.email)?;
    let hash = app.hasher.hash(password.clone()).await?;
    let user = app
        .storage
        .create_user(req.username, req.email, hash, None)
        .await?;
    log::info!("user {} created by the operator", user.id);
    Ok(user)
}

/// Serves the admin socket of a running server until the task is dropped.
pub async fn serve(app: App, path: PathBuf) {
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            log::warn!("admin socket {} not available: {e}", path.display());
            return;
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    while let Ok((stream, _)) = listener.accept().await {
        let app = app.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if tokio::io::BufReader::new(read)
                .read_line(&mut line)
                .await
                .is_err()
            {
                return;
            }
            let mut out = Vec::new();
            let result = match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    log::info!("admin command: {}", command_name(&command));
                    execute(&app, command, &mut out).await
                }
                Err(e) => Err(format!("bad admin request: {e}").into()),
            };
            let status = match result {
                Ok(()) => Status {
                    status: "ok".into(),
                    error: None,
                },
                Err(e) => Status {
                    status: "error".into(),
                    error: Some(e.to_string()),
                },
            };
            out.extend_from_slice(
                serde_json::to_string(&status)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Users(UsersCommand::List) => "users list",
        Command::Users(UsersCommand::Delete { .. }) => "users delete",
        Command::Users(UsersCommand::SetPassword { .. }) => "users set-password",
        Command::Users(UsersCommand::ResetToken { .. }) => "users reset-token",
        Command::Users(UsersCommand::Create { .. }) => "users create",
        Command::Invites { .. } => "invites",
        Command::Stats => "stats",
        Command::Backup { .. } => "backup",
        Command::Restore { .. } => "restore",
        Command::Fsck => "fsck",
    }
}
