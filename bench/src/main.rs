//! `spooky-bench`: the HTTP/3 client and HTTP/2 test backend on the command line.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use spooky_bench::backend::{self, BackendOptions};
use spooky_bench::client::{Body, ClientOptions, H3Client, Request, Verify};
use spooky_bench::load::LoadOptions;
use spooky_bench::matrix::MatrixOptions;

const USAGE: &str = "\
usage:
  spooky-bench get URL [--method M] [--data-file FILE] [--header 'name: value']...
                       [--insecure | --ca FILE] [--output FILE] [--include]
  spooky-bench backend --listen ADDR [--name NAME] [--max-streams N] [--threads N]
                       /bytes/N, /echo, /_stats (this process's CPU seconds) and more
  spooky-bench load URL (--duration S | --requests N | --idle-hold S)
                       [--connections N] [--streams N] [--rate R] [--threads N]
                       [--method M] [--body-size BYTES] [--path P]... [--header 'n: v']...
                       [--handshake-only] [--warmup S] [--timeout S]
                       [--insecure | --ca FILE] [--json FILE]
                       HTTP/3 load (https://) or HTTP/2 cleartext load (http://)
  spooky-bench matrix --spooky PATH [--out DIR] [--duration S] [--proxy-cpu N]
                       [--idle-connections N] [--no-caddy]
                       the benchmark scenarios against Spooky, Caddy and the backend; report
  spooky-bench pick-cost [--backends N]
                       ns per backend pick for each load-balancing type";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("get") => get(&args[1..]),
        Some("backend") => run_backend(&args[1..]),
        Some("load") => load(&args[1..]),
        Some("matrix") => matrix(&args[1..]),
        Some("pick-cost") => pick_cost(&args[1..]),
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(Failure::Usage(
            "expected a command: get, backend, load, matrix or pick-cost".into(),
        )),
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
    let mut threads = 1usize;
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
            "--threads" => threads = number(value(&mut iter, arg)?, arg)?,
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    let listen = listen.ok_or_else(|| Failure::Usage("--listen ADDR is required".into()))?;
    let handle = backend::start(BackendOptions {
        listen,
        name,
        max_concurrent_streams: max_streams,
        threads,
        record_paths: false,
    })
    .map_err(|e| Failure::Run(format!("cannot listen on {listen}: {e}")))?;
    println!("listening on {}", handle.addr());
    loop {
        std::thread::park();
    }
}

fn number<T: std::str::FromStr>(raw: &str, flag: &str) -> Result<T, Failure> {
    raw.parse()
        .map_err(|_| Failure::Usage(format!("{flag} {raw:?} is not a valid number")))
}

fn seconds(raw: &str, flag: &str) -> Result<Duration, Failure> {
    let s: f64 = number(raw, flag)?;
    if !(s.is_finite() && s >= 0.0) {
        return Err(Failure::Usage(format!("{flag} needs a number of seconds")));
    }
    Ok(Duration::from_secs_f64(s))
}

fn load(args: &[String]) -> Result<(), Failure> {
    let mut iter = args.iter();
    let mut url = None;
    let mut options = LoadOptions::new("");
    let mut json: Option<PathBuf> = None;
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--connections" | "-c" => options.connections = number(value(&mut iter, arg)?, arg)?,
            "--streams" | "-s" => options.streams = number(value(&mut iter, arg)?, arg)?,
            "--duration" | "-d" => options.duration = Some(seconds(value(&mut iter, arg)?, arg)?),
            "--requests" | "-n" => options.requests = Some(number(value(&mut iter, arg)?, arg)?),
            "--rate" | "-r" => options.rate = Some(number(value(&mut iter, arg)?, arg)?),
            "--threads" | "-t" => options.threads = number(value(&mut iter, arg)?, arg)?,
            "--method" | "-X" => options.method = value(&mut iter, arg)?.clone(),
            "--body-size" => options.body_size = number(value(&mut iter, arg)?, arg)?,
            "--path" => options.paths.push(value(&mut iter, arg)?.clone()),
            "--header" | "-H" => {
                let raw = value(&mut iter, arg)?;
                let (name, v) = raw
                    .split_once(':')
                    .ok_or_else(|| Failure::Usage(format!("header {raw:?} needs 'name: value'")))?;
                options
                    .headers
                    .push((name.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            "--handshake-only" => options.handshake_only = true,
            "--idle-hold" => options.idle_hold = Some(seconds(value(&mut iter, arg)?, arg)?),
            "--warmup" => options.warmup = Some(seconds(value(&mut iter, arg)?, arg)?),
            "--timeout" => options.request_timeout = seconds(value(&mut iter, arg)?, arg)?,
            "--insecure" | "-k" => options.verify = Verify::Insecure,
            "--ca" => options.verify = Verify::Ca(PathBuf::from(value(&mut iter, arg)?)),
            "--json" => json = Some(PathBuf::from(value(&mut iter, arg)?)),
            other if !other.starts_with('-') && url.is_none() => url = Some(arg.clone()),
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    options.url = url.ok_or_else(|| Failure::Usage("load needs a URL".into()))?;
    let report = spooky_bench::load::run(&options).map_err(Failure::Run)?;
    print!("{}", spooky_bench::load::table(&report));
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Run(format!("encoding the report: {e}")))?;
        std::fs::write(&path, text)
            .map_err(|e| Failure::Run(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

fn matrix(args: &[String]) -> Result<(), Failure> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut options = MatrixOptions {
        spooky: PathBuf::new(),
        bench: std::env::current_exe()
            .map_err(|e| Failure::Run(format!("cannot find this executable: {e}")))?,
        out_dir: spooky_bench::matrix::default_out_dir(),
        duration: Duration::from_secs(10),
        proxy_cpu: cpus.saturating_sub(1),
        load_cpus: Vec::new(),
        idle_connections: 10_000,
        skip_caddy: false,
        command: std::iter::once("spooky-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--spooky" => options.spooky = PathBuf::from(value(&mut iter, arg)?),
            "--out" => options.out_dir = PathBuf::from(value(&mut iter, arg)?),
            "--duration" => options.duration = seconds(value(&mut iter, arg)?, arg)?,
            "--proxy-cpu" => options.proxy_cpu = number(value(&mut iter, arg)?, arg)?,
            "--idle-connections" => options.idle_connections = number(value(&mut iter, arg)?, arg)?,
            "--no-caddy" => options.skip_caddy = true,
            other => return Err(Failure::Usage(format!("unknown option {other:?}"))),
        }
    }
    if options.spooky.as_os_str().is_empty() {
        return Err(Failure::Usage("matrix needs --spooky PATH".into()));
    }
    if options.proxy_cpu >= cpus {
        return Err(Failure::Usage(format!(
            "--proxy-cpu {} is not one of this machine's {cpus} CPUs",
            options.proxy_cpu
        )));
    }
    options.load_cpus = (0..cpus).filter(|c| *c != options.proxy_cpu).collect();
    if options.load_cpus.is_empty() {
        // One CPU: everything shares it; the report says so in its notes.
        options.load_cpus.push(options.proxy_cpu);
    }
    let report = spooky_bench::matrix::run(&options).map_err(Failure::Run)?;
    println!("{report}");
    println!(
        "report written to {}",
        options.out_dir.join("report.md").display()
    );
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
