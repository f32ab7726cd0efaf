//! A loopback SMTP server for the reset mails (mailin drives the protocol; this is the TCP loop
//! around it), and what a test reads from a mail.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use crate::helpers::TestServer;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Debug)]
pub(super) struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

struct MailSink {
    tx: mpsc::UnboundedSender<Mail>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin::Handler for MailSink {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin::Response {
        self.from = from.to_string();
        self.to = to.to_vec();
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin::Response {
        let _ = self.tx.send(Mail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        });
        mailin::response::OK
    }
}

/// Starts an SMTP server on 127.0.0.1:0; answers its port and the mails it receives.
async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("smtp bind");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(smtp_session(stream, peer.ip(), tx.clone()));
        }
    });
    (port, rx)
}

async fn smtp_session(stream: TcpStream, ip: IpAddr, tx: mpsc::UnboundedSender<Mail>) {
    let sink = MailSink {
        tx,
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut session = mailin::SessionBuilder::new("users-test-smtp").build(ip, sink);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    if write
        .write_all(&session.greeting().buffer().unwrap())
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let res = session.process(&line);
        match res.action {
            mailin::Action::Reply => {
                if write.write_all(&res.buffer().unwrap()).await.is_err() {
                    return;
                }
            }
            mailin::Action::Close => {
                let _ = write.write_all(&res.buffer().unwrap()).await;
                return;
            }
            mailin::Action::NoReply => {}
            mailin::Action::UpgradeTls => return,
        }
    }
}

/// The next mail, waiting at most 30 s.
pub(super) async fn next_mail(rx: &mut mpsc::UnboundedReceiver<Mail>) -> Mail {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no reset mail arrived within 30 s")
        .expect("smtp server stopped")
}

/// The decoded text body of a mail (7bit, quoted-printable or base64).
fn mail_text(mail: &Mail) -> String {
    let data = mail.data.replace("\r\n", "\n");
    let (headers, body) = data.split_once("\n\n").unwrap_or(("", &data));
    let encoding = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-transfer-encoding")
                .then(|| v.trim().to_ascii_lowercase())
        })
        .unwrap_or_default();
    match encoding.as_str() {
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            String::from_utf8_lossy(
                &base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("base64 mail body"),
            )
            .into_owned()
        }
        "quoted-printable" => {
            let joined = body.replace("=\n", "");
            let mut out = Vec::new();
            let bytes = joined.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'=' && i + 2 < bytes.len() + 1 {
                    if let Ok(b) = u8::from_str_radix(&joined[i + 1..(i + 3).min(joined.len())], 16)
                    {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                }
                out.push(bytes[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        }
        _ => body.to_string(),
    }
}

/// `uid:` and `token:` from a reset mail.
pub(super) fn reset_fields(mail: &Mail) -> (String, String) {
    let text = mail_text(mail);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no `{name}` line in the mail: {text}"))
    };
    (field("uid:"), field("token:"))
}

pub(super) async fn smtp_app() -> (TestServer, mpsc::UnboundedReceiver<Mail>) {
    let (port, rx) = smtp_server().await;
    let url = format!("smtp://127.0.0.1:{port}");
    let s = TestServer::start_with(&[
        "--no-rate-limit",
        "--smtp-url",
        &url,
        "--smtp-from",
        "noreply@signal.test",
    ])
    .await;
    (s, rx)
}
