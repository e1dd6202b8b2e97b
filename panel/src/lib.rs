//! kodo's web panel, the parts that are not HTTP routes: its assets
//! (plain HTML, CSS and JavaScript in `panel/assets/`, embedded in the
//! binary; nothing to build), the headers every page is served with, and
//! the sanitizing of what an execution shows (markdown and HTML results
//! become HTML without scripts, event handlers or outside resources).

use hmac::{Hmac, KeyInit, Mac};
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
/// derived from the session's cookie, so a page of another origin, which
/// cannot read it, cannot send it.
pub fn csrf_of(secret: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"kodo-panel-csrf;");
    hasher.update(secret.as_bytes());
    hex::encode(hasher.finalize())
}

/// The panel's session cookie's value for `user`, who logged in with
/// `token`, until `expires` (Unix seconds): `EXPIRES.MAC.USER` (user in
/// hex), the MAC an HMAC-SHA256 keyed by the token. The token itself is
/// not in it; the session ends at `expires` whatever the browser does.
pub fn session_cookie(user: &str, token: &str, expires: u64) -> String {
    let user = hex::encode(user);
    let mac = hex::encode(session_mac(token, &user, expires).finalize().into_bytes());
    format!("{expires}.{mac}.{user}")
}

/// The token (of `tokens`: token, user) that signed a session cookie's
/// value for its user, if one did and the session has not expired at `now`.
pub fn session_user<'a>(
    cookie: &str,
    now: u64,
    tokens: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    let mut parts = cookie.splitn(3, '.');
    let expires: u64 = parts.next()?.parse().ok()?;
    let mac = hex::decode(parts.next()?).ok()?;
    let user_hex = parts.next()?;
    let user = String::from_utf8(hex::decode(user_hex).ok()?).ok()?;
    if expires <= now {
        return None;
    }
    tokens
        .into_iter()
        .filter(|(_, owner)| *owner == user)
        .find(|(token, _)| {
            session_mac(token, user_hex, expires)
                .verify_slice(&mac)
                .is_ok()
        })
        .map(|(token, _)| token)
}

/// The MAC of a session: HMAC-SHA256 keyed by the token.
fn session_mac(token: &str, user_hex: &str, expires: u64) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(format!("kodo-panel-session|{user_hex}|{expires}").as_bytes());
    mac
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
        .url_schemes(["http", "https", "mailto"].into())
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
    fn a_session_names_its_user_until_it_expires_and_only_with_its_token() {
        let tokens = [("token-a", "ann"), ("token-b", "bob")];
        let cookie = session_cookie("ann", "token-a", 1000);
        assert!(!cookie.contains("token-a"));
        assert_eq!(session_user(&cookie, 999, tokens), Some("token-a"));
        assert_eq!(session_user(&cookie, 1000, tokens), None, "expired");
        // Another user's name, a later expiry, another token: refused.
        let forged = cookie.replace(&hex::encode("ann"), &hex::encode("bob"));
        assert_eq!(session_user(&forged, 999, tokens), None);
        let later = cookie.replacen("1000", "9999", 1);
        assert_eq!(session_user(&later, 999, tokens), None);
        assert_eq!(session_user(&cookie, 999, [("token-c", "ann")]), None);
        for bad in ["", "1.2", "x.y.z", "1000.zz.616e6e"] {
            assert_eq!(session_user(bad, 0, tokens), None, "{bad}");
        }
    }

    #[test]
    fn the_csrf_token_depends_on_the_secret() {
        assert_eq!(csrf_of("a"), csrf_of("a"));
        assert_ne!(csrf_of("a"), csrf_of("b"));
        assert_eq!(csrf_of("a").len(), 64);
    }
}
