//! Errors of the KCR client. Every variant names the action; `code()` is a
//! stable, low-cardinality label for metrics.

/// What kind of network failure happened (no HTTP response was decoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made: the request was never sent.
    Connect,
    /// No answer within the timeout: the request may or may not have been applied.
    Timeout,
    /// The connection broke while the request or response was in flight.
    Reset,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API answered with an error document.
    #[error("{action}: HTTP {status} {code}: {message} (request id {request_id})")]
    Api {
        action: &'static str,
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// The API answered with an error status but no error document.
    #[error("{action}: HTTP {status} without an error document")]
    Http { action: &'static str, status: u16 },
    #[error("{action}: {kind:?} error: {detail}")]
    Transport {
        action: &'static str,
        kind: TransportKind,
        detail: String,
    },
    /// The response body did not decode. The detail never quotes the body,
    /// which may hold a secret.
    #[error("{action}: response could not be decoded: {detail} (request id {request_id})")]
    Decode {
        action: &'static str,
        detail: String,
        request_id: String,
    },
    /// A paginated listing changed size while it was being read.
    #[error("{action}: listing changed while reading it (TotalCount {before} then {after})")]
    ListingChanged {
        action: &'static str,
        before: u64,
        after: u64,
    },
    /// A listing ended before `TotalCount` items were returned.
    #[error("{action}: listing ended after {seen} of {total} items")]
    ListingShort {
        action: &'static str,
        seen: u64,
        total: u64,
    },
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The client's mutation gate ([`crate::MutationGate`]) refused to let
    /// a mutating request go: nothing was sent.
    #[error("{action}: not sent: {why}")]
    Withheld { action: &'static str, why: String },
}

impl Error {
    /// A stable code: the API's error code, or one of ours for local failures.
    pub fn code(&self) -> &str {
        match self {
            Error::Api { code, .. } => code,
            Error::Http { status, .. } if *status >= 500 => "HttpServerError",
            Error::Http { .. } => "HttpClientError",
            Error::Transport {
                kind: TransportKind::Connect,
                ..
            } => "ConnectError",
            Error::Transport {
                kind: TransportKind::Timeout,
                ..
            } => "Timeout",
            Error::Transport {
                kind: TransportKind::Reset,
                ..
            } => "ConnectionReset",
            Error::Decode { .. } => "DecodeError",
            Error::ListingChanged { .. } => "ListingChanged",
            Error::ListingShort { .. } => "ListingShort",
            Error::Config(_) => "ClientConfig",
            Error::Withheld { .. } => "Withheld",
        }
    }

    /// The action this error belongs to, if any.
    pub fn action(&self) -> Option<&'static str> {
        match self {
            Error::Api { action, .. }
            | Error::Http { action, .. }
            | Error::Transport { action, .. }
            | Error::Decode { action, .. }
            | Error::ListingChanged { action, .. }
            | Error::ListingShort { action, .. }
            | Error::Withheld { action, .. } => Some(action),
            Error::Config(_) => None,
        }
    }

    /// The API's flow control refused the request (it was not processed).
    pub fn is_rate_limited(&self) -> bool {
        match self {
            Error::Api { code, .. } => code == "LimitExceeded",
            Error::Http { status, .. } => *status == 409 || *status == 429,
            _ => false,
        }
    }

    /// Worth trying again for a request that is safe to repeat.
    pub fn is_retryable(&self) -> bool {
        match self {
            // The reference's "InnerApi without an internal service" is a
            // ServiceUnavailable with HTTP 404: an answer, not a glitch.
            e @ Error::Api { .. } if e.is_not_supported() => false,
            Error::Api { code, status, .. } => {
                matches!(
                    code.as_str(),
                    "LimitExceeded" | "ServiceUnavailable" | "ServiceTimeout"
                ) || (*status >= 500
                    && !matches!(code.as_str(), "InvalidParameterValue" | "MissingParameter"))
            }
            Error::Http { status, .. } => *status >= 500 || *status == 409 || *status == 429,
            Error::Transport { .. } => true,
            // A truncated or garbled body is a transient fault of the path, not of the request.
            Error::Decode { .. } => true,
            Error::ListingChanged { .. }
            | Error::ListingShort { .. }
            | Error::Config(_)
            | Error::Withheld { .. } => false,
        }
    }

    /// Certain that the request was not applied, so even a non-idempotent
    /// request may be sent again.
    pub fn surely_not_applied(&self) -> bool {
        self.is_rate_limited()
            || matches!(
                self,
                Error::Transport {
                    kind: TransportKind::Connect,
                    ..
                }
            )
            || matches!(self, Error::Api { status, .. } if (400..500).contains(status))
            || matches!(self, Error::Withheld { .. })
    }

    /// The endpoint does not know the action (KCR's `NoSuchEntity` "InnerApi
    /// that does not exist", `ServiceUnavailable` with HTTP 404 "InnerApi that
    /// does not have an internal service", `InvalidAction`,
    /// `UnsupportedOperation`, or a bare 404): the feature is not offered
    /// there, which is not a failure.
    pub fn is_not_supported(&self) -> bool {
        match self {
            Error::Api { code, status, .. } => {
                let c = code.as_str();
                c == "NoSuchEntity"
                    || (c == "ServiceUnavailable" && *status == 404)
                    || c.starts_with("InvalidAction")
                    || c.starts_with("UnsupportedOperation")
                    || c == "UnsupportedAction"
            }
            Error::Http { status, .. } => *status == 404,
            _ => false,
        }
    }

    /// The HTTP status, when an answer arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> Error {
        Error::Api {
            action: "DescribeImages",
            status,
            code: code.into(),
            message: "m".into(),
            request_id: "r-1".into(),
        }
    }

    #[test]
    fn classification() {
        assert!(api(409, "LimitExceeded").is_retryable());
        assert!(api(409, "LimitExceeded").surely_not_applied());
        assert!(api(500, "ServiceUnavailable").is_retryable());
        assert!(!api(500, "ServiceUnavailable").surely_not_applied());
        assert!(!api(403, "SignatureDoesNotMatch").is_retryable());
        assert!(!api(400, "InvalidParameterValue").is_retryable());
        assert!(!api(400, "MissingParameter").is_retryable());
        assert_eq!(
            api(403, "SignatureDoesNotMatch").code(),
            "SignatureDoesNotMatch"
        );
        let t = Error::Transport {
            action: "X",
            kind: TransportKind::Timeout,
            detail: "d".into(),
        };
        assert!(t.is_retryable() && !t.surely_not_applied());
        assert_eq!(t.code(), "Timeout");
    }

    #[test]
    fn unknown_actions_are_not_supported_other_errors_are_errors() {
        assert!(api(404, "NoSuchEntity").is_not_supported());
        assert!(api(400, "InvalidAction").is_not_supported());
        assert!(api(400, "UnsupportedOperation").is_not_supported());
        assert!(!api(403, "AccessDenied").is_not_supported());
        assert!(!api(400, "InvalidParameterValue").is_not_supported());
        assert!(!api(500, "ServiceUnavailable").is_not_supported());
        // The reference's "InnerApi that does not have an internal service":
        // not offered there, and not worth retrying for seconds.
        assert!(api(404, "ServiceUnavailable").is_not_supported());
        assert!(!api(404, "ServiceUnavailable").is_retryable());
        let http = |status| Error::Http {
            action: "X",
            status,
        };
        assert!(http(404).is_not_supported());
        assert!(!http(502).is_not_supported());
    }

    #[test]
    fn display_names_action_status_code_and_request_id() {
        let s = api(403, "SignatureDoesNotMatch").to_string();
        assert_eq!(
            s,
            "DescribeImages: HTTP 403 SignatureDoesNotMatch: m (request id r-1)"
        );
    }
}
