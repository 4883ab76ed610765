//! vhost-device-amdvi: serve the emulated AMD IOMMU with ATS endpoints to
//! QEMU over a vhost-user socket. See README.md and docs/protocol.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use vhost_device_amdvi::{start_backend, DaemonConfig, Options, StopSignal};

/// vhost-user backend: an emulated AMD IOMMUv2-like unit with ATS endpoints.
///
/// Carried by QEMU's vhost-user-gpio-pci (QEMU 10.0) or
/// vhost-user-test-device-pci (QEMU >= 10.2); the guest protocol is
/// docs/protocol.md. The daemon listens on the socket and QEMU connects.
/// Connections are served one after another, each with a freshly reset
/// device, until SIGINT or SIGTERM (statistics are written at exit).
#[derive(Parser, Debug)]
#[command(name = "vhost-device-amdvi", version)]
struct Args {
    /// Location of the vhost-user Unix domain socket (the daemon listens on it).
    #[arg(short = 's', long, value_name = "PATH")]
    socket_path: PathBuf,

    /// TOML configuration: endpoints, cache sizes, oracle, timeouts, limits,
    /// fault rules [default: built-in, as configs/default.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Write the device counters (summed over connections) as JSON to FILE
    /// after each connection and at exit.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,

    /// Also write --stats-json every MS milliseconds while the daemon runs.
    #[arg(long, value_name = "MS", requires = "stats_json",
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    stats_interval_ms: Option<u64>,

    /// Write JSON lines of commands, walks, ATS requests, invalidations,
    /// events, page requests and oracle findings to FILE.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// The validated configuration the daemon runs with.
struct Configuration {
    socket_path: PathBuf,
    device: DaemonConfig,
    options: Options,
}

impl TryFrom<Args> for Configuration {
    type Error = String;

    fn try_from(a: Args) -> Result<Self, String> {
        let device = match &a.config {
            Some(p) => DaemonConfig::from_file(p).map_err(|e| e.to_string())?,
            None => DaemonConfig::default(),
        };
        if a.socket_path.as_os_str().is_empty() {
            return Err("--socket-path: must not be empty".into());
        }
        Ok(Configuration {
            socket_path: a.socket_path,
            device,
            options: Options {
                stats_json: a.stats_json,
                trace: a.trace,
                stats_interval: a.stats_interval_ms.map(Duration::from_millis),
                signals: true,
            },
        })
    }
}

/// One line naming what is wrong with the command line, from the error's
/// context rather than its rendered text.
fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let get = |k| match e.get(k)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(v) => Some(v.join(", ")),
        ContextValue::StyledStr(s) => Some(s.to_string()),
        ContextValue::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let arg = get(ContextKind::InvalidArg);
    let value = get(ContextKind::InvalidValue);
    match (e.kind(), arg, value) {
        (ErrorKind::MissingRequiredArgument, Some(a), _) => {
            format!("missing required argument {a}")
        }
        (ErrorKind::UnknownArgument, Some(a), _) => format!("unexpected argument '{a}'"),
        (ErrorKind::InvalidValue, Some(a), Some(v)) if v.is_empty() => {
            format!("{a}: a value is required")
        }
        (ErrorKind::InvalidValue | ErrorKind::ValueValidation, Some(a), Some(v)) => {
            match std::error::Error::source(e) {
                Some(why) => format!("{a}: invalid value '{v}': {why}"),
                None => format!("{a}: invalid value '{v}'"),
            }
        }
        (ErrorKind::ArgumentConflict, Some(a), _) => match get(ContextKind::PriorArg) {
            Some(p) if p != a => format!("{a} cannot be used with {p}"),
            _ => format!("{a} given more than once"),
        },
        (kind, Some(a), _) => format!("{a}: {kind}"),
        (kind, None, _) => kind.to_string(),
    }
}

/// Block SIGINT and SIGTERM in this thread, and so in every thread started
/// from it: the daemon reads them from a signalfd in its event loop.
fn block_stop_signals() -> std::io::Result<()> {
    // SAFETY: a zeroed sigset_t initialised by sigemptyset; pthread_sigmask
    // with a valid set and no old-set pointer.
    let r = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if r != 0 {
        return Err(std::io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn main() -> ExitCode {
    if let Err(e) = block_stop_signals() {
        eprintln!("vhost-device-amdvi: error: cannot block SIGINT/SIGTERM: {e}");
        return ExitCode::FAILURE;
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprintln!(
                "vhost-device-amdvi: error: {} (see --help)",
                usage_error(&e)
            );
            return ExitCode::from(2);
        }
    };
    let level = match args.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let cfg = match Configuration::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vhost-device-amdvi: error: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = match StopSignal::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vhost-device-amdvi: error: eventfd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match start_backend(&cfg.device, &cfg.socket_path, &cfg.options, &stop) {
        Ok(t) => {
            log::info!(
                "stopped after {} connection(s), {} requests",
                t.connections,
                t.counters.get("requests").copied().unwrap_or(0)
            );
            // The socket was removed when the daemon stopped (only if it
            // was still its own).
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vhost-device-amdvi: error: {e}");
            ExitCode::FAILURE
        }
    }
}
