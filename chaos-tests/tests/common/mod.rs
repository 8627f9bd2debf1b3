//! What the chaos suite's integration tests share.

use std::path::PathBuf;

/// The `keyraft` binary `cargo test --workspace` built next to this test executable
/// (`target/<profile>/keyraft`, beside `target/<profile>/deps/<test>`); with the
/// workspace's features unified it has the fail points compiled in.
pub fn keyraft_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let bin = profile_dir.join(format!("keyraft{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build keyraft-cli first (`cargo build -p keyraft-cli --features failpoints`, or run `cargo test --workspace`)",
        bin.display()
    );
    bin
}
