//! The token cell: the current token behind an `ArcSwap`, and the one refresh slot that every
//! trigger shares.
//!
//! Readers never lock: a request loads the snapshot, compares two instants and clones a
//! header value. Writers (the refresh task, an invalidation, a manual seed) take the slot's
//! mutex, which is never held across an await.

mod authorization;
mod flight;
mod schedule;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::time::Instant;

use crate::dpop::Dpop;
use crate::error::{ReauthRequired, RefreshError, RefreshErrorKind};
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, Revoke};
use crate::source::TokenSource;
use crate::token::{AccessToken, RefreshToken};

pub(crate) use authorization::{Authorization, Copies};
use flight::{Flight, Launch, Revocation, Work};
pub(crate) use schedule::{MAX_SPAN, Schedule};

/// The outcome of one refresh, as every waiter receives it.
type Outcome = Result<Token, RefreshError>;

/// A token as requests use it: the header is built once, here, and cloned per request.
#[derive(Clone)]
pub(crate) struct Token {
    /// Counts tokens in this cell; a request remembers the generation it was sent with.
    pub(crate) generation: u64,
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: Authorization,
    pub(crate) expires_at: Option<Instant>,
    /// Where the refresh-ahead window starts.
    pub(crate) refresh_at: Option<Instant>,
    /// A server said this token is no good (or `invalidate()` was called).
    pub(crate) rejected: bool,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("header", &self.header)
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .field("rejected", &self.rejected)
            .finish()
    }
}

/// Where a token stands, by the monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Attach and send.
    Fresh,
    /// Inside the refresh-ahead window: attach and send now, refresh in the background.
    Stale,
    /// Expired or rejected: wait for the shared refresh.
    Expired,
}

impl Token {
    /// The token itself, read back from its header (see [`Authorization::access_token`]).
    pub(crate) fn access_token(&self) -> AccessToken {
        self.header.access_token()
    }

    /// This token as a mirror keeps it while FRESH; `None` if rejected.
    ///
    /// Its FRESH boundary must agree with [`phase`](Self::phase), which the hot path reads:
    /// a change to the phase rules changes both.
    fn fresh(&self) -> Option<FreshToken> {
        if self.rejected {
            return None;
        }
        let until = match (self.refresh_at, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Some(FreshToken {
            header: self.header.get(),
            until,
            generation: self.generation,
        })
    }

    #[inline]
    pub(crate) fn phase(&self, now: Instant) -> Phase {
        if self.rejected || self.expires_at.is_some_and(|at| now >= at) {
            Phase::Expired
        } else if self.refresh_at.is_some_and(|at| now >= at) {
            Phase::Stale
        } else {
            Phase::Fresh
        }
    }
}

/// What the request path reads, swapped whole on every change.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    token: Option<Token>,
    background: Background,
}

/// Whether a STALE request may start a background refresh.
#[derive(Clone, Copy, Debug)]
enum Background {
    /// Yes, from `not_before` on (the cooldown after a failure, or the minimum interval
    /// between refreshes).
    Idle { not_before: Option<Instant> },
    /// No: one is running.
    Running,
    /// No: the server refused the grant. Only a manual refresh or new tokens lift it, since
    /// sending the refused refresh token again cannot succeed.
    Blocked,
}

impl Default for Background {
    fn default() -> Self {
        Background::Idle { not_before: None }
    }
}

impl Background {
    #[inline]
    fn may_start(self, now: Instant) -> bool {
        matches!(self, Background::Idle { not_before } if not_before.is_none_or(|at| now >= at))
    }
}

