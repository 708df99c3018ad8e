//! The single-flight refresh: one detached task per refresh, whose outcome every waiter shares.
//!
//! The task is spawned, not polled by a caller, because a caller may be dropped at any time:
//! with rotation, a refresh cancelled after the server rotated the token would lose the only
//! valid refresh token.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::SystemTime;

use http::HeaderValue;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::schedule::{MAX_SPAN, after};
use super::{Authorization, Background, Outcome, Slot, Token, TokenCell};
use crate::error::{ConfigurationError, RefreshError, TransientError, TransientKind};
use crate::persist::TokenUpdate;
use crate::revocation::{RevocationError, RevocationRequest};
use crate::source::TokenRequest;
use crate::token::{AccessToken, RefreshToken, TokenSet};

/// A running refresh, as its waiters hold it.
pub(super) type Flight = watch::Receiver<Option<Outcome>>;

/// What a flight does.
#[derive(Clone, Copy, Debug)]
pub(super) enum Work {
    /// Ask the source for new tokens, then hand any change to the persistence hook.
    Refresh,
    /// Only hand a change to the persistence hook: tokens were installed by hand. It goes
    /// through the slot so that the hook sees changes in the order they happened.
    Persist,
    /// A sign-out: take the refresh token out, hand the removal to the persistence hook,
    /// then ask the source to revoke what was held. Holding the slot, it runs after any
    /// refresh and before the next.
    SignOut,
}

/// What a sign-out flight revokes besides the refresh token, and where its result goes.
pub(super) struct Revocation {
    /// The access token the cell held when it signed out, if asked to revoke it.
    pub(super) access_token: Option<AccessToken>,
    pub(super) done: tokio::sync::oneshot::Sender<Result<(), RevocationError>>,
}

/// Waits for a refresh's outcome. Dropping this future does not cancel the refresh.
pub(super) async fn wait(mut flight: Flight) -> Outcome {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(shut_down())),
        // The sender is gone without an outcome: its guard normally sends one, so this is a
        // runtime tearing the task down.
        Err(_) => Err(shut_down()),
    }
}

/// A registered flight, not yet spawned: the caller spawns it once the slot is unlocked.
pub(super) struct Launch {
    runtime: Handle,
    guard: FlightGuard,
    delay_until: Option<Instant>,
    trigger: &'static str,
}

impl Launch {
    /// Gives a sign-out flight what it revokes and where it reports.
    pub(super) fn with_revocation(mut self, revocation: Option<Revocation>) -> Self {
        self.guard.revocation = revocation;
        self
    }

    /// Spawns the flight as a detached task. A runtime that is shutting down drops it at
    /// once; its guard then tells the waiters so.
    pub(super) fn spawn(self) {
        let Launch {
            runtime,
            guard,
            delay_until,
            trigger,
        } = self;
        drop(runtime.spawn(guard.run(delay_until, trigger)));
    }
}

impl TokenCell {
    /// Puts a new flight in the slot. Call under the slot's mutex; spawn the returned
    /// [`Launch`] after unlocking it. Fails without a tokio runtime to run it on.
    pub(super) fn register(
        self: &Arc<Self>,
        slot: &mut Slot,
        work: Work,
        delay_until: Option<Instant>,
        trigger: &'static str,
    ) -> Result<(Flight, Launch), RefreshError> {
        let runtime = Handle::try_current().map_err(|_| no_runtime())?;
        let (sender, flight) = watch::channel(None);
        slot.flight = Some(flight.clone());
        if let Work::Refresh = work {
            self.update_snapshot(|s| s.background = Background::Running);
        }
        let guard = FlightGuard {
            cell: self.clone(),
            sender: Some(sender),
            work,
            started_at_generation: slot.last_generation,
            presented: None,
            settled: None,
            revocation: None,
        };
        let launch = Launch {
            runtime,
            guard,
            delay_until,
            trigger,
        };
        Ok((flight, launch))
    }

