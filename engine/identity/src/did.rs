//! The `did` level: a key the person holds outside the browser (a hardware wallet, the
//! `kwaainet identity` key of their own node, any Ed25519 did:key) signs a node's
//! challenge. Linking it makes the identity portable — it can sign in on any node that
//! trusts the link — and the key can sign in again wherever the browser's key is lost.
//!
//! The signed message names its purpose, the node and the challenge, so a signature
//! meant for one node, one identity or one sign-in is worth nothing anywhere else:
//! `kwaainet/did-auth/v1\n<node>\n<purpose>\n<did>\n<challenge, base64url>` where
//! purpose is `link <subject>` or `sign-in`.

use crate::provider::{Challenges, IdError, IdentityProvider, Intent, Proof, Registry, field};
use crate::webauthn::{b64url, from_b64url};
use crate::{Level, Link};

/// How long a challenge is valid.
pub const CHALLENGE_MS: u64 = 5 * 60 * 1000;

/// Resolves a did:key to its Ed25519 public key.
pub type Resolve = fn(&str) -> Option<[u8; 32]>;

/// The provider of outside keys.
pub struct DidProvider {
    node: String,
    resolve: Resolve,
    pending: Challenges<(Intent, String)>,
}

impl std::fmt::Debug for DidProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DidProvider({})", self.node)
    }
}

/// The message the outside key signs.
pub fn message(node: &str, intent: &Intent, did: &str, challenge: &str) -> String {
    let purpose = match intent {
        Intent::Link { subject, .. } => format!("link {subject}"),
        Intent::SignIn => "sign-in".into(),
    };
    format!("kwaainet/did-auth/v1\n{node}\n{purpose}\n{did}\n{challenge}")
}

impl DidProvider {
    /// The provider of node `node` (its did:key), resolving keys with `resolve`.
    pub fn new(node: impl Into<String>, resolve: Resolve) -> Self {
        Self {
            node: node.into(),
            resolve,
            pending: Challenges::new("did", CHALLENGE_MS, 1000),
        }
    }
}

