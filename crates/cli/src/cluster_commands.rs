//! `flotilla deploy` and `flotilla clusters ...`: a renter's clusters from a spec file (TOML or
//! JSON) or from flags, with a quote shown before anything is held.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flotilla_ledger::{format_micros, parse_micros};
use flotilla_proto::api::{
    ClusterInfo, ClusterQuote, ClusterSpec, ExtendRequest, LogPage, NodeRating, Page,
    RateNodesRequest,
};

use crate::client_commands::Connection;
use crate::output::{Format, opt, print};
use crate::standby::Remote;

/// How often `clusters logs --follow` asks for more.
const FOLLOW_POLL_MS: u64 = 500;
/// Largest spec file read.
const SPEC_FILE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    connection: Connection,
    /// A spec file (`.toml` or `.json`); without one, the flags below make the spec.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Letters, digits, '-' and '_'.
    #[arg(long)]
    name: Option<String>,
    /// batch (done when every node exits 0), service, or ray (a Ray cluster, no command; submit
    /// jobs with `flotilla ray submit`).
    #[arg(long = "type", default_value = "batch")]
    kind: String,
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    #[arg(long, default_value_t = 1)]
    gpus_per_node: u32,
    /// Offer constraints, such as `gpu=h100 region=eu price<2.5`.
    #[arg(long, default_value = "")]
    query: String,
    /// The most the whole cluster may cost per hour, IOSD (such as 3.5); default: the quote.
    #[arg(long)]
    budget_per_hour: Option<String>,
    #[arg(long, default_value_t = 1)]
    hours: u32,
    /// The token to pay with: IOSD, or IO where the coordinator names an IO price.
    #[arg(long, default_value = "IOSD")]
    token: String,
    /// NAME=VALUE, repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// NAME=VALUE, repeatable; given to the nodes, never shown back.
    #[arg(long = "secret-env")]
    secret_env: Vec<String>,
    /// A port a service listens on, repeatable.
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Memory limit per node, MiB.
    #[arg(long)]
    memory_mib: Option<u64>,
    /// CPU cores per node (default 4 per GPU).
    #[arg(long)]
    cpus: Option<u32>,
    /// Restarts of a node whose command fails.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    #[arg(long)]
    checkpoint_path: Option<String>,
    /// Run on the container driver with this image.
    #[arg(long)]
    image: Option<String>,
    /// With `--type ray`: JupyterLab on the head node.
    #[arg(long)]
    jupyter: bool,
    /// Deploy without asking.
    #[arg(long, short)]
    yes: bool,
    /// A retried deploy with the same key makes no second cluster (fresh when absent).
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The command every node runs (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClustersCommand {
    /// The caller's clusters.
    List(Connection),
    /// One cluster: its nodes, money and state.
    Show {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    /// The nodes' output; `--follow` keeps printing until the cluster ends.
    Logs {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Only this rank's output.
        #[arg(long)]
        node: Option<u32>,
        #[arg(long)]
        follow: bool,
    },
    /// Add hours (their rent is held at once).
    Extend {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long)]
        hours: u32,
    },
    /// Rate one node's supplier after the cluster ended (1 to 5 stars).
    Rate {
        #[command(flatten)]
        connection: Connection,
        id: String,
        #[arg(long)]
        node: u32,
        #[arg(long)]
        stars: u8,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Stop every node and return the unused escrow.
    Terminate {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
}

fn pairs(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            let (name, value) = item
                .split_once('=')
                .with_context(|| format!("--{flag} {item}: expected NAME=VALUE"))?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Reads a spec file; its format follows its extension (`.json`, else TOML).
pub fn read_spec(path: &Path) -> Result<ClusterSpec> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if size > SPEC_FILE_BYTES_MAX {
        bail!("{} is larger than 1 MiB", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cluster spec", path.display()))
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not a cluster spec", path.display()))
    }
}

fn spec_from_flags(args: &DeployArgs) -> Result<ClusterSpec> {
    if args.command.is_empty() && args.kind != "ray" {
        bail!("give the command after --, such as: flotilla deploy --nodes 2 -- echo hi");
    }
    let budget_per_hour = args
        .budget_per_hour
        .as_deref()
        .map(|b| parse_micros(b).with_context(|| format!("--budget-per-hour {b}")))
        .transpose()?;
    let name = args.name.clone().unwrap_or_else(|| {
        let id = flotilla_proto::id::new_id(flotilla_proto::id::IdKind::Cluster);
        format!("cluster-{}", &id[4..12])
    });
    Ok(ClusterSpec {
        name,
        kind: args.kind.clone(),
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        query: args.query.clone(),
        budget_per_hour,
        hours: args.hours,
        token: args.token.clone(),
        command: args.command.clone(),
        env: pairs("env", &args.env)?,
        secret_env: pairs("secret-env", &args.secret_env)?,
        ports: args.ports.clone(),
        memory_mib: args.memory_mib,
        cpus: args.cpus,
        retries: args.retries,
        checkpoint_path: args.checkpoint_path.clone(),
        image: args.image.clone(),
        colocation: None,
        renter_region: None,
        jupyter: args.jupyter,
    })
}

fn confirm(quote: &ClusterQuote) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("not deployed: pass --yes to deploy without a terminal to confirm on");
    }
    eprint!(
        "Deploy for {} IOSD? [y/N] ",
        format_micros(i64::try_from(quote.total_micros).unwrap_or(i64::MAX))
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn print_quote(quote: &ClusterQuote) {
    let amount = |micros: u64| format_micros(i64::try_from(micros).unwrap_or(i64::MAX));
    if !quote.placeable {
        return;
    }
    if quote.colocation == "spread" {
        eprintln!("No one region has room for every node: the nodes spread over regions.");
    }
    if let Some(price) = quote.io_price_micros {
        eprintln!(
            "Paid in IO at {} IOSD per IO (fixed for the cluster's life).",
            amount(price)
        );
    }
    eprintln!(
        "Quote: {} IOSD/hour x {} h = rent {} + fees {} = {} {} held in escrow; unused time is returned.",
        amount(quote.rent_per_hour),
        quote.hours,
        amount(quote.rent_micros),
        amount(quote.fee_micros),
        amount(quote.total_micros),
        quote.token,
    );
}

fn no_match(quote: &ClusterQuote) -> anyhow::Error {
    let mut text = format!(
        "no devices match now: {}",
        quote
            .waiting_because
            .as_deref()
            .unwrap_or("nothing is offered")
    );
    for relax in quote
        .explanation
        .iter()
        .flat_map(|e| &e.relaxations)
        .take(3)
    {
        text.push_str(&format!("\n  {}", relax.summary));
    }
    anyhow::anyhow!(text)
}

pub async fn deploy(args: DeployArgs) -> Result<()> {
    let spec = match &args.file {
        Some(path) if args.command.is_empty() => read_spec(path)?,
        Some(_) => bail!("give the command in the spec file or after --, not both"),
        None => spec_from_flags(&args)?,
    };
    let client = args.connection.client()?;
    let quote: ClusterQuote = client.post("clusters/quote", &spec).await?;
    if !quote.placeable {
        return Err(no_match(&quote));
    }
    print_quote(&quote);
    if !args.yes && !confirm(&quote)? {
        bail!("not deployed");
    }
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| flotilla_proto::id::new_id(flotilla_proto::id::IdKind::Transfer));
    let cluster: ClusterInfo = client.post_idempotent("clusters", &spec, &key).await?;
    show(&args.connection, &cluster)
}

fn summary_row(cluster: &ClusterInfo) -> Vec<String> {
    vec![
        cluster.id.clone(),
        cluster.name.clone(),
        cluster.kind.clone(),
        cluster.state.clone(),
        cluster.spec.nodes.to_string(),
        cluster.spec.hours.to_string(),
        format_micros(cluster.escrow_micros),
    ]
}

const SUMMARY_HEADERS: &[&str] = &["ID", "NAME", "TYPE", "STATE", "NODES", "HOURS", "ESCROW"];

/// The cluster, its nodes (with what renters' tunnelled connections carried) and, while it
/// runs, a link for each declared port of each node.
fn show(connection: &Connection, cluster: &ClusterInfo) -> Result<()> {
    let format = connection.output;
    if format == Format::Json {
        print(format, cluster, &[], Vec::new());
        return Ok(());
    }
    print(format, cluster, SUMMARY_HEADERS, vec![summary_row(cluster)]);
    if let Some(why) = cluster
        .waiting_because
        .as_ref()
        .or(cluster.ended_because.as_ref())
    {
        println!("{why}");
    }
    let rows = cluster
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.rank.to_string(),
                n.attempt.to_string(),
                n.state.clone(),
                opt(n.exit_code),
                n.worker_id.clone(),
                n.device_ids.join(","),
                format!(
                    "{} conn, {} B in, {} B out",
                    n.tunnel.connections, n.tunnel.bytes_to_node, n.tunnel.bytes_from_node
                ),
            ]
        })
        .collect();
    print(
        format,
        cluster,
        &[
            "RANK", "ATTEMPT", "STATE", "EXIT", "WORKER", "DEVICES", "TUNNEL",
        ],
        rows,
    );
    if cluster.port_links.is_empty() {
        return Ok(());
    }
    let base_url = connection.client()?.base_url().to_owned();
    let rows = cluster
        .port_links
        .iter()
        .map(|link| {
            vec![
                link.node_rank.to_string(),
                link.port.to_string(),
                link.name.clone().unwrap_or_default(),
                format!("{base_url}{}", link.path),
                format!(
                    "flotilla connect {} --node {} --port {}",
                    cluster.id, link.node_rank, link.port
                ),
            ]
        })
        .collect();
    print(
        format,
        cluster,
        &["NODE", "PORT", "SERVES", "LINK", "CONNECT"],
        rows,
    );
    Ok(())
}

