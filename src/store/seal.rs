//! Entries sealed at rest: AES-256-GCM (aws-lc-rs) under a key the user supplies, bound to the
//! entry's key so that a sealed entry opens under no other.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};

use crate::error::ConfigurationError;

/// The first byte of every sealed entry: the layout below, so that a later one can be told
/// apart.
const FORMAT: u8 = 1;

/// Bound into every entry's associated data beside its key: a sealed entry of another program
/// that shares the store key does not open here.
const CONTEXT: &[u8] = b"oauth-refresh store entry v1";

/// One encryption key of a [`Keyring`], known by its id.
///
/// The id is written in clear beside each entry it sealed, so that an entry sealed before a
/// rotation finds its key; it is not secret. The key is: `Debug` shows only the id.
///
/// ```
/// use oauth_refresh::store::StoreKey;
///
/// // 32 bytes from a secret manager, never from source code.
/// let bytes = [7u8; 32];
/// let key = StoreKey::new("2026-12", &bytes)?;
/// assert_eq!(format!("{key:?}"), r#"StoreKey { id: "2026-12", .. }"#);
/// # Ok::<_, oauth_refresh::ConfigurationError>(())
/// ```
pub struct StoreKey {
    id: String,
    key: RandomizedNonceKey,
}

impl StoreKey {
    /// A key for AES-256-GCM: exactly 32 bytes, from a secret manager or a key file. The id
    /// is 1 to 255 bytes.
    pub fn new(id: impl Into<String>, key: &[u8]) -> Result<Self, ConfigurationError> {
        let id = id.into();
        if id.is_empty() || id.len() > usize::from(u8::MAX) {
            return Err(ConfigurationError::local("invalid_store_key")
                .with_description("a store key's id is 1 to 255 bytes"));
        }
        if key.len() != AES_256_GCM.key_len() {
            return Err(
                ConfigurationError::local("invalid_store_key").with_description(format!(
                    "a store key is {} bytes, this one is {}",
                    AES_256_GCM.key_len(),
                    key.len()
                )),
            );
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, key)
            .map_err(|_| ConfigurationError::local("invalid_store_key"))?;
        Ok(StoreKey { id, key })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The keys that seal and open a store's entries: the current one seals every write; the
/// previous ones still open what they sealed, until every entry has been written again.
///
/// To rotate: add the new key as current and keep the old one as previous; once every entry
/// has been refreshed (one token lifetime, or the refresh token's), drop the old one.
///
/// ```
/// use oauth_refresh::store::{Keyring, StoreKey};
///
/// let keys = Keyring::new(StoreKey::new("2026-12", &[2u8; 32])?)
///     .previous(StoreKey::new("2026-11", &[1u8; 32])?);
/// # drop(keys);
/// # Ok::<_, oauth_refresh::ConfigurationError>(())
/// ```
#[derive(Debug)]
pub struct Keyring {
    current: StoreKey,
    previous: Vec<StoreKey>,
}

/// Why a stored entry could not be opened. None of them shows the entry's content.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Not an entry this crate wrote, or cut short.
    Malformed,
    /// Sealed under a key id the keyring does not hold.
    UnknownKey(String),
    /// The key is known and the entry does not authenticate: altered, or sealed for another
    /// entry's key.
    Refused,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Malformed => f.write_str("the stored entry is not one this crate sealed"),
            OpenError::UnknownKey(id) => {
                write!(
                    f,
                    "the stored entry is sealed under key {id:?}, not in the keyring"
                )
            }
            OpenError::Refused => f.write_str(
                "the stored entry does not authenticate: altered, or sealed for another key",
            ),
        }
    }
}

impl std::error::Error for OpenError {}

impl Keyring {
    /// A keyring sealing with `current`.
    pub fn new(current: StoreKey) -> Self {
        Keyring {
            current,
            previous: Vec::new(),
        }
    }

    /// Also opens entries sealed with `key`.
    pub fn previous(mut self, key: StoreKey) -> Self {
        self.previous.push(key);
        self
    }

