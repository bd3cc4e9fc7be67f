//! `spooky-bench`: the HTTP/3 client and HTTP/2 test backend on the command line.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use spooky_bench::backend::{self, BackendOptions};
use spooky_bench::client::{Body, ClientOptions, H3Client, Request, Verify};

const USAGE: &str = "\
usage:
  spooky-bench get URL [--method M] [--data-file FILE] [--header 'name: value']...
                       [--insecure | --ca FILE] [--output FILE] [--include]
  spooky-bench backend --listen ADDR [--name NAME] [--max-streams N]
  spooky-bench idle URL --connections N --hold SECONDS [--insecure | --ca FILE]
                       open N QUIC connections (handshake only), keep them for SECONDS
  spooky-bench pick-cost [--backends N]
                       ns per backend pick for each load-balancing type";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("get") => get(&args[1..]),
        Some("backend") => run_backend(&args[1..]),
        Some("idle") => idle(&args[1..]),
        Some("pick-cost") => pick_cost(&args[1..]),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(Failure::Usage("expected a command: get or backend".into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("spooky-bench: {message}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Run(message)) => {
            eprintln!("spooky-bench: {message}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Run(String),
}

fn value<'a>(
    iter: &mut impl Iterator<Item = &'a String>,
    flag: &str,
) -> Result<&'a String, Failure> {
    iter.next()
        .ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))
}

/// Splits `https://host:port/path` into host, port and path.
fn parse_url(url: &str) -> Result<(String, u16, String), Failure> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| Failure::Usage(format!("{url:?}: only https:// URLs are supported")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port = port
                .parse()
                .map_err(|_| Failure::Usage(format!("{url:?}: bad port")))?;
            (
                host.trim_matches(|c| c == '[' || c == ']').to_string(),
                port,
            )
        }
        _ => (
            authority.trim_matches(|c| c == '[' || c == ']').to_string(),
            443,
        ),
    };
    Ok((host, port, path.to_string()))
}

fn get(args: &[String]) -> Result<(), Failure> {
    let mut iter = args.iter();
    let mut url: Option<&String> = None;
    let mut method = "GET".to_string();
    let mut body = Body::Empty;
    let mut headers = Vec::new();
    let mut verify = None;
    let mut output: Option<PathBuf> = None;
    let mut include = false;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--method" | "-X" => method = value(&mut iter, arg)?.clone(),
            "--data-file" => body = Body::File(PathBuf::from(value(&mut iter, arg)?)),
            "--header" | "-H" => {
                let raw = value(&mut iter, arg)?;
                let (name, v) = raw
                    .split_once(':')
                    .ok_or_else(|| Failure::Usage(format!("header {raw:?} needs 'name: value'")))?;
                headers.push((name.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            "--insecure" | "-k" => verify = Some(Verify::Insecure),
            "--ca" => verify = Some(Verify::Ca(PathBuf::from(value(&mut iter, arg)?))),
            "--output" | "-o" => output = Some(PathBuf::from(value(&mut iter, arg)?)),
            "--include" | "-i" => include = true,
            other if !other.starts_with('-') && url.is_none() => url = Some(arg),
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    let url = url.ok_or_else(|| Failure::Usage("get needs a URL".into()))?;
    let (host, port, path) = parse_url(url)?;
    let verify = verify.ok_or_else(|| Failure::Usage("give --ca FILE (or --insecure)".into()))?;
    let server = resolve(&host, port)?;
    let mut client = H3Client::connect(ClientOptions {
        server,
        server_name: host.clone(),
        verify,
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| Failure::Run(format!("connecting to {server}: {e}")))?;
    let mut request = Request::new(&method, &path).body(body);
    if port != 443 {
        request.authority = Some(format!("{host}:{port}"));
    }
    request.headers = headers;
    let response = client
        .request(request)
        .map_err(|e| Failure::Run(format!("{method} {url}: {e}")))?;
    let mut head = format!("HTTP/3 {}\n", response.status);
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\n"));
    }
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let write = |out: &mut dyn Write, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|e| Failure::Run(format!("writing output: {e}")))
    };
    if include {
        write(&mut stdout, format!("{head}\n").as_bytes())?;
    } else {
        eprint!("{head}");
    }
    match output {
        Some(path) => std::fs::write(&path, &response.body)
            .map_err(|e| Failure::Run(format!("writing {}: {e}", path.display())))?,
        None => write(&mut stdout, &response.body)?,
    }
    for (name, value) in &response.trailers {
        eprintln!("trailer {name}: {value}");
    }
    client.close();
    Ok(())
}

fn run_backend(args: &[String]) -> Result<(), Failure> {
    let mut iter = args.iter();
    let mut listen = None;
    let mut name = "backend".to_string();
    let mut max_streams = None;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--listen" => {
                let raw = value(&mut iter, arg)?;
                listen = Some(
                    raw.parse::<SocketAddr>()
                        .map_err(|_| Failure::Usage(format!("--listen {raw:?} is not IP:port")))?,
                );
            }
            "--name" => name = value(&mut iter, arg)?.clone(),
            "--max-streams" => {
                let raw = value(&mut iter, arg)?;
                max_streams = Some(raw.parse().map_err(|_| {
                    Failure::Usage(format!("--max-streams {raw:?} is not a number"))
                })?);
            }
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    let listen = listen.ok_or_else(|| Failure::Usage("--listen ADDR is required".into()))?;
    let handle = backend::start(BackendOptions {
        listen,
        name,
        max_concurrent_streams: max_streams,
    })
    .map_err(|e| Failure::Run(format!("cannot listen on {listen}: {e}")))?;
    println!("listening on {}", handle.addr());
    loop {
        std::thread::park();
    }
}

