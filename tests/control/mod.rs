//! Change control end to end: `fulcrum serve` as a process with its admin
//! API, real backends on 127.0.0.1:0, and the CLI verbs and raw API calls
//! that change, canary, roll back and inspect it.

mod api;
mod canary;
mod changes;
mod crash;
mod dashboard;
mod guard;
mod restart;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::{Served, fulcrum, write_config};

pub const TOKEN: &str = "control-test-token-0123456789";

/// A config with an admin API, an `auth` route and a catch-all `web`
/// route; `extra` goes at the top (e.g. `tests = [...]`).
pub fn config(auth: &[SocketAddr], web: SocketAddr, extra: &str) -> String {
    let auth: Vec<String> = auth
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        r#"{extra}
[admin]
listen = "127.0.0.1:0"

[[listener]]
name = "public"
bind = "127.0.0.1:0"

[[route]]
name = "auth"
match = {{ path_prefix = "/auth/" }}
pool = "auth"

[[route]]
name = "web"
pool = "web"

[pool.auth]
backends = [{}]
health = {{ path = "/healthz", interval = "100ms" }}

[pool.web]
backends = [{{ addr = "{web}" }}]
"#,
        auth.join(", ")
    )
}

/// `serve` with its admin API, in a temporary directory of its own.
pub struct Lb {
    pub served: Served,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Lb {
    pub fn start(text: &str) -> Lb {
        Lb::start_with(text, &[], &[])
    }

    /// `files` are written beside the config first; `args` go to `serve`,
    /// with `{dir}` standing for the directory they are in.
    pub fn start_with(text: &str, files: &[(&str, &str)], args: &[&str]) -> Lb {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            write_config(&dir, name, body);
        }
        let config = write_config(&dir, "fulcrum.toml", text);
        let here = dir.path().display().to_string();
        let args: Vec<String> = args.iter().map(|a| a.replace("{dir}", &here)).collect();
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        let served = Served::start_env(&config, &args, &[("FULCRUM_ADMIN_TOKEN", TOKEN)]);
        let admin = admin_addr(&served);
        Lb {
            served,
            admin,
            dir,
            config,
        }
    }

    /// Stop `serve` (SIGTERM, or SIGKILL when `kill`) and start it again
    /// on the same config file and state directory.
    pub async fn restart(&mut self, kill: bool) {
        self.stop(kill).await;
        self.start_again(&[]);
    }

    /// Stop `serve`: SIGTERM (it drains and exits), or SIGKILL.
    pub async fn stop(&mut self, kill: bool) {
        self.served.signal(if kill { "KILL" } else { "TERM" });
        self.served.exit_status().await;
    }

    /// Start `serve` again after [`Lb::stop`], with `args`.
    pub fn start_again(&mut self, args: &[&std::ffi::OsStr]) {
        self.served = Served::start_env(&self.config, args, &[("FULCRUM_ADMIN_TOKEN", TOKEN)]);
        self.admin = admin_addr(&self.served);
    }

    /// The version number serving, from `GET /config`.
    pub async fn serving(&self) -> u64 {
        let (status, headers, body) = self.call("GET", "/config", "", Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
        headers["fulcrum-version"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A raw admin API call; `token` None sends no Authorization header.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (u16, http::HeaderMap, String) {
        call(self.admin, method, path, body, token).await
    }

    /// An admin API call with the right token, answered in JSON.
    pub async fn json(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (status, _, text) = self.call(method, path, body, Some(TOKEN)).await;
        let v = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, v)
    }

    /// A CLI verb aimed at this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().unwrap()
    }

    /// The command `cli` runs, to run it beside the test.
    pub fn cli_command(&self, args: &[&str]) -> std::process::Command {
        let mut cli = fulcrum();
        cli.args(args)
            .args(["--admin", &format!("http://{}", self.admin)])
            .env("FULCRUM_ADMIN_TOKEN", TOKEN)
            .current_dir(self.dir.path());
        cli
    }

    /// `cli`, which must exit 0 (else the test fails with its output).
    pub fn cli_ok(&self, args: &[&str]) -> Output {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    /// Write `name` beside the config.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        write_config(&self.dir, name, text)
    }

    /// GET `path` through the proxy: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        get_from(self.served.addr, path, None).await
    }

    /// The journal's events.
    pub async fn events(&self) -> Vec<serde_json::Value> {
        let (_, v) = self.json("GET", "/events?limit=10000", "").await;
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// The journal's latest event of `kind`.
    pub async fn last_event(&self, kind: &str) -> Option<serde_json::Value> {
        self.events()
            .await
            .into_iter()
            .rev()
            .find(|e| e["kind"] == kind)
    }

    /// The journal's first event for which `found` holds, waiting up to
    /// `within` for it; panics naming `what` and the journal otherwise.
    pub async fn wait_event(
        &self,
        within: std::time::Duration,
        what: &str,
        found: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let events = self.events().await;
            if let Some(e) = events.iter().find(|e| found(e)) {
                return e.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} not in the journal: {events:#?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The admin address from serve's log line (`http://` or `https://`).
pub fn admin_addr(served: &Served) -> SocketAddr {
    served.wait_log("admin API on http", 1);
    let log = served.log.lock().unwrap();
    let line = log
        .iter()
        .find(|l| l.contains("admin API on http"))
        .unwrap();
    let rest = line.split("://").nth(1).unwrap();
    rest.split(|c: char| c == ';' || c.is_whitespace())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

pub async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, http::HeaderMap, String) {
    try_call(admin, method, path, body, token)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`call`], for a server that may die under it: its error instead of a
/// panic.
pub async fn try_call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(u16, http::HeaderMap, String), String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "no answer within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// GET through the proxy, from `from` (a loopback address) when given:
/// the canary cohort is chosen by the client's address.
pub async fn get_from(proxy: SocketAddr, path: &str, from: Option<IpAddr>) -> (u16, String) {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(from);
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let uri: hyper::Uri = format!("http://{proxy}{path}").parse().unwrap();
    let resp = client.get(uri).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
