//! The store's listener: one pub/sub connection per [`RedisStore`](super::RedisStore),
//! subscribed once to the pattern of every entry's channel, through which all the store's
//! waiters hear of their entries' changes. A connection per waiter would cost the server a
//! client for each key that waits on another replica's refresh.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::Client;
use tokio::sync::{Notify, oneshot};

/// Opens its connection at the first wait, and again at the next wait after it dropped.
pub(super) struct Listener {
    client: Client,
    /// `<prefix>changed:*`.
    pattern: String,
    timeout: Duration,
    /// Each channel that someone waits on: how to wake them, and how many they are.
    channels: Arc<Mutex<Channels>>,
    /// The connection's reader task, while it runs: dropping this (with the listener) ends
    /// it and closes the connection.
    reader: Mutex<Option<oneshot::Sender<()>>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

type Channels = HashMap<String, (Arc<Notify>, usize)>;

impl Listener {
    pub(super) fn new(client: Client, pattern: String, timeout: Duration) -> Self {
        Listener {
            client,
            pattern,
            timeout,
            channels: Arc::default(),
            reader: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Listens to `channel` until the returned guard is dropped. An error (the connection
    /// could not be had within the timeout) leaves the caller to poll.
    pub(super) async fn listen(&self, channel: String) -> Result<Listening<'_>, redis::RedisError> {
        let notify = {
            let mut channels = lock(&self.channels);
            let (notify, waiters) = channels
                .entry(channel.clone())
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            *waiters += 1;
            notify.clone()
        };
        let listening = Listening {
            listener: self,
            channel,
            notify,
        };
        self.connect().await?;
        Ok(listening)
    }

    /// Connects and subscribes, unless the reader task already runs.
    async fn connect(&self) -> Result<(), redis::RedisError> {
        let running = || {
            let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
            reader.as_ref().is_some_and(|stop| !stop.is_closed())
        };
        if running() {
            return Ok(());
        }
        let _one_at_a_time = self.connecting.lock().await;
        if running() {
            return Ok(());
        }
        let subscribed = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.psubscribe(&self.pattern).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(self.timeout, subscribed)
            .await
            .map_err(|_elapsed| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        let (stop, stopped) = oneshot::channel();
        *self.reader.lock().unwrap_or_else(PoisonError::into_inner) = Some(stop);
        tokio::spawn(read(
            pubsub.into_on_message(),
            self.channels.clone(),
            stopped,
        ));
        Ok(())
    }
}

/// Wakes each message's waiters until the connection drops or the listener is dropped;
/// then wakes every waiter, to read its entry again.
async fn read(
    mut messages: redis::aio::PubSubStream,
    channels: Arc<Mutex<Channels>>,
    mut stopped: oneshot::Receiver<()>,
) {
    use futures_core::Stream;
    loop {
        let next = std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx));
        let message = tokio::select! {
            message = next => message,
            _ = &mut stopped => return,
        };
        let Some(message) = message else { break };
        if let Some((notify, _)) = lock(&channels).get(message.get_channel_name()) {
            notify.notify_waiters();
        }
    }
    // The connection is gone: the next wait opens another.
    drop(stopped);
    for (notify, _) in lock(&channels).values() {
        notify.notify_waiters();
    }
}

/// A waiter's place on a channel.
pub(super) struct Listening<'a> {
    listener: &'a Listener,
    channel: String,
    notify: Arc<Notify>,
}

impl Listening<'_> {
    /// The channel's next message (or the connection's end). Create it before reading the
    /// entry, so that a write between the two is not missed.
    pub(super) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        let mut channels = lock(&self.listener.channels);
        if let Entry::Occupied(mut waiting) = channels.entry(std::mem::take(&mut self.channel)) {
            waiting.get_mut().1 -= 1;
            if waiting.get().1 == 0 {
                waiting.remove();
            }
        }
    }
}

fn lock(channels: &Mutex<Channels>) -> MutexGuard<'_, Channels> {
    // Plain data, and nothing that panics runs under it.
    channels.lock().unwrap_or_else(PoisonError::into_inner)
}
