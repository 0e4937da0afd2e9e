//! Wire types: the JSON requests the SDKs send and the responses they expect (compat reference
//! §2.2 and §2.3).
//!
//! Nothing here touches sockets or shared state. [`parse_request`] turns one websocket message
//! into a [`Request`], and [`Response`] is the one response shape every SDK parses. `Outgoing` is
//! a response waiting in a connection's queue; it is encoded only when the writer sends it.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::Entry;

/// One request, as the SDKs send it.
#[derive(Debug, PartialEq)]
pub struct Request<'a> {
    /// Chosen by the client and echoed in every response to this request. All SDKs use a decimal
    /// counter from `"0"`, and the Rust SDK requires that it parses as a `u64`; we echo it as is.
    pub id: Cow<'a, str>,
    /// `is_cancel: true` stops the subscription with this `id`. The Rust and Go SDKs always send
    /// `false`, JS leaves the key out, and the Go sync service ignored it (§2.8).
    pub is_cancel: bool,
    /// The operation; `None` only for a cancel request.
    pub op: Option<Op<'a>>,
}

/// The four operations of the protocol. There is no "signal_event": events are publishes.
#[derive(Debug, PartialEq)]
pub enum Op<'a> {
    /// Append `payload` to the topic's log.
    Publish { topic: Cow<'a, str>, payload: Value },
    /// Replay the topic's log from the first message, then stream new ones.
    Subscribe { topic: Cow<'a, str> },
    /// Reply once the state's counter reaches `target`.
    Barrier { state: Cow<'a, str>, target: u64 },
    /// Increment the state's counter.
    SignalEntry { state: Cow<'a, str> },
}

/// Why a message is not a request we act on.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or JSON of the wrong shape. `id` is set when one could still be read, and then the
    /// client gets an error response.
    #[error("malformed request: {source}")]
    Malformed { id: Option<String>, source: serde_json::Error },
    /// Only an id (and `is_cancel: false`).
    #[error("malformed request: no operation (expected one of publish, subscribe, barrier, signal_entry)")]
    MissingOp { id: String },
    /// More than one of publish, subscribe, barrier, signal_entry.
    #[error("malformed request: more than one operation")]
    SeveralOps { id: String },
    /// An operation this service does not know. The Go service ignored these without a reply, and
    /// so do we.
    #[error("unknown operation {op:?}")]
    UnknownOp { id: String, op: String },
}

impl RequestError {
    /// The id to address an error response to, if the client should get one.
    pub fn reply_to(&self) -> Option<&str> {
        match self {
            RequestError::Malformed { id, .. } => id.as_deref(),
            RequestError::MissingOp { id } | RequestError::SeveralOps { id } => Some(id),
            RequestError::UnknownOp { .. } => None,
        }
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    is_cancel: Option<bool>,
    #[serde(default, borrow)]
    publish: Option<RawPublish<'a>>,
    #[serde(default, borrow)]
    subscribe: Option<RawTopic<'a>>,
    #[serde(default, borrow)]
    barrier: Option<RawBarrier<'a>>,
    #[serde(default, borrow)]
    signal_entry: Option<RawState<'a>>,
}

#[derive(Deserialize)]
struct RawPublish<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    // Go publishes a nil payload as `null`; a missing one means the same.
    #[serde(default)]
    payload: Value,
}

#[derive(Deserialize)]
struct RawTopic<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
}

#[derive(Deserialize)]
struct RawBarrier<'a> {
    #[serde(borrow)]
    state: Cow<'a, str>,
    // Go's target is an int64. A negative target is already reached, like 0.
    target: i64,
}

#[derive(Deserialize)]
struct RawState<'a> {
    #[serde(borrow)]
    state: Cow<'a, str>,
}

/// Only the id, for addressing an error response to a request that failed to parse.
#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

const KNOWN_KEYS: [&str; 6] = ["id", "is_cancel", "publish", "subscribe", "barrier", "signal_entry"];

