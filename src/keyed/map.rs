//! [`Cells`]: the token cells of a keyed layer, one per key, made on first use and evicted
//! when idle.
//!
//! A request hashes its key once, takes its shard's read lock, and reads the key's entry: the
//! key and, while it is FRESH, the key's token, which the cell rewrites in the entry on every
//! change. Nothing else of the key is read; only a token that is not FRESH costs a clone of
//! the cell's `Arc`. Writes (a key's first use, an eviction, a cell's new token) take one
//! shard's write lock. A cell is dropped only when nothing holds it but the map (no refresh,
//! no request waiting for one) and its newest tokens reached the store: a request that held
//! an evicted cell could otherwise refresh it beside the cell rebuilt for the same key, and
//! with rotation the two would revoke each other.

use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use hashbrown::HashTable;
use http::HeaderValue;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::factory::{KeyedSource, SourceFactory};
use super::key::KeyError;
use crate::cell::{FreshToken, Mirror, Schedule, TokenCell};

/// Shards of the map: enough that threads using different keys seldom meet on one lock.
const SHARDS: usize = 32;

/// How often idle cells are looked for, as a share of the idle time: a cell is dropped
/// between one and one and a quarter idle times after its last use.
const SWEEPS_PER_IDLE_TIME: u32 = 4;

/// When to drop idle cells.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Eviction {
    /// A cell unused for this long is dropped.
    pub(crate) idle: Duration,
    /// Past this many cells, the least recently used idle ones are dropped, down to seven
    /// eighths of it (so that the scan is paid once per many new keys).
    pub(crate) max_cells: usize,
}

impl Default for Eviction {
    fn default() -> Self {
        Eviction {
            idle: Duration::from_secs(30 * 60),
            max_cells: 100_000,
        }
    }
}

/// One key's place in the map, in the map's own bucket. What a FRESH request reads (the key,
/// its token, its last use) comes first, in one cache line when the key is a word (`repr(C)`,
/// aligned to the line): a random key's request then misses one line of the bucket, where
/// the cell's token would cost three more.
#[repr(C, align(64))]
struct Entry<K> {
    key: K,
    /// The cell's token while it is FRESH, rewritten by the cell (under the shard's write
    /// lock) on every change; `None` while there is none, or no cell yet.
    header: Option<HeaderValue>,
    /// The token's generation, the map's own (see [`Found::Fresh`]).
    generation: u64,
    /// When the token stops being FRESH, in whole seconds from the map's start, rounded
    /// down: a request may find it not FRESH up to a second early, never late, and in that
    /// second asks the cell, which knows to the nanosecond. `u32::MAX`: never.
    until: u32,
    /// The sweep epoch in which a request last used the key.
    used: AtomicU32,
    state: State,
}

impl<K> Entry<K> {
    /// Copies the cell's FRESH token (or its absence) into the bucket.
    fn set_fresh(&mut self, fresh: Option<FreshToken>, start: Instant) {
        let Some(fresh) = fresh else {
            self.header = None;
            return;
        };
        self.until = fresh.until.map_or(u32::MAX, |until| {
            let secs = until.saturating_duration_since(start).as_secs();
            u32::try_from(secs).unwrap_or(u32::MAX)
        });
        self.generation = fresh.generation;
        self.header = Some(fresh.header);
    }
}

/// The key's cell; or, while the factory runs, the cell being made, which the first request
/// for the key makes and the others wait for (a request that gives up hands the work to the
/// next).
enum State {
    Ready(Arc<TokenCell>),
    Making(Arc<OnceCell<Arc<TokenCell>>>),
}

/// What a request finds for its key.
pub(crate) enum Found {
    /// The token to send, FRESH, and its generation to name it by if the server rejects it.
    /// Generations are the map's own (each cell counts from a base of its own), so a
    /// generation names the token even after its cell was evicted and another one made.
    Fresh {
        header: HeaderValue,
        generation: u64,
    },
    /// A cell whose token is not FRESH (STALE, EXPIRED, rejected, or none yet): ask it.
    Cell(Arc<TokenCell>),
    /// No cell yet: make one.
    Absent,
}