pub async fn clusters(command: ClustersCommand) -> Result<()> {
    match command {
        ClustersCommand::List(connection) => {
            let page: Page<ClusterInfo> = connection.client()?.get("clusters").await?;
            let rows = page.items.iter().map(summary_row).collect();
            print(connection.output, &page, SUMMARY_HEADERS, rows);
        }
        ClustersCommand::Show { connection, id } => {
            let cluster: ClusterInfo = connection.client()?.get(&format!("clusters/{id}")).await?;
            show(&connection, &cluster)?;
        }
        ClustersCommand::Extend {
            connection,
            id,
            hours,
        } => {
            let cluster: ClusterInfo = connection
                .client()?
                .post(
                    &format!("clusters/{id}/extend"),
                    &ExtendRequest {
                        hours,
                        from_hours: None,
                    },
                )
                .await?;
            show(&connection, &cluster)?;
        }
        ClustersCommand::Rate {
            connection,
            id,
            node,
            stars,
            comment,
        } => {
            let ratings = RateNodesRequest {
                ratings: vec![NodeRating {
                    node_rank: node,
                    stars,
                    comment,
                }],
            };
            let cluster: ClusterInfo = connection
                .client()?
                .post(&format!("clusters/{id}/ratings"), &ratings)
                .await?;
            show(&connection, &cluster)?;
        }
        ClustersCommand::Terminate { connection, id } => {
            let cluster: ClusterInfo = connection
                .client()?
                .post_empty(&format!("clusters/{id}/terminate"))
                .await?;
            show(&connection, &cluster)?;
        }
        ClustersCommand::Logs {
            connection,
            id,
            node,
            follow,
        } => logs(&connection, &id, node, follow).await?,
    }
    Ok(())
}

