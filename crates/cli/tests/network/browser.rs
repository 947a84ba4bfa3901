//! Real headless Chromium, driven through chromedriver by the W3C WebDriver protocol (plain
//! JSON over HTTP, so no driver crate is needed). The test command installs Debian's
//! `chromium` and `chromium-driver`; without them the dashboard tests skip, unless
//! `FLOTILLA_REQUIRE_BROWSER=1` makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::harness::{Proc, eventually};

const CHROMEDRIVER: &str = "chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The key WebDriver names an element by.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    http: reqwest::Client,
    session: String,
    _driver: Proc,
}

/// Where screenshots go: kept after the run as test artifacts.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// A fresh browser; none when Chromium or its driver is missing (and not required).
    pub async fn start() -> Option<Browser> {
        Browser::start_with(&[]).await
    }

    /// [`Browser::start`] with more Chromium flags.
    pub async fn start_with(extra_args: &[&str]) -> Option<Browser> {
        let present = Path::new(CHROMIUM).exists()
            && Command::new(CHROMEDRIVER).arg("--version").output().is_ok();
        if !present {
            assert!(
                std::env::var("FLOTILLA_REQUIRE_BROWSER").as_deref() != Ok("1"),
                "FLOTILLA_REQUIRE_BROWSER=1 but chromium or chromedriver is missing"
            );
            eprintln!("skipped: chromium and chromium-driver are not installed");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Proc { child };
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = eventually(Duration::from_secs(20), || async {
            let status: Value = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;
        assert!(ready.is_some(), "chromedriver starts");
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ];
        args.extend_from_slice(extra_args);
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // Finding an element waits for it a while: a click's page may still be loading.
            "timeouts": {"implicit": 5000, "pageLoad": 30000},
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {created}"))
            .to_owned();
        Some(Browser {
            http,
            session: format!("{base}/session/{session}"),
            _driver: driver,
        })
    }

    /// One command; the WebDriver error as `Err` (a stale element, say).
    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        match answer["value"].get("error") {
            Some(_) => Err(answer),
            None => Ok(answer["value"].clone()),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|error| panic!("WebDriver {path}: {error}"))
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn url(&self) -> String {
        let url = self.call(reqwest::Method::GET, "/url", None).await;
        url.as_str().unwrap().to_owned()
    }

    /// Waits until the address ends with `suffix` (a click's navigation is done).
    pub async fn wait_url(&self, suffix: &str) {
        let reached = eventually(Duration::from_secs(10), || async {
            self.url().await.ends_with(suffix).then_some(())
        })
        .await;
        assert!(
            reached.is_some(),
            "the page reaches {suffix}: {}",
            self.url().await
        );
    }

    /// The element's text, if it is there and not replaced meanwhile.
    async fn try_text(&self, css: &str) -> Option<String> {
        let query = json!({"using": "css selector", "value": css});
        let found = self
            .try_call(reqwest::Method::POST, "/element", Some(query))
            .await
            .ok()?;
        let id = found[ELEMENT_KEY].as_str()?.to_owned();
        let text = self
            .try_call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .ok()?;
        text.as_str().map(str::to_owned)
    }

    /// Waits until the element's text is `expected` (a form's page has reloaded).
    pub async fn wait_text(&self, css: &str, expected: &str) {
        let shown = eventually(Duration::from_secs(10), || async {
            (self.try_text(css).await.as_deref() == Some(expected)).then_some(())
        })
        .await;
        assert!(
            shown.is_some(),
            "{css} shows {expected}: {}",
            self.text(css).await
        );
    }

    pub async fn source(&self) -> String {
        let source = self.call(reqwest::Method::GET, "/source", None).await;
        source.as_str().unwrap().to_owned()
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found[ELEMENT_KEY].as_str().unwrap().to_owned()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        let text = self
            .call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await;
        text.as_str().unwrap().to_owned()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn script(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Resizes the window (the page reflows to it).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Writes a PNG of the viewport to the artifacts directory.
    pub async fn screenshot(&self, name: &str) {
        let encoded = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(artifacts_dir().join(format!("{name}.png")), png).unwrap();
    }

    /// A cookie's value, HttpOnly ones included.
    pub async fn cookie(&self, name: &str) -> String {
        let cookie = self.cookie_object(name).await;
        cookie["value"].as_str().unwrap().to_owned()
    }

    /// A cookie as WebDriver describes it (`value`, `secure`, `httpOnly`, `sameSite`...).
    pub async fn cookie_object(&self, name: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/cookie/{name}"), None)
            .await
    }

    /// The console's errors since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Ends the session (and its Chromium).
    pub async fn quit(self) {
        let _ = self.http.delete(&self.session).send().await;
    }
}
