//! The conformance suite: what every [`StorageProvider`] must do, run against each backend
//! (memory and file here, the network backend across three nodes, IndexedDB in a page).
//!
//! Three parties take part, each through the store that acts for them: the `owner`, a
//! `reader` the owner shares with, and a `stranger`. A local backend trusts its caller's
//! `who`, so all three use the same store; the network backend acts only as its own node,
//! so each party is a different node and every read crosses the network.
//!
//! A failure is an `Err` naming the backend and the case, so the suite also runs where a
//! panic would take the whole module down (a page checking its IndexedDB).

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
/// holder does); must not change what the backend believes the CID is. Asynchronous, for
/// backends whose bytes are reached asynchronously (IndexedDB).
pub type Tamper<'a> =
    &'a dyn Fn(Cid) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// A failed case.
type Failed = std::result::Result<(), String>;

fn ensure(ok: bool, backend: &str, case: &str, got: impl std::fmt::Debug) -> Failed {
    if ok {
        Ok(())
    } else {
        Err(format!("{backend}: {case} (got {got:?})"))
    }
}

fn expect<T>(r: Result<T>, backend: &str, case: &str) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{backend}: {case}: {e}"))
}

/// Runs every case. `tamper`, where the harness can reach the backend's bytes, adds the
/// tampering case. `Ok` when the backend conforms; else the first case that failed.
pub async fn run(
    owner: Party<'_>,
    reader: Party<'_>,
    stranger: Party<'_>,
    tamper: Option<Tamper<'_>>,
) -> Failed {
    let name = owner.store.name();
    let acl = Acl::private(&owner.did).with_reader(&reader.did);
    let data = format!("conformance blob of {name}").into_bytes();

    // Store: named by the CID of its bytes, readable by the owner and the reader.
    let cid = expect(owner.store.store(data.clone(), &acl).await, name, "store")?;
    ensure(cid == Cid::of(&data), name, "the CID is the content's", cid)?;
    let got = expect(
        owner.store.retrieve(&cid, &owner.did).await,
        name,
        "owner retrieves",
    )?;
    ensure(
        got == data,
        name,
        "the owner reads back the bytes",
        got.len(),
    )?;
    let got = expect(
        reader.store.retrieve(&cid, &reader.did).await,
        name,
        "reader retrieves",
    )?;
    ensure(got == data, name, "the reader reads the bytes", got.len())?;

    // Idempotent for its owner.
    let again = expect(
        owner.store.store(data.clone(), &acl).await,
        name,
        "store again",
    )?;
    ensure(
        again == cid,
        name,
        "storing the same bytes twice gives the same CID",
        again,
    )?;

    // The empty blob is a blob.
    let empty = expect(
        owner
            .store
            .store(Vec::new(), &Acl::private(&owner.did))
            .await,
        name,
        "store empty",
    )?;
    let got = expect(
        owner.store.retrieve(&empty, &owner.did).await,
        name,
        "retrieve empty",
    )?;
    ensure(
        got.is_empty(),
        name,
        "the empty blob reads back empty",
        got.len(),
    )?;

    // Strangers: refused, and nothing is lost.
    let r = stranger.store.retrieve(&cid, &stranger.did).await;
    ensure(
        matches!(r, Err(Error::Denied { .. })),
        name,
        "a stranger may not read",
        &r,
    )?;
    let r = stranger.store.delete(&cid, &stranger.did).await;
    ensure(
        matches!(r, Err(Error::Denied { .. })),
        name,
        "a stranger may not delete",
        &r,
    )?;
    let r = reader.store.delete(&cid, &reader.did).await;
    ensure(
        matches!(r, Err(Error::Denied { .. })),
        name,
        "a reader may not delete",
        &r,
    )?;
    let got = expect(
        owner.store.retrieve(&cid, &owner.did).await,
        name,
        "owner after refusals",
    )?;
    ensure(
        got == data,
        name,
        "refusals leave the blob as it was",
        got.len(),
    )?;

    // The same bytes under another owner: refused, the first owner keeps it.
    let r = stranger
        .store
        .store(data.clone(), &Acl::private(&stranger.did))
        .await;
    ensure(
        matches!(r, Err(Error::Denied { .. })),
        name,
        "the same bytes stay their first owner's",
        &r,
    )?;

    // Bad input: a malformed list, an oversized blob, an unknown CID.
    let r = owner
        .store
        .store(b"x".to_vec(), &Acl::private("mallory"))
        .await;
    ensure(
        matches!(r, Err(Error::Invalid(_))),
        name,
        "an owner that is not a did:key",
        &r,
    )?;
    let limit = owner.store.limits().max_blob;
    let r = owner
        .store
        .store(vec![7; limit + 1], &Acl::private(&owner.did))
        .await;
    ensure(
        matches!(r, Err(Error::TooLarge { .. })),
        name,
        "a blob over the size limit",
        &r,
    )?;
    let unknown = Cid::of(b"never stored anywhere");
    let r = owner.store.retrieve(&unknown, &owner.did).await;
    ensure(
        matches!(r, Err(Error::NotFound(_))),
        name,
        "an unknown CID",
        &r,
    )?;
    let r = owner.store.delete(&unknown, &owner.did).await;
    ensure(
        matches!(r, Err(Error::NotFound(_))),
        name,
        "deleting an unknown CID",
        &r,
    )?;

    // Listing: the owner's blobs, nobody else's.
    let mine = expect(owner.store.list(&owner.did).await, name, "list")?;
    ensure(
        mine.contains(&cid) && mine.contains(&empty),
        name,
        "the owner's list",
        &mine,
    )?;
    let theirs = expect(owner.store.list(&stranger.did).await, name, "list another")?;
    ensure(
        theirs.is_empty(),
        name,
        "nothing listed for a stranger",
        &theirs,
    )?;

    // Deletion: gone for everyone.
    expect(owner.store.delete(&empty, &owner.did).await, name, "delete")?;
    let r = owner.store.retrieve(&empty, &owner.did).await;
    ensure(
        matches!(r, Err(Error::NotFound(_))),
        name,
        "deleted means gone",
        &r,
    )?;
    let mine = expect(
        owner.store.list(&owner.did).await,
        name,
        "list after delete",
    )?;
    ensure(
        !mine.contains(&empty),
        name,
        "a deleted blob is not listed",
        &mine,
    )?;

    // Tampering: never handed out as data.
    if let Some(tamper) = tamper {
        tamper(cid).await;
        let r = owner.store.retrieve(&cid, &owner.did).await;
        ensure(
            matches!(r, Err(Error::Tampered(_))),
            name,
            "tampered bytes are an error",
            &r,
        )?;
    }
    expect(
        owner.store.delete(&cid, &owner.did).await,
        name,
        "delete the shared blob",
    )?;
    Ok(())
}
