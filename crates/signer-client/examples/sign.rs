//! Sign a message's SHA-256 digest with a running signerd and check the signature.
//!
//! ```sh
//! ./scripts/quickstart          # a running dev daemon with key quickstart-p256
//! cargo run --example sign -- dev/client-app.toml quickstart-p256 "hello world"
//! ```

use sha2::{Digest, Sha256};
use signer_client::{Client, ClientOptions, Scheme};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let config = args.next().unwrap_or_else(|| "dev/client-app.toml".into());
    let key = args.next().unwrap_or_else(|| "quickstart-p256".into());
    let message = args.next().unwrap_or_else(|| "hello world".into());

    let client = Client::connect(ClientOptions::from_file(config.as_ref())?).await?;
    let digest = Sha256::digest(message.as_bytes()).to_vec();
    let sig = client
        .sign(&key, Scheme::EcdsaSha256, digest.clone())
        .await?;
    println!(
        "{key} v{} signed {message:?}: {} bytes (ASN.1 DER)",
        sig.version,
        sig.signature.len()
    );
    let valid = client
        .verify(
            &key,
            Some(sig.version),
            Scheme::EcdsaSha256,
            digest,
            sig.signature,
        )
        .await?;
    println!("verified by the daemon: {valid}");
    println!(
        "{}",
        client.public_key(&key, Some(sig.version)).await?.pem()
    );
    client.close();
    Ok(())
}
