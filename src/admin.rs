//! Operator commands (`signal-server users list`, `backup`, ...). A running server listens on
//! `<data-dir>/admin.sock` (mode 0600, so only its own user and root reach it): the command line
//! sends one JSON request line and prints what comes back; the last line of every answer is a
//! status line. With no server running, the command takes the data-dir lock and runs in-process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::app::App;
use crate::config::{Command, Config, UsersCommand};
use crate::error::ApiError;

pub const SOCKET: &str = "admin.sock";

/// The last line of every answer on the admin socket.
#[derive(Serialize, Deserialize)]
struct Status {
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Runs `command` against `app`, writing its output lines to `out`.
pub async fn execute(app: &App, command: Command, out: &mut Vec<u8>) -> Result<(), String> {
    let w = |out: &mut Vec<u8>, line: String| {
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    };
    match command {
        Command::Users(UsersCommand::List) => {
            w(out, "id\tusername\temail\tdevice\tqueued".into());
            for user in app.storage.users() {
                let user = user.map_err(|e| format!("{e:?}"))?;
                let device = app.storage.device(user.id).map_err(|e| format!("{e:?}"))?;
                let queued = app
                    .storage
                    .queue_len(user.id)
                    .map_err(|e| format!("{e:?}"))?;
                let address = device.map_or_else(|| "-".to_string(), |d| d.address);
                w(
                    out,
                    format!(
                        "{}\t{}\t{}\t{address}\t{queued}",
                        user.id, user.username, user.email
                    ),
                );
            }
        }
        Command::Users(UsersCommand::Delete { username }) => {
            let user = find(app, &username)?;
            app.storage
                .delete_user(user.id)
                .await
                .map_err(|e| format!("{e:?}"))?;
            app.hub.close(user.id);
            w(
                out,
                format!("deleted user {} (id {})", user.username, user.id),
            );
        }
        Command::Users(UsersCommand::SetPassword { username, password }) => {
            let user = find(app, &username)?;
            crate::handlers::users::check_password(
                "password",
                &password,
                &user.username,
                &user.email,
            )
            .map_err(api_text)?;
            let hash = app.hasher.hash(password).await;
            app.storage
                .set_password(user.id, hash)
                .await
                .map_err(|e| format!("{e:?}"))?;
            w(
                out,
                format!(
                    "password of {} set; their older tokens are revoked",
                    user.username
                ),
            );
        }
        Command::Users(UsersCommand::ResetToken { username }) => {
            let user = find(app, &username)?;
            let (uid, token) = crate::handlers::users::issue_reset_token(app, &user)
                .await
                .map_err(api_text)?;
            w(out, format!("uid: {uid}\ntoken: {token}\n(POST /auth/password/reset/confirm with uid, token, new_password)"));
        }
        Command::Invites { count } => {
            for _ in 0..count.clamp(1, 1000) {
                let token = crate::crypto::b64::encode(&rand::random::<[u8; 18]>())
                    .replace(['+', '/', '='], "");
                app.storage
                    .create_invite(&Sha256::digest(token.as_bytes()), crate::auth::now_secs())
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                w(out, token);
            }
        }
        Command::Stats => {
            let t = app.storage.totals().map_err(|e| format!("{e:?}"))?;
            w(out, format!("users\t{}\ndevices\t{}\nqueued_messages\t{}\nprekeys\t{}\nkyber_prekeys\t{}\ninvites\t{}\nwebsocket_connections\t{}",
                t.users, t.devices, t.queued_messages, t.prekeys, t.kyber_prekeys, t.invites, app.hub.connections()));
        }
        Command::Backup { .. } => {
            app.storage
                .backup(out)
                .await
                .map_err(|e| format!("{e:?}"))?;
        }
        Command::Restore { .. } => return Err("restore runs only with the server stopped".into()),
    }
    Ok(())
}

fn find(app: &App, username: &str) -> Result<crate::models::User, String> {
    app.storage
        .user_by_name(username)
        .map_err(|e| format!("{e:?}"))?
        .ok_or_else(|| format!("no user named {username}"))
}

fn api_text(e: ApiError) -> String {
    match e {
        ApiError::InvalidData(errors) => serde_json::to_string(&errors).unwrap_or_default(),
        other => other.code().to_string(),
    }
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
                Err(e) => Err(format!("bad admin request: {e}")),
            };
            let status = match result {
                Ok(()) => Status {
                    status: "ok".into(),
                    error: None,
                },
                Err(e) => Status {
                    status: "error".into(),
                    error: Some(e),
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
        Command::Invites { .. } => "invites",
        Command::Stats => "stats",
        Command::Backup { .. } => "backup",
        Command::Restore { .. } => "restore",
    }
}

/// The command line side: through the socket of a running server, or in-process.
pub async fn run_cli(config: Config, mut command: Command) -> Result<(), String> {
    if let Command::Users(UsersCommand::SetPassword { password, .. }) = &mut command {
        *password = read_password()?;
    }
    let socket = config.data_dir.join(SOCKET);
    let output: Vec<u8> = match (&command, std::os::unix::net::UnixStream::connect(&socket)) {
        (Command::Restore { .. }, Ok(_)) => {
            return Err("a server is running on this data dir; stop it before a restore".into())
        }
        (_, Ok(stream)) => through_socket(stream, &command)?,
        (_, Err(_)) => in_process(config, &command).await?,
    };
    match &command {
        Command::Backup { file } => write_output(file, &output),
        _ => std::io::stdout()
            .write_all(&output)
            .map_err(|e| e.to_string()),
    }
}

fn through_socket(
    mut stream: std::os::unix::net::UnixStream,
    command: &Command,
) -> Result<Vec<u8>, String> {
    let request = serde_json::to_string(command).map_err(|e| e.to_string())?;
    writeln!(stream, "{request}").map_err(|e| format!("admin socket: {e}"))?;
    let mut lines: Vec<String> = BufReader::new(stream)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("admin socket: {e}"))?;
    let status: Status = lines
        .pop()
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or("the server closed the admin socket early")?;
    if status.status != "ok" {
        return Err(status.error.unwrap_or_default());
    }
    Ok(lines
        .into_iter()
        .flat_map(|l| (l + "\n").into_bytes())
        .collect())
}

