//! Why a request failed, who caused it, whether it may be retried, and the
//! short text response the client gets for it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;

/// Who is to blame for a failed request: the first question an operator asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Client,
    Backend,
    Proxy,
}

impl Cause {
    /// As in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Client => "client",
            Cause::Backend => "backend",
            Cause::Proxy => "proxy",
        }
    }
}

/// A request the data plane could not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// No route matches the request.
    NoRoute,
    /// The client's request body could not be read.
    ClientBody,
    /// The request is malformed or ambiguous in a way that could make the
    /// proxy and a backend read it differently (request smuggling).
    BadRequest(&'static str),
    /// A request the proxy does not serve by design (CONNECT): 501.
    NotImplemented(&'static str),
    /// The request head is over `limits.max_header_bytes` or `limits.max_headers`.
    HeaderTooLarge,
    /// The request target is over `limits.max_uri_bytes`.
    UriTooLong,
    /// The request body is over `limits.max_body_bytes`.
    BodyTooLarge,
    /// The client stopped sending its body for longer than `body_timeout`,
    /// or sent it slower than `min_body_rate`.
    BodyTimeout,
    /// The pool has no backend to send to (all down, ejected, or drained).
    NoBackend {
        pool: Arc<str>,
        healthy: usize,
        weighted: usize,
    },
    /// The TCP connect failed: nothing reached the backend.
    ConnectFailed { backend: SocketAddr },
    /// Connected, but the backend did not accept an HTTP/2 connection
    /// (`protocol = "h2"`): nothing was sent.
    BackendProtocol { backend: SocketAddr },
    /// The TCP connect took longer than the pool's `timeouts.connect`:
    /// nothing reached the backend either.
    ConnectTimeout { pool: Arc<str>, backend: SocketAddr },
    /// The connection broke before a response head: the request may have
    /// reached the backend, so only idempotent requests may be retried.
    BackendReset { backend: SocketAddr },
    /// The backend answered with something that is not an HTTP/1.1
    /// response Fulcrum can read, or one it cannot pass on to this client:
    /// the request may have reached the backend, so only idempotent
    /// requests may be retried.
    BadResponse {
        backend: SocketAddr,
        why: &'static str,
    },
    /// No response head within the pool's `timeouts.response`. Never
    /// retried: the backend may still be working on it.
    ResponseTimeout { pool: Arc<str>, backend: SocketAddr },
}

impl ProxyError {
    pub fn cause(&self) -> Cause {
        match self {
            ProxyError::NoRoute
            | ProxyError::ClientBody
            | ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::HeaderTooLarge
            | ProxyError::UriTooLong
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout => Cause::Client,
            ProxyError::NoBackend { .. } => Cause::Proxy,
            ProxyError::ConnectFailed { .. }
            | ProxyError::BackendProtocol { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::BackendReset { .. }
            | ProxyError::BadResponse { .. }
            | ProxyError::ResponseTimeout { .. } => Cause::Backend,
        }
    }

    /// May this failed attempt be sent again to another backend?
    /// `idempotent`: the request's method is safe to repeat.
    pub fn retryable(&self, idempotent: bool) -> bool {
        match self {
            ProxyError::ConnectFailed { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::BackendProtocol { .. } => true,
            ProxyError::BackendReset { .. } | ProxyError::BadResponse { .. } => idempotent,
            _ => false,
        }
    }

    /// Does this count against the backend for outlier ejection?
    pub fn is_backend_failure(&self) -> bool {
        self.cause() == Cause::Backend
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::ClientBody | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed { .. }
            | ProxyError::BackendProtocol { .. }
            | ProxyError::BackendReset { .. }
            | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// The response body: the status line's text, what went wrong, newline.
    pub fn body(&self) -> String {
        let s = self.status();
        format!(
            "{} {}: {self}\n",
            s.as_u16(),
            s.canonical_reason().unwrap_or("")
        )
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::NoRoute => write!(f, "no route matches this request"),
            ProxyError::ClientBody => write!(f, "could not read the request body"),
            ProxyError::BadRequest(why) => write!(f, "malformed request: {why}"),
            ProxyError::NotImplemented(what) => write!(f, "not supported: {what}"),
            ProxyError::HeaderTooLarge => write!(f, "the request headers are too large"),
            ProxyError::UriTooLong => write!(f, "the request target is too long"),
            ProxyError::BodyTooLarge => write!(f, "the request body is too large"),
            ProxyError::BodyTimeout => {
                write!(f, "the client sent the request body too slowly")
            }
            ProxyError::NoBackend {
                pool,
                healthy,
                weighted,
            } => write!(
                f,
                "pool \"{pool}\" has no healthy backend ({} of {weighted} down)",
                weighted - healthy
            ),
            ProxyError::ConnectFailed { backend } => {
                write!(f, "could not connect to backend {backend}")
            }
            ProxyError::BackendProtocol { backend } => {
                write!(f, "backend {backend} does not accept HTTP/2 connections")
            }
            ProxyError::ConnectTimeout { pool, backend } => {
                write!(
                    f,
                    "connecting to backend {backend} of pool \"{pool}\" timed out"
                )
            }
            ProxyError::BackendReset { backend } => {
                write!(
                    f,
                    "backend {backend} closed the connection without a response"
                )
            }
            ProxyError::BadResponse { backend, why } => {
                write!(f, "backend {backend} sent an invalid response: {why}")
            }
            ProxyError::ResponseTimeout { pool, backend } => write!(
                f,
                "backend {backend} of pool \"{pool}\" did not respond in time"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}
