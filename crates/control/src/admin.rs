//! The admin API (axum): status, the running config and its history,
//! changes and rollbacks, the journal (also as a live server-sent event
//! stream), explain, `/metrics` and the dashboard. Every route but `GET
//! /healthz` and the dashboard's page needs the bearer token;
//! `/openapi.json` describes them all.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::change::{ChangeRequest, Controller, DEFAULT_BAKE};
use crate::gate::Outcome;
use crate::journal::blocking;
use crate::store::{Event, Origin};
use crate::token::Token;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The longest bake a canary may ask for.
pub const MAX_BAKE: Duration = Duration::from_secs(24 * 3600);

pub struct Admin {
    pub controller: Arc<Controller>,
    pub guard: Arc<crate::guard::Guard>,
    pub token: Token,
}

/// The router, and the `(method, path)` of every route it has, which a
/// test compares with [`OPENAPI`].
pub fn router(admin: Arc<Admin>) -> (Router, Vec<(&'static str, &'static str)>) {
    let mut routes = Vec::new();
    let mut r = Router::new();
    let mut add = |method: &'static str, path: &'static str, m: MethodRouter<Arc<Admin>>| {
        routes.push((method, path));
        r = std::mem::take(&mut r).route(path, m);
    };
    add("get", "/status", get(status));
    add("get", "/config", get(config));
    add("post", "/config", post(apply));
    add("post", "/rollback", post(rollback));
    add("get", "/history", get(history));
    add("get", "/events", get(events));
    add("get", "/explain", get(explain));
    add("get", "/guard", get(guard));
    add("get", "/metrics", get(metrics));
    add("get", "/openapi.json", get(openapi));
    let protected = r.layer(middleware::from_fn_with_state(admin.clone(), authorize));
    // A browser cannot send the token when it navigates: the dashboard's
    // page, script and style hold no data, and the page asks for the
    // token before it calls anything else.
    routes.extend([
        ("get", "/healthz"),
        ("get", "/"),
        ("get", "/dashboard.js"),
        ("get", "/dashboard.css"),
    ]);
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/",
            get(|| async { dashboard(DASHBOARD_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/dashboard.js",
            get(|| async { dashboard(DASHBOARD_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard.css",
            get(|| async { dashboard(DASHBOARD_CSS, "text/css; charset=utf-8") }),
        )
        .merge(protected)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such endpoint: GET /openapi.json lists them",
            )
        })
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method: GET /openapi.json lists what each takes",
            )
        })
        .with_state(admin);
    (router, routes)
}

/// How long an admin client has for its TLS handshake, and for each
/// request head once its connection is open or idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Admin connections open at once (dashboards' event streams, the CLI,
/// Prometheus); more are closed at once, so that a flood of them cannot
/// take the file descriptors the data plane serves with.
pub const MAX_CONNECTIONS: usize = 256;

/// Serve `router` on `listener` until `shutdown`; over TLS when `tls` is
/// given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Once per run of refusals, not once per connection of a flood.
    let mut warned = false;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = open.clone().try_acquire_owned() else {
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(
                    "admin connections refused: {MAX_CONNECTIONS} are open (more dashboards than that, or a flood)"
                );
            }
            continue;
        };
        warned = false;
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that sends its head slowly, or holds its connection
            // idle, loses it.
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let conn = builder.serve_connection(TokioIo::new(s), service);
                            tokio::select! { r = conn => r, _ = shutdown.cancelled() => Ok(()) }
                        }
                        _ => return,
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    tokio::select! { r = conn => r, _ = shutdown.cancelled() => Ok(()) }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// 401 without a token (with `WWW-Authenticate`), 403 with a wrong one.
async fn authorize(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().split_at_checked(7))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"Bearer "))
        .map(|(_, token)| token);
    match presented {
        None => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs `Authorization: Bearer TOKEN` (the CLI: --token-file FILE or FULCRUM_ADMIN_TOKEN)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fulcrum\""),
            );
            r
        }
        Some(t) if admin.token.matches(t.trim_ascii()) => next.run(req).await,
        Some(_) => error(
            StatusCode::FORBIDDEN,
            "wrong admin token: use the one in [admin] token_file, FULCRUM_ADMIN_TOKEN, or the state directory's admin.token",
        ),
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