/// Parses one websocket message (text or binary, the bytes are the same JSON).
pub fn parse_request(bytes: &[u8]) -> Result<Request<'_>, RequestError> {
    let raw: RawRequest<'_> = match serde_json::from_slice(bytes) {
        Ok(raw) => raw,
        Err(source) => {
            let id = serde_json::from_slice::<IdOnly>(bytes).ok().map(|x| x.id);
            return Err(RequestError::Malformed { id, source });
        }
    };
    let is_cancel = raw.is_cancel.unwrap_or(false);
    let mut ops = Vec::with_capacity(1);
    if let Some(p) = raw.publish {
        ops.push(Op::Publish { topic: p.topic, payload: p.payload });
    }
    if let Some(s) = raw.subscribe {
        ops.push(Op::Subscribe { topic: s.topic });
    }
    if let Some(b) = raw.barrier {
        ops.push(Op::Barrier { state: b.state, target: u64::try_from(b.target).unwrap_or(0) });
    }
    if let Some(s) = raw.signal_entry {
        ops.push(Op::SignalEntry { state: s.state });
    }
    if ops.len() > 1 {
        return Err(RequestError::SeveralOps { id: raw.id.into_owned() });
    }
    let op = ops.pop();
    if op.is_none() && !is_cancel {
        // Rare path: tell an operation we do not know (ignored) from no operation (an error).
        let unknown = serde_json::from_slice::<serde_json::Map<String, Value>>(bytes)
            .ok()
            .and_then(|map| map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())).cloned());
        let id = raw.id.into_owned();
        return Err(match unknown {
            Some(op) => RequestError::UnknownOp { id, op },
            None => RequestError::MissingOp { id },
        });
    }
    Ok(Request { id: raw.id, is_cancel, op })
}

/// The `{"seq":N}` object of publish and signal_entry responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Seq {
    pub seq: u64,
}

/// The one response shape (Go's `Response` as Go marshals it). All five keys, in this order,
/// always: the Rust SDK 0.4.0 fails on a missing `error` or `subscribe`, and it tells the kind of
/// response from which field is set, so exactly one may be set (none for a barrier).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Response<'a> {
    pub id: &'a str,
    /// Empty on success. When set it must be JSON text (see [`error_text`]).
    pub error: &'a str,
    pub publish: Option<Seq>,
    /// The JSON text of a published payload, as a string.
    pub subscribe: &'a str,
    pub signal_entry: Option<Seq>,
}

impl<'a> Response<'a> {
    const EMPTY: Response<'static> = Response { id: "", error: "", publish: None, subscribe: "", signal_entry: None };

    pub fn publish(id: &'a str, seq: u64) -> Self {
        Response { id, publish: Some(Seq { seq }), ..Self::EMPTY }
    }

    pub fn signal_entry(id: &'a str, seq: u64) -> Self {
        Response { id, signal_entry: Some(Seq { seq }), ..Self::EMPTY }
    }

    /// A barrier reply has nothing set.
    pub fn barrier(id: &'a str) -> Self {
        Response { id, ..Self::EMPTY }
    }

    pub fn subscribe(id: &'a str, payload_text: &'a str) -> Self {
        Response { id, subscribe: payload_text, ..Self::EMPTY }
    }

    pub fn error(id: &'a str, error: &'a str) -> Self {
        Response { id, error, ..Self::EMPTY }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings, integers and nulls cannot fail; the fallback is never used.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Turns an error message into what goes in the `error` field: a JSON string literal. The Rust SDK
/// 0.4.0 runs `serde_json::from_str` on the error text and panics unless it is valid JSON
/// (compat reference §2.3), while Go and JS show the text as it is, quotes included.
pub fn error_text(message: &str) -> String {
    serde_json::to_string(message).unwrap_or_else(|_| String::from("\"error\""))
}

/// A response waiting in a connection's outgoing queue, or the order to close it.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Publish {
        id: Box<str>,
        seq: u64,
    },
    SignalEntry {
        id: Box<str>,
        seq: u64,
    },
    Barrier {
        id: Box<str>,
    },
    /// One message of a subscription; the id is shared by all of them.
    Subscribe {
        id: Arc<str>,
        entry: Arc<Entry>,
    },
    /// `error` is already JSON text.
    Error {
        id: Box<str>,
        error: String,
    },
    /// Send a Close frame (the given one, or complete the handshake the peer started) and stop.
    Close(Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>),
}

