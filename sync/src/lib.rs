//! The Testground sync service, in memory: topics (append-only logs that subscribers follow from
//! the first message) and states (counters with barriers), a websocket server that speaks the
//! Testground sync protocol to the Go, Rust and JS SDKs (compat reference §2), and an in-process
//! API over the same store for the runner.
//!
//! This crate owns the protocol and its quirks: the exact five-key response shape, JSON-text
//! errors for the Rust SDK 0.4.0, binary or text requests answered in text, replay from the first
//! message, 1-based sequence numbers, and the TCP settings that keep the Rust SDK off the delayed
//! ACK path. It must not know about runners, instances or events: keys and payloads are opaque
//! here (the [`keys`] module only spells the key names the SDKs build).
//!
//! The parts: [`Service`] (the store, a cheap-clone handle; `state.rs`; in-process callers follow
//! a topic with a [`Subscription`] and learn of new topics with a [`TopicWatch`]), [`serve`] with
//! [`ServerConfig`] (the websocket server; `server.rs`, `connection.rs`), [`protocol`] (wire
//! types), [`keys`], and [`raise_fd_limit`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use serde_json::json;
//! use tg_nix_sync::{keys::Namespace, Service};
//!
//! let service = Service::new();
//! let ns = Namespace { run: "r1".into(), plan: "ping".into(), case: "quickstart".into() };
//!
//! // Subscribing replays the log from the first message, then streams new ones.
//! assert_eq!(service.publish(&ns.run_events(), json!({"success_event": {"group": "a"}})), 1);
//! let mut events = service.subscribe(&ns.run_events());
//! let first = events.next().await.expect("replayed");
//! assert_eq!(first["success_event"]["group"], "a");
//!
//! // Signals count from 1; a barrier resolves once the count reaches its target.
//! assert_eq!(service.signal_entry(&ns.state("ready")), 1);
//! service.barrier(&ns.state("ready"), 1).await;
//! assert_eq!(service.state_count(&ns.state("ready")), 1);
//! # }
//! ```

mod connection;
pub mod keys;
mod net;
pub mod protocol;
mod server;
mod state;

pub use net::raise_fd_limit;
pub use server::{serve, ServerConfig};
pub use state::{Service, Subscription, TopicWatch};
