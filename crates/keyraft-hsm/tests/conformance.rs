//! The HSM conformance suite against the soft HSM.

use std::sync::Mutex;

use keyraft_hsm::{conformance, Hsm, SoftHsm};

#[test]
fn soft_hsm_passes_the_conformance_suite() {
    let dirs = Mutex::new(Vec::new());
    let make = || -> Box<dyn Hsm> {
        let dir = tempfile::tempdir().expect("tempdir");
        let hsm = SoftHsm::open(dir.path(), b"conformance-sealing-secret-32byte").expect("open");
        dirs.lock().unwrap().push(dir);
        Box::new(hsm)
    };
    conformance::run_all(&make);
}