/// What only writers touch, under the slot's mutex.
#[derive(Default)]
struct Slot {
    /// The running refresh, if any: every trigger joins it.
    flight: Option<Flight>,
    /// The newest refresh token received. Only ever replaced by a newer one, never dropped.
    refresh_token: Option<RefreshToken>,
    last_generation: u64,
    last_started: Option<Instant>,
    failures_in_a_row: u32,
    cooldown_until: Option<Instant>,
    last_error: Option<RefreshError>,
    rejections: Rejections,
    /// A change of tokens the persistence hook has not been handed yet. The next flight
    /// hands it over before it lets anyone go on.
    unpersisted: Option<TokenUpdate>,
    /// The last change handed to the hook was not stored (the hook failed): the store holds
    /// older tokens than this cell.
    unstored: bool,
    /// Signed out, and no tokens installed since: no request gets a token, no refresh starts,
    /// and a refresh that was running when it happened installs nothing.
    signed_out: bool,
    /// The signed-out grants' refresh tokens, set apart when a sign-in installs its tokens
    /// before the sign-out's flight runs: that flight revokes them all the same.
    revoke_later: Vec<RefreshToken>,
}

impl Slot {
    /// Forgets past failures: a refresh succeeded or new tokens were installed.
    fn clear_failures(&mut self) {
        self.failures_in_a_row = 0;
        self.cooldown_until = None;
        self.last_error = None;
    }

    /// Queues `update` for the persistence hook. Updates not yet handed over merge: the
    /// newest tokens, and the refresh token the store last saw as the one they replace.
    fn record(&mut self, mut update: TokenUpdate) {
        if let Some(pending) = self.unpersisted.take() {
            update.previous_refresh_token = pending.previous_refresh_token;
        }
        self.unpersisted = Some(update);
    }
}

/// The refreshes that rejections of a still-valid token asked for, spaced out so that an
/// endpoint rejecting every token (for reasons of its own) causes a trickle of token
/// requests, not a stream.
#[derive(Debug, Default)]
struct Rejections {
    /// Refreshes asked for by rejections in this episode.
    strikes: u32,
    /// When the last one started.
    last: Option<Instant>,
    /// No refresh for a rejection before this.
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct Counters {
    refreshes: AtomicU64,
    failures: AtomicU64,
    reauths: AtomicU64,
    retries: AtomicU64,
    nonce_resends: AtomicU64,
    backed_off: AtomicU64,
    persist_failures: AtomicU64,
}

/// A FRESH token as a keyed layer's map keeps it, in the key's own bucket: a request whose
/// key's token is FRESH reads the bucket and nothing of the cell.
pub(crate) struct FreshToken {
    pub(crate) header: HeaderValue,
    /// When the token stops being FRESH (the refresh-ahead window or the expiry, whichever
    /// comes first); `None`: never.
    pub(crate) until: Option<Instant>,
    pub(crate) generation: u64,
}

/// Where a cell copies its FRESH token on every change of its snapshot: a keyed layer's
/// bucket for the key.
pub(crate) trait Mirror: Send + Sync + 'static {
    /// `cell`'s token is now `fresh` (`None`: none a request may send without asking the
    /// cell). Called under the cell's slot mutex, so calls come in the order of the changes;
    /// the mirror may take its own locks, and must never take the slot's.
    fn changed(&self, cell: &TokenCell, fresh: Option<FreshToken>);
}

/// One token, its refresh, and its stats. Shared by every clone of a layer.
///
/// `repr(C)`, to keep what every request reads (the snapshot pointer) in the first cache
/// line, beside the `Arc`'s reference count that each request writes.
#[repr(C)]
pub(crate) struct TokenCell {
    snapshot: ArcSwap<Snapshot>,
    /// How many copies of each token's header to keep.
    copies: Copies,
    slot: Mutex<Slot>,
    source: Arc<dyn TokenSource>,
    schedule: Schedule,
    counters: Counters,
    /// A keyed layer's copy of the FRESH token, rewritten on every change.
    mirror: Option<Box<dyn Mirror>>,
    /// Where this cell's generations count from (see [`keyed`](Self::keyed)).
    generations: u64,
    /// The key the tokens are bound to, and the APIs' nonces: every request then needs a
    /// proof of its own, and never takes the FRESH path.
    dpop: Option<Dpop>,
}

