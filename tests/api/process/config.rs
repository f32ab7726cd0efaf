//! The command line of the built binary: `--help` and `--version`, every option's env var, a
//! flag winning over its env var, host names in `--listen`, a checked `--public-url`, and a
//! private data dir whatever the umask.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;

use crate::helpers::{
    bare_command, binary_command, ec_prekeys, file_mode, files_under, run, serve_flags,
    shell_command, Binary,
};
use reqwest::StatusCode;

/// The option fields of `Config` in src/config.rs (not skipped, flattened or subcommand fields),
/// as flags (`--data-dir`) and env names (`SIGNAL_SERVER_DATA_DIR`).
fn config_fields() -> Vec<(String, String)> {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs"))
        .expect("read src/config.rs");
    let start = source.find("pub struct Config {").expect("struct Config");
    let body = &source[start + "pub struct Config {".len()..];
    let body = &body[..body.find("\n}").expect("end of struct Config")];
    let mut fields = Vec::new();
    let mut attributes = String::new();
    for line in body.lines().map(str::trim) {
        if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split(':').next()) {
            let field = field.trim();
            let is_ident = !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            let not_a_flag = ["skip", "flatten", "subcommand"]
                .iter()
                .any(|a| attributes.contains(a));
            if is_ident && !not_a_flag {
                fields.push((
                    format!("--{}", field.replace('_', "-")),
                    format!("SIGNAL_SERVER_{}", field.to_ascii_uppercase()),
                ));
            }
            attributes.clear();
        } else if !line.starts_with("///") {
            attributes.push_str(line);
        }
    }
    assert!(
        fields.len() >= 10,
        "could not read src/config.rs: {fields:?}"
    );
    fields
}

#[test]
fn help_lists_every_option_with_env_var() {
    let fields = config_fields();
    let flags: HashSet<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
    // The options the contract names must exist at all.
    for required in [
        "--data-dir",
        "--listen",
        "--pbkdf2-iterations",
        "--no-rate-limit",
        "--max-prekeys",
        "--max-message-bytes",
        "--max-queued-messages",
        "--max-body-bytes",
        "--token-ttl",
        "--refresh-max-age",
        "--jwt-secret",
        "--trusted-proxy",
        "--smtp-url",
        "--smtp-from",
        "--public-url",
    ] {
        assert!(flags.contains(required), "src/config.rs has no {required}");
    }

    let mut cmd = bare_command();
    cmd.arg("--help")
        .env("SIGNAL_SERVER_JWT_SECRET", "do-not-print-this-secret-value")
        .env("SIGNAL_SERVER_SMTP_URL", "smtp://user:hunter2pass@mail:25");
    let help = run(cmd, None).ok().stdout;
    for (flag, env) in &fields {
        assert!(help.contains(flag.as_str()), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(env.as_str()),
            "--help lacks the env var {env} of {flag}:\n{help}"
        );
    }
    assert!(
        !help.contains("do-not-print-this-secret-value") && !help.contains("hunter2pass"),
        "--help prints secret values from the environment:\n{help}"
    );

    let mut cmd = bare_command();
    cmd.arg("--version");
    let version = run(cmd, None).ok().stdout;
    assert!(
        version.contains("signal-server") && version.contains(env!("CARGO_PKG_VERSION")),
        "--version printed {version:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_vars_configure_the_server() {
    // The working directory: if the env data dir were ignored, `./data` would land here.
    let cwd = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bare_command();
    cmd.current_dir(cwd.path())
        .env("SIGNAL_SERVER_DATA_DIR", dir.path())
        .env("SIGNAL_SERVER_LISTEN", "127.0.0.1:0")
        .env("SIGNAL_SERVER_PBKDF2_ITERATIONS", "1000")
        .env("SIGNAL_SERVER_NO_RATE_LIMIT", "true")
        .env("SIGNAL_SERVER_MAX_PREKEYS", "5");
    let server = Binary::spawn(cmd).await;
    assert!(
        server.base.starts_with("http://127.0.0.1:") && !server.base.ends_with(":8000"),
        "SIGNAL_SERVER_LISTEN ignored: {}",
        server.base
    );
    let user = server.user_with_device("envuser", 77, 0, 0).await;
    // 3 + 3 one-time prekeys exceed SIGNAL_SERVER_MAX_PREKEYS=5 (the default cap is 100).
    let (status, body) = server
        .post("/prekeys/77", &user.token, ec_prekeys(1..=3))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = server
        .post("/prekeys/77", &user.token, ec_prekeys(4..=6))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "reached_max_prekeys", "{body}");
    let (status, body) = server
        .post("/prekeys/77", &user.token, ec_prekeys(4..=5))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert!(
        dir.path().join("jwt_secret").is_file(),
        "nothing written to SIGNAL_SERVER_DATA_DIR"
    );
    assert!(
        !cwd.path().join("data").exists(),
        "the server used ./data despite SIGNAL_SERVER_DATA_DIR"
    );
    server.stop().await;

    // A flag wins over its env var.
    let flag_dir = tempfile::tempdir().unwrap();
    let env_dir = tempfile::tempdir().unwrap();
    let mut cmd = binary_command(flag_dir.path());
    serve_flags(&mut cmd, &[])
        .current_dir(cwd.path())
        .env("SIGNAL_SERVER_DATA_DIR", env_dir.path())
        .env("SIGNAL_SERVER_LISTEN", "127.0.0.1:1");
    let server = Binary::spawn(cmd).await;
    server.register("flagwins").await;
    assert!(flag_dir.path().join("jwt_secret").is_file());
    assert!(
        std::fs::read_dir(env_dir.path()).unwrap().next().is_none(),
        "the env data dir was used although --data-dir was given"
    );
}

