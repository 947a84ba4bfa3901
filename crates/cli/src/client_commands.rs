//! Client commands: `flotilla <noun> <verb>` over the HTTP API.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use flotilla_client::Client;
use flotilla_proto::api::{
    ApiKeyInfo, AuditEvent, CreateAccountRequest, CreateAccountResponse, CreateApiKeyRequest,
    CreateEnrollmentTokenRequest, CreatedApiKey, CreatedEnrollmentToken, Device, DeviceDetail,
    EnrollmentTokenInfo, Me, Page, RenameRequest, Role, Scope, Worker, WorkerDetail,
};

use crate::output::{Format, gib, opt, print};
use crate::profile::{self, Profile};

/// Where to reach the coordinator.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Coordinator URL (else FLOTILLA_URL, else the saved profile).
    #[arg(long, env = "FLOTILLA_URL", global = true)]
    url: Option<String>,
    /// API key (else FLOTILLA_API_KEY, else the saved profile).
    #[arg(long, env = "FLOTILLA_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// A private CA's certificates (PEM) to trust for an https:// coordinator, beside the
    /// system's (else FLOTILLA_CA_CERT, else the saved profile's).
    #[arg(long, env = "FLOTILLA_CA_CERT", global = true, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// table or json.
    #[arg(long, short, value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
}

