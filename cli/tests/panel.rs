//! The web panel in a real browser: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, which `scripts/test` installs) driven over
//! WebDriver, against a real `runtime run` on 127.0.0.1. Screenshots of
//! each page are written to `CARGO_TARGET_TMPDIR/panel-screenshots/`.

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Child;

const ANN: &str = "token-of-ann-0123";
const BOB: &str = "token-of-bob-0123";

/// The node's config: two users, and flows to launch, answer, kill, and
/// one whose results hold markup that must not run.
fn config(dir: &Path) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let xss = r##"printf '%s\n' '{"kind":"result","payload":"<script>window.pwned=1</script><img src=x onerror=\"window.pwned=5\">"}' >&3; printf '%s\n' '{"kind":"result","payload":{"Markdown":{"body":"# Report\n\n<img src=x onerror=\"window.pwned=2\"> **bold** [link](javascript:window.pwned=6)"}}}' >&3; printf '%s\n' '{"kind":"result","payload":{"HTML":{"body":"<i>html</i><script>window.pwned=3</script><img src=x onerror=window.pwned=4>"}}}' >&3"##;
    write_config(
        dir,
        &format!(
            r#"
[[auth.tokens]]
token = "{ANN}"
user = "ann"
[[auth.tokens]]
token = "{BOB}"
user = "bob"

[flows.hello]
description = "Greets someone"
command = ["sh", "-c", "read -r x; echo \"hello $x\"; echo '{{\"kind\":\"result\",\"payload\":\"greeted\"}}' >&3"]
[[flows.hello.form]]
type = "text"
name = "name"
label = "Name"
required = true

[flows.approve]
description = "Asks a person to approve"
command = ["python3", "{approve}"]
env = {{ PYTHONPATH = "{sdk}" }}

[flows.sleepy]
command = ["sleep", "300"]

[flows.xss]
command = ["sh", "-c", {xss}]
"#,
            approve = repo.join("flows/approve.py").display(),
            sdk = repo.join("sdk/python").display(),
            xss = toml_string(xss),
        ),
    )
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// A ChromeDriver on a free port, in a process group of its own: when
/// dropped (also when a test fails before closing its session), the whole
/// group is killed, its browsers with it.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.child.start_kill();
    }
}

async fn driver() -> Driver {
    let port = free_port();
    let child = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver runs (scripts/test installs chromium-driver)");
    let url = format!("http://127.0.0.1:{port}");
    let status = format!("{url}/status");
    until(
        "chromedriver answers",
        DEADLINE,
        Duration::from_millis(50),
        async || {
            let ready = reqwest::get(&status)
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()?;
            (ready["value"]["ready"] == true).then_some(())
        },
    )
    .await;
    Driver { child, url }
}

/// A headless Chromium session.
async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Where the screenshots go.
fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("panel-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("a screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// The first element `css` finds, once there is one.
async fn find(browser: &Client, css: &str) -> fantoccini::elements::Element {
    match browser
        .wait()
        .at_most(DEADLINE)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(found) => found,
        Err(e) => {
            let page = browser
                .execute(
                    "return location.href + '\\n' + document.body.innerText;",
                    vec![],
                )
                .await;
            panic!("no {css}: {e}; the page: {page:?}")
        }
    }
}

