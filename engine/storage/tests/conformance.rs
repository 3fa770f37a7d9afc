//! The conformance suite on the local backends, and the vault over them.

use std::future::Future;
use std::pin::Pin;

use kwaainet_storage::Cid;
use kwaainet_storage::conformance::{Party, run};
use kwaainet_storage::{
    Acl, Error, FileStore, Limits, MemoryStore, StorageProvider, UserKey, Vault,
};

const OWNER: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
const READER: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
const STRANGER: &str = "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf";

fn parties(store: &dyn StorageProvider) -> [Party<'_>; 3] {
    [OWNER, READER, STRANGER].map(|did| Party {
        did: did.into(),
        store,
    })
}

const SMALL: Limits = Limits {
    max_blob: 1024,
    max_total: 1 << 20,
};

#[tokio::test]
async fn memory_store_conforms() {
    let store = MemoryStore::with_limits(SMALL);
    let [o, r, s] = parties(&store);
    let tamper = |cid: Cid| -> Pin<Box<dyn Future<Output = ()> + '_>> {
        let hit = store.corrupt(&cid, b"evil".to_vec());
        Box::pin(async move { assert!(hit) })
    };
    if let Err(e) = run(o, r, s, Some(&tamper)).await {
        panic!("{e}");
    }
}

#[tokio::test]
async fn file_store_conforms_and_survives_reopening() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let store = FileStore::open(dir.path(), SMALL)?;
        let [o, r, s] = parties(&store);
        let tamper = |cid: Cid| -> Pin<Box<dyn Future<Output = ()> + '_>> {
            let path = store.blob_path(&cid);
            let mut bytes = std::fs::read(&path).unwrap_or_default();
            bytes.push(b'!');
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
            Box::pin(async {})
        };
        if let Err(e) = run(o, r, s, Some(&tamper)).await {
            panic!("{e}");
        }
    }
    // What stays after a reopen is exactly what was stored, and half-written files go.
    let kept = {
        let store = FileStore::open(dir.path(), SMALL)?;
        let cid = store.store(b"kept".to_vec(), &Acl::private(OWNER)).await?;
        std::fs::write(dir.path().join("junk.blob.tmp"), b"torn")?;
        std::fs::write(
            dir.path()
                .join(format!("{}.blob", kwaainet_storage::Cid::of(b"orphan"))),
            b"orphan",
        )?;
        cid
    };
    let store = FileStore::open(dir.path(), SMALL)?;
    assert_eq!(store.retrieve(&kept, OWNER).await?, b"kept");
    assert_eq!(store.list(OWNER).await?, vec![kept]);
    assert_eq!(
        store.held_by(OWNER),
        4,
        "the owner's bytes, from the reopened index"
    );
    assert_eq!(store.held_by(READER), 0);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert_eq!(names, vec![format!("{kept}.acl"), format!("{kept}.blob")]);
    Ok(())
}

#[tokio::test]
async fn quotas_refuse_without_losing_anything() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let limits = Limits {
        max_blob: 100,
        max_total: 150,
    };
    let stores: [Box<dyn StorageProvider>; 2] = [
        Box::new(MemoryStore::with_limits(limits)),
        Box::new(FileStore::open(dir.path(), limits)?),
    ];
    for store in stores {
        let first = store.store(vec![1; 100], &Acl::private(OWNER)).await?;
        let over = store.store(vec![2; 100], &Acl::private(OWNER)).await;
        assert!(
            matches!(over, Err(Error::Quota(_))),
            "{}: {over:?}",
            store.name()
        );
        assert_eq!(store.retrieve(&first, OWNER).await?, vec![1; 100]);
        store.delete(&first, OWNER).await?;
        store.store(vec![2; 100], &Acl::private(OWNER)).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_vault_over_the_file_store_keeps_only_ciphertext_on_disk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let vault = Vault::new(
        FileStore::open(dir.path(), Limits::default())?,
        UserKey::derive(&[9; 32]),
        OWNER,
    );
    let cid = vault
        .put("profile", b"name: Ada Lovelace", Acl::private(OWNER))
        .await?;
    let on_disk = std::fs::read(vault.store().blob_path(&cid))?;
    assert!(!on_disk.windows(8).any(|w| w == b"Lovelace"));
    assert_eq!(vault.get("profile", &cid).await?, b"name: Ada Lovelace");
    // Erasure by key: the ciphertext is still on disk, and useless.
    assert!(vault.keyring().forget("profile"));
    assert!(matches!(
        vault.get("profile", &cid).await,
        Err(Error::NoKey(_))
    ));
    Ok(())
}
