//! End-to-end tests of the real local cluster: see `tests/`. What they share is in the
//! `testkit` crate.
