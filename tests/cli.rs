//! The `fulcrum` binary end to end: `check` output and exit codes, and
//! `serve` as a process — SIGHUP reload under load, a refused reload,
//! SIGTERM drain, and listeners shared by worker threads — against real
//! backends on 127.0.0.1:0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fulcrum_testkit::Backend;

fn fulcrum() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fulcrum"))
}

fn write_config(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------- check

const BROKEN: &str = r#"[[listener]]
name = "public"
bind = "127.0.0.1:8080"

[[route]]
name = "auth"
match = { path_prefix = "/auth/" }
pool = "auht"

[pool.auth]
backends = [{ addr = "127.0.0.1:9101" }, { addr = "127.0.0.1:9101" }]
"#;

#[test]
fn check_reports_every_error_with_position_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "fulcrum.toml", BROKEN);
    let out = fulcrum().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let text = String::from_utf8(out.stdout).unwrap();
    let label = path.display().to_string();
    assert!(
        text.contains("error[unknown-pool]: route[0].pool: no pool named `auht`"),
        "{text}"
    );
    assert!(text.contains(&format!("--> {label}:8:8")), "{text}");
    assert!(text.contains("= hint: did you mean `auth`?"), "{text}");
    assert!(text.contains("error[duplicate-backend]"), "{text}");
    assert!(text.contains(&format!("{label}: 2 errors")), "{text}");
}

#[test]
fn check_json_is_one_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "fulcrum.toml", BROKEN);
    let out = fulcrum()
        .args(["check", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["errors"], 2);
    let first = &doc["diagnostics"][0];
    assert_eq!(first["code"], "unknown-pool");
    assert_eq!(first["key_path"], "route[0].pool");
    assert_eq!(first["line"], 8);
    assert_eq!(first["col"], 8);
    assert_eq!(first["hint"], "did you mean `auth`?");
}

/// The config files of `examples/`: every `.toml` but the rules files
/// (`standards.toml`, `*tests.toml`).
pub fn example_configs() -> Vec<PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".toml") && name != "standards.toml" && !name.ends_with("tests.toml")
        })
        .collect();
    out.sort();
    assert!(out.len() >= 3, "{out:?}");
    out
}

