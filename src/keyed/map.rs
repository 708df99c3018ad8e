//! [`Cells`]: the token cells of a keyed layer, one per key, made on first use and evicted
//! when idle.
//!
//! Reads take a shard's read lock for a map lookup and one `Arc` clone. Writes (a key's first
//! use, an eviction) take one shard's write lock. A cell is dropped only when nothing holds it
//! but the map (no request, no refresh) and its newest tokens reached the store: a request
//! that held an evicted cell could otherwise refresh it beside the cell rebuilt for the same
//! key, and with rotation the two would revoke each other.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use tokio::sync::OnceCell;

use super::factory::{KeyedSource, SourceFactory};
use super::key::KeyError;
use crate::cell::{Copies, Schedule, TokenCell};

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

/// One key's place in the map: its cell, kept in the map's own bucket so that a request reads
/// no allocation of the map's besides; or, while the factory runs, the cell being made, which
/// the first request for the key makes and the others wait for (a request that gives up hands
/// the work to the next).
enum Slot {
    Ready(Arc<TokenCell>),
    Making(Arc<OnceCell<Arc<TokenCell>>>),
}

/// A part of the map, behind its own lock.
type Shard<K> = RwLock<HashMap<K, Slot>>;

pub(crate) struct Cells<K> {
    shards: Box<[Shard<K>]>,
    /// Picks the shard; each shard's map hashes with its own keys, so that the keys of one
    /// shard do not crowd its buckets.
    hasher: RandomState,
    factory: Arc<dyn SourceFactory<K>>,
    schedule: Schedule,
    eviction: Eviction,
    /// Entries in the map, with or without a cell yet.
    len: AtomicUsize,
    /// Advanced by the sweeper, once every idle time / `SWEEPS_PER_IDLE_TIME`.
    epoch: AtomicU64,
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
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            factory,
            schedule,
            eviction,
            len: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            sweeper: AtomicBool::new(false),
        }
    }

    fn shard(&self, key: &K) -> &Shard<K> {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash as usize) % SHARDS]
    }

    /// The cell of `key` if it is made: the hot path.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<Arc<TokenCell>> {
        let map = read(self.shard(key));
        let Slot::Ready(cell) = map.get(key)? else {
            return None;
        };
        self.touch(cell);
        Some(cell.clone())
    }

    /// Marks `cell` used in this epoch. A plain store, and only when the epoch changed: the
    /// cache line of a key used on many threads is written once per epoch, not per request.
    #[inline]
    fn touch(&self, cell: &TokenCell) {
        let epoch = self.epoch.load(Ordering::Relaxed);
        if cell.used.load(Ordering::Relaxed) != epoch {
            cell.used.store(epoch, Ordering::Relaxed);
        }
    }

    /// The cell of `key`, made by the factory if there is none yet.
    pub(crate) async fn resolve(self: &Arc<Self>, key: &K) -> Result<Arc<TokenCell>, KeyError> {
        if let Some(cell) = self.get(key) {
            return Ok(cell);
        }
        let (making, inserted) = {
            let mut map = write(self.shard(key));
            match map.get(key) {
                Some(Slot::Ready(cell)) => return Ok(cell.clone()),
                Some(Slot::Making(making)) => (making.clone(), false),
                None => {
                    let making = Arc::new(OnceCell::new());
                    map.insert(key.clone(), Slot::Making(making.clone()));
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
        self.touch(&cell);
        // Made: from now on requests find it in the bucket. Only the slot this request waited
        // on is replaced; it cannot have been evicted meanwhile, since this request holds it.
        if let Some(slot) = write(self.shard(key)).get_mut(key)
            && matches!(slot, Slot::Making(waited) if Arc::ptr_eq(waited, &making))
        {
            *slot = Slot::Ready(cell.clone());
        }
        Ok(cell)
    }

    async fn make(&self, key: K) -> Result<Arc<TokenCell>, KeyError> {
        let source = self
            .factory
            .source(key.clone())
            .await
            .map_err(KeyError::factory)?
            .ok_or_else(KeyError::unknown)?;
        let source = KeyedSource {
            key,
            source,
            factory: self.factory.clone(),
        };
        // One copy of each header: a keyed cell's token is one of many, and its request pays
        // for each cache line it reads.
        Ok(Arc::new(TokenCell::with_copies(
            Arc::new(source),
            self.schedule.clone(),
            Copies::One,
        )))
    }

    /// The cell of `key`, without making one.
    pub(crate) fn existing(&self, key: &K) -> Option<Arc<TokenCell>> {
        match read(self.shard(key)).get(key)? {
            Slot::Ready(cell) => Some(cell.clone()),
            Slot::Making(making) => making.get().cloned(),
        }
    }

    /// Cells in the map (and keys whose cell is being made).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Drops `key`'s cell if it can go (see [`evictable`]); `false` if it is in use.
    pub(crate) fn remove(&self, key: &K) -> bool {
        let mut map = write(self.shard(key));
        let Some(slot) = map.get(key) else {
            return true;
        };
        if !evictable(slot) {
            return false;
        }
        map.remove(key);
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
        let epoch = self.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let oldest_kept = epoch.saturating_sub(u64::from(SWEEPS_PER_IDLE_TIME));
        for shard in &self.shards {
            let mut map = write(shard);
            let before = map.len();
            map.retain(|_, slot| used(slot) >= oldest_kept || !evictable(slot));
            self.len.fetch_sub(before - map.len(), Ordering::Relaxed);
        }
    }

    /// Over the cap: drops the least recently used cells that can go, down to seven eighths
    /// of the cap. Cells in use stay, even over the cap.
    fn shrink(&self) {
        let target = self.eviction.max_cells - self.eviction.max_cells / 8;
        let mut candidates: Vec<(u64, usize, K)> = Vec::new();
        for (index, shard) in self.shards.iter().enumerate() {
            let map = read(shard);
            candidates.extend(
                map.iter()
                    .filter(|(_, slot)| evictable(slot))
                    .map(|(key, slot)| (used(slot), index, key.clone())),
            );
        }
        candidates.sort_unstable_by_key(|(used, _, _)| *used);
        for (_, index, key) in candidates {
            if self.len.load(Ordering::Relaxed) <= target {
                break;
            }
            let mut map = write(&self.shards[index]);
            // Looked at again under the write lock: a request may have taken it since.
            if map.get(&key).is_some_and(evictable) {
                map.remove(&key);
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a slot can be dropped. Call with its shard locked: every holder of the cell (or of
/// the cell being made) took it under the lock, so a count of one means the map's own
/// reference is the only one, and no new one can be taken meanwhile.
fn evictable(slot: &Slot) -> bool {
    let unused = |cell: &Arc<TokenCell>| Arc::strong_count(cell) == 1 && cell.is_settled();
    match slot {
        Slot::Ready(cell) => unused(cell),
        Slot::Making(making) => Arc::strong_count(making) == 1 && making.get().is_none_or(unused),
    }
}

/// The epoch of a slot's last use. A cell still being made with no one waiting for it is
/// what a failed factory call or an unknown key leaves: the first to go.
fn used(slot: &Slot) -> u64 {
    match slot {
        Slot::Ready(cell) => cell.used.load(Ordering::Relaxed),
        Slot::Making(making) => making
            .get()
            .map_or(0, |cell| cell.used.load(Ordering::Relaxed)),
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