    /// Seals `plaintext` as the entry of `entry_key` with the current key: a format byte, the
    /// key id's length and the id, the nonce, the ciphertext and its tag.
    ///
    /// ```
    /// use oauth_refresh::store::{Keyring, OpenError, StoreKey};
    ///
    /// let keys = Keyring::new(StoreKey::new("k1", &[7u8; 32])?);
    /// let sealed = keys.seal("svc", b"tokens");
    /// assert_eq!(keys.open("svc", &sealed).unwrap(), b"tokens");
    /// assert_eq!(keys.open("other", &sealed), Err(OpenError::Refused));
    /// # Ok::<_, oauth_refresh::ConfigurationError>(())
    /// ```
    pub fn seal(&self, entry_key: &str, plaintext: &[u8]) -> Vec<u8> {
        let key = &self.current;
        let mut sealed = plaintext.to_vec();
        let nonce = key
            .key
            .seal_in_place_append_tag(Aad::from(aad(entry_key, &key.id)), &mut sealed)
            // Fails only if the system's random source does, as for the PKCE verifier.
            .expect("AES-256-GCM sealing with a random nonce");
        let mut out = Vec::with_capacity(2 + key.id.len() + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens the entry of `entry_key`, with whichever of the keyring's keys sealed it.
    pub fn open(&self, entry_key: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let [FORMAT, id_len, rest @ ..] = sealed else {
            return Err(OpenError::Malformed);
        };
        let id_len = usize::from(*id_len);
        if rest.len() < id_len + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let id = std::str::from_utf8(id).map_err(|_| OpenError::Malformed)?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| key.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = key
            .key
            .open_in_place(nonce, Aad::from(aad(entry_key, id)), &mut buffer)
            .map_err(|_| OpenError::Refused)?;
        let len = plaintext.len();
        buffer.truncate(len);
        Ok(buffer)
    }
}

/// The associated data: what an entry is bound to besides its key.
fn aad(entry_key: &str, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(CONTEXT.len() + entry_key.len() + key_id.len() + 2);
    aad.extend_from_slice(CONTEXT);
    aad.push(0);
    aad.extend_from_slice(entry_key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(id: &str, byte: u8) -> Keyring {
        Keyring::new(StoreKey::new(id, &[byte; 32]).unwrap())
    }

    #[test]
    fn an_entry_opens_under_its_own_key_and_hides_its_content() {
        let keys = keyring("k1", 1);
        let sealed = keys.seal("app:user-1", b"refresh-token-s3cr3t");
        assert!(!sealed.windows(6).any(|w| w == b"s3cr3t"));
        assert_eq!(
            keys.open("app:user-1", &sealed).unwrap(),
            b"refresh-token-s3cr3t"
        );
        // A fresh nonce each time: the same plaintext never seals alike.
        assert_ne!(sealed, keys.seal("app:user-1", b"refresh-token-s3cr3t"));
    }

    #[test]
    fn an_entry_copied_under_another_key_is_refused() {
        let keys = keyring("k1", 1);
        let sealed = keys.seal("app:user-1", b"tokens of user 1");
        assert_eq!(keys.open("app:user-2", &sealed), Err(OpenError::Refused));
    }

    #[test]
    fn an_altered_entry_is_refused_wherever_it_is_altered() {
        let keys = keyring("k1", 1);
        let sealed = keys.seal("app:user-1", b"tokens of user 1");
        // Past the key id: nonce, ciphertext, tag.
        for at in 4..sealed.len() {
            let mut altered = sealed.clone();
            altered[at] ^= 0x01;
            assert_eq!(
                keys.open("app:user-1", &altered),
                Err(OpenError::Refused),
                "byte {at}"
            );
        }
        // The key id: another id is unknown, or names another key.
        let mut renamed = sealed.clone();
        renamed[2] = b'x';
        assert_eq!(
            keys.open("app:user-1", &renamed),
            Err(OpenError::UnknownKey("x1".into()))
        );
        for cut in [0, 1, 5, sealed.len() - 1] {
            assert!(
                keys.open("app:user-1", &sealed[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        assert_eq!(keys.open("app:user-1", b""), Err(OpenError::Malformed));
    }

    #[test]
    fn a_rotated_keyring_opens_old_entries_and_seals_with_the_new_key() {
        let old = keyring("2026-11", 1);
        let sealed_before = old.seal("svc", b"old");
        let rotated = Keyring::new(StoreKey::new("2026-12", &[2; 32]).unwrap())
            .previous(StoreKey::new("2026-11", &[1; 32]).unwrap());
        assert_eq!(rotated.open("svc", &sealed_before).unwrap(), b"old");
        let sealed_after = rotated.seal("svc", b"new");
        assert_eq!(&sealed_after[2..9], b"2026-12");
        assert_eq!(
            old.open("svc", &sealed_after),
            Err(OpenError::UnknownKey("2026-12".into()))
        );
        // The same id with other bytes: refused, not misread.
        let impostor = keyring("2026-12", 9);
        assert_eq!(impostor.open("svc", &sealed_after), Err(OpenError::Refused));
    }

    #[test]
    fn keys_of_the_wrong_size_or_id_are_refused_and_never_printed() {
        assert!(StoreKey::new("k", &[0; 16]).is_err());
        assert!(StoreKey::new("", &[0; 32]).is_err());
        assert!(StoreKey::new("x".repeat(256), &[0; 32]).is_err());
        let key = StoreKey::new("k", &[0xAB; 32]).unwrap();
        let printed = format!("{:?}", Keyring::new(key));
        assert!(
            !printed.contains("171") && !printed.to_lowercase().contains("ab"),
            "{printed}"
        );
    }
}