impl Connection {
    pub fn client(&self) -> Result<Client> {
        let saved = profile::load();
        let url = self
            .url
            .clone()
            .or_else(|| saved.as_ref().map(|p| p.url.clone()))
            .context("no coordinator: pass --url, set FLOTILLA_URL, or run flotilla login")?;
        // A saved key and CA serve only the coordinator they were saved for.
        let saved = saved.filter(|p| p.url.trim_end_matches('/') == url.trim_end_matches('/'));
        let key = self
            .api_key
            .clone()
            .or_else(|| saved.as_ref().map(|p| p.api_key.clone()));
        let ca_cert = self
            .ca_cert
            .clone()
            .or_else(|| saved.and_then(|p| p.ca_cert));
        match ca_cert {
            Some(path) => Ok(Client::with_ca(&url, key, &profile::read_ca_cert(&path)?)
                .with_context(|| format!("the CA file {}", path.display()))?),
            None => Ok(Client::new(&url, key)),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Check an API key and save it with the URL as the default profile.
    Login(Connection),
    /// Show the caller's account.
    Whoami(Connection),
    /// Accounts.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// API keys of the caller's account.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Enrollment tokens for new workers.
    #[command(subcommand, name = "enrollment-tokens")]
    EnrollmentTokens(TokensCommand),
    /// The supplier's workers.
    #[command(subcommand)]
    Workers(ObjectCommand),
    /// The supplier's devices.
    #[command(subcommand)]
    Devices(ObjectCommand),
    /// The audit log (admins).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Proof-of-compute transcripts (public).
    #[command(subcommand)]
    Proofs(ProofsCommand),
    /// Search the offers; when nothing matches, say why and what to relax.
    Offers(crate::market_commands::OffersArgs),
    /// Market prices, and a supplier's prices and locations.
    #[command(subcommand)]
    Market(crate::market_commands::MarketCommand),
    /// A renter's requests for GPUs.
    #[command(subcommand)]
    Requests(crate::market_commands::RequestsCommand),
    /// Deploy a cluster: quote, confirm, hold the total in escrow, run the command on every
    /// node. `flotilla deploy --nodes 2 --hours 1 --yes -- sh -c 'echo $FLOTILLA_NODE_RANK'`
    Deploy(crate::cluster_commands::DeployArgs),
    /// Ray clusters: submit a job to one and follow it to its end.
    #[command(subcommand)]
    Ray(crate::ray_commands::RayCommand),
    /// Reach a port of a node of a running cluster: a local listener, or `--stdio` (for
    /// `ssh -o ProxyCommand='flotilla connect CLUSTER --node 0 --port 22 --stdio' user@node`).
    Connect(crate::cluster_commands::ConnectArgs),
    /// A renter's clusters: list, show, logs, extend, terminate.
    #[command(subcommand)]
    Clusters(crate::cluster_commands::ClustersCommand),
    /// Balances, history, transfers, withdrawals and staking.
    #[command(subcommand)]
    Wallet(crate::ledger_commands::WalletCommand),
    /// The verifiable ledger log: info, epochs, export, offline verify, proofs, slashes.
    #[command(subcommand)]
    Ledger(crate::ledger_commands::LedgerCommand),
    /// Governance proposals and votes.
    #[command(subcommand)]
    Proposals(crate::ledger_commands::ProposalsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ProofsCommand {
    /// List proof attempts.
    List {
        #[command(flatten)]
        connection: Connection,
        /// Only this device's proofs.
        #[arg(long)]
        device: Option<String>,
    },
    /// Print one transcript (JSON) for `flotilla verify-proof`.
    Get {
        #[command(flatten)]
        connection: Connection,
        id: String,
        /// Wrap it with the coordinator's signature: `{"transcript", "signature",
        /// "public_key"}`, which `verify-proof --key` checks too.
        #[arg(long)]
        signed: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Create an account; prints its first API key once.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        name: String,
        /// renter, supplier or admin (admin needs an admin's key); repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    List(Connection),
    /// Create a key; prints the secret once.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        name: String,
        /// read or write; repeatable.
        #[arg(long = "scope", default_values_t = vec!["read".to_owned()])]
        scopes: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        expires_in_s: Option<u64>,
    },
    Revoke {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a single-use token; prints the secret once.
    Create {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        expires_in_s: Option<u64>,
    },
    List(Connection),
    Revoke {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ObjectCommand {
    List(Connection),
    Show {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    Rename {
        #[command(flatten)]
        connection: Connection,
        id: String,
        name: String,
    },
    Pause {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    Resume {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
    Remove {
        #[command(flatten)]
        connection: Connection,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    List(Connection),
}

pub async fn run(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Login(connection) => login(connection).await,
        ClientCommand::Whoami(connection) => {
            let me: Me = connection.client()?.get("me").await?;
            print(
                connection.output,
                &me,
                &["ACCOUNT", "NAME", "ROLES", "KEY"],
                vec![me_row(&me)],
            );
            Ok(())
        }
        ClientCommand::Accounts(AccountsCommand::Create {
            connection,
            name,
            roles,
        }) => {
            let roles = roles
                .iter()
                .map(|r| Role::parse(r).with_context(|| format!("unknown role {r:?}")))
                .collect::<Result<_>>()?;
            let created: CreateAccountResponse = connection
                .client()?
                .post("accounts", &CreateAccountRequest { name, roles })
                .await?;
            let row = vec![
                created.account.id.clone(),
                created.account.name.clone(),
                created.api_key.secret.clone(),
            ];
            print(
                connection.output,
                &created,
                &["ACCOUNT", "NAME", "API KEY (shown once)"],
                vec![row],
            );
            Ok(())
        }
        ClientCommand::ApiKeys(command) => api_keys(command).await,
        ClientCommand::Offers(args) => crate::market_commands::offers(args).await,
        ClientCommand::Market(command) => crate::market_commands::market(command).await,
        ClientCommand::Requests(command) => crate::market_commands::requests(command).await,
        ClientCommand::Deploy(args) => crate::cluster_commands::deploy(args).await,
        ClientCommand::Ray(command) => crate::ray_commands::run(command).await,
        ClientCommand::Connect(args) => crate::cluster_commands::connect(args).await,
        ClientCommand::Clusters(command) => crate::cluster_commands::clusters(command).await,
        ClientCommand::Wallet(command) => crate::ledger_commands::wallet(command).await,
        ClientCommand::Ledger(command) => crate::ledger_commands::ledger(command).await,
        ClientCommand::Proposals(command) => crate::ledger_commands::proposals(command).await,
        ClientCommand::EnrollmentTokens(command) => tokens(command).await,
        ClientCommand::Workers(command) => objects(command, "workers").await,
        ClientCommand::Devices(command) => objects(command, "devices").await,
        ClientCommand::Proofs(ProofsCommand::List { connection, device }) => {
            let path = match device {
                Some(device) => format!("proofs?limit=500&device_id={device}"),
                None => "proofs?limit=500".to_owned(),
            };
            let page: Page<flotilla_proto::api::ProofInfo> =
                connection.client()?.get(&path).await?;
            let rows = page
                .items
                .iter()
                .map(|p| {
                    let verdict = if p.passed {
                        "passed".to_owned()
                    } else {
                        format!("failed: {}", p.reason)
                    };
                    vec![
                        p.id.clone(),
                        p.device_id.clone(),
                        p.class.clone(),
                        verdict,
                        p.elapsed_ms.to_string(),
                        p.created_at.clone(),
                    ]
                })
                .collect();
            print(
                connection.output,
                &page,
                &["ID", "DEVICE", "CLASS", "VERDICT", "MS", "AT"],
                rows,
            );
            Ok(())
        }
        ClientCommand::Proofs(ProofsCommand::Get {
            connection,
            id,
            signed,
        }) => {
            let client = connection.client()?;
            let transcript: serde_json::Value =
                client.get(&format!("proofs/{id}/transcript")).await?;
            let document = if signed {
                let signature: flotilla_proto::api::ProofSignature =
                    client.get(&format!("proofs/{id}/signature")).await?;
                serde_json::json!({
                    "transcript": transcript,
                    "signature": signature.signature,
                    "public_key": signature.public_key,
                })
            } else {
                transcript
            };
            println!("{}", serde_json::to_string_pretty(&document)?);
            Ok(())
        }
        ClientCommand::Audit(AuditCommand::List(connection)) => {
            let page: Page<AuditEvent> = connection.client()?.get("audit-events").await?;
            let rows = page
                .items
                .iter()
                .map(|e| {
                    vec![
                        e.at.clone(),
                        e.action.clone(),
                        opt(e.actor_account_id.clone()),
                        opt(e.target_id.clone()),
                        opt(e.source_ip.clone()),
                    ]
                })
                .collect();
            print(
                connection.output,
                &page,
                &["AT", "ACTION", "ACTOR", "TARGET", "FROM"],
                rows,
            );
            Ok(())
        }
    }
}

fn me_row(me: &Me) -> Vec<String> {
    let roles: Vec<_> = me.account.roles.iter().map(|r| r.as_str()).collect();
    vec![
        me.account.id.clone(),
        me.account.name.clone(),
        roles.join(","),
        me.key_id.clone(),
    ]
}

async fn login(connection: Connection) -> Result<()> {
    let client = connection.client()?;
    // A saved key is only reused for the coordinator it was saved for.
    let saved_key = profile::load()
        .filter(|p| p.url == client.base_url())
        .map(|p| p.api_key);
    let Some(api_key) = connection.api_key.clone().or(saved_key) else {
        bail!("no api key: pass --api-key or set FLOTILLA_API_KEY");
    };
    let me: Me = client.post_empty("login").await?;
    // Absolute, so later commands find it from any directory.
    let ca_cert = match &connection.ca_cert {
        Some(path) => Some(
            std::fs::canonicalize(path)
                .with_context(|| format!("the CA file {}", path.display()))?,
        ),
        None => None,
    };
    let path = profile::save(&Profile {
        url: client.base_url().to_owned(),
        api_key,
        ca_cert,
    })?;
    if connection.output == Format::Table {
        println!(
            "logged in as {} ({}); profile saved to {}",
            me.account.name,
            me.account.id,
            path.display()
        );
    } else {
        print(connection.output, &me, &[], vec![]);
    }
    Ok(())
}

fn key_row(key: &ApiKeyInfo) -> Vec<String> {
    let scopes: Vec<_> = key.scopes.iter().map(|s| s.as_str()).collect();
    vec![
        key.id.clone(),
        key.name.clone(),
        key.prefix.clone(),
        scopes.join(","),
        opt(key.expires_at.clone()),
        opt(key.revoked_at.clone()),
    ]
}

const KEY_HEADERS: &[&str] = &["ID", "NAME", "PREFIX", "SCOPES", "EXPIRES", "REVOKED"];

async fn api_keys(command: ApiKeysCommand) -> Result<()> {
    match command {
        ApiKeysCommand::List(connection) => {
            let page: Page<ApiKeyInfo> = connection.client()?.get("api-keys").await?;
            print(
                connection.output,
                &page,
                KEY_HEADERS,
                page.items.iter().map(key_row).collect(),
            );
        }
        ApiKeysCommand::Create {
            connection,
            name,
            scopes,
            expires_in_s,
        } => {
            let scopes = scopes
                .iter()
                .map(|s| Scope::parse(s).with_context(|| format!("unknown scope {s:?}")))
                .collect::<Result<_>>()?;
            let created: CreatedApiKey = connection
                .client()?
                .post(
                    "api-keys",
                    &CreateApiKeyRequest {
                        name,
                        scopes,
                        expires_in_s,
                    },
                )
                .await?;
            let mut row = key_row(&created.key);
            row.push(created.secret.clone());
            let mut headers = KEY_HEADERS.to_vec();
            headers.push("SECRET (shown once)");
            print(connection.output, &created, &headers, vec![row]);
        }
        ApiKeysCommand::Revoke { connection, id } => {
            let key: ApiKeyInfo = connection
                .client()?
                .post_empty(&format!("api-keys/{id}/revoke"))
                .await?;
            print(connection.output, &key, KEY_HEADERS, vec![key_row(&key)]);
        }
    }
    Ok(())
}

fn token_row(token: &EnrollmentTokenInfo) -> Vec<String> {
    let state = serde_json::to_value(token.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    vec![
        token.id.clone(),
        token.name.clone(),
        state,
        token.expires_at.clone(),
        opt(token.used_by_worker_id.clone()),
    ]
}

const TOKEN_HEADERS: &[&str] = &["ID", "NAME", "STATE", "EXPIRES", "USED BY"];

async fn tokens(command: TokensCommand) -> Result<()> {
    match command {
        TokensCommand::Create {
            connection,
            name,
            expires_in_s,
        } => {
            let created: CreatedEnrollmentToken = connection
                .client()?
                .post(
                    "enrollment-tokens",
                    &CreateEnrollmentTokenRequest { name, expires_in_s },
                )
                .await?;
            if connection.output == Format::Table {
                println!("{}", created.secret);
                eprintln!(
                    "token {} (single use, expires {}): start a worker with --token {}",
                    created.token.id, created.token.expires_at, created.secret
                );
            } else {
                print(connection.output, &created, &[], vec![]);
            }
        }
        TokensCommand::List(connection) => {
            let page: Page<EnrollmentTokenInfo> =
                connection.client()?.get("enrollment-tokens").await?;
            print(
                connection.output,
                &page,
                TOKEN_HEADERS,
                page.items.iter().map(token_row).collect(),
            );
        }
        TokensCommand::Revoke { connection, id } => {
            let token: EnrollmentTokenInfo = connection
                .client()?
                .post_empty(&format!("enrollment-tokens/{id}/revoke"))
                .await?;
            print(
                connection.output,
                &token,
                TOKEN_HEADERS,
                vec![token_row(&token)],
            );
        }
    }
    Ok(())
}

const WORKER_HEADERS: &[&str] = &["ID", "NAME", "STATE", "CONNECTED", "DEVICES", "LAST SEEN"];
const DEVICE_HEADERS: &[&str] = &[
    "ID",
    "NAME",
    "KIND",
    "MODEL",
    "MEMORY",
    "STATE",
    "UTIL",
    "TEMP",
    "SIMULATED",
];

fn worker_row(worker: &Worker) -> Vec<String> {
    let state = if worker.state == flotilla_proto::api::WorkerState::Paused {
        "paused"
    } else {
        "active"
    };
    vec![
        worker.id.clone(),
        worker.name.clone(),
        state.to_owned(),
        worker.connected.to_string(),
        worker.device_count.to_string(),
        opt(worker.last_seen_at.clone()),
    ]
}

fn device_row(device: &Device) -> Vec<String> {
    let telemetry = device.telemetry.as_ref();
    vec![
        device.id.clone(),
        device.name.clone(),
        device.kind.as_str().to_owned(),
        device.model.clone(),
        gib(device.memory_bytes),
        device.state.to_string(),
        opt(telemetry.map(|t| format!("{}%", t.utilization_pct))),
        opt(telemetry
            .and_then(|t| t.temperature_c)
            .map(|c| format!("{c}C"))),
        device.simulated.to_string(),
    ]
}

async fn objects(command: ObjectCommand, noun: &str) -> Result<()> {
    let is_devices = noun == "devices";
    let (connection, path, body): (Connection, String, Option<RenameRequest>) = match command {
        ObjectCommand::List(connection) => {
            let client = connection.client()?;
            if is_devices {
                let page: Page<Device> = client.get("devices").await?;
                print(
                    connection.output,
                    &page,
                    DEVICE_HEADERS,
                    page.items.iter().map(device_row).collect(),
                );
            } else {
                let page: Page<Worker> = client.get("workers").await?;
                print(
                    connection.output,
                    &page,
                    WORKER_HEADERS,
                    page.items.iter().map(worker_row).collect(),
                );
            }
            return Ok(());
        }
        ObjectCommand::Show { connection, id } => {
            let client = connection.client()?;
            if is_devices {
                let detail: DeviceDetail = client.get(&format!("devices/{id}")).await?;
                print(
                    connection.output,
                    &detail,
                    DEVICE_HEADERS,
                    vec![device_row(&detail.device)],
                );
                if connection.output == Format::Table && !detail.history.is_empty() {
                    println!("\nhistory ({} points, newest last):", detail.history.len());
                    let rows = detail
                        .history
                        .iter()
                        .map(|p| {
                            vec![
                                p.bucket_start.clone(),
                                format!("{}%", p.utilization_pct_avg),
                                gib(p.memory_used_bytes_avg),
                                opt(p.temperature_c_max),
                                opt(p.power_w_avg),
                            ]
                        })
                        .collect::<Vec<_>>();
                    print!(
                        "{}",
                        crate::output::table(
                            &["BUCKET", "UTIL", "MEMORY", "TEMP MAX", "POWER W"],
                            &rows
                        )
                    );
                }
            } else {
                let detail: WorkerDetail = client.get(&format!("workers/{id}")).await?;
                print(
                    connection.output,
                    &detail,
                    WORKER_HEADERS,
                    vec![worker_row(&detail.worker)],
                );
                if connection.output == Format::Table {
                    println!();
                    print!(
                        "{}",
                        crate::output::table(
                            DEVICE_HEADERS,
                            &detail.devices.iter().map(device_row).collect::<Vec<_>>()
                        )
                    );
                }
            }
            return Ok(());
        }
        ObjectCommand::Rename {
            connection,
            id,
            name,
        } => (
            connection,
            format!("{noun}/{id}/rename"),
            Some(RenameRequest { name }),
        ),
        ObjectCommand::Pause { connection, id } => (connection, format!("{noun}/{id}/pause"), None),
        ObjectCommand::Resume { connection, id } => {
            (connection, format!("{noun}/{id}/resume"), None)
        }
        ObjectCommand::Remove { connection, id } => {
            (connection, format!("{noun}/{id}/remove"), None)
        }
    };
    let client = connection.client()?;
    let answer: serde_json::Value = match &body {
        Some(body) => client.post(&path, body).await?,
        None => client.post_empty(&path).await?,
    };
    if connection.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let device = answer.get("device").cloned().unwrap_or(answer.clone());
        if is_devices && let Ok(device) = serde_json::from_value::<Device>(device) {
            print!(
                "{}",
                crate::output::table(DEVICE_HEADERS, &[device_row(&device)])
            );
        } else if let Ok(detail) = serde_json::from_value::<WorkerDetail>(answer.clone()) {
            print!(
                "{}",
                crate::output::table(WORKER_HEADERS, &[worker_row(&detail.worker)])
            );
        } else if let Ok(worker) = serde_json::from_value::<Worker>(answer) {
            print!(
                "{}",
                crate::output::table(WORKER_HEADERS, &[worker_row(&worker)])
            );
        }
    }
    Ok(())
}
