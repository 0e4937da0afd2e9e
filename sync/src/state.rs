//! The shared store: topics (append-only logs with subscribers) and states (counters with
//! barrier waiters), behind [`Service`], a cheap-clone handle.
//!
//! Every operation is synchronous and short: it takes a std [`Mutex`], changes the store, and
//! pushes replies into unbounded queues (a websocket connection's outgoing queue, or an in-process
//! channel). No lock is ever held across an `.await` (the one async method, `barrier`, drops its
//! guard before it waits), which is why a std mutex is the right tool: it is cheaper than an async
//! one, and the compiler helps keep it that way, because a future that held a `MutexGuard` across
//! an await would not be `Send` and could not be spawned. Because pushes never wait, a slow or
//! vanished subscriber cannot stall a publisher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::protocol::Outgoing;

/// A connection's outgoing queue.
pub(crate) type Outbox = mpsc::UnboundedSender<Outgoing>;

/// Identifies a websocket connection, so that its subscriptions and waiters can be removed.
pub(crate) type ConnId = u64;

/// One published message. The JSON text is produced on first use (only websocket subscribers
/// need it) and then shared by all of them.
#[derive(Debug)]
pub(crate) struct Entry {
    value: Arc<Value>,
    text: OnceLock<Box<str>>,
}

impl Entry {
    fn new(value: Value) -> Self {
        Entry { value: Arc::new(value), text: OnceLock::new() }
    }

    /// The payload as JSON text, for the `subscribe` field.
    pub(crate) fn text(&self) -> &str {
        // `Display` for `Value` writes compact JSON and cannot fail.
        self.text.get_or_init(|| self.value.to_string().into_boxed_str())
    }
}

/// Where a topic delivers its messages.
enum Subscriber {
    /// A websocket subscription: responses with the subscribe request's id.
    Remote { conn: ConnId, id: Arc<str>, outbox: Outbox },
    /// A [`Subscription`].
    Local(mpsc::UnboundedSender<Arc<Value>>),
}

impl Subscriber {
    /// Queues one message; false when the receiving side is gone.
    fn deliver(&self, entry: &Arc<Entry>) -> bool {
        match self {
            Subscriber::Remote { id, outbox, .. } => {
                outbox.send(Outgoing::Subscribe { id: id.clone(), entry: entry.clone() }).is_ok()
            }
            Subscriber::Local(tx) => tx.send(entry.value.clone()).is_ok(),
        }
    }
}

#[derive(Default)]
struct Topic {
    log: Vec<Arc<Entry>>,
    subscribers: Vec<Subscriber>,
}

/// Who waits on a barrier.
enum Waiter {
    Remote { conn: ConnId, id: Box<str>, outbox: Outbox },
    Local(oneshot::Sender<()>),
}

