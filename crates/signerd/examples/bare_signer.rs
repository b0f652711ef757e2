//! The issue-4 baseline: a bare quinn + crossbeam + cryptoki signer that speaks signerd's wire
//! protocol, so `loadgen` can drive it exactly as it drives the daemon. It is what a signer costs
//! without everything that makes signerd a product: no audit log, metrics, quotas, policy,
//! admission control, deadlines, breakers, retries, batching of answers or graceful shutdown.
//! One stream per request, one crossbeam queue per partition, one worker thread (session) per
//! partition signing with the same key handling as the engine, and one wake-up per answer.
//!
//! Only for measuring (`tuning/bare.sh`); never a way to serve real requests:
//!
//! ```text
//! cargo run --release --example bare_signer -- --config DIR/signerd.toml --key bench-p256 \
//!     --listen 127.0.0.1:7643
//! ```
//!
//! It uses the daemon's TLS certificate and client CA from the config (clients still present
//! their certificate; that costs only the handshake) and answers `Sign` for the key's signing
//! version (no version, or that one) and default scheme, and `GetPublicKey` for that key;
//! anything else is refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use clap::Parser;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{TransportConfig, VarInt};
use tokio::sync::oneshot;

use signer_proto::protocol::{self, Op, Request, ResponseBody, ResponseFrame, SignatureForm};
use signerd::ceiling::{signing_session, Holders};
use signerd::config::Config;
use signerd::hsm::mechanism;
use signerd::{KeyName, Payload, Status};

#[derive(Parser, Debug)]
#[command(about = "Bare baseline signer for benchmarks (not a server for real use)")]
struct Args {
    /// signerd config: its providers, partitions, PINs and TLS files are used.
    #[arg(long)]
    config: PathBuf,
    /// The key to sign with (its signing version must be on the tokens).
    #[arg(long)]
    key: String,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:7643")]
    listen: SocketAddr,
    /// Jobs waiting per partition before requests are answered OVERLOADED.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

type Job = (Payload, oneshot::Sender<Result<Vec<u8>, String>>);

struct Shared {
    queues: Vec<crossbeam::channel::Sender<Job>>,
    next: AtomicUsize,
    key: signerd::hsm::objects::FoundKey,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let cfg = Config::load(&args.config).map_err(|e| e.to_string())?;
    let server = cfg
        .server
        .clone()
        .ok_or("the config has no [server] section")?;
    let key = KeyName::new(&args.key).map_err(|e| e.to_string())?;
    let holders = Holders::open(&cfg, &key)?;
    if holders.partitions.is_empty() {
        return Err(format!("no partition holds key {key}"));
    }
    let scheme = holders.key.key_type.default_scheme();
    let mut queues = Vec::new();
    for part in &holders.partitions {
        let (tx, rx) = crossbeam::channel::bounded::<Job>(args.queue);
        let (session, handle) = signing_session(part, &holders.key)?;
        let name = part.name().to_owned();
        std::thread::spawn(move || {
            let mech = mechanism::mechanism(scheme);
            for (payload, reply) in rx {
                let input = mechanism::sign_input(&payload);
                let result = session
                    .sign(&mech, handle, &input)
                    .map_err(|e| format!("{name}: C_Sign: {e}"))
                    .and_then(|raw| {
                        mechanism::encode_signature(scheme, raw).map_err(|e| e.to_string())
                    });
                let _ = reply.send(result);
            }
        });
        queues.push(tx);
    }
    let shared = Arc::new(Shared {
        queues,
        next: AtomicUsize::new(0),
        key: holders.key,
    });

    let tls = signerd::tls::server_config(&server.cert, &server.key, &server.client_ca)
        .map_err(|e| e.to_string())?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(server.max_streams_per_connection));
    transport.ack_frequency_config(Some(signerd::server::ack_frequency()));
    let mut quic = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    quic.transport_config(Arc::new(transport));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server.runtime_threads())
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let endpoint = quinn::Endpoint::server(quic, args.listen).map_err(|e| e.to_string())?;
        eprintln!("bare signer: {key} on {}", args.listen);
        while let Some(incoming) = endpoint.accept().await {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(stream(send, recv, Arc::clone(&shared)));
                }
            });
        }
        Ok(())
    })
}

async fn stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, shared: Arc<Shared>) {
    let Ok(data) = recv.read_to_end(protocol::MAX_FRAME + 4).await else {
        return;
    };
    let (op, frame) = match protocol::decode_request(&data) {
        Ok(req) => (req.request.op(), answer(req.request, &shared).await),
        Err(e) => (
            Op::Sign,
            ResponseFrame::error(Status::InvalidArgument, 0, e.to_string()),
        ),
    };
    let mut buf = BytesMut::with_capacity(128);
    if protocol::encode_response(op, &frame, &mut buf).is_ok()
        && send.write_chunk(buf.freeze()).await.is_ok()
    {
        let _ = send.finish();
    }
}

async fn answer(request: Request, shared: &Shared) -> ResponseFrame {
    let key = &shared.key;
    match request {
        Request::Sign {
            key: name,
            version,
            scheme,
            payload,
        } if name == key.name
            && version.is_none_or(|v| v == key.version)
            && scheme == key.key_type.default_scheme() =>
        {
            let payload = match Payload::new(scheme, payload) {
                Ok(p) => p,
                Err(e) => return ResponseFrame::error(Status::InvalidArgument, 0, e.to_string()),
            };
            let (tx, rx) = oneshot::channel();
            let i = shared.next.fetch_add(1, Ordering::Relaxed) % shared.queues.len();
            if shared.queues[i].try_send((payload, tx)).is_err() {
                return ResponseFrame::error(Status::Overloaded, 10, "queue full");
            }
            match rx.await {
                Ok(Ok(sig)) => ResponseFrame::ok(ResponseBody::Signed {
                    version: key.version,
                    signature: SignatureForm::Plain(Bytes::from(sig)),
                }),
                Ok(Err(e)) => ResponseFrame::error(Status::Internal, 0, e),
                Err(_) => ResponseFrame::error(Status::Internal, 0, "worker gone"),
            }
        }
        Request::GetPublicKey { key: name, .. } if name == key.name => {
            ResponseFrame::ok(ResponseBody::PublicKey {
                version: key.version,
                key_type: key.key_type,
                spki_der: Bytes::from(key.spki.clone()),
            })
        }
        _ => ResponseFrame::error(
            Status::InvalidArgument,
            0,
            "the bare signer answers only Sign and GetPublicKey for its one key",
        ),
    }
}
