//! A span server's measured throughput, cached on disk per model and machine: measuring
//! takes a second or two at every start otherwise, and the number only changes with the
//! model, the hardware or this program.
//!
//! The cache is `span-throughput.json` in the node's data directory (next to its identity):
//! `{ "<model id>|<machine>": tokens per second through one block }`, where the machine is
//! the CPU's name, its logical cores and this program's version.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

const FILE: &str = "span-throughput.json";
/// Most entries kept (oldest keys beyond it are dropped: a bounded file).
const MAX_ENTRIES: usize = 64;

/// What identifies this machine for the cache.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "{cpu}; {cores} threads; kwaainet {}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The throughput of `model` on this machine: from the cache in `dir`, else `measure()`d and
/// stored. A cache that cannot be read or written is only logged.
pub fn cached(
    dir: &Path,
    model: &str,
    measure: impl FnOnce() -> anyhow::Result<f64>,
) -> anyhow::Result<f64> {
    let path = dir.join(FILE);
    let key = format!("{model}|{}", machine());
    let mut entries: BTreeMap<String, f64> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(&t) = entries.get(&key)
        && t.is_finite()
        && t > 0.0
    {
        tracing::debug!(throughput = t, "span throughput from the cache");
        return Ok(t);
    }
    let t = measure().context("measuring the span's throughput")?;
    tracing::info!(
        throughput = format!("{t:.1}"),
        "span throughput measured (tokens/s per block)"
    );
    entries.insert(key, t);
    while entries.len() > MAX_ENTRIES {
        let Some(first) = entries.keys().next().cloned() else {
            break;
        };
        entries.remove(&first);
    }
    let store = || -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&entries)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    };
    if let Err(e) = store() {
        tracing::warn!(error = %e, path = %path.display(), "cannot cache the span throughput");
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn measured_once_then_read_back_per_model() {
        let dir = std::env::temp_dir().join(format!("kwaainet-throughput-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let calls = std::cell::Cell::new(0);
        let measure = |v: f64| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                Ok(v)
            }
        };
        assert_eq!(cached(&dir, "m@1", measure(42.0)).unwrap(), 42.0);
        assert_eq!(cached(&dir, "m@1", measure(7.0)).unwrap(), 42.0);
        assert_eq!(cached(&dir, "m@2", measure(7.0)).unwrap(), 7.0);
        // The second ask for m@1 came from the file.
        assert_eq!(calls.get(), 2);
        // A broken file is measured over, not an error.
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert_eq!(cached(&dir, "m@1", || Ok(5.0)).unwrap(), 5.0);
        // A failed measurement is an error.
        assert!(cached(&dir, "m@3", || anyhow::bail!("no")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
