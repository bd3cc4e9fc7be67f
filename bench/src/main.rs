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
    /// The benchmark scenarios against Spooky, Caddy and the backend, with a report.
    Matrix(MatrixArgs),
    /// Nanoseconds per backend pick for each load-balancing type.
    PickCost(PickCostArgs),
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
    let mut client = H3Client::connect(ClientOptions {
        server,
        server_name: host.clone(),
        verify,
        timeout: Duration::from_secs(30),
    })
    .map_err(|e| Failure::Run(format!("connecting to {server}: {e}")))?;
    let body = args.data_file.map_or(Body::Empty, Body::File);
    let mut request = Request::new(&args.method, &path).body(body);
    if port != 443 {
        request.authority = Some(format!("{host}:{port}"));
    }
    request.headers = args.headers;
    let response = client
        .request(request)
        .map_err(|e| Failure::Run(format!("{} {}: {e}", args.method, args.url)))?;
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
    if args.include {
        write(&mut stdout, format!("{head}\n").as_bytes())?;
    } else {
        eprint!("{head}");
    }
    match args.output {
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

fn run_backend(args: BackendArgs) -> Result<(), Failure> {
    let listen = args.listen;
    let handle = backend::start(BackendOptions {
        listen,
        name: args.name,
        max_concurrent_streams: args.max_streams,
        threads: args.threads,
        record_paths: false,
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

fn matrix(args: MatrixArgs) -> Result<(), Failure> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxy_cpu = args.proxy_cpu.unwrap_or(cpus.saturating_sub(1));
    if proxy_cpu >= cpus {
        return Err(Failure::Usage(format!(
            "--proxy-cpu {proxy_cpu} is not one of this machine's {cpus} CPUs"
        )));
    }
    let mut load_cpus: Vec<usize> = (0..cpus).filter(|c| *c != proxy_cpu).collect();
    if load_cpus.is_empty() {
        // One CPU: everything shares it; the report says so in its notes.
        load_cpus.push(proxy_cpu);
    }
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
        command: std::iter::once("spooky-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
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
