//! `kwaainet audit verify` and `kwaainet compliance report`: the node's audit log checked
//! offline against its signed checkpoints, and summarised over a time range for auditors.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use kwaainet_audit::store;
use kwaainet_audit::{Entry, report};
use kwaainet_p2p::libp2p::PeerId;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::{dir_of, origin, public_key_of};

/// Which log: the node (by key file, peer id or did:key) and its folder.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    id: crate::node::IdentityArgs,
    /// The node whose log it is, by peer id or did:key (default: this machine's node, from
    /// its identity key).
    #[arg(long)]
    node: Option<String>,
    /// The log's folder (default: `audit/<peer id>/` beside the identity key).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `kwaainet audit`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the stored log against its signed checkpoints: any edited, removed or
    /// reordered entry, or forged checkpoint, is reported and the command fails.
    Verify(LogArgs),
}

/// Arguments of `kwaainet compliance report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Start: a UTC day (`2026-12-01`) or an RFC 3339 time (default: the log's start).
    #[arg(long)]
    from: Option<String>,
    /// End: a UTC day, included (`2026-12-07`), or an RFC 3339 time, excluded (default: now).
    #[arg(long)]
    to: Option<String>,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

/// `kwaainet compliance`.
#[derive(Debug, clap::Subcommand)]
pub enum ComplianceCommand {
    /// The audit report for a time range: the log verified, then what was done, for which
    /// purposes, allowed or refused and why, in which regions, for how many subjects.
    Report(ReportArgs),
}

/// The node, its log's folder and name.
fn locate(args: &LogArgs) -> anyhow::Result<(PeerId, PathBuf)> {
    let key_path = crate::node::identity_path(args.id.identity.as_deref(), None)?;
    let peer: PeerId = match &args.node {
        Some(n) if n.starts_with("did:key:") => kwaainet_p2p::did::to_peer_id(n)?,
        Some(n) => n.parse().context("--node: not a peer id or did:key")?,
        None => {
            let (key, _) = kwaainet_p2p::identity::load_or_create(&key_path)?;
            key.public().to_peer_id()
        }
    };
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| dir_of(key_path.parent().unwrap_or(Path::new(".")), &peer));
    anyhow::ensure!(
        dir.join(store::ENTRIES).exists() || dir.join(store::CHECKPOINTS).exists(),
        "no audit log in {}",
        dir.display()
    );
    Ok((peer, dir))
}

fn verify(peer: &PeerId, dir: &Path) -> anyhow::Result<store::Report> {
    store::verify(dir, &origin(peer), &public_key_of(peer)?)
        .with_context(|| format!("audit log {}", dir.display()))
}

/// Runs `kwaainet audit …`.
pub fn audit(cmd: &AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::Verify(args) = cmd;
    let (peer, dir) = locate(args)?;
    let r = verify(&peer, &dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "audit log {}: {} entries, {} signed checkpoints, all consistent; the latest signs {} entries",
        dir.display(),
        r.entries,
        r.checkpoints,
        r.signed_size
    )?;
    if r.unsigned > 0 {
        writeln!(
            out,
            "{} entries after the latest checkpoint (a stop between the two writes; signed when the node opens the log)",
            r.unsigned
        )?;
    }
    if r.torn > 0 {
        writeln!(
            out,
            "{} bytes of a torn last entry (cut off when the node opens the log)",
            r.torn
        )?;
    }
    Ok(())
}

/// Milliseconds since the epoch of a UTC day (its start, or with `end` the next day's) or
/// an RFC 3339 time.
fn parse_time(s: &str, end: bool) -> anyhow::Result<u64> {
    let t = if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        t
    } else {
        let day = time::Date::parse(
            s,
            &time::format_description::parse_borrowed::<2>("[year]-[month]-[day]")?,
        )
        .with_context(|| format!("{s:?}: expected a day (2026-12-01) or an RFC 3339 time"))?;
        let day = if end {
            day.next_day().context("day out of range")?
        } else {
            day
        };
        day.midnight().assume_utc()
    };
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).context("a time before 1970")
}

fn show_time(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Runs `kwaainet compliance …`.
pub fn compliance(cmd: &ComplianceCommand) -> anyhow::Result<()> {
    let ComplianceCommand::Report(args) = cmd;
    let (peer, dir) = locate(&args.log)?;
    let checked = verify(&peer, &dir)?;
    let from = args
        .from
        .as_deref()
        .map(|s| parse_time(s, false))
        .transpose()?
        .unwrap_or(0);
    let to = match args.to.as_deref() {
        Some(s) => parse_time(s, true)?,
        None => crate::audit::now_ms().saturating_add(1),
    };
    anyhow::ensure!(from < to, "--from must be before --to");
    let path = dir.join(store::ENTRIES);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    // Only the entries `verify` counted: a last line still being written is not one.
    let entries = text
        .lines()
        .take(usize::try_from(checked.entries)?)
        .enumerate()
        .map(|(i, l)| Entry::parse(i as u64, l.as_bytes()).map(|e| (i as u64, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let r = report::summarize(entries, from, to);
    let mut out = std::io::stdout().lock();
    if args.json {
        let doc = serde_json::json!({
            "node": peer.to_string(),
            "log": { "entries": checked.entries, "checkpoints": checked.checkpoints, "verified": true },
            "report": r,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "Audit report of node {peer}")?;
    writeln!(
        out,
        "log: {} entries under {} signed checkpoints, verified",
        checked.entries, checked.checkpoints
    )?;
    writeln!(out, "range: {} to {}", show_time(from), show_time(to))?;
    match (r.first_index, r.last_index) {
        (Some(a), Some(b)) => writeln!(
            out,
            "entries: {} (log entries {a} to {b}), {} distinct subjects",
            r.entries, r.subjects
        )?,
        _ => writeln!(out, "entries: none")?,
    }
    for (title, rows) in [("operation", &r.by_op), ("purpose", &r.by_purpose)] {
        for (k, t) in rows {
            writeln!(
                out,
                "  {title} {k}: {} allowed, {} refused{}",
                t.allow,
                t.deny,
                if t.none > 0 {
                    format!(", {} other", t.none)
                } else {
                    String::new()
                }
            )?;
        }
    }
    for (k, n) in &r.by_reason {
        writeln!(out, "  reason {k}: {n}")?;
    }
    for (k, n) in &r.by_region {
        writeln!(out, "  region {k}: {n}")?;
    }
    Ok(())
}
