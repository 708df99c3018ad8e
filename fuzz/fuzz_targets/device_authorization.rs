//! A device authorization endpoint's answer, and a token endpoint's answer to a device code poll (the first byte picks status and content type): no panic, numbers within bounds, the device code never printed.
//! The invariants are checked in `oauth_refresh::fuzzing::device_authorization`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| oauth_refresh::fuzzing::device_authorization(data));
