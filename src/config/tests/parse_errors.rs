//! Parse errors: one problem, full key path, line number, file name.

use super::*;

#[test]
fn unknown_key_names_full_path_and_line() {
    let s = Scratch::new();
    let text = edit(&s.full(), "weight = 50", "wieght = 50");
    let err = s.parse(&text).expect_err("misspelt key");
    assert_eq!(err.kind(), ErrorKind::Parse);
    let p = &err.problems()[0];
    assert_eq!(p.key, "upstream.api_pool.backends[1].wieght");
    assert!(p.message.contains("unknown field `wieght`"), "{p:?}");
    let expected_line = text.lines().position(|l| l.contains("wieght")).unwrap() + 1;
    assert_eq!(p.line, Some(expected_line));

    let shown = err.to_string();
    let prefix = format!(
        "{}:{expected_line}: upstream.api_pool.backends[1].wieght: unknown field",
        s.config_path().display()
    );
    assert!(shown.starts_with(&prefix), "{shown}");
}

#[test]
fn unknown_section_is_rejected() {
    let s = Scratch::new();
    let text = format!("{}\n[metrics]\nport = 9090\n", s.minimal());
    assert_problem(&s.problems(&text), "metrics", "unknown field `metrics`");
}

#[test]
fn wrong_type_names_the_key() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = \"443\"");
    assert_problem(
        &s.problems(&text),
        "listen.port",
        "invalid type: string \"443\", expected an integer",
    );
}

#[test]
fn missing_required_key_names_its_table() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "address = \"127.0.0.1:9000\"\n", "");
    assert_problem(
        &s.problems(&text),
        "upstream.app.backends[0]",
        "missing field `address`",
    );
}

#[test]
fn unknown_balancing_type_lists_the_supported_ones() {
    let s = Scratch::new();
    let text = edit(&s.full(), "type = \"random\"", "type = \"maglev\"");
    assert_problem(
        &s.problems(&text),
        "upstream.api_pool.load_balancing.type",
        "expected one of `round-robin`, `random`, `least-request`, `consistent-hash`, `latency-aware`",
    );
}

#[test]
fn consistent_hash_needs_a_valid_key_and_others_take_none() {
    let s = Scratch::new();
    let missing = edit(&s.full(), "type = \"random\"", "type = \"consistent-hash\"");
    assert_problem(
        &s.problems(&missing),
        "upstream.api_pool.load_balancing.key",
        "needs a key",
    );
    let bad = edit(
        &s.full(),
        "type = \"random\"",
        "type = \"consistent-hash\", key = \"ip\"",
    );
    assert_problem(
        &s.problems(&bad),
        "upstream.api_pool.load_balancing.key",
        "is not a hash key",
    );
    let stray = edit(
        &s.full(),
        "type = \"random\"",
        "type = \"random\", key = \"path\"",
    );
    assert_problem(
        &s.problems(&stray),
        "upstream.api_pool.load_balancing.key",
        "only `consistent-hash` uses a key",
    );
    let good = edit(
        &s.full(),
        "type = \"random\"",
        "type = \"consistent-hash\", key = \"header:x-user\"",
    );
    assert!(s.parse(&good).is_ok());
}

#[test]
fn toml_syntax_error_has_a_line_and_no_key() {
    let s = Scratch::new();
    let text = edit(&s.minimal(), "port = 443", "port = = 443");
    let err = s.parse(&text).expect_err("not TOML");
    let p = &err.problems()[0];
    assert_eq!(p.key, "");
    let expected_line = text.lines().position(|l| l.contains("port = =")).unwrap() + 1;
    assert_eq!(p.line, Some(expected_line));
    assert!(
        !err.to_string().contains('\n'),
        "one line per problem: {err}"
    );
}

#[test]
fn missing_config_file_names_the_path() {
    let s = Scratch::new();
    let path = s.dir.join("nope.toml");
    let err = load(&path).expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::Read);
    let shown = err.to_string();
    assert!(shown.starts_with(&path.display().to_string()), "{shown}");
    assert!(shown.contains("cannot read configuration file"), "{shown}");
}
