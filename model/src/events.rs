//! What instances report: the `run_events` payloads published over sync (reference §2.5) and
//! the JSON lines each SDK prints on stdout (reference §5.1). Both readers take any input: a line
//! that is not an event is `None`, never a panic.

use serde::Serialize;
use serde_json::{json, Map, Value};

/// One instance event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `start_event` (its `runenv` is not kept).
    Start,
    /// `message_event`.
    Message { message: String },
    /// `success_event`.
    Success { group: String },
    /// `failure_event`.
    Failure { group: String, error: String },
    /// `crash_event`. "RS writes the key `groups`" (reference §2.5); both spellings are read.
    Crash { group: String, error: String, stacktrace: String },
    /// `stage_start_event`, e.g. around `network-initialized`.
    StageStart { name: String, group: String },
    /// `stage_end_event`.
    StageEnd { name: String, group: String },
}

impl Event {
    /// Reads a `run_events` payload: "an externally tagged object with exactly one key"
    /// (`{"success_event":{"group":"single"}}`). A missing string field reads as empty, as Go's
    /// decoder leaves it; a field of another type, an unknown tag or any other shape gives `None`.
    pub fn from_payload(v: &Value) -> Option<Event> {
        let obj = v.as_object()?;
        if obj.len() != 1 {
            return None;
        }
        let (tag, body) = obj.iter().next()?;
        if tag == "start_event" {
            return Some(Event::Start);
        }
        let body = body.as_object()?;
        let field = |key: &str| text(body, key);
        Some(match tag.as_str() {
            "message_event" => Event::Message { message: field("message")? },
            "success_event" => Event::Success { group: field("group")? },
            "failure_event" => Event::Failure { group: field("group")?, error: field("error")? },
            "crash_event" => {
                let group = match field("group") {
                    Some(g) if !g.is_empty() => g,
                    _ => field("groups").unwrap_or_default(),
                };
                Event::Crash { group, error: field("error")?, stacktrace: field("stacktrace")? }
            }
            "stage_start_event" => Event::StageStart { name: field("name")?, group: field("group")? },
            "stage_end_event" => Event::StageEnd { name: field("name")?, group: field("group")? },
            _ => return None,
        })
    }

    /// Reads one stdout line of any SDK; the event is under the `event` key in all three:
    /// - GO (zap): `{"ts":…,"msg":"","group_id":"…","run_id":"…","event":{…}}`
    /// - RS 0.4.0: `{"ts":…,"event":{…}}`, and `{"event":{"message_event":…}}` without `ts`
    /// - JS (winston): `{"event":{…},"group_id":"…","level":"info","message":"","run_id":"…","ts":…}`
    ///
    /// Anything that is not a JSON object with an `event` payload is `None`.
    pub fn from_stdout_line(line: &str) -> Option<Event> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        let v: Value = serde_json::from_str(line).ok()?;
        Event::from_payload(v.as_object()?.get("event")?)
    }

    /// Success, failure and crash end an instance's story; local:docker counts exactly these.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Event::Success { .. } | Event::Failure { .. } | Event::Crash { .. })
    }

    /// The payload key (`success_event`, …).
    pub fn tag(&self) -> &'static str {
        match self {
            Event::Start => "start_event",
            Event::Message { .. } => "message_event",
            Event::Success { .. } => "success_event",
            Event::Failure { .. } => "failure_event",
            Event::Crash { .. } => "crash_event",
            Event::StageStart { .. } => "stage_start_event",
            Event::StageEnd { .. } => "stage_end_event",
        }
    }

    /// The group the event names, if it names one.
    pub fn group(&self) -> Option<&str> {
        match self {
            Event::Start | Event::Message { .. } => None,
            Event::Success { group }
            | Event::Failure { group, .. }
            | Event::Crash { group, .. }
            | Event::StageStart { group, .. }
            | Event::StageEnd { group, .. } => Some(group),
        }
    }

    /// The payload as GO publishes it (`group`, never RS's `groups`; a start event has an empty
    /// `runenv`). [`Event::from_payload`] reads it back.
    pub fn to_payload(&self) -> Value {
        let body = match self {
            Event::Start => json!({ "runenv": {} }),
            Event::Message { message } => json!({ "message": message }),
            Event::Success { group } => json!({ "group": group }),
            Event::Failure { group, error } => json!({ "group": group, "error": error }),
            Event::Crash { group, error, stacktrace } => {
                json!({ "group": group, "error": error, "stacktrace": stacktrace })
            }
            Event::StageStart { name, group } | Event::StageEnd { name, group } => {
                json!({ "name": name, "group": group })
            }
        };
        let mut obj = Map::new();
        obj.insert(self.tag().to_string(), body);
        Value::Object(obj)
    }
}

