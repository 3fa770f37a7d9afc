//! The passkey provider: [`RelyingParty`] ceremonies behind [`IdentityProvider`].
//! Linking registers a discoverable credential for the identity that asked; signing in
//! checks an assertion by a registered credential and finds its identity.
//!
//! Answers carry the browser's fields in base64url: `{ id, clientDataJSON,
//! attestationObject }` (registration) or `{ id, clientDataJSON, authenticatorData,
//! signature }` (sign-in). The ceremony is found by the challenge in the client data.

use crate::provider::{Challenges, IdError, IdentityProvider, Intent, Proof, Registry, field};
use crate::webauthn::{RelyingParty, WebAuthnError, from_b64url};
use crate::{Level, Link};

/// How long a ceremony may take.
pub const CHALLENGE_MS: u64 = 2 * 60 * 1000;

/// The passkey provider.
#[derive(Debug)]
pub struct PasskeyProvider {
    rp: RelyingParty,
    pending: Challenges<Intent>,
}

fn malformed(e: WebAuthnError) -> IdError {
    IdError::Malformed(e.to_string())
}

fn rejected(e: WebAuthnError) -> IdError {
    match e {
        WebAuthnError::Malformed(m) => IdError::Malformed(m),
        e => IdError::Rejected(e.to_string()),
    }
}

impl PasskeyProvider {
    /// The provider for relying party `rp`.
    pub fn new(rp: RelyingParty) -> Self {
        Self {
            rp,
            pending: Challenges::new("passkey", CHALLENGE_MS, 1000),
        }
    }

    fn bytes(answer: &serde_json::Value, name: &str) -> Result<Vec<u8>, IdError> {
        from_b64url(field(answer, name, 16 << 10)?, name).map_err(malformed)
    }
}

impl IdentityProvider for PasskeyProvider {
    fn kind(&self) -> &'static str {
        "passkey"
    }

    fn level(&self) -> Level {
        Level::Passkey
    }

    fn begin(
        &self,
        intent: Intent,
        _params: &serde_json::Value,
        now_ms: u64,
    ) -> Result<serde_json::Value, IdError> {
        match &intent {
            Intent::Link { subject, .. } => {
                let short: String = subject.chars().skip(8).take(12).collect();
                let user = subject.clone();
                let challenge = self.pending.issue(intent, now_ms)?;
                Ok(self.rp.registration_options(
                    user.as_bytes(),
                    &format!("KwaaiNet {short}"),
                    &challenge,
                ))
            }
            Intent::SignIn => {
                let challenge = self.pending.issue(intent, now_ms)?;
                Ok(self.rp.login_options(&challenge))
            }
        }
    }

    fn authenticate(
        &self,
        answer: &serde_json::Value,
        registry: &mut dyn Registry,
        now_ms: u64,
    ) -> Result<Proof, IdError> {
        #[derive(serde::Deserialize)]
        struct Client {
            challenge: String,
        }
        let client = Self::bytes(answer, "clientDataJSON")?;
        let c: Client = serde_json::from_slice(&client)
            .map_err(|e| IdError::Malformed(format!("clientDataJSON: {e}")))?;
        let challenge = from_b64url(&c.challenge, "challenge").map_err(malformed)?;
        let intent = self.pending.take(&challenge, now_ms)?;
        match intent {
            Intent::Link { subject, request } => {
                if answer.get("attestationObject").is_none() {
                    return Err(IdError::Malformed(
                        "this challenge was issued for a registration".into(),
                    ));
                }
                let att = Self::bytes(answer, "attestationObject")?;
                let cred = self
                    .rp
                    .verify_registration(&client, &att, &challenge)
                    .map_err(rejected)?;
                let credential = format!("passkey:{}", cred.id);
                if registry.subject_of(&credential).is_some() {
                    return Err(IdError::Conflict("this passkey is already linked".into()));
                }
                Ok(Proof {
                    subject,
                    credential,
                    level: Level::Passkey,
                    request,
                    passkey: Some(cred),
                })
            }
            Intent::SignIn => {
                if answer.get("authenticatorData").is_none() {
                    return Err(IdError::Malformed(
                        "this challenge was issued for a sign-in".into(),
                    ));
                }
                let id = field(answer, "id", 1024)?.to_owned();
                let auth = Self::bytes(answer, "authenticatorData")?;
                let sig = Self::bytes(answer, "signature")?;
                let credential = format!("passkey:{id}");
                let subject = registry
                    .subject_of(&credential)
                    .ok_or_else(|| IdError::Unknown("no identity has this passkey".into()))?;
                let cred = registry
                    .passkey(&id)
                    .ok_or_else(|| IdError::Unknown("no identity has this passkey".into()))?;
                let count = self
                    .rp
                    .verify_login(cred, &client, &auth, &sig, &challenge)
                    .map_err(rejected)?;
                cred.sign_count = count;
                Ok(Proof {
                    subject,
                    credential,
                    level: Level::Passkey,
                    request: String::new(),
                    passkey: None,
                })
            }
        }
    }

    fn verify(&self, link: &Link) -> Result<(), IdError> {
        let id = link.credential.strip_prefix("passkey:").unwrap_or_default();
        if link.level == Level::Passkey && from_b64url(id, "id").is_ok_and(|b| !b.is_empty()) {
            Ok(())
        } else {
            Err(IdError::Rejected(format!(
                "{} is not a passkey link",
                link.credential
            )))
        }
    }
}