#[test]
fn check_accepts_the_examples() {
    for path in example_configs() {
        let out = fulcrum().arg("check").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Every verb reads a config as `serve` does: certificates included, and
/// relative to the config file.
#[test]
fn every_verb_reads_certificates_next_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["app.example.com".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let config = write_config(
        &dir,
        "fulcrum.toml",
        r#"[[listener]]
name = "public"
bind = "127.0.0.1:8443"
tls = { cert = "cert.pem", key = "key.pem" }

[[route]]
name = "all"
pool = "web"

[pool.web]
backends = [{ addr = "127.0.0.1:9201" }]
"#,
    );
    let rules = write_config(
        &dir,
        "rules.toml",
        "[[rule]]\nname = \"all to web\"\nrequest = \"GET https://app.example.com/\"\nexpect_pool = \"web\"\n",
    );
    let c = config.to_str().unwrap();
    let r = rules.to_str().unwrap();
    for args in [
        vec!["check", c],
        vec!["check", c, "--format", "sarif"],
        vec!["check", c, "--standards", r],
        vec!["test", c, r],
        vec!["diff", c, c],
        vec!["explain", c, "GET https://app.example.com/"],
    ] {
        // From another directory, so paths resolve against the config's.
        let out = fulcrum().args(&args).current_dir("/").output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let out = fulcrum()
        .args(["check", "/nonexistent/fulcrum.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("fulcrum: cannot read /nonexistent/fulcrum.toml"),
        "{err}"
    );

    let out = fulcrum()
        .args(["check", "--frobnicate", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_runs_the_tests_a_config_ships_with() {
    let dir = tempfile::tempdir().unwrap();
    let config = |pool: &str| {
        format!(
            "tests = [\"login.tests.toml\"]\n[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n[[route]]\nname = \"auth\"\nmatch = {{ path_prefix = \"/auth/\" }}\npool = \"{pool}\"\n[[route]]\nname = \"web\"\npool = \"web\"\n[pool.auth]\nbackends = [{{ addr = \"127.0.0.1:9101\" }}]\n[pool.web]\nbackends = [{{ addr = \"127.0.0.1:9201\" }}]\n"
        )
    };
    write_config(
        &dir,
        "login.tests.toml",
        "[[rule]]\nname = \"logins reach auth\"\nrequest = \"POST http://app.example.com/auth/login\"\nexpect_pool = \"auth\"\n",
    );
    let good = write_config(&dir, "good.toml", &config("auth"));
    let out = fulcrum().arg("check").arg(&good).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tests login.tests.toml"));
    // Incident 1: the config's own test catches it.
    let bad = write_config(&dir, "bad.toml", &config("web"));
    let out = fulcrum()
        .args(["check", "--format", "json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tests"][0]["failed"], 1, "{doc}");
    // A tests file that is missing makes the config invalid.
    std::fs::remove_file(dir.path().join("login.tests.toml")).unwrap();
    let out = fulcrum().arg("check").arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreadable-tests"));
}

#[test]
fn serve_refuses_an_invalid_config_with_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, "fulcrum.toml", BROKEN);
    let out = fulcrum()
        .arg("serve")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("error[unknown-pool]"), "{err}");
}

#[test]
fn serve_refuses_an_unreadable_standards_file_with_2_and_an_invalid_one_with_78() {
    let dir = tempfile::tempdir().unwrap();
    // An invalid config: were the standards file skipped, this would exit 78.
    let broken = write_config(&dir, "fulcrum.toml", BROKEN);
    let missing = dir.path().join("missing-standards.toml");
    let out = fulcrum()
        .arg("serve")
        .arg("-c")
        .arg(&broken)
        .arg("--standards")
        .arg(&missing)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fulcrum: cannot read "), "{err}");
    assert!(err.contains("missing-standards.toml"), "{err}");

    // A missing config: were the standards file skipped, this would exit 2.
    let invalid = write_config(&dir, "standards.toml", "[[rule]]\nname = 7\n");
    let out = fulcrum()
        .arg("serve")
        .arg("-c")
        .arg(dir.path().join("absent.toml"))
        .arg("--standards")
        .arg(&invalid)
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("invalid standards file"), "{err}");
}

// ---------------------------------------------------------------- serve

/// A `fulcrum serve` child process with its log captured line by line.
struct Served {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Served {
    fn start(config: &std::path::Path) -> Served {
        Served::start_with(config, &[])
    }

    fn start_with(config: &std::path::Path, args: &[&std::ffi::OsStr]) -> Served {
        Served::start_env(config, args, &[])
    }

    fn start_env(
        config: &std::path::Path,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Served {
        let mut child = fulcrum()
            .arg("serve")
            .arg("-c")
            .arg(config)
            .args(["--grace", "5s", "--threads", "2"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn({
            let log = log.clone();
            move || {
                let listening = regex::Regex::new(r"listening listener=\S+ addr=(\S+)").unwrap();
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    if let Some(c) = listening.captures(&line) {
                        let _ = tx.send(c[1].parse::<SocketAddr>().unwrap());
                    }
                    log.lock().unwrap().push(line);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("serve did not start: {:?}", log.lock().unwrap()));
        Served { child, addr, log }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// How the process ended, once it has (within 5 s).
    async fn exit_status(&mut self) -> std::process::ExitStatus {
        self.exit_within(Duration::from_secs(5)).await
    }

    /// How the process ended, once it has (within `limit`).
    async fn exit_within(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit after draining"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the log has `n` lines containing `needle`.
    fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= n
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no {needle:?} in log: {:#?}", self.log.lock().unwrap());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let re = regex::Regex::new(r"\x1b\[[0-9;]*m").unwrap();
    re.replace_all(s, "").into_owned()
}

fn config_one_pool(listener: &str, pool: &str, backend: SocketAddr) -> String {
    format!(
        r#"[[listener]]
name = "public"
bind = "{listener}"

[[route]]
name = "all"
pool = "{pool}"

[pool.{pool}]
backends = [{{ addr = "{backend}" }}]
health = {{ path = "/healthz", interval = "100ms" }}
"#
    )
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Tallies of a load run: requests answered 200 by each body, and failures.
#[derive(Default)]
struct Tally {
    by_body: Mutex<std::collections::HashMap<String, u64>>,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// Keep `conns` keep-alive clients busy until `stop`, at most `max` requests each.
async fn load(
    addr: SocketAddr,
    conns: usize,
    max: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let client = client();
            for _ in 0..max {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
                match client.get(uri).await {
                    Ok(resp) if resp.status() == 200 => {
                        use http_body_util::BodyExt;
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        *tally.by_body.lock().unwrap().entry(body).or_default() += 1;
                    }
                    Ok(resp) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally
                            .failures
                            .lock()
                            .unwrap()
                            .push(format!("status {}", resp.status()));
                    }
                    Err(e) => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        tally.failures.lock().unwrap().push(format!("{e:?}"));
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_under_load_without_failing_a_request() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fulcrum.toml",
        &config_one_pool("127.0.0.1:0", "one", one.addr),
    );
    let served = Served::start(&path);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let run = tokio::spawn(load(served.addr, 8, 20_000, stop.clone(), tally.clone()));

    // A valid change: the route moves to another pool.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(&path, config_one_pool("127.0.0.1:0", "two", two.addr)).unwrap();
    served.signal("HUP");
    served.wait_log("config reloaded", 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_refused = tally
        .by_body
        .lock()
        .unwrap()
        .get("two")
        .copied()
        .unwrap_or(0);

    // An invalid file: refused, and the running config keeps serving.
    std::fs::write(&path, BROKEN).unwrap();
    served.signal("HUP");
    served.wait_log("reload refused", 1);
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.store(true, Ordering::Relaxed);
    run.await.unwrap();

    let by_body = tally.by_body.lock().unwrap().clone();
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failures: {:?}",
        &tally.failures.lock().unwrap()[..]
    );
    assert!(by_body.get("one").copied().unwrap_or(0) > 0, "{by_body:?}");
    assert!(
        by_body.get("two").copied().unwrap_or(0) > before_refused,
        "{by_body:?}"
    );
    let log = served.log.lock().unwrap().join("\n");
    assert!(
        log.contains("error[unknown-pool]"),
        "refused reload must log its diagnostics: {log}"
    );
}

/// A config labelled `version = "same"` before and after a reload that
/// changes its text: the log warns with both hashes, and the access log
/// tells the two apart by `config_hash`. Its relative `path` is the config
/// file's directory's, as every path a config names (the test runs from
/// elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_version_label_logs_and_records_the_content_hash() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let labelled = |pool: &str, addr: SocketAddr| {
        format!(
            "version = \"same\"\n\n[access_log]\npath = \"access.log\"\n\n{}",
            config_one_pool("127.0.0.1:0", pool, addr)
        )
    };
    let path = write_config(&dir, "fulcrum.toml", &labelled("one", one.addr));
    let served = Served::start(&path);
    let get = || async {
        let uri: hyper::Uri = format!("http://{}/", served.addr).parse().unwrap();
        let resp = client().get(uri).await.unwrap();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    };
    assert_eq!(get().await, "one");

    std::fs::write(&path, labelled("two", two.addr)).unwrap();
    served.signal("HUP");
    served.wait_log("config reloaded", 1);
    served.wait_log("its `version` did not", 1);
    assert_eq!(get().await, "two");

    let hashes = |text: &str| fulcrum_config::content_version(text);
    let (before, after) = (
        hashes(&labelled("one", one.addr)),
        hashes(&labelled("two", two.addr)),
    );
    let warning = served
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("its `version` did not"))
        .cloned()
        .unwrap();
    assert!(
        warning.contains(&format!("hash={after}")) && warning.contains(&format!("was={before}")),
        "{warning}"
    );
    // The writer flushes off the request path: wait for both lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["version"].as_str().unwrap(),
                l["config_hash"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("same", &*before), ("same", &*after)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let slow = Backend::start("slow").await;
    slow.set_mode(fulcrum_testkit::Mode::Delay(Duration::from_millis(400)));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fulcrum.toml",
        &config_one_pool("127.0.0.1:0", "slow", slow.addr),
    );
    let mut served = Served::start(&path);
    let addr = served.addr;

    let in_flight = tokio::spawn(async move {
        let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
        client().get(uri).await.map(|r| r.status())
    });
    // Signal only once the request has reached the backend.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.hits() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    served.signal("TERM");
    served.wait_log("draining", 1);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a draining proxy must not accept new connections"
    );
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);

    let status = served.exit_status().await;
    assert!(status.success(), "{status:?}");
}

/// Listening sockets on 127.0.0.1:`port`, whoever owns them, from
/// /proc/net/tcp: with `--threads N` a listener has N on one address.
fn listening_sockets(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        })
        .count()
}

/// Sends `n` requests at once, each on a new connection of its own, and
/// returns the bodies (sorted) or every failure.
async fn one_per_connection(addr: SocketAddr, n: usize) -> Result<Vec<String>, Vec<String>> {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..n {
        requests.spawn(async move {
            use http_body_util::BodyExt;
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/")
                .header("host", "app.example.com")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?;
            let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            if status == 200 {
                Ok(body)
            } else {
                Err(format!("status {status}: {body}"))
            }
        });
    }
    let (mut bodies, mut failures) = (Vec::new(), Vec::new());
    for r in requests.join_all().await {
        match r {
            Ok(body) => bodies.push(body),
            Err(e) => failures.push(e),
        }
    }
    bodies.sort();
    if failures.is_empty() {
        Ok(bodies)
    } else {
        Err(failures)
    }
}

/// With `--threads 2` every listener has a socket per worker thread, all on
/// one address (port 0 included) and announced once; requests over many
/// separate connections are all served; a reload binds a new listener the
/// same way, and one that cannot bind changes nothing; SIGTERM closes every
/// socket before announcing the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_threads_share_each_listener_across_reload_and_drain() {
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fulcrum.toml",
        &config_one_pool("127.0.0.1:0", "one", one.addr),
    );
    let mut served = Served::start(&path); // --threads 2
    let public = served.addr;
    assert_eq!(listening_sockets(public.port()), 2, "one socket per thread");
    assert_eq!(
        one_per_connection(public, 64).await,
        Ok(vec!["one".to_owned(); 64])
    );

    // The route moves to another pool and a second listener comes.
    let extra = "[[listener]]\nname = \"extra\"\nbind = \"127.0.0.1:0\"\n";
    std::fs::write(
        &path,
        config_one_pool("127.0.0.1:0", "two", two.addr) + extra,
    )
    .unwrap();
    served.signal("HUP");
    served.wait_log("config reloaded", 1);
    served.wait_log("listening listener=extra", 1);
    let extra_addr: SocketAddr = {
        let log = served.log.lock().unwrap();
        let line = log
            .iter()
            .find(|l| l.contains("listening listener=extra"))
            .unwrap();
        line.split("addr=").nth(1).unwrap().trim().parse().unwrap()
    };
    assert_eq!(listening_sockets(extra_addr.port()), 2);
    assert_eq!(
        listening_sockets(public.port()),
        2,
        "an unchanged listener keeps its sockets"
    );
    for addr in [public, extra_addr] {
        assert_eq!(
            one_per_connection(addr, 32).await,
            Ok(vec!["two".to_owned(); 32])
        );
    }

    // A listener on a port another socket holds (without SO_REUSEPORT):
    // refused, and the pool change with it does not happen.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = format!(
        "[[listener]]\nname = \"blocked\"\nbind = \"{}\"\n",
        taken.local_addr().unwrap()
    );
    std::fs::write(
        &path,
        config_one_pool("127.0.0.1:0", "one", one.addr) + extra + &blocked,
    )
    .unwrap();
    served.signal("HUP");
    served.wait_log("reload refused", 1);
    served.wait_log("cannot bind", 1);
    assert_eq!(
        one_per_connection(public, 16).await,
        Ok(vec!["two".to_owned(); 16])
    );
    let listening = served
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("listening listener="))
        .count();
    assert_eq!(listening, 2, "each listener announced once");

    served.signal("TERM");
    served.wait_log("draining: no new connections", 1);
    for addr in [public, extra_addr] {
        assert_eq!(listening_sockets(addr.port()), 0, "every socket closed");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
    let status = served.exit_status().await;
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_with_two_threads_fails_in_one_line_on_a_taken_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fulcrum.toml",
        &config_one_pool(&addr.to_string(), "web", "127.0.0.1:9".parse().unwrap()),
    );
    let out = fulcrum()
        .args(["serve", "--threads", "2", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "fulcrum: listener \"public\": cannot bind {addr}: "
        )),
        "{err}"
    );
}

/// A second `serve` on an address the first already serves: SO_REUSEPORT
/// would let it start without a word and take half the connections (how
/// incident 1 reached a fifth of the users). It refuses, in one line, and
/// the first keeps every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_address_exits_1() {
    let one = Backend::start("one").await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "fulcrum.toml",
        &config_one_pool("127.0.0.1:0", "one", one.addr),
    );
    let served = Served::start(&path); // --threads 2
    let addr = served.addr;
    let second = write_config(
        &dir,
        "second.toml",
        &config_one_pool(&addr.to_string(), "web", "127.0.0.1:9".parse().unwrap()),
    );
    let mut child = fulcrum()
        .args(["serve", "--threads", "2", "-c"])
        .arg(&second)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second serve started on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "fulcrum: listener \"public\": cannot bind {addr}: "
        )),
        "{err}"
    );
    assert!(err.contains("another process listens there"), "{err}");
    assert_eq!(
        listening_sockets(addr.port()),
        2,
        "only the first's sockets"
    );
    assert_eq!(
        one_per_connection(addr, 32).await,
        Ok(vec!["one".to_owned(); 32])
    );
}

