//! The single-flight refresh: one detached task per refresh, whose outcome every waiter shares.
//!
//! The task is spawned, not polled by a caller, because a caller may be dropped at any time:
//! with rotation, a refresh cancelled after the server rotated the token would lose the only
//! valid refresh token.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::{Authorization, Background, Outcome, Schedule, Slot, Token, TokenCell};
use crate::error::{RefreshError, TransientError, TransientKind};
use crate::source::TokenRequest;
use crate::token::{AccessToken, RefreshToken, TokenSet};

type Flight = watch::Receiver<Option<Outcome>>;

/// Waits for a refresh's outcome. Dropping this future does not cancel the refresh.
pub(super) async fn wait(mut flight: Flight) -> Outcome {
    match flight.wait_for(Option::is_some).await {
        Ok(outcome) => outcome
            .clone()
            .unwrap_or_else(|| Err(TransientError::new(TransientKind::Aborted).into())),
        // The task ended without an outcome: its guard normally sends one, so this is a
        // runtime shutting down.
        Err(_) => Err(TransientError::new(TransientKind::Aborted).into()),
    }
}

impl TokenCell {
    /// Puts a new refresh in the slot and spawns it. Call under the slot's mutex, within a
    /// tokio runtime.
    pub(super) fn start_flight(
        self: &Arc<Self>,
        slot: &mut Slot,
        delay_until: Option<Instant>,
        trigger: &'static str,
    ) -> Flight {
        let (sender, flight) = watch::channel(None);
        slot.flight = Some(flight.clone());
        self.update_snapshot(|s| s.background = Background::Running);
        let guard = FlightGuard {
            cell: self.clone(),
            sender: Some(sender),
            started_at_generation: slot.last_generation,
        };
        tokio::spawn(guard.run(delay_until, trigger));
        flight
    }

