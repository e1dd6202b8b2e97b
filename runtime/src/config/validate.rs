//! Checks of values that parse but cannot work; each names its key.

use super::Config;
use super::schema::{ExecutionMode, MasumiAccess, TransportKind};
use std::net::SocketAddr;

impl Config {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
        let addr: SocketAddr = match self.api.listen.parse() {
            Ok(a) => a,
            Err(_) => return bad("api.listen", "expected HOST:PORT with an IP address"),
        };
        if self.auth.tokens.is_empty() && !addr.ip().is_loopback() {
            return bad(
                "api.listen",
                "refusing to listen on a non-loopback address without [[auth.tokens]]",
            );
        }
        if !self.metrics.listen.is_empty() {
            let Ok(metrics) = self.metrics.listen.parse::<SocketAddr>() else {
                return bad("metrics.listen", "expected HOST:PORT with an IP address");
            };
            if (self.metrics.open || self.auth.tokens.is_empty()) && !metrics.ip().is_loopback() {
                return bad(
                    "metrics.listen",
                    "refusing to serve metrics without a token on a non-loopback address",
                );
            }
        } else if self.metrics.open {
            return bad("metrics.open", "needs metrics.listen (a loopback address)");
        }
        let endpoint = &self.telemetry.otlp_endpoint;
        if !endpoint.is_empty() && !endpoint.starts_with("http://") {
            return bad(
                "telemetry.otlp_endpoint",
                "expected http://HOST:PORT (OTLP over HTTP; kodo has no TLS client: send to a local collector)",
            );
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return bad("telemetry.sample_ratio", "expected 0 to 1");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                return bad(
                    &format!("auth.tokens[{i}].token"),
                    "tokens need 8 characters or more",
                );
            }
            if t.user.is_empty() {
                return bad(&format!("auth.tokens[{i}].user"), "empty user");
            }
            if !seen.insert(&t.token) {
                return bad(&format!("auth.tokens[{i}].token"), "duplicate token");
            }
        }
        if kodo_store::Backend::of(&self.store.url).is_err() {
            return bad(
                "store.url",
                "expected sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
            );
        }
        if !(1..=1000).contains(&self.store.pool) {
            return bad("store.pool", "expected 1 to 1000 connections");
        }
        match self.transport.kind {
            TransportKind::Local => {
                if !self.spooler.enabled {
                    return bad(
                        "spooler.enabled",
                        "the local transport needs the node's own Spoolers; use transport.kind = \"redis\"",
                    );
                }
            }
            TransportKind::Redis => {
                if !self.transport.url.starts_with("redis://") {
                    return bad("transport.url", "expected redis://HOST:PORT");
                }
                if self.transport.prefix.is_empty() || self.transport.prefix.contains(' ') {
                    return bad("transport.prefix", "expected a key prefix without spaces");
                }
                if self.transport.max_len < 100 {
                    return bad("transport.max_len", "expected at least 100");
                }
                for (key, v, min) in [
                    ("transport.claim_idle", self.transport.claim_idle, 0.1),
                    ("transport.block", self.transport.block, 0.01),
                ] {
                    if !(min..1e6).contains(&v) {
                        return bad(key, &format!("expected seconds, {min} or more"));
                    }
                }
            }
        }
        if !(0.5..1e6).contains(&self.cluster.lease) {
            return bad("cluster.lease", "expected seconds, 0.5 or more");
        }
        if !(1..=256).contains(&self.transport.shards) {
            return bad("transport.shards", "expected 1 to 256");
        }
        if self.transport.capacity_bytes < 4096 {
            return bad("transport.capacity_bytes", "expected at least 4096");
        }
        if self.spooler.batch_max == 0 {
            return bad("spooler.batch_max", "expected at least 1");
        }
        if self.limits.max_payload_bytes < 256 {
            return bad("limits.max_payload_bytes", "expected at least 256");
        }
        if self.limits.max_running == 0 {
            return bad("limits.max_running", "expected at least 1");
        }
        for (key, v) in [
            ("limits.kill_grace", self.limits.kill_grace),
            ("limits.lock_timeout", self.limits.lock_timeout),
            ("limits.launch_wait", self.limits.launch_wait),
            ("limits.shutdown_wait", self.limits.shutdown_wait),
        ] {
            if !(0.0..1e9).contains(&v) {
                return bad(key, "expected seconds, 0 or more");
            }
        }
        let t = &self.temporal;
        if t.address.is_empty() || !t.address.contains(':') || t.address.contains("://") {
            return bad("temporal.address", "expected HOST:PORT");
        }
        for (key, v) in [
            ("temporal.namespace", &t.namespace),
            ("temporal.task_queue", &t.task_queue),
        ] {
            if v.trim().is_empty() {
                return bad(key, "expected a name");
            }
        }
        if !(0.0..1e9).contains(&t.execution_timeout) {
            return bad(
                "temporal.execution_timeout",
                "expected seconds, 0 (no limit) or more",
            );
        }
        if !(t.heartbeat_timeout >= 1.0 && t.heartbeat_timeout < 1e6) {
            return bad("temporal.heartbeat_timeout", "expected seconds, 1 or more");
        }
        if !(1..=1000).contains(&t.attempts) {
            return bad("temporal.attempts", "expected 1 to 1000");
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return bad("log.level", "not a valid log filter");
        }
        for (name, flow) in &self.flows {
            let key = format!("flows.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(&key, "flow names use letters, digits, '-', '_' and '.'");
            }
            match (&flow.kodosumi, flow.command.is_empty()) {
                (Some(_), false) => {
                    return bad(&key, "give either command or kodosumi, not both");
                }
                (Some(target), true) => {
                    if let Err(why) = kodosumi_target(target, flow.path.as_deref()) {
                        return bad(&format!("{key}.kodosumi"), &why);
                    }
                    if flow.python.as_ref().is_some_and(|p| p.trim().is_empty()) {
                        return bad(&format!("{key}.python"), "expected a program");
                    }
                }
                (None, _) => {
                    if flow.command.first().is_none_or(String::is_empty) {
                        return bad(
                            &format!("{key}.command"),
                            "expected a program and its arguments (or kodosumi = \"pkg.mod:app\")",
                        );
                    }
                    for (field, set) in [
                        ("path", flow.path.is_some()),
                        ("python", flow.python.is_some()),
                        ("pythonpath", !flow.pythonpath.is_empty()),
                    ] {
                        if set {
                            return bad(&format!("{key}.{field}"), "only for a kodosumi flow");
                        }
                    }
                }
            }
            let masumi = &flow.masumi;
            let owner = &masumi.owner;
            if owner.trim().is_empty() || owner.trim() != owner {
                return bad(
                    &format!("{key}.masumi.owner"),
                    "expected a user name without surrounding spaces",
                );
            }
            // Anonymous callers act as the owner: it must be nobody's account.
            if masumi.access == MasumiAccess::Open
                && self.auth.tokens.iter().any(|t| t.user == *owner)
            {
                return bad(
                    &format!("{key}.masumi.owner"),
                    "names a user of [[auth.tokens]]: anonymous callers would act as that user",
                );
            }
            if !masumi.payment_url.is_empty() {
                let url = &masumi.payment_url;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return bad(
                        &format!("{key}.masumi.payment_url"),
                        "expected an http(s) URL",
                    );
                }
                if masumi.payment_token.len() < 16 {
                    return bad(
                        &format!("{key}.masumi.payment_token"),
                        "expected a secret of at least 16 characters with payment_url",
                    );
                }
                if !(masumi.payment_timeout.is_finite() && masumi.payment_timeout > 0.0) {
                    return bad(
                        &format!("{key}.masumi.payment_timeout"),
                        "expected seconds above 0",
                    );
                }
                if flow.mode.unwrap_or(self.execution.mode) == ExecutionMode::Temporal {
                    return bad(
                        &format!("{key}.masumi.payment_url"),
                        "payment is not available in durable mode (temporal) yet",
                    );
                }
            }
            if !flow.form.is_empty() {
                if flow.kodosumi.is_some() && flow.path.is_some() {
                    return bad(
                        &format!("{key}.form"),
                        "a kodosumi app's form is its @app.enter model",
                    );
                }
                if let Err(why) = kodo_actors::Form::new(flow.form.clone()) {
                    return bad(&format!("{key}.form"), &why);
                }
            }
            if let Some(t) = flow.timeout
                && !(t > 0.0 && t < 1e9)
            {
                return bad(&format!("{key}.timeout"), "expected seconds, more than 0");
            }
            if !(1..=1000).contains(&flow.attempts) {
                return bad(&format!("{key}.attempts"), "expected 1 to 1000");
            }
        }
        Ok(())
    }
}

/// Checks a Kodosumi flow's `kodosumi` (and `path`): `pkg.mod:obj` or
/// `pkg.mod.obj`, of Python names; a `path` starts with `/`.
fn kodosumi_target(target: &str, path: Option<&str>) -> Result<(), String> {
    let (module, object) = match target.split_once(':') {
        Some(parts) => parts,
        None => target.rsplit_once('.').unwrap_or(("", target)),
    };
    let names = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|n| {
                n.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && n.chars().all(|c| c.is_alphanumeric() || c == '_')
            })
    };
    if !names(module) || !names(object) {
        return Err(format!(
            "expected \"pkg.mod:app\" (with path) or \"pkg.mod:fn\", not {target:?}"
        ));
    }
    if path.is_some_and(|p| !p.starts_with('/')) {
        return Err("its path is a route of the app: it starts with /".into());
    }
    Ok(())
}