impl fmt::Debug for TokenCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCell")
            .field("source", &self.source)
            .field("token", &self.snapshot.load().token)
            .finish_non_exhaustive()
    }
}

/// One service's own handle on the token cell's snapshot.
///
/// `ArcSwap::load` borrows the snapshot through a per-thread debt slot and returns it after:
/// two locked instructions per request. A service that is called again and again instead
/// keeps the snapshot it last read, and checks with one plain load that it is still the
/// current one. A service that is cloned for each request (`clone().oneshot(..)`) never
/// keeps one: its first call borrows as before, and only a second call starts the cache.
/// The cost of keeping one: an old snapshot (an old token) stays in memory until the
/// service's next call or its drop.
#[derive(Default)]
pub(crate) struct View {
    cache: Option<arc_swap::Cache<SnapshotOf, Arc<Snapshot>>>,
    used: bool,
}

impl fmt::Debug for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("View")
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

/// The cell's snapshot, as `arc_swap::Cache` wants it: behind a `Deref`.
struct SnapshotOf(Arc<TokenCell>);

impl std::ops::Deref for SnapshotOf {
    type Target = ArcSwap<Snapshot>;

    fn deref(&self) -> &Self::Target {
        &self.0.snapshot
    }
}

/// What a request does next, decided under the slot's mutex.
enum Plan {
    Use(Token),
    Wait(Flight),
    /// A new refresh, spawned once the slot is unlocked: a task that a dying runtime drops
    /// at once runs its guard's drop, which takes the slot.
    Start(Flight, Launch),
    Fail(RefreshError),
}

impl Plan {
    /// Spawns the refresh this plan started (call with the slot unlocked), and returns the
    /// outcome to wait for.
    fn go(self) -> impl Future<Output = Outcome> + Send + 'static {
        let plan = match self {
            Plan::Start(flight, launch) => {
                launch.spawn();
                Plan::Wait(flight)
            }
            plan => plan,
        };
        async move {
            match plan {
                Plan::Use(token) => Ok(token),
                Plan::Wait(flight) | Plan::Start(flight, _) => flight::wait(flight).await,
                Plan::Fail(error) => Err(error),
            }
        }
    }
}

impl TokenCell {
    /// A cell for one layer's only token: its header copied per stripe of threads.
    pub(crate) fn new(source: Arc<dyn TokenSource>, schedule: Schedule) -> Self {
        Self::build(source, schedule, Copies::PerStripe, None, 0)
    }

    /// A cell for one of a keyed layer's tokens: one copy of each header (the request pays
    /// for each cache line it reads, and the copies would take memory per key), and the FRESH
    /// token copied to `mirror` on every change.
    ///
    /// Its generations count from `generations`: a keyed layer gives each cell it makes a
    /// range of its own, so that a request's generation names its token even across an
    /// eviction and the rebuilt cell.
    pub(crate) fn keyed(
        source: Arc<dyn TokenSource>,
        schedule: Schedule,
        mirror: Box<dyn Mirror>,
        generations: u64,
    ) -> Self {
        Self::build(source, schedule, Copies::One, Some(mirror), generations)
    }

    fn build(
        source: Arc<dyn TokenSource>,
        schedule: Schedule,
        copies: Copies,
        mirror: Option<Box<dyn Mirror>>,
        generations: u64,
    ) -> Self {
        let slot = Slot {
            refresh_token: source.initial_refresh_token(),
            last_generation: generations,
            ..Slot::default()
        };
        let dpop = source.dpop_key().cloned().map(Dpop::new);
        let cell = TokenCell {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            slot: Mutex::new(slot),
            source,
            schedule,
            counters: Counters::default(),
            copies,
            mirror,
            generations,
            dpop,
        };
        // The source holds these already: nothing to hand to its persistence hook.
        if let Some(tokens) = cell.source.initial_tokens()
            && let Err(error) = cell.install_now(&mut cell.lock_slot(), tokens)
        {
            tracing::warn!(%error, "the source's initial tokens could not be used");
        }
        cell
    }

