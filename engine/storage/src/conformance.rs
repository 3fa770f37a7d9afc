//! The conformance suite: what every [`StorageProvider`] must do, run against each backend
//! (memory and file here, the network backend across three nodes, IndexedDB in a page).
//!
//! Three parties take part, each through the store that acts for them: the `owner`, a
//! `reader` the owner shares with, and a `stranger`. A local backend trusts its caller's
//! `who`, so all three use the same store; the network backend acts only as its own node,
//! so each party is a different node and every read crosses the network.
//!
//! Failures panic with the case's name (this is test code, for test harnesses).

use crate::{Acl, Cid, Error, Result, StorageProvider};

/// An identity and the store that acts for it.
pub struct Party<'a> {
    /// Its did:key.
    pub did: String,
    /// The store it calls.
    pub store: &'a dyn StorageProvider,
}

impl std::fmt::Debug for Party<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Party({} via {})", self.did, self.store.name())
    }
}

/// Replaces every copy of a blob with other bytes (what a corrupted disk or a malicious
/// holder does); must not change what the backend believes the CID is.
pub type Tamper<'a> = &'a (dyn Fn(&Cid) + Sync);

/// Runs every case. `tamper`, where the harness can reach the backend's bytes, adds the
/// tampering case.
pub async fn run(
    owner: Party<'_>,
    reader: Party<'_>,
    stranger: Party<'_>,
    tamper: Option<Tamper<'_>>,
) {
    let name = owner.store.name();
    let acl = Acl::private(&owner.did).with_reader(&reader.did);
    let data = format!("conformance blob of {name}").into_bytes();

    // Store: named by the CID of its bytes, readable by the owner and the reader.
    let cid = expect(owner.store.store(data.clone(), &acl).await, name, "store");
    assert_eq!(cid, Cid::of(&data), "{name}: the CID is the content's");
    let got = expect(
        owner.store.retrieve(&cid, &owner.did).await,
        name,
        "owner retrieves",
    );
    assert_eq!(got, data, "{name}: owner reads back the bytes");
    let got = expect(
        reader.store.retrieve(&cid, &reader.did).await,
        name,
        "reader retrieves",
    );
    assert_eq!(got, data, "{name}: the reader reads the bytes");

    // Idempotent for its owner.
    let again = expect(
        owner.store.store(data.clone(), &acl).await,
        name,
        "store again",
    );
    assert_eq!(
        again, cid,
        "{name}: storing the same bytes twice gives the same CID"
    );

    // The empty blob is a blob.
    let empty = expect(
        owner
            .store
            .store(Vec::new(), &Acl::private(&owner.did))
            .await,
        name,
        "store empty",
    );
    let got = expect(
        owner.store.retrieve(&empty, &owner.did).await,
        name,
        "retrieve empty",
    );
    assert!(got.is_empty(), "{name}: the empty blob reads back empty");

    // Strangers: refused, and nothing is lost.
    let denied = stranger.store.retrieve(&cid, &stranger.did).await;
    assert!(
        matches!(denied, Err(Error::Denied { .. })),
        "{name}: a stranger may not read: {denied:?}"
    );
    let denied = stranger.store.delete(&cid, &stranger.did).await;
    assert!(
        matches!(denied, Err(Error::Denied { .. })),
        "{name}: a stranger may not delete: {denied:?}"
    );
    let denied = reader.store.delete(&cid, &reader.did).await;
    assert!(
        matches!(denied, Err(Error::Denied { .. })),
        "{name}: a reader may not delete: {denied:?}"
    );
    let got = expect(
        owner.store.retrieve(&cid, &owner.did).await,
        name,
        "owner after refusals",
    );
    assert_eq!(got, data, "{name}: refusals leave the blob as it was");

    // The same bytes under another owner: refused, the first owner keeps it.
    let taken = stranger
        .store
        .store(data.clone(), &Acl::private(&stranger.did))
        .await;
    assert!(
        matches!(taken, Err(Error::Denied { .. })),
        "{name}: the same bytes stay their first owner's: {taken:?}"
    );

    // Bad input: a malformed list, an oversized blob, an unknown CID.
    let bad = owner
        .store
        .store(b"x".to_vec(), &Acl::private("mallory"))
        .await;
    assert!(
        matches!(bad, Err(Error::Invalid(_))),
        "{name}: an owner that is not a did:key: {bad:?}"
    );
    let limit = owner.store.limits().max_blob;
    let big = owner
        .store
        .store(vec![7; limit + 1], &Acl::private(&owner.did))
        .await;
    assert!(
        matches!(big, Err(Error::TooLarge { .. })),
        "{name}: a blob over {limit} bytes: {big:?}"
    );
    let unknown = Cid::of(b"never stored anywhere");
    let missing = owner.store.retrieve(&unknown, &owner.did).await;
    assert!(
        matches!(missing, Err(Error::NotFound(_))),
        "{name}: an unknown CID: {missing:?}"
    );
    let missing = owner.store.delete(&unknown, &owner.did).await;
    assert!(
        matches!(missing, Err(Error::NotFound(_))),
        "{name}: deleting an unknown CID: {missing:?}"
    );

    // Listing: the owner's blobs, nobody else's.
    let mine = expect(owner.store.list(&owner.did).await, name, "list");
    assert!(
        mine.contains(&cid) && mine.contains(&empty),
        "{name}: the owner's list: {mine:?}"
    );
    let theirs = expect(owner.store.list(&stranger.did).await, name, "list another");
    assert!(
        theirs.is_empty(),
        "{name}: nothing listed for a stranger: {theirs:?}"
    );

    // Deletion: gone for everyone.
    expect(owner.store.delete(&empty, &owner.did).await, name, "delete");
    let gone = owner.store.retrieve(&empty, &owner.did).await;
    assert!(
        matches!(gone, Err(Error::NotFound(_))),
        "{name}: deleted means gone: {gone:?}"
    );
    let mine = expect(
        owner.store.list(&owner.did).await,
        name,
        "list after delete",
    );
    assert!(
        !mine.contains(&empty),
        "{name}: a deleted blob is not listed"
    );

    // Tampering: never handed out as data.
    if let Some(tamper) = tamper {
        tamper(&cid);
        let bad = owner.store.retrieve(&cid, &owner.did).await;
        assert!(
            matches!(bad, Err(Error::Tampered(_))),
            "{name}: tampered bytes are an error: {bad:?}"
        );
    }
    expect(
        owner.store.delete(&cid, &owner.did).await,
        name,
        "delete the shared blob",
    );
}

fn expect<T>(r: Result<T>, backend: &str, case: &str) -> T {
    r.unwrap_or_else(|e| panic!("{backend}: {case}: {e}"))
}
