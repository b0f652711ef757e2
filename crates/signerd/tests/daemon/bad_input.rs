//! Bad requests: precise statuses, malformed frames, and the server stays up.

use signer_client::{SignOptions, Status};
use signer_proto::protocol::{self, Op};
use signerd::Scheme;

use crate::daemon::{ec_key, random_bytes, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_requests_get_the_right_status() {
    let d = Daemon::start("status").await;
    let admin = d.admin().await;
    let app = d.app().await;
    let name = ec_key(&admin, "status").await;
    let e = app
        .sign("no-such-key", Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::NotFound), "{e}");
    let e = app
        .sign(&name, Scheme::EcdsaSha256, random_bytes(31))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidArgument), "{e}");
    let e = app
        .sign(&name, Scheme::RsaPssSha256, random_bytes(32))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::InvalidArgument), "{e}");
    let e = app
        .sign_with(
            &name,
            Scheme::EcdsaSha256,
            random_bytes(32),
            SignOptions::new().version(9),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::NotFound), "{e}");
    // Unknown scheme: only a raw frame can carry one.
    let mut frame = vec![1u8, Op::Sign as u8, 0, 0, 0, 0, 0x13, 0x88];
    frame.push(name.len() as u8);
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, 99, 0, 0, 0, 32]);
    frame.extend_from_slice(&[7u8; 32]);
    let resp = raw_roundtrip(&d, &framed(&frame)).await.expect("answered");
    let resp = protocol::decode_response(Op::Sign, &resp).unwrap();
    assert_eq!(resp.status, Status::InvalidArgument);
    assert!(resp.message.contains("scheme"), "{}", resp.message);
    // Still up.
    app.sign(&name, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_never_crash_the_server() {
    let mut d = Daemon::start("garbage").await;
    let admin = d.admin().await;
    let name = ec_key(&admin, "garbage").await;
    let valid = {
        let mut f = vec![
            1u8,
            Op::Sign as u8,
            0,
            0,
            0,
            0,
            0x13,
            0x88,
            name.len() as u8,
        ];
        f.extend_from_slice(name.as_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 1, 0, 0, 0, 32]);
        f.extend_from_slice(&[7u8; 32]);
        framed(&f)
    };
    let mut cases: Vec<Vec<u8>> = vec![
        vec![],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        random_bytes(1000),
        vec![0xff, 0xff, 0xff, 0xff, 1, 1],
        vec![0, 0, 0, 200, 1, 1, 0, 0],
        valid[..valid.len() - 5].to_vec(),
        [valid.clone(), vec![0]].concat(),
        vec![0u8; protocol::MAX_FRAME + 100],
    ];
    for cut in [1, 4, 5, 9, 12] {
        cases.push(valid[..cut].to_vec());
    }
    for case in &cases {
        match raw_roundtrip(&d, case).await {
            Ok(resp) => {
                let resp = protocol::decode_response(Op::Sign, &resp).expect("a decodable answer");
                assert_eq!(
                    resp.status,
                    Status::InvalidArgument,
                    "len {}: {}",
                    case.len(),
                    resp.message
                );
            }
            Err(e) => eprintln!("stream closed for a {}-byte case: {e}", case.len()),
        }
        assert!(
            d.alive(),
            "server died on a {}-byte case; log:\n{}",
            case.len(),
            d.log()
        );
    }
    // The next well-formed request succeeds.
    let resp = raw_roundtrip(&d, &valid).await.unwrap();
    let resp = protocol::decode_response(Op::Sign, &resp).unwrap();
    assert_eq!(resp.status, Status::Ok, "{}", resp.message);
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Sends raw bytes on one stream with the app identity; returns the raw response.
async fn raw_roundtrip(d: &Daemon, bytes: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let (_ep, conn) = d.raw_connect().await;
    let (mut send, mut recv) = conn.open_bi().await?;
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let data = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        recv.read_to_end(1 << 21),
    )
    .await??;
    conn.close(0u32.into(), b"done");
    Ok(data)
}