/// Waits until `script` (a JavaScript expression) is true in the page.
async fn until_js(browser: &Client, what: &str, script: &str) {
    let start = Instant::now();
    loop {
        let value = browser
            .execute(&format!("return !!({script});"), vec![])
            .await
            .unwrap_or(Value::Bool(false));
        if value == Value::Bool(true) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: ({script}) stayed false"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn log_in(browser: &Client, base: &str, token: &str) {
    browser.goto(&format!("{base}/#/login")).await.unwrap();
    let field = find(browser, "#token").await;
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    find(browser, "#login button").await.click().await.unwrap();
    find(browser, ".card.flow").await;
}

/// The status the execution page shows, once it is `status`.
async fn status_is(browser: &Client, status: &str) {
    until_js(
        browser,
        "the status",
        &format!("document.querySelector('#status [data-status=\"{status}\"]')"),
    )
    .await;
}

/// The fid of the execution page shown.
async fn shown_fid(browser: &Client) -> String {
    until_js(
        browser,
        "an execution page",
        "location.hash.startsWith('#/executions/')",
    )
    .await;
    let url = browser.current_url().await.unwrap();
    url.fragment()
        .unwrap()
        .trim_start_matches("/executions/")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_launches_watches_answers_and_kills_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, base) = start(&config(dir.path()), dir.path()).await;
    let driver = driver().await;
    let b = browser(&driver).await;

    // Logged out: sent to the login page.
    b.goto(&format!("{base}/#/executions")).await.unwrap();
    find(&b, "#login").await;
    until_js(&b, "the login page", "location.hash === '#/login'").await;
    screenshot(&b, "login").await;
    // A wrong token is refused, a right one logs in.
    find(&b, "#token")
        .await
        .send_keys("nope-nope-nope")
        .await
        .unwrap();
    find(&b, "#login button").await.click().await.unwrap();
    find(&b, "#login .notice").await;
    log_in(&b, &base, ANN).await;
    screenshot(&b, "flows").await;

    // hello, from its form: its events arrive without a reload.
    b.goto(&format!("{base}/#/flows/hello")).await.unwrap();
    find(&b, "#f-name").await.send_keys("Ann").await.unwrap();
    screenshot(&b, "flow-form").await;
    find(&b, "#launch button").await.click().await.unwrap();
    let hello = shown_fid(&b).await;
    status_is(&b, "finished").await;
    until_js(
        &b,
        "hello's line",
        "document.getElementById('log').textContent.includes('hello {\"name\":\"Ann\"}')",
    )
    .await;
    until_js(
        &b,
        "hello's result",
        "document.getElementById('results').textContent.includes('greeted')",
    )
    .await;
    screenshot(&b, "execution-finished").await;
    let href = find(&b, "#download")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(href, format!("/executions/{hello}/events.jsonl"));

    // approve: its lock answered in the page.
    b.goto(&format!("{base}/#/flows/approve")).await.unwrap();
    let inputs = find(&b, "#inputs").await;
    inputs.clear().await.unwrap();
    inputs.send_keys(r#"{"item": "the car"}"#).await.unwrap();
    find(&b, "#launch button").await.click().await.unwrap();
    shown_fid(&b).await;
    let answer = find(&b, ".lock-form input[name=answer]").await;
    status_is(&b, "awaiting").await;
    screenshot(&b, "execution-lock").await;
    answer.send_keys("yes").await.unwrap();
    find(&b, ".lock-form button").await.click().await.unwrap();
    status_is(&b, "finished").await;
    until_js(
        &b,
        "the answer",
        "document.getElementById('log').textContent.includes('the answer was yes')",
    )
    .await;
    until_js(
        &b,
        "the lock form gone",
        "!document.querySelector('.lock-form')",
    )
    .await;

    // A long run, killed from its page.
    b.goto(&format!("{base}/#/flows/sleepy")).await.unwrap();
    find(&b, "#launch button").await.click().await.unwrap();
    shown_fid(&b).await;
    status_is(&b, "running").await;
    find(&b, "#kill").await.click().await.unwrap();
    status_is(&b, "killed").await;

    // Markup in results is shown as text or sanitized: nothing runs.
    b.goto(&format!("{base}/#/flows/xss")).await.unwrap();
    find(&b, "#launch button").await.click().await.unwrap();
    shown_fid(&b).await;
    status_is(&b, "finished").await;
    until_js(
        &b,
        "the markdown",
        "document.querySelector('#results h1')?.textContent === 'Report'",
    )
    .await;
    until_js(
        &b,
        "the html",
        "document.querySelector('#results i')?.textContent === 'html'",
    )
    .await;
    until_js(&b, "the text", "document.getElementById('results').textContent.includes('<script>window.pwned=1</script>')").await;
    // Images that failed to load had their chance to fire onerror.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pwned = b.execute("return window.pwned === undefined && !document.querySelector('#results script, #results [onerror], #results a[href^=\"javascript:\"]');", vec![]).await.unwrap();
    assert_eq!(
        pwned,
        Value::Bool(true),
        "a script in a result ran or was kept"
    );
    screenshot(&b, "execution-xss").await;

    // The list: filtered by status, updating live.
    b.goto(&format!("{base}/#/executions?status=finished"))
        .await
        .unwrap();
    until_js(
        &b,
        "three finished",
        "document.querySelectorAll('#executions tbody tr[data-fid]').length === 3",
    )
    .await;
    let launched = post_with(
        &base,
        ANN,
        "/flows/hello/executions",
        json!({"inputs": {"name": "live"}}),
    )
    .await;
    let live = launched["fid"].as_str().unwrap();
    until_js(
        &b,
        "a new one without a reload",
        &format!("document.querySelector('tr[data-fid=\"{live}\"]')"),
    )
    .await;
    screenshot(&b, "executions").await;
    // On a phone.
    b.set_window_size(390, 844).await.unwrap();
    b.goto(&format!("{base}/#/executions/{hello}"))
        .await
        .unwrap();
    status_is(&b, "finished").await;
    screenshot(&b, "phone-execution").await;
    b.set_window_size(1280, 1000).await.unwrap();

    // Logging out ends the session: after a reload, the login page again,
    // and the session route says 401.
    find(&b, "#logout").await.click().await.unwrap();
    find(&b, "#login").await;
    b.goto(&format!("{base}/#/flows")).await.unwrap();
    b.refresh().await.unwrap();
    until_js(
        &b,
        "the login page",
        "location.hash === '#/login' && document.getElementById('login')",
    )
    .await;
    let session = b
        .execute_async(
            "const done = arguments[0]; fetch('/panel/session').then((r) => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(session, json!(401));
    b.close().await.unwrap();
    assert_eq!(terminate(&mut node).await, 0);
}

/// `POST path` with a bearer token, expecting success.
async fn post_with(base: &str, token: &str, path: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_kept_apart_and_cross_site_posts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, base) = start(&config(dir.path()), dir.path()).await;
    let anns = post_with(
        &base,
        ANN,
        "/flows/hello/executions",
        json!({"inputs": {"name": "a"}}),
    )
    .await;
    let anns = anns["fid"].as_str().unwrap().to_string();
    let driver = driver().await;
    let b = browser(&driver).await;
    log_in(&b, &base, BOB).await;
    // Bob sees none of Ann's executions, and hers is not found for him.
    b.goto(&format!("{base}/#/executions")).await.unwrap();
    until_js(
        &b,
        "the empty list",
        "document.querySelector('#executions tbody')?.textContent.includes('None.')",
    )
    .await;
    b.goto(&format!("{base}/#/executions/{anns}"))
        .await
        .unwrap();
    until_js(
        &b,
        "not found",
        "document.querySelector('.notice')?.textContent.includes('not found')",
    )
    .await;
    screenshot(&b, "other-users-execution").await;

    // A page of another origin posts a form to kodo with Bob's cookie.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let evil_url = format!("http://{}", evil.local_addr().unwrap());
    let page = format!(
        r#"<!doctype html><form id="f" method="post" enctype="text/plain" action="{base}/flows/hello/executions"><input name='{{"inputs":{{"name":"evil"}},"x":"' value='"}}'><button id="go">go</button></form>"#
    );
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    tokio::spawn(async move { axum::serve(evil, app).await.unwrap() });
    b.goto(&evil_url).await.unwrap();
    find(&b, "#go").await.click().await.unwrap();
    until_js(
        &b,
        "kodo's answer",
        "document.body.textContent.includes('cross-site request refused: its Origin is not this host')",
    )
    .await;
    screenshot(&b, "cross-site-refused").await;
    let bobs = reqwest::Client::new()
        .get(format!("{base}/executions"))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(bobs["executions"], json!([]), "nothing launched for Bob");

    // The cookie without the session's CSRF token is refused too; with it,
    // from this origin, the same request works.
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{base}/panel/login"))
        .json(&json!({"token": BOB}))
        .send()
        .await
        .unwrap();
    let set = login.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(BOB),
        "the cookie holds a signed session, not the token"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let session = set.split(';').next().unwrap().to_string();
    // Behind a TLS proxy that says so, the cookie is for HTTPS only.
    let behind_tls = http
        .post(format!("{base}/panel/login"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"token": BOB}))
        .send()
        .await
        .unwrap();
    let set = behind_tls.headers()["set-cookie"].to_str().unwrap();
    assert!(set.contains("; Secure"), "{set}");
    // The token itself as the cookie is no session.
    let raw = http
        .get(format!("{base}/panel/session"))
        .header("cookie", format!("kodo_session={BOB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status().as_u16(), 401);
    let launch = |csrf: Option<String>| {
        let mut request = http
            .post(format!("{base}/flows/hello/executions"))
            .header("cookie", &session)
            .json(&json!({"inputs": {"name": "b"}}));
        if let Some(csrf) = csrf {
            request = request.header("x-kodo-csrf", csrf);
        }
        request.send()
    };
    assert_eq!(launch(None).await.unwrap().status().as_u16(), 403);
    let csrf = http
        .get(format!("{base}/panel/session"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        launch(Some("0".repeat(64)))
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    assert_eq!(launch(Some(csrf)).await.unwrap().status().as_u16(), 201);
    // The page's headers: a CSP without inline script, no framing.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    b.close().await.unwrap();
    assert_eq!(terminate(&mut node).await, 0);
}
