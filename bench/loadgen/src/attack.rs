//! What a hostile (authenticated) client does in `bench/bounds.sh`, with the protocol's own
//! types: oversized strings, a mirror that never reads, unfinished frames.

use crate::{hello, Ctx, Transport};
use anyhow::bail;
use futures::{SinkExt, StreamExt};
use mirrord_protocol::*;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Session requests whose target name is 900 KB; prints how many were refused.
    Oversized,
    /// One filtered mirror (`--path ^/up`) whose client never reads; holds until stdin closes.
    MirrorHog,
    /// Sessions each sending the start of a 1 MB frame and no more; holds until stdin closes.
    PartialFrames,
}

pub async fn run(ctx: Arc<Ctx>, kind: Kind, count: usize) -> anyhow::Result<()> {
    match kind {
        Kind::Oversized => oversized(&ctx, count).await,
        Kind::MirrorHog => {
            let filter = HttpFilterSpec {
                path: vec!["^/up".into()],
                ..Default::default()
            };
            let _t = session(&ctx, PortMode::Mirror, Some(filter)).await?;
            println!("mirror_hog=open");
            hold().await
        }
        Kind::PartialFrames => partial_frames(&ctx, count).await,
    }
}

async fn request(
    ctx: &Ctx,
    target_name: String,
    mode: PortMode,
    filter: Option<HttpFilterSpec>,
) -> anyhow::Result<(Transport, ServerMessage)> {
    let mut t = hello(ctx).await?;
    t.send(ClientMessage::OpenSession(SessionRequest {
        target: TargetRef {
            name: target_name,
            ..ctx.target.clone()
        },
        ports: vec![PortRequest {
            port: ctx.port,
            mode,
            filter,
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
        Some(Ok(m)) => Ok((t, m)),
        other => bail!("no answer: {other:?}"),
    }
}

async fn session(
    ctx: &Ctx,
    mode: PortMode,
    filter: Option<HttpFilterSpec>,
) -> anyhow::Result<Transport> {
    match request(ctx, ctx.target.name.clone(), mode, filter).await? {
        (t, ServerMessage::SessionOpened(_)) => Ok(t),
        (_, other) => bail!("session not opened: {other:?}"),
    }
}

async fn oversized(ctx: &Ctx, count: usize) -> anyhow::Result<()> {
    let mut limited = 0;
    for _ in 0..count {
        if let (_, ServerMessage::Error(e)) =
            request(ctx, "n".repeat(900_000), PortMode::Steal, None).await?
        {
            limited += usize::from(e.code == ErrorCode::Limit);
        }
    }
    println!("oversized_requests={count} refused_with_limit={limited}");
    Ok(())
}

async fn partial_frames(ctx: &Ctx, count: usize) -> anyhow::Result<()> {
    let filter = HttpFilterSpec {
        header: vec!["^x-bench: 1$".into()],
        ..Default::default()
    };
    let mut held = Vec::new();
    let mut cut = 0;
    for _ in 0..count {
        let t = session(ctx, PortMode::Steal, Some(filter.clone())).await?;
        let mut s = t.into_inner();
        let sent = async {
            s.write_all(&1_000_000u32.to_be_bytes()).await?;
            s.write_all(&vec![7u8; 999_000]).await?;
            s.flush().await
        };
        // The operator may close a connection past the budget before it is all sent.
        match sent.await {
            Ok(()) => held.push(s),
            Err(_) => cut += 1,
        }
    }
    // Which of the others the operator closed (it says why first).
    let mut refused = cut;
    for s in &mut held {
        let mut buf = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), s.read(&mut buf)).await
        {
            refused += usize::from(
                n > 0 && String::from_utf8_lossy(&buf[..n]).contains("may have buffered"),
            );
        }
    }
    println!("partial_frames={count} refused_over_budget={refused}");
    hold().await
}

/// Until stdin closes (the benchmark script decides when).
async fn hold() -> anyhow::Result<()> {
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    Ok(())
}
