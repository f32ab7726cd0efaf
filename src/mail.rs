//! Password-reset mail over SMTP (lettre). Sending happens in the background so that a reset
//! request for a known address answers as fast as one for an unknown address.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: String,
    public_url: Option<String>,
}

impl Mailer {
    /// Fails on an unusable SMTP URL, so that a typo stops the server at start-up.
    pub fn new(
        smtp_url: Option<&str>,
        from: &str,
        public_url: Option<&str>,
    ) -> Result<Mailer, String> {
        let transport = match smtp_url {
            Some(url) => Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| format!("--smtp-url: {e}"))?
                    .build(),
            ),
            None => None,
        };
        from.parse::<Mailbox>()
            .map_err(|e| format!("--smtp-from: {e}"))?;
        Ok(Mailer {
            transport,
            from: from.to_string(),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
        })
    }

    /// Sends the reset mail in the background; without SMTP it only logs that mail is not set up.
    pub fn send_reset(&self, to: &str, username: &str, uid: &str, token: &str) {
        let Some(transport) = self.transport.clone() else {
            log::warn!("password reset requested, but no --smtp-url is configured: no mail sent");
            return;
        };
        let link = match &self.public_url {
            Some(base) => format!("Open {base}/password/reset/confirm/{uid}/{token}\n\nor use:\n"),
            None => String::new(),
        };
        let body = format!(
            "Hello {username},\n\nA password reset was requested for your account.\n\n{link}uid: {uid}\ntoken: {token}\n\n\
             If you did not ask for this, ignore this mail.\n"
        );
        let message = (|| {
            Message::builder()
                .from(self.from.parse().ok()?)
                .to(to.parse().ok()?)
                .subject("Password reset")
                .body(body)
                .ok()
        })();
        let Some(message) = message else {
            log::warn!("password reset mail could not be built");
            return;
        };
        tokio::spawn(async move {
            if let Err(e) = transport.send(message).await {
                log::warn!("password reset mail not sent: {e}");
            }
        });
    }
}
