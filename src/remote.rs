//! The verbs that talk to a running `serve` through its admin API:
//! `apply`, `rollback`, `history`, `status` and `drift`. Each failure to
//! reach it (unreachable, no token, wrong token) is one line that says
//! what to do, and exit 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::EXIT_USAGE;

/// Where the admin API is, and the token for it.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The admin API's URL; default: $FULCRUM_ADMIN_URL, else (for
    /// `apply`) the new config's `[admin] listen`, else
    /// http://127.0.0.1:9901.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// A file holding the admin token; default: $FULCRUM_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM certificates to trust for an https:// admin URL (the admin
    /// API's own certificate, or the CA that signed it); default:
    /// $FULCRUM_ADMIN_CA, else the system's roots.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9901";

/// A call's error when the API took its request and sent no answer.
const TIMED_OUT: &str = "timed out after 120 s";

type Step<T> = Result<T, ExitCode>;

/// `println!` for the verbs that talk to the admin API. They keep Rust's
/// SIGPIPE ignored, so that a TLS alert written to a socket the server
/// closed is an error to report, not a silent death; so a reader of their
/// output that went away (`| head`) ends the command here, quietly, with
/// the status a SIGPIPE death would have given.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(141);
        }
    }};
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("fulcrum: {msg}");
    ExitCode::from(EXIT_USAGE)
}

struct Api {
    base: String,
    token: Option<String>,
    /// For an https:// URL: the roots its certificate must chain to.
    tls: Option<rustls::ClientConfig>,
    /// Where those roots came from, when not the system's: for the hint
    /// when the certificate does not verify.
    ca: Option<PathBuf>,
}

impl Api {
    fn new(target: &Target, fallback: Option<String>) -> Step<Api> {
        let base = target
            .admin
            .clone()
            .or_else(|| std::env::var("FULCRUM_ADMIN_URL").ok())
            .or(fallback)
            .unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
        let base = base.trim_end_matches('/').to_owned();
        let ca = target
            .ca_file
            .clone()
            .or_else(|| std::env::var_os("FULCRUM_ADMIN_CA").map(PathBuf::from));
        let tls = if base.starts_with("https://") {
            Some(client_tls(ca.as_deref()).map_err(usage)?)
        } else if base.starts_with("http://") {
            None
        } else {
            return Err(usage(format!(
                "--admin {base}: write an http:// or https:// URL such as {DEFAULT_ADMIN}"
            )));
        };
        let token = match &target.token_file {
            Some(f) => Some(fulcrum_control::token::read_text(f).map_err(usage)?),
            None => match std::env::var(fulcrum_control::token::ENV) {
                Ok(t) if !t.trim().is_empty() => {
                    fulcrum_control::token::sendable(t.trim()).map_err(|why| {
                        usage(format!(
                            "{} holds {why}: set it to the token alone",
                            fulcrum_control::token::ENV
                        ))
                    })?;
                    Some(t.trim().to_owned())
                }
                _ => None,
            },
        };
        Ok(Api {
            base,
            token,
            tls,
            ca,
        })
    }