    /// Calls the source, resending transient failures it says are safe to resend, with
    /// backoff, until the refresh's deadline. Returns the token set and when its request
    /// was sent (lifetimes count from then).
    async fn fetch(
        &self,
        schedule: &Schedule,
        refresh_token: Option<RefreshToken>,
    ) -> Result<(TokenSet, Instant), RefreshError> {
        let deadline = Instant::now() + schedule.refresh_timeout;
        let mut attempt = 1;
        loop {
            tracing::Span::current().record("attempt", attempt);
            let request = TokenRequest {
                refresh_token: refresh_token.clone(),
                attempt,
            };
            let sent_at = Instant::now();
            let result = tokio::time::timeout_at(deadline, self.source.fetch(request)).await;
            let error = match result {
                Ok(Ok(set)) => return Ok((set, sent_at)),
                Ok(Err(error)) => error,
                Err(_elapsed) => {
                    return Err(TransientError::new(TransientKind::Timeout)
                        .with_resend_safe(false)
                        .into());
                }
            };
            let RefreshError::Transient(transient) = &error else {
                return Err(error);
            };
            let pause = schedule.backoff(attempt, transient.retry_after(), fastrand::f64());
            if !transient.is_resend_safe()
                || attempt >= schedule.max_attempts
                || Instant::now() + pause >= deadline
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
    /// Returns the outcome, and the token set to persist if one was installed.
    fn settle(
        &self,
        slot: &mut Slot,
        started_at_generation: u64,
        result: Result<(TokenSet, Instant), RefreshError>,
    ) -> (Outcome, Option<TokenSet>) {
        let now = Instant::now();
        if slot.last_generation != started_at_generation
            && let Some(seeded) = self.snapshot.load().token.clone()
        {
            // Tokens from a new sign-in were installed while this refresh ran: they win over
            // whatever the older grant returned, and its failure says nothing about them.
            return (Ok(seeded), None);
        }
        let mut installed = None;
        let outcome = match result {
            Ok((mut set, sent_at)) => {
                // Rotation-safe: an answer without a refresh token keeps the one presented.
                if set.refresh_token.is_none() {
                    set.refresh_token = slot.refresh_token.clone();
                }
                let token = self.install(slot, set.clone(), sent_at);
                if token.is_ok() {
                    installed = Some(set);
                }
                token
            }
            Err(error) => Err(error),
        };
        match &outcome {
            Ok(token) => {
                slot.clear_failures();
                let token = token.clone();
                self.update_snapshot(|s| s.token = Some(token));
            }
            Err(error) => {
                if let RefreshError::Transient(transient) = error
                    && let Some(refresh_token) = transient.received_refresh_token()
                {
                    // The answer failed, but the server may have rotated the old token away.
                    slot.refresh_token = Some(refresh_token.clone());
                }
                self.counters.failures.fetch_add(1, Ordering::Relaxed);
                if matches!(error, RefreshError::Reauth(_)) {
                    self.counters.reauths.fetch_add(1, Ordering::Relaxed);
                }
                slot.failures_in_a_row += 1;
                let cooldown = slot.schedule.cooldown(
                    slot.failures_in_a_row,
                    error.retry_after(),
                    fastrand::f64(),
                );
                slot.cooldown_until = Some(now + cooldown);
                slot.last_error = Some(error.clone());
            }
        }
        (outcome, installed)
    }

    /// Frees the slot after a refresh settled: the next trigger may start another.
    fn release(&self, slot: &mut Slot, outcome: &Outcome) {
        slot.flight = None;
        let min_interval_end = slot.last_started.map(|at| at + slot.schedule.min_interval);
        let background = match outcome {
            Err(RefreshError::Reauth(_)) => Background::Blocked,
            _ => Background::Idle {
                not_before: min_interval_end.max(slot.cooldown_until),
            },
        };
        self.update_snapshot(|s| s.background = background);
    }

    /// Runs the source's persistence hook within the refresh's time budget. A failure is
    /// reported and counted; the new token stays in use.
    async fn persist(&self, tokens: &TokenSet, previous: Option<&RefreshToken>, budget: Duration) {
        let failure =
            match tokio::time::timeout(budget, self.source.persist(tokens, previous)).await {
                Ok(Ok(())) => return,
                Ok(Err(error)) => error.to_string(),
                Err(_elapsed) => format!("the hook took longer than {budget:?}"),
            };
        self.counters
            .persist_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            error = %failure,
            "storing the new tokens failed; they stay in use in memory"
        );
    }

    /// Turns a token set into the cell's next token. The refresh token is kept first, so
    /// that an access token unfit for a header never costs the refresh token that came
    /// with it.
    fn install(&self, slot: &mut Slot, set: TokenSet, sent_at: Instant) -> Outcome {
        let TokenSet {
            access_token,
            refresh_token,
            expires_in,
            ..
        } = set;
        if let Some(refresh_token) = refresh_token {
            slot.refresh_token = Some(refresh_token);
        }
        let header = Authorization::new(bearer_header(&access_token)?);
        slot.last_generation += 1;
        Ok(Token {
            generation: slot.last_generation,
            header,
            expires_at: expires_in.map(|lifetime| sent_at + lifetime),
            refresh_at: expires_in
                .map(|lifetime| slot.schedule.refresh_at(sent_at, lifetime, fastrand::f64())),
            rejected: false,
        })
    }

    /// Installs a token set obtained elsewhere (after a new sign-in), as if a refresh sent
    /// just now had returned it. Clears the cooldown and the last error.
    pub(crate) fn seed(&self, set: TokenSet) -> Result<(), RefreshError> {
        let mut slot = self.lock_slot();
        let outcome = self.install(&mut slot, set, Instant::now())?;
        slot.clear_failures();
        self.update_snapshot(|s| {
            s.token = Some(outcome);
            if !matches!(s.background, Background::Running) {
                s.background = Background::Idle { not_before: None };
            }
        });
        Ok(())
    }
}

fn bearer_header(access_token: &AccessToken) -> Result<HeaderValue, RefreshError> {
    HeaderValue::try_from(format!("Bearer {}", access_token.secret())).map_err(|_| {
        TransientError::new(TransientKind::InvalidResponse)
            .with_source("the access token holds characters not allowed in a header")
            .into()
    })
}

/// Owns a refresh from spawn to outcome. If the task is dropped or panics before it settles,
/// the guard still frees the slot and tells the waiters, so no caller hangs on a dead flight.
struct FlightGuard {
    cell: Arc<TokenCell>,
    sender: Option<watch::Sender<Option<Outcome>>>,
    /// The cell's generation when the refresh was started: if it moves meanwhile, tokens
    /// were installed by hand.
    started_at_generation: u64,
}

impl FlightGuard {
    async fn run(mut self, delay_until: Option<Instant>, trigger: &'static str) {
        if let Some(at) = delay_until {
            tokio::time::sleep_until(at).await;
        }
        let cell = self.cell.clone();
        let (schedule, presented) = {
            let mut slot = cell.lock_slot();
            slot.last_started = Some(Instant::now());
            (slot.schedule.clone(), slot.refresh_token.clone())
        };
        cell.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!(
            "oauth_refresh.refresh",
            grant = cell.source.grant(),
            host = cell.source.host(),
            trigger,
            attempt = tracing::field::Empty,
            generation = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = async {
            tracing::debug!("refresh started");
            cell.fetch(&schedule, presented.clone()).await
        }
        .instrument(span.clone())
        .await;
        let (outcome, installed) =
            cell.settle(&mut cell.lock_slot(), self.started_at_generation, result);
        if let Some(tokens) = installed {
            cell.persist(&tokens, presented.as_ref(), schedule.refresh_timeout)
                .instrument(span.clone())
                .await;
        }
        cell.release(&mut cell.lock_slot(), &outcome);
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
        if let Some(sender) = self.sender.take() {
            sender.send_replace(Some(outcome));
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        let error: RefreshError = TransientError::new(TransientKind::Aborted).into();
        let mut slot = self.cell.lock_slot();
        let (outcome, _) = self
            .cell
            .settle(&mut slot, self.started_at_generation, Err(error));
        self.cell.release(&mut slot, &outcome);
        drop(slot);
        sender.send_replace(Some(outcome));
    }
}
