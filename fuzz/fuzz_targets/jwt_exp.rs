//! A JWT, or a JWT payload: the lifetime is `exp - now` for a number `exp`, and nothing else gives one.
//! The invariants are checked in `oauth_refresh::fuzzing::jwt_exp`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oauth_refresh::fuzzing::jwt_exp(data));
