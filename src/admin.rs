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
                let user = user.map_err(|e| e.to_string())?;
                let device = app.storage.device(user.id).map_err(|e| e.to_string())?;
                let queued = app.storage.queue_len(user.id).map_err(|e| e.to_string())?;
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
                .map_err(|e| e.to_string())?;
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
            let hash = app.hasher.hash(password).await.map_err(api_text)?;
            app.storage
                .set_password(user.id, hash)
                .await
                .map_err(|e| e.to_string())?;
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
                    .map_err(|e| e.to_string())?;
                w(out, token);
            }
        }
        Command::Stats => {
            // Counted once per process (at once in a running server), then kept by the verbs.
            app.storage
                .count_totals()
                .await
                .map_err(|e| e.to_string())?;
            let t = app.storage.totals().map_err(|e| e.to_string())?;
            w(out, format!("users\t{}\ndevices\t{}\nqueued_messages\t{}\nprekeys\t{}\nkyber_prekeys\t{}\ninvites\t{}\nwebsocket_connections\t{}",
                t.users, t.devices, t.queued_messages, t.prekeys, t.kyber_prekeys, t.invites, app.hub.connections()));
        }
        Command::Backup { .. } => {
            app.storage.backup(out).await.map_err(|e| e.to_string())?;
        }
        Command::Restore { .. } => return Err("restore runs only with the server stopped".into()),
        Command::Fsck => fsck(app, out).await?,
    }
    Ok(())
}

/// Reads every record; the report goes to `out` when all is well, and is the error otherwise
/// (so that the command exits non-zero and prints it).
async fn fsck(app: &App, out: &mut Vec<u8>) -> Result<(), String> {
    let storage = app.storage.clone();
    let report = tokio::task::spawn_blocking(move || storage.fsck())
        .await
        .map_err(|e| format!("fsck stopped: {e}"))?;
    let text = report.lines.join("\n");
    if report.damaged {
        return Err(format!(
            "the database is damaged:\n{text}\n(see \"When things go wrong\" in docs/SELF_HOSTING.md)"
        ));
    }
    out.extend_from_slice(text.as_bytes());
    out.push(b'\n');
    Ok(())
}

fn find(app: &App, username: &str) -> Result<crate::models::User, String> {
    app.storage
        .user_by_name(username)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no user named {username}"))
}

/// An account made by the operator: the checks of `POST /auth/users` (username rules, email,
/// password strength, unique name and email), whatever `--registration` says.
async fn create_user(
    app: &App,
    username: &str,
    email: &str,
    password: String,
) -> Result<crate::models::User, String> {
    let value = serde_json::json!({"username": username, "email": email, "password": password});
    let req = crate::requests::Register::parse(&value).map_err(api_text)?;
    crate::handlers::users::check_password("password", req.password, req.username, req.email)
        .map_err(api_text)?;
    let hash = app.hasher.hash(password.clone()).await.map_err(api_text)?;
    let user = app
        .storage
        .create_user(req.username, req.email, hash, None)
        .await
        .map_err(|e| e.to_string())?;
    log::info!("user {} created by the operator", user.id);
    Ok(user)
}

/// An API error as a sentence: the per-field messages of `invalid_data`, else the message.
fn api_text(e: ApiError) -> String {
    match e {
        ApiError::InvalidData(errors) => {
            let mut parts = Vec::new();
            flatten(&errors, "", &mut parts);
            parts.join(" ")
        }
        other => other.message().to_string(),
    }
}

fn flatten(errors: &crate::error::FieldErrors, prefix: &str, parts: &mut Vec<String>) {
    for (field, error) in errors {
        match error {
            crate::error::FieldError::Messages(texts) => {
                parts.push(format!("{prefix}{field}: {}", texts.join(" ")))
            }
            crate::error::FieldError::Nested(inner) => {
                flatten(inner, &format!("{prefix}{field}."), parts)
            }
        }
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
        Command::Users(UsersCommand::Create { .. }) => "users create",
        Command::Invites { .. } => "invites",
        Command::Stats => "stats",
        Command::Backup { .. } => "backup",
        Command::Restore { .. } => "restore",
        Command::Fsck => "fsck",
    }
}

