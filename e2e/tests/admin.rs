//! The admin page in a real browser: headless Chromium driven through chromedriver
//! (WebDriver), against an API server with a tenant of the test's own, running real code on
//! the cluster. Chromium and chromedriver are Debian's (hack/test-deps.sh installs them).
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use codeinterp_crds::TENANT_LABEL;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use testkit::DeleteContainersOnDrop;
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

/// An API server with a tenant of its own, and a browser on its admin page with that
/// tenant's token entered.
async fn admin_page(label: &str) -> (ApiServer, Browser) {
    let key = Key::fresh(label);
    let server = ApiServer::start(&Key::api_keys(&[&key]), &[]).await;
    let browser = open_admin(&server, &key.token).await;
    (server, browser)
}

/// A browser on the server's admin page with this token entered.
async fn open_admin(server: &ApiServer, token: &str) -> Browser {
    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&format!("{}/admin", server.base)).await.unwrap();
    page.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    browser
}

#[tokio::test]
async fn the_admin_page_runs_code_shows_its_output_and_lists_the_run() {
    let (_server, browser) = admin_page("e2e-admin").await;
    let page = &browser.client;
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

/// What the page shows at one moment: stdout, the status it holds, and each image shown as
/// (alt, loaded, natural width).
async fn snapshot(page: &Client) -> (String, String, Vec<(String, bool, u64)>) {
    let v = page
        .execute(
            "return [document.getElementById('stdout').textContent, \
             document.body.dataset.status || '', \
             [...document.querySelectorAll('#artifacts img')].map(i => [i.alt, i.complete, i.naturalWidth])];",
            vec![],
        )
        .await
        .unwrap();
    let images = v[2]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i[0].as_str().unwrap().to_string(),
                i[1].as_bool().unwrap(),
                i[2].as_u64().unwrap(),
            )
        })
        .collect();
    (
        v[0].as_str().unwrap().to_string(),
        v[1].as_str().unwrap().to_string(),
        images,
    )
}

#[tokio::test]
async fn the_admin_page_shows_output_as_it_streams_and_plots_inline_but_no_fake_image() {
    let (_server, browser) = admin_page("e2e-admin-live").await;
    let page = &browser.client;
    // Six lines 400 ms apart, then a matplotlib PNG, an SVG, and a page named like an image.
    let program = "import time\n\
        import matplotlib\n\
        matplotlib.use('Agg')\n\
        import matplotlib.pyplot as plt\n\
        for i in range(6):\n    print('tick', i, flush=True)\n    time.sleep(0.4)\n\n\
        plt.plot([1, 2, 3], [1, 4, 9])\n\
        plt.savefig('outputs/plot.png')\n\
        open('outputs/shape.svg', 'w').write('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"40\" height=\"20\"><rect width=\"40\" height=\"20\" fill=\"red\"/></svg>')\n\
        open('outputs/fake.png', 'w').write('<html><script>document.title = \"pwned\"</script></html>')\n";
    let code = page.find(Locator::Id("code")).await.unwrap();
    code.clear().await.unwrap();
    code.send_keys(program).await.unwrap();
    page.find(Locator::Id("run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    // Watch the page: some ticks must show while the run is still running.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut live = None;
    let (stdout, status, mut images) = loop {
        let (stdout, status, images) = snapshot(page).await;
        if status == "running" && stdout.contains("tick 0") && !stdout.contains("tick 5") {
            live.get_or_insert(stdout.clone());
        }
        if ["completed", "failed", "timed_out", "error"].contains(&status.as_str())
            || std::time::Instant::now() > deadline
        {
            break (stdout, status, images);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status,
        "completed",
        "message {:?}, stderr {:?}",
        browser.text_of("message").await,
        browser.text_of("stderr").await
    );
    let ticks: String = (0..6).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(stdout, ticks);
    let live = live.expect("the page showed the output only after the run had ended");
    eprintln!("shown while running: {live:?}");

    // Images load (the server sniffed them as images); the fake is shown by name but its
    // bytes are served as a download, so the browser cannot render it, and ran nothing.
    for _ in 0..100 {
        if images.len() == 3 && images.iter().all(|(_, complete, _)| *complete) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        images = snapshot(page).await.2;
    }
    let width = |name: &str| {
        images
            .iter()
            .find(|(alt, _, _)| alt == name)
            .unwrap_or_else(|| panic!("no image {name} among {images:?}"))
            .2
    };
    assert!(width("plot.png") > 100, "{images:?}");
    assert_eq!(width("shape.svg"), 40, "{images:?}");
    assert_eq!(width("fake.png"), 0, "{images:?}");
    assert_ne!(page.title().await.unwrap(), "pwned");

    browser.client.clone().close().await.unwrap();
}

/// The notebook's cells as the page shows them: (run id, code, stdout, each image as
/// (alt, loaded, natural width)).
type Cell = (String, String, String, Vec<(String, bool, u64)>);

async fn cells(page: &Client) -> Vec<Cell> {
    let v = page
        .execute(
            "return [...document.querySelectorAll('#notebook .cell')].map(c => [\
               c.dataset.id, \
               c.querySelector('.cell-code').textContent, \
               (c.querySelector('.cell-stdout') || {textContent: ''}).textContent, \
               [...c.querySelectorAll('img')].map(i => [i.alt, i.complete, i.naturalWidth])]);",
            vec![],
        )
        .await
        .unwrap();
    let text = |v: &Value| v.as_str().unwrap().to_string();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let images = c[3]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| (text(&i[0]), i[1].as_bool().unwrap(), i[2].as_u64().unwrap()))
                .collect();
            (text(&c[0]), text(&c[1]), text(&c[2]), images)
        })
        .collect()
}

