//! An accounted `maxSize` bound is measured once when the guest starts, never per write: a
//! directory with many files costs its writers nothing. Its own test binary, so the
//! process-wide walk counter sees no other test's guests.

use anyhow::Result;
use wa8s_host::{DirGrant, Grants};
use wa8s_test_components as guests;

mod common;
use common::run;

#[tokio::test]
async fn a_directory_with_thousands_of_files_is_walked_once_however_many_writes_follow()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    for i in 0..5000 {
        std::fs::write(dir.path().join(format!("f{i}")), b"x")?;
    }
    let grants = Grants {
        args: vec!["fsprobe".into(), "3".into(), "w".into(), "out.bin".into()],
        dirs: vec![DirGrant {
            host: dir.path().into(),
            guest: "/tmp".into(),
            read_only: false,
            max_bytes: Some(1 << 30),
            bound_by_kernel: false,
        }],
        ..Grants::default()
    };
    let before = wa8s_host::directory_walks();
    let ran = run(guests::FSPROBE_COMPONENT, grants).await;
    assert!(ran.stdout.ends_with("errno=0\n"), "{}", ran.stdout);
    assert_eq!(
        std::fs::metadata(dir.path().join("out.bin"))?.len(),
        1 << 20
    );
    // Sixteen 64 KiB writes; the walk of 5,000 files happened once, at the start.
    assert_eq!(wa8s_host::directory_walks() - before, 1);
    Ok(())
}
