//! A WebAuthn relying party (Web Authentication Level 2, §7): passkey registration and
//! login verified on the node, for ES256 (P-256) and EdDSA (Ed25519) credentials.
//!
//! What is checked — registration: the client data's type, challenge and origin; the
//! authenticator data's RP ID hash, user presence and (when asked) user verification; the
//! attested credential's COSE key. Login: the same, then the signature over
//! `authenticatorData ‖ SHA-256(clientDataJSON)` by the registered key, and a signature
//! counter that must grow when the authenticator keeps one. Attestation statements are not
//! verified (registration asks for `attestation: "none"`): a passkey proves possession,
//! not the make of the device.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a ceremony is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebAuthnError {
    /// Malformed input (base64, JSON, CBOR, lengths).
    #[error("malformed {0}")]
    Malformed(String),
    /// A check failed (challenge, origin, RP ID, flags, counter).
    #[error("{0}")]
    Rejected(String),
    /// A key type this relying party does not accept.
    #[error("unsupported credential key: {0}")]
    Unsupported(String),
    /// The signature does not verify.
    #[error("the passkey's signature does not verify")]
    Signature,
}

type Result<T> = std::result::Result<T, WebAuthnError>;

fn bad(what: impl Into<String>) -> WebAuthnError {
    WebAuthnError::Malformed(what.into())
}

fn reject(why: impl Into<String>) -> WebAuthnError {
    WebAuthnError::Rejected(why.into())
}

/// Base64url without padding, as WebAuthn encodes binary fields in JSON.
pub fn b64url(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// Decodes base64url (with or without padding).
pub fn from_b64url(s: &str, what: &str) -> Result<Vec<u8>> {
    B64URL
        .decode(s.trim_end_matches('='))
        .map_err(|_| bad(format!("{what}: not base64url")))
}

/// A credential's public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "alg", rename_all = "lowercase")]
pub enum PublicKey {
    /// ES256: an uncompressed SEC1 point, base64url.
    Es256 {
        /// `04 ‖ x ‖ y`.
        point: String,
    },
    /// EdDSA over Ed25519: 32 bytes, base64url.
    Ed25519 {
        /// The key.
        key: String,
    },
}

/// A registered passkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// Its credential id, base64url.
    pub id: String,
    /// Its public key.
    pub public_key: PublicKey,
    /// The last signature counter seen (0: the authenticator keeps none).
    pub sign_count: u32,
    /// Whether the user was verified (PIN, biometrics) at registration.
    pub user_verified: bool,
    /// Whether the credential may be synced to other devices (backup eligible).
    pub backup_eligible: bool,
}

/// The relying party: its RP ID (a domain, `localhost` for a local node) and the origins
/// its pages run on.
#[derive(Debug, Clone)]
pub struct RelyingParty {
    /// The RP ID.
    pub id: String,
    /// A name shown by the browser.
    pub name: String,
    /// Accepted origins (`http://localhost:8080`).
    pub origins: Vec<String>,
    /// Whether user verification is required (it is, for passkeys).
    pub require_user_verification: bool,
}

/// Flags of the authenticator data.
const UP: u8 = 0x01;
const UV: u8 = 0x04;
const BE: u8 = 0x08;
const AT: u8 = 0x40;

/// Largest client data or authenticator data accepted.
const MAX_FIELD: usize = 16 << 10;

#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
}

struct AuthData<'a> {
    rp_id_hash: &'a [u8],
    flags: u8,
    sign_count: u32,
    /// Credential id and COSE key, when attested.
    attested: Option<(Vec<u8>, ciborium::value::Value)>,
}

fn parse_auth_data(d: &[u8]) -> Result<AuthData<'_>> {
    if d.len() < 37 || d.len() > MAX_FIELD {
        return Err(bad("authenticator data"));
    }
    let flags = d[32];
    let sign_count = u32::from_be_bytes([d[33], d[34], d[35], d[36]]);
    let attested = if flags & AT != 0 {
        let rest = &d[37..];
        if rest.len() < 18 {
            return Err(bad("attested credential data"));
        }
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        let id = rest
            .get(18..18 + len)
            .ok_or_else(|| bad("credential id"))?
            .to_vec();
        if id.is_empty() || len > 1023 {
            return Err(bad("credential id length"));
        }
        let mut key_bytes = &rest[18 + len..];
        let key: ciborium::value::Value =
            ciborium::from_reader(&mut key_bytes).map_err(|e| bad(format!("COSE key: {e}")))?;
        Some((id, key))
    } else {
        None
    };
    Ok(AuthData {
        rp_id_hash: &d[..32],
        flags,
        sign_count,
        attested,
    })
}