impl Outgoing {
    /// The response as JSON text; `None` for [`Outgoing::Close`].
    pub(crate) fn encode(&self) -> Option<String> {
        let text = match self {
            Outgoing::Publish { id, seq } => Response::publish(id, *seq).to_json(),
            Outgoing::SignalEntry { id, seq } => Response::signal_entry(id, *seq).to_json(),
            Outgoing::Barrier { id } => Response::barrier(id).to_json(),
            Outgoing::Subscribe { id, entry } => Response::subscribe(id, entry.text()).to_json(),
            Outgoing::Error { id, error } => Response::error(id, error).to_json(),
            Outgoing::Close(_) => return None,
        };
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_have_all_five_keys_in_go_order() {
        assert_eq!(
            Response::publish("0", 1).to_json(),
            r#"{"id":"0","error":"","publish":{"seq":1},"subscribe":"","signal_entry":null}"#
        );
        assert_eq!(
            Response::signal_entry("3", 7).to_json(),
            r#"{"id":"3","error":"","publish":null,"subscribe":"","signal_entry":{"seq":7}}"#
        );
        assert_eq!(
            Response::barrier("1").to_json(),
            r#"{"id":"1","error":"","publish":null,"subscribe":"","signal_entry":null}"#
        );
        assert_eq!(
            Response::subscribe("8", r#"{"ip":"16.0.0.2","port":1234}"#).to_json(),
            r#"{"id":"8","error":"","publish":null,"subscribe":"{\"ip\":\"16.0.0.2\",\"port\":1234}","signal_entry":null}"#
        );
    }

    #[test]
    fn error_text_is_a_json_string_literal() {
        let text = error_text("malformed request: \"x\"");
        assert_eq!(text, r#""malformed request: \"x\"""#);
        let back: String = serde_json::from_str(&text).expect("error text must parse as JSON");
        assert_eq!(back, "malformed request: \"x\"");
        assert_eq!(
            Response::error("4", &error_text("bad")).to_json(),
            r#"{"id":"4","error":"\"bad\"","publish":null,"subscribe":"","signal_entry":null}"#
        );
    }

    #[test]
    fn parses_the_rust_sdk_frames() {
        let req = parse_request(
            br#"{"id":"3","is_cancel":false,"signal_entry":{"state":"run:R:plan:P:case:C:states:initialized_global"}}"#,
        )
        .expect("valid");
        assert_eq!(req.id, "3");
        assert!(!req.is_cancel);
        assert_eq!(req.op, Some(Op::SignalEntry { state: "run:R:plan:P:case:C:states:initialized_global".into() }));

        let req = parse_request(br#"{"id":"1","is_cancel":false,"barrier":{"state":"s","target":1}}"#).expect("valid");
        assert_eq!(req.op, Some(Op::Barrier { state: "s".into(), target: 1 }));

        let req = parse_request(
            br#"{"id":"7","is_cancel":false,"publish":{"topic":"t","payload":{"ip":"16.0.0.2","port":1234}}}"#,
        )
        .expect("valid");
        assert_eq!(req.op, Some(Op::Publish { topic: "t".into(), payload: json!({"ip":"16.0.0.2","port":1234}) }));
    }

    #[test]
    fn parses_js_frames_without_is_cancel_and_go_frames_with_a_newline() {
        let req = parse_request(br#"{"subscribe":{"topic":"t"},"id":"2"}"#).expect("valid");
        assert_eq!(req, Request { id: "2".into(), is_cancel: false, op: Some(Op::Subscribe { topic: "t".into() }) });
        let req =
            parse_request(b"{\"id\":\"0\",\"is_cancel\":false,\"signal_entry\":{\"state\":\"s\"}}\n").expect("valid");
        assert_eq!(req.op, Some(Op::SignalEntry { state: "s".into() }));
    }

    #[test]
    fn a_cancel_needs_no_operation() {
        let req = parse_request(br#"{"id":"8","is_cancel":true}"#).expect("valid");
        assert!(req.is_cancel);
        assert_eq!(req.op, None);
    }

    #[test]
    fn zero_and_negative_targets_are_reached_at_once() {
        let req = parse_request(br#"{"id":"1","barrier":{"state":"s","target":-3}}"#).expect("valid");
        assert_eq!(req.op, Some(Op::Barrier { state: "s".into(), target: 0 }));
    }

    #[test]
    fn bad_requests_are_classified() {
        let err = parse_request(br#"{"id":"5","barrier":{"state":"s","target":"x"}}"#).unwrap_err();
        assert!(matches!(err, RequestError::Malformed { .. }), "{err:?}");
        assert_eq!(err.reply_to(), Some("5"));

        let err = parse_request(b"{not json").unwrap_err();
        assert_eq!(err.reply_to(), None);

        let err = parse_request(br#"{"id":"6"}"#).unwrap_err();
        assert!(matches!(err, RequestError::MissingOp { .. }), "{err:?}");
        assert_eq!(err.reply_to(), Some("6"));

        let err = parse_request(br#"{"id":"6","is_cancel":false,"signal_event":{"state":"s"}}"#).unwrap_err();
        assert!(matches!(err, RequestError::UnknownOp { ref op, .. } if op == "signal_event"), "{err:?}");
        assert_eq!(err.reply_to(), None);

        let err = parse_request(br#"{"id":"9","subscribe":{"topic":"a"},"signal_entry":{"state":"b"}}"#).unwrap_err();
        assert!(matches!(err, RequestError::SeveralOps { .. }), "{err:?}");
    }
}