    /// The token to send now if no wait is needed (FRESH or STALE); a STALE token also starts
    /// a background refresh when none is running. `None` means EXPIRED: call
    /// [`acquire`](Self::acquire).
    ///
    /// This is the hot path: one `ArcSwap` load, one clock read, one header clone.
    #[inline]
    pub(crate) fn current(self: &Arc<Self>) -> Option<(HeaderValue, u64)> {
        self.usable(&self.snapshot.load())
    }

    /// [`current`](Self::current), reading the snapshot through a service's own
    /// [`View`].
    #[inline]
    pub(crate) fn current_in_view(self: &Arc<Self>, view: &mut View) -> Option<(HeaderValue, u64)> {
        if view.cache.is_none() && !std::mem::replace(&mut view.used, true) {
            return self.current();
        }
        let cache = view
            .cache
            .get_or_insert_with(|| arc_swap::Cache::new(SnapshotOf(self.clone())));
        self.usable(cache.load())
    }

    #[inline]
    fn usable(self: &Arc<Self>, snapshot: &Snapshot) -> Option<(HeaderValue, u64)> {
        let token = snapshot.token.as_ref()?;
        let now = Instant::now();
        match token.phase(now) {
            Phase::Fresh => {}
            Phase::Stale => {
                if snapshot.background.may_start(now) {
                    self.refresh_in_background();
                }
            }
            Phase::Expired => return None,
        }
        Some((token.header.get(), token.generation))
    }

    /// Waits for a usable token: the current one if another caller already replaced the
    /// expired one, else the outcome of the one shared refresh.
    pub(crate) async fn acquire(self: Arc<Self>) -> Outcome {
        let plan = {
            let mut slot = self.lock_slot();
            self.plan_expired(&mut slot, Instant::now(), "expired")
        };
        plan.go().await
    }