    /// Calls the source, resending transient failures it says are safe to resend, with
    /// backoff, until the refresh's deadline. Returns the token set and when its request
    /// was sent (lifetimes count from then).
    async fn fetch(
        &self,
        refresh_token: Option<RefreshToken>,
    ) -> Result<(TokenSet, Instant), RefreshError> {
        let schedule = &self.schedule;
        let deadline = after(Instant::now(), schedule.refresh_timeout);
        let mut attempt = 1;
        loop {
            tracing::Span::current().record("attempt", attempt);
            let request = TokenRequest {
                refresh_token: refresh_token.clone(),
                attempt,
            };
            let sent_at = Instant::now();
            let result = match tokio::time::timeout_at(deadline, self.source.fetch(request)).await {
                Ok(result) => result,
                // Not resent: the refresh's deadline has passed.
                Err(_elapsed) => Err(TransientError::new(TransientKind::Timeout)
                    .with_resend_safe(false)
                    .into()),
            };
            crate::metrics::token_request(&*self.source, result.as_ref().map(drop));
            let error = match result {
                Ok(set) => return Ok((set, sent_at)),
                Err(error) => error,
            };
            let RefreshError::Transient(transient) = &error else {
                return Err(error);
            };
            let pause = schedule.backoff(attempt, transient.retry_after(), fastrand::f64());
            if !transient.is_resend_safe()
                || attempt >= schedule.max_attempts
                || after(Instant::now(), pause) >= deadline
            {
                return Err(error);
            }
            tracing::debug!(attempt, error = %error, pause_ms = pause.as_millis() as u64, "token request failed; resending");
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// Records a refresh's result: a new token and generation, or a cooldown. Call under
    /// the slot's mutex. The slot stays taken until [`release`](Self::release), so that the
    /// persistence hook runs before anyone waiting is told, and before the next refresh.
    ///
    /// The refresh token the answer brought is kept whatever became of the rest of it, and
    /// any change of it is queued for the persistence hook: with rotation, the server has
    /// already retired the one presented.
    fn settle(
        &self,
        slot: &mut Slot,
        started_at_generation: u64,
        presented: Option<&RefreshToken>,
        mut result: Result<(TokenSet, Instant), RefreshError>,
    ) -> Outcome {
        let received = match &mut result {
            Ok((set, _)) => set.refresh_token.take(),
            // Taken out: the error goes to every waiter and into the stats.
            Err(RefreshError::Transient(error)) => error.take_refresh_token(),
            Err(_) => None,
        };
        let held_before = slot.refresh_token.clone();
        let installed_by_hand = slot.last_generation != started_at_generation;
        if let Some(set_apart) =
            presented.and_then(|presented| slot.revoke_later.iter_mut().find(|t| *t == presented))
        {
            // Signed out while this refresh ran, then in again: the grant it refreshed was set
            // apart, and what it brought belongs there, for the sign-out's flight to revoke.
            if let Some(received) = received {
                *set_apart = received;
            }
            return match self.snapshot.load().token.clone() {
                Some(installed) if !slot.signed_out => Ok(installed),
                _ => Err(self.signed_out_error()),
            };
        }
        // Tokens installed by hand while this refresh ran keep their own refresh token, if
        // they brought one; otherwise the one the server just rotated to is the only one
        // that works.
        let hand_brought_one = installed_by_hand && slot.refresh_token.as_ref() != presented;
        if let Some(received) = received
            && !hand_brought_one
        {
            slot.refresh_token = Some(received);
        }
        let refresh_token_changed = slot.refresh_token != held_before;
        let only_the_refresh_token = |slot: &Slot| {
            let mut update = TokenUpdate::new(slot.refresh_token.clone());
            update.previous_refresh_token = held_before.clone();
            update
        };

        if installed_by_hand && slot.signed_out {
            // Signed out while this refresh ran: nothing is installed. A refresh token it
            // brought stays in the slot, for the sign-out to revoke and remove.
            if refresh_token_changed {
                slot.record(only_the_refresh_token(slot));
            }
            return Err(self.signed_out_error());
        }
        if installed_by_hand && let Some(installed) = self.snapshot.load().token.clone() {
            // They win over whatever the older grant returned, and its failure says nothing
            // about them.
            if refresh_token_changed {
                slot.record(only_the_refresh_token(slot));
            }
            return Ok(installed);
        }
        let installed =
            result.and_then(|(set, sent_at)| Ok((self.install(slot, &set, sent_at)?, set)));
        match installed {
            Ok((token, set)) => {
                slot.clear_failures();
                let mut update = only_the_refresh_token(slot);
                update.access_token = Some(set.access_token);
                update.expires_at = token.expires_at.map(wall_clock);
                update.scope = set.scope;
                slot.record(update);
                let current = token.clone();
                self.update_snapshot(|s| s.token = Some(current));
                Ok(token)
            }
            Err(error) => {
                if refresh_token_changed {
                    slot.record(only_the_refresh_token(slot));
                }
                self.count_failure(slot, &error);
                Err(error)
            }
        }
    }

    /// Counts a failed refresh and sets the cooldown it earns.
    fn count_failure(&self, slot: &mut Slot, error: &RefreshError) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        if matches!(error, RefreshError::Reauth(_)) {
            self.counters.reauths.fetch_add(1, Ordering::Relaxed);
            crate::metrics::reauth_required(&*self.source);
        }
        slot.failures_in_a_row = slot.failures_in_a_row.saturating_add(1);
        let cooldown =
            self.schedule
                .cooldown(slot.failures_in_a_row, error.retry_after(), fastrand::f64());
        slot.cooldown_until = Some(after(Instant::now(), cooldown));
        slot.last_error = Some(error.clone());
    }

    /// Frees the slot after a flight: the next trigger may start another.
    fn release(&self, slot: &mut Slot, work: Work, outcome: &Outcome) {
        slot.flight = None;
        if let Work::Persist = work {
            return;
        }
        let min_interval_end = self.min_interval_end(slot);
        let background = match outcome {
            Err(RefreshError::Reauth(_)) => Background::Blocked,
            _ => Background::Idle {
                not_before: min_interval_end.max(slot.cooldown_until),
            },
        };
        self.update_snapshot(|s| s.background = background);
    }

    /// Hands the queued change, if any, to the source's persistence hook within the
    /// refresh's time budget. A failure is reported and counted; the tokens stay in use.
    async fn persist_queued(&self) {
        let Some(update) = self.lock_slot().unpersisted.take() else {
            return;
        };
        let budget = self.schedule.refresh_timeout;
        let stored = tokio::time::timeout(budget, unwind_safe(self.source.persist(&update)));
        let failure = match stored.await {
            Ok(Ok(Ok(()))) => {
                self.lock_slot().unstored = false;
                return;
            }
            Ok(Ok(Err(error))) => error.to_string(),
            Ok(Err(Panicked)) => "the hook panicked".to_owned(),
            Err(_elapsed) => format!("the hook took longer than {budget:?}"),
        };
        self.lock_slot().unstored = true;
        self.counters
            .persist_failures
            .fetch_add(1, Ordering::Relaxed);
        crate::metrics::persist_failure(&*self.source);
        tracing::error!(
            error = %failure,
            "storing the new tokens failed; they stay in use in memory"
        );
    }

    /// A sign-out flight's work: unless new tokens came since the sign-out, takes the
    /// refresh token out of the slot, hands the removal to the persistence hook, then asks
    /// the source to revoke, within the refresh's time budget.
    async fn revoke(&self, revocation: Option<&Revocation>) -> Result<(), RevocationError> {
        let (older, refresh_token, removed) = {
            let mut slot = self.lock_slot();
            // Grants signed out before a sign-in (that may have been signed out in turn).
            let mut set_apart = std::mem::take(&mut slot.revoke_later);
            if slot.signed_out {
                let refresh_token = slot.refresh_token.take();
                let removal = refresh_token.clone().or_else(|| set_apart.last().cloned());
                slot.record(TokenUpdate::removal(removal));
                (set_apart, refresh_token, true)
            } else {
                // Signed in again before this ran: the new tokens stay, and the grants signed
                // out are revoked all the same.
                let newest = set_apart.pop();
                (set_apart, newest, false)
            }
        };
        if removed {
            // Removed from the store first: the user is signed out here even if the server
            // cannot be told.
            self.persist_queued().await;
        }
        let deadline = after(Instant::now(), self.schedule.refresh_timeout);
        let mut older_revoked = Ok(());
        for token in older {
            let request = RevocationRequest::new(Some(token), None);
            older_revoked = older_revoked.and(self.revoke_at_server(request, deadline).await);
        }
        let request = RevocationRequest::new(
            refresh_token,
            revocation.and_then(|r| r.access_token.clone()),
        );
        if request.refresh_token.is_none() && request.access_token.is_none() {
            return older_revoked;
        }
        let result = self
            .revoke_at_server(request, deadline)
            .await
            .and(older_revoked);
        match &result {
            Ok(()) => tracing::info!("signed out; the tokens were revoked at the server"),
            Err(error) => {
                tracing::warn!(%error, "signed out; the server did not confirm the revocation")
            }
        }
        result
    }

    /// Asks the source to revoke `request`'s tokens before `deadline`.
    async fn revoke_at_server(
        &self,
        request: RevocationRequest,
        deadline: Instant,
    ) -> Result<(), RevocationError> {
        let revoked = tokio::time::timeout_at(deadline, unwind_safe(self.source.revoke(request)));
        match revoked.await {
            Ok(Ok(result)) => result,
            Ok(Err(Panicked)) => {
                Err(RefreshError::from(TransientError::new(TransientKind::Aborted)).into())
            }
            Err(_elapsed) => {
                Err(RefreshError::from(TransientError::new(TransientKind::Timeout)).into())
            }
        }
    }

    /// Turns a token set into the cell's next token (the refresh token is the caller's to
    /// keep). Lifetimes are cut to [`MAX_SPAN`]: no number a server sends can overflow.
    fn install(&self, slot: &mut Slot, set: &TokenSet, sent_at: Instant) -> Outcome {
        let scheme = match self.dpop {
            Some(_) => "DPoP",
            None => "Bearer",
        };
        let header = authorization(scheme, &set.access_token)?;
        let header = Authorization::with_copies(header, self.copies);
        let lifetime = set.expires_in.map(|lifetime| lifetime.min(MAX_SPAN));
        slot.last_generation += 1;
        Ok(Token {
            generation: slot.last_generation,
            header,
            expires_at: lifetime.map(|lifetime| after(sent_at, lifetime)),
            refresh_at: lifetime
                .map(|lifetime| self.schedule.refresh_at(sent_at, lifetime, fastrand::f64())),
            rejected: false,
        })
    }

    /// Installs a token set as if a refresh sent just now had returned it, and clears the
    /// cooldown and the last error. The refresh token it brings, if any, replaces the one
    /// held. Returns what changed.
    pub(super) fn install_now(
        &self,
        slot: &mut Slot,
        set: TokenSet,
    ) -> Result<TokenUpdate, RefreshError> {
        let token = self.install(slot, &set, Instant::now())?;
        let previous = slot.refresh_token.clone();
        if slot.signed_out {
            // A sign-in before the sign-out's flight ran (which takes the refresh token out
            // of the slot): the signed-out grant's refresh token is not this sign-in's, and
            // is revoked all the same.
            slot.revoke_later.extend(slot.refresh_token.take());
        }
        let mut update = TokenUpdate::new(set.refresh_token.clone().or(slot.refresh_token.clone()));
        update.previous_refresh_token = previous;
        update.access_token = Some(set.access_token);
        update.expires_at = token.expires_at.map(wall_clock);
        update.scope = set.scope;
        if let Some(refresh_token) = set.refresh_token {
            slot.refresh_token = Some(refresh_token);
        }
        slot.clear_failures();
        slot.signed_out = false;
        self.update_snapshot(|s| {
            s.token = Some(token);
            if !matches!(s.background, Background::Running) {
                s.background = Background::Idle { not_before: None };
            }
        });
        Ok(update)
    }

    /// Installs tokens obtained elsewhere (after a new sign-in) and hands them to the
    /// persistence hook, in order with any refresh: at once if the slot is free and a tokio
    /// runtime is at hand, else when the running or the next flight ends.
    pub(crate) fn seed(self: &Arc<Self>, set: TokenSet) -> Result<(), RefreshError> {
        let launch = {
            let mut slot = self.lock_slot();
            let update = self.install_now(&mut slot, set)?;
            slot.record(update);
            match slot.flight {
                Some(_) => None,
                None => self
                    .register(&mut slot, Work::Persist, None, "set_tokens")
                    .ok()
                    .map(|(_, launch)| launch),
            }
        };
        if let Some(launch) = launch {
            launch.spawn();
        }
        Ok(())
    }
}

/// `at` on the monotonic clock, as wall-clock time: for what is stored.
fn wall_clock(at: Instant) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(at.saturating_duration_since(Instant::now()))
        .unwrap_or(now)
}

