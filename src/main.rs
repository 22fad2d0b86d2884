//! The `dropsync` command: parses arguments, sets up logging, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dropsync::catalog::{Catalog, ConvState, ms, now_ms};
use dropsync::config::{self, Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "dropsync",
    version,
    about = "Takes in call recordings and their metadata, forwards complete conversations to object storage"
)]
struct Cli {
    /// Configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "DROPSYNC_CONFIG",
        default_value = "/etc/dropsync/dropsync.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run,
    /// Validate the configuration; print every problem with its file and key (exit 2 if any).
    CheckConfig,
    /// Conversations per state and tenant, and recent failures.
    Status {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List conversations (the most recent first).
    Conversations {
        #[arg(long)]
        tenant: Option<String>,
        /// waiting, ready, forwarding, forwarded, rejected, expired or failed
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Re-queue failed and expired conversations.
    Retry {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        conversation: Option<String>,
    },
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Print each recording's duration as intake reads it, or why it is not readable audio.
    Probe {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write a sample recording to try dropsync with: a WAV file (8 kHz mono, a 440 Hz tone).
    SampleWav {
        file: PathBuf,
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
        seconds: u32,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant: writes tenants.d/ID.toml and prints how it connects.
    Add {
        /// The tenant id, also its SFTP user name.
        id: String,
        /// Its public key(s), OpenSSH format: the key's text ("ssh-ed25519 AAAA… ops@acme"),
        /// a file holding them, or - for standard input.
        #[arg(long)]
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run) {
        // `dropsync status | head` ends quietly when the pipe closes, as Unix tools do, instead
        // of panicking in println!. The daemon keeps SIGPIPE ignored: a peer that closes a
        // socket is an error to handle there, not a reason to die.
        // SAFETY: at start, before any thread exists; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Generated from the CLI definition; they need no configuration.
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "dropsync",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dropsync: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Probe { files } => return probe(files),
        Command::SampleWav { file, seconds } => return sample_wav(file, *seconds),
        _ => {}
    }
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("dropsync: configuration has {} problem(s)", e.problems.len());
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => {
            let mut problems: Vec<String> = config::check_runtime(&config).iter().map(ToString::to_string).collect();
            // Keys and their options, as the SFTP endpoint will read them.
            if let Err(e) = dropsync::ingress::sftp::auth::KeyStore::from_tenants(&config.tenants) {
                problems.push(format!("{}: {e}", config.file.display()));
            }
            for p in &problems {
                eprintln!("{p}");
            }
            if !problems.is_empty() {
                eprintln!("dropsync: configuration has {} problem(s)", problems.len());
                return ExitCode::from(2);
            }
            println!("{}: ok ({} tenants)", config.file.display(), config.tenants.len());
            Ok(())
        }
        Command::Run => run(config),
        Command::Status { tenant, json } => status(&config, tenant.as_deref(), json),
        Command::Conversations {
            tenant,
            state,
            json,
            limit,
        } => conversations(&config, tenant.as_deref(), state.as_deref(), json, limit),
        Command::Retry { tenant, conversation } => retry(&config, tenant.as_deref(), conversation.as_deref()),
        Command::Tenant(TenantCommand::Add { id, key }) => tenant_add(&config, &id, &key),
        Command::Completions { .. } | Command::Man | Command::Probe { .. } | Command::SampleWav { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dropsync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return std::future::pending().await;
            };
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            // A second signal means "now": in-flight work is replayed at the next start.
            tokio::spawn(async move {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
                tracing::warn!("second stop signal: exiting at once");
                std::process::exit(1);
            });
        };
        dropsync::app::run(config, shutdown).await
    });
    // A blocking step still running after the drain (a huge parse) is abandoned: the catalog
    // resumes it at the next start.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn open_catalog(config: &Config) -> anyhow::Result<Catalog> {
    if config.catalog.url.is_some() {
        return dropsync::app::open_catalog(config);
    }
    let db = config.db_path();
    if !db.exists() {
        anyhow::bail!(
            "no catalog at {} yet: has `dropsync run` started with this config?",
            db.display()
        );
    }
    Catalog::open_read_only(&db).with_context(|| format!("opening {}", db.display()))
}

fn status(config: &Config, tenant: Option<&str>, json: bool) -> anyhow::Result<()> {
    let view = dropsync::ops::status::view(config, &open_catalog(config)?, tenant)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    if view.tenants.is_empty() {
        println!("no conversations yet");
    }
    for (t, s) in &view.tenants {
        let states: Vec<String> = ConvState::ALL
            .iter()
            .filter_map(|st| s.states.get(st.as_str()).map(|n| format!("{}={n}", st.as_str())))
            .collect();
        println!(
            "{t}: {}  (files in drop folder: {}, orphans: {}, arrivals queued: {})",
            states.join(" "),
            s.files_waiting,
            s.orphans,
            s.intake_queued
        );
        if let Some(e) = &s.intake_last_error {
            println!(
                "    {} arrival(s) failed and wait for a retry, {} failed for good (`dropsync retry` queues them again); latest: {e}",
                s.intake_retrying, s.intake_failed
            );
        }
    }
    for (t, m) in &view.minutes {
        let allocation = m
            .minute_allocation
            .map_or("unlimited".to_owned(), |a| format!("of {a}"));
        println!(
            "{t}: {:.2} minutes forwarded in {} ({allocation})",
            m.minutes_used, m.month
        );
    }
    if view.nodes.len() > 1 {
        println!("\nNodes:");
        let now = now_ms();
        for n in &view.nodes {
            println!(
                "  {} (dropsync {}): last heartbeat {:.1} s ago",
                n.node_id,
                n.version,
                (now - n.heartbeat_at) as f64 / 1000.0
            );
        }
    }
    if !view.ftp_sources.is_empty() {
        println!("\nFTP sources:");
        for s in &view.ftp_sources {
            println!(
                "  {} {}: last poll {}, last good poll {}, {} files pulled ({}), {} listed, {} waiting",
                s.tenant,
                s.url,
                s.last_poll_at.as_deref().unwrap_or("never"),
                s.last_ok_at.as_deref().unwrap_or("never"),
                s.files_pulled,
                bytesize::ByteSize(s.bytes_pulled.max(0) as u64),
                s.remote_files,
                s.waiting
            );
            if let Some(e) = &s.last_error {
                println!(
                    "      last error ({}, {} poll(s) in a row): {e}",
                    s.last_error_at.as_deref().unwrap_or("?"),
                    s.errors_in_row
                );
            }
            if let Some(folders) = &s.listing_incomplete {
                println!("      listing incomplete (files it could not see are kept, not taken as gone): {folders}");
            }
        }
    }
    if !view.recent_failures.is_empty() {
        println!("\nrecent failures:");
        for f in &view.recent_failures {
            println!(
                "  {} {} [{}] attempts={} {}",
                f.tenant,
                f.conversation_id.as_deref().unwrap_or("-"),
                f.state,
                f.attempts,
                f.detail.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

fn conversations(
    config: &Config,
    tenant: Option<&str>,
    state: Option<&str>,
    json: bool,
    limit: usize,
) -> anyhow::Result<()> {
    let state = match state {
        None => None,
        Some(s) => Some(ConvState::parse(s).with_context(|| format!("unknown state {s:?}"))?),
    };
    let list = open_catalog(config)?.reports().conversations(tenant, state, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<24} {:<10} {:<28} {:>5}  detail",
        "tenant", "conversation", "state", "metadata file", "row"
    );
    for c in &list {
        let state = if c.updated && c.state == "forwarded" {
            "updated"
        } else {
            c.state.as_str()
        };
        println!(
            "{:<12} {:<24} {:<10} {:<28} {:>5}  {}",
            c.tenant,
            c.conversation_id.as_deref().unwrap_or("-"),
            state,
            c.metadata_file,
            c.row,
            c.detail.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn retry(config: &Config, tenant: Option<&str>, conversation: Option<&str>) -> anyhow::Result<()> {
    let catalog = match config.catalog.url {
        Some(_) => dropsync::app::open_catalog(config)?,
        None => Catalog::open_existing(&config.db_path())?,
    };
    let n = catalog
        .reports()
        .retry(tenant, conversation, now_ms(), ms(config.matching.grace))?;
    println!("re-queued {n} conversation(s)");
    Ok(())
}

fn tenant_add(config: &Config, id: &str, key: &str) -> anyhow::Result<()> {
    let key = dropsync::onboard::read_key_arg(key, std::io::stdin().lock())?;
    let added = dropsync::onboard::add_tenant(config, id, &key)?;
    println!("wrote {}", added.file.display());
    match (&added.host, added.port) {
        (Some(host), Some(port)) => {
            println!("sftp host:      {host}");
            println!("sftp port:      {port}");
        }
        _ => println!("sftp:           not enabled in this configuration ([sftp] is missing)"),
    }
    println!("username:       {}", added.username);
    println!("key:            {}", added.key_fingerprint);
    // The client checks the one key it negotiates; which one depends on the client.
    for fp in &added.host_key_fingerprints {
        println!("host key:       {fp}");
    }
    println!("reload the running daemon to let it in: systemctl reload dropsync (SIGHUP)");
    Ok(())
}

/// `dropsync sample-wav FILE`: needs no configuration. Written under a hidden temp name and
/// renamed, so that a drop folder sees one whole file arrive.
fn sample_wav(file: &std::path::Path, seconds: u32) -> ExitCode {
    match dropsync::fsutil::write_atomic(file, &dropsync::audio::sample_wav(seconds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dropsync: cannot write {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `dropsync probe FILE…`: needs no configuration; exits 1 if any file is not readable audio.
fn probe(files: &[PathBuf]) -> ExitCode {
    let mut all_audio = true;
    for path in files {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        let result = std::fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|mut f| dropsync::audio::duration_ms(&mut f, ext).map_err(|e| e.to_string()));
        match result {
            Ok(ms) => println!("{}\t{ms} ms", path.display()),
            Err(e) => {
                all_audio = false;
                println!("{}\t{e}", path.display());
            }
        }
    }
    if all_audio {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