fn cose_field(
    map: &[(ciborium::value::Value, ciborium::value::Value)],
    label: i64,
) -> Option<&ciborium::value::Value> {
    map.iter()
        .find(|(k, _)| k.as_integer().and_then(|i| i64::try_from(i).ok()) == Some(label))
        .map(|(_, v)| v)
}

fn cose_int(map: &[(ciborium::value::Value, ciborium::value::Value)], label: i64) -> Option<i64> {
    cose_field(map, label)?
        .as_integer()
        .and_then(|i| i64::try_from(i).ok())
}

fn cose_bytes(
    map: &[(ciborium::value::Value, ciborium::value::Value)],
    label: i64,
) -> Option<&Vec<u8>> {
    cose_field(map, label)?.as_bytes()
}

/// The public key in a COSE key (RFC 9053): EC2/ES256/P-256 or OKP/EdDSA/Ed25519.
fn public_key(cose: &ciborium::value::Value) -> Result<PublicKey> {
    let map = cose.as_map().ok_or_else(|| bad("COSE key is not a map"))?;
    let (kty, alg) = (cose_int(map, 1), cose_int(map, 3));
    match (kty, alg, cose_int(map, -1)) {
        (Some(2), Some(-7), Some(1)) => {
            let (x, y) = (cose_bytes(map, -2), cose_bytes(map, -3));
            let (Some(x), Some(y)) = (x, y) else {
                return Err(bad("EC2 key without x and y"));
            };
            if x.len() != 32 || y.len() != 32 {
                return Err(bad("EC2 coordinates are not 32 bytes"));
            }
            let point = [&[0x04][..], x, y].concat();
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                .map_err(|_| bad("EC2 point not on P-256"))?;
            Ok(PublicKey::Es256 {
                point: b64url(&point),
            })
        }
        (Some(1), Some(-8), Some(6)) => {
            let x = cose_bytes(map, -2).ok_or_else(|| bad("OKP key without x"))?;
            let key: [u8; 32] = x
                .as_slice()
                .try_into()
                .map_err(|_| bad("Ed25519 key is not 32 bytes"))?;
            ed25519_dalek::VerifyingKey::from_bytes(&key)
                .map_err(|_| bad("not an Ed25519 point"))?;
            Ok(PublicKey::Ed25519 { key: b64url(&key) })
        }
        other => Err(WebAuthnError::Unsupported(format!(
            "kty/alg/crv {other:?} (ES256 and EdDSA are)"
        ))),
    }
}

impl RelyingParty {
    fn check_client(&self, client_data_json: &[u8], kind: &str, challenge: &[u8]) -> Result<()> {
        if client_data_json.len() > MAX_FIELD {
            return Err(bad("client data"));
        }
        let c: ClientData = serde_json::from_slice(client_data_json)
            .map_err(|e| bad(format!("client data: {e}")))?;
        if c.kind != kind {
            return Err(reject(format!(
                "client data type {:?}, expected {kind}",
                c.kind
            )));
        }
        if from_b64url(&c.challenge, "challenge")? != challenge {
            return Err(reject("the challenge is not the one this node issued"));
        }
        if !self.origins.contains(&c.origin) {
            return Err(reject(format!(
                "origin {} is not one of this relying party's",
                c.origin
            )));
        }
        Ok(())
    }

    fn check_auth(&self, a: &AuthData<'_>) -> Result<()> {
        if a.rp_id_hash != Sha256::digest(self.id.as_bytes()).as_slice() {
            return Err(reject("the authenticator data is for another RP ID"));
        }
        if a.flags & UP == 0 {
            return Err(reject("the user was not present"));
        }
        if self.require_user_verification && a.flags & UV == 0 {
            return Err(reject("the user was not verified"));
        }
        Ok(())
    }

    /// The options for `navigator.credentials.create({ publicKey })` (binary fields in
    /// base64url): a discoverable credential for `user_id` (at most 64 bytes, no personal
    /// data), ES256 or EdDSA, no attestation.
    pub fn registration_options(
        &self,
        user_id: &[u8],
        user_name: &str,
        challenge: &[u8],
    ) -> serde_json::Value {
        serde_json::json!({
            "rp": { "id": self.id, "name": self.name },
            "user": { "id": b64url(user_id), "name": user_name, "displayName": user_name },
            "challenge": b64url(challenge),
            "pubKeyCredParams": [{ "type": "public-key", "alg": -8 }, { "type": "public-key", "alg": -7 }],
            "timeout": 120_000,
            "attestation": "none",
            "authenticatorSelection": {
                "residentKey": "required",
                "requireResidentKey": true,
                "userVerification": if self.require_user_verification { "required" } else { "preferred" },
            },
        })
    }

