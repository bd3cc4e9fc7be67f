//! `spooky-bench`: the HTTP/3 client and HTTP/2 test backend on the command line.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use spooky_bench::backend::{self, BackendOptions};
use spooky_bench::client::{Body, ClientOptions, H3Client, Request, Verify};
use spooky_bench::load::{parse_header, parse_seconds, LoadOptions};
use spooky_bench::matrix::MatrixOptions;
use spooky_bench::soak::SoakOptions;

/// Spooky's HTTP/3 client, load generator, test backend and benchmark matrix.
#[derive(clap::Parser)]
#[command(name = "spooky-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// One HTTP/3 request; the body goes to stdout (or --output), the response head to stderr.
    Get(GetArgs),
    /// The HTTP/2 cleartext test backend: /bytes/N, /echo, /_stats (its CPU seconds) and more.
    Backend(BackendArgs),
    /// HTTP/3 load (https:// URLs) or HTTP/2 cleartext load (http:// URLs).
    Load(LoadArgs),
    /// The benchmark scenarios against Spooky, HAProxy, nginx, Caddy and the backend, with a
    /// report.
    Matrix(MatrixArgs),
    /// Nanoseconds per backend pick for each load-balancing type.
    PickCost(PickCostArgs),
    /// Hours of mixed load, connection churn, a backend killed and restored and a reload each
    /// period, recording Spooky's RSS, connections and errors (CSV, PNG chart, summary).
    Soak(SoakArgs),
}

/// How the server's certificate is checked (one of the two is required where a URL is https).
#[derive(clap::Args)]
#[group(required = false, multiple = false)]
struct VerifyArgs {
    /// Trust certificates signed by the CA in this PEM file.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Accept any certificate (for trying things out only).
    #[arg(short = 'k', long)]
    insecure: bool,
}

impl VerifyArgs {
    fn verify(&self) -> Option<Verify> {
        match (&self.ca, self.insecure) {
            (Some(ca), _) => Some(Verify::Ca(ca.clone())),
            (None, true) => Some(Verify::Insecure),
            (None, false) => None,
        }
    }
}

#[derive(clap::Args)]
struct GetArgs {
    /// https://HOST[:PORT]/PATH
    url: String,
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// Send this file as the request body.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    #[command(flatten)]
    verify: VerifyArgs,
    /// Write the body to this file instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the response head on stdout before the body.
    #[arg(short, long)]
    include: bool,
    /// HTTP/2 over TLS on TCP (what a browser uses first) instead of HTTP/3.
    #[arg(long)]
    tcp: bool,
}

#[derive(clap::Args)]
struct BackendArgs {
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// Echoed in the `x-backend` response header.
    #[arg(long, default_value = "backend")]
    name: String,
    /// SETTINGS_MAX_CONCURRENT_STREAMS to advertise.
    #[arg(long, value_name = "N")]
    max_streams: Option<u32>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Speak HTTP/1.1 (keep-alive, chunked) instead of cleartext HTTP/2.
    #[arg(long)]
    http1: bool,
}

