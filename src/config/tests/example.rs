//! The shipped example configuration.

use super::*;

#[test]
fn deploy_example_is_valid() {
    let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let example = fs::read_to_string(&example_path).expect("read deploy/config.example.toml");
    let s = Scratch::new();
    let text = edit(
        &example,
        "/etc/spooky/certs/fullchain.pem",
        &s.certs.cert_chain.display().to_string(),
    );
    let text = edit(
        &text,
        "/etc/spooky/certs/privkey.pem",
        &s.certs.private_key.display().to_string(),
    );
    let config = s
        .parse(&text)
        .unwrap_or_else(|e| panic!("example rejected:\n{e}"));

    let plan = config.plan();
    let prefixes: Vec<&str> = plan
        .upstreams
        .iter()
        .map(|u| u.route.path_prefix.as_str())
        .collect();
    assert_eq!(prefixes, ["/api", "/"]);
    assert!(plan.upstreams.iter().all(|u| u.backends.len() == 2));
}

#[test]
fn cpu_list_format_matches_the_kernel() {
    let set: BTreeSet<usize> = [0, 1, 2, 3, 8, 10, 11].into_iter().collect();
    assert_eq!(format_cpu_list(&set), "0-3,8,10-11");
    assert_eq!(format_cpu_list(&BTreeSet::new()), "none");
}

#[test]
fn route_host_and_method_are_checked_and_make_routes_distinct() {
    let s = Scratch::new();
    // Same prefix, different host or method: not ambiguous.
    let by_host = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/api\", host = \"*.example.com\"",
    );
    assert!(s.parse(&by_host).is_ok());
    let by_method = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/api\", method = \"POST\"",
    );
    assert!(s.parse(&by_method).is_ok());
    let bad_host = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/\", host = \"a.*.com\"",
    );
    assert_problem(
        &s.problems(&bad_host),
        "upstream.default_pool.route.host",
        "is not a host name",
    );
    let bad_method = edit(
        &s.full(),
        "path_prefix = \"/\"",
        "path_prefix = \"/\", method = \"get\"",
    );
    assert_problem(
        &s.problems(&bad_method),
        "upstream.default_pool.route.method",
        "upper case",
    );
}
