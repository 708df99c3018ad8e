//! Property tests of the device authorization answer reader.