    /// Send a request; `Err` (printed, exit 2) when the API cannot be
    /// reached or refuses the token.
    fn call(
        &self,
        method: Method,
        path_query: &str,
        body: Option<String>,
    ) -> Step<(StatusCode, Bytes)> {
        let url = format!("{}{path_query}", self.base);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| usage(format!("{url} is not a valid URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| usage(format!("cannot start: {e}")))?;
        let got = runtime.block_on(async {
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(self.tls.clone().unwrap_or_else(no_roots))
                .https_or_http()
                .enable_http1()
                .build();
            let client: Client<_, Full<Bytes>> =
                Client::builder(TokioExecutor::new()).build(connector);
            let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
                .await
                .map_err(|_| TIMED_OUT.to_owned())?
                .map_err(|e| {
                    let mut why = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        why = s.to_string();
                        src = s.source();
                    }
                    why
                })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        });
        let (status, body) = got.map_err(|e| {
            if e == TIMED_OUT {
                // The request went: a change may still land.
                return usage(format!(
                    "the admin API at {} did not answer within 120 s (a change sent may still be applied: `fulcrum status` and `fulcrum history` say)",
                    self.base
                ));
            }
            let hint = match &self.ca {
                _ if !e.contains("certificate") => {
                    "is `fulcrum serve` running with an [admin] listen? pass --admin URL".to_owned()
                }
                Some(ca) => format!(
                    "its certificate does not verify against {}: give the certificate it serves or the CA that signed it, for the URL's host",
                    ca.display()
                ),
                None => "pass --ca-file with the admin API's certificate or the CA that signed it"
                    .to_owned(),
            };
            usage(format!(
                "cannot reach the admin API at {}: {e} ({hint})",
                self.base
            ))
        })?;
        match status {
            StatusCode::UNAUTHORIZED => Err(usage(format!(
                "the admin API at {} wants a token: pass --token-file FILE (e.g. the state directory's admin.token) or set FULCRUM_ADMIN_TOKEN",
                self.base
            ))),
            StatusCode::FORBIDDEN => Err(usage(format!(
                "the admin API at {} refused the token: use the one in its [admin] token_file, FULCRUM_ADMIN_TOKEN or the state directory's admin.token",
                self.base
            ))),
            _ => Ok((status, body)),
        }
    }

    fn json(
        &self,
        method: Method,
        path_query: &str,
        body: Option<String>,
    ) -> Step<(StatusCode, Value)> {
        let (status, body) = self.call(method, path_query, body)?;
        let v = serde_json::from_slice(&body).map_err(|_| {
            usage(format!(
                "{} answered {status} with something that is not JSON: is it Fulcrum's admin API?",
                self.base
            ))
        })?;
        Ok((status, v))
    }

    /// [`Api::json`] for a read: an answer other than 200 is its `error`,
    /// printed (exit 1).
    fn read(&self, path_query: &str) -> Step<Value> {
        let (status, v) = self.json(Method::GET, path_query, None)?;
        if status != StatusCode::OK {
            eprintln!(
                "fulcrum: {path_query} failed ({status}): {}",
                v["error"].as_str().unwrap_or("no reason given")
            );
            return Err(ExitCode::FAILURE);
        }
        Ok(v)
    }
}

/// TLS towards an https:// admin API: trusting the certificates in `ca`,
/// else the system's roots.
fn client_tls(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca-file {}: no PEM certificate in it",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system root certificates to check the admin API's with: pass --ca-file FILE"
                        .to_owned(),
                );
            }
        }
    }
    Ok(tls_with(roots))
}

/// For http:// URLs, which never use it.
fn no_roots() -> rustls::ClientConfig {
    tls_with(rustls::RootCertStore::empty())
}

fn tls_with(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

fn done(r: Step<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|c| c)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub struct ApplyOptions<'a> {
    pub file: &'a Path,
    pub target: &'a Target,
    pub canary: Option<f64>,
    pub bake: Option<Duration>,
    pub force: bool,
    pub message: Option<String>,
    pub max_moved: Option<f64>,
    pub no_wait: bool,
}