/// `Bearer <token>`, or `DPoP <token>` for a token bound to a key.
fn authorization(scheme: &str, access_token: &AccessToken) -> Result<HeaderValue, RefreshError> {
    HeaderValue::try_from(format!("{scheme} {}", access_token.secret())).map_err(|_| {
        TransientError::new(TransientKind::InvalidResponse)
            .with_source("the access token holds characters not allowed in a header")
            .into()
    })
}

fn no_runtime() -> RefreshError {
    ConfigurationError::local("no_tokio_runtime")
        .with_description(
            "the refresh runs as a tokio task, and no tokio runtime is running here; \
             call from within one (or enter one with `Handle::enter`)",
        )
        .into()
}

fn shut_down() -> RefreshError {
    TransientError::new(TransientKind::RuntimeShutdown).into()
}

/// A panic in code of the application's (a source, a persistence hook).
struct Panicked;

/// Runs `future`, turning a panic inside it into `Err(Panicked)`: the refresh then ends in an
/// error its waiters receive, rather than in a dead task.
async fn unwind_safe<F: Future>(future: F) -> Result<F::Output, Panicked> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    })
    .await
}

/// Owns a flight from spawn to outcome. If the task is dropped before it ends (a runtime
/// shutting down, or never spawned), the guard still settles the refresh, frees the slot and
/// tells the waiters, so no caller hangs on a dead flight.
struct FlightGuard {
    cell: Arc<TokenCell>,
    sender: Option<watch::Sender<Option<Outcome>>>,
    work: Work,
    /// The cell's generation when the refresh was started: if it moves meanwhile, tokens
    /// were installed by hand.
    started_at_generation: u64,
    /// The refresh token this refresh presents, read inside the slot as it starts.
    presented: Option<RefreshToken>,
    /// The outcome, once settled: a guard dropped after this only releases.
    settled: Option<Outcome>,
    /// A sign-out's: what it revokes, and where its result goes. Dropped unsent if the task
    /// dies first; the caller then hears that no runtime ran it.
    revocation: Option<Revocation>,
}