impl IdentityProvider for DidProvider {
    fn kind(&self) -> &'static str {
        "did"
    }

    fn level(&self) -> Level {
        Level::Did
    }

    fn begin(
        &self,
        intent: Intent,
        params: &serde_json::Value,
        now_ms: u64,
    ) -> Result<serde_json::Value, IdError> {
        let did = field(params, "did", 128)?.to_owned();
        if (self.resolve)(&did).is_none() {
            return Err(IdError::Malformed(format!(
                "{did:?} is not an Ed25519 did:key"
            )));
        }
        if let Intent::Link { subject, .. } = &intent
            && *subject == did
        {
            return Err(IdError::Rejected(
                "an identity's own key is already its proof: link a key held elsewhere".into(),
            ));
        }
        let challenge = b64url(&self.pending.issue((intent.clone(), did.clone()), now_ms)?);
        let message = message(&self.node, &intent, &did, &challenge);
        Ok(serde_json::json!({ "challenge": challenge, "message": message }))
    }

    fn authenticate(
        &self,
        answer: &serde_json::Value,
        registry: &mut dyn Registry,
        now_ms: u64,
    ) -> Result<Proof, IdError> {
        let challenge = field(answer, "challenge", 64)?;
        let raw =
            from_b64url(challenge, "challenge").map_err(|e| IdError::Malformed(e.to_string()))?;
        let signature = from_b64url(field(answer, "signature", 128)?, "signature")
            .map_err(|e| IdError::Malformed(e.to_string()))?;
        let (intent, did) = self.pending.take(&raw, now_ms)?;
        let key = (self.resolve)(&did).ok_or_else(|| IdError::Malformed(did.clone()))?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key)
            .map_err(|_| IdError::Malformed(format!("{did}: not a curve point")))?;
        let sig = ed25519_dalek::Signature::from_slice(&signature)
            .map_err(|_| IdError::Malformed("signature: 64 bytes".into()))?;
        key.verify_strict(
            message(&self.node, &intent, &did, challenge).as_bytes(),
            &sig,
        )
        .map_err(|_| IdError::Rejected(format!("the signature is not {did}'s")))?;
        let owner = registry.subject_of(&did);
        match intent {
            Intent::Link { subject, request } => {
                if owner.as_ref().is_some_and(|o| *o != subject) {
                    return Err(IdError::Conflict(format!(
                        "{did} is linked to another identity"
                    )));
                }
                Ok(Proof {
                    subject,
                    credential: did,
                    level: Level::Did,
                    request,
                    passkey: None,
                })
            }
            Intent::SignIn => Ok(Proof {
                subject: owner
                    .ok_or_else(|| IdError::Unknown(format!("no identity has linked {did}")))?,
                credential: did,
                level: Level::Did,
                request: String::new(),
                passkey: None,
            }),
        }
    }

    fn verify(&self, link: &Link) -> Result<(), IdError> {
        if link.level == Level::Did && (self.resolve)(&link.credential).is_some() {
            Ok(())
        } else {
            Err(IdError::Rejected(format!(
                "{} is not a DID link",
                link.credential
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    // did:key of the all-zero seed (the W3C CCG vector) and its public key.
    const ZERO_DID: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";

    fn resolve(did: &str) -> Option<[u8; 32]> {
        let b = bs58::decode(did.strip_prefix("did:key:z")?)
            .into_vec()
            .ok()?;
        (b.len() == 34 && b[..2] == [0xed, 0x01]).then(|| b[2..].try_into().ok())?
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

    fn sign(key: &SigningKey, out: &serde_json::Value) -> serde_json::Value {
        let m = out["message"].as_str().unwrap();
        serde_json::json!({
            "challenge": out["challenge"],
            "signature": b64url(&key.sign(m.as_bytes()).to_bytes()),
        })
    }

    #[test]
    fn an_outside_key_links_then_signs_in_and_nothing_else_does() {
        let outside = SigningKey::from_bytes(&[0; 32]);
        assert_eq!(resolve(ZERO_DID), Some(outside.verifying_key().to_bytes()));
        let p = DidProvider::new("did:key:node", resolve);
        let link = Intent::Link {
            subject: "did:key:alice".into(),
            request: "{req}".into(),
        };
        let params = serde_json::json!({ "did": ZERO_DID });
        let out = p.begin(link.clone(), &params, 0).unwrap();
        assert!(
            out["message"]
                .as_str()
                .unwrap()
                .contains("\nlink did:key:alice\n")
        );
        let proof = p
            .authenticate(&sign(&outside, &out), &mut Reg::default(), 1)
            .unwrap();
        assert_eq!(
            (proof.subject.as_str(), proof.credential.as_str()),
            ("did:key:alice", ZERO_DID)
        );
        assert_eq!(proof.level, Level::Did);

        // Another key's signature, a replay, a signature for a link used to sign in: refused.
        let other = SigningKey::from_bytes(&[7; 32]);
        let out = p.begin(link.clone(), &params, 0).unwrap();
        let forged = p.authenticate(&sign(&other, &out), &mut Reg::default(), 1);
        assert!(matches!(forged, Err(IdError::Rejected(_))), "{forged:?}");
        let replay = p.authenticate(&sign(&outside, &out), &mut Reg::default(), 1);
        assert!(matches!(replay, Err(IdError::Rejected(m)) if m.contains("unknown or used")));
        let for_link = p.begin(link, &params, 0).unwrap();
        let sign_in = p.begin(Intent::SignIn, &params, 0).unwrap();
        let mut swapped = sign(&outside, &for_link);
        swapped["challenge"] = sign_in["challenge"].clone();
        let r = p.authenticate(&swapped, &mut Reg::default(), 1);
        assert!(matches!(r, Err(IdError::Rejected(_))), "{r:?}");

        // Sign-in finds the identity the key is linked to, and only a linked key signs in.
        let mut reg = Reg(vec![(ZERO_DID.into(), "did:key:alice".into())]);
        let out = p.begin(Intent::SignIn, &params, 0).unwrap();
        let proof = p.authenticate(&sign(&outside, &out), &mut reg, 1).unwrap();
        assert_eq!(proof.subject, "did:key:alice");
        assert!(!proof.is_link());
        let out = p.begin(Intent::SignIn, &params, 0).unwrap();
        let r = p.authenticate(&sign(&outside, &out), &mut Reg::default(), 1);
        assert!(matches!(r, Err(IdError::Unknown(_))));
        // A key linked to another identity does not link again.
        let out = p
            .begin(
                Intent::Link {
                    subject: "did:key:bob".into(),
                    request: "r".into(),
                },
                &params,
                0,
            )
            .unwrap();
        let r = p.authenticate(&sign(&outside, &out), &mut reg, 1);
        assert!(matches!(r, Err(IdError::Conflict(_))));
    }

    #[test]
    fn malformed_dids_and_an_identitys_own_key_are_refused() {
        let p = DidProvider::new("n", resolve);
        for did in [
            "",
            "did:web:example.org",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
        ] {
            let r = p.begin(Intent::SignIn, &serde_json::json!({ "did": did }), 0);
            assert!(matches!(r, Err(IdError::Malformed(_))), "{did}: {r:?}");
        }
        let own = Intent::Link {
            subject: ZERO_DID.into(),
            request: "r".into(),
        };
        let r = p.begin(own, &serde_json::json!({ "did": ZERO_DID }), 0);
        assert!(matches!(r, Err(IdError::Rejected(_))));
    }
}
