//! The `streamgate` command: run | validate | status | bench.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use streamgate::app::config::{self, LoadError};
use streamgate::telemetry::LogFormat;

/// Exit code for an invalid configuration (EX_CONFIG), so systemd can tell it from a crash.
/// Writes a line to standard error; a closed or failing stderr (a pipe whose reader went
/// away) is ignored: the exit code still tells what happened.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Writes a line (or, with `out_raw!`, text as it is) to standard output, ignoring a closed
/// pipe (`streamgate status | head`).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

macro_rules! out_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

mod commission;

const EXIT_CONFIG: u8 = streamgate::app::daemon::exit::CONFIG;

#[derive(Parser)]
#[command(
    name = "streamgate",
    version,
    about = "Edge gateway: industrial protocols -> durable prioritised queue -> Kinesis, Firehose, MQTT",
    after_help = "Examples:
  streamgate run                                   run the built-in demo (simulated line, samples on stdout)
  streamgate run --config /etc/streamgate/streamgate.toml
  streamgate validate --config /etc/streamgate/streamgate.toml
  streamgate status --config /etc/streamgate/streamgate.toml
  streamgate read --config /etc/streamgate/streamgate.toml --tag line_speed
  streamgate scan modbus 192.0.2.10 --unit 1 --area holding --range 0-199
  streamgate browse opcua opc.tcp://192.0.2.20:4840 --depth 4
  streamgate info s7 192.0.2.30 --rack 0 --slot 1 --read DB1.DBD0:REAL
  streamgate bench --seconds 10                    measure throughput, latency, memory, disk"
)]
struct Cli {
    /// Log level or filter (overrides RUST_LOG), e.g. "debug" or "info,streamgate=trace".
    #[arg(long, global = true, value_parser = streamgate::telemetry::check_log_filter)]
    log_level: Option<String>,
    /// Log format (overrides gateway.log_format).
    #[arg(long, global = true, value_parser = ["human", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT (without --config: the built-in demo).
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Refuse to start when the config file holds secrets and is readable by every user
        /// (without this flag: a warning).
        #[arg(long)]
        strict_permissions: bool,
    },
    /// Check a configuration file; lists every error with its key path and line.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        /// Fail when the config file holds secrets and is readable by every user.
        #[arg(long)]
        strict_permissions: bool,
        /// Do not check that the files the config names (certificates, keys) can be read:
        /// for validating on another machine than the gateway.
        #[arg(long)]
        no_file_checks: bool,
    },
    /// Read tags once from the devices of a config, without a queue or a running gateway
    /// (commissioning).
    Read {
        #[arg(long, short)]
        config: PathBuf,
        /// Only this source (by id).
        #[arg(long)]
        source: Option<String>,
        /// Only these tags (by name; repeat the option).
        #[arg(long)]
        tag: Vec<String>,
        /// Rounds of reads.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Pause between rounds, e.g. "500ms".
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// One JSON object per tag read instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Find which addresses of a device answer, before writing a config (commissioning).
    Scan {
        #[command(subcommand)]
        what: ScanWhat,
    },
    /// Show a server's address space with config-ready node ids (commissioning).
    Browse {
        #[command(subcommand)]
        what: BrowseWhat,
    },
    /// Ask a device who it is and test-read addresses (commissioning).
    Info {
        #[command(subcommand)]
        what: InfoWhat,
    },
    /// Show what is queued per stream and how each export is doing (without --config:
    /// /etc/streamgate/streamgate.toml where the package installed it, else the demo's).
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete a stream that is no longer in the config, with the records it still holds.
    /// The gateway must be stopped (the queue is locked while it runs).
    Purge {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Name of the stream to delete.
        #[arg(long)]
        stream: String,
    },
    /// Measure throughput, latency, memory and disk use on this machine (prints figures).
    #[cfg(feature = "bench")]
    Bench {
        /// Seconds per measuring phase.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Samples to queue for the backlog phase.
        #[arg(long, default_value_t = 1_000_000)]
        backlog: u64,
        /// First offered rate of the sustained phase (samples/s).
        #[arg(long, default_value_t = 100_000)]
        rate: u64,
        /// Step between offered rates.
        #[arg(long, default_value_t = 50_000)]
        rate_step: u64,
        /// Highest offered rate to try.
        #[arg(long, default_value_t = 400_000)]
        max_rate: u64,
        /// Durability of the benchmark stream: power_loss or process_crash.
        #[arg(long, default_value = "power_loss")]
        durability: String,
        /// Scratch directory (deleted afterwards).
        #[arg(long, default_value = "target/streamgate-bench")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ScanWhat {
    /// Which addresses of one area of a Modbus unit answer, and what they read as.
    #[cfg(feature = "modbus")]
    Modbus(commission::scan::ModbusArgs),
}

#[derive(Subcommand)]
enum BrowseWhat {
    /// An OPC UA server's nodes below a start node, as a tree.
    #[cfg(feature = "opcua")]
    Opcua(Box<commission::browse::OpcuaArgs>),
}

#[derive(Subcommand)]
enum InfoWhat {
    /// A Siemens S7 PLC: negotiated PDU size, module identification, test reads.
    #[cfg(feature = "s7")]
    S7(commission::info::S7Args),
}

fn main() -> ExitCode {
    streamgate::runtime::one_malloc_arena();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            say!("streamgate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    streamgate::config::units::parse_duration(text).map_err(|e| e.to_string())
}

fn log_format(cli: &Cli, configured: LogFormat) -> LogFormat {
    match cli.log_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some(_) => LogFormat::Human,
        None => configured,
    }
}

/// The built-in default: a simulated line, samples on stdout and in files, no cloud account.
const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

fn load_or_demo(path: Option<&std::path::Path>) -> Result<config::Config, ExitCode> {
    match path {
        Some(p) => load(p),
        None => config::parse(DEMO_CONFIG).map_err(|errors| {
            for e in errors {
                say!("built-in demo config: {e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }),
    }
}

/// Where the Debian package installs the config (cross/debian): `status` and `purge` read it
/// when no --config is given, so that `sudo streamgate status` on a gateway shows its queue.
const SYSTEM_CONFIG: &str = "/etc/streamgate/streamgate.toml";

/// The config for commands that inspect an installed gateway: --config, else the package's
/// config when there is one, else the demo's.
fn load_installed_or_demo(path: Option<&std::path::Path>) -> Result<config::Config, ExitCode> {
    if path.is_some() {
        return load_or_demo(path);
    }
    let system = std::path::Path::new(SYSTEM_CONFIG);
    // Err: /etc/streamgate (0750) is not searchable by this user; reading says so.
    match system.try_exists() {
        Ok(false) => load_or_demo(None),
        Ok(true) | Err(_) => load_checked(system, false),
    }
}

fn load(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    load_checked(path, true)
}

fn load_checked(path: &std::path::Path, check_files: bool) -> Result<config::Config, ExitCode> {
    match config::load_checked(path, check_files) {
        Ok(c) => Ok(c),
        Err(e @ LoadError::Invalid { .. }) => {
            say!("{e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(e @ LoadError::Read { .. }) if e.is_permission_denied() => {
            say!(
                "streamgate: {e} (run it as root or as a member of the file's group: sudo streamgate ...)"
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(e) => {
            say!("streamgate: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Validate {
            config,
            strict_permissions,
            no_file_checks,
        } => {
            let c = match load_checked(config, !no_file_checks) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if let Err(exposed) = config::check_secret_permissions(config, &c) {
                if *strict_permissions {
                    say!("error: {exposed}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
                say!("warning: {exposed}");
            }
            for w in &c.warnings {
                say!("warning: {w}");
            }
            let exports: usize = c.streams.iter().map(|s| s.exports.len()).sum();
            out!(
                "{} is valid: {} stream(s), {} export(s), {} source(s)",
                config.display(),
                c.streams.len(),
                exports,
                c.sources.len()
            );
            for s in &c.sources {
                out!(
                    "  source {} ({}): {}",
                    s.id,
                    s.kind.kind_name(),
                    s.kind.summary()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge { config, stream } => {
            let c = match load_installed_or_demo(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if c.stream_index(stream).is_some() {
                say!(
                    "error: stream `{stream}` is in the config; remove it from the config first (its records are only deleted once it is not configured)"
                );
                return Ok(ExitCode::from(2));
            }
            match streamgate::queue::purge_stream(&c.gateway.data_dir, stream)? {
                Some(p) => out!(
                    "purged stream `{stream}`: {} record(s), {} byte(s) of payload deleted from {}",
                    p.records,
                    p.bytes,
                    c.gateway.data_dir.display()
                ),
                None => {
                    say!(
                        "error: the queue in {} has no stream `{stream}`",
                        c.gateway.data_dir.display()
                    );
                    return Ok(ExitCode::from(2));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Read {
            config,
            source,
            tag,
            count,
            interval,
            json,
        } => {
            let c = match load(config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            commission::read::tags(&c, source.as_deref(), tag, *count, *interval, *json)
        }
        Command::Scan { what } => match what {
            #[cfg(feature = "modbus")]
            ScanWhat::Modbus(args) => commission::scan::modbus(args),
            #[cfg(not(feature = "modbus"))]
            _ => unreachable!("no scan target is built"),
        },
        Command::Browse { what } => match what {
            #[cfg(feature = "opcua")]
            BrowseWhat::Opcua(args) => commission::browse::opcua(args),
            #[cfg(not(feature = "opcua"))]
            _ => unreachable!("no browse target is built"),
        },
        Command::Info { what } => match what {
            #[cfg(feature = "s7")]
            InfoWhat::S7(args) => commission::info::s7(args),
            #[cfg(not(feature = "s7"))]
            _ => unreachable!("no info target is built"),
        },
        Command::Status { config, json } => {
            let c = match load_installed_or_demo(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let report = streamgate::status::read(&c.gateway.data_dir)?;
            if *json {
                out!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                out_raw!("{}", streamgate::status::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            strict_permissions,
        } => {
            let c = match load_or_demo(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let exposed = config
                .as_deref()
                .and_then(|p| config::check_secret_permissions(p, &c).err());
            if let Some(exposed) = &exposed
                && *strict_permissions
            {
                say!("error: {exposed} (refused because of --strict-permissions)");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
            let demo = config.is_none();
            streamgate::telemetry::init(
                log_format(&cli, c.gateway.log_format),
                cli.log_level.as_deref(),
            );
            if let Some(exposed) = exposed {
                tracing::warn!("{exposed} (start with --strict-permissions to refuse)");
            }
            if demo {
                tracing::info!(
                    "no --config given: running the built-in demo (config/demo.toml): a simulated line, samples on stdout"
                );
            }
            let rt = streamgate::runtime::build().context("cannot start the async runtime")?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
                spawn_signal_handler(shutdown.clone(), reload_tx, config.is_some())?;
                let report = Some(c.gateway.report_interval);
                let reload = config.clone().map(|path| streamgate::app::ReloadRequests {
                    path,
                    requests: reload_rx,
                });
                Ok::<_, anyhow::Error>(streamgate::app::run(c, shutdown, report, reload).await)
            })?
            .map(|()| ExitCode::SUCCESS)
            .or_else(|e| {
                let code = e.exit_code();
                let e = anyhow::Error::from(e).context("the gateway stopped with an error");
                say!("streamgate: error: {e:#}");
                Ok(ExitCode::from(code))
            })
        }
        #[cfg(feature = "bench")]
        Command::Bench {
            seconds,
            backlog,
            rate,
            rate_step,
            max_rate,
            durability,
            dir,
        } => {
            streamgate::telemetry::init(
                log_format(&cli, LogFormat::Human),
                Some(cli.log_level.as_deref().unwrap_or("warn")),
            );
            let rt = streamgate::runtime::build().context("cannot start the async runtime")?;
            rt.block_on(streamgate::bench::run(streamgate::bench::BenchOptions {
                dir: dir.clone(),
                seconds: *seconds,
                backlog: *backlog,
                rate: *rate,
                rate_step: *rate_step,
                max_rate: *max_rate,
                durability: durability.clone(),
            }))
            .context("benchmark failed")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn spawn_signal_handler(
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
    has_file: bool,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if !has_file {
                tracing::warn!(
                    "SIGHUP received, but the built-in demo has no config file to reload; start with --config FILE"
                );
                continue;
            }
            tracing::info!("SIGHUP received");
            // A reload already waiting covers this one too.
            let _ = reload.try_send(());
        }
    });
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.cancel();
        // A second signal while shutting down: stop at once (committed data is safe).
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::warn!("second signal: exiting immediately; queued records are safe on disk");
        std::process::exit(130);
    });
    Ok(())
}
