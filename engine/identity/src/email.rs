//! The email step: a verification token sent to an address; whoever answers with it
//! proves they read that mailbox, and the identity that asked reaches the `email` level.
//!
//! The link names the address only by its SHA-256 (`email:<hex>`): the node keeps no
//! address. Tokens are 256 random bits, single use, valid 15 minutes, never logged. Mail
//! leaves through an [`Outbox`]: [`FileOutbox`] writes each message as an `.eml` file (a
//! mail spool a relay or an operator's script sends on; and what a loopback test reads).

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::provider::{Challenges, IdError, IdentityProvider, Intent, Proof, Registry, field};
use crate::webauthn::{b64url, from_b64url};
use crate::{Level, Link};

/// How long a token is valid.
pub const TOKEN_MS: u64 = 15 * 60 * 1000;
/// Tokens pending at once.
pub const MAX_PENDING: usize = 1000;

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The recipient.
    pub to: String,
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
}

/// Where mail goes.
pub trait Outbox: Send + Sync {
    /// Hands `mail` on.
    fn send(&self, mail: &Mail) -> Result<(), String>;
}

/// An outbox folder: one RFC 5322 `.eml` file per message (owner-only where the platform
/// has modes), at most `max_files` kept (the oldest go first).
#[derive(Debug)]
pub struct FileOutbox {
    dir: PathBuf,
    from: String,
    max_files: usize,
}

impl FileOutbox {
    /// An outbox in `dir` (created), sending as `from`.
    pub fn open(dir: impl Into<PathBuf>, from: impl Into<String>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            from: from.into(),
            max_files: 1000,
        })
    }

    /// Its folder.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn prune(&self) -> std::io::Result<()> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        if files.len() < self.max_files {
            return Ok(());
        }
        files.sort();
        for old in &files[..=files.len() - self.max_files] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

impl Outbox for FileOutbox {
    fn send(&self, mail: &Mail) -> Result<(), String> {
        self.prune().map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut tag = [0u8; 6];
        getrandom::fill(&mut tag).map_err(|e| e.to_string())?;
        let name = format!("{:013}-{}.eml", now.as_millis(), hex(&tag));
        let text = format!(
            "From: {}\r\nTo: {}\r\nSubject: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}",
            self.from,
            mail.to,
            mail.subject,
            mail.body.replace('\n', "\r\n")
        );
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        write_private(&tmp, text.as_bytes()).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks an address (RFC 5321 lengths, one `@`, a dotted domain, no spaces or control
/// characters: nothing that could inject a header) and returns it trimmed.
pub fn check_address(address: &str) -> Result<&str, IdError> {
    let a = address.trim();
    let bad = |why: &str| IdError::Malformed(format!("email address: {why}"));
    if a.is_empty() || a.len() > 254 {
        return Err(bad("1 to 254 characters"));
    }
    if a.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no spaces or control characters"));
    }
    let (local, domain) = a.split_once('@').ok_or_else(|| bad("no @"))?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad("one @ after a local part of 1 to 64 characters"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return Err(bad("a domain such as example.org"));
    }
    Ok(a)
}

/// The credential naming an address: `email:` and the hex SHA-256 of it, lowercased.
pub fn credential_of(address: &str) -> String {
    format!(
        "email:{}",
        hex(&Sha256::digest(address.trim().to_lowercase().as_bytes()))
    )
}

/// `a…@example.org`: enough for a user to recognise, not the address.
fn masked(address: &str) -> String {
    let (local, domain) = address.split_once('@').unwrap_or((address, ""));
    let first: String = local.chars().take(1).collect();
    format!("{first}…@{domain}")
}

/// The email provider.
pub struct EmailProvider {
    node: String,
    outbox: Box<dyn Outbox>,
    pending: Challenges<(String, String, String)>,
}

impl std::fmt::Debug for EmailProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmailProvider({})", self.node)
    }
}

impl EmailProvider {
    /// The provider of node `node` (named in the mail), sending through `outbox`.
    pub fn new(node: impl Into<String>, outbox: Box<dyn Outbox>) -> Self {
        Self {
            node: node.into(),
            outbox,
            pending: Challenges::new("email", TOKEN_MS, MAX_PENDING),
        }
    }
}