fn json(status: StatusCode, v: impl serde::Serialize) -> Response {
    (status, axum::Json(v)).into_response()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

async fn status(State(admin): State<Arc<Admin>>) -> Response {
    json(
        StatusCode::OK,
        crate::status::status(&admin.controller).await,
    )
}

/// The running config's exact bytes, as TOML; its number and hash in
/// headers.
async fn config(State(admin): State<Arc<Admin>>) -> Response {
    let view = admin.controller.view();
    let s = &view.stable;
    let mut r = Bytes::from(s.source.as_bytes().to_vec()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/toml; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", s.meta.hash)) {
        h.insert(header::ETAG, v);
    }
    h.insert("fulcrum-version", HeaderValue::from(s.meta.number));
    if let Ok(v) = HeaderValue::from_str(&s.meta.hash) {
        h.insert("fulcrum-hash", v);
    }
    r
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyQuery {
    canary: Option<f64>,
    bake: Option<String>,
    #[serde(default)]
    force: bool,
    author: Option<String>,
    message: Option<String>,
    parent: Option<u64>,
    max_moved: Option<f64>,
    /// The file name the CLI read the config from, for diagnostics.
    file: Option<String>,
}

async fn apply(
    State(admin): State<Arc<Admin>>,
    q: Result<Query<ApplyQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
    };
    // Over axum's 2 MB limit (413), or cut off: an answer in JSON as any.
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                e.status(),
                "cannot read the config sent: it is over 2 MB, the most the admin API takes",
            );
        }
        Err(e) => {
            return error(
                e.status(),
                &format!("cannot read the config sent: {}", e.body_text()),
            );
        }
    };
    let source = match String::from_utf8(body.to_vec()) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "the config is not UTF-8 text: the first bad byte is at offset {}",
                    e.utf8_error().valid_up_to()
                ),
            );
        }
    };
    let bake = match q.bake.as_deref().map(humantime::parse_duration).transpose() {
        // A bake blocks every other change until it ends.
        Ok(Some(b)) if b > MAX_BAKE => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "`bake` is at most {}, not {}: a canary blocks every other change while it bakes",
                    humantime::format_duration(MAX_BAKE),
                    humantime::format_duration(b)
                ),
            );
        }
        Ok(b) => b.unwrap_or(DEFAULT_BAKE),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad `bake`: {e}; write e.g. 30s"),
            );
        }
    };
    // Out of range is a malformed request, as `max_moved`: it never
    // enters the pipeline (no probes, no journaled refusal).
    if let Some(c) = q.canary.filter(|c| !(*c > 0.0 && *c < 1.0)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`canary` is a share of clients above 0 and below 1, not {c}"),
        );
    }
    if let Some(m) = q.max_moved.filter(|m| !(0.0..=1.0).contains(m)) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("`max_moved` is a share from 0 to 1, not {m}"),
        );
    }
    let req = ChangeRequest {
        source,
        label: q.file.unwrap_or_else(|| "POST /config".into()),
        author: q
            .author
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| "api".into()),
        message: q.message.unwrap_or_default(),
        origin: Origin::Api,
        canary: q.canary,
        bake,
        force: q.force,
        parent: q.parent,
        max_moved: q.max_moved,
    };
    let report = admin.controller.apply(req).await;
    let status = match report.outcome {
        Outcome::Applied | Outcome::Unchanged => StatusCode::OK,
        Outcome::Staged => StatusCode::ACCEPTED,
        Outcome::Conflict => StatusCode::CONFLICT,
        Outcome::Invalid | Outcome::Refused => StatusCode::UNPROCESSABLE_ENTITY,
        Outcome::Failed => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, report)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackQuery {
    to: Option<u64>,
    author: Option<String>,
    reason: Option<String>,
}

async fn rollback(
    State(admin): State<Arc<Admin>>,
    q: Result<Query<RollbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
    };
    // Blank is absent, as for `POST /config`: the journal names someone.
    let actor = q
        .author
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| "api".into());
    let reason = q
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "rollback requested".into());
    match admin.controller.rollback(q.to, &actor, &reason).await {
        Ok(r) => json(
            StatusCode::OK,
            json!({ "from": r.from, "to": r.to.meta, "summary": format!("v{} serves every request; v{} no longer serves", r.to.meta.number, r.from) }),
        ),
        Err(e) => error(StatusCode::CONFLICT, &e),
    }
}

