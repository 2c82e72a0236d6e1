//! The dashboard in a real browser: Debian's headless Chromium, driven
//! through the DevTools protocol over its WebSocket, against `serve` with
//! real backends. Without the token the page shows the prompt and no
//! data; with it, the pools' live shares, a rollback button that rolls
//! back, and a forced bad change as the guard's incident, with its diff.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fulcrum_testkit::Backend;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Lb, TOKEN, config, get_from};

const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page may take to show what a check waits for: it polls
/// every second, and the event stream is immediate.
const PATIENCE: Duration = Duration::from_secs(15);

/// One headless Chromium with one page, attached over the DevTools
/// protocol. Killed when dropped.
struct Browser {
    child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The page's session on the browser's one socket.
    session: String,
    next: u64,
    /// Every URL the page asked for.
    requests: Vec<String>,
    /// Uncaught exceptions and content-security-policy violations.
    problems: Vec<String>,
    /// Removed after the browser is killed (fields drop after `drop`).
    _profile: tempfile::TempDir,
}

/// The test command installs what its tests need: Debian's Chromium,
/// when it is missing (as root, as CI and a fresh machine run it).
fn install_chromium() {
    if Path::new(CHROMIUM).exists() {
        return;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(
        apt(&["update"]) && apt(&["install", "-y", "chromium"]) && Path::new(CHROMIUM).exists(),
        "the dashboard test needs Debian's Chromium at {CHROMIUM} and could not install it: run `apt-get install -y chromium` as root"
    );
}

impl Browser {
    async fn launch() -> Browser {
        install_chromium();
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(profile.path().join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        // Chromium writes its port and the browser's WebSocket path here
        // once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = loop {
            let text = std::fs::read_to_string(&port_file).unwrap_or_default();
            if let [port, path] = text.lines().collect::<Vec<_>>()[..] {
                break format!("ws://127.0.0.1:{port}{path}");
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(profile.path().join("chromium.log"));
                panic!("Chromium did not start within 30 s: {log:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Chromium at {url}: {e}"));
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next: 0,
            requests: Vec::new(),
            problems: Vec::new(),
            _profile: profile,
        };
        let target = b
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page", "Runtime", "Network", "Log"] {
            b.call(&format!("{domain}.enable"), json!({})).await;
        }
        b
    }

    /// One DevTools command; the events that arrive meanwhile are noted.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("Chromium did not answer {method} within 20 s"))
                .expect("Chromium closed the DevTools socket")
                .unwrap();
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            self.note(&v);
        }
    }

    fn note(&mut self, event: &Value) {
        let p = &event["params"];
        match event["method"].as_str() {
            Some("Network.requestWillBeSent") => {
                self.requests
                    .push(p["request"]["url"].as_str().unwrap_or("").to_owned());
            }
            Some("Runtime.exceptionThrown") => self.problems.push(format!(
                "exception: {} {}",
                p["exceptionDetails"]["text"], p["exceptionDetails"]["exception"]["description"]
            )),
            Some("Log.entryAdded") if p["entry"]["source"] == "security" => {
                self.problems
                    .push(format!("security: {}", p["entry"]["text"]));
            }
            _ => {}
        }
    }

    /// The value of `js` in the page (promises awaited).
    async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            r["exceptionDetails"].is_null(),
            "{js}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Evaluate `js` until it is neither null nor false, for `PATIENCE`.
    async fn wait(&mut self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.eval(js).await;
            if !v.is_null() && v != false {
                return v;
            }
            if Instant::now() > deadline {
                let shown = self.eval("document.body.innerText").await;
                panic!("the page did not show {what} within {PATIENCE:?}; it shows:\n{shown}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn open(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(r["errorText"].is_null(), "{url}: {}", r["errorText"]);
        let loaded = format!("document.readyState === 'complete' && location.href === {url:?}");
        self.wait(&format!("{url} loaded"), &loaded).await;
    }

    /// Type `token` into the prompt and submit it.
    async fn sign_in(&mut self, token: &str) {
        let js = format!(
            "document.getElementById('token').value = {}; document.getElementById('login-form').requestSubmit(); true",
            json!(token)
        );
        self.eval(&js).await;
    }

    async fn click(&mut self, id: &str) {
        self.eval(&format!("document.getElementById('{id}').click(); true"))
            .await;
    }

    /// Close the browser and wait for it.
    async fn close(mut self) {
        let _ = self
            .ws
            .send(Message::text(
                json!({ "id": 0, "method": "Browser.close" }).to_string(),
            ))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of every part of the page that shows data: empty without the
/// token.
const SHOWN_DATA: &str = "['pools', 'routes', 'incidents', 'versions', 'timeline', 'serving', 'versions-now', 'guard'].map((id) => document.getElementById(id).textContent).join('')";

/// Each auth backend's observed share, once they add up to the whole.
const AUTH_SHARES: &str = "(() => { const rows = [...document.querySelectorAll('tr[data-pool=\"auth\"]')]; const shares = rows.map((r) => [r.dataset.backend, Number(r.dataset.observed)]); return rows.length > 0 && rows.every((r) => r.dataset.observed !== '') && Math.abs(shares.reduce((a, s) => a + s[1], 0) - 1) < 1e-6 ? shares : null; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_token_then_shows_shares_changes_and_rolls_back() {
    let a1 = Backend::start("auth-1").await;
    let a2 = Backend::start("auth-2").await;
    let web = Backend::start("web").await;
    let v1 = config(&[a1.addr, a2.addr], web.addr, "");
    let lb = Lb::start(&v1);
    let home = format!("http://{}/", lb.admin);
    let mut page = Browser::launch().await;

    // Without the token: the prompt, and not one datum.
    page.open(&home).await;
    page.wait(
        "the token prompt",
        "!document.getElementById('login').hidden && document.getElementById('dashboard').hidden",
    )
    .await;
    assert_eq!(page.eval(SHOWN_DATA).await, "");
    // The token's field has a name a screen reader can say.
    assert_eq!(
        page.eval("document.getElementById('token').labels[0]?.textContent")
            .await,
        "Token"
    );
    page.sign_in("not-the-token").await;
    let why = page
        .wait(
            "why the token was refused",
            "document.getElementById('login-error').textContent || null",
        )
        .await;
    assert!(
        why.as_str().unwrap().starts_with("403: wrong admin token"),
        "{why}"
    );
    assert_eq!(page.eval(SHOWN_DATA).await, "");
    let body = page.eval("document.body.textContent").await;
    assert!(
        !body.as_str().unwrap().contains(&a1.addr.to_string()),
        "{body}"
    );

    // With the token: what serves, and the shares of the traffic sent.
    page.sign_in(TOKEN).await;
    page.wait(
        "v1 serving",
        "document.getElementById('serving').dataset.version === '1'",
    )
    .await;
    // Steady login traffic from here on, for the shares and for the guard
    // to judge changes by; bounded.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (proxy, stop) = (lb.served.addr, stop.clone());
        async move {
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                assert_eq!(get_from(proxy, "/auth/login", None).await.0, 200);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let shares = page.wait("the auth backends' shares", AUTH_SHARES).await;
    let shares = shares.as_array().unwrap();
    let mut shown: Vec<&str> = shares.iter().map(|s| s[0].as_str().unwrap()).collect();
    shown.sort();
    let mut addrs = [a1.addr.to_string(), a2.addr.to_string()];
    addrs.sort();
    assert_eq!(shown, addrs, "{shares:?}");
    for s in shares {
        // Round robin over two: half each.
        assert!(s[1].as_f64().unwrap() > 0.3, "{shares:?}");
    }

    // The rollback button: after a change, v1 serves again.
    let v2 = v1.replace("interval = \"100ms\"", "interval = \"200ms\"");
    let (status, report) = lb
        .json("POST", "/config?author=alice&message=slower%20checks", &v2)
        .await;
    assert_eq!(status, 200, "{report}");
    page.wait(
        "v2 serving",
        "document.getElementById('serving').dataset.version === '2'",
    )
    .await;
    // The button says what it does; a baseline of 0 % is shown as one.
    page.wait(
        "the button naming v1",
        "document.getElementById('rollback-ask').textContent === 'Roll back to v1…'",
    )
    .await;
    page.wait(
        "the auth route's error rate beside its baseline",
        "document.querySelector('#routes [data-route=\"auth\"]')?.textContent.includes('0.0% (was 0.0%)') || null",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('live').textContent")
            .await,
        "live"
    );
    page.click("rollback-ask").await;
    let asked = page
        .wait(
            "the rollback's confirmation",
            "!document.getElementById('rollback-confirm').hidden && document.getElementById('rollback-what').textContent",
        )
        .await;
    assert!(
        asked.as_str().unwrap().contains("serve v1 again"),
        "{asked}"
    );
    page.click("rollback-yes").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, headers, text) = lb.call("GET", "/config", "", Some(TOKEN)).await;
        if headers["fulcrum-version"] == "1" {
            assert_eq!(text, v1, "the exact bytes of v1 serve again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback button did not roll back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.wait(
        "the rollback in the timeline",
        "document.querySelector('#timeline [data-kind=\"rolled_back\"]')?.textContent.includes('dashboard')",
    )
    .await;

    // The guard has seen v1 serve again, over enough requests (its
    // default `min_requests`) to judge the next change against.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, guard) = lb.json("GET", "/guard", "").await;
        assert_eq!(status, 200, "{guard}");
        let auth = guard["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "auth"));
        if guard["change"].is_null() && auth.is_some_and(|a| a["requests"].as_u64() >= Some(20)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guard did not settle: {guard}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad change forced through: logins go to the web pool (incident 1).
    let bad = v1.replacen(
        "pool = \"auth\"\n\n[[route]]",
        "pool = \"web\"\n\n[[route]]",
        1,
    );
    assert_ne!(bad, v1);
    let file = lb.file("bad.toml", &bad);
    lb.cli_ok(&[
        "apply",
        file.to_str().unwrap(),
        "--force",
        "-m",
        "logins to web",
    ]);
    let diff = "~ route auth pool: auth → web";
    let incident = page
        .wait(
            "the forced change as an incident",
            "[...document.querySelectorAll('#incidents [data-version=\"3\"]')].map((e) => e.textContent).find((t) => t.includes('→ web')) ?? null",
        )
        .await;
    assert!(incident.as_str().unwrap().contains(diff), "{incident}");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let applied = page
        .eval("document.querySelector('#timeline [data-kind=\"applied\"][data-version=\"3\"]')?.textContent")
        .await;
    assert!(applied.as_str().unwrap().contains(diff), "{applied}");
    let version = page
        .wait(
            "v3 among the versions",
            "document.querySelector('#versions [data-version=\"3\"]')?.textContent",
        )
        .await;
    assert!(version.as_str().unwrap().contains(diff), "{version}");
    assert!(
        version.as_str().unwrap().contains("logins to web"),
        "{version}"
    );

    // Any stored version can serve again, not only the parent: v2's own
    // button, confirmed, serves its exact bytes.
    page.wait(
        "v2's button",
        "(b => b ? (b.click(), true) : null)(document.querySelector('#versions [data-serve=\"2\"]'))",
    )
    .await;
    let asked = page
        .wait(
            "the confirmation for v2",
            "!document.getElementById('rollback-confirm').hidden && document.getElementById('rollback-what').textContent",
        )
        .await;
    assert!(
        asked.as_str().unwrap().contains("serve v2 again"),
        "{asked}"
    );
    page.click("rollback-yes").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (_, headers, text) = lb.call("GET", "/config", "", Some(TOKEN)).await;
        if headers["fulcrum-version"] == "2" {
            assert_eq!(text, v2, "the exact bytes of v2 serve again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2's button did not serve v2: {}",
            page.eval("document.getElementById('rollback-result').textContent")
                .await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    page.wait(
        "the rollback to v2 in the timeline",
        "[...document.querySelectorAll('#timeline [data-kind=\"rolled_back\"]')].some((e) => e.textContent.includes('to v2 by dashboard'))",
    )
    .await;

    // The page fetched nothing from anywhere else, and threw nothing.
    let elsewhere: Vec<&String> = page
        .requests
        .iter()
        .filter(|u| !u.starts_with(&home))
        .collect();
    assert!(elsewhere.is_empty(), "{elsewhere:?}");
    assert!(page.problems.is_empty(), "{:?}", page.problems);
    page.close().await;
}