fn config_auth_web(auth_pool: &str, auth: SocketAddr, web: SocketAddr) -> String {
    format!(
        r#"[[listener]]
name = "public"
bind = "127.0.0.1:0"

[[route]]
name = "auth"
match = {{ path_prefix = "/auth/" }}
pool = "{auth_pool}"

[[route]]
name = "web"
pool = "web"

[pool.auth]
backends = [{{ addr = "{auth}" }}]

[pool.web]
backends = [{{ addr = "{web}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_standards_refuse_a_breaking_reload_and_report_drift() {
    let auth = Backend::start("auth").await;
    let web = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir,
        "fulcrum.toml",
        &config_auth_web("auth", auth.addr, web.addr),
    );
    let standards = write_config(
        &dir,
        "standards.toml",
        r#"[[rule]]
name = "logins reach the auth pool"
request = "POST http://app.example.com/auth/login"
expect_pool = "auth"
"#,
    );
    let served = Served::start_with(&config, &["--standards".as_ref(), standards.as_os_str()]);
    let login = || {
        let uri: hyper::Uri = format!("http://{}/auth/login", served.addr)
            .parse()
            .unwrap();
        async move {
            use http_body_util::BodyExt;
            let resp = client().get(uri).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    assert_eq!(login().await, "auth");

    // Incident 1: the auth route pointed at the web pool. Refused on reload.
    std::fs::write(&config, config_auth_web("web", auth.addr, web.addr)).unwrap();
    served.signal("HUP");
    served.wait_log("reload refused", 1);
    served.wait_log("logins reach the auth pool", 1);
    assert_eq!(
        login().await,
        "auth",
        "the running config must keep serving"
    );

    // The team tightens its standards: the running config now breaks them.
    std::fs::write(&config, config_auth_web("auth", auth.addr, web.addr)).unwrap();
    std::fs::write(
        &standards,
        r#"[[rule]]
name = "auth is redundant"
pool = "auth"
min_backends = 2
"#,
    )
    .unwrap();
    served.signal("HUP");
    served.wait_log("DRIFT", 1);
    served.wait_log("auth is redundant", 1);
    assert_eq!(
        login().await,
        "auth",
        "drift is reported, not enforced by dropping traffic"
    );

    // A rule that reads the config's text (the running one has no
    // `version`) is judged on that text when the standards change too.
    std::fs::write(
        &standards,
        "[[rule]]\nname = \"changes are versioned\"\nrequire_version = true\n",
    )
    .unwrap();
    served.wait_log("changes are versioned", 1);
}

/// The certificate a TLS listener presents for `sni`, trusting `root`.
async fn presented_cert(addr: SocketAddr, sni: &str, root: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.to_vec().into()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake with the certificate the test trusts");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_renewed_certificates() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let issue = || rcgen::generate_simple_self_signed(vec!["app.example.com".to_owned()]).unwrap();
    let (old, new) = (issue(), issue());
    let install = |c: &rcgen::CertifiedKey<rcgen::KeyPair>| {
        std::fs::write(dir.path().join("cert.pem"), c.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), c.signing_key.serialize_pem()).unwrap();
    };
    install(&old);
    let config = write_config(
        &dir,
        "fulcrum.toml",
        &format!(
            r#"[[listener]]
name = "public"
bind = "127.0.0.1:0"
tls = {{ cert = "cert.pem", key = "key.pem" }}

[[route]]
name = "all"
pool = "web"

[pool.web]
backends = [{{ addr = "{}" }}]
"#,
            backend.addr
        ),
    );
    let served = Served::start(&config);
    let old_der = old.cert.der().to_vec();
    assert_eq!(
        presented_cert(served.addr, "app.example.com", &old_der).await,
        old_der
    );

    // Renewal: new files in place, then SIGHUP.
    install(&new);
    served.signal("HUP");
    served.wait_log("config reloaded", 1);
    let new_der = new.cert.der().to_vec();
    assert_eq!(
        presented_cert(served.addr, "app.example.com", &new_der).await,
        new_der
    );

    // A broken renewal (key of another certificate) is refused; the
    // renewed certificate keeps serving.
    std::fs::write(dir.path().join("key.pem"), old.signing_key.serialize_pem()).unwrap();
    served.signal("HUP");
    served.wait_log("reload refused", 1);
    served.wait_log("tls-key-mismatch", 1);
    assert_eq!(
        presented_cert(served.addr, "app.example.com", &new_der).await,
        new_der
    );
}

mod control;
mod safety;
