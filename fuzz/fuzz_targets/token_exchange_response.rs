//! A token exchange's answer (RFC 8693 §2.2; the first byte picks status, content type and whether `N_A` is accepted): no panic, no lost refresh token, never a refresh token or an unaccepted `N_A` taken for an access token.
//! The invariants are checked in `oauth_refresh::fuzzing::token_exchange_response`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oauth_refresh::fuzzing::token_exchange_response(data));