    /// After a server rejected the token of `generation`: the token to resend with, a newer
    /// one if there is one, else the one shared refresh's (started now, so that it runs
    /// while the caller drains the rejected body). `None`: return the rejection as it came,
    /// since refreshes for rejections are spaced out for now.
    ///
    /// The rejected token is not marked for everyone: the endpoint that rejected it may be
    /// the only one that does (an API's own authorization failure), and every other request
    /// goes on with it meanwhile. A token the server really revoked is rejected everywhere,
    /// and those rejections join the same refresh.
    pub(crate) fn after_rejection(
        self: &Arc<Self>,
        generation: u64,
    ) -> Option<impl Future<Output = Outcome> + Send + 'static> {
        let plan = self.plan_rejected(generation);
        if plan.is_none() {
            self.counters.backed_off.fetch_add(1, Ordering::Relaxed);
        }
        plan.map(Plan::go)
    }

    /// A rejection of `generation` that will not be resent: starts the refresh it asks for,
    /// on the same terms as [`after_rejection`](Self::after_rejection), without waiting.
    pub(crate) fn note_rejection(self: &Arc<Self>, generation: u64) {
        drop(self.after_rejection(generation));
    }

    fn plan_rejected(self: &Arc<Self>, generation: u64) -> Option<Plan> {
        let mut slot = self.lock_slot();
        let now = Instant::now();
        let snapshot = self.snapshot.load();
        match &snapshot.token {
            Some(token) if token.phase(now) != Phase::Expired => {
                if token.generation != generation {
                    // Another request already replaced it.
                    return Some(Plan::Use(token.clone()));
                }
                drop(snapshot);
                self.rejected_current(&mut slot, now)
            }
            _ => Some(self.plan_expired(&mut slot, now, "rejected")),
        }
    }

    /// No usable token: join the running refresh, fail as the last one did while its
    /// cooldown lasts, or start one.
    fn plan_expired(
        self: &Arc<Self>,
        slot: &mut Slot,
        now: Instant,
        trigger: &'static str,
    ) -> Plan {
        let snapshot = self.snapshot.load_full();
        if let Some(token) = &snapshot.token
            && token.phase(now) != Phase::Expired
        {
            return Plan::Use(token.clone());
        }
        if let Some(flight) = &slot.flight {
            return Plan::Wait(flight.clone());
        }
        match &slot.last_error {
            Some(error @ RefreshError::Reauth(_)) => return Plan::Fail(error.clone()),
            Some(error) if slot.cooldown_until.is_some_and(|until| now < until) => {
                return Plan::Fail(error.clone());
            }
            _ => {}
        }
        let mut delay_until = None;
        if let Some(earliest) = self.min_interval_end(slot)
            && now < earliest
        {
            // A token that expired as it arrived (`expires_in: 0`, or a window wider than
            // its life) is used rather than refreshed again at once: otherwise every
            // request would cost a refresh. Only the token the last refresh brought,
            // though: after a failure, the token left is an old one.
            match &snapshot.token {
                Some(token) if !token.rejected && slot.last_error.is_none() => {
                    return Plan::Use(token.clone());
                }
                _ => delay_until = Some(earliest),
            }
        }
        self.start(slot, delay_until, trigger)
    }

    /// A server rejected the current token, which is still valid by the clock: join the
    /// running refresh, or start one unless refreshes for rejections are spaced out
    /// (`None`).
    fn rejected_current(self: &Arc<Self>, slot: &mut Slot, now: Instant) -> Option<Plan> {
        if let Some(flight) = &slot.flight {
            return Some(Plan::Wait(flight.clone()));
        }
        let spaced_out = slot.rejections.not_before.is_some_and(|at| now < at);
        let cooling_down = slot.cooldown_until.is_some_and(|until| now < until);
        // The grant was refused: refreshing again cannot help; the token serves whoever
        // still accepts it.
        let refused = matches!(slot.last_error, Some(RefreshError::Reauth(_)));
        if spaced_out || cooling_down || refused {
            return None;
        }
        let rejections = &mut slot.rejections;
        let new_episode = rejections
            .last
            .is_none_or(|at| now >= schedule::after(at, self.schedule.rejection_quiet()));
        rejections.strikes = match new_episode {
            true => 1,
            false => rejections.strikes.saturating_add(1),
        };
        let delay_until = self.min_interval_end(slot).filter(|at| now < *at);
        // The spacing counts from when the refresh starts, which may be later.
        let starts_at = delay_until.unwrap_or(now);
        let rejections = &mut slot.rejections;
        rejections.last = Some(starts_at);
        rejections.not_before = Some(schedule::after(
            starts_at,
            self.schedule.rejection_spacing(rejections.strikes),
        ));
        Some(self.start(slot, delay_until, "rejected"))
    }

    /// No refresh starts before this: the minimum interval after the last one started.
    fn min_interval_end(&self, slot: &Slot) -> Option<Instant> {
        let last = slot.last_started?;
        Some(schedule::after(last, self.schedule.min_interval))
    }

    /// Puts a refresh in the slot, to be spawned by the caller once the slot is unlocked.
    /// Without a tokio runtime there is nothing to run it on: the caller fails at once.
    fn start(
        self: &Arc<Self>,
        slot: &mut Slot,
        delay_until: Option<Instant>,
        trigger: &'static str,
    ) -> Plan {
        match self.register(slot, Work::Refresh, delay_until, trigger) {
            Ok((flight, launch)) => Plan::Start(flight, launch),
            Err(error) => Plan::Fail(error),
        }
    }

    /// Starts a refresh without anyone waiting on it, if none is running and none is due to
    /// wait: the STALE path. Needs a tokio runtime; without one, a later request starts it.
    fn refresh_in_background(self: &Arc<Self>) {
        let launch = {
            let mut slot = self.lock_slot();
            let now = Instant::now();
            if slot.flight.is_some() || !self.snapshot.load().background.may_start(now) {
                return;
            }
            match self.register(&mut slot, Work::Refresh, None, "refresh_ahead") {
                Ok((_, launch)) => launch,
                Err(_no_runtime) => return,
            }
        };
        launch.spawn();
    }

    /// Joins the running refresh or starts one, whatever the cooldown or the token's state.
    pub(crate) async fn refresh_now(self: &Arc<Self>) -> Result<(), RefreshError> {
        let plan = {
            let mut slot = self.lock_slot();
            match &slot.flight {
                Some(flight) => Plan::Wait(flight.clone()),
                // Only new tokens end a sign-out: a refresh must not bring the user back.
                None if slot.signed_out => Plan::Fail(self.signed_out_error()),
                None => self.start(&mut slot, None, "manual"),
            }
        };
        plan.go().await.map(drop)
    }

    /// The current access token and its generation, as a request would get it: a FRESH or
    /// STALE token at once (a STALE one starts the background refresh), else the outcome of
    /// the one shared refresh, cooldowns and a refused grant respected.
    pub(crate) async fn access_token(self: &Arc<Self>) -> Result<(AccessToken, u64), RefreshError> {
        let token = self.token().await?;
        Ok((token.access_token(), token.generation))
    }

    /// After code outside the request path saw the token of `generation` refused (a token
    /// exchange's `invalid_grant`): a newer token, the one of the shared refresh this starts,
    /// or `None` while refreshes for rejections are spaced out, as for a rejected request.
    pub(crate) async fn access_token_after_rejection(
        self: &Arc<Self>,
        generation: u64,
    ) -> Option<Result<(AccessToken, u64), RefreshError>> {
        let outcome = self.after_rejection(generation)?.await;
        Some(outcome.map(|token| (token.access_token(), token.generation)))
    }

    /// [`usable`](Self::usable), for the whole token.
    fn usable_token(self: &Arc<Self>) -> Option<Token> {
        let snapshot = self.snapshot.load();
        let token = snapshot.token.as_ref()?;
        let now = Instant::now();
        match token.phase(now) {
            Phase::Fresh => {}
            Phase::Stale => {
                if snapshot.background.may_start(now) {
                    self.refresh_in_background();
                }
            }
            Phase::Expired => return None,
        }
        Some(token.clone())
    }

    /// Signs out: discards the tokens at once, so that from now on no request gets one and
    /// none starts a refresh (they get [`ReauthRequired`] `signed_out`), then, in a flight of
    /// its own once any running refresh has ended, hands the removal to the persistence hook
    /// and asks the source to revoke what the cell held: the refresh token (a rotated one,
    /// if the running refresh brought one: the generation moved, so it installs nothing but
    /// leaves its refresh token to be revoked), and the access token if asked.
    ///
    /// If tokens are installed ([`seed`](Self::seed)) before that flight runs, the user
    /// signed in again: the new tokens stay, and the flight revokes the grant signed out (set
    /// apart by the seed, rotated by a refresh that ended meanwhile), never the new one.
    pub(crate) async fn sign_out(self: &Arc<Self>, revoke: Revoke) -> Result<(), RevocationError> {
        let access_token = {
            let mut slot = self.lock_slot();
            let access_token = self
                .snapshot
                .load()
                .token
                .as_ref()
                .map(|token| token.header.access_token());
            slot.signed_out = true;
            // A refresh running now sees the generation move: it installs nothing.
            slot.last_generation += 1;
            slot.last_error = Some(self.signed_out_error());
            self.update_snapshot(|s| {
                s.token = None;
                s.background = Background::Blocked;
            });
            access_token
        };
        let access_token = match revoke {
            Revoke::AllTokens => access_token,
            _ => None,
        };
        let (done, revoked) = tokio::sync::oneshot::channel();
        let mut revocation = Some(Revocation { access_token, done });
        loop {
            let step = {
                let mut slot = self.lock_slot();
                match &slot.flight {
                    Some(flight) => Err(flight.clone()),
                    None => match self.register(&mut slot, Work::SignOut, None, "sign_out") {
                        Ok((_, launch)) => Ok(launch),
                        Err(_no_runtime) => return Err(RevocationError::NoRuntime),
                    },
                }
            };
            match step {
                // The running refresh (or persistence) first: its outcome is settled, its
                // refresh token left in the slot for the revocation.
                Err(flight) => drop(flight::wait(flight).await),
                Ok(launch) => {
                    launch.with_revocation(revocation.take()).spawn();
                    break;
                }
            }
        }
        revoked.await.unwrap_or(Err(RevocationError::NoRuntime))
    }

    /// What requests get after a sign-out.
    fn signed_out_error(&self) -> RefreshError {
        ReauthRequired::local("signed_out")
            .with_description("the application signed the user out")
            .into()
    }

    /// Marks the current token rejected: the next request waits for a refresh.
    pub(crate) fn invalidate(&self) {
        let _slot = self.lock_slot();
        let snapshot = self.snapshot.load();
        let Some(token) = &snapshot.token else { return };
        if token.rejected {
            return;
        }
        let token = Token {
            rejected: true,
            ..token.clone()
        };
        drop(snapshot);
        self.update_snapshot(|s| s.token = Some(token));
    }

    /// Replaces the snapshot with an edited copy, and tells the mirror. Call under the slot's
    /// mutex.
    fn update_snapshot(&self, edit: impl FnOnce(&mut Snapshot)) {
        let mut next = Snapshot::clone(&self.snapshot.load());
        edit(&mut next);
        let next = Arc::new(next);
        self.snapshot.store(next.clone());
        if let Some(mirror) = &self.mirror {
            mirror.changed(self, self.fresh_of(&next));
        }
    }

    /// The FRESH token now, as a mirror would have it: for a keyed layer's bucket when it
    /// first holds the cell.
    pub(crate) fn fresh(&self) -> Option<FreshToken> {
        self.fresh_of(&self.snapshot.load())
    }

    /// A snapshot's FRESH token as a mirror keeps it: none for a DPoP cell, whose requests
    /// each need a proof.
    fn fresh_of(&self, snapshot: &Snapshot) -> Option<FreshToken> {
        match self.dpop {
            Some(_) => None,
            None => snapshot.token.as_ref().and_then(Token::fresh),
        }
    }

    /// The DPoP key and nonces, if this cell's tokens are bound to a key.
    pub(crate) fn dpop(&self) -> Option<&Dpop> {
        self.dpop.as_ref()
    }

    /// The token a request that cannot take the FRESH path sends: a FRESH or STALE token at
    /// once (a STALE one starts the background refresh), else the outcome of the one shared
    /// refresh.
    pub(crate) async fn token(self: &Arc<Self>) -> Outcome {
        match self.usable_token() {
            Some(token) => Ok(token),
            None => self.clone().acquire().await,
        }
    }

    /// Whether nothing of this cell is under way: no refresh or persistence running, no
    /// change of tokens waiting for the persistence hook, and the last one stored. Only such
    /// a cell may be dropped while its key lives on: the next one is built from what the
    /// store holds.
    ///
    /// Never waits: a slot that is locked now is busy, so the cell is not settled. A keyed
    /// layer asks with its map's lock held, which a cell's writer takes under the slot's
    /// mutex (to rewrite its mirror); waiting here would close that circle.
    pub(crate) fn is_settled(&self) -> bool {
        let slot = match self.slot.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        slot.flight.is_none() && slot.unpersisted.is_none() && !slot.unstored
    }

    /// Counts a request resent with the nonce its server asked for (DPoP).
    pub(crate) fn count_nonce_resend(&self) {
        self.counters.nonce_resends.fetch_add(1, Ordering::Relaxed);
        crate::metrics::nonce_resend(&*self.source);
    }

    /// Counts a request resent after its token was rejected.
    pub(crate) fn count_retry(&self) {
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        crate::metrics::resend(&*self.source);
    }

    /// A cheap, consistent-enough picture of the cell.
    pub(crate) fn stats(&self) -> Stats {
        let now = Instant::now();
        let snapshot = self.snapshot.load();
        let last_error = self.lock_slot().last_error.as_ref().map(RefreshError::kind);
        let token = snapshot.token.as_ref();
        Stats {
            refreshes: self.counters.refreshes.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            reauths: self.counters.reauths.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            nonce_resends: self.counters.nonce_resends.load(Ordering::Relaxed),
            backed_off: self.counters.backed_off.load(Ordering::Relaxed),
            persist_failures: self.counters.persist_failures.load(Ordering::Relaxed),
            generation: token.map_or(0, |t| t.generation - self.generations),
            time_to_expiry: token
                .and_then(|t| t.expires_at)
                .map(|at| at.saturating_duration_since(now)),
            last_error,
        }
    }

    fn lock_slot(&self) -> MutexGuard<'_, Slot> {
        // The slot holds plain data and no code that can panic runs under it, but if a
        // panic ever poisoned it, the data is still consistent: keep going.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A snapshot of a token cell's counters and state, from
