//! The key names the Testground SDKs build for states and topics (compat reference §2.4).
//!
//! The service itself treats keys as opaque strings; this module exists so that code which talks
//! to the service in-process (the runner, tests) names things exactly as the SDKs do.

/// The run, plan and case that every SDK puts in front of its keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// `TEST_RUN`.
    pub run: String,
    /// `TEST_PLAN`.
    pub plan: String,
    /// `TEST_CASE`.
    pub case: String,
}

impl Namespace {
    /// `run:<run>:plan:<plan>:case:<case>:states:<name>`, the key of a state (a counter).
    pub fn state(&self, name: &str) -> String {
        format!("{}:states:{name}", self.prefix())
    }

    /// `run:<run>:plan:<plan>:case:<case>:topics:<name>`, the key of a topic.
    pub fn topic(&self, name: &str) -> String {
        format!("{}:topics:{name}", self.prefix())
    }

    /// `run:<run>:plan:<plan>:case:<case>:run_events`, the topic the SDKs publish lifecycle events to.
    pub fn run_events(&self) -> String {
        format!("{}:run_events", self.prefix())
    }

    fn prefix(&self) -> String {
        format!("run:{}:plan:{}:case:{}", self.run, self.plan, self.case)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace { run: "RUNID".into(), plan: "PLAN".into(), case: "CASE".into() }
    }

    #[test]
    fn keys_match_the_captured_sdk_traffic() {
        // The exact strings from the RS 0.4.0 capture in compat reference §2.6.
        assert_eq!(ns().run_events(), "run:RUNID:plan:PLAN:case:CASE:run_events");
        assert_eq!(ns().state("network-initialized"), "run:RUNID:plan:PLAN:case:CASE:states:network-initialized");
        assert_eq!(ns().topic("network:inst0"), "run:RUNID:plan:PLAN:case:CASE:topics:network:inst0");
    }
}
