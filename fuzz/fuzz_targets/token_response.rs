//! A token endpoint's answer (the first byte picks status and content type): no panic, no lost refresh token, successes read back.
//! The invariants are checked in `oauth_refresh::fuzzing::token_response`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oauth_refresh::fuzzing::token_response(data));