/// The command line side: through the socket of a running server, or in-process.
pub async fn run_cli(config: Config, mut command: Command) -> Result<(), String> {
    prepare_files(&mut command)?;
    let generated = match &mut command {
        Command::Users(UsersCommand::SetPassword { password, .. }) => {
            *password = read_password()?;
            false
        }
        Command::Users(UsersCommand::Create { password, .. }) => {
            *password = read_new_password()?;
            let generate = password.is_empty();
            if generate {
                *password = generate_password();
            }
            generate
        }
        _ => false,
    };
    let socket = config.data_dir.join(SOCKET);
    let output: Vec<u8> = match (&command, std::os::unix::net::UnixStream::connect(&socket)) {
        (Command::Restore { .. }, Ok(_)) => {
            return Err("a server is running on this data dir; stop it before a restore".into())
        }
        (_, Ok(stream)) => through_socket(stream, &command)?,
        (_, Err(_)) => in_process(config, &command).await?,
    };
    match &command {
        Command::Backup { file, .. } => write_output(file, &output),
        Command::Users(UsersCommand::Create { password, .. }) if generated => {
            let shown = format!("password: {password}\n(shown only this once)\n");
            std::io::stdout()
                .write_all(&[output, shown.into_bytes()].concat())
                .map_err(|e| e.to_string())
        }
        _ => std::io::stdout()
            .write_all(&output)
            .map_err(|e| e.to_string()),
    }
}

/// Files named on the command line are taken relative to where the operator stands (an
/// offline command may enter the data dir later), and a backup never replaces a file unless
/// told to: checked before any work, so a refused command changes nothing.
fn prepare_files(command: &mut Command) -> Result<(), String> {
    let file = match command {
        Command::Backup { file, force } => {
            if !*force && file != Path::new("-") && file.exists() {
                return Err(format!(
                    "{} exists already; choose another file name, or add --force to replace it",
                    file.display()
                ));
            }
            file
        }
        Command::Restore { file } => file,
        _ => return Ok(()),
    };
    if file != Path::new("-") {
        *file = std::path::absolute(&*file).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
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

async fn in_process(mut config: Config, command: &Command) -> Result<Vec<u8>, String> {
    // Only the server creates a database; restore is the one command that fills a new one.
    if !matches!(command, Command::Restore { .. }) {
        crate::datadir::require_database(&config.data_dir)?;
    }
    if config.data_dir.exists() {
        config.data_dir = crate::datadir::become_owner(&config.data_dir)?;
    }
    let _lock = crate::server::lock_data_dir(&config.data_dir)
        .map_err(|e| format!("{e} (and its admin socket does not answer)"))?;
    if let Command::Restore { file } = command {
        return restore(&config, file).await;
    }
    let app = App::open(config)?;
    let mut out = Vec::new();
    execute(&app, command.clone(), &mut out).await?;
    app.storage.flush().map_err(|e| e.to_string())?;
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
        flush_timeout: std::time::Duration::from_secs(config.flush_timeout),
    };
    let db = config.data_dir.join("db");
    let sum = crate::storage::restore_dir(&db, &mut input, &limits, &options)
        .await
        .map_err(|e| match e {
            crate::storage::StoreError::Corrupt(why) => {
                format!("restore refused, the data dir is unchanged: {why}")
            }
            other => format!("restore failed, the data dir is unchanged: {other}"),
        })?;
    let sum = serde_json::to_string(&sum).unwrap_or_default();
    Ok(format!("restored {sum}\n").into_bytes())
}

/// The password of a new account: a line on standard input, or empty (generate one) when
/// standard input is a terminal or has nothing.
fn read_new_password() -> Result<String, String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return Ok(String::new());
    }
    read_password()
}

/// 144 random bits: passes every strength rule and is typed once, then changed by its user.
fn generate_password() -> String {
    crate::crypto::b64::encode(&rand::random::<[u8; 18]>()).replace(['+', '/', '='], "x")
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

fn unwritable(path: &Path, e: std::io::Error) -> String {
    format!(
        "cannot write {}: {e}; choose a directory this user can write to, or write to standard \
         output (`backup - > FILE`)",
        path.display()
    )
}

/// Writes a backup atomically: a temp file beside it, synced, then renamed.
fn write_output(file: &Path, data: &[u8]) -> Result<(), String> {
    if file == Path::new("-") {
        return std::io::stdout().write_all(data).map_err(|e| e.to_string());
    }
    let tmp = file.with_extension("partial");
    // A leftover temp file would keep its old owner and mode: start from a new one.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(unwritable(&tmp, e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    // A backup holds password hashes and tokens' hashes: readable by its owner only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&tmp).map_err(|e| unwritable(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{}: {e}", file.display()))?;
    eprintln!("backup written to {}", file.display());
    Ok(())
}
