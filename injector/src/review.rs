//! One AdmissionReview in, one out: decode the request, decide (skip, deny or patch) and encode
//! the response. Pure: no I/O, no network, so the request path cannot wait on anything.

use crate::config::Config;

/// How a review ended, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Mutated,
    /// Opted in, but there was nothing to add (already injected, or nothing requested).
    Unchanged,
    /// Not ours to touch (not a Pod CREATE, or not opted in): allowed as is.
    Skipped,
    /// The pod was refused, with a message.
    Denied,
    /// The body was not an AdmissionReview (refused, with a message).
    Invalid,
}

impl Outcome {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutated => "mutated",
            Self::Unchanged => "unchanged",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
        }
    }
}

/// The answer to one review.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The AdmissionReview JSON to send back (HTTP 200, `application/json`).
    pub body: Vec<u8>,
    /// How it ended.
    pub outcome: Outcome,
}

/// The webhook's decision logic over a checked configuration.
#[derive(Debug, Clone)]
pub struct Injector {
    config: Config,
}

impl Injector {
    /// An injector for `config` (already checked by [`Config::parse`]).
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Answers one AdmissionReview request body. Never panics on any input; a body that is not
    /// a review gets a review that refuses, naming the problem.
    pub fn review(&self, body: &[u8]) -> Reviewed {
        let _ = body;
        refuse(None, "not implemented yet")
    }
}

/// A review refusing with `message`, for requests that never reached [`Injector::review`] (a body
/// over the size limit, a wrong method); `uid` when it is known.
pub fn refuse(uid: Option<&str>, message: &str) -> Reviewed {
    let _ = (uid, message);
    Reviewed {
        body: Vec::new(),
        outcome: Outcome::Invalid,
    }
}