/// Waits (up to `within`) until the notebook's cells satisfy `done`; the last ones seen.
async fn cells_until(page: &Client, within: Duration, done: impl Fn(&[Cell]) -> bool) -> Vec<Cell> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let seen = cells(page).await;
        if done(&seen) || std::time::Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_admin_page_shows_a_containers_runs_in_order_as_a_notebook_and_runs_a_cell_in_it() {
    let (mine, theirs) = (Key::fresh("e2e-admin-nb-a"), Key::fresh("e2e-admin-nb-b"));
    let server = ApiServer::start(&Key::api_keys(&[&mine, &theirs]), &[]).await;
    let _clean = DeleteContainersOnDrop(format!("{TENANT_LABEL}={}", mine.tenant));
    let api = server.api(&mine.token);
    let container = api
        .post("/v1/containers", &json!({"name": "notebook"}))
        .await
        .expect(200);
    let id = container["id"].as_str().unwrap().to_string();
    let plot = "x += 1; print(x)\n\
        import matplotlib\n\
        matplotlib.use('Agg')\n\
        import matplotlib.pyplot as plt\n\
        plt.plot([1, 2, 3], [1, 4, 9])\n\
        plt.savefig('plot.png')\n";
    let mut made = vec![];
    for code in ["x = 41", plot] {
        let run = api
            .create_run(json!({"language": "python", "code": code, "container": id,
                "limits": {"timeout_ms": 30000}}))
            .await;
        assert_eq!(run["status"], "completed", "{run}");
        made.push(run["id"].as_str().unwrap().to_string());
    }

    // Through the API: oldest first, with their code; another tenant is told no such container.
    let listed = api
        .get(&format!("/v1/containers/{id}/runs"))
        .await
        .expect(200);
    let ids: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, made, "{listed}");
    assert_eq!(listed["data"][1]["stdout"], "42\n", "{listed}");
    assert_eq!(listed["data"][0]["code"], "x = 41", "{listed}");
    let e = server
        .api(&theirs.token)
        .get(&format!("/v1/containers/{id}/runs"))
        .await
        .openai_error(404);
    assert_eq!(e["param"], "container_id", "{e}");

    // On the page: the container is listed; opened, its two runs are cells in order, the
    // second with 42 and its plot shown.
    let browser = open_admin(&server, &mine.token).await;
    let page = &browser.client;
    page.find(Locator::Id("refresh-containers"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let link = format!("#containers tr[data-id='{id}'] a");
    page.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(&link))
        .await
        .expect("the container is listed");
    let row = page
        .find(Locator::Css(&format!("#containers tr[data-id='{id}']")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains("notebook") && row.contains("running"), "{row}");
    // The list may be drawn again between finding the link and clicking it (a stale
    // element): the link is found anew for each try.
    let mut clicked = false;
    for _ in 0..20 {
        if let Ok(found) = page.find(Locator::Css(&link)).await
            && found.click().await.is_ok()
        {
            clicked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        clicked,
        "the container's notebook link could not be clicked"
    );
    let shown = cells_until(page, Duration::from_secs(20), |cells| {
        cells.len() == 2 && cells[1].3.iter().all(|(_, complete, _)| *complete)
    })
    .await;
    let order: Vec<&str> = shown.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(order, made, "{shown:?}");
    assert_eq!(shown[0].1, "x = 41", "{shown:?}");
    assert_eq!(shown[1].2.trim_end(), "42", "{shown:?}");
    let images = &shown[1].3;
    assert!(
        images
            .iter()
            .any(|(alt, _, width)| alt == "plot.png" && *width > 0),
        "{images:?}"
    );

    // A new cell runs in the same container, with its state, and is appended.
    page.find(Locator::Id("cell-code"))
        .await
        .unwrap()
        .send_keys("print(x * 2)")
        .await
        .unwrap();
    page.find(Locator::Id("cell-run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = cells_until(page, Duration::from_secs(60), |cells| cells.len() == 3).await;
    assert_eq!(
        shown.get(2).map(|c| (c.1.as_str(), c.2.trim_end())),
        Some(("print(x * 2)", "84")),
        "message {:?}, cells {shown:?}",
        browser.text_of("message").await
    );

    browser.client.clone().close().await.unwrap();
}
