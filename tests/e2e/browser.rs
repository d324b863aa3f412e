//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromium-driver`, which
//! `scripts/services.sh` installs), for the web console's tests.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

pub(crate) struct Browser {
    pub(crate) client: Client,
    driver: Child,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Where test screenshots go: `FLEET_CONSOLE_SCREENSHOTS=docs` refreshes the README's pictures.
fn screenshot_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("FLEET_CONSOLE_SCREENSHOTS").map(std::path::PathBuf::from)
}

impl Browser {
    /// Starts chromedriver on a free port and a browser session of `width` × `height` pixels.
    pub(crate) async fn start(width: u32, height: u32) -> Browser {
        let bin = std::env::var("FLEET_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let port = free_port();
        let driver = Command::new(&bin)
            .arg(format!("--port={port}"))
            // its own process group, so that a failing test still takes the browser down with it
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}): scripts/services.sh installs chromium and chromium-driver")
            });
        let mut options = json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"), "--hide-scrollbars",
        ]});
        // A headless window is at least 500 px wide: a phone's width needs device emulation.
        if width < 500 {
            options["mobileEmulation"] = json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 1}});
        }
        if let Ok(binary) = std::env::var("FLEET_TEST_CHROMIUM") {
            options["binary"] = json!(binary);
        }
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        // chromedriver listens a moment after it starts; a cold Chromium takes a while on 2 cores
        let client = loop {
            match ClientBuilder::new(connector.clone()).capabilities(caps.clone()).connect(&url).await {
                Ok(client) => break client,
                Err(_) if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("no WebDriver session from {bin}: {e}"),
            }
        };
        Browser { client, driver }
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script `{script}`: {e}"))
    }

    /// Polls `script` until it returns something truthy (and returns that), or fails after 60 s
    /// (`limit` when given) naming `what` and showing the page's alert and text.
    pub(crate) async fn wait_until(&self, what: &str, script: &str) -> Value {
        self.wait_until_for(what, script, Duration::from_secs(60)).await
    }

    pub(crate) async fn wait_until_for(&self, what: &str, script: &str, limit: Duration) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(script).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false)) && value != json!(0) && value != json!("");
            if truthy {
                return value;
            }
            if started.elapsed() > limit {
                let page = self
                    .eval("return 'alert: ' + document.getElementById('alert').textContent + '\\npage: ' + document.querySelector('main').innerText.slice(0, 800)")
                    .await;
                panic!("waited {limit:?} for {what}; {}", page.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("find `{css}`: {e}"))
    }

    /// Types `text` into the field `css`, replacing what it held.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap_or_else(|e| panic!("clear `{css}`: {e}"));
        field.send_keys(text).await.unwrap_or_else(|e| panic!("type into `{css}`: {e}"));
    }

    pub(crate) async fn select(&self, css: &str, value: &str) {
        self.find(css).await.select_by_value(value).await.unwrap_or_else(|e| panic!("select {value} in `{css}`: {e}"));
    }

    pub(crate) async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_else(|e| panic!("text of `{css}`: {e}"))
    }

    pub(crate) async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css).await.attr(name).await.unwrap_or_else(|e| panic!("{name} of `{css}`: {e}"))
    }

    /// Saves the window as `<name>.png` when `FLEET_CONSOLE_SCREENSHOTS` names a folder.
    pub(crate) async fn screenshot(&self, name: &str) {
        let Some(dir) = screenshot_dir() else { return };
        let png = self.client.screenshot().await.unwrap_or_else(|e| panic!("screenshot: {e}"));
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    /// Ends the session (Chromium quits), then the driver.
    pub(crate) async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