async fn in_process(config: Config, command: &Command) -> Result<Vec<u8>, String> {
    let _lock = crate::server::lock_data_dir(&config.data_dir)
        .map_err(|e| format!("{e} (and its admin socket does not answer)"))?;
    if let Command::Restore { file } = command {
        return restore(&config, file).await;
    }
    let app = App::open(config)?;
    let mut out = Vec::new();
    execute(&app, command.clone(), &mut out).await?;
    app.storage.flush().map_err(|e| format!("{e:?}"))?;
    Ok(out)
}

/// Restores a backup into the stopped data dir (whose lock the caller holds), all or nothing,
/// with the limits of the server's flags. Nothing else of the data dir is written: the server
/// creates its JWT secret on first start.
async fn restore(config: &Config, file: &Path) -> Result<Vec<u8>, String> {
    let mut input = open_input(file)?;
    let limits = crate::storage::RestoreLimits {
        max_message_bytes: config.max_message_bytes,
        max_prekeys: config.max_prekeys,
        max_queued_messages: config.max_queued_messages,
    };
    let options = crate::storage::StorageOptions {
        cache_capacity: config.cache_mb.saturating_mul(1 << 20),
    };
    let db = config.data_dir.join("db");
    let sum = crate::storage::restore_dir(&db, &mut input, &limits, &options)
        .await
        .map_err(|e| match e {
            crate::storage::StoreError::Corrupt(why) => {
                format!("restore refused, the data dir is unchanged: {why}")
            }
            other => format!("restore failed, the data dir is unchanged: {other:?}"),
        })?;
    let sum = serde_json::to_string(&sum).unwrap_or_default();
    Ok(format!("restored {sum}\n").into_bytes())
}

fn read_password() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn open_input(file: &Path) -> Result<Box<dyn BufRead + Send>, String> {
    if file == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(Box::new(BufReader::new(f)))
}

/// Writes a backup atomically: a temp file beside it, synced, then renamed.
fn write_output(file: &Path, data: &[u8]) -> Result<(), String> {
    if file == Path::new("-") {
        return std::io::stdout().write_all(data).map_err(|e| e.to_string());
    }
    let tmp = file.with_extension("partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    // A backup holds password hashes and tokens' hashes: readable by its owner only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("backup written to {}", file.display());
    Ok(())
}
