//! The `kpiwatch` binary: parse the command line, load config and models, start telemetry,
//! and hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kpiwatch::kpi::{Direction, Sensitivity};
use kpiwatch::{app, check, config, demo, detect, kpi, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "kpiwatch",
    version,
    about = "Catches business incidents that infrastructure monitoring misses."
)]
struct Cli {
    /// Config file (default: ./kpiwatch.toml if present).
    #[arg(long, global = true, env = "KPIWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// Folder of KPI models (`<id>/model.toml` + `<id>/query.sql`).
    #[arg(long, global = true, default_value = "models", env = "KPIWATCH_MODELS")]
    models: PathBuf,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: scheduler + HTTP API.
    Serve,
    /// The whole loop on a bundled demo shop database, offline, in a few minutes.
    Demo(demo::DemoOptions),
    /// Validate the config and every model, and run each query once against its source.
    Check {
        /// Buckets to read per KPI.
        #[arg(long, default_value_t = 12)]
        buckets: i64,
    },
    /// How many alerts would a setting have fired over the last weeks, and which?
    Backtest {
        /// The KPI's id.
        kpi: String,
        /// Weeks to report on.
        #[arg(long, default_value_t = 4)]
        weeks: u32,
        /// low | medium | high, or a number in (0, 1) (default: the model's).
        #[arg(long)]
        sensitivity: Option<Sensitivity>,
        /// down | up | both (default: the model's).
        #[arg(long)]
        direction: Option<Direction>,
        /// Minimum volume (default: the model's).
        #[arg(long)]
        min_volume: Option<f64>,
        /// End of the period, RFC 3339 (default: now).
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        /// An alert budget (`1/week`, `2/day`): the most sensitive setting that fires at most
        /// that often over the weeks replayed, and what the next more sensitive one fires.
        #[arg(long)]
        budget: Option<kpiwatch::tuning::Budget>,
        /// Inject an incident into the history and report which settings catch it and how
        /// fast: `-20%:30m@busy` (size:duration@busy|quiet), repeatable; `standard` for
        /// −5/−10/−20 % for 30 minutes at the busy and at the quiet hour.
        #[arg(long, value_name = "INCIDENT", allow_hyphen_values = true)]
        inject: Vec<String>,
    },
    /// API tokens: create (stored hashed, shown once), list, revoke; or print config lines.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Render the daily digest without sending it (from the state store).
    Digest {
        /// Render to a file instead of sending (the only mode for now).
        #[arg(long)]
        preview: bool,
        /// The local day it covers (default: yesterday in the recipient's timezone).
        #[arg(long)]
        date: Option<chrono::NaiveDate>,
        /// Whose digest (default: every KPI).
        #[arg(long)]
        recipient: Option<String>,
        /// Where to write the HTML; charts are written beside it as PNG files.
        #[arg(long, default_value = "digest.html")]
        out: PathBuf,
    },
    /// Write stored buckets with verdicts, incidents and feedback to Parquet or CSV, one file
    /// per KPI (needs the `export` cargo feature; see docs/EXPORT.md for the columns).
    Export {
        /// One KPI.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        kpi: Option<String>,
        /// Every KPI of the models.
        #[arg(long)]
        all: bool,
        /// Start, RFC 3339 (default: 28 days before `--to`).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// End, exclusive, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// parquet | csv.
        #[arg(long, default_value = "parquet")]
        format: kpiwatch::export::Format,
        /// Folder for the files (`<kpi>.parquet` / `<kpi>.csv`), created if missing.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the detector over a CSV, online (row t uses only rows up to t).
    Detect {
        /// Input CSV: `timestamp,value` or `timestamp,numerator,denominator`.
        #[arg(long)]
        input: PathBuf,
        /// Output CSV (default: stdout).
        #[arg(long)]
        output: Option<PathBuf>,
        /// auto | count | ratio | gauge. `auto`: ratio for numerator/denominator columns,
        /// otherwise count while the values look like event counts, else gauge.
        #[arg(long, default_value = "auto")]
        kind: detect::KindChoice,
        /// Bucket length, e.g. 5m (default: inferred from the timestamps).
        #[arg(long)]
        interval: Option<String>,
        /// down | up | both.
        #[arg(long, default_value = "both")]
        direction: Direction,
        /// low | medium | high, or a number in (0, 1).
        #[arg(long, default_value = "medium")]
        sensitivity: Sensitivity,
        /// Write JSON lines with the full explanation of each bucket instead of CSV.
        #[arg(long)]
        explain: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token in the state store: printed once, only its SHA-256 is kept.
    Create {
        /// Who will hold it (recorded in the audit log).
        #[arg(long)]
        name: String,
        /// viewer | editor | admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Every token in the state store: id, name, role, creator, last use, revoked.
    List,
    /// Revoke a token by id: requests with it are refused from now on.
    Revoke {
        /// The token's id (from `token list`).
        id: i64,
    },
    /// Make a token for the config file instead: prints it once and the `[[api.tokens]]` lines.
    Config {
        /// Who will hold it.
        #[arg(long)]
        name: String,
        /// viewer | editor | admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
}

/// Print `detect`'s warnings to stderr: the first few of each kind, then how many more.
fn report_warnings(warnings: &[detect::Warning]) {
    const PER_KIND: usize = 5;
    let mut shown: std::collections::HashMap<detect::WarningKind, usize> = Default::default();
    for w in warnings {
        let n = shown.entry(w.kind).or_default();
        *n += 1;
        if *n <= PER_KIND {
            eprintln!("kpiwatch detect: warning: {w}");
        }
    }
    for (kind, n) in shown {
        if n > PER_KIND {
            eprintln!(
                "kpiwatch detect: warning: {} more like the above ({kind:?})",
                n - PER_KIND
            );
        }
    }
}

/// glibc's allocator, tuned for a service that keeps thousands of small detectors and
/// now and then replays weeks of history into large short-lived vectors. By default glibc
/// raises its mmap threshold each time such a vector is freed (up to 32 MiB), so later ones
/// come from the heap and leave it fragmented, and it makes up to 8 arenas per core: measured
/// with the load bench (1,000 one-minute KPIs, 28-day backfill), peak RSS 220 MiB by default
/// and 163 MiB with these two settings, the backfill as fast. An environment's own
/// `MALLOC_*` settings are applied at startup and are overridden here only where unset.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    let unset = |name: &str| std::env::var_os(name).is_none();
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any other
    // thread exists.
    unsafe {
        if unset("MALLOC_MMAP_THRESHOLD_") {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
        if unset("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Detect {
            input,
            output,
            kind,
            interval,
            direction,
            sensitivity,
            explain,
        } => {
            let opts = detect::DetectOptions {
                input,
                output,
                kind,
                interval,
                direction,
                sensitivity,
                explain,
            };
            match detect::run(&opts) {
                Ok(summary) => {
                    report_warnings(&summary.warnings);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kpiwatch detect: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Token(TokenCommand::Config { name, role }) => {
            if !["viewer", "editor", "admin"].contains(&role.as_str()) {
                eprintln!("kpiwatch token: role must be viewer, editor or admin");
                return ExitCode::from(2);
            }
            let (token, hash) = kpiwatch::api::new_token();
            println!("token (shown once; give it to {name}): {token}\n");
            println!("[[api.tokens]]\nname = {name:?}\nrole = {role:?}\nsha256 = {hash:?}");
            ExitCode::SUCCESS
        }
        command => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kpiwatch: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run_async(cli.config, cli.models, cli.log_json, command))
        }
    }
}

async fn run_async(config_path: Option<PathBuf>, models: PathBuf, json: bool, command: Command) -> ExitCode {
    match command {
        Command::Demo(opts) => {
            telemetry::init("info,sqlx=warn", json);
            let env: Vec<(String, String)> = std::env::vars().collect();
            report(demo::run(opts, config_path.as_deref(), &env).await)
        }
        Command::Token(command) => {
            telemetry::init("warn,sqlx=error", json);
            let settings = match config::load(config_path.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kpiwatch: {e}");
                    return ExitCode::from(2);
                }
            };
            match run_token(&settings, command).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("kpiwatch token: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            telemetry::init("info,sqlx=warn", json);
            let loaded = load(config_path.as_deref(), &models);
            match loaded {
                Ok((settings, specs)) => report(app::run(settings, specs).await),
                Err(code) => code,
            }
        }
        Command::Check { buckets } => {
            telemetry::init("warn,sqlx=error", json);
            let (settings, specs) = match load(config_path.as_deref(), &models) {
                Ok(ok) => ok,
                Err(code) => return code,
            };
            println!("config: ok; {} model(s) in {}: ok", specs.len(), models.display());
            let rows = check::run_queries(&settings, &specs, chrono::Utc::now(), buckets).await;
            print!("{}", check::render(&rows));
            if rows.iter().all(|r| r.status != "FAIL") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Digest {
            preview,
            date,
            recipient,
            out,
        } => {
            telemetry::init("warn,sqlx=error", json);
            if !preview {
                eprintln!("kpiwatch digest: only --preview is supported; the service sends digests itself");
                return ExitCode::from(2);
            }
            let (settings, specs) = match load(config_path.as_deref(), &models) {
                Ok(ok) => ok,
                Err(code) => return code,
            };
            report(preview_digest(&settings, &specs, date, recipient.as_deref(), &out).await)
        }
        Command::Backtest {
            kpi,
            weeks,
            sensitivity,
            direction,
            min_volume,
            until,
            budget,
            inject,
        } => {
            telemetry::init("warn,sqlx=error", json);
            let (settings, specs) = match load(config_path.as_deref(), &models) {
                Ok(ok) => ok,
                Err(code) => return code,
            };
            let Some(spec) = specs.iter().find(|s| s.id.as_str() == kpi) else {
                eprintln!("kpiwatch backtest: no KPI {kpi:?} in {}", models.display());
                return ExitCode::from(2);
            };
            let opts = kpiwatch::backtest::BacktestOptions {
                weeks: weeks.clamp(1, 52),
                sensitivity: sensitivity.unwrap_or(spec.sensitivity),
                direction,
                min_volume,
            };
            let until = until.unwrap_or_else(chrono::Utc::now);
            let mut incidents = Vec::new();
            for i in &inject {
                if i == "standard" {
                    incidents.extend(kpiwatch::tuning::Incident::standard(spec));
                    continue;
                }
                match i.parse::<kpiwatch::tuning::Incident>() {
                    Ok(incident) => incidents.push(incident),
                    Err(e) => {
                        eprintln!("kpiwatch backtest: --inject: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            report(run_backtest(&settings, spec, opts, until, (budget, &incidents)).await)
        }
        Command::Export {
            kpi,
            all,
            from,
            to,
            format,
            out,
        } => {
            telemetry::init("warn,sqlx=error", json);
            let (settings, specs) = match load(config_path.as_deref(), &models) {
                Ok(ok) => ok,
                Err(code) => return code,
            };
            let chosen: Vec<&kpi::KpiSpec> = match (&kpi, all) {
                (Some(id), _) => match specs.iter().find(|s| s.id.as_str() == id) {
                    Some(spec) => vec![spec],
                    None => {
                        eprintln!("kpiwatch export: no KPI {id:?} in {}", models.display());
                        return ExitCode::from(2);
                    }
                },
                (None, _) => specs.iter().collect(),
            };
            let to = to.unwrap_or_else(chrono::Utc::now);
            let from = from.unwrap_or(to - chrono::Duration::days(28));
            if from >= to {
                eprintln!("kpiwatch export: --from must be before --to");
                return ExitCode::from(2);
            }
            report(run_export(&settings, &chosen, (from, to), format, &out).await)
        }
        Command::Detect { .. } => ExitCode::FAILURE,
    }
}

/// `kpiwatch token create|list|revoke` on the state store (audited as `cli`).
async fn run_token(settings: &config::Settings, command: TokenCommand) -> anyhow::Result<ExitCode> {
    use secrecy::ExposeSecret;
    let store = kpiwatch::store::Store::connect(settings.state.url.expose_secret()).await?;
    let actor = "cli";
    let code = match command {
        TokenCommand::Create { name, role } => {
            if !["viewer", "editor", "admin"].contains(&role.as_str()) {
                eprintln!("kpiwatch token: role must be viewer, editor or admin");
                return Ok(ExitCode::from(2));
            }
            if name.trim().is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
                eprintln!("kpiwatch token: the name must be 1-128 printable characters");
                return Ok(ExitCode::from(2));
            }
            let (token, hash) = kpiwatch::api::new_token();
            let Some(id) = store.create_token(&name, &role, &hash, actor).await? else {
                eprintln!("kpiwatch token: an active token is named {name:?}; revoke it first");
                return Ok(ExitCode::from(2));
            };
            store
                .audit(
                    actor,
                    "token.create",
                    &id.to_string(),
                    &serde_json::json!({"name": name, "role": role}),
                )
                .await?;
            println!("token {id} for {name} ({role}), shown once:\n{token}");
            ExitCode::SUCCESS
        }
        TokenCommand::List => {
            let at = |t: Option<i64>| {
                t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map_or("-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
            };
            println!(
                "{:>4}  {:<20} {:<7} {:<12} {:<16} {:<16} revoked",
                "id", "name", "role", "created by", "created", "last used"
            );
            for t in store.tokens().await? {
                println!(
                    "{:>4}  {:<20} {:<7} {:<12} {:<16} {:<16} {}",
                    t.id,
                    t.name,
                    t.role,
                    t.created_by,
                    at(Some(t.created_at)),
                    at(t.last_used_at),
                    at(t.revoked_at)
                );
            }
            ExitCode::SUCCESS
        }
        TokenCommand::Revoke { id } => match store.revoke_token(id).await? {
            Some(t) => {
                store
                    .audit(
                        actor,
                        "token.revoke",
                        &id.to_string(),
                        &serde_json::json!({"name": t.name, "role": t.role}),
                    )
                    .await?;
                println!("token {id} ({}) revoked", t.name);
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("kpiwatch token: no active token {id}");
                ExitCode::from(2)
            }
        },
        TokenCommand::Config { .. } => ExitCode::FAILURE,
    };
    store.close().await;
    Ok(code)
}

async fn run_backtest(
    settings: &config::Settings,
    spec: &kpi::KpiSpec,
    opts: kpiwatch::backtest::BacktestOptions,
    until: chrono::DateTime<chrono::Utc>,
    (budget, incidents): (Option<kpiwatch::tuning::Budget>, &[kpiwatch::tuning::Incident]),
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let store = kpiwatch::store::Store::connect(settings.state.url.expose_secret()).await?;
    let sources = kpiwatch::sources::SourceRegistry::build(&settings.sources)?;
    let request = kpiwatch::pipeline::BacktestRequest {
        spec,
        weeks: opts.weeks,
        to: spec.buckets().floor(until.timestamp()),
        replay: kpiwatch::backtest::Replay::of(&settings.scheduler),
        recorded: kpiwatch::pipeline::Recorded::StoredElseFresh,
        calendar: Some((&settings.calendar, std::path::Path::new("."))),
    };
    let history = kpiwatch::pipeline::backtest_history(&store, &sources, request).await?;
    let report = kpiwatch::backtest::run(spec, &history, opts)?;
    println!(
        "{}: sensitivity {} over {} weeks from {} to {}",
        spec.id,
        report.sensitivity,
        report.alerts_per_week.len(),
        report.from.format("%Y-%m-%d"),
        report.to.format("%Y-%m-%d")
    );
    println!(
        "alerts per week: {:?} (mean {:.2}); flagged buckets: {}",
        report.alerts_per_week,
        report.mean_alerts_per_week(),
        report.flags.len()
    );
    for a in &report.alerts {
        let until = a.resolved.map_or("still open".to_owned(), |r| {
            r.format("%Y-%m-%d %H:%M").to_string()
        });
        println!(
            "  {} → {}  {} flagged bucket(s)  {}",
            a.started.format("%Y-%m-%d %H:%M"),
            until,
            a.buckets,
            a.series
        );
    }
    let mut chosen = None;
    if let Some(budget) = budget {
        let choice = kpiwatch::tuning::choose_by_budget(spec, &history, opts, budget)?;
        print!("{}", kpiwatch::tuning::budget_text(&choice));
        chosen = choice.chosen.map(|c| c.sensitivity);
    }
    if !incidents.is_empty() {
        let named = kpiwatch::tuning::replay_settings(opts.sensitivity.get(), chosen);
        let sensitivities: Vec<kpi::Sensitivity> = named
            .iter()
            .filter_map(|(s, _)| kpi::Sensitivity::new(*s).ok())
            .collect();
        let replays = kpiwatch::tuning::replay_incidents(spec, &history, opts, &sensitivities, incidents)?;
        print!("{}", kpiwatch::tuning::replay_text(&replays, &named));
    }
    Ok(())
}

#[cfg(feature = "export")]
async fn run_export(
    settings: &config::Settings,
    specs: &[&kpi::KpiSpec],
    (from, to): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    format: kpiwatch::export::Format,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use secrecy::ExposeSecret;
    std::fs::create_dir_all(out).with_context(|| format!("Failed to create {}", out.display()))?;
    let store = kpiwatch::store::Store::connect(settings.state.url.expose_secret()).await?;
    for spec in specs {
        let table = kpiwatch::export::table(&store, spec, from.timestamp(), to.timestamp()).await?;
        let path = out.join(format!("{}.{}", spec.id, format.extension()));
        let rows = kpiwatch::export::write(&table, format, &path)?;
        println!("{}: {rows} rows → {}", spec.id, path.display());
    }
    store.close().await;
    Ok(())
}

#[cfg(not(feature = "export"))]
async fn run_export(
    _settings: &config::Settings,
    _specs: &[&kpi::KpiSpec],
    _range: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    _format: kpiwatch::export::Format,
    _out: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::bail!(
        "this kpiwatch was built without the `export` feature; build it with `cargo build --features export` (or `cargo install --path . --features export`)"
    )
}

async fn preview_digest(
    settings: &config::Settings,
    specs: &[kpi::KpiSpec],
    date: Option<chrono::NaiveDate>,
    recipient: Option<&str>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let store = kpiwatch::store::Store::connect(settings.state.url.expose_secret()).await?;
    let from: lettre::message::Mailbox = settings.email.from.parse()?;
    let cx = kpiwatch::digest::DigestContext {
        store: &store,
        specs,
        config: &settings.digest,
        from: &from,
        public_url: &settings.http.public_url,
    };
    let rendered = kpiwatch::digest::preview(cx, recipient, date, chrono::Utc::now(), out).await?;
    println!(
        "{}\nwritten to {} ({} charts beside it)",
        rendered.subject,
        out.display(),
        rendered.images.len()
    );
    Ok(())
}

fn load(
    config_path: Option<&std::path::Path>,
    models: &std::path::Path,
) -> Result<(config::Settings, Vec<kpi::KpiSpec>), ExitCode> {
    let settings = config::load(config_path).map_err(|e| {
        eprintln!("kpiwatch: {e}");
        ExitCode::from(2)
    })?;
    let specs = kpi::load_models(models).map_err(|e| {
        eprint!("kpiwatch: {e}");
        ExitCode::from(2)
    })?;
    Ok((settings, specs))
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kpiwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
