//! Who may call the API and how often: optional API keys (`Authorization: Bearer`),
//! compared as SHA-256 digests in constant time and never logged, and a token bucket per
//! key (or per client address when no keys are set).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The API keys accepted (none: the API is open, which the node allows on loopback only).
#[derive(Clone, Default)]
pub struct Keys {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys, nor their digests.
        write!(f, "Keys({} configured)", self.digests.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Keys {
    /// Accepts these keys (empty strings are ignored).
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Self {
        Self {
            digests: keys
                .into_iter()
                .filter(|k| !k.as_ref().is_empty())
                .map(|k| digest(k.as_ref()))
                .collect(),
        }
    }

    /// How the audit log names the client that used key `index`: the key's SHA-256 (the
    /// log commits to it with a salt, so even the digest is not written).
    pub fn audit_name(&self, index: usize) -> String {
        let hex: String = self.digests.get(index).map_or_else(String::new, |d| {
            d.iter().map(|b| format!("{b:02x}")).collect()
        });
        format!("api-key:{hex}")
    }

    /// Whether any key is required.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks an `Authorization` header; on success, which key (its index) was used, for
    /// rate limiting (`None` when no keys are set).
    pub fn check(&self, authorization: Option<&str>) -> Result<Option<usize>, ApiError> {
        if !self.required() {
            return Ok(None);
        }
        let Some(value) = authorization else {
            return Err(ApiError::unauthorized(
                "this node requires an API key: send `Authorization: Bearer <key>`",
            ));
        };
        let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <key>`",
            ));
        };
        let d = digest(token.trim());
        let mut found = None;
        // Every key is compared, in constant time, whatever matches.
        for (i, k) in self.digests.iter().enumerate() {
            if bool::from(k.ct_eq(&d)) {
                found = Some(i);
            }
        }
        found
            .map(Some)
            .ok_or_else(|| ApiError::unauthorized("incorrect API key"))
    }
}

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Client {
    /// The key with this index.
    Key(usize),
    /// A client address (no keys configured).
    Addr(IpAddr),
}

/// Most clients tracked at once; the idlest are forgotten beyond it.
const MAX_CLIENTS: usize = 4096;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A token bucket per client: `per_minute` requests a minute with bursts of `burst`.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    burst: u32,
    buckets: Mutex<HashMap<Client, Bucket>>,
}

impl RateLimit {
    /// `per_minute` 0 turns limiting off.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one request of `client`'s budget, or says how long to wait.
    pub fn take(&self, client: Client) -> Result<(), ApiError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let rate = f64::from(self.per_minute) / 60.0;
        let now = Instant::now();
        let Ok(mut map) = self.buckets.lock() else {
            return Ok(());
        };
        if map.len() >= MAX_CLIENTS && !map.contains_key(&client) {
            // Forget buckets that have refilled (they hold nothing a new one would not).
            let burst = f64::from(self.burst);
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if map.len() >= MAX_CLIENTS {
                return Err(ApiError::rate_limited(Duration::from_secs(1)));
            }
        }
        let b = map.entry(client).or_insert(Bucket {
            tokens: f64::from(self.burst),
            at: now,
        });
        b.tokens =
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(f64::from(self.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / rate;
            Err(ApiError::rate_limited(Duration::from_secs_f64(wait.ceil())))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_checked_and_never_shown() {
        let k = Keys::new(["s3cret", "", "other"]);
        assert!(k.required());
        assert_eq!(k.check(Some("Bearer s3cret")).unwrap(), Some(0));
        assert_eq!(k.check(Some("Bearer other")).unwrap(), Some(1));
        for bad in [
            None,
            Some("Bearer nope"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            assert_eq!(k.check(bad).unwrap_err().status, 401, "{bad:?}");
        }
        assert!(!format!("{k:?}").contains("s3cret"));
        assert_eq!(Keys::new(Vec::<String>::new()).check(None).unwrap(), None);
    }

    #[test]
    fn buckets_refuse_bursts_beyond_the_limit() {
        let r = RateLimit::new(60, 3);
        let c = Client::Key(0);
        for _ in 0..3 {
            r.take(c).unwrap();
        }
        let e = r.take(c).unwrap_err();
        assert_eq!(e.status, 429);
        assert!(e.retry_after.unwrap() >= Duration::from_secs(1));
        // Another client has its own budget.
        r.take(Client::Key(1)).unwrap();
        // Off means off.
        let off = RateLimit::new(0, 1);
        for _ in 0..100 {
            off.take(c).unwrap();
        }
    }
}