/// Where a cell copies its FRESH token: its key's entry.
struct Bucket<K> {
    cells: Weak<Cells<K>>,
    key: K,
}

impl<K> Mirror for Bucket<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    fn changed(&self, cell: &TokenCell, fresh: Option<FreshToken>) {
        let Some(cells) = self.cells.upgrade() else {
            return;
        };
        let (hash, shard) = cells.shard(&self.key);
        let mut map = write(shard);
        // Only the entry that holds this very cell: not one rebuilt for the key since, nor
        // one still being made (it reads the cell's token when it becomes ready).
        if let Some(entry) = map.find_mut(hash, |entry| entry.key == self.key)
            && let State::Ready(ready) = &entry.state
            && std::ptr::eq(Arc::as_ptr(ready), cell)
        {
            entry.set_fresh(fresh, cells.start);
        }
    }
}

/// A part of the map, behind its own lock.
type Shard<K> = RwLock<HashTable<Entry<K>>>;

pub(crate) struct Cells<K> {
    shards: Box<[Shard<K>]>,
    hasher: RandomState,
    factory: Arc<dyn SourceFactory<K>>,
    schedule: Schedule,
    eviction: Eviction,
    /// Entries in the map, with or without a cell yet.
    len: AtomicUsize,
    /// Cells made so far: the next cell's generations count from this, times 2^32.
    made: AtomicU64,
    /// Advanced by the sweeper, once every idle time / `SWEEPS_PER_IDLE_TIME`.
    epoch: AtomicU32,
    /// What the buckets' `until` counts from.
    start: Instant,
    sweeper: AtomicBool,
}

