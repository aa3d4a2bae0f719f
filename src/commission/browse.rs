//! `streamgate browse opcua`: an OPC UA server's address space as a tree, with the node ids a
//! config needs; `--toml` prints a source with a tag per readable variable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use streamgate::config::{Errors, StreamNames};
use streamgate::readers::SourceKind;
use streamgate::readers::opcua::browse::{self, Browsed};
use streamgate::readers::opcua::config::Identity;
use streamgate::readers::opcua::nodeid::NodeRef;
use streamgate::readers::opcua::{OpcuaConfig, OpcuaReader, RawOpcua};

use super::{UNREACHABLE, USAGE, toml_string};

/// The arguments of `browse opcua`. The connection options have the names and meanings of
/// the `kind = "opcua"` source keys (docs/opcua.md).
#[derive(clap::Args, Debug)]
pub struct OpcuaArgs {
    /// The server, "opc.tcp://host:4840[/path]". Leave it out with --config and --source.
    pub endpoint: Option<String>,
    /// Take the endpoint, security, identity and PKI folder of a source of this config.
    #[arg(long, short, requires = "source", conflicts_with = "endpoint")]
    pub config: Option<PathBuf>,
    /// The source (by id) of --config.
    #[arg(long, requires = "config")]
    pub source: Option<String>,
    /// None, Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss.
    #[arg(long)]
    pub security_policy: Option<String>,
    /// None, Sign, SignAndEncrypt (default: None without a policy, SignAndEncrypt with one).
    #[arg(long)]
    pub security_mode: Option<String>,
    #[arg(long)]
    pub username: Option<String>,
    /// The environment variable holding the password of --username.
    #[arg(long, requires = "username")]
    pub password_env: Option<String>,
    #[arg(long, requires = "user_private_key")]
    pub user_certificate: Option<String>,
    #[arg(long, requires = "user_certificate")]
    pub user_private_key: Option<String>,
    /// The client's certificate store (own/, trusted/, rejected/); the gateway's is
    /// <data_dir>/opcua-pki, by default /var/lib/streamgate/opcua-pki.
    #[arg(long)]
    pub pki_dir: Option<String>,
    /// Trust the server's certificate the first time (as the source key).
    #[arg(long)]
    pub trust_on_first_use: bool,
    /// Time for each request, e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = crate::parse_interval)]
    pub request_timeout: Duration,
    /// The node to start from, in the config's notation (default: the Objects folder).
    #[arg(long, default_value = "i=85")]
    pub node: String,
    /// Levels below the start node.
    #[arg(long, default_value_t = 3)]
    pub depth: u32,
    /// At most this many nodes.
    #[arg(long, default_value_t = 2000)]
    pub max_nodes: usize,
    /// One JSON object per node instead of a tree.
    #[arg(long, conflicts_with = "toml")]
    pub json: bool,
    /// Print a `[[sources]]` block with a tag per readable scalar variable.
    #[arg(long)]
    pub toml: bool,
}

/// The options as `kind = "opcua"` keys, validated by the source's own rules; errors name
/// the command-line option.
fn from_options(args: &OpcuaArgs, endpoint: &str) -> Result<OpcuaConfig, Vec<String>> {
    let password = match &args.password_env {
        Some(var) => match std::env::var(var) {
            Ok(p) => Some(p),
            Err(_) => return Err(vec![format!("--password-env: ${var} is not set")]),
        },
        None => None,
    };
    let timeout = format!("{}ms", args.request_timeout.as_millis());
    let raw = RawOpcua {
        endpoint: endpoint.to_string(),
        security_policy: args.security_policy.clone(),
        security_mode: args.security_mode.clone(),
        username: args.username.clone(),
        password,
        user_certificate: args.user_certificate.clone(),
        user_private_key: args.user_private_key.clone(),
        pki_dir: Some(
            args.pki_dir
                .clone()
                .unwrap_or_else(|| "/var/lib/streamgate/opcua-pki".to_string()),
        ),
        trust_on_first_use: Some(args.trust_on_first_use),
        publishing_interval: None,
        sampling_interval: None,
        queue_size: None,
        interval: None,
        keep_alive_interval: None,
        request_timeout: Some(timeout),
        reconnect_min: None,
        reconnect_max: None,
        max_clock_skew: None,
        tags: Vec::new(),
    };
    let mut errs = Errors::default();
    let c = raw.validate("opt", &StreamNames::new(Vec::new()), &mut errs);
    let errors = super::option_errors(errs, "node");
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(errors)
    }
}