async fn history(State(admin): State<Arc<Admin>>) -> Response {
    let view = admin.controller.view();
    let store = admin.controller.journal().store().clone();
    let listed = blocking(&store, |s| s.list()).await;
    match listed {
        Ok(list) => {
            let canary = view.canary.as_ref().map(|c| c.serving.meta.number);
            let versions: Vec<Value> = list
                .into_iter()
                .rev()
                .map(|m| {
                    let state = if m.number == view.stable.meta.number {
                        "serving"
                    } else if Some(m.number) == canary {
                        "canary"
                    } else {
                        "stored"
                    };
                    let mut v = serde_json::to_value(&m).unwrap_or_default();
                    v["state"] = state.into();
                    v
                })
                .collect();
            json(
                StatusCode::OK,
                json!({ "serving": view.stable.meta.number, "canary": canary, "versions": versions }),
            )
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot read the store: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Events after this sequence number; default: the last `limit`.
    after: Option<u64>,
    limit: Option<usize>,
    /// Keep the response open and stream events as they happen.
    #[serde(default)]
    stream: bool,
}

async fn events(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad query: {e}")),
    };
    let wants_stream = q.stream
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let limit = q.limit.unwrap_or(1000).min(10_000);
    if wants_stream {
        // Subscribe before reading back, so nothing falls in between.
        let live = admin.controller.journal().subscribe();
        let after = last_id.or(q.after);
        let past = match after {
            Some(a) => read_events(&admin, Some(a), limit).await,
            None => Ok(Vec::new()),
        };
        return match past {
            Ok(past) => Sse::new(stream(
                admin.controller.journal().store().clone(),
                past,
                limit,
                live,
            ))
            .keep_alive(KeepAlive::default())
            .into_response(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
        };
    }
    match read_events(&admin, q.after, limit).await {
        Ok(events) => json(StatusCode::OK, json!({ "events": events })),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// Events after `after`, or the last `limit` when `after` is `None`.
async fn read_events(
    admin: &Admin,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<Event>, String> {
    let store = admin.controller.journal().store().clone();
    blocking(&store, move |s| match after {
        Some(a) => s.events(a, limit),
        None => s
            .last_seq()
            .and_then(|last| s.events(last.saturating_sub(limit as u64), limit)),
    })
    .await
    .map_err(|e| format!("cannot read the journal: {e}"))
}

/// The events read back (`past`, a page of `limit`), every later one the
/// journal holds, page by page, then the live ones: a client that
/// reconnects with `Last-Event-ID` gets all it missed, however many.
fn stream(
    store: Arc<dyn crate::store::Store>,
    past: Vec<Event>,
    limit: usize,
    live: tokio::sync::broadcast::Receiver<Event>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let seen = past.last().map_or(0, |e| e.seq);
    // A full page: the journal may hold more after it.
    let more = limit > 0 && past.len() == limit;
    let state = (past.into_iter(), more, live, seen);
    futures_util::stream::unfold(state, move |(mut past, mut more, mut live, mut seen)| {
        let store = store.clone();
        async move {
            let event = loop {
                if let Some(e) = past.next() {
                    break e;
                }
                if more {
                    // Unreadable now: the stream ends, and the client's
                    // reconnection (with its Last-Event-ID) tries again.
                    let page = blocking(&store, move |s| s.events(seen, limit))
                        .await
                        .ok()?;
                    more = page.len() == limit;
                    past = page.into_iter();
                    continue;
                }
                match live.recv().await {
                    Ok(e) if e.seq > seen => break e,
                    Ok(_) => continue,
                    // A slow reader missed some: say so; the client can
                    // read them back with `after`.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let lag = SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(lag), (past, more, live, seen)));
                    }
                    Err(_) => return None,
                }
            };
            seen = event.seq;
            let sse = SseEvent::default()
                .id(event.seq.to_string())
                .event(serde_json::to_value(event.kind).ok()?.as_str()?)
                .data(serde_json::to_string(&event).ok()?);
            Some((Ok(sse), (past, more, live, seen)))
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    request: String,
    #[serde(default)]
    header: Vec<String>,
    client_ip: Option<IpAddr>,
}

async fn explain(State(admin): State<Arc<Admin>>, raw: axum::extract::RawQuery) -> Response {
    // `header=` may repeat, which axum's `Query` does not take: read the
    // pairs one by one.
    let q: Result<ExplainQuery, String> = (|| {
        let text = raw.0.unwrap_or_default();
        let mut request = None;
        let mut header = Vec::new();
        let mut client_ip = None;
        for (k, v) in form_urlencoded::parse(text.as_bytes()) {
            match &*k {
                "request" => request = Some(v.into_owned()),
                "header" => header.push(v.into_owned()),
                "client_ip" => {
                    client_ip = Some(
                        v.parse()
                            .map_err(|_| format!("`client_ip` {v:?} is not an IP"))?,
                    )
                }
                other => return Err(format!("unknown query parameter `{other}`")),
            }
        }
        Ok(ExplainQuery {
            request: request.ok_or(
                "`request` is required, e.g. request=POST%20http://app.example.com/auth/login",
            )?,
            header,
            client_ip,
        })
    })();
    let q = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let view = admin.controller.view();
    let ip = q.client_ip.unwrap_or(IpAddr::from([192, 0, 2, 1]));
    match fulcrum_safety::explain::explain_text(&view.stable.snapshot, &q.request, &q.header, ip) {
        Ok(e) => json(StatusCode::OK, e),
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

async fn guard(State(admin): State<Arc<Admin>>) -> Response {
    json(StatusCode::OK, &*admin.guard.view())
}

async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    let text = crate::metrics::render(&admin.controller, Some(admin.guard.view()));
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// One of the dashboard's three files. The policy lets the page load only
/// these and call only this API, so the browser itself refuses any fetch
/// from elsewhere (a CDN, a font) and any script not served here.
fn dashboard(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn openapi() -> Response {
    let mut r = OPENAPI.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// How long since `t`, for status.
pub(crate) fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

pub(crate) fn time(t: SystemTime) -> String {
    rfc3339(t)
}
