//! The log on disk: appends, reopening, proofs against its signed checkpoints, and every
//! kind of tampering with the stored files found.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use kwaainet_audit::proof::{verify_consistency, verify_inclusion};
use kwaainet_audit::store::{self, AuditLog, CHECKPOINTS, ENTRIES, SALTS};
use kwaainet_audit::{Checkpoint, Decision, Entry, Error, Label, Op, Signer, Tree};

struct Key(ed25519_dalek::SigningKey);

impl Signer for Key {
    fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer as _;
        self.0.sign(msg).to_bytes()
    }
}

const ORIGIN: &str = "kwaainet/audit/test-node";

fn key() -> Box<Key> {
    Box::new(Key(ed25519_dalek::SigningKey::from_bytes(&[3; 32])))
}

fn pk() -> [u8; 32] {
    key().public_key()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kwaainet-audit-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

/// A log of `n` entries: policy decisions about one subject, alternately allowed and refused.
fn log_of(name: &str, n: u64) -> (PathBuf, AuditLog) {
    let dir = temp_dir(name);
    let mut log = AuditLog::open(&dir, ORIGIN, key()).unwrap();
    let who = log.commit("alice@example.org").unwrap();
    for i in 0..n {
        let mut e = Entry::new(1_700_000_000_000 + i, Op::Policy);
        e.subject = Some(who);
        e.purpose = Some(Label::new("inference").unwrap());
        e.decision = Some(if i % 2 == 0 {
            Decision::Allow
        } else {
            Decision::Deny
        });
        assert_eq!(log.append(&e).unwrap(), i);
    }
    (dir, log)
}

fn lines(dir: &std::path::Path) -> Vec<String> {
    fs::read_to_string(dir.join(ENTRIES))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &std::path::Path, lines: &[String]) {
    fs::write(dir.join(ENTRIES), lines.join("\n") + "\n").unwrap();
}

fn tampered(dir: &std::path::Path) -> String {
    match store::verify(dir, ORIGIN, &pk()) {
        Err(Error::Tampered(why)) => {
            // Opening for appends refuses it too.
            assert!(AuditLog::open(dir, ORIGIN, key()).is_err());
            why
        }
        other => panic!("tampering not found: {other:?}"),
    }
}

#[test]
fn a_log_reopens_verifies_and_proves_inclusion_and_consistency() {
    let (dir, log) = log_of("sound", 10);
    let (cp, note) = log.checkpoint();
    assert_eq!(cp.size, 10);
    let opened = Checkpoint::open(note, ORIGIN, &pk()).unwrap();
    assert_eq!(&opened, cp);
    // Every entry's bytes are in the signed tree.
    for (i, bytes) in log.entries(0, 10).unwrap().iter().enumerate() {
        let i = i as u64;
        let proof = log.prove_inclusion(i).unwrap();
        verify_inclusion(&Tree::leaf(bytes), i, cp.size, &cp.root, &proof).unwrap();
        assert!(Entry::parse(i, bytes).is_ok());
    }
    // A client that kept the checkpoint of size 4 sees the log only grew.
    let old = {
        let notes = fs::read_to_string(dir.join(CHECKPOINTS)).unwrap();
        let line = notes.lines().nth(4).unwrap(); // size 0 first, then one per entry
        let note: serde_json::Value = serde_json::from_str(line).unwrap();
        Checkpoint::open(note["note"].as_str().unwrap(), ORIGIN, &pk()).unwrap()
    };
    assert_eq!(old.size, 4);
    let proof = log.prove_consistency(4).unwrap();
    verify_consistency(4, &old.root, 10, &cp.root, &proof).unwrap();
    let root = cp.root;
    drop(log);

    let report = store::verify(&dir, ORIGIN, &pk()).unwrap();
    assert_eq!(
        (report.entries, report.checkpoints, report.signed_size),
        (10, 11, 10)
    );
    let mut log = AuditLog::open(&dir, ORIGIN, key()).unwrap();
    assert_eq!(log.checkpoint().0.root, root);
    // One writer at a time.
    assert!(matches!(
        AuditLog::open(&dir, ORIGIN, key()),
        Err(Error::Locked(_))
    ));
    log.append(&Entry::new(1, Op::Export)).unwrap();
    assert_eq!(store::verify(&dir, ORIGIN, &pk()).unwrap().entries, 11);
    // Another key, or another log's name: nothing verifies.
    let other = Key(ed25519_dalek::SigningKey::from_bytes(&[4; 32])).public_key();
    assert!(store::verify(&dir, ORIGIN, &other).is_err());
    assert!(store::verify(&dir, "kwaainet/audit/other", &pk()).is_err());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_edited_entry_is_found() {
    let (dir, log) = log_of("edited", 6);
    drop(log);
    let mut l = lines(&dir);
    assert!(l[3].contains("\"deny\""));
    l[3] = l[3].replace("\"deny\"", "\"allow\"");
    write_lines(&dir, &l);
    let why = tampered(&dir);
    assert!(why.contains("entry 3"), "{why}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_removed_entry_is_found() {
    let (dir, log) = log_of("removed", 6);
    drop(log);
    let mut l = lines(&dir);
    l.remove(2);
    write_lines(&dir, &l);
    let why = tampered(&dir);
    assert!(why.contains("entry 2"), "{why}");
    // The last one removed: the checkpoints sign more entries than there are.
    let (dir2, log) = log_of("removed-last", 6);
    drop(log);
    let mut l = lines(&dir2);
    l.pop();
    write_lines(&dir2, &l);
    assert!(tampered(&dir2).contains("removed"));
    fs::remove_dir_all(dir).unwrap();
    fs::remove_dir_all(dir2).unwrap();
}

#[test]
fn reordered_entries_are_found() {
    let (dir, log) = log_of("reordered", 6);
    drop(log);
    let mut l = lines(&dir);
    l.swap(1, 4);
    write_lines(&dir, &l);
    assert!(tampered(&dir).contains("entry 1"));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_edited_checkpoint_is_found() {
    let (dir, log) = log_of("checkpoint", 3);
    drop(log);
    let notes = fs::read_to_string(dir.join(CHECKPOINTS)).unwrap();
    // Claim a bigger log under the old signature.
    let edited = notes.replacen("\\n3\\n", "\\n4\\n", 1);
    assert_ne!(edited, notes);
    fs::write(dir.join(CHECKPOINTS), edited).unwrap();
    assert!(tampered(&dir).contains("signature"));
    // Garbage in the file.
    fs::write(dir.join(CHECKPOINTS), notes.clone() + "{not json\n").unwrap();
    tampered(&dir);
    // Checkpoints out of order.
    let mut l: Vec<&str> = notes.lines().collect();
    l.swap(1, 3);
    fs::write(dir.join(CHECKPOINTS), l.join("\n") + "\n").unwrap();
    tampered(&dir);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_crash_mid_write_loses_nothing_that_was_signed() {
    let (dir, mut log) = log_of("crash", 4);
    let too_many = vec![Entry::new(0, Op::Read); store::MAX_BATCH + 1];
    assert!(log.append_all(&too_many).is_err());
    assert_eq!(log.len(), 4, "nothing of a refused append is written");
    drop(log);
    // A torn last line (no newline): reported, cut off on open.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(dir.join(ENTRIES))
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"time_ms\":1,\"op\":\"re").unwrap();
    drop(f);
    let r = store::verify(&dir, ORIGIN, &pk()).unwrap();
    assert_eq!((r.entries, r.torn), (4, 21));
    let log = AuditLog::open(&dir, ORIGIN, key()).unwrap();
    assert_eq!(log.len(), 4);
    drop(log);
    assert_eq!(store::verify(&dir, ORIGIN, &pk()).unwrap().torn, 0);
    // An entry written, its checkpoint not: reported unsigned, signed on open.
    let mut l = lines(&dir);
    l.push(String::from_utf8(Entry::new(5, Op::Read).to_bytes()).unwrap());
    write_lines(&dir, &l);
    assert_eq!(store::verify(&dir, ORIGIN, &pk()).unwrap().unsigned, 1);
    let log = AuditLog::open(&dir, ORIGIN, key()).unwrap();
    assert_eq!(log.checkpoint().0.size, 5);
    drop(log);
    assert_eq!(store::verify(&dir, ORIGIN, &pk()).unwrap().unsigned, 0);
    // The checkpoints file removed: the entries are no longer vouched for.
    let notes = fs::read(dir.join(CHECKPOINTS)).unwrap();
    fs::remove_file(dir.join(CHECKPOINTS)).unwrap();
    assert!(tampered(&dir).contains("no checkpoint"));
    fs::write(dir.join(CHECKPOINTS), notes).unwrap();
    // A line that is not an entry (no personal free text gets in either): refused.
    let mut l = lines(&dir);
    l.push(r#"{"time_ms":1,"op":"read","note":"alice@example.org"}"#.into());
    write_lines(&dir, &l);
    assert!(matches!(
        store::verify(&dir, ORIGIN, &pk()),
        Err(Error::Entry { index: 5, .. })
    ));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn salts_persist_privately_and_forgetting_one_unlinks_its_entries() {
    let (dir, mut log) = log_of("salts", 2);
    let who = log.commit("alice@example.org").unwrap();
    let salt = log.salt("alice@example.org").unwrap().clone();
    let first = Entry::parse(0, &log.entries(0, 1).unwrap()[0]).unwrap();
    assert_eq!(first.subject, Some(who));
    assert!(who.opens_to(&salt, b"alice@example.org"));
    // The identifier is nowhere in the files.
    for f in [ENTRIES, CHECKPOINTS, SALTS] {
        let text = fs::read_to_string(dir.join(f)).unwrap();
        assert!(!text.contains("alice"), "{f} names the subject");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join(SALTS)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(log);
    let mut log = AuditLog::open(&dir, ORIGIN, key()).unwrap();
    assert_eq!(log.commit("alice@example.org").unwrap(), who, "salt kept");
    assert!(log.forget("alice@example.org").unwrap());
    drop(log);
    let mut log = AuditLog::open(&dir, ORIGIN, key()).unwrap();
    assert!(log.salt("alice@example.org").is_none());
    assert_ne!(log.commit("alice@example.org").unwrap(), who, "unlinked");
    drop(log);
    // The log itself still verifies: erasure shreds the link, not the history.
    assert_eq!(store::verify(&dir, ORIGIN, &pk()).unwrap().entries, 2);
    fs::remove_dir_all(dir).unwrap();
}
