//! The store on a disk whose fsync fails. After a failed fsync Linux may already have dropped
//! the dirty pages it could not write, so a later fsync that succeeds proves nothing: the store
//! must refuse every later flush too, so that nothing is acked or published on its word.

use runtime::{Records, RuntimeError, Store};
use testkit::LazyFs;

#[tokio::test]
async fn a_failed_fsync_fails_that_flush_and_every_later_one() {
    if let Err(why) = LazyFs::available() {
        println!("skipped: this test needs FUSE: {why}");
        return;
    }
    let backing = tempfile::tempdir().unwrap();
    let mountpoint = tempfile::tempdir().unwrap();
    let fs = LazyFs::mount(backing.path(), mountpoint.path()).unwrap();
    let store = Store::open(&fs.mountpoint().join("svc")).unwrap();
    store.transact(|tx| tx.put("k", &1u32)).unwrap();
    store.flush().await.expect("a healthy disk flushes");

    fs.fail_fsyncs(true);
    store.transact(|tx| tx.put("k", &2u32)).unwrap();
    let failed = store.flush().await.expect_err("the fsync failed");
    assert!(matches!(failed, RuntimeError::Sync(_)), "{failed}");
    assert!(failed.to_string().contains("check the disk"), "{failed}");

    // The disk answers again, but what it lost cannot be known: still no flush.
    fs.fail_fsyncs(false);
    let again = store
        .flush()
        .await
        .expect_err("a failed store stays failed");
    assert!(matches!(again, RuntimeError::Sync(_)), "{again}");
}