impl IdentityProvider for EmailProvider {
    fn kind(&self) -> &'static str {
        "email"
    }

    fn level(&self) -> Level {
        Level::Email
    }

    fn begin(
        &self,
        intent: Intent,
        params: &serde_json::Value,
        now_ms: u64,
    ) -> Result<serde_json::Value, IdError> {
        let Intent::Link { subject, request } = intent else {
            return Err(IdError::Unsupported(
                "an email address does not sign in: use a passkey or your DID".into(),
            ));
        };
        let address = check_address(field(params, "address", 254)?)?.to_owned();
        // The subject's signed request names the address only by its credential, so the
        // link statement (which keeps the request) carries no address.
        if field(params, "credential", 80)? != credential_of(&address) {
            return Err(IdError::Malformed(
                "the signed request's credential is not this address's (email:<SHA-256 of the lowercased address>)"
                    .into(),
            ));
        }
        let raw = self
            .pending
            .issue((subject.clone(), request, credential_of(&address)), now_ms)?;
        let token = b64url(&raw);
        let mail = Mail {
            to: address.clone(),
            subject: "Your KwaaiNet verification token".into(),
            body: format!(
                "Someone asked KwaaiNet node {node} to link this address to the identity\n\
                 {subject}.\n\nIf that was you, enter this token (valid 15 minutes):\n\n\
                 {token}\n\nIf not, ignore this message: nothing is linked without it.\n",
                node = self.node
            ),
        };
        if let Err(e) = self.outbox.send(&mail) {
            // The token can never be answered; drop it rather than leave it pending.
            let _ = self.pending.take(&raw, now_ms);
            return Err(IdError::Delivery(e));
        }
        Ok(serde_json::json!({ "sentTo": masked(&address), "expiresInS": TOKEN_MS / 1000 }))
    }

    fn authenticate(
        &self,
        answer: &serde_json::Value,
        registry: &mut dyn Registry,
        now_ms: u64,
    ) -> Result<Proof, IdError> {
        let token = from_b64url(field(answer, "token", 64)?.trim(), "token")
            .map_err(|e| IdError::Malformed(e.to_string()))?;
        let (subject, request, credential) = self.pending.take(&token, now_ms)?;
        if let Some(owner) = registry.subject_of(&credential)
            && owner != subject
        {
            return Err(IdError::Conflict(
                "this address is linked to another identity".into(),
            ));
        }
        Ok(Proof {
            subject,
            credential,
            level: Level::Email,
            request,
            passkey: None,
        })
    }

    fn verify(&self, link: &Link) -> Result<(), IdError> {
        let hash = link.credential.strip_prefix("email:").unwrap_or_default();
        if link.level == Level::Email
            && hash.len() == 64
            && hash.bytes().all(|b| b.is_ascii_hexdigit())
        {
            Ok(())
        } else {
            Err(IdError::Rejected(format!(
                "{} is not an email link",
                link.credential
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct Sent(Arc<Mutex<Vec<Mail>>>);
    impl Outbox for Sent {
        fn send(&self, mail: &Mail) -> Result<(), String> {
            self.0.lock().unwrap().push(mail.clone());
            Ok(())
        }
    }
    struct Down;
    impl Outbox for Down {
        fn send(&self, _: &Mail) -> Result<(), String> {
            Err("relay down".into())
        }
    }
    #[derive(Default)]
    struct Reg(Vec<(String, String)>);
    impl Registry for Reg {
        fn subject_of(&self, c: &str) -> Option<String> {
            self.0.iter().find(|(x, _)| x == c).map(|(_, s)| s.clone())
        }
        fn passkey(&mut self, _: &str) -> Option<&mut crate::webauthn::Credential> {
            None
        }
    }

    fn ask(address: &str) -> serde_json::Value {
        serde_json::json!({ "address": address, "credential": credential_of(address) })
    }

    fn token_in(mail: &Mail) -> String {
        mail.body
            .lines()
            .find(|l| l.len() == 43)
            .expect("a token line")
            .to_owned()
    }

    #[test]
    fn a_token_links_the_address_once_to_the_identity_that_asked() {
        let sent = Sent::default();
        let p = EmailProvider::new("did:key:node", Box::new(sent.clone()));
        let link = Intent::Link {
            subject: "did:key:alice".into(),
            request: "{req}".into(),
        };
        let out = p
            .begin(
                link.clone(),
                &serde_json::json!({"address": " Alice@Example.org ", "credential": credential_of("alice@example.org")}),
                0,
            )
            .unwrap();
        assert_eq!(out["sentTo"], "A…@Example.org");
        let mail = sent.0.lock().unwrap()[0].clone();
        assert_eq!(mail.to, "Alice@Example.org");
        let token = token_in(&mail);
        let proof = p
            .authenticate(
                &serde_json::json!({ "token": token }),
                &mut Reg::default(),
                1,
            )
            .unwrap();
        assert_eq!(proof.subject, "did:key:alice");
        assert_eq!(proof.credential, credential_of("alice@example.org"));
        assert!(proof.is_link());
        // Single use; a wrong or expired token is refused.
        let again = p.authenticate(
            &serde_json::json!({ "token": token }),
            &mut Reg::default(),
            2,
        );
        assert!(matches!(again, Err(IdError::Rejected(_))));
        p.begin(link.clone(), &ask("a@b.co"), 0).unwrap();
        let t2 = token_in(&sent.0.lock().unwrap()[1]);
        let late = p.authenticate(
            &serde_json::json!({ "token": t2 }),
            &mut Reg::default(),
            TOKEN_MS + 1,
        );
        assert!(matches!(late, Err(IdError::Rejected(m)) if m.contains("expired")));
        // An address already another identity's is refused.
        p.begin(link, &ask("a@b.co"), 0).unwrap();
        let t3 = token_in(&sent.0.lock().unwrap()[2]);
        let mut reg = Reg(vec![(credential_of("a@b.co"), "did:key:bob".into())]);
        let taken = p.authenticate(&serde_json::json!({ "token": t3 }), &mut reg, 1);
        assert!(matches!(taken, Err(IdError::Conflict(_))));
    }

    #[test]
    fn bad_addresses_sign_ins_and_a_dead_outbox_are_refused() {
        let p = EmailProvider::new("n", Box::new(Sent::default()));
        let link = || Intent::Link {
            subject: "s".into(),
            request: "r".into(),
        };
        for bad in [
            "",
            "no-at",
            "a@b",
            "a@@b.co",
            "a b@c.co",
            "a@b.co\r\nBcc: x@y.z",
            "@b.co",
        ] {
            let r = p.begin(link(), &ask(bad), 0);
            assert!(matches!(r, Err(IdError::Malformed(_))), "{bad:?}: {r:?}");
        }
        let r = p.begin(
            Intent::SignIn,
            &serde_json::json!({ "address": "a@b.co" }),
            0,
        );
        assert!(matches!(r, Err(IdError::Unsupported(_))));
        let down = EmailProvider::new("n", Box::new(Down));
        let r = down.begin(link(), &ask("a@b.co"), 0);
        assert!(matches!(r, Err(IdError::Delivery(_))));
        assert!(
            down.pending.is_empty(),
            "an undeliverable token is not left pending"
        );
    }

    #[test]
    fn the_file_outbox_writes_private_eml_files_and_keeps_a_bounded_number() {
        let dir = std::env::temp_dir().join(format!("kwaainet-outbox-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = FileOutbox::open(&dir, "node@kwaainet.invalid").unwrap();
        o.max_files = 3;
        for i in 0..5 {
            let mail = Mail {
                to: "a@b.co".into(),
                subject: format!("n{i}"),
                body: "line1\nline2".into(),
            };
            o.send(&mail).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 3);
        let last = std::fs::read_to_string(&files[2]).unwrap();
        assert!(last.starts_with("From: node@kwaainet.invalid\r\nTo: a@b.co\r\nSubject: n4\r\n"));
        assert!(last.ends_with("line1\r\nline2"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files[2]).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
