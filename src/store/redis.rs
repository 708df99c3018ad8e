//! [`RedisStore`]: the [`TokenStore`] on Redis, through the `redis` crate's tokio connection
//! manager (it reconnects by itself) and three Lua scripts for the operations that must be
//! atomic: the versioned write, and the lease's compare-and-extend and compare-and-delete.
//! Waiters hear of writes through one pub/sub connection per store (`listener`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use self::listener::Listener;
use super::{Entry, LeaseOwner, StoreError, TokenStore, Written};
use crate::source::BoxFuture;

mod listener;

/// How long a command may take before the store counts as failing (a refresh waits for it).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Writes `ARGV[2]` as the entry if its version is `ARGV[1]` (empty: if there is none), bumps
/// the version and publishes it on the entry's channel. Answers the new version, or 0.
const WRITE: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '' then
  if v then return 0 end
elseif v ~= ARGV[1] then
  return 0
end
local n = (tonumber(v) or 0) + 1
redis.call('HSET', KEYS[1], 'v', n, 'd', ARGV[2])
redis.call('PUBLISH', KEYS[2], n)
return n
";

/// Extends the lease to `ARGV[2]` ms if `ARGV[1]` holds it.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Deletes the lease if `ARGV[1]` holds it, and tells the waiters (a refresh that failed
/// wrote nothing, and they may take the lease now).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'released')
  return 1
end
return 0
";

/// A [`TokenStore`] on Redis (feature `redis`).
///
/// Under a prefix of the application's choosing, each entry is three Redis names:
/// `<prefix>entry:<key>` (a hash of version and sealed value), `<prefix>lease:<key>` (the
/// lease, a string with an expiry) and the channel `<prefix>changed:<key>`. Commands time out
/// after 2 s by default, so that an outage fails a refresh quickly instead of stalling it.
///
/// A store (with its clones) holds two connections to Redis, however many keys it serves:
/// one for commands, and one subscribed to `<prefix>changed:*` from the first wait for
/// another replica's refresh on, through which every waiter hears of its entry's write. Both
/// close when the last clone is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), oauth_refresh::store::StoreError> {
/// use oauth_refresh::store::RedisStore;
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379/", "billing:").await?;
/// # drop(store);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    connection: ConnectionManager,
    /// Every waiter of this store (and of its clones) hears of changes through it.
    listener: Arc<Listener>,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// A store on the Redis server at `url`, its names under `prefix`. Connects lazily:
    /// a server that is down now makes the first operations fail, not this call, and the
    /// connection manager reconnects when it is back.
    pub async fn connect(url: &str, prefix: impl Into<String>) -> Result<Self, StoreError> {
        Self::connect_with_timeout(url, prefix, DEFAULT_TIMEOUT).await
    }

    /// [`connect`](Self::connect), with commands timing out after `timeout`.
    pub async fn connect_with_timeout(
        url: &str,
        prefix: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(StoreError::new)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(StoreError::new)?;
        let prefix = prefix.into();
        let listener = Listener::new(client.clone(), format!("{prefix}changed:*"), timeout);
        Ok(RedisStore {
            client,
            connection,
            listener: Arc::new(listener),
            prefix,
            timeout,
        })
    }

    fn name(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }

    async fn read_entry(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let mut connection = self.connection.clone();
        let (version, value): (Option<u64>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(self.name("entry", key))
            .arg("v")
            .arg("d")
            .query_async(&mut connection)
            .await
            .map_err(StoreError::new)?;
        Ok(match (version, value) {
            (Some(version), Some(value)) => Some(Entry { version, value }),
            _ => None,
        })
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: only where it points.
        let info = self.client.get_connection_info();
        f.debug_struct("RedisStore")
            .field("addr", &info.addr().to_string())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenStore for RedisStore {
    fn read<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(self.read_entry(key))
    }

    fn write<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<Written, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let expected = expected.map(|v| v.to_string()).unwrap_or_default();
            let version: u64 = Script::new(WRITE)
                .key(self.name("entry", key))
                .key(self.name("changed", key))
                .arg(expected)
                .arg(value)
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(match version {
                0 => Written::Conflict,
                version => Written::Version(version),
            })
        })
    }

    fn try_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a LeaseOwner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let taken: Option<String> = redis::cmd("SET")
                .arg(self.name("lease", key))
                .arg(owner.as_str())
                .arg("NX")
                .arg("PX")
                .arg(millis(lease))
                .query_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(taken.is_some())
        })
    }

    fn extend_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a LeaseOwner,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let extended: u64 = Script::new(EXTEND)
                .key(self.name("lease", key))
                .arg(owner.as_str())
                .arg(millis(lease))
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(extended == 1)
        })
    }

    fn release_lease<'a>(
        &'a self,
        key: &'a str,
        owner: &'a LeaseOwner,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let released: u64 = Script::new(RELEASE)
                .key(self.name("lease", key))
                .key(self.name("changed", key))
                .arg(owner.as_str())
                .invoke_async(&mut connection)
                .await
                .map_err(StoreError::new)?;
            Ok(released == 1)
        })
    }

    fn changed<'a>(
        &'a self,
        key: &'a str,
        seen: Option<u64>,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            // Listening before reading, so that a write between the two is not missed.
            let listening = self.listener.listen(self.name("changed", key)).await.ok();
            let notified = listening.as_ref().map(listener::Listening::notified);
            let mut notified = std::pin::pin!(notified);
            if let Some(notified) = notified.as_mut().as_pin_mut() {
                notified.enable();
            }
            let entry = self.read_entry(key).await?;
            if entry.as_ref().map(|e| e.version) != seen {
                return Ok(entry);
            }
            match notified.as_pin_mut() {
                // A message, or the timeout: either way the entry is read again.
                Some(notified) => drop(tokio::time::timeout(timeout, notified).await),
                // No notification to be had: polling at the timeout is the fallback.
                None => tokio::time::sleep(timeout).await,
            }
            self.read_entry(key).await
        })
    }
}

/// A lease in whole milliseconds, at least 1 (Redis refuses 0).
fn millis(lease: Duration) -> u64 {
    u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1)
}
