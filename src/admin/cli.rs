//! The command line side of the operator commands: through the admin socket of a running
//! server, or in-process on a stopped one (restore always in-process); reading passwords and
//! backup files, writing backups.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use super::{execute, Status, SOCKET};
use crate::app::App;
use crate::config::{Command, Config, UsersCommand};
use crate::failure::{Failure, Result};

/// The command line side: through the socket of a running server, or in-process.
pub async fn run_cli(config: Config, mut command: Command) -> Result<()> {
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
                .map_err(|e| Failure::io("standard output", e))
        }
        _ => std::io::stdout()
            .write_all(&output)
            .map_err(|e| Failure::io("standard output", e)),
    }
}

/// Files named on the command line are taken relative to where the operator stands (an
/// offline command may enter the data dir later), and a backup never replaces a file unless
/// told to: checked before any work, so a refused command changes nothing.
fn prepare_files(command: &mut Command) -> Result<()> {
    let file = match command {
        Command::Backup { file, force } => {
            if !*force && file != Path::new("-") && file.exists() {
                return Err(format!(
                    "{} exists already; choose another file name, or add --force to replace it",
                    file.display()
                )
                .into());
            }
            file
        }
        Command::Restore { file } => file,
        _ => return Ok(()),
    };
    if file != Path::new("-") {
        *file =
            std::path::absolute(&*file).map_err(|e| Failure::io(file.display().to_string(), e))?;
    }
    Ok(())
}

fn through_socket(
    mut stream: std::os::unix::net::UnixStream,
    command: &Command,
) -> Result<Vec<u8>> {
    let request = serde_json::to_string(command).map_err(|e| e.to_string())?;
    writeln!(stream, "{request}").map_err(|e| Failure::io("admin socket", e))?;
    let mut lines: Vec<String> = BufReader::new(stream)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| Failure::io("admin socket", e))?;
    let status: Status = lines
        .pop()
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or("the server closed the admin socket early")?;
    if status.status != "ok" {
        return Err(status.error.unwrap_or_default().into());
    }
    Ok(lines
        .into_iter()
        .flat_map(|l| (l + "\n").into_bytes())
        .collect())
}

async fn in_process(mut config: Config, command: &Command) -> Result<Vec<u8>> {
    let restoring = matches!(command, Command::Restore { .. });
    if let (Command::Restore { file }, Some(url)) = (command, &config.database_url) {
        // PostgreSQL: nothing of the data dir is read or written.
        return restore_postgres(&config, url, file).await;
    }
    // Only the server creates a database; restore is the one command that fills a new one.
    // On PostgreSQL the database is the server's, not the data dir's.
    if !restoring && config.database_url.is_none() {
        crate::datadir::require_database(&config.data_dir)?;
    }
    if config.data_dir.exists() {
        config.data_dir = crate::datadir::become_owner(&config.data_dir)?;
    }
    let _lock = crate::datadir::lock(&config.data_dir)
        .map_err(|e| format!("{e} (and its admin socket does not answer)"))?;
    if let Command::Restore { file } = command {
        return restore(&config, file).await;
    }
    let app = App::open(config).await?;
    let mut out = Vec::new();
    execute(&app, command.clone(), &mut out).await?;
    let within = std::time::Duration::from_secs(app.config.flush_timeout);
    app.storage.close(within).await?;
    Ok(out)
}

/// Restores a backup into the stopped data dir (whose lock the caller holds), all or nothing,
/// with the limits of the server's flags. Nothing else of the data dir is written: the server
/// creates its JWT secret on first start.
async fn restore(config: &Config, file: &Path) -> Result<Vec<u8>> {
    let mut input = open_input(file)?;
    let limits = restore_limits(config);
    let options = crate::storage::StorageOptions::of(config);
    let db = config.data_dir.join("db");
    let sum = crate::storage::restore_dir(&db, &mut input, &limits, &options)
        .await
        .map_err(|e| restore_error(e, "the data dir"))?;
    Ok(restored(&sum))
}

/// Restores a backup into the empty PostgreSQL database at `url`, all or nothing (one
/// transaction), with the limits of the server's flags.
async fn restore_postgres(config: &Config, url: &str, file: &Path) -> Result<Vec<u8>> {
    let mut input = open_input(file)?;
    let pg = crate::storage::PgStore::connect(url)
        .await
        .map_err(|e| format!("cannot use the database: {e}"))?;
    let sum = pg
        .restore(&mut input, &restore_limits(config))
        .await
        .map_err(|e| restore_error(e, "the database"))?;
    Ok(restored(&sum))
}

/// A refused backup (a bad record) or a failed restore, and that `kept` is as it was.
fn restore_error(e: crate::storage::StoreError, kept: &str) -> String {
    match e {
        crate::storage::StoreError::Corrupt(why) => {
            format!("restore refused, {kept} is unchanged: {why}")
        }
        other => format!("restore failed, {kept} is unchanged: {other}"),
    }
}

fn restore_limits(config: &Config) -> crate::storage::RestoreLimits {
    crate::storage::RestoreLimits {
        max_message_bytes: config.max_message_bytes,
        max_prekeys: config.max_prekeys,
        max_queued_messages: config.max_queued_messages,
        max_devices: config.max_devices,
        max_attachment_bytes: config.max_attachment_bytes,
        uploads: crate::attachments::limits(config),
    }
}

fn restored(sum: &crate::storage::BackupSummary) -> Vec<u8> {
    let sum = serde_json::to_string(sum).unwrap_or_default();
    format!("restored {sum}\n").into_bytes()
}

/// The password of a new account: a line on standard input, or empty (generate one) when
/// standard input is a terminal or has nothing.
fn read_new_password() -> Result<String> {
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

fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::io("standard input", e))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn open_input(file: &Path) -> Result<Box<dyn BufRead + Send>> {
    if file == Path::new("-") {
        return Ok(Box::new(BufReader::new(std::io::stdin())));
    }
    let f = std::fs::File::open(file).map_err(|e| Failure::io(file.display().to_string(), e))?;
    Ok(Box::new(BufReader::new(f)))
}

fn unwritable(path: &Path, e: std::io::Error) -> Failure {
    format!(
        "cannot write {}: {e}; choose a directory this user can write to, or write to standard \
         output (`backup - > FILE`)",
        path.display()
    )
    .into()
}

/// Writes a backup atomically: a temp file beside it, synced, then renamed.
fn write_output(file: &Path, data: &[u8]) -> Result<()> {
    if file == Path::new("-") {
        return std::io::stdout()
            .write_all(data)
            .map_err(|e| Failure::io("standard output", e));
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
        .map_err(|e| Failure::io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, file).map_err(|e| Failure::io(file.display().to_string(), e))?;
    eprintln!("backup written to {}", file.display());
    Ok(())
}