/// The source's settings and id from --config/--source, or from the options.
fn settings(args: &OpcuaArgs) -> Result<(OpcuaConfig, String, PathBuf), ExitCode> {
    if let (Some(path), Some(id)) = (&args.config, &args.source) {
        let c = crate::load(path)?;
        let Some(s) = c.sources.iter().find(|s| &s.id == id) else {
            say!("error: no source \"{id}\" in {}", path.display());
            return Err(ExitCode::from(USAGE));
        };
        let SourceKind::Opcua(o) = &s.kind else {
            say!(
                "error: source \"{id}\" is {}, not opcua",
                s.kind.kind_name()
            );
            return Err(ExitCode::from(USAGE));
        };
        let mut o = (**o).clone();
        o.request_timeout = args.request_timeout;
        return Ok((o, id.clone(), c.gateway.data_dir.clone()));
    }
    let Some(endpoint) = &args.endpoint else {
        say!("error: name the server: an opc.tcp:// endpoint, or --config F --source ID");
        return Err(ExitCode::from(USAGE));
    };
    match from_options(args, endpoint) {
        Ok(c) => Ok((
            c,
            "browse".to_string(),
            PathBuf::from("/var/lib/streamgate"),
        )),
        Err(errors) => {
            for e in errors {
                say!("error: {e}");
            }
            Err(ExitCode::from(crate::EXIT_CONFIG))
        }
    }
}

/// `streamgate browse opcua`: exit 0 with the tree, 69 when the server could not be reached
/// or browsed, 2 or 78 for arguments that name nothing or are wrong.
pub fn opcua(args: &OpcuaArgs) -> anyhow::Result<ExitCode> {
    let start: NodeRef = match args.node.parse() {
        Ok(n) => n,
        Err(e) => {
            say!("error: --node: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let (settings, id, data_dir) = match settings(args) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let endpoint = settings.endpoint.clone();
    let reader = OpcuaReader::new(settings.clone(), &id, &data_dir);
    let within = settings.request_timeout;
    let result = rt.block_on(async {
        let once = reader.connect_once().await.map_err(|e| e.to_string())?;
        let found = browse::browse(&once.session, &start, args.depth, args.max_nodes, within)
            .await
            .map_err(|e| e.to_string());
        once.close().await;
        found
    });
    let nodes = match result {
        Ok(n) => n,
        Err(why) => {
            say!("error: {why}");
            return Ok(ExitCode::from(UNREACHABLE));
        }
    };
    if args.toml {
        print_toml(&settings, &nodes);
    } else if args.json {
        for n in &nodes {
            out!("{}", serde_json::to_string(n)?);
        }
    } else {
        for n in &nodes {
            out!("{}", tree_line(n));
        }
    }
    say!(
        "{} node(s) below {} on {endpoint}, {} level(s), in {:.2} s{}",
        nodes.len(),
        args.node,
        args.depth,
        started.elapsed().as_secs_f64(),
        if nodes.iter().any(|n| n.expandable) {
            "; nodes marked + have more below (--node ID to start there, --depth N)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn tree_line(n: &Browsed) -> String {
    let indent = "  ".repeat(n.depth.saturating_sub(1) as usize);
    let mark = if n.expandable { "+" } else { "-" };
    let mut line = format!(
        "{indent}{mark} {}  [{}]  {}",
        n.display_name,
        n.node_class,
        n.config_node_id()
    );
    if n.node_id_uri.is_some() {
        line.push_str(&format!("  ({})", n.node_id));
    }
    if let Some(t) = &n.data_type {
        line.push_str(&format!("  {t}"));
    }
    if let Some(a) = &n.access {
        line.push_str(&format!("  {a}"));
    }
    match (&n.value, n.array, &n.value_error) {
        (_, Some(len), _) => line.push_str(&format!("  = array of {len}")),
        (Some(v), None, _) => line.push_str(&format!(
            "  = {}",
            serde_json::to_string(v).unwrap_or_default()
        )),
        (None, None, Some(e)) => line.push_str(&format!("  ({e})")),
        _ => {}
    }
    line
}

/// A source with one tag per readable variable: scalars as they are, arrays as a comment
/// (a tag needs `index`).
fn print_toml(c: &OpcuaConfig, nodes: &[Browsed]) {
    out!(
        "[[sources]]\nkind = \"opcua\"\nid = \"browsed\"\nendpoint = {}\nsecurity_policy = \"{}\"\nsecurity_mode = \"{:?}\"",
        toml_string(&c.endpoint),
        c.security_policy.as_str(),
        c.security_mode
    );
    if !matches!(c.identity, Identity::Anonymous) {
        out!("# identity: add username and password (or user_certificate and user_private_key)");
    }
    for n in nodes.iter().filter(|n| n.readable()) {
        let name = n.path.join(".");
        if let Some(len) = n.array {
            out!(
                "\n# {name} ({}) is an array of {len}: add a tag with index = 0 .. {} for one element",
                n.config_node_id(),
                len.saturating_sub(1)
            );
            continue;
        }
        if n.value.is_none() {
            continue;
        }
        out!(
            "\n[[sources.tags]]\nname = {}\nnode = {}",
            toml_string(&name),
            toml_string(n.config_node_id())
        );
    }
}