    /// The options for `navigator.credentials.get({ publicKey })`.
    pub fn login_options(&self, challenge: &[u8]) -> serde_json::Value {
        serde_json::json!({
            "rpId": self.id,
            "challenge": b64url(challenge),
            "timeout": 120_000,
            "userVerification": if self.require_user_verification { "required" } else { "preferred" },
        })
    }

    /// Verifies a registration response (`clientDataJSON` and `attestationObject`, raw
    /// bytes) to the `challenge` issued: the new credential.
    pub fn verify_registration(
        &self,
        client_data_json: &[u8],
        attestation_object: &[u8],
        challenge: &[u8],
    ) -> Result<Credential> {
        self.check_client(client_data_json, "webauthn.create", challenge)?;
        if attestation_object.len() > MAX_FIELD {
            return Err(bad("attestation object"));
        }
        let obj: ciborium::value::Value = ciborium::from_reader(attestation_object)
            .map_err(|e| bad(format!("attestation object: {e}")))?;
        let map = obj
            .as_map()
            .ok_or_else(|| bad("attestation object is not a map"))?;
        let auth = map
            .iter()
            .find(|(k, _)| k.as_text() == Some("authData"))
            .and_then(|(_, v)| v.as_bytes())
            .ok_or_else(|| bad("attestation object without authData"))?;
        let a = parse_auth_data(auth)?;
        self.check_auth(&a)?;
        let (id, cose) = a
            .attested
            .as_ref()
            .ok_or_else(|| reject("no attested credential"))?;
        Ok(Credential {
            id: b64url(id),
            public_key: public_key(cose)?,
            sign_count: a.sign_count,
            user_verified: a.flags & UV != 0,
            backup_eligible: a.flags & BE != 0,
        })
    }

