//! The admin page in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against an API server with a tenant of the test's own, running real code on
//! the cluster. Chromium and chromedriver are Debian's (hack/test-deps.sh installs them).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use testkit::rest::*;

const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a loopback port, and a headless Chromium session of it with a fresh
/// profile. Dropping it ends chromedriver and every browser process it started.
struct Browser {
    client: Client,
    _driver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        if !Path::new(CHROMIUM).exists() || which("chromedriver").is_none() {
            setup_script("hack/test-deps.sh");
        }
        let port = free_port();
        let mut cmd = Command::new(which("chromedriver").expect("chromedriver installed"));
        cmd.args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()]);
        let mut driver = Process::spawn("chromedriver", cmd);
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        driver
            .wait_ready(Duration::from_secs(20), || {
                let status = status.clone();
                async move {
                    reqwest::Client::builder()
                        .no_proxy()
                        .build()
                        .unwrap()
                        .get(&status)
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            })
            .await;
        let profile = tempfile::Builder::new()
            .prefix("e2e-chromium-")
            .tempdir()
            .unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}\n{}", driver.log_tail()));
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn text_of(&self, id: &str) -> String {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn which(program: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn the_admin_page_runs_code_shows_its_output_and_lists_the_run() {
    let key = Key::fresh("e2e-admin");
    let server = ApiServer::start(&Key::api_keys(&[&key]), &[]).await;
    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&format!("{}/admin", server.base)).await.unwrap();

    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&key.token)
        .await
        .unwrap();
    page.find(Locator::Id("language"))
        .await
        .unwrap()
        .select_by_value("node")
        .await
        .unwrap();
    let code = page.find(Locator::Id("code")).await.unwrap();
    code.clear().await.unwrap();
    code.send_keys("const who = 'the admin page';\nconsole.log(`hello from ${who}`);")
        .await
        .unwrap();
    page.find(Locator::Id("run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let finished = page
        .wait()
        .at_most(Duration::from_secs(90))
        .for_element(Locator::Css(
            "body[data-status='completed'], body[data-status='failed'], \
             body[data-status='timed_out'], body[data-status='error']",
        ))
        .await;
    let status = browser.text_of("status").await;
    assert!(
        finished.is_ok() && status == "completed",
        "status {status:?}, message {:?}, stderr {:?}",
        browser.text_of("message").await,
        browser.text_of("stderr").await
    );
    assert_eq!(
        browser.text_of("stdout").await.trim_end(),
        "hello from the admin page"
    );
    assert_eq!(browser.text_of("exit-code").await, "0");

    let run_id = browser.text_of("run-id").await;
    assert!(run_id.starts_with("run-"), "{run_id}");
    let row = page
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&format!("#runs tr[data-id='{run_id}']")))
        .await
        .expect("the run is in the recent-runs list");
    let row = row.text().await.unwrap();
    assert!(row.contains("node") && row.contains("completed"), "{row}");

    browser.client.clone().close().await.unwrap();
}
