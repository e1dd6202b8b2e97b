//! The config's tests: parsing, errors that name their source, the
//! overlay, relative paths.

use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("kodo.toml", text, Vec::new())
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_serve_one_machine() {
    let c = parse("").unwrap();
    assert_eq!(c.api.listen, "127.0.0.1:3370");
    assert_eq!(c.store.url, "sqlite://./data/kodo.db");
    assert_eq!(c.transport.kind, TransportKind::Local);
}

#[test]
fn a_full_file_parses() {
    let c = parse(
        r#"
        [api]
        listen = "0.0.0.0:8080"
        [[auth.tokens]]
        token = "secret-ann"
        user = "ann"
        [[auth.tokens]]
        token = "secret-root"
        user = "root"
        admin = true
        [flows.hello]
        command = ["python3", "hello.py"]
        env = { GREETING = "hi" }
        timeout = 30
        description = "says hello"
        "#,
    )
    .unwrap();
    assert_eq!(c.auth.tokens.len(), 2);
    assert!(c.auth.tokens[1].admin);
    let flows = crate::wiring::flows(&c);
    let hello = flows.get("hello").unwrap();
    assert_eq!(hello.timeout, Some(Duration::from_secs(30)));
    assert_eq!(hello.description, "says hello");
}

#[test]
fn bad_files_name_the_key_and_the_file() {
    let cases = [
        ("[api]\nlisten = 3", "kodo.toml: api.listen: invalid type"),
        (
            "[api]\nlisen = \"x\"",
            "kodo.toml: api.lisen: unknown field `lisen`",
        ),
        ("[nope]\n", "kodo.toml: nope: unknown field `nope`"),
        ("[api\n", "kodo.toml: -: TOML parse error"),
        (
            "[api]\nlisten = \"localhost\"",
            "kodo.toml: api.listen: expected HOST:PORT",
        ),
        (
            "[api]\nlisten = \"0.0.0.0:1\"",
            "kodo.toml: api.listen: refusing",
        ),
        (
            "[metrics]\nlisten = \"0.0.0.0:1\"",
            "kodo.toml: metrics.listen: refusing to serve metrics without a token",
        ),
        (
            "[[auth.tokens]]\ntoken = \"12345678\"\nuser = \"a\"\n[metrics]\nlisten = \"0.0.0.0:1\"\nopen = true",
            "kodo.toml: metrics.listen: refusing to serve metrics without a token",
        ),
        (
            "[metrics]\nopen = true",
            "kodo.toml: metrics.open: needs metrics.listen",
        ),
        (
            "[metrics]\nlisten = \"here\"",
            "kodo.toml: metrics.listen: expected HOST:PORT",
        ),
        (
            "[store]\nurl = \"mysql://x\"",
            "kodo.toml: store.url: expected sqlite://PATH or postgres://",
        ),
        (
            "[store]\nsynchronous = \"off\"",
            "kodo.toml: store.synchronous",
        ),
        (
            "[transport]\nkind = \"carrier-pigeon\"",
            "kodo.toml: transport.kind",
        ),
        ("[transport]\nshards = 0", "kodo.toml: transport.shards"),
        ("[store]\npool = 0", "kodo.toml: store.pool"),
        (
            "[spooler]\nenabled = false",
            "kodo.toml: spooler.enabled: the local transport needs",
        ),
        (
            "[transport]\nkind = \"redis\"\nurl = \"http://x\"",
            "kodo.toml: transport.url: expected redis://",
        ),
        (
            "[transport]\nkind = \"redis\"\nprefix = \"a b\"",
            "kodo.toml: transport.prefix",
        ),
        (
            "[transport]\nkind = \"redis\"\nmax_len = 5",
            "kodo.toml: transport.max_len",
        ),
        (
            "[transport]\nkind = \"redis\"\nclaim_idle = 0",
            "kodo.toml: transport.claim_idle",
        ),
        (
            "[transport]\nkind = \"redis\"\nblock = -1",
            "kodo.toml: transport.block",
        ),
        ("[limits]\nkill_grace = -1", "kodo.toml: limits.kill_grace"),
        ("[flows.x]\ncommand = []", "kodo.toml: flows.x.command"),
        (
            "[flows.x]\ncommand = [\"a\"]\ntimeout = 0",
            "kodo.toml: flows.x.timeout",
        ),
        (
            "[flows.x]\ncommand = [\"a\"]\nretries = 1",
            "kodo.toml: flows.x.retries: unknown field `retries`",
        ),
        (
            "[flows.\"a b\"]\ncommand = [\"a\"]",
            "kodo.toml: flows.a b: flow names",
        ),
        (
            "[[auth.tokens]]\ntoken = \"short\"\nuser = \"u\"",
            "kodo.toml: auth.tokens[0].token",
        ),
        ("[log]\nlevel = \"[[[\"", "kodo.toml: log.level"),
    ];
    for (text, expected) in cases {
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.starts_with(expected),
            "{text:?}: got {e:?}, want {expected:?}"
        );
    }
}