async fn logs(connection: &Connection, id: &str, node: Option<u32>, follow: bool) -> Result<()> {
    let client = connection.client()?;
    let mut after = 0;
    loop {
        let mut path = format!("clusters/{id}/logs?after={after}");
        if let Some(node) = node {
            path.push_str(&format!("&node={node}"));
        }
        let page: LogPage = client.get(&path).await?;
        let mut out = std::io::stdout().lock();
        for line in &page.lines {
            if connection.output == Format::Json {
                writeln!(out, "{}", serde_json::to_string(line)?)?;
            } else {
                // Chunks keep their own line breaks; each is prefixed by its rank.
                for text in line.text.split_inclusive('\n') {
                    write!(out, "[{}] {text}", line.node_rank)?;
                }
                if !line.text.ends_with('\n') {
                    writeln!(out)?;
                }
            }
        }
        out.flush()?;
        after = page.next_after;
        if page.lines.is_empty() {
            if !follow || page.ended {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(FOLLOW_POLL_MS)).await;
        }
    }
}

/// The protocol `flotilla connect` asks the coordinator to switch to.
pub const TUNNEL_PROTOCOL: &str = "flotilla-tunnel";

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    connection: Connection,
    /// The cluster (clu_...).
    cluster: String,
    /// The node's rank.
    #[arg(long, default_value_t = 0)]
    node: u32,
    /// A port the cluster declared.
    #[arg(long)]
    port: u16,
    /// The local port to listen on (default: a free one, printed).
    #[arg(long)]
    local_port: Option<u16>,
    /// Carry one connection over standard input and output (for ssh's ProxyCommand).
    #[arg(long)]
    stdio: bool,
    /// Hand one connection itself to ssh, then exit, so no process of ours relays ssh's bytes:
    /// `ssh -o ProxyUseFdpass=yes -o ProxyCommand='flotilla connect CLUSTER --port 22
    /// --fdpass' user@node`. Standard output must be a Unix socket (ssh makes it one), and the
    /// coordinator's URL http://.
    #[arg(long, conflicts_with_all = ["stdio", "local_port"])]
    fdpass: bool,
}