/// Opens many connections and keeps them open: for measuring memory per idle connection.
fn idle(args: &[String]) -> Result<(), Failure> {
    let mut iter = args.iter();
    let mut url = None;
    let mut connections = 100usize;
    let mut hold = 10u64;
    let mut verify = None;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--connections" => {
                connections = value(&mut iter, arg)?
                    .parse()
                    .map_err(|_| Failure::Usage("--connections needs a number".into()))?
            }
            "--hold" => {
                hold = value(&mut iter, arg)?
                    .parse()
                    .map_err(|_| Failure::Usage("--hold needs seconds".into()))?
            }
            "--insecure" | "-k" => verify = Some(Verify::Insecure),
            "--ca" => verify = Some(Verify::Ca(PathBuf::from(value(&mut iter, arg)?))),
            other if !other.starts_with('-') && url.is_none() => url = Some(arg),
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    let url = url.ok_or_else(|| Failure::Usage("idle needs a URL".into()))?;
    let (host, port, _) = parse_url(url)?;
    let verify = verify.ok_or_else(|| Failure::Usage("give --ca FILE (or --insecure)".into()))?;
    let server = resolve(&host, port)?;
    let mut open = Vec::with_capacity(connections);
    for i in 0..connections {
        let client = H3Client::connect(ClientOptions {
            server,
            server_name: host.clone(),
            verify: verify.clone(),
            timeout: Duration::from_secs(hold + 30),
        })
        .map_err(|e| Failure::Run(format!("connection {i}: {e}")))?;
        open.push(client);
    }
    println!("{connections} connections open; holding for {hold} s");
    std::thread::sleep(Duration::from_secs(hold));
    for client in open {
        client.close();
    }
    Ok(())
}

fn pick_cost(args: &[String]) -> Result<(), Failure> {
    let mut iter = args.iter();
    let mut backends = 8usize;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--backends" => {
                backends = value(&mut iter, arg)?
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| Failure::Usage("--backends needs a positive number".into()))?
            }
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    println!("backend pick cost, {backends} backends, best of 5 rounds of 1,000,000 picks");
    for (name, ns) in spooky_bench::pickcost::measure(backends, 1_000_000, 5) {
        println!("{name:>16}  {ns:8.1} ns/pick");
    }
    Ok(())
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, Failure> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| Failure::Run(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Run(format!("{host} has no address")))
}