#[tokio::test]
async fn data_dir_and_files_are_private_whatever_the_umask() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    // A loose umask (022), as an operator's shell has.
    let mut cmd = shell_command("umask 022");
    cmd.arg("--data-dir").arg(&dir);
    serve_flags(&mut cmd, &[]);
    Binary::spawn(cmd).await.stop().await;
    assert_eq!(file_mode(&dir), 0o700);
    for f in files_under(&dir) {
        assert_eq!(file_mode(&f), 0o600, "{}", f.display());
    }
    // A dir an older version left readable by all is made private, with a word in the log.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let logs = Binary::start(&dir, &[]).await.stop().await;
    assert_eq!(file_mode(&dir), 0o700);
    assert!(logs.contains("made it 0700"), "{logs}");
}

#[tokio::test]
async fn listen_takes_a_host_name_and_public_url_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = binary_command(dir.path());
    cmd.args(["--listen", "localhost:0", "--pbkdf2-iterations", "1000"]);
    let server = Binary::spawn(cmd).await;
    assert!(
        server.base.starts_with("http://127.0.0.1:") || server.base.starts_with("http://[::1]:"),
        "{}",
        server.base
    );
    server.stop().await;
    let mut cmd = binary_command(dir.path());
    cmd.args(["--public-url", "not-a-url"]);
    let err = run(cmd, None).err();
    assert!(
        err.contains("--public-url") && err.contains("https://"),
        "{err}"
    );
}

/// The start log has one line an operator can grep: the store, the registration mode and the
/// addresses (the API's is the one bound, not `:0`); never a database password.
#[tokio::test]
async fn the_start_log_names_the_store_the_registration_mode_and_the_addresses() {
    let dir = crate::helpers::fresh_data_dir().await;
    let mut server = Binary::start(dir.path(), &["--registration", "closed"]).await;
    let store = server.wait_log("serving: store ").await;
    let want = if crate::helpers::on_postgres() {
        "postgresql"
    } else {
        "sled"
    };
    assert_eq!(store, want);
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("serving: store "))
        .expect("the line");
    assert!(
        line.contains("; registration closed; api http://127.0.0.1:"),
        "{line}"
    );
    assert!(!line.contains(":0;"), "the bound port: {line}");
    assert!(line.ends_with("metrics off"), "{line}");
    assert!(!logs.contains("already exists, skipping"), "{logs}");
    server.stop().await;
}
