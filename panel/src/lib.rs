//! kodo's web panel, the parts that are not HTTP routes: its assets
//! (plain HTML, CSS and JavaScript in `panel/assets/`, embedded in the
//! binary; nothing to build), the headers every page is served with, and
//! the sanitizing of what an execution shows (markdown and HTML results
//! become HTML without scripts, event handlers or outside resources).

use sha2::{Digest, Sha256};

/// The page every panel address serves (`/`): it loads [`APP_JS`] and
/// [`APP_CSS`], and routes by the URL's fragment.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The panel's script.
pub const APP_JS: &str = include_str!("../assets/app.js");

/// The panel's style sheet.
pub const APP_CSS: &str = include_str!("../assets/app.css");

/// The Content-Security-Policy of the panel: its own script and styles
/// only, no inline script, no outside resource, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// An asset by its name under `/panel/assets/`: its content type and text.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

/// The token a session's state-changing requests carry (`X-Kodo-Csrf`):
/// derived from the session's secret, so a page of another origin, which
/// cannot read it, cannot send it.
pub fn csrf_of(secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"kodo-panel-csrf;");
    hasher.update(secret.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Markdown as HTML, sanitized ([`clean_html`]): raw HTML in it is
/// sanitized too.
pub fn markdown_html(text: &str) -> String {
    let parser = pulldown_cmark::Parser::new_ext(text, pulldown_cmark::Options::ENABLE_TABLES);
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, parser);
    clean_html(&html)
}

/// HTML without what could run or reach out: no script, style, event
/// handler, form, frame, `javascript:` or relative link (an image must
/// not call this node); links open without referrer.
pub fn clean_html(html: &str) -> String {
    ammonia::Builder::default()
        .url_schemes(["http", "https", "mailto", "data"].into())
        .link_rel(Some("noopener noreferrer nofollow"))
        .url_relative(ammonia::UrlRelative::Deny)
        .clean(html)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_and_handlers_are_taken_out() {
        let shown = markdown_html(
            "# Hi\n\n<script>alert(1)</script>\n\n<img src=x onerror=\"alert(2)\">\
             [x](javascript:alert(3)) **bold**",
        );
        for bad in ["<script", "onerror", "javascript:", "alert(1)"] {
            assert!(!shown.contains(bad), "{bad} in {shown}");
        }
        assert!(shown.contains("<h1>Hi</h1>") && shown.contains("<strong>bold</strong>"));
        let shown = clean_html("<p onclick=\"x()\">a</p><iframe src=\"/\"></iframe><b>b</b>");
        assert_eq!(shown, "<p>a</p><b>b</b>");
    }

    #[test]
    fn every_asset_is_served_and_the_page_loads_them() {
        for name in ["app.js", "app.css"] {
            assert!(asset(name).is_some(), "{name}");
            assert!(
                INDEX_HTML.contains(&format!("/panel/assets/{name}")),
                "{name}"
            );
        }
        assert!(asset("../Cargo.toml").is_none());
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
    }

    #[test]
    fn the_csrf_token_depends_on_the_secret() {
        assert_eq!(csrf_of("a"), csrf_of("a"));
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a").len(), 64);
    }
}
