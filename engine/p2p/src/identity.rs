//! The node's persistent identity: an Ed25519 key the user owns, in a file only they can
//! read (0600 on Unix), created on first use.
//!
//! Default location: `$KWAAINET_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kwaainet`, else
//! `~/.config/kwaainet`, else (Windows, which sets no `HOME`) `%APPDATA%\kwaainet`, file
//! `identity.key` (libp2p's protobuf key encoding). On Unix a file that others can read is
//! refused rather than silently used, like ssh does; on Windows the file takes the ACL of
//! the user's profile folder it is created in (the user, SYSTEM and Administrators).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

use crate::error::{Error, Result};

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

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::IdentityIo {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to a new file at `path` readable by the owner only; fails if it exists.
fn create_private(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Reads a private file, refusing one that group or others can access.
fn read_private(path: &Path) -> Result<Vec<u8>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(io_err(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::Identity {
                path: path.to_owned(),
                reason: format!(
                    "permissions {:o} let others read it; run `chmod 600 {}`",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
    }
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() > 4096 {
        return Err(Error::Identity {
            path: path.to_owned(),
            reason: "too large to be a key".into(),
        });
    }
    Ok(bytes)
}

/// Loads the key at `path`, or creates a fresh Ed25519 key there (0600). Returns the key
/// and whether it was just created.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool)> {
    if path.exists() {
        let bytes = read_private(path)?;
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
    create_private(path, &bytes)?;
    tracing::info!(path = %path.display(), peer_id = %key.public().to_peer_id(), "created a new identity");
    Ok((key, true))
}

/// Loads the WebRTC certificate PEM at `path`, or stores `generate()`'s there (0600).
pub fn load_or_create_pem(
    path: &Path,
    generate: impl FnOnce() -> Result<String>,
) -> Result<String> {
    if path.exists() {
        let bytes = read_private(path)?;
        return String::from_utf8(bytes).map_err(|_| Error::Identity {
            path: path.to_owned(),
            reason: "not UTF-8 PEM".into(),
        });
    }
    let pem = generate()?;
    create_private(path, pem.as_bytes())?;
    Ok(pem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
        create_private(&path, b"not a key").unwrap();
        assert!(load_or_create(&path).is_err());
        fs::remove_dir_all(dir).unwrap();
    }
}