/// Serialises as the Testground payload ([`Event::to_payload`]).
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_payload().serialize(s)
    }
}

/// A string field: absent or null → "", a string → it, anything else → `None`.
fn text(body: &Map<String, Value>, key: &str) -> Option<String> {
    match body.get(key) {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn stdout_lines_of_each_sdk() {
        let cases: Vec<(&str, Option<Event>)> = vec![
            // GO (zap).
            (
                r#"{"ts":1685451083000000000,"msg":"","group_id":"single","run_id":"c7fjstge5te621cen4i0","event":{"success_event":{"group":"single"}}}"#,
                Some(Event::Success { group: s("single") }),
            ),
            (
                r#"{"ts":1,"msg":"","group_id":"g","run_id":"r","event":{"failure_event":{"group":"g","error":"boom"}}}"#,
                Some(Event::Failure { group: s("g"), error: s("boom") }),
            ),
            (
                r#"{"ts":1,"msg":"","group_id":"g","run_id":"r","event":{"crash_event":{"group":"g","error":"panic: x","stacktrace":"goroutine 1"}}}"#,
                Some(Event::Crash { group: s("g"), error: s("panic: x"), stacktrace: s("goroutine 1") }),
            ),
            (
                r#"{"ts":1,"msg":"","group_id":"g","run_id":"r","event":{"message_event":{"message":"hello"}}}"#,
                Some(Event::Message { message: s("hello") }),
            ),
            (
                r#"{"ts":1,"msg":"","group_id":"g","run_id":"r","event":{"start_event":{"runenv":{"plan":"p"}}}}"#,
                Some(Event::Start),
            ),
            // RS 0.4.0, from the captured run (reference §2.6).
            (
                r#"{"ts":1700000000000000000,"event":{"stage_start_event":{"name":"network-initialized","group":"single"}}}"#,
                Some(Event::StageStart { name: s("network-initialized"), group: s("single") }),
            ),
            (
                r#"{"ts":1700000000000000001,"event":{"stage_end_event":{"name":"network-initialized","group":"single"}}}"#,
                Some(Event::StageEnd { name: s("network-initialized"), group: s("single") }),
            ),
            (
                r#"{"event":{"message_event":{"message":"claimed sequence numbers; global=1, group(single)=1"}}}"#,
                Some(Event::Message { message: s("claimed sequence numbers; global=1, group(single)=1") }),
            ),
            (
                r#"{"ts":1700000000000000002,"event":{"success_event":{"group":"single"}}}"#,
                Some(Event::Success { group: s("single") }),
            ),
            // RS crash with the `groups` typo.
            (
                r#"{"ts":1,"event":{"crash_event":{"groups":"single","error":"oops","stacktrace":"bt"}}}"#,
                Some(Event::Crash { group: s("single"), error: s("oops"), stacktrace: s("bt") }),
            ),
            // JS (winston).
            (
                r#"{"event":{"success_event":{"group":"nodes"}},"group_id":"nodes","level":"info","message":"","run_id":"r","ts":1670000000000000000}"#,
                Some(Event::Success { group: s("nodes") }),
            ),
            (
                r#"{"event":{"failure_event":{"group":"nodes","error":"Error: nope"}},"group_id":"nodes","level":"info","message":"","run_id":"r","ts":1}"#,
                Some(Event::Failure { group: s("nodes"), error: s("Error: nope") }),
            ),
            // Surrounding whitespace and CR.
            ("  {\"event\":{\"success_event\":{\"group\":\"a\"}}}\r", Some(Event::Success { group: s("a") })),
            // Missing fields read as empty, like Go's decoder.
            (r#"{"event":{"success_event":{}}}"#, Some(Event::Success { group: s("") })),
            // Not events.
            ("", None),
            ("panic: runtime error", None),
            ("   ", None),
            (r#"{"ts":1,"msg":"starting","level":"info"}"#, None),
            (r#"{"event":"success_event"}"#, None),
            (r#"{"event":{}}"#, None),
            (r#"{"event":{"success_event":{"group":"a"},"failure_event":{"group":"a","error":"e"}}}"#, None),
            (r#"{"event":{"unknown_event":{}}}"#, None),
            (r#"{"event":{"success_event":"a"}}"#, None),
            (r#"{"event":{"success_event":{"group":5}}}"#, None),
            (r#"{"event":{"success_event":{"group":"a"}}"#, None),
            (r#"["event"]"#, None),
            ("{\"event\":{\"success_event\":{\"group\":\"\\ud800\"}}}", None),
        ];
        for (line, want) in cases {
            assert_eq!(Event::from_stdout_line(line), want, "{line}");
        }
    }

    #[test]
    fn payloads_round_trip() {
        let events = [
            Event::Start,
            Event::Message { message: s("m") },
            Event::Success { group: s("g") },
            Event::Failure { group: s("g"), error: s("e") },
            Event::Crash { group: s("g"), error: s("e"), stacktrace: s("st") },
            Event::StageStart { name: s("n"), group: s("g") },
            Event::StageEnd { name: s("n"), group: s("g") },
        ];
        for e in events {
            assert_eq!(Event::from_payload(&e.to_payload()).as_ref(), Some(&e));
            let json = serde_json::to_value(&e).expect("serialises");
            assert_eq!(json, e.to_payload());
        }
        assert_eq!(
            Event::Success { group: s("single") }.to_payload().to_string(),
            r#"{"success_event":{"group":"single"}}"#
        );
    }

    #[test]
    fn terminal_and_group() {
        let cases = [
            (Event::Start, false, None),
            (Event::Message { message: s("m") }, false, None),
            (Event::StageStart { name: s("n"), group: s("g") }, false, Some("g")),
            (Event::Success { group: s("g") }, true, Some("g")),
            (Event::Failure { group: s("g"), error: s("e") }, true, Some("g")),
            (Event::Crash { group: s("g"), error: s("e"), stacktrace: s("") }, true, Some("g")),
        ];
        for (e, terminal, group) in cases {
            assert_eq!(e.is_terminal(), terminal, "{e:?}");
            assert_eq!(e.group(), group, "{e:?}");
        }
    }

    #[test]
    fn hostile_lines_never_panic() {
        let deep_arrays = format!("{{\"event\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let deep_objects = format!("{}{}", "{\"event\":".repeat(50_000), "}".repeat(50_000));
        let long = format!("{{\"event\":{{\"message_event\":{{\"message\":\"{}\"}}}}}}", "x".repeat(1 << 20));
        let lossy = String::from_utf8_lossy(b"{\"event\":{\"success_event\":{\"group\":\"\xff\xfe\"}}}").into_owned();
        for line in [deep_arrays.as_str(), deep_objects.as_str(), "{", "{\"event\":", "\u{0}"] {
            assert_eq!(Event::from_stdout_line(line), None);
        }
        // A crash stays a crash even when its group is unreadable.
        assert_eq!(
            Event::from_stdout_line(r#"{"event":{"crash_event":{"groups":[1]}}}"#),
            Some(Event::Crash { group: s(""), error: s(""), stacktrace: s("") })
        );
        assert!(matches!(Event::from_stdout_line(&long), Some(Event::Message { .. })));
        assert_eq!(Event::from_stdout_line(&lossy), Some(Event::Success { group: s("\u{fffd}\u{fffd}") }));
    }
}
