//! Files only their owner may read: the node's key and its WebRTC certificate.
//!
//! - **Unix**: created with mode 0600; a file that group or others can read is refused,
//!   as ssh refuses such a key.
//! - **Windows**: created with a protected DACL that has one entry, the current user with
//!   full control, given to `CreateFileW` itself (so the secret never sits under the
//!   folder's inherited ACL); a file whose DACL lets anyone but the user,
//!   SYSTEM or the Administrators read it, or that has no DACL at all, is refused, as
//!   OpenSSH for Windows refuses such a key.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

#[cfg(windows)]
mod windows;

/// The largest private file read: keys and certificates are far smaller.
const MAX_BYTES: u64 = 4096;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::IdentityIo {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to a new file at `path` that only its owner can read; fails if it exists.
pub(crate) fn create(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    #[cfg(windows)]
    let mut f = windows::create_new_private(path).map_err(io_err(path))?;
    #[cfg(not(windows))]
    let mut f = {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        opts.open(path).map_err(io_err(path))?
    };
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

/// Reads a private file, refusing one that others can read (see the module docs).
pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    let refuse = |reason: String| Error::Identity {
        path: path.to_owned(),
        reason,
    };
    let f = fs::File::open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata().map_err(io_err(path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "permissions {:o} let others read it; run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            )));
        }
    }
    #[cfg(windows)]
    if let Some(who) = windows::foreign_reader(&f).map_err(io_err(path))? {
        return Err(refuse(format!(
            "its ACL lets {who} read it; run `icacls \"{}\" /inheritance:r /grant:r \"%USERNAME%:F\"`",
            path.display()
        )));
    }
    let len = f.metadata().map_err(io_err(path))?.len();
    if len > MAX_BYTES {
        return Err(refuse("too large to be a key".into()));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_BYTES + 1), &mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(refuse("too large to be a key".into()));
    }
    Ok(bytes)
}