/// [`RefreshLayer::stats`](crate::RefreshLayer::stats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Refreshes started (each may make several token requests).
    pub refreshes: u64,
    /// Refreshes that ended in an error, of any kind.
    pub failures: u64,
    /// Refreshes that ended in [`ReauthRequired`](crate::ReauthRequired).
    pub reauths: u64,
    /// Requests resent after the server rejected their token.
    pub retries: u64,
    /// Requests resent with a new nonce after their API answered `use_dpop_nonce` (DPoP).
    pub nonce_resends: u64,
    /// Rejections returned as they came, without a refresh, because refreshes asked for by
    /// rejections were spaced out (an endpoint rejecting every token), or the grant was
    /// refused or cooling down after a failure.
    pub backed_off: u64,
    /// Times the source's persistence hook failed; the new tokens stayed in use.
    pub persist_failures: u64,
    /// The current token's generation; 0 before the first token.
    pub generation: u64,
    /// Time until the current token expires, if its lifetime is known.
    pub time_to_expiry: Option<Duration>,
    /// The class of the last refresh error, cleared by the next success.
    pub last_error: Option<RefreshErrorKind>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_gives_its_access_token_back() {
        let header = Authorization::new(HeaderValue::from_static("Bearer at-1"));
        assert_eq!(header.access_token().secret(), "at-1");
    }

    #[test]
    fn token_debug_hides_the_header() {
        let token = Token {
            generation: 3,
            header: Authorization::new(HeaderValue::from_static("Bearer s3cr3t-access")),
            expires_at: None,
            refresh_at: None,
            rejected: false,
        };
        let printed = format!("{token:?} {token:#?}");
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("generation: 3"), "{printed}");
    }

    #[test]
    fn the_access_token_is_read_back_from_its_header() {
        let token = Token {
            generation: 1,
            header: Authorization::new(HeaderValue::from_static("Bearer a.b-c~d+e/f=")),
            expires_at: None,
            refresh_at: None,
            rejected: false,
        };
        assert_eq!(token.access_token().secret(), "a.b-c~d+e/f=");
        let one = Token {
            header: Authorization::with_copies(HeaderValue::from_static("Bearer x y"), Copies::One),
            ..token
        };
        assert_eq!(one.access_token().secret(), "x y");
    }

    #[test]
    fn phase_follows_the_clock() {
        let now = Instant::now();
        let token = Token {
            generation: 1,
            header: Authorization::new(HeaderValue::from_static("Bearer x")),
            expires_at: Some(now + Duration::from_secs(10)),
            refresh_at: Some(now + Duration::from_secs(5)),
            rejected: false,
        };
        assert_eq!(token.phase(now), Phase::Fresh);
        assert_eq!(token.phase(now + Duration::from_secs(5)), Phase::Stale);
        assert_eq!(token.phase(now + Duration::from_secs(10)), Phase::Expired);
        let rejected = Token {
            rejected: true,
            ..token
        };
        assert_eq!(rejected.phase(now), Phase::Expired);
    }
}
