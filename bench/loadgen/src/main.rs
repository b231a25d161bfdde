//! `mirrord-bench`: drives the operator the way thousands of CLIs would, from one process.
//!
//! - `open-close`: open and end sessions back to back; prints sessions per second.
//! - `hold`: open N idle sessions (answering pings) and keep them until stdin closes.
//! - `events`: emit functional events through the JSON logger; prints events per second.
//! - `relay-edge` / `relay-far`: the minimal multiplexed TLS relay the stolen path is
//!   measured against (see [`relay`]);
//! - `attack`: what a hostile client does, for `bench/bounds.sh` (see [`attack`]);
//! - `filter-cost`: a filter regex's cost per header line against `regex` alone.

mod attack;
mod filter_cost;
mod relay;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use mirrord_identity::{client_config, Credentials, OPERATOR_SERVER_NAME};
use mirrord_protocol::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::codec::Framed;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    OpenClose {
        #[arg(long)]
        credentials: PathBuf,
        #[arg(long)]
        target: String,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    Hold {
        #[arg(long)]
        credentials: PathBuf,
        #[arg(long)]
        target: String,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    Events {
        #[arg(long, default_value_t = 200_000)]
        count: usize,
    },
    /// What a filter's regex costs per header line, against `regex` alone.
    FilterCost {
        #[arg(long, default_value_t = 200_000)]
        rounds: usize,
    },
    /// What a hostile client does (bench/bounds.sh).
    Attack {
        #[arg(long)]
        credentials: PathBuf,
        #[arg(long)]
        target: String,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        kind: attack::Kind,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// The reference relay's operator side (a 2-worker runtime, like the operator's).
    RelayEdge {
        /// Where the clients connect.
        #[arg(long)]
        listen: String,
        /// Where `relay-far` opens the TLS stream.
        #[arg(long)]
        tunnel: String,
        /// The self-signed certificate is written here for `relay-far`.
        #[arg(long)]
        cert_out: PathBuf,
    },
    /// The reference relay's developer side (a current-thread runtime, like mirrordctl's).
    RelayFar {
        #[arg(long)]
        tunnel: String,
        #[arg(long)]
        cert: PathBuf,
        /// The local process every carried connection is dialled to.
        #[arg(long)]
        local: String,
    },
}

type Transport = Framed<
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    FrameCodec<ServerMessage, ClientMessage>,
>;

struct Ctx {
    creds: Credentials,
    tls: tokio_rustls::TlsConnector,
    target: TargetRef,
    port: u16,
}

/// A connection past its hello.
async fn hello(ctx: &Ctx) -> anyhow::Result<Transport> {
    let tcp = tokio::net::TcpStream::connect(&ctx.creds.operator_addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(OPERATOR_SERVER_NAME)?.to_owned();
    let mut t = Framed::new(ctx.tls.connect(name, tcp).await?, FrameCodec::default());
    t.send(ClientMessage::Hello(ClientHello {
        protocol_version: PROTOCOL_VERSION,
        cli_version: "bench".into(),
        client_name: "bench".into(),
        client_hostname: "bench".into(),
    }))
    .await?;
    match t.next().await {
        Some(Ok(ServerMessage::Welcome(_))) => Ok(t),
        other => bail!("no welcome: {other:?}"),
    }
}

async fn open(ctx: &Ctx) -> anyhow::Result<(Transport, SessionId)> {
    let mut t = hello(ctx).await?;
    t.send(ClientMessage::OpenSession(SessionRequest {
        target: ctx.target.clone(),
        ports: vec![PortRequest {
            port: ctx.port,
            mode: PortMode::Mirror,
            filter: None,
        }],
        on_concurrent_steal: ConcurrentSteal::Abort,
        copy_target: false,
        scale_down: false,
        context: Default::default(),
        listen: false,
        profile: None,
    }))
    .await?;
    match t.next().await {
        Some(Ok(ServerMessage::SessionOpened(o))) => Ok((t, o.session_id)),
        other => bail!("session not opened: {other:?}"),
    }
}

fn ctx(credentials: PathBuf, target: String, port: u16) -> anyhow::Result<Arc<Ctx>> {
    let creds = Credentials::load(&credentials)?;
    let tls = tokio_rustls::TlsConnector::from(client_config(&creds)?);
    let (kind, name) = target.split_once('/').unwrap_or(("deployment", &target));
    Ok(Arc::new(Ctx {
        creds,
        tls,
        target: TargetRef {
            kind: kind.into(),
            name: name.into(),
            namespace: "default".into(),
            container: None,
        },
        port,
    }))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = match cli.cmd {
        Cmd::RelayFar { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Cmd::RelayEdge { .. } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        _ => tokio::runtime::Runtime::new()?,
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::RelayEdge {
            listen,
            tunnel,
            cert_out,
        } => relay::edge(&listen, &tunnel, &cert_out).await?,
        Cmd::RelayFar {
            tunnel,
            cert,
            local,
        } => relay::far(&tunnel, &cert, local).await?,
        Cmd::OpenClose {
            credentials,
            target,
            port,
            count,
            concurrency,
        } => {
            let ctx = ctx(credentials, target, port)?;
            let next = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let (ctx, next) = (ctx.clone(), next.clone());
                    tokio::spawn(async move {
                        while next.fetch_add(1, Ordering::Relaxed) < count {
                            let (mut t, _) = open(&ctx).await?;
                            t.send(ClientMessage::EndSession).await?;
                            // Wait for the operator to close: the session is fully ended.
                            while t.next().await.is_some() {}
                        }
                        anyhow::Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.await??;
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "open_close_sessions={count} seconds={secs:.3} sessions_per_second={:.0}",
                count as f64 / secs
            );
        }
        Cmd::Hold {
            credentials,
            target,
            port,
            count,
            concurrency,
        } => {
            let ctx = ctx(credentials, target, port)?;
            let opened = Arc::new(AtomicUsize::new(0));
            let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let start = Instant::now();
            let (ready_tx, mut ready_rx) =
                tokio::sync::mpsc::channel::<anyhow::Result<()>>(count.max(1));
            for _ in 0..count {
                let (ctx, sem, opened, ready) =
                    (ctx.clone(), sem.clone(), opened.clone(), ready_tx.clone());
                tokio::spawn(async move {
                    let permit = sem.acquire_owned().await.expect("semaphore open");
                    let (mut t, _) = match open(&ctx).await {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = ready.send(Err(e)).await;
                            return;
                        }
                    };
                    drop(permit);
                    opened.fetch_add(1, Ordering::Relaxed);
                    let _ = ready.send(Ok(())).await;
                    // Idle: answer pings until the operator or the process ends.
                    while let Some(Ok(m)) = t.next().await {
                        if let ServerMessage::Ping { nonce } = m {
                            if t.send(ClientMessage::Pong { nonce }).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
            drop(ready_tx);
            for _ in 0..count {
                ready_rx.recv().await.context("session task vanished")??;
            }
            println!(
                "holding={} open_seconds={:.3}",
                opened.load(Ordering::Relaxed),
                start.elapsed().as_secs_f64()
            );
            // Hold until stdin closes (the benchmark script decides when).
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        }
        Cmd::FilterCost { rounds } => filter_cost::run(rounds)?,
        Cmd::Attack {
            credentials,
            target,
            port,
            kind,
            count,
        } => attack::run(ctx(credentials, target, port)?, kind, count).await?,
        Cmd::Events { count } => {
            let _guard = mirrord_telemetry::logs::init(true, None);
            let t = mirrord_telemetry::Telemetry::new(Duration::from_secs(600));
            let meta = Arc::new(mirrord_telemetry::SessionMeta {
                session_id: "00000000000000AB".into(),
                target_type: "deployment".into(),
                target_name: "api".into(),
                target_namespace: "default".into(),
                client: mirrord_telemetry::ClientInfo {
                    client_id: "cafebabecafebabe".into(),
                    client_user: "alice".into(),
                    client_name: "Alice".into(),
                    client_hostname: "laptop".into(),
                    cli_version: "0.1.0".into(),
                },
            });
            let start = Instant::now();
            for i in 0..count {
                t.record(mirrord_telemetry::Event::PortStolen {
                    session: meta.clone(),
                    port: (i % 1000) as u16,
                    http_filter: "header=x-user: alice".into(),
                });
            }
            drop(_guard);
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "functional_events={count} seconds={secs:.3} events_per_second={:.0}",
                count as f64 / secs
            );
        }
    }
    Ok(())
}
