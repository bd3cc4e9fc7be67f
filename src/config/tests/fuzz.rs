//! Generated configuration text: the loader answers every file with a config or a list of
//! problems, and never panics. `scripts/fuzz.sh` runs every `fuzz_` test for longer.

use proptest::prelude::*;

use super::*;

/// A line that may belong in a config: a known key with a value of any TOML type, or noise.
fn line() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "port",
        "address",
        "idle_timeout_ms",
        "retry",
        "retry_above",
        "max_connections",
        "handshake_timeout_ms",
        "new_connection_rate",
        "max_header_bytes",
        "max_request_body_bytes",
        "requests_per_second",
        "connections",
        "memory_bytes",
        "steering",
        "cores",
        "shards",
        "protocol",
        "route",
        "weight",
    ]);
    let value = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        "[a-z/:.]{0,12}".prop_map(|s| format!("\"{s}\"")),
        Just("[1, 2, 2]".to_string()),
        Just("{ path_prefix = \"/\" }".to_string()),
        Just("true".to_string()),
        Just("1e308".to_string()),
    ];
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::sample::select(vec![
            "[quic]",
            "[limits]",
            "[overload]",
            "[runtime]",
            "[log]",
            "[upstream.x.limits]",
        ])
        .prop_map(String::from),
        "\\PC{0,30}",
    ]
}

thread_local! {
    // Certificates for all of a thread's cases: generating them costs far more than a parse.
    static SCRATCH: Scratch = Scratch::new();
}

proptest! {
    #[test]
    fn fuzz_config_text_gets_a_config_or_problems(
        lines in proptest::collection::vec(line(), 0..12),
        at in any::<prop::sample::Index>(),
    ) {
        SCRATCH.with(|s| check(s, lines, at))?;
    }
}

/// Inserts the generated lines into a minimal valid file at `at` and loads it.
fn check(s: &Scratch, lines: Vec<String>, at: prop::sample::Index) -> Result<(), TestCaseError> {
    let mut text: Vec<String> = s.minimal().lines().map(String::from).collect();
    let insert = at.index(text.len() + 1);
    for (i, line) in lines.into_iter().enumerate() {
        text.insert((insert + i).min(text.len()), line);
    }
    match s.parse(&text.join("\n")) {
        Ok(config) => prop_assert!(!config.plan().upstreams.is_empty()),
        Err(e) => prop_assert!(!e.problems().is_empty()),
    }
    Ok(())
}
