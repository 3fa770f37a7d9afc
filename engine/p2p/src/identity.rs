//! The node's persistent identity: an Ed25519 key the user owns, in a file only they can
//! read (0600 on Unix), created on first use.
//!
//! Default location: `$KWAAINET_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kwaainet`, else
//! `~/.config/kwaainet`, else (Windows, which sets no `HOME`) `%APPDATA%\kwaainet`, file
//! `identity.key` (libp2p's protobuf key encoding). Only its owner may read it (mode 0600 on
//! Unix, a DACL naming only the user on Windows), and a file others can read is refused
//! rather than silently used, as ssh does (the `private_file` module).

use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

use crate::error::{Error, Result};
use crate::private_file;

/// File name of the key inside the config directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// File name of the WebRTC certificate (keeps `/certhash` stable across restarts).
pub const WEBRTC_CERT_FILE: &str = "webrtc-cert.pem";

/// The user's KwaaiNet config directory (see the module docs), if one can be found.
pub fn default_config_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("KWAAINET_CONFIG_DIR")
        .or_else(|| env("XDG_CONFIG_HOME").map(|d| d.join("kwaainet")))
        .or_else(|| env("HOME").map(|h| h.join(".config").join("kwaainet")));
    // Windows sets no HOME: the user's roaming application data.
    #[cfg(windows)]
    let dir = dir.or_else(|| env("APPDATA").map(|d| d.join("kwaainet")));
    dir
}

/// Loads the key at `path`, or creates a fresh Ed25519 key there (0600). Returns the key
/// and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool)> {
    if path.exists() {
        let bytes = private_file::read(path)?;
        let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| Error::Identity {
            path: path.to_owned(),
            reason: format!("not a libp2p key: {e}"),
        })?;
        return Ok((key, false));
    }
    let key = Keypair::generate_ed25519();
    let bytes = key.to_protobuf_encoding().map_err(|e| Error::Identity {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    private_file::create(path, &bytes)?;
    tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "created a new identity");
    Ok((key, true))
}

/// Loads the WebRTC certificate PEM at `path`, or stores `generate()`'s there (0600).
pub fn load_or_create_pem(
    path: &Path,
    generate: impl FnOnce() -> Result<String>,
) -> Result<String> {
    if path.exists() {
        let bytes = private_file::read(path)?;
        return String::from_utf8(bytes).map_err(|_| Error::Identity {
            path: path.to_owned(),
            reason: "not UTF-8 PEM".into(),
        });
    }
    let pem = generate()?;
    private_file::create(path, pem.as_bytes())?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::fs;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kwaainet-id-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn key_is_created_private_and_stable() {
        let dir = temp_dir("stable");
        let path = dir.join("sub").join(IDENTITY_FILE);
        let (k1, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (k2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.public().to_peer_id(), k2.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
            assert!(
                load_or_create(&path).is_err(),
                "a world-readable key must be refused"
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn garbage_key_file_is_an_error_not_a_panic() {
        let dir = temp_dir("garbage");
        let path = dir.join(IDENTITY_FILE);
        private_file::create(&path, b"not a key").unwrap();
        assert!(load_or_create(&path).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