impl Waiter {
    fn release(self) {
        // A failed send means the connection or the future is gone, which is fine.
        match self {
            Waiter::Remote { id, outbox, .. } => {
                let _ = outbox.send(Outgoing::Barrier { id });
            }
            Waiter::Local(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

#[derive(Default)]
struct State {
    count: u64,
    /// Waiters by target. A signal releases every target up to the new count, so a `BTreeMap`
    /// makes that a split instead of a scan over all waiters.
    waiters: BTreeMap<u64, Vec<Waiter>>,
}

struct Shared {
    /// Topic lookup only. Each topic has its own lock so that a fan-out to many subscribers holds
    /// up that topic alone.
    topics: Mutex<HashMap<String, Arc<Mutex<Topic>>>>,
    /// Counters and waiters. One lock: every operation on it is a few instructions, and a barrier
    /// release only moves waiters out (the replies are pushed after unlocking).
    states: Mutex<HashMap<String, State>>,
    /// Who is told about topics as they get their first message ([`Service::watch_topics`]).
    /// Lock order: a topic's lock, then this one (`publish` announces under the topic lock).
    topic_watchers: Mutex<Vec<TopicWatcher>>,
    /// Set by [`Service::close`]: in-process subscriptions end once they have delivered the log.
    closed: AtomicBool,
    next_conn: AtomicU64,
}

/// The sync service's store, shared by the websocket server and in-process callers. Cloning is
/// cheap (an `Arc`); every clone sees the same topics and states.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

impl Default for Service {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service").field("closed", &self.shared.closed.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the store consistent (it
/// only pushes to vectors and bumps counters), so a panic elsewhere cannot leave it half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Service {
    /// An empty store.
    pub fn new() -> Service {
        Service {
            shared: Arc::new(Shared {
                topics: Mutex::new(HashMap::new()),
                states: Mutex::new(HashMap::new()),
                topic_watchers: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                next_conn: AtomicU64::new(1),
            }),
        }
    }

    /// Appends `payload` to `topic` (creating it) and returns the new length of its log, which is
    /// the message's 1-based sequence number.
    pub fn publish(&self, topic: &str, payload: Value) -> u64 {
        let entry = Arc::new(Entry::new(payload));
        let name = topic;
        let topic = self.topic(name);
        let mut topic = lock(&topic);
        topic.log.push(entry.clone());
        let seq = topic.log.len() as u64;
        // Delivering under the topic lock is what keeps every subscriber's stream in publish order,
        // replay included (see `subscribe_with`). The pushes never block.
        topic.subscribers.retain(|s| s.deliver(&entry));
        if seq == 1 {
            // Under the topic lock too: a watcher that scans the topics after registering either
            // finds this message in the log or is told here (or both; `TopicWatch` drops repeats).
            lock(&self.shared.topic_watchers)
                .retain(|w| !name.starts_with(&*w.prefix) || w.tx.send(name.into()).is_ok());
        }
        seq
    }

    /// Watches the names of topics under `prefix` (a plain string prefix of the full key, e.g.
    /// `Namespace::topic("network:")`) as they get their first message: first every such topic
    /// that already has one, then each new one as it is published to, each name once. Topics
    /// that were only subscribed to (which creates them empty) are not reported until someone
    /// publishes. The watch ends after [`Service::close`], once it has delivered what it had.
    pub fn watch_topics(&self, prefix: &str) -> TopicWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        {
            // Registered before the scan below, so that no first message falls between the two.
            // A closed service keeps no watchers (see `close`): the scan alone is delivered.
            let mut watchers = lock(&self.shared.topic_watchers);
            if !self.is_closed() {
                watchers.push(TopicWatcher { prefix: prefix.into(), tx: tx.clone() });
            }
        }
        let existing: Vec<(String, Arc<Mutex<Topic>>)> = lock(&self.shared.topics)
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, topic)| (name.clone(), topic.clone()))
            .collect();
        for (name, topic) in existing {
            if !lock(&topic).log.is_empty() {
                let _ = tx.send(name.into());
            }
        }
        TopicWatch { rx, seen: HashSet::new() }
    }

    /// Follows `topic`: every message already published, from the first, then each new one, in
    /// publish order. The subscription ends only after [`Service::close`] (which `serve` calls
    /// when it returns), once it has delivered everything published before.
    pub fn subscribe(&self, topic: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribe_with(topic, Subscriber::Local(tx));
        Subscription { rx }
    }

    /// Increments `state` and returns the new count (1-based: the first signal returns 1).
    pub fn signal_entry(&self, state: &str) -> u64 {
        let (count, released) = {
            let mut states = lock(&self.shared.states);
            let st = state_mut(&mut states, state);
            st.count += 1;
            let count = st.count;
            let released = if st.waiters.first_key_value().is_some_and(|(&t, _)| t <= count) {
                let rest = st.waiters.split_off(&(count + 1));
                std::mem::replace(&mut st.waiters, rest)
            } else {
                BTreeMap::new()
            };
            (count, released)
        };
        for waiter in released.into_values().flatten() {
            waiter.release();
        }
        count
    }

    /// Resolves once `state`'s count is at least `target`: at once if it already is (or `target`
    /// is 0), otherwise when enough signals arrive. There is no timeout.
    pub async fn barrier(&self, state: &str, target: u64) {
        let rx = {
            let mut states = lock(&self.shared.states);
            let st = state_mut(&mut states, state);
            if st.count >= target {
                return;
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.entry(target).or_default().push(Waiter::Local(tx));
            rx
        };
        // The sender is dropped without a send only if the service is dropped, which cannot happen
        // while `self` is borrowed; either way there is nothing more to wait for.
        let _ = rx.await;
    }

    /// The current count of `state` (0 if never signalled).
    pub fn state_count(&self, state: &str) -> u64 {
        lock(&self.shared.states).get(state).map_or(0, |st| st.count)
    }

    /// The number of messages published to `topic` so far.
    pub fn topic_len(&self, topic: &str) -> u64 {
        let topic = lock(&self.shared.topics).get(topic).cloned();
        topic.map_or(0, |t| lock(&t).log.len() as u64)
    }

    /// Ends every in-process [`Subscription`] and [`TopicWatch`] once it has delivered what was published so far;
    /// later ones replay the log and end. Publishing, signals and barriers still work, and
    /// websocket subscribers are unaffected. `serve` calls this when it returns, so that a caller
    /// following a topic in-process sees the end of the run.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        lock(&self.shared.topic_watchers).clear();
        let topics: Vec<_> = lock(&self.shared.topics).values().cloned().collect();
        for topic in topics {
            lock(&topic).subscribers.retain(|s| matches!(s, Subscriber::Remote { .. }));
        }
    }

    /// Whether [`Service::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    // ---- used by the websocket connections -------------------------------------------------

    pub(crate) fn new_conn_id(&self) -> ConnId {
        self.shared.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A websocket subscribe: replays into `outbox`, then streams.
    pub(crate) fn subscribe_remote(&self, topic: &str, conn: ConnId, id: Arc<str>, outbox: &Outbox) {
        self.subscribe_with(topic, Subscriber::Remote { conn, id, outbox: outbox.clone() });
    }

    /// Stops the subscriptions `conn` made under `id` on `topic` (`is_cancel`, or disconnect).
    pub(crate) fn unsubscribe_remote(&self, topic: &str, conn: ConnId, id: Option<&str>) {
        let Some(topic) = lock(&self.shared.topics).get(topic).cloned() else { return };
        lock(&topic).subscribers.retain(|s| match s {
            Subscriber::Remote { conn: c, id: i, .. } => !(*c == conn && id.is_none_or(|id| **i == *id)),
            Subscriber::Local(_) => true,
        });
    }

    /// A websocket barrier: replies into `outbox` now or when the count reaches `target`.
    /// Returns true if the barrier is pending (the caller must forget it on disconnect).
    pub(crate) fn barrier_remote(&self, state: &str, target: u64, conn: ConnId, id: &str, outbox: &Outbox) -> bool {
        let mut states = lock(&self.shared.states);
        let st = state_mut(&mut states, state);
        if st.count >= target {
            drop(states);
            let _ = outbox.send(Outgoing::Barrier { id: id.into() });
            false
        } else {
            st.waiters.entry(target).or_default().push(Waiter::Remote { conn, id: id.into(), outbox: outbox.clone() });
            true
        }
    }

    /// Drops `conn`'s pending barriers on `state` (disconnect). The count stays.
    pub(crate) fn forget_waiters(&self, state: &str, conn: ConnId) {
        let mut states = lock(&self.shared.states);
        let Some(st) = states.get_mut(state) else { return };
        st.waiters.retain(|_, waiters| {
            waiters.retain(|w| !matches!(w, Waiter::Remote { conn: c, .. } if *c == conn));
            !waiters.is_empty()
        });
    }

    fn topic(&self, name: &str) -> Arc<Mutex<Topic>> {
        let mut topics = lock(&self.shared.topics);
        if let Some(t) = topics.get(name) {
            return t.clone();
        }
        let t = Arc::new(Mutex::new(Topic::default()));
        topics.insert(name.to_owned(), t.clone());
        t
    }

    fn subscribe_with(&self, topic: &str, subscriber: Subscriber) {
        let topic = self.topic(topic);
        let mut topic = lock(&topic);
        // Replay and registration happen under the same lock that `publish` holds while it
        // appends and delivers, so no message can slip between the replay and the stream, and none
        // can come twice.
        for entry in &topic.log {
            if !subscriber.deliver(entry) {
                return;
            }
        }
        // A closed service keeps no in-process subscribers: dropping the sender here ends the
        // subscription after the replay. The flag is read under the topic lock, and `close` sets it
        // before it visits the topics, so a subscriber is either seen by `close` or sees the flag.
        if matches!(subscriber, Subscriber::Local(_)) && self.is_closed() {
            return;
        }
        topic.subscribers.push(subscriber);
    }
}

fn state_mut<'a>(states: &'a mut HashMap<String, State>, name: &str) -> &'a mut State {
    // Look up before inserting so that the common case does not allocate the key.
    if !states.contains_key(name) {
        states.insert(name.to_owned(), State::default());
    }
    states.get_mut(name).unwrap_or_else(|| unreachable!("inserted above"))
}