#[test]
fn environment_overrides_keys_and_names_bad_variables() {
    let c = Config::parse(
        "kodo.toml",
        "[api]\nlisten = \"127.0.0.1:1\"",
        env(&[
            ("KODO_API_LISTEN", "127.0.0.1:9"),
            ("KODO_STORE_URL", "sqlite:///tmp/x.db"),
            ("KODO_LIMITS_KILL_GRACE", "0.5"),
            ("KODO_TRANSPORT_SHARDS", "4"),
            ("KODO_SOMETHING_ELSE", "ignored"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(c.api.listen, "127.0.0.1:9");
    assert_eq!(c.store.url, "sqlite:///tmp/x.db");
    assert_eq!(c.limits.kill_grace, 0.5);
    assert_eq!(c.transport.shards, 4);
    let e = Config::parse("kodo.toml", "", env(&[("KODO_TRANSPORT_SHARDS", "many")])).unwrap_err();
    assert_eq!(e.source_name, "KODO_TRANSPORT_SHARDS");
    assert_eq!(e.key, "transport.shards");
    let e = Config::parse("kodo.toml", "api = 1", env(&[("KODO_API_LISTEN", "x")])).unwrap_err();
    assert!(e.message.contains("not a table"), "{e}");
}

#[test]
fn a_bad_value_from_a_variable_names_the_variable_and_misspelt_ones_are_reported() {
    for (var, value, key) in [
        ("KODO_API_LISTEN", "garbage", "api.listen"),
        ("KODO_STORE_POOL", "0", "store.pool"),
        ("KODO_STORE_POOL", "-1", "store.pool"),
        ("KODO_STORE_URL", "mysql://x", "store.url"),
    ] {
        let e = Config::parse("kodo.toml", "", env(&[(var, value)])).unwrap_err();
        assert_eq!((e.source_name.as_str(), e.key.as_str()), (var, key), "{e}");
    }
    let e = Config::parse("kodo.toml", "[store]\npool = 0", Vec::new()).unwrap_err();
    assert_eq!(
        e.source_name, "kodo.toml",
        "a bad value in the file names the file"
    );
    let c = Config::parse(
        "kodo.toml",
        "",
        env(&[
            ("KODO_STORE_UR", "sqlite://x.db"),
            ("KODO_NOTHING_LIKE_IT", "1"),
            ("KODO_FID", "set for flows"),
            ("KODO_TEST_PG_URL", "set by scripts/test"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.warnings,
        [
            "ignoring the environment variable KODO_STORE_UR: it names no config key (did you mean KODO_STORE_URL?)",
            "ignoring the environment variable KODO_NOTHING_LIKE_IT: it names no config key",
        ]
    );
}

#[test]
fn relative_paths_in_a_file_are_relative_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kodo.toml");
    std::fs::write(
        &file,
        "[store]\nurl = \"sqlite://./data/kodo.db?mode=rwc\"\n\
         [flows.a]\ncommand = [\"sh\", \"a.sh\"]\n\
         [flows.b]\ncommand = [\"sh\", \"b.sh\"]\ncwd = \"flows\"\n",
    )
    .unwrap();
    let c = Config::load(Some(&file), Vec::new()).unwrap();
    let dir = dir.path();
    assert_eq!(
        c.store.url,
        format!("sqlite://{}/data/kodo.db?mode=rwc", dir.display())
    );
    let flows = crate::wiring::flows(&c);
    let cwd = |name: &str| match &flows.get(name).unwrap().kind {
        kodo_actors::FlowKind::Command(spec) => spec.cwd.clone().unwrap(),
        _ => unreachable!(),
    };
    assert_eq!((cwd("a"), cwd("b")), (dir.to_path_buf(), dir.join("flows")));
    // A variable's relative path is the shell's: relative to the working directory.
    let c = Config::load(Some(&file), env(&[("KODO_STORE_URL", "sqlite://x.db")])).unwrap();
    assert_eq!(c.store.url, "sqlite://x.db");
    for (url, same) in [
        ("sqlite:///abs/kodo.db", true),
        ("postgres://u:p@h:1/d", true),
        ("sqlite:rel.db", false),
    ] {
        assert_eq!(sqlite_relative_to(url, dir) == url, same, "{url}");
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = Config::load(Some(Path::new("/nonexistent/kodo.toml")), Vec::new()).unwrap_err();
    assert_eq!(e.source_name, "/nonexistent/kodo.toml");
    assert!(e.message.starts_with("cannot read"));
}

#[test]
fn debug_output_holds_no_secret() {
    let c = parse(
        r#"
        [store]
        url = "postgres://kodo:store-secret@db:5432/kodo"
        [transport]
        url = "redis://:redis-secret@cache:6379"
        [[auth.tokens]]
        token = "token-secret"
        user = "ann"
        [flows.x]
        command = ["a"]
        env = { API_KEY = "flow-secret" }
        [flows.x.masumi]
        payment_url = "http://pay:pay-url-secret@pay.example/kodo"
        payment_token = "payment-token-secret"
        "#,
    )
    .unwrap();
    let shown = format!(
        "{c:?} {:?} {:?}",
        crate::wiring::flows(&c),
        crate::wiring::redis_options(&c, "n")
    );
    for secret in [
        "store-secret",
        "redis-secret",
        "token-secret",
        "flow-secret",
        "pay-url-secret",
        "payment-token-secret",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("API_KEY") && shown.contains("ann"),
        "{shown}"
    );
}

#[test]
fn the_execution_mode_and_temporal_keys_parse_and_are_checked() {
    let c = Config::parse(
        "kodo.toml",
        "[execution]\nmode = \"temporal\"\n[temporal]\nattempts = 5\n\
         [flows.a]\ncommand = [\"a\"]\nmode = \"direct\"\n",
        env(&[
            ("KODO_TEMPORAL_ADDRESS", "10.0.0.5:7233"),
            ("KODO_TEMPORAL_HEARTBEAT_TIMEOUT", "2.5"),
            ("KODO_TEMPORAL_WORKER", "false"),
        ]),
    )
    .unwrap();
    assert_eq!(c.execution.mode, ExecutionMode::Temporal);
    assert_eq!(c.flows["a"].mode, Some(ExecutionMode::Direct));
    assert_eq!(
        (c.temporal.address.as_str(), c.temporal.heartbeat_timeout),
        ("10.0.0.5:7233", 2.5)
    );
    assert_eq!((c.temporal.attempts, c.temporal.worker), (5, false));
    assert_eq!(c.temporal.namespace, "default");
    for (text, expected) in [
        ("[execution]\nmode = \"ray\"", "kodo.toml: execution.mode"),
        (
            "[temporal]\naddress = \"http://x:1\"",
            "kodo.toml: temporal.address",
        ),
        (
            "[temporal]\nnamespace = \"\"",
            "kodo.toml: temporal.namespace",
        ),
        (
            "[temporal]\nheartbeat_timeout = 0.5",
            "kodo.toml: temporal.heartbeat_timeout",
        ),
        ("[temporal]\nattempts = 0", "kodo.toml: temporal.attempts"),
        (
            "[temporal]\nexecution_timeout = -1",
            "kodo.toml: temporal.execution_timeout",
        ),
        (
            "[flows.x]\ncommand = [\"a\"]\nmode = \"ray\"",
            "kodo.toml: flows.x.mode",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(
            e.starts_with(expected),
            "{text:?}: got {e:?}, want {expected:?}"
        );
    }
    let e = Config::parse("kodo.toml", "", env(&[("KODO_TEMPORAL_ATTEMPTS", "many")])).unwrap_err();
    assert_eq!(
        (e.source_name.as_str(), e.key.as_str()),
        ("KODO_TEMPORAL_ATTEMPTS", "temporal.attempts")
    );
}

#[test]
fn a_kodosumi_flow_runs_the_bundled_package_on_its_python() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kodo.toml");
    std::fs::write(
        &file,
        "[flows.hello]\nkodosumi = \"hello.app:app\"\npath = \"/\"\npython = \"python3.11\"\n\
         pythonpath = [\"src\"]\nenv = { PYTHONPATH = \"/own\" }\n",
    )
    .unwrap();
    let c = Config::load(Some(&file), Vec::new()).unwrap();
    let flows = crate::wiring::flows(&c);
    let kodo_actors::FlowKind::Command(spec) = &flows.get("hello").unwrap().kind else {
        unreachable!()
    };
    assert_eq!(
        spec.command,
        [
            "python3.11",
            "-m",
            "kodo.kodosumi",
            "hello.app:app",
            "--path",
            "/"
        ]
    );
    let path: Vec<&str> = spec.env["PYTHONPATH"].split(':').collect();
    let bundled = crate::python::install().unwrap();
    let src = dir.path().join("src");
    assert_eq!(
        path,
        [bundled.to_str().unwrap(), src.to_str().unwrap(), "/own"]
    );
}

#[test]
fn bad_kodosumi_flows_name_the_key() {
    for (text, expected) in [
        (
            "[flows.a]\nkodosumi = \"m:app\"\ncommand = [\"sh\"]\n",
            "flows.a: give either command or kodosumi, not both",
        ),
        (
            "[flows.a]\nkodosumi = \"no-module\"\n",
            "flows.a.kodosumi: expected \"pkg.mod:app\" (with path) or \"pkg.mod:fn\"",
        ),
        (
            "[flows.a]\nkodosumi = \"m:app\"\npath = \"x\"\n",
            "flows.a.kodosumi: its path is a route of the app: it starts with /",
        ),
        (
            "[flows.a]\ncommand = [\"sh\"]\npath = \"/\"\n",
            "flows.a.path: only for a kodosumi flow",
        ),
        (
            "[flows.a]\nkodosumi = \"m:app\"\npython = \" \"\n",
            "flows.a.python: expected a program",
        ),
        (
            "[flows.a]\ndescription = \"x\"\n",
            "flows.a.command: expected a program and its arguments",
        ),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn a_declared_form_is_checked_and_bad_ones_name_their_element() {
    let c = parse(
        "[flows.greet]\ncommand = [\"sh\"]\n\
         [[flows.greet.form]]\ntype = \"text\"\nname = \"name\"\nrequired = true\n",
    )
    .unwrap();
    let flows = crate::wiring::flows(&c);
    assert!(flows.get("greet").unwrap().admission.is_some());
    let err = parse("[flows.greet]\ncommand = [\"sh\"]\n[[flows.greet.form]]\ntype = \"text\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("flows.greet.form: element 1: a text needs a name"),
        "{err}"
    );
    let err =
        parse("[flows.a]\nkodosumi = \"m:app\"\npath = \"/\"\n[[flows.a.form]]\ntype = \"hr\"\n")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("a kodosumi app's form is its @app.enter model"),
        "{err}"
    );
}

#[test]
fn a_flows_masumi_section_parses_and_bad_ones_name_the_key() {
    let c = parse(
        "[flows.x]\ncommand = [\"a\"]\n[flows.x.masumi]\naccess = \"open\"\nowner = \"buyer\"\n\
         payment_url = \"http://127.0.0.1:9/pay\"\npayment_token = \"0123456789abcdef\"\n",
    )
    .unwrap();
    let masumi = &c.flows["x"].masumi;
    assert_eq!(masumi.access, MasumiAccess::Open);
    assert_eq!(masumi.owner, "buyer");
    assert_eq!(masumi.payment_timeout, 3600.0);
    let plain = parse("[flows.x]\ncommand = [\"a\"]\n").unwrap();
    assert_eq!(
        plain.flows["x"].masumi.access,
        MasumiAccess::Tokens,
        "tokens by default"
    );
    let flow = "[flows.x]\ncommand = [\"a\"]\n[flows.x.masumi]\n";
    let token = "payment_token = \"0123456789abcdef\"\n";
    for (masumi, expected) in [
        (
            "access = \"public\"\n",
            "flows.x.masumi.access: unknown variant",
        ),
        (
            "owner = \" \"\n",
            "flows.x.masumi.owner: expected a user name",
        ),
        ("pay = 1\n", "flows.x.masumi.pay: unknown field"),
        (
            &format!("payment_url = \"ftp://x\"\n{token}"),
            "flows.x.masumi.payment_url: expected an http(s) URL",
        ),
        (
            "payment_url = \"http://x\"\npayment_token = \"short\"\n",
            "flows.x.masumi.payment_token: expected a secret of at least 16",
        ),
        (
            &format!("payment_url = \"http://x\"\n{token}payment_timeout = 0\n"),
            "flows.x.masumi.payment_timeout: expected seconds above 0",
        ),
    ] {
        let err = parse(&format!("{flow}{masumi}")).unwrap_err().to_string();
        assert!(err.contains(expected), "{masumi}: {err}");
    }
    let owner_is_a_user = format!(
        "[[auth.tokens]]\ntoken = \"0123456789\"\nuser = \"ann\"\n{flow}access = \"open\"\nowner = \"ann\"\n"
    );
    let err = parse(&owner_is_a_user).unwrap_err().to_string();
    assert!(err.contains("flows.x.masumi.owner: names a user"), "{err}");
    let durable =
        format!("[execution]\nmode = \"temporal\"\n{flow}payment_url = \"http://x\"\n{token}");
    let err = parse(&durable).unwrap_err().to_string();
    assert!(err.contains("not available in durable mode"), "{err}");
}