fn connect_path(args: &ConnectArgs) -> String {
    format!(
        "clusters/{}/connect?node={}&port={}",
        args.cluster, args.node, args.port
    )
}

/// `flotilla connect`: a local listener (or standard input and output) whose connections reach
/// a port of a node, through the coordinator and the node's worker's tunnel.
pub async fn connect(args: ConnectArgs) -> Result<()> {
    let client = args.connection.client()?;
    let path = connect_path(&args);
    if args.stdio {
        let upgraded = client.upgrade(&path, TUNNEL_PROTOCOL).await?;
        return carry_stdio(upgraded).await;
    }
    if args.fdpass {
        return pass_on_stdout(&client, &path).await;
    }
    // One check before listening, so a wrong cluster, node or port fails at once; a node
    // that does not answer on the port yet is only a warning.
    match client.upgrade(&path, TUNNEL_PROTOCOL).await {
        Ok(probe) => drop(probe),
        Err(flotilla_client::ClientError::Api { code, message, .. })
            if code == "node_refused" || code == "unavailable" =>
        {
            eprintln!("warning: {message}");
        }
        Err(error) => return Err(error.into()),
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.local_port.unwrap_or(0)))
        .await
        .context("cannot listen on the local port")?;
    let local = listener.local_addr()?;
    println!(
        "listening on {local}: connections reach port {} of node {} of {}",
        args.port, args.node, args.cluster
    );
    std::io::stdout().flush()?;
    let standby = std::sync::Arc::new(crate::standby::Standby::default());
    tokio::spawn(
        standby
            .clone()
            .keep(client.clone(), format!("{path}&standby=true")),
    );
    loop {
        let (mut local_stream, _) = listener.accept().await?;
        // As the coordinator does on its side: small writes go at once (interactive use).
        let _ = local_stream.set_nodelay(true);
        let client = client.clone();
        let path = path.clone();
        let standby = standby.clone();
        tokio::spawn(async move {
            let remote = match standby.take().await {
                Some(ready) => Ok(ready),
                None => crate::standby::open_remote(&client, &path).await,
            };
            let carried = match remote {
                Ok(Remote::Left(socket)) => crate::splice::carry(&local_stream, &socket).await,
                Ok(Remote::Right(mut upgraded)) => {
                    flotilla_tunnel::carry(&mut local_stream, &mut upgraded).await
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    return;
                }
            };
            if let Err(error) = carried {
                tracing::debug!(%error, "a local connection ended");
            }
        });
    }
}

/// `--fdpass`: the connection itself goes to the program that reads standard output, a Unix
/// socket there (ssh's `ProxyUseFdpass`), which then owns it; this process's copy closes as it
/// exits.
async fn pass_on_stdout(client: &flotilla_client::Client, path: &str) -> Result<()> {
    use flotilla_client::fdpass;
    // Checked first, so a wrong setup never dials the node.
    if !fdpass::is_unix_socket(std::io::stdout()) {
        bail!(
            "with --fdpass, standard output must be a Unix socket, which ssh makes it with \
             -o ProxyUseFdpass=yes"
        );
    }
    let socket = client
        .upgrade_socket(path, TUNNEL_PROTOCOL)
        .await?
        .into_std()?;
    // As connect(2) would have given it: blocking.
    socket.set_nonblocking(false)?;
    fdpass::pass(std::io::stdout(), &socket)
        .context("cannot pass the connection on standard output")?;
    Ok(())
}

/// Standard input to the node, the node to standard output, until both ends closed.
async fn carry_stdio<S>(upgraded: S) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    use tokio::io::AsyncWriteExt;
    let (mut from_node, mut to_node) = tokio::io::split(upgraded);
    let sending = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut to_node).await?;
        to_node.shutdown().await
    };
    let receiving = async {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut from_node, &mut stdout).await?;
        stdout.flush().await
    };
    let (sent, received) = tokio::join!(sending, receiving);
    sent.context("sending")?;
    received.context("receiving")?;
    Ok(())
}