/// An in-process subscription to a topic, from [`Service::subscribe`]. Also a
/// [`futures::Stream`].
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<Arc<Value>>,
}

impl Subscription {
    /// The next message, in publish order; `None` once the service is closed and everything
    /// published before has been delivered.
    pub async fn next(&mut self) -> Option<Arc<Value>> {
        self.rx.recv().await
    }

    /// The next message if one is already queued.
    pub fn try_next(&mut self) -> Option<Arc<Value>> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Subscription {
    type Item = Arc<Value>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// A registration of [`Service::watch_topics`].
struct TopicWatcher {
    prefix: Box<str>,
    tx: mpsc::UnboundedSender<Arc<str>>,
}

/// The names of topics as they get their first message, from [`Service::watch_topics`]. Also a
/// [`futures::Stream`].
#[derive(Debug)]
pub struct TopicWatch {
    rx: mpsc::UnboundedReceiver<Arc<str>>,
    /// A topic can be both found by the initial scan and announced by its first publish.
    seen: HashSet<Arc<str>>,
}

impl TopicWatch {
    /// The next topic name (the full key); `None` once the service is closed and every topic
    /// published to before has been delivered.
    pub async fn next(&mut self) -> Option<Arc<str>> {
        std::future::poll_fn(|cx| self.poll_name(cx)).await
    }

    /// The next topic name if one is already known.
    pub fn try_next(&mut self) -> Option<Arc<str>> {
        while let Ok(name) = self.rx.try_recv() {
            if self.seen.insert(name.clone()) {
                return Some(name);
            }
        }
        None
    }

    fn poll_name(&mut self, cx: &mut Context<'_>) -> Poll<Option<Arc<str>>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(name)) if !self.seen.insert(name.clone()) => continue,
                other => return other,
            }
        }
    }
}