pub fn apply(o: ApplyOptions<'_>) -> ExitCode {
    done((|| {
        // Its message is a whole line already.
        let source = crate::read_config(o.file).map_err(|e| {
            eprintln!("{e}");
            ExitCode::from(EXIT_USAGE)
        })?;
        // The new config's own admin address, when no other is given,
        // checked with the files it names (a TLS certificate, `tests`)
        // read as `check` reads them: without them it is no config.
        let env = crate::env::FileEnv::for_config(o.file);
        let own = fulcrum_config::check_with(&o.file.display().to_string(), &source, &env)
            .snapshot
            .and_then(|s| s.admin)
            .map(|a| {
                let scheme = if a.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", a.listen)
            });
        let api = Api::new(o.target, own)?;
        let status = api.read("/status")?;
        let parent = status["version"]["number"].as_u64();
        let author = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        let mut q = format!(
            "/config?author={}&file={}",
            enc(&author),
            enc(&o.file.display().to_string())
        );
        if let Some(p) = parent {
            q += &format!("&parent={p}");
        }
        if let Some(c) = o.canary {
            q += &format!("&canary={c}");
        }
        if let Some(b) = o.bake {
            q += &format!("&bake={}", enc(&humantime::format_duration(b).to_string()));
        }
        if o.force {
            q += "&force=true";
        }
        if let Some(m) = &o.message {
            q += &format!("&message={}", enc(m));
        }
        if let Some(m) = o.max_moved {
            q += &format!("&max_moved={m}");
        }
        let (code, report) = api.json(Method::POST, &q, Some(source))?;
        if report.get("error").is_some() {
            eprintln!(
                "fulcrum: {} ({code})",
                report["error"].as_str().unwrap_or_default()
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        say!("{}", render_report(&report).trim_end_matches('\n'));
        let outcome = report["outcome"].as_str().unwrap_or_default();
        Ok(match outcome {
            "staged" if !o.no_wait => wait_for_bake(
                &api,
                report["version"]["number"].as_u64().unwrap_or_default(),
            ),
            "applied" | "staged" | "unchanged" => ExitCode::SUCCESS,
            "invalid" => ExitCode::from(crate::EXIT_INVALID),
            _ => ExitCode::FAILURE,
        })
    })())
}

/// Every step as it passed or failed, the diff, the impact, warnings and
/// refusals, and what happened.
fn render_report(r: &Value) -> String {
    let mut out = String::new();
    for s in r["steps"].as_array().into_iter().flatten() {
        let mark = if s["ok"].as_bool().unwrap_or(false) {
            "✓"
        } else {
            "✗"
        };
        out += &format!(
            "{mark} {}: {}\n",
            s["step"].as_str().unwrap_or(""),
            s["detail"].as_str().unwrap_or("")
        );
    }
    if let Some(d) = r["diagnostics"].as_str() {
        out += d;
    }
    let changes = r["diff"]
        .as_array()
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    if !changes.is_empty() {
        out += "changes:\n";
        for c in changes {
            let field = c["field"]
                .as_str()
                .map(|f| format!(" {f}"))
                .unwrap_or_default();
            let old = c["old"]
                .as_str()
                .map(|o| format!(" {o}"))
                .unwrap_or_default();
            let new = c["new"]
                .as_str()
                .map(|n| format!(" → {n}"))
                .unwrap_or_default();
            out += &format!(
                "  {} {} {}{field}:{old}{new}\n",
                c["op"].as_str().unwrap_or(""),
                c["kind"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or("")
            );
        }
    }
    for w in r["warnings"].as_array().into_iter().flatten() {
        out += &format!("warning: {}\n", w.as_str().unwrap_or(""));
    }
    for f in r["forced"].as_array().into_iter().flatten() {
        out += &format!(
            "forced past: {}: {}\n",
            f["step"].as_str().unwrap_or(""),
            f["message"].as_str().unwrap_or("")
        );
    }
    for f in r["refusals"].as_array().into_iter().flatten() {
        out += &format!(
            "refused: {}: {}\n",
            f["step"].as_str().unwrap_or(""),
            f["message"].as_str().unwrap_or("")
        );
    }
    let v = r["version"]["number"].as_u64();
    out += &match (r["outcome"].as_str().unwrap_or(""), v) {
        ("applied", Some(v)) => format!("applied: v{v} serves every request\n"),
        ("staged", Some(v)) => format!("staged: v{v} serves a canary share of clients\n"),
        ("unchanged", _) => "unchanged: the same config already serves\n".to_owned(),
        ("conflict", _) => "conflict: nothing changed\n".to_owned(),
        ("invalid", _) => "invalid: nothing changed; `fulcrum check` shows every problem\n".to_owned(),
        ("failed", _) => "failed: the store could not record the change; nothing changed\n".to_owned(),
        _ => "refused: nothing changed (--force overrides standards, tests, pre-flight and impact refusals; the journal records it)\n".to_owned(),
    };
    out
}

/// Follow a canary until it is promoted or rolled back.
fn wait_for_bake(api: &Api, number: u64) -> ExitCode {
    say!("waiting for the canary's bake time (Ctrl-C stops waiting, not the canary)…");
    // Whether the guard held the promotion at the last look.
    let mut held = false;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let Ok((_, s)) = api.json(Method::GET, "/status", None) else {
            // The reason is printed; the canary is `serve`'s, not ours.
            eprintln!(
                "fulcrum: stopped waiting for v{number}'s canary, which goes on in `serve` if it runs: `fulcrum status` and `fulcrum history` show how it ends"
            );
            return ExitCode::from(EXIT_USAGE);
        };
        if s["canary"]["version"]["number"].as_u64() == Some(number) {
            let now = s["canary"]["held"].as_str();
            if let Some(why) = now.filter(|_| !held) {
                say!(
                    "held: the bake is over and the guard holds the promotion of v{number} (at most one more bake): {why}"
                );
            }
            held = now.is_some();
            continue;
        }
        return if s["version"]["number"].as_u64() == Some(number) {
            say!("{}", promoted(api, number));
            ExitCode::SUCCESS
        } else {
            say!(
                "rolled back: v{number} no longer serves; v{} does (`fulcrum history`, GET /events say why)",
                s["version"]["number"].as_u64().unwrap_or_default()
            );
            ExitCode::FAILURE
        };
    }
}

/// The line for canary `number`'s promotion, from its `promoted` event:
/// whether the guard held it past its bake, and whether it still did.
fn promoted(api: &Api, number: u64) -> String {
    let event = api
        .json(Method::GET, "/events?limit=100", None)
        .ok()
        .and_then(|(_, v)| {
            v["events"]
                .as_array()?
                .iter()
                .rev()
                .find(|e| e["kind"] == "promoted" && e["version"].as_u64() == Some(number))
                .cloned()
        })
        .unwrap_or_default();
    let detail = &event["detail"];
    match (
        detail["held"].as_str(),
        detail["held_ms"].as_u64().unwrap_or(0),
    ) {
        (Some(why), _) => format!(
            "promoted: v{number} serves every request, though the guard still held it after twice the bake (it judges v{number} on probation now): {why}"
        ),
        (None, ms) if ms > 0 => format!(
            "promoted: v{number} serves every request, after the guard held it {:.1} s past its bake",
            ms as f64 / 1000.0
        ),
        _ => format!("promoted: v{number} serves every request"),
    }
}

pub fn rollback(target: &Target, to: Option<u64>, reason: Option<String>) -> ExitCode {
    done((|| {
        let api = Api::new(target, None)?;
        let author = std::env::var("USER").unwrap_or_else(|_| "cli".into());
        let mut q = format!("/rollback?author={}", enc(&author));
        if let Some(t) = to {
            q += &format!("&to={t}");
        }
        if let Some(r) = &reason {
            q += &format!("&reason={}", enc(r));
        }
        let (code, v) = api.json(Method::POST, &q, None)?;
        if code.is_success() {
            say!("{}", v["summary"].as_str().unwrap_or("rolled back"));
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!(
                "fulcrum: rollback refused: {}",
                v["error"].as_str().unwrap_or("?")
            );
            Ok(ExitCode::FAILURE)
        }
    })())
}

pub fn history(target: &Target, json: bool) -> ExitCode {
    done((|| {
        let api = Api::new(target, None)?;
        let v = api.read("/history")?;
        if json {
            say!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        for m in v["versions"].as_array().into_iter().flatten() {
            let parent = m["parent"]
                .as_u64()
                .map(|p| format!("v{p}"))
                .unwrap_or_else(|| "-".into());
            say!(
                "v{:<4} {:<8} {}  {:<10} {} (from {parent}, hash {}) {}",
                m["number"].as_u64().unwrap_or_default(),
                m["state"].as_str().unwrap_or(""),
                m["time"].as_str().unwrap_or(""),
                m["author"].as_str().unwrap_or(""),
                m["origin"].as_str().unwrap_or(""),
                m["hash"].as_str().unwrap_or(""),
                m["message"].as_str().unwrap_or(""),
            );
        }
        Ok(ExitCode::SUCCESS)
    })())
}

pub fn status(target: &Target, json: bool) -> ExitCode {
    done((|| {
        let api = Api::new(target, None)?;
        let s = api.read("/status")?;
        if json {
            say!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            return Ok(ExitCode::SUCCESS);
        }
        let v = &s["version"];
        say!(
            "serving v{} ({}, hash {}) by {}: {}",
            v["number"].as_u64().unwrap_or_default(),
            s["label"].as_str().unwrap_or(""),
            v["hash"].as_str().unwrap_or(""),
            v["author"].as_str().unwrap_or(""),
            v["message"].as_str().unwrap_or("")
        );
        if let Some(c) = s["canary"].as_object() {
            say!(
                "canary v{} on {:.1}% of clients, {} ms of bake left",
                c["version"]["number"].as_u64().unwrap_or_default(),
                c["fraction"].as_f64().unwrap_or_default() * 100.0,
                c["remaining_ms"].as_u64().unwrap_or_default()
            );
        }
        for p in s["pools"].as_array().into_iter().flatten() {
            say!(
                "pool {} ({})",
                p["name"].as_str().unwrap_or(""),
                p["algorithm"].as_str().unwrap_or("")
            );
            for b in p["backends"].as_array().into_iter().flatten() {
                let state = match (b["healthy"].as_bool(), b["ejected"].as_bool()) {
                    (Some(true), Some(false)) => "up",
                    (_, Some(true)) => "ejected",
                    _ => "down",
                };
                say!(
                    "  {:<22} {:<8} weight {:<4} in flight {:<4} requests {} failures {}",
                    b["addr"].as_str().unwrap_or(""),
                    state,
                    b["weight"].as_u64().unwrap_or_default(),
                    b["in_flight"].as_u64().unwrap_or_default(),
                    b["requests"].as_u64().unwrap_or_default(),
                    b["failures"].as_u64().unwrap_or_default()
                );
            }
        }
        for p in s["drift"]["problems"].as_array().into_iter().flatten() {
            say!("drift: {}", p.as_str().unwrap_or(""));
        }
        Ok(ExitCode::SUCCESS)
    })())
}

/// Exit 1 when the running config, the store's head, the file on disk or
/// the standards disagree.
pub fn drift(target: &Target, json: bool) -> ExitCode {
    done((|| {
        let api = Api::new(target, None)?;
        let s = api.read("/status")?;
        let d = &s["drift"];
        if json {
            say!("{}", serde_json::to_string_pretty(d).unwrap_or_default());
        } else {
            say!(
                "running:    v{} (hash {})",
                d["running"]["number"].as_u64().unwrap_or_default(),
                d["running"]["hash"].as_str().unwrap_or("")
            );
            say!(
                "store head: {}",
                d["store_head"]
                    .as_u64()
                    .map_or_else(|| "none".into(), |h| format!("v{h}"))
            );
            say!(
                "file:       {} (hash {})",
                d["file"]["path"].as_str().unwrap_or(""),
                d["file"]["hash"].as_str().unwrap_or("unreadable")
            );
            match d["standards"].as_object() {
                Some(st) => say!(
                    "standards:  {} ({})",
                    st["path"].as_str().unwrap_or(""),
                    if st["ok"].as_bool().unwrap_or(false) {
                        "met"
                    } else {
                        "broken"
                    }
                ),
                None => say!("standards:  none held by the server"),
            }
            for p in d["problems"].as_array().into_iter().flatten() {
                say!("drift: {}", p.as_str().unwrap_or(""));
            }
        }
        let clean = d["problems"].as_array().is_none_or(|p| p.is_empty());
        if !json && clean {
            say!("no drift");
        }
        Ok(if clean {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })())
}