impl<K> Cells<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    pub(crate) fn new(
        factory: Arc<dyn SourceFactory<K>>,
        schedule: Schedule,
        eviction: Eviction,
    ) -> Self {
        Cells {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
            factory,
            schedule,
            eviction,
            len: AtomicUsize::new(0),
            made: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            start: Instant::now(),
            sweeper: AtomicBool::new(false),
        }
    }

    /// The key's hash and its shard. The table of the shard picks buckets by the hash's low
    /// bits and tags them with its top seven, so the shard is picked by bits of neither.
    #[inline]
    fn shard(&self, key: &K) -> (u64, &Shard<K>) {
        let hash = self.hasher.hash_one(key);
        (hash, &self.shards[(hash >> 52) as usize % SHARDS])
    }

    /// What a request for `key` finds: the hot path.
    #[inline]
    pub(crate) fn find(&self, key: &K) -> Found {
        let (hash, shard) = self.shard(key);
        let map = read(shard);
        let Some(entry) = map.find(hash, |entry| entry.key == *key) else {
            return Found::Absent;
        };
        self.touch(entry);
        if let Some(header) = &entry.header
            && Instant::now()
                .saturating_duration_since(self.start)
                .as_secs()
                < u64::from(entry.until)
        {
            return Found::Fresh {
                header: header.clone(),
                generation: entry.generation,
            };
        }
        match &entry.state {
            State::Ready(cell) => Found::Cell(cell.clone()),
            State::Making(_) => Found::Absent,
        }
    }

    /// The cell of `key` if it is made.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<TokenCell>> {
        let (hash, shard) = self.shard(key);
        let map = read(shard);
        let entry = map.find(hash, |entry| entry.key == *key)?;
        let State::Ready(cell) = &entry.state else {
            return None;
        };
        self.touch(entry);
        Some(cell.clone())
    }

    /// Marks the key used in this epoch. A plain store, and only when the epoch changed: the
    /// cache line of a key used on many threads is written once per epoch, not per request.
    #[inline]
    fn touch(&self, entry: &Entry<K>) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        if entry.used.load(Ordering::Relaxed) != epoch {
            entry.used.store(epoch, Ordering::Relaxed);
        }
    }

    /// The cell of `key`, made by the factory if there is none yet.
    pub(crate) async fn resolve(self: &Arc<Self>, key: &K) -> Result<Arc<TokenCell>, KeyError> {
        if let Some(cell) = self.get(key) {
            return Ok(cell);
        }
        let (hash, shard) = self.shard(key);
        let (making, inserted) = {
            let mut map = write(shard);
            match map
                .find(hash, |entry| entry.key == *key)
                .map(|entry| &entry.state)
            {
                Some(State::Ready(cell)) => return Ok(cell.clone()),
                Some(State::Making(making)) => (making.clone(), false),
                None => {
                    let making = Arc::new(OnceCell::new());
                    let entry = Entry {
                        key: key.clone(),
                        header: None,
                        generation: 0,
                        until: 0,
                        used: AtomicU32::new(self.epoch.load(Ordering::Relaxed)),
                        state: State::Making(making.clone()),
                    };
                    map.insert_unique(hash, entry, |entry| self.hasher.hash_one(&entry.key));
                    self.len.fetch_add(1, Ordering::Relaxed);
                    (making, true)
                }
            }
        };
        if inserted {
            self.start_sweeper();
            if self.len.load(Ordering::Relaxed) > self.eviction.max_cells {
                self.shrink();
            }
        }
        let cell = making
            .get_or_try_init(|| self.make(key.clone()))
            .await?
            .clone();
        // Made: from now on requests find it in the entry. Only the entry this request waited
        // on is replaced; it cannot have been evicted meanwhile, since this request holds it.
        // The token is read under the lock: a change the cell made before could not reach the
        // entry, and one after waits for the lock and rewrites it.
        let mut map = write(shard);
        if let Some(entry) = map.find_mut(hash, |entry| entry.key == *key)
            && matches!(&entry.state, State::Making(waited) if Arc::ptr_eq(waited, &making))
        {
            entry.set_fresh(cell.fresh(), self.start);
            entry.state = State::Ready(cell.clone());
            self.touch(entry);
        }
        Ok(cell)
    }

    async fn make(self: &Arc<Self>, key: K) -> Result<Arc<TokenCell>, KeyError> {
        let source = self
            .factory
            .source(key.clone())
            .await
            .map_err(KeyError::factory)?
            .ok_or_else(KeyError::unknown)?;
        let bucket = Bucket {
            cells: Arc::downgrade(self),
            key: key.clone(),
        };
        let source = KeyedSource {
            key,
            source,
            factory: self.factory.clone(),
        };
        let generations = self.made.fetch_add(1, Ordering::Relaxed) << 32;
        Ok(Arc::new(TokenCell::keyed(
            Arc::new(source),
            self.schedule.clone(),
            Box::new(bucket),
            generations,
        )))
    }

    /// The cell of `key`, without making one.
    pub(crate) fn existing(&self, key: &K) -> Option<Arc<TokenCell>> {
        let (hash, shard) = self.shard(key);
        match &read(shard).find(hash, |entry| entry.key == *key)?.state {
            State::Ready(cell) => Some(cell.clone()),
            State::Making(making) => making.get().cloned(),
        }
    }

    /// Cells in the map (and keys whose cell is being made).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Drops `key`'s cell if it can go (see [`evictable`]); `false` if it is in use.
    pub(crate) fn remove(&self, key: &K) -> bool {
        let (hash, shard) = self.shard(key);
        let mut map = write(shard);
        let Ok(entry) = map.find_entry(hash, |entry| entry.key == *key) else {
            return true;
        };
        if !evictable(entry.get()) {
            return false;
        }
        entry.remove();
        self.len.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Starts the task that advances the epoch and drops idle cells, once, if a tokio
    /// runtime is at hand (the first request of a key needs one anyway, for its refresh).
    /// It holds the map weakly and ends with it.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let period = (self.eviction.idle / SWEEPS_PER_IDLE_TIME).max(Duration::from_millis(10));
        let cells = Arc::downgrade(self);
        drop(runtime.spawn(sweep_every(cells, period)));
    }

    /// One sweep: a new epoch, and the cells unused for the idle time dropped.
    fn sweep(&self) {
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        for shard in &self.shards {
            let mut map = write(shard);
            let before = map.len();
            map.retain(|entry| age(entry, epoch) <= SWEEPS_PER_IDLE_TIME || !evictable(entry));
            self.len.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
    }

    /// Over the cap: drops the least recently used cells that can go, down to seven eighths
    /// of the cap. Cells in use stay, even over the cap.
    fn shrink(&self) {
        let target = self.eviction.max_cells - self.eviction.max_cells / 8;
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut candidates: Vec<(u32, K)> = Vec::new();
        for shard in &self.shards {
            let map = read(shard);
            candidates.extend(
                map.iter()
                    .filter(|entry| evictable(entry))
                    .map(|entry| (age(entry, epoch), entry.key.clone())),
            );
        }
        candidates.sort_unstable_by_key(|(age, _)| std::cmp::Reverse(*age));
        for (_, key) in candidates {
            if self.len.load(Ordering::Relaxed) <= target {
                break;
            }
            let (hash, shard) = self.shard(&key);
            let mut map = write(shard);
            // Looked at again under the write lock: a request may have taken it since.
            if let Ok(entry) = map.find_entry(hash, |entry| entry.key == key)
                && evictable(entry.get())
            {
                entry.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether an entry can be dropped. Call with its shard locked: every holder of the cell (or
/// of the cell being made) took it under the lock, so a count of one means the map's own
/// reference is the only one, and no new one can be taken meanwhile.
///
/// A request that sent the FRESH token of the entry holds no reference: the cell may go under
/// it, since the request never touches it again. Should its token be rejected, it asks the
/// map for the key's cell, which the generation it was sent with tells from a rebuilt one.
fn evictable<K>(entry: &Entry<K>) -> bool {
    let unused = |cell: &Arc<TokenCell>| Arc::strong_count(cell) == 1 && cell.is_settled();
    match &entry.state {
        State::Ready(cell) => unused(cell),
        State::Making(making) => Arc::strong_count(making) == 1 && making.get().is_none_or(unused),
    }
}

/// Sweeps since an entry's last use, `epoch` being the current one (epochs wrap; their
/// difference does not). A cell still being made with no one waiting for it is what a failed
/// factory call or an unknown key leaves: the oldest, the first to go.
fn age<K>(entry: &Entry<K>, epoch: u32) -> u32 {
    match entry.state {
        State::Ready(_) => epoch.wrapping_sub(entry.used.load(Ordering::Relaxed)),
        State::Making(_) => u32::MAX,
    }
}

async fn sweep_every<K>(cells: Weak<Cells<K>>, period: Duration)
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(cells) = cells.upgrade() else { return };
        cells.sweep();
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

impl<K> fmt::Debug for Cells<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cells")
            .field("len", &self.len.load(Ordering::Relaxed))
            .field("eviction", &self.eviction)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_fresh_request_reads_of_a_word_key_is_one_cache_line() {
        assert_eq!(align_of::<Entry<u64>>(), 64);
        assert_eq!(
            std::mem::offset_of!(Entry<u64>, state),
            64,
            "the cell after the line"
        );
        assert_eq!(size_of::<Entry<u64>>(), 128);
    }

    #[tokio::test(start_paused = true)]
    async fn a_buckets_token_stops_being_fresh_at_or_before_its_cells() {
        let start = Instant::now();
        let mut entry = Entry {
            key: 1_u64,
            header: None,
            generation: 0,
            until: 0,
            used: AtomicU32::new(0),
            state: State::Making(Arc::new(OnceCell::new())),
        };
        let token = |until| FreshToken {
            header: HeaderValue::from_static("Bearer t"),
            until,
            generation: 7,
        };
        entry.set_fresh(
            Some(token(Some(start + Duration::from_millis(2_999)))),
            start,
        );
        assert_eq!((entry.until, entry.generation), (2, 7), "rounded down");
        entry.set_fresh(Some(token(None)), start);
        assert_eq!(entry.until, u32::MAX);
        entry.set_fresh(
            Some(token(Some(start + Duration::from_secs(1 << 40)))),
            start,
        );
        assert_eq!(entry.until, u32::MAX, "saturated, not wrapped");
        entry.set_fresh(None, start);
        assert!(entry.header.is_none());
    }
}