impl futures::Stream for TopicWatch {
    type Item = Arc<str>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_name(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn barrier_releases_when_the_count_reaches_the_target() {
        let service = Service::new();
        service.barrier("s", 0).await;
        let waiter = tokio::spawn({
            let service = service.clone();
            async move { service.barrier("s", 2).await }
        });
        assert_eq!(service.signal_entry("s"), 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert_eq!(service.signal_entry("s"), 2);
        waiter.await.expect("barrier task");
        assert_eq!(service.state_count("s"), 2);
        // Already reached: immediate.
        service.barrier("s", 2).await;
    }

    #[tokio::test]
    async fn waiters_with_different_targets_release_in_turn() {
        let service = Service::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for target in [3, 1, 2] {
            let (service, tx) = (service.clone(), tx.clone());
            tokio::spawn(async move {
                service.barrier("s", target).await;
                let _ = tx.send(target);
            });
        }
        tokio::task::yield_now().await;
        for expected in 1..=3 {
            service.signal_entry("s");
            assert_eq!(rx.recv().await, Some(expected));
        }
    }

    #[tokio::test]
    async fn subscribe_replays_then_streams() {
        let service = Service::new();
        assert_eq!(service.publish("t", json!(1)), 1);
        assert_eq!(service.publish("t", json!({"a": 2})), 2);
        let mut sub = service.subscribe("t");
        assert_eq!(service.publish("t", json!("three")), 3);
        assert_eq!(sub.next().await.as_deref(), Some(&json!(1)));
        assert_eq!(sub.next().await.as_deref(), Some(&json!({"a": 2})));
        assert_eq!(sub.next().await.as_deref(), Some(&json!("three")));
        assert_eq!(sub.try_next(), None);
        assert_eq!(service.topic_len("t"), 3);
        assert_eq!(service.topic_len("other"), 0);
    }

    #[tokio::test]
    async fn close_ends_subscriptions_after_the_log() {
        let service = Service::new();
        let mut before = service.subscribe("t");
        service.publish("t", json!(1));
        service.close();
        assert_eq!(before.next().await.as_deref(), Some(&json!(1)));
        assert_eq!(before.next().await, None);
        let mut after = service.subscribe("t");
        assert_eq!(after.next().await.as_deref(), Some(&json!(1)));
        assert_eq!(after.next().await, None);
        // The store keeps working.
        assert_eq!(service.publish("t", json!(2)), 2);
        assert_eq!(service.signal_entry("s"), 1);
    }

    #[tokio::test]
    async fn dropped_subscribers_are_pruned_and_do_not_block_publishers() {
        let service = Service::new();
        let sub = service.subscribe("t");
        drop(sub);
        for i in 0..1000 {
            service.publish("t", json!(i));
        }
        let topic = service.topic("t");
        assert!(lock(&topic).subscribers.is_empty());
    }

    #[tokio::test]
    async fn topic_watch_reports_existing_then_new_topics_once_each() {
        let service = Service::new();
        service.publish("run:r:topics:network:a", json!(1));
        service.publish("run:r:topics:network:a", json!(2));
        service.publish("run:r:topics:other", json!(1));
        // Subscribing creates an empty topic: not reported until something is published on it.
        let _sub = service.subscribe("run:r:topics:network:b");
        let mut watch = service.watch_topics("run:r:topics:network:");
        assert_eq!(watch.next().await.as_deref(), Some("run:r:topics:network:a"));
        assert_eq!(watch.try_next(), None);
        service.publish("run:r:topics:network:a", json!(3));
        service.publish("run:r:topics:other2", json!(1));
        service.publish("run:r:topics:network:b", json!(1));
        service.publish("run:r:topics:network:b", json!(2));
        service.publish("run:r:topics:network:typo", json!(1));
        assert_eq!(watch.next().await.as_deref(), Some("run:r:topics:network:b"));
        assert_eq!(watch.next().await.as_deref(), Some("run:r:topics:network:typo"));
        assert_eq!(watch.try_next(), None);
        service.close();
        assert_eq!(watch.next().await, None);
        // After close: the existing ones, then the end.
        let mut late = service.watch_topics("run:r:topics:network:");
        let mut names = vec![late.next().await, late.next().await, late.next().await];
        names.sort();
        let names: Vec<_> = names.into_iter().flatten().map(|n| n.to_string()).collect();
        assert_eq!(names, ["run:r:topics:network:a", "run:r:topics:network:b", "run:r:topics:network:typo"]);
        assert_eq!(late.next().await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn topic_watch_misses_nothing_published_while_it_registers() {
        // Publishers race the registration: every topic must come exactly once.
        for round in 0..50 {
            let service = Service::new();
            let publisher = std::thread::spawn({
                let service = service.clone();
                move || {
                    for i in 0..200 {
                        service.publish(&format!("p:{i}"), json!(i));
                        service.publish(&format!("p:{i}"), json!(i));
                    }
                }
            });
            let mut watch = service.watch_topics("p:");
            publisher.join().expect("publisher thread");
            service.close();
            let mut names = HashSet::new();
            while let Some(name) = watch.next().await {
                assert!(names.insert(name.to_string()), "round {round}: {name} twice");
            }
            assert_eq!(names.len(), 200, "round {round}");
        }
    }

    #[tokio::test]
    async fn dropped_topic_watches_are_pruned() {
        let service = Service::new();
        drop(service.watch_topics("p:"));
        let _kept = service.watch_topics("q:");
        service.publish("p:1", json!(1));
        assert_eq!(lock(&service.shared.topic_watchers).len(), 1);
    }

    #[test]
    fn entry_text_is_compact_json() {
        let entry = Entry::new(json!({"ip": "16.0.0.2", "port": 1234}));
        assert_eq!(entry.text(), r#"{"ip":"16.0.0.2","port":1234}"#);
    }
}
