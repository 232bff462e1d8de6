//! The web UI in a real browser: Debian's headless Chromium driven over WebDriver
//! (`chromedriver`, which `.ci/run` installs) with fantoccini, against the real gateway and
//! real functions. Every wait polls the page with a deadline.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use http::Request;
use http_body_util::Full;

use crate::harness::{DEADLINE, Gateway, free_port, get, post, send};

/// A chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).is_file())
            .expect("chromedriver is needed (Debian packages chromium and chromium-driver; .ci/run installs them)");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let end = Instant::now() + DEADLINE;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < end, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the element at `css` exists and its text satisfies `check`; returns the text.
async fn wait_text(b: &Client, css: &str, check: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + DEADLINE;
    let mut last = String::new();
    loop {
        if let Ok(el) = b.find(Locator::Css(css)).await
            && let Ok(text) = el.text().await
        {
            if check(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {css}; last text {last:?}; page:\n{}",
            b.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn click(b: &Client, css: &str) {
    wait_text(b, css, |_| true).await;
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn fill(b: &Client, css: &str, text: &str) {
    wait_text(b, css, |_| true).await;
    let el = b.find(Locator::Css(css)).await.unwrap();
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

/// Accepts the confirmation dialog a click opened.
async fn confirm(b: &Client) {
    let end = Instant::now() + DEADLINE;
    while b.accept_alert().await.is_err() {
        assert!(Instant::now() < end, "no confirmation dialog");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stack(dir: &std::path::Path) -> std::path::PathBuf {
    let repo = env!("CARGO_MANIFEST_DIR");
    let runs = dir.join("runs");
    let file = dir.join("stack.yml");
    std::fs::write(
        &file,
        format!(
            "functions:\n  echo:\n    handler: {repo}/examples/echo\n    fprocess: sh handler.sh\n  markup:\n    fprocess: \"echo '<img src=x onerror=window.__pwned=1><b>bold</b>'\"\n    environment:\n      combine_output: \"false\"\n  fails:\n    fprocess: \"sh -c 'echo run >> {}; exit 1'\"\n  nightly:\n    fprocess: cat\n    annotations:\n      topic: cron-function\n      schedule: \"CRON_TZ=Europe/Paris 0 3 * * *\"\n",
            runs.display()
        ),
    )
    .unwrap();
    file
}

#[tokio::test]
async fn the_ui_lists_deploys_invokes_scales_redrives_and_deletes_in_a_browser() {
    let data = tempfile::tempdir().unwrap();
    let file = stack(data.path());
    let gw = Gateway::start(
        data.path(),
        &[
            "-f",
            file.to_str().unwrap(),
            "--max-retry-attempts",
            "1",
            "--autoscale",
            "false",
        ],
        &[],
    )
    .await;
    let base = format!("http://{}", gw.addr);
    let driver = Driver::start().await;
    let b = driver.browser().await;

    // `/` sends a browser to the UI; the list shows the stack's functions with ready replicas.
    b.goto(&format!("{base}/")).await.unwrap();
    assert!(b.current_url().await.unwrap().as_str().ends_with("/ui/"));
    wait_text(&b, "#functions-table tr[data-name=echo] .replicas", |t| {
        t == "1/1"
    })
    .await;
    wait_text(
        &b,
        "#functions-table tr[data-name=echo] [data-status]",
        |t| t == "Ready",
    )
    .await;

    // Deploy from the form: the function appears and answers.
    fill(&b, "#deploy-name", "fromui").await;
    fill(&b, "#deploy-process", "cat").await;
    fill(&b, "#deploy-labels", "team=ui").await;
    click(&b, "#deploy-submit").await;
    wait_text(
        &b,
        "#functions-table tr[data-name=fromui] [data-status]",
        |t| t == "Ready",
    )
    .await;
    let r = post(gw.addr, "/function/fromui", "ping").await;
    assert_eq!((r.status(), r.text().as_str()), (200, "ping"));
    // A deployment the API refuses shows its message inline.
    fill(&b, "#deploy-name", "Bad_Name").await;
    click(&b, "#deploy-submit").await;
    wait_text(&b, "#deploy-error", |t| t.contains("Bad_Name")).await;

    // Invoke synchronously from the function's page.
    click(&b, "#functions-table tr[data-name=fromui] a.fn-link").await;
    fill(&b, "#invoke-body-input", "hello ui").await;
    click(&b, "#invoke-submit").await;
    wait_text(&b, "#invoke-status", |t| t == "200").await;
    wait_text(&b, "#invoke-body", |t| t == "hello ui").await;

    // Asynchronously: the call shows up and reaches succeeded on its page.
    fill(&b, "#invoke-body-input", "later").await;
    click(&b, "#invoke-async").await;
    click(&b, "#invoke-submit").await;
    wait_text(&b, "#invoke-status", |t| t == "202").await;
    click(&b, "#invoke-call").await;
    wait_text(&b, "#call-state", |t| t == "succeeded").await;
    wait_text(&b, "#call-result", |t| t == "later").await;
    b.goto(&format!("{base}/ui/#/calls")).await.unwrap();
    wait_text(&b, "#calls-table", |t| t.contains("succeeded")).await;

    // Scale from the UI.
    b.goto(&format!("{base}/ui/#/function/openfaas-fn/fromui"))
        .await
        .unwrap();
    fill(&b, "#scale-replicas", "2").await;
    click(&b, "#scale-submit").await;
    wait_text(&b, "#detail-replicas", |t| t == "2/2").await;

    // Markup a function answers is shown as text, never run.
    b.goto(&format!("{base}/ui/#/function/openfaas-fn/markup"))
        .await
        .unwrap();
    click(&b, "#invoke-submit").await;
    wait_text(&b, "#invoke-body", |t| t.contains("<img src=x onerror=")).await;
    let injected = b
        .execute(
            "return [window.__pwned === undefined, document.querySelectorAll('#invoke-result img, #invoke-body b').length]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, serde_json::json!([true, 0]));

    // A function that always fails ends in the dead letters; redrive from the UI runs it again.
    let req = Request::post("/async-function/fails")
        .body(Full::new(bytes::Bytes::from("x")))
        .unwrap();
    assert_eq!(send(gw.addr, req).await.status(), 202);
    b.goto(&format!("{base}/ui/#/dead-letters")).await.unwrap();
    wait_text(&b, "#dead-table", |t| t.contains("fails")).await;
    let runs = data.path().join("runs");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    click(&b, "#dead-table button.redrive").await;
    confirm(&b).await;
    let end = Instant::now() + DEADLINE;
    while std::fs::read_to_string(&runs).unwrap().lines().count() < 2 {
        assert!(Instant::now() < end, "the redriven call never ran again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_text(&b, "#dead-table", |t| t.contains("fails")).await;

    // The queue page shows the dead letter.
    b.goto(&format!("{base}/ui/#/queue")).await.unwrap();
    wait_text(&b, "#stat-dead", |t| t == "1").await;

    // The triggers page shows the schedule and its next firing.
    b.goto(&format!("{base}/ui/#/triggers")).await.unwrap();
    wait_text(&b, "#triggers-table", |t| {
        t.contains("nightly")
            && t.contains("CRON_TZ=Europe/Paris 0 3 * * *")
            && t.contains("none yet")
    })
    .await;

    // Delete with a confirmation.
    b.goto(&format!("{base}/ui/#/function/openfaas-fn/fromui"))
        .await
        .unwrap();
    click(&b, "#delete").await;
    confirm(&b).await;
    wait_text(&b, "#functions-table", |t| {
        !t.contains("fromui") && t.contains("echo")
    })
    .await;
    assert_eq!(post(gw.addr, "/function/fromui", "x").await.status(), 404);

    // Readable on a phone-sized screen: nothing wider than the viewport.
    b.set_window_size(375, 800).await.unwrap();
    b.goto(&format!("{base}/ui/")).await.unwrap();
    wait_text(&b, "#functions-table", |t| t.contains("echo")).await;
    let overflow = b
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, serde_json::json!(true));
    b.close().await.unwrap();
}

#[tokio::test]
async fn cross_site_writes_are_refused_and_the_ui_needs_credentials() {
    let data = tempfile::tempdir().unwrap();
    let secrets = data.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("basic-auth-user"), "admin\n").unwrap();
    std::fs::write(secrets.join("basic-auth-password"), "pa55word\n").unwrap();
    let file = stack(data.path());
    let gw = Gateway::start(
        data.path(),
        &[
            "-f",
            file.to_str().unwrap(),
            "--basic-auth",
            "--secret-mount-path",
            secrets.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "admin:pa55word")
    );

    // Without credentials: 401, for the page and its API.
    assert_eq!(get(gw.addr, "/ui/").await.status(), 401);
    // With credentials but from another site's page: refused.
    let forged = Request::post("/system/functions")
        .header("authorization", &auth)
        .header("origin", "http://evil.example")
        .body(Full::new(bytes::Bytes::from(
            r#"{"service":"evil","envProcess":"cat"}"#,
        )))
        .unwrap();
    let r = send(gw.addr, forged).await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let forged = Request::post("/system/async/dead-letters/redrive")
        .header("authorization", &auth)
        .header("sec-fetch-site", "cross-site")
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(send(gw.addr, forged).await.status(), 403);
    let list = Request::get("/system/functions")
        .header("authorization", &auth)
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    assert!(!send(gw.addr, list).await.text().contains("evil"));

    // In the browser: no page without credentials; with them, the UI works.
    let driver = Driver::start().await;
    let b = driver.browser().await;
    b.goto(&format!("http://{}/ui/", gw.addr)).await.unwrap();
    let source = b.source().await.unwrap();
    assert!(!source.contains("id=\"main\""), "{source}");
    b.goto(&format!("http://admin:pa55word@{}/ui/", gw.addr))
        .await
        .unwrap();
    wait_text(
        &b,
        "#functions-table tr[data-name=echo] [data-status]",
        |t| t == "Ready",
    )
    .await;
    b.close().await.unwrap();
}
