//! Headless Chromium driven over the Chrome DevTools Protocol (a websocket): open a page, run
//! JavaScript in it, take a screenshot. Just the few commands the browser tests use.

use std::path::PathBuf;
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DEADLINE;

/// Finds headless Chromium (`/usr/bin/chromium`, else `chromium` on the PATH).
pub fn chromium() -> Option<PathBuf> {
    let fixed = PathBuf::from("/usr/bin/chromium");
    if fixed.exists() {
        return Some(fixed);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("chromium"))
        .find(|p| p.exists())
}

/// The flags every headless run uses: no sandbox (root in CI), no network beyond the page.
pub const FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// One browser with one page.
pub struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium with a page of `width` x `height` CSS pixels.
    pub async fn start(chromium: &std::path::Path, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(chromium)
            .args(FLAGS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // Chromium says where its DevTools websocket is on stderr.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
            panic!("chromium exited before listening");
        })
        .await
        .expect("chromium listens in time");
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("devtools websocket");
        let mut b = Browser {
            _child: child,
            _profile: profile,
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// Sends one command (to the page once attached) and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.try_call(method, params)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to devtools");
        let answer = tokio::time::timeout(DEADLINE, async {
            loop {
                let m = self.ws.next().await.expect("devtools open").expect("frame");
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(&text).expect("devtools json");
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} in time"));
        match answer.get("error") {
            Some(e) => Err(e.to_string()),
            None => Ok(answer["result"].clone()),
        }
    }

    /// Evaluates `js` in the page (awaiting a promise), returning its value or the exception.
    pub async fn try_eval(&mut self, js: &str) -> Result<Value, String> {
        let r = self
            .try_call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.to_string()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    /// Evaluates `js`, failing the test on an exception.
    pub async fn eval(&mut self, js: &str) -> Value {
        let r = self.try_eval(js).await;
        r.unwrap_or_else(|e| panic!("{js}: {e}"))
    }

    /// Waits, with the deadline, until `condition` (a JavaScript expression) is truthy in the
    /// page; evaluation errors (a page being replaced) count as not yet.
    pub async fn wait_for(&mut self, condition: &str) -> Value {
        let start = Instant::now();
        loop {
            // The page itself waits up to a second for the condition (re-checked every 20 ms
            // by its own timer), so this loop asks rarely.
            let js = format!(
                "new Promise(ok => {{ const t0 = performance.now(); \
                 (function check() {{ let v = null; try {{ v = ({condition}); }} catch (e) {{}} \
                 if (v || performance.now() - t0 > 1000) ok(v || null); \
                 else setTimeout(check, 20); }})(); }})"
            );
            if let Ok(v) = self.try_eval(&js).await {
                if !v.is_null() && v != json!(false) {
                    return v;
                }
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the page never satisfied {condition}"
            );
        }
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(&format!(
            "location.href === {} && document.readyState === 'complete'",
            json!(url)
        ))
        .await;
    }

    /// A PNG of the whole page.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}
