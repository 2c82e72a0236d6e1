//! Failure and defence counters of the data plane: one relaxed atomic per
//! kind, bumped where the failure is decided, read as a plain copy through
//! [`crate::DataPlane::counters`]. They live as long as the data plane, so
//! reloads never reset them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters; bump with [`Counters::inc`].
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct CounterValues {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Counters {
            pub fn values(&self) -> CounterValues {
                CounterValues { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl CounterValues {
            /// `(name, value)` pairs, in declaration order, for exporters.
            pub fn pairs(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    // --- backends (cause: backend) ---
    /// TCP connect to a backend refused or failed.
    backend_connect_failed,
    /// TCP connect to a backend exceeded the pool's `timeouts.connect`.
    backend_connect_timeout,
    /// No response head within the pool's `timeouts.response` (a hung backend).
    backend_response_timeout,
    /// The backend closed the connection before a response head.
    backend_reset,
    /// The backend's response head could not be read as HTTP/1.1 (or
    /// could not be passed on to its client): 502.
    backend_invalid_response,
    /// Responses with a 5xx status from a backend.
    backend_5xx,
    /// The backend broke off a response body: the client connection was aborted.
    backend_aborted_mid_response,
    // --- pools (cause: proxy) ---
    /// A pool had no backend to send to: 503 naming the pool.
    pool_no_backend,
    /// Retries refused because the pool's retry budget was spent.
    retry_budget_exhausted,
    // --- clients (cause: client) ---
    /// No route matched: 404.
    client_no_route,
    /// Requests refused as malformed or ambiguous (request smuggling
    /// shapes, bad framing, duplicate Host): 400 and the connection closed.
    client_bad_request,
    /// Request heads over `limits.max_header_bytes` or `limits.max_headers`: 431.
    client_header_too_large,
    /// Request targets over `limits.max_uri_bytes`: 414.
    client_uri_too_long,
    /// Request bodies over `limits.max_body_bytes`, declared or streamed: 413.
    client_body_too_large,
    /// Request heads not complete within `header_timeout` (slowloris).
    client_header_timeout,
    /// Request bodies that stalled past `body_timeout` or came slower
    /// than `min_body_rate`: 408.
    client_body_timeout,
    /// Connections closed because the client took none of its response
    /// for `send_timeout` (slow readers, HTTP/1.1 and HTTP/2).
    client_send_timeout,
    /// Client connections closed because a reload changed their
    /// listener's settings: idle HTTP/1.1 ones at once, busy ones after
    /// their response, HTTP/2 ones by GOAWAY.
    client_closed_on_reload,
    /// Keep-alive connections closed after `idle_timeout`.
    client_idle_closed,
    /// HTTP/2 connections closed because the client answered no PING
    /// within `http2.keep_alive_timeout`: a dead peer.
    client_ping_timeout,
    /// Times an idle HTTP/1.1 connection gave its buffers back to wait for
    /// its next request with only the socket.
    client_parked,
    /// Connections accepted and closed at once: the listener was at
    /// `limits.max_connections`.
    client_connections_refused,
    /// TLS handshakes that failed or timed out.
    client_tls_handshake_failed,
    /// HTTP/2 connections that ended in a protocol error (floods, resets).
    client_h2_protocol_error,
    // --- upgrades ---
    /// WebSocket (Upgrade) tunnels established.
    tunnels_opened,
    /// Tunnels closed after `timeouts.tunnel` with no traffic.
    tunnels_idle_closed,
}

impl Counters {
    #[inline]
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a connection that sent no complete request head in time; it
    /// is dropped, no response owed.
    pub(crate) fn head_timed_out(&self, client: std::net::SocketAddr) {
        Counters::inc(&self.client_header_timeout);
        tracing::debug!(%client, "no request head within the header timeout; closing");
    }
}
