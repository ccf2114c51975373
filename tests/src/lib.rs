//! Whole-system tests of the FX exchange saga. The test binaries live in `tests/tests/`; this
//! library holds what they share, notably the deterministic simulation ([`sim`]).

pub mod procs;
pub mod sim;
