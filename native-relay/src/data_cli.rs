//! `kwaainet data` and `kwaainet gdpr`: the operator's side of the node's data service
//! (`data.rs`). Each command signs one request with the node's identity key and sends it to
//! the running node's `POST /api/v1/data` on loopback; `gdpr verify` checks an export
//! bundle or an erasure receipt offline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;
use kwaainet_compliance::export::{self, Bundle, ErasureReceipt};
use kwaainet_p2p::identity;
use serde_json::{Value, json};

use crate::node::{DEFAULT_HTTP, identity_path};

/// Where the node is and which key signs.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// HTTP address of the running node.
    #[arg(long, env = "KWAAINET_HTTP", default_value_t = DEFAULT_HTTP)]
    pub http: SocketAddr,
    /// The node's identity key file (the operator's key signs the requests).
    #[arg(long, env = "KWAAINET_IDENTITY")]
    pub identity: Option<PathBuf>,
}

/// `kwaainet data …`: the operator's vault on the running node.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Seal a file under a label and store it (replicated to peers as ciphertext).
    Put {
        /// The file.
        file: PathBuf,
        /// What it is (the data key it is sealed under; erasing is per label).
        #[arg(long, default_value = "files")]
        label: String,
        #[command(flatten)]
        target: Target,
    },
    /// Fetch and open an item, to stdout or a file.
    Get {
        /// Its CID.
        cid: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// List the items.
    Ls {
        #[command(flatten)]
        target: Target,
    },
    /// Delete an item here and on every peer holding it (their receipts are printed).
    Rm {
        /// Its CID.
        cid: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `kwaainet gdpr …`: the operator's data rights on the running node, and offline checks.
#[derive(Debug, Subcommand)]
pub enum GdprCommand {
    /// Export everything the node holds about its operator (Art. 15/20) as a signed bundle.
    Export {
        /// Write the bundle here.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Erase the operator's data (Art. 17): blobs here and on peers, data keys, the audit
    /// salt. Prints the node's signed receipt.
    Erase {
        /// Required: there is no undo.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Check an export bundle or an erasure receipt offline.
    Verify {
        /// The file.
        file: PathBuf,
    },
}

/// One POST of `body` to `path` on `addr`; the status and the JSON answer.
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> anyhow::Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("is a node running? connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.take(512 << 20).read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP reply")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body).context("malformed chunked body")?;
    }
    let v = serde_json::from_slice(&body).context("the node's answer is not JSON")?;
    Ok((status, v))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).ok()?.trim(), 16).ok()?;
        b = &b[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Signs `action` with the operator's key and sends it; the answer on 200, else the error.
fn ask(target: &Target, action: &str, params: Value) -> anyhow::Result<Value> {
    let path = identity_path(target.identity.as_deref(), None)?;
    if !path.exists() {
        bail!(
            "no identity key at {}: start the node once first",
            path.display()
        );
    }
    let (key, _) = identity::load_or_create(&path)?;
    let did = kwaainet_p2p::did::from_peer_id(&key.public().to_peer_id())?;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no entropy: {e}"))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let signed = kwaainet_p2p::request::sign(&key, &did, action, params, now, nonce)?;
    let (status, v) = post(target.http, "/api/v1/data", &serde_json::to_vec(&signed)?)?;
    if status != 200 {
        bail!(
            "the node refused ({status}): {}",
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
        );
    }
    Ok(v)
}

/// `kwaainet data …`.
pub fn data(cmd: &DataCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        DataCommand::Put {
            file,
            label,
            target,
        } => {
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let v = ask(
                target,
                "put",
                json!({ "label": label, "data": B64.encode(bytes) }),
            )?;
            writeln!(out, "{}", v["cid"].as_str().unwrap_or_default())?;
        }
        DataCommand::Get {
            cid,
            out: to,
            target,
        } => {
            let v = ask(target, "get", json!({ "cid": cid }))?;
            let bytes = B64
                .decode(v["data"].as_str().unwrap_or_default())
                .context("the node's answer is not base64")?;
            match to {
                Some(p) => {
                    std::fs::write(p, bytes).with_context(|| format!("writing {}", p.display()))?
                }
                None => out.write_all(&bytes)?,
            }
        }
        DataCommand::Ls { target } => {
            let v = ask(target, "list", json!({}))?;
            for i in v["items"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "{}  {}  {}",
                    i["cid"].as_str().unwrap_or_default(),
                    i["label"].as_str().unwrap_or_default(),
                    i["stored_ms"]
                )?;
            }
        }
        DataCommand::Rm { cid, target } => {
            let v = ask(target, "delete", json!({ "cid": cid }))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
    }
    Ok(())
}

/// `kwaainet gdpr …`.
pub fn gdpr(cmd: &GdprCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        GdprCommand::Export { out: to, target } => {
            let v = ask(target, "export", json!({}))?;
            let bundle: Bundle =
                serde_json::from_value(v).context("the node's bundle is malformed")?;
            let checked = export::verify(&bundle).context("the node's bundle does not verify")?;
            std::fs::write(to, serde_json::to_vec_pretty(&bundle)?)
                .with_context(|| format!("writing {}", to.display()))?;
            writeln!(
                out,
                "exported {} item(s) and {} audit entr(ies) to {} (verified)",
                checked.manifest.items.len(),
                checked.entries.len(),
                to.display()
            )?;
        }
        GdprCommand::Erase { yes, target } => {
            if !yes {
                bail!("erasure cannot be undone: add --yes");
            }
            let v = ask(target, "erase", json!({}))?;
            let receipt: ErasureReceipt =
                serde_json::from_value(v).context("the node's receipt is malformed")?;
            receipt
                .verify()
                .context("the node's receipt does not verify")?;
            writeln!(out, "{}", serde_json::to_string_pretty(&receipt)?)?;
        }
        GdprCommand::Verify { file } => {
            let text =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            anyhow::ensure!(
                text.len() <= export::MAX_BUNDLE,
                "larger than {} bytes",
                export::MAX_BUNDLE
            );
            let v: Value = serde_json::from_slice(&text).context("not JSON")?;
            if v.get("erasure").is_some() {
                let r: ErasureReceipt = serde_json::from_value(v)?;
                let e = r.verify()?;
                writeln!(
                    out,
                    "erasure receipt OK: node {}, subject {}, {} blob(s) deleted, {} key(s) shredded, {} peer receipt(s), {} unconfirmed",
                    e.node,
                    e.subject,
                    e.deleted.len(),
                    e.keys_shredded.len(),
                    e.receipts.len(),
                    e.unconfirmed.len()
                )?;
                for p in &e.receipts {
                    kwaainet_storage::net::verify_receipt(p)
                        .with_context(|| format!("peer receipt of {}", p.holder))?;
                }
            } else {
                let b: Bundle = serde_json::from_value(v).context("not an export bundle")?;
                let c = export::verify(&b)?;
                writeln!(
                    out,
                    "export OK: node {}, subject {}, {} item(s), {} consent record(s), {} audit entr(ies) proven in a log of {}",
                    c.manifest.node,
                    c.manifest.subject,
                    c.manifest.items.len(),
                    c.consents.len(),
                    c.entries.len(),
                    c.log_size
                )?;
            }
        }
    }
    Ok(())
}