impl FlightGuard {
    async fn run(mut self, delay_until: Option<Instant>, trigger: &'static str) {
        if let Some(at) = delay_until {
            tokio::time::sleep_until(at).await;
        }
        let cell = self.cell.clone();
        let span = tracing::info_span!(
            "oauth_refresh.refresh",
            grant = cell.source.grant(),
            host = cell.source.host(),
            trigger,
            attempt = tracing::field::Empty,
            generation = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let outcome = match self.work {
            Work::Refresh => {
                {
                    // Read inside the slot, now: a refresh or new tokens may have come
                    // while this one waited to start.
                    let mut slot = cell.lock_slot();
                    slot.last_started = Some(Instant::now());
                    self.started_at_generation = slot.last_generation;
                    self.presented = slot.refresh_token.clone();
                }
                cell.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                // Read for the metrics only: without the feature, not even compiled.
                #[cfg(feature = "metrics")]
                let started = Instant::now();
                #[cfg(feature = "metrics")]
                crate::metrics::remaining_lifetime(
                    &*cell.source,
                    cell.snapshot
                        .load()
                        .token
                        .as_ref()
                        .and_then(|t| t.expires_at)
                        .map(|at| at.saturating_duration_since(started)),
                );
                let fetched = async {
                    tracing::debug!("refresh started");
                    unwind_safe(cell.fetch(self.presented.clone())).await
                }
                .instrument(span.clone())
                .await;
                let result = fetched.unwrap_or_else(|Panicked| {
                    Err(TransientError::new(TransientKind::Aborted).into())
                });
                let outcome = cell.settle(
                    &mut cell.lock_slot(),
                    self.started_at_generation,
                    self.presented.as_ref(),
                    result,
                );
                #[cfg(feature = "metrics")]
                crate::metrics::refresh(
                    &*cell.source,
                    started.elapsed(),
                    outcome.as_ref().map(drop),
                );
                outcome
            }
            Work::Persist => current_token(&cell),
            Work::SignOut => {
                let revocation = self.revocation.take();
                let result = cell
                    .revoke(revocation.as_ref())
                    .instrument(span.clone())
                    .await;
                if let Some(revocation) = revocation {
                    drop(revocation.done.send(result));
                }
                Err(cell.signed_out_error())
            }
        };
        self.settled = Some(outcome);
        cell.persist_queued().instrument(span.clone()).await;
        let outcome = self.finish();
        if let Work::Persist | Work::SignOut = self.work {
            return;
        }
        let _entered = span.enter();
        match &outcome {
            Ok(token) => {
                span.record("outcome", "ok");
                span.record("generation", token.generation);
                tracing::info!(
                    expires_in_s = token
                        .expires_at
                        .map(|at| at.saturating_duration_since(Instant::now()).as_secs()),
                    "token refreshed"
                );
            }
            Err(error) => {
                span.record("outcome", tracing::field::debug(error.kind()));
                tracing::warn!(%error, "token refresh failed");
            }
        }
    }

    /// Releases the slot with the settled outcome (settling a refresh that never finished
    /// as cut short by its runtime) and tells the waiters.
    fn finish(&mut self) -> Outcome {
        let cell = self.cell.clone();
        let mut slot = cell.lock_slot();
        let outcome = match self.settled.take() {
            Some(outcome) => outcome,
            None => match self.work {
                Work::Refresh => cell.settle(
                    &mut slot,
                    self.started_at_generation,
                    self.presented.as_ref(),
                    Err(shut_down()),
                ),
                Work::Persist => current_token(&cell),
                Work::SignOut => Err(cell.signed_out_error()),
            },
        };
        cell.release(&mut slot, self.work, &outcome);
        drop(slot);
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(outcome.clone()));
        }
        outcome
    }
}

/// The token a persist-only flight's waiters get: the one installed by hand.
fn current_token(cell: &TokenCell) -> Outcome {
    cell.snapshot.load().token.clone().ok_or_else(shut_down)
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.sender.is_some() {
            drop(self.finish());
        }
    }
}
