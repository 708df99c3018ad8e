//! A `WWW-Authenticate` value: parsed challenges are well formed and survive being written back.
//! The invariants are checked in `oauth_refresh::fuzzing::www_authenticate`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oauth_refresh::fuzzing::www_authenticate(data));
