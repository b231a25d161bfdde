//! The yardstick for the stolen path: a minimal multiplexed TLS relay of the same hops,
//! on the same stack (tokio + rustls, ring, TLS 1.3 defaults).
//!
//! `edge` plays the operator: it accepts the clients' TCP connections and carries them
//! over one TLS stream, which `far` (playing `mirrordctl`) opened to it; `far` dials the
//! local process once per carried connection. What it does per byte is what any relay of
//! these hops must do and nothing else: one TLS stream, a 9-byte frame header
//! (kind, connection, length), a single writer per side that batches every queued frame
//! into one write, and a frame reader that writes each payload straight into its socket.
//! What it leaves out is everything the operator adds on top: sessions, routing, HTTP
//! parsing, per-connection flow control (a stalled socket here stalls the whole stream:
//! acceptable for a yardstick, not for a product), metrics, logs.
//!
//! `edge` runs on a 2-worker multi-threaded runtime like the operator; `far` on a
//! current-thread runtime like `mirrordctl`.

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const CLOSE: u8 = 3;
const HEADER: usize = 9;
const READ_CHUNK: usize = 16 * 1024;
const SERVER_NAME: &str = "relay.bench";

type Sockets = Arc<Mutex<HashMap<u32, OwnedWriteHalf>>>;

fn frame(kind: u8, conn: u32, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER + payload.len());
    b.put_u8(kind);
    b.put_u32(conn);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

/// The one writer of the TLS stream: everything queued goes out in one write and flush.
async fn write_batched(mut tls: impl AsyncWrite + Unpin, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(f) = rx.recv().await {
        batch.extend_from_slice(&f);
        while let Ok(f) = rx.try_recv() {
            batch.extend_from_slice(&f);
        }
        if tls.write_all(&batch).await.is_err() || tls.flush().await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// Reads one carried connection's bytes into DATA frames (the payload read in place,
/// after room for the header), then CLOSE.
async fn pump_socket(
    conn: u32,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    out: mpsc::UnboundedSender<Bytes>,
) {
    loop {
        let mut b = BytesMut::with_capacity(HEADER + READ_CHUNK);
        b.put_bytes(0, HEADER);
        match rd.read_buf(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                b[0] = DATA;
                b[1..5].copy_from_slice(&conn.to_be_bytes());
                b[5..9].copy_from_slice(&(n as u32).to_be_bytes());
                if out.send(b.freeze()).is_err() {
                    return;
                }
            }
        }
    }
    let _ = out.send(frame(CLOSE, conn, &[]));
}

/// Reads frames off the TLS stream; DATA is written straight into its socket. `dial`
/// (the far side) connects an OPEN's connection to the local process.
async fn read_frames(
    tls: impl AsyncRead + Unpin,
    sockets: Sockets,
    out: mpsc::UnboundedSender<Bytes>,
    dial: Option<String>,
) -> anyhow::Result<()> {
    let mut tls = tokio::io::BufReader::with_capacity(64 * 1024, tls);
    let mut header = [0u8; HEADER];
    let mut payload = Vec::new();
    loop {
        tls.read_exact(&mut header).await?;
        let mut h = &header[..];
        let (kind, conn, len) = (h.get_u8(), h.get_u32(), h.get_u32() as usize);
        payload.resize(len, 0);
        tls.read_exact(&mut payload).await?;
        match kind {
            OPEN => {
                let to = dial.as_deref().context("OPEN on the edge")?;
                let s = TcpStream::connect(to).await?;
                s.set_nodelay(true)?;
                let (rd, wr) = s.into_split();
                sockets.lock().unwrap().insert(conn, wr);
                tokio::spawn(pump_socket(conn, rd, out.clone()));
            }
            DATA => {
                let wr = sockets.lock().unwrap().remove(&conn);
                if let Some(mut wr) = wr {
                    if wr.write_all(&payload).await.is_ok() {
                        sockets.lock().unwrap().insert(conn, wr);
                    }
                }
            }
            _ => {
                // The peer is done sending on this connection: pass the FIN on.
                let wr = sockets.lock().unwrap().remove(&conn);
                if let Some(mut wr) = wr {
                    let _ = wr.shutdown().await;
                }
            }
        }
    }
}

/// `edge`: writes its self-signed certificate to `cert_out`, takes one TLS stream on
/// `tunnel`, then carries every connection accepted on `listen` over it.
pub async fn edge(listen: &str, tunnel: &str, cert_out: &Path) -> anyhow::Result<()> {
    let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()])?;
    std::fs::write(cert_out, ck.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)?;
    let tunnel = TcpListener::bind(tunnel).await?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    // The first connection that completes a handshake (a port probe does not).
    let tls = loop {
        let (tcp, _) = tunnel.accept().await?;
        tcp.set_nodelay(true)?;
        if let Ok(tls) = acceptor.accept(tcp).await {
            break tls;
        }
    };
    let (rd, wr) = tokio::io::split(tls);
    let (out, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_batched(wr, rx));
    let sockets: Sockets = Arc::default();
    tokio::spawn(read_frames(rd, Arc::clone(&sockets), out.clone(), None));
    let clients = TcpListener::bind(listen).await?;
    let mut next = 0u32;
    loop {
        let (s, _) = clients.accept().await?;
        s.set_nodelay(true)?;
        next += 1;
        let (rd, wr) = s.into_split();
        sockets.lock().unwrap().insert(next, wr);
        let _ = out.send(frame(OPEN, next, &[]));
        tokio::spawn(pump_socket(next, rd, out.clone()));
    }
}

/// `far`: opens the TLS stream to `tunnel` (trusting `cert`) and dials `local` for every
/// connection the edge opens.
pub async fn far(tunnel: &str, cert: &Path, local: String) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(cert)?;
    for c in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(tunnel).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME)?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await?;
    let (rd, wr) = tokio::io::split(tls);
    let (out, rx) = mpsc::unbounded_channel();
    tokio::spawn(write_batched(wr, rx));
    read_frames(rd, Sockets::default(), out, Some(local)).await
}
