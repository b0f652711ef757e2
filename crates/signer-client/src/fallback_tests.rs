//! Coalesced calls against a server that predates `COALESCED_CALLS`: a real QUIC server on
//! loopback whose decoder refuses the flag bit exactly as an older signerd's does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicServerConfig;
use signer_proto::protocol::{
    self, Op, ResponseBody, ResponseFrame, SignatureForm, ALPN, COALESCED_CALLS,
};
use signer_proto::{Scheme, Status};

use crate::{test_pki, Client, ClientOptions};

#[derive(Default)]
struct Seen {
    coalesced: AtomicUsize,
    signs: AtomicUsize,
}

/// The answer of a server from before `COALESCED_CALLS`: a request with that bit is malformed.
/// Its message is the decoder's own, for the frame with the op byte of a Sign, on which the bit
/// is still unknown (the old decoder checked the flags before the body, for every op).
fn old_server_answer(frame: &[u8], seen: &Seen) -> (Op, ResponseFrame) {
    let req = protocol::decode_request(frame).expect("the client sends valid frames");
    let op = req.request.op();
    if req.flags & COALESCED_CALLS != 0 {
        seen.coalesced.fetch_add(1, Ordering::SeqCst);
        let mut as_sign = frame.to_vec();
        as_sign[5] = Op::Sign.code();
        let e = protocol::decode_request(&as_sign).unwrap_err();
        let message = format!("invalid argument: malformed request: {e}");
        return (
            op,
            ResponseFrame::error(Status::InvalidArgument, 0, message),
        );
    }
    seen.signs.fetch_add(1, Ordering::SeqCst);
    let body = ResponseBody::Signed {
        version: 1,
        signature: SignatureForm::Plain(Bytes::from_static(b"sig")),
    };
    (op, ResponseFrame::ok(body))
}

async fn serve(endpoint: quinn::Endpoint, seen: Arc<Seen>) {
    while let Some(incoming) = endpoint.accept().await {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let frame = recv.read_to_end(protocol::MAX_FRAME + 4).await.unwrap();
                    let (op, answer) = old_server_answer(&frame, &seen);
                    let mut out = BytesMut::new();
                    protocol::encode_response(op, &answer, &mut out).unwrap();
                    send.write_all(&out).await.unwrap();
                    let _ = send.finish();
                });
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_gets_the_calls_one_by_one() {
    let pki = test_pki::pki();
    use rustls::pki_types::pem::PemObject;
    let certs =
        vec![rustls::pki_types::CertificateDer::from_pem_slice(pki.cert_pem.as_bytes()).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::try_from(pki.key_der.clone()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    tokio::spawn(serve(endpoint, Arc::clone(&seen)));

    let opts = ClientOptions::builder()
        .endpoint(addr)
        .server_name("localhost")
        .ca_pem(pki.cert_pem.clone())
        .identity_pem(pki.cert_pem.clone(), pki.key_pem.clone())
        .coalesce(16)
        .build()
        .unwrap();
    let client = Client::connect(opts).await.unwrap();
    let burst = |n: usize| {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let c = client.clone();
                tokio::spawn(
                    async move { c.sign("k", Scheme::EcdsaSha256, vec![i as u8; 32]).await },
                )
            })
            .collect();
        async move {
            for call in calls {
                let sig = call.await.unwrap().expect("signed after the fallback");
                assert_eq!(sig.signature.as_ref(), b"sig");
            }
        }
    };
    // Calls coalesce only when they are in flight together: on a loaded host a burst's tasks
    // may run one after another, so bursts are sent until one was coalesced (bounded).
    let mut bursts = 0;
    while seen.coalesced.load(Ordering::SeqCst) == 0 && bursts < 50 {
        burst(8).await;
        bursts += 1;
    }
    let coalesced = seen.coalesced.load(Ordering::SeqCst);
    assert!(coalesced >= 1, "the client tried a coalesced request first");
    assert_eq!(
        seen.signs.load(Ordering::SeqCst),
        8 * bursts,
        "each call sent once more, alone (or alone from the start)"
    );
    // From then on, no coalesced request is tried again.
    burst(8).await;
    assert_eq!(seen.coalesced.load(Ordering::SeqCst), coalesced);
    assert_eq!(seen.signs.load(Ordering::SeqCst), 16);
}