    /// Verifies a login (assertion) by `credential` to the `challenge` issued; returns the
    /// new signature counter to store.
    pub fn verify_login(
        &self,
        credential: &Credential,
        client_data_json: &[u8],
        authenticator_data: &[u8],
        signature: &[u8],
        challenge: &[u8],
    ) -> Result<u32> {
        self.check_client(client_data_json, "webauthn.get", challenge)?;
        let a = parse_auth_data(authenticator_data)?;
        self.check_auth(&a)?;
        let message = [
            authenticator_data,
            Sha256::digest(client_data_json).as_slice(),
        ]
        .concat();
        match &credential.public_key {
            PublicKey::Es256 { point } => {
                use p256::ecdsa::signature::Verifier;
                let key =
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&from_b64url(point, "stored key")?)
                        .map_err(|_| bad("stored key"))?;
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| WebAuthnError::Signature)?;
                key.verify(&message, &sig)
                    .map_err(|_| WebAuthnError::Signature)?;
            }
            PublicKey::Ed25519 { key } => {
                let bytes: [u8; 32] = from_b64url(key, "stored key")?
                    .try_into()
                    .map_err(|_| bad("stored key"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                    .map_err(|_| bad("stored key"))?;
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| WebAuthnError::Signature)?;
                key.verify_strict(&message, &sig)
                    .map_err(|_| WebAuthnError::Signature)?;
            }
        }
        // A counter that does not grow means a cloned authenticator (unless both are 0:
        // the authenticator keeps none, as synced passkeys do).
        if (a.sign_count != 0 || credential.sign_count != 0)
            && a.sign_count <= credential.sign_count
        {
            return Err(reject(format!(
                "signature counter {} after {}: a cloned authenticator?",
                a.sign_count, credential.sign_count
            )));
        }
        Ok(a.sign_count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ciborium::value::Value;
    use p256::ecdsa::signature::Signer;

    fn rp() -> RelyingParty {
        RelyingParty {
            id: "localhost".into(),
            name: "KwaaiNet".into(),
            origins: vec!["http://localhost:8080".into()],
            require_user_verification: true,
        }
    }

    fn client(kind: &str, challenge: &[u8], origin: &str) -> Vec<u8> {
        serde_json::to_vec(
            &serde_json::json!({ "type": kind, "challenge": b64url(challenge), "origin": origin }),
        )
        .unwrap()
    }

    fn cbor(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    /// An ES256 authenticator: its key, and authenticator data for `rp_id` with `flags`.
    struct Authenticator {
        key: p256::ecdsa::SigningKey,
        id: Vec<u8>,
    }

    impl Authenticator {
        fn new() -> Self {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).unwrap();
            Self {
                key: p256::ecdsa::SigningKey::from_slice(&seed).unwrap(),
                id: vec![7; 16],
            }
        }

        fn auth_data(&self, rp_id: &str, flags: u8, count: u32, attested: bool) -> Vec<u8> {
            let mut d = Sha256::digest(rp_id.as_bytes()).to_vec();
            d.push(flags | if attested { AT } else { 0 });
            d.extend_from_slice(&count.to_be_bytes());
            if attested {
                d.extend_from_slice(&[0; 16]);
                d.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
                d.extend_from_slice(&self.id);
                let point = self.key.verifying_key().to_encoded_point(false);
                let cose = Value::Map(vec![
                    (Value::Integer(1.into()), Value::Integer(2.into())),
                    (Value::Integer(3.into()), Value::Integer((-7).into())),
                    (Value::Integer((-1).into()), Value::Integer(1.into())),
                    (
                        Value::Integer((-2).into()),
                        Value::Bytes(point.x().unwrap().to_vec()),
                    ),
                    (
                        Value::Integer((-3).into()),
                        Value::Bytes(point.y().unwrap().to_vec()),
                    ),
                ]);
                d.extend_from_slice(&cbor(&cose));
            }
            d
        }

        fn attestation(&self, auth: Vec<u8>) -> Vec<u8> {
            cbor(&Value::Map(vec![
                (Value::Text("fmt".into()), Value::Text("none".into())),
                (Value::Text("attStmt".into()), Value::Map(vec![])),
                (Value::Text("authData".into()), Value::Bytes(auth)),
            ]))
        }

        fn sign(&self, auth: &[u8], client: &[u8]) -> Vec<u8> {
            let msg = [auth, Sha256::digest(client).as_slice()].concat();
            let sig: p256::ecdsa::Signature = self.key.sign(&msg);
            sig.to_der().as_bytes().to_vec()
        }
    }

    const ORIGIN: &str = "http://localhost:8080";

    #[test]
    fn a_passkey_registers_and_logs_in_and_replays_and_forgeries_fail() {
        let rp = rp();
        let a = Authenticator::new();
        let ch = [1u8; 32];
        let att = a.attestation(a.auth_data("localhost", UP | UV, 0, true));
        let cred = rp
            .verify_registration(&client("webauthn.create", &ch, ORIGIN), &att, &ch)
            .unwrap();
        assert_eq!(cred.id, b64url(&a.id));
        assert!(cred.user_verified);

        // Login: a fresh challenge, a growing counter.
        let ch2 = [2u8; 32];
        let auth = a.auth_data("localhost", UP | UV, 5, false);
        let cd = client("webauthn.get", &ch2, ORIGIN);
        let sig = a.sign(&auth, &cd);
        assert_eq!(rp.verify_login(&cred, &cd, &auth, &sig, &ch2).unwrap(), 5);

        // The same assertion for another challenge, another origin, another RP, without
        // user verification, signed by another key, or with a counter that went back.
        assert!(rp.verify_login(&cred, &cd, &auth, &sig, &[3; 32]).is_err());
        let evil = client("webauthn.get", &ch2, "http://evil.example");
        assert!(
            rp.verify_login(&cred, &evil, &auth, &a.sign(&auth, &evil), &ch2)
                .is_err()
        );
        let other_rp = a.auth_data("example.org", UP | UV, 6, false);
        assert!(
            rp.verify_login(&cred, &cd, &other_rp, &a.sign(&other_rp, &cd), &ch2)
                .is_err()
        );
        let no_uv = a.auth_data("localhost", UP, 6, false);
        assert!(
            rp.verify_login(&cred, &cd, &no_uv, &a.sign(&no_uv, &cd), &ch2)
                .is_err()
        );
        let thief = Authenticator::new();
        assert_eq!(
            rp.verify_login(&cred, &cd, &auth, &thief.sign(&auth, &cd), &ch2),
            Err(WebAuthnError::Signature)
        );
        let seen = Credential {
            sign_count: 5,
            ..cred.clone()
        };
        assert!(
            rp.verify_login(&seen, &cd, &auth, &sig, &ch2).is_err(),
            "a counter that did not grow"
        );
        // A registration answer used to log in, and garbage.
        assert!(
            rp.verify_login(
                &cred,
                &client("webauthn.create", &ch2, ORIGIN),
                &auth,
                &sig,
                &ch2
            )
            .is_err()
        );
        assert!(
            rp.verify_registration(&client("webauthn.create", &ch, ORIGIN), b"\xff\x00", &ch)
                .is_err()
        );
        assert!(rp.verify_registration(b"{", &att, &ch).is_err());
    }
}
