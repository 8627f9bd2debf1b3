//! `keyraft-chaos` (being written).
fn main() {}