#[derive(clap::Args)]
struct LoadArgs {
    #[command(flatten)]
    options: LoadOptions,
    #[command(flatten)]
    verify: VerifyArgs,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct MatrixArgs {
    /// The spooky executable under test.
    #[arg(long, value_name = "PATH")]
    spooky: PathBuf,
    #[arg(long, value_name = "DIR", default_value_os_t = spooky_bench::matrix::default_out_dir())]
    out: PathBuf,
    /// Seconds per timed scenario.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    duration: Duration,
    /// The CPU the proxy under test is pinned to (default: the last).
    #[arg(long, value_name = "N")]
    proxy_cpu: Option<usize>,
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    idle_connections: usize,
    /// Leave Caddy out even when it is installed.
    #[arg(long)]
    no_caddy: bool,
    /// An HAProxy 3.0 executable with QUIC (bench/peers.sh builds one): adds HAProxy rows.
    #[arg(long, value_name = "PATH")]
    haproxy: Option<PathBuf>,
    /// An nginx 1.26 executable with HTTP/3 (bench/peers.sh builds one): adds nginx rows.
    #[arg(long, value_name = "PATH")]
    nginx: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SoakArgs {
    /// The spooky executable under test.
    #[arg(long, value_name = "PATH")]
    spooky: PathBuf,
    #[arg(long, value_name = "DIR", default_value_os_t = spooky_bench::soak::default_out_dir())]
    out: PathBuf,
    /// Seconds to run.
    #[arg(long, value_name = "S", default_value = "3600", value_parser = parse_seconds)]
    duration: Duration,
    /// Seconds between backend kills, and between reloads.
    #[arg(long, value_name = "S", default_value = "60", value_parser = parse_seconds)]
    period: Duration,
    /// Requests per second offered, across all clients.
    #[arg(long, value_name = "R", default_value_t = 400.0)]
    rate: f64,
    /// The CPU Spooky is pinned to (default: the last).
    #[arg(long, value_name = "N")]
    proxy_cpu: Option<usize>,
}

#[derive(clap::Args)]
struct PickCostArgs {
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    backends: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // Usage errors print clap's message and exit with status 2.
    let cli = <Cli as clap::Parser>::parse();
    let result = match cli.command {
        Command::Get(args) => get(args),
        Command::Backend(args) => run_backend(args),
        Command::Load(args) => load(args),
        Command::Matrix(args) => matrix(args),
        Command::PickCost(args) => pick_cost(args),
        Command::Soak(args) => soak(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("spooky-bench: {message} (see --help)");
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

fn get(args: GetArgs) -> Result<(), Failure> {
    let (host, port, path) = parse_url(&args.url)?;
    let verify = args
        .verify
        .verify()
        .ok_or_else(|| Failure::Usage("give --ca FILE (or --insecure)".into()))?;
    let server = resolve(&host, port)?;
    if args.tcp {
        let response = get_over_tcp(&args, server, &host, port, &path, &verify)?;
        return print_response(&args, &response, "HTTP/2");
    }
    let mut client = H3Client::connect(ClientOptions {
        server,
        server_name: host.clone(),
        verify,
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| Failure::Run(format!("connecting to {server}: {e}")))?;
    let body = args.data_file.clone().map_or(Body::Empty, Body::File);
    let mut request = Request::new(&args.method, &path).body(body);
    if port != 443 {
        request.authority = Some(format!("{host}:{port}"));
    }
    request.headers = args.headers.clone();
    let response = client
        .request(request)
        .map_err(|e| Failure::Run(format!("{} {}: {e}", args.method, args.url)))?;
    let response = (
        response.status,
        response.headers,
        response.body,
        response.trailers,
    );
    print_response(&args, &response, "HTTP/3")?;
    client.close();
    Ok(())
}

type Fields = Vec<(String, String)>;

fn fields(map: &http::HeaderMap) -> Fields {
    map.iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// One request over HTTP/2 on TLS (ALPN `h2`), on a current-thread tokio runtime.
fn get_over_tcp(
    args: &GetArgs,
    server: std::net::SocketAddr,
    host: &str,
    port: u16,
    path: &str,
    verify: &spooky_bench::client::Verify,
) -> Result<(u16, Fields, Vec<u8>, Fields), Failure> {
    let run = |e: String| Failure::Run(format!("{} {}: {e}", args.method, args.url));
    let upload = match &args.data_file {
        Some(file) => std::fs::read(file)
            .map_err(|e| Failure::Run(format!("reading {}: {e}", file.display())))?,
        None => Vec::new(),
    };
    let config = spooky_bench::load::tls_client_config(verify).map_err(Failure::Usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| run(e.to_string()))?;
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| run(format!("connecting to {server}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls_pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| Failure::Usage(format!("{host}: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| run(format!("TLS handshake with {server}: {e}")))?;
        let (sender, connection) = h2::client::handshake(tls)
            .await
            .map_err(|e| run(e.to_string()))?;
        tokio::spawn(connection);
        let mut sender = sender.ready().await.map_err(|e| run(e.to_string()))?;
        let mut request = http::Request::builder()
            .method(args.method.as_str())
            .uri(format!("https://{host}:{port}{path}"));
        for (name, value) in &args.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(())
            .map_err(|e| Failure::Usage(e.to_string()))?;
        let (response, mut send) = sender
            .send_request(request, upload.is_empty())
            .map_err(|e| run(e.to_string()))?;
        if !upload.is_empty() {
            send.send_data(bytes::Bytes::from(upload), true)
                .map_err(|e| run(e.to_string()))?;
        }
        let response = response.await.map_err(|e| run(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = fields(response.headers());
        let mut received = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = received.data().await {
            let chunk = chunk.map_err(|e| run(e.to_string()))?;
            let _ = received.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = received.trailers().await.map_err(|e| run(e.to_string()))?;
        Ok((
            status,
            headers,
            body,
            trailers.as_ref().map(fields).unwrap_or_default(),
        ))
    })
}

/// Writes the head (with `--include`, else to stderr), the body and any trailers.
fn print_response(
    args: &GetArgs,
    (status, headers, body, trailers): &(u16, Fields, Vec<u8>, Fields),
    protocol: &str,
) -> Result<(), Failure> {
    let mut head = format!("{protocol} {status}\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\n"));
    }
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let write = |out: &mut dyn Write, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|e| Failure::Run(format!("writing output: {e}")))
    };
    if args.include {
        write(&mut stdout, format!("{head}\n").as_bytes())?;
    } else {
        eprint!("{head}");
    }
    match &args.output {
        Some(path) => std::fs::write(path, body)
            .map_err(|e| Failure::Run(format!("writing {}: {e}", path.display())))?,
        None => write(&mut stdout, body)?,
    }
    for (name, value) in trailers {
        eprintln!("trailer {name}: {value}");
    }
    Ok(())
}

fn run_backend(args: BackendArgs) -> Result<(), Failure> {
    let listen = args.listen;
    let handle = backend::start(BackendOptions {
        listen,
        name: args.name,
        max_concurrent_streams: args.max_streams,
        threads: args.threads,
        record_paths: false,
        http1: args.http1,
        tls: None,
    })
    .map_err(|e| Failure::Run(format!("cannot listen on {listen}: {e}")))?;
    println!("listening on {}", handle.addr());
    loop {
        std::thread::park();
    }
}

fn load(args: LoadArgs) -> Result<(), Failure> {
    let mut options = args.options;
    if let Some(verify) = args.verify.verify() {
        options.verify = verify;
    }
    let report = spooky_bench::load::run(&options).map_err(|e| Failure::Run(e.to_string()))?;
    print!("{}", spooky_bench::load::table(&report));
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Run(format!("encoding the report: {e}")))?;
        std::fs::write(&path, text)
            .map_err(|e| Failure::Run(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The proxy's CPU (`--proxy-cpu`, else the last) and the CPUs left for the load generator and
/// the backends.
fn split_cpus(proxy_cpu: Option<usize>) -> Result<(usize, Vec<usize>), Failure> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy_cpu = proxy_cpu.unwrap_or(cpus.saturating_sub(1));
    if proxy_cpu >= cpus {
        return Err(Failure::Usage(format!(
            "--proxy-cpu {proxy_cpu} is not one of this machine's {cpus} CPUs"
        )));
    }
    let mut load_cpus: Vec<usize> = (0..cpus).filter(|c| *c != proxy_cpu).collect();
    if load_cpus.is_empty() {
        // One CPU: everything shares it; the matrix report says so in its notes.
        load_cpus.push(proxy_cpu);
    }
    Ok((proxy_cpu, load_cpus))
}

/// This invocation as typed, for the reports.
fn command_line() -> String {
    std::iter::once("spooky-bench".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

fn soak(args: SoakArgs) -> Result<(), Failure> {
    let (proxy_cpu, load_cpus) = split_cpus(args.proxy_cpu)?;
    if !(args.rate.is_finite() && args.rate >= 1.0) {
        return Err(Failure::Usage(format!(
            "--rate {}: give at least 1 request per second",
            args.rate
        )));
    }
    if args.period < Duration::from_secs(6) {
        return Err(Failure::Usage(
            "--period must be at least 6 s (a backend is down for a sixth of it)".into(),
        ));
    }
    let options = SoakOptions {
        spooky: args.spooky,
        bench: std::env::current_exe()
            .map_err(|e| Failure::Run(format!("cannot find this executable: {e}")))?,
        out_dir: args.out,
        duration: args.duration,
        period: args.period,
        rate: args.rate,
        proxy_cpu,
        load_cpus,
        command: command_line(),
    };
    let summary = spooky_bench::soak::run(&options).map_err(Failure::Run)?;
    println!("{summary}");
    println!(
        "chart, samples and summary written to {}",
        options.out_dir.display()
    );
    Ok(())
}

fn matrix(args: MatrixArgs) -> Result<(), Failure> {
    let (proxy_cpu, load_cpus) = split_cpus(args.proxy_cpu)?;
    let options = MatrixOptions {
        spooky: args.spooky,
        bench: std::env::current_exe()
            .map_err(|e| Failure::Run(format!("cannot find this executable: {e}")))?,
        out_dir: args.out,
        duration: args.duration,
        proxy_cpu,
        load_cpus,
        idle_connections: args.idle_connections,
        skip_caddy: args.no_caddy,
        haproxy: args.haproxy,
        nginx: args.nginx,
        command: command_line(),
    };
    let report = spooky_bench::matrix::run(&options).map_err(|e| Failure::Run(e.to_string()))?;
    println!("{report}");
    println!(
        "report written to {}",
        options.out_dir.join("report.md").display()
    );
    Ok(())
}

fn pick_cost(args: PickCostArgs) -> Result<(), Failure> {
    let backends = args.backends as usize;
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
