//! Quick start: create a key, encrypt and decrypt with an encryption context, and use a
//! data key for envelope encryption.
//!
//! ```sh
//! keyraft dev &                                  # a local cluster
//! set -a; . ./keyraft-dev/cluster.env; set +a    # endpoints and credentials
//! cargo run -p keyraft-client --example quickstart
//! ```
//!
//! Instead of the environment, a profile in `~/.keyraft/credentials` works too
//! (`KEYRAFT_PROFILE=dev`, see `keyraft_client::profile`); the client needs only one
//! endpoint and discovers the other members itself.

use keyraft_client::{Client, ClientConfig, EncryptionContext, ErrorCode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(ClientConfig::from_env()?)?;

    // A key; the id never changes, the ARN names region and account.
    let key = client.create_key("quickstart").await?;
    println!("created {} ({})", key.key_id, key.arn);

    // Encrypt up to 4096 bytes; the context is bound to the ciphertext.
    let context: EncryptionContext = [("tenant".to_string(), "acme".to_string())].into();
    let ct = client.encrypt(&key.key_id, b"card 4111", &context).await?;
    let pt = client.decrypt(&ct.ciphertext_blob, &context, None).await?;
    assert_eq!(pt.plaintext, b"card 4111");

    // The wrong context is refused with a typed error.
    let err = client
        .decrypt(&ct.ciphertext_blob, &EncryptionContext::new(), None)
        .await
        .expect_err("a different context must not decrypt");
    assert_eq!(err.code(), Some(ErrorCode::InvalidCiphertext));

    // Envelope encryption: a data key encrypts data locally; only its encrypted form is
    // stored next to the data, and Keyraft decrypts it when the data is read again.
    let dk = client
        .generate_data_key(&key.key_id, "AES_256", 0, &context)
        .await?;
    println!(
        "data key of {} bytes; store its {}-byte ciphertext",
        dk.plaintext.len(),
        dk.ciphertext_blob.len()
    );
    let again = client.decrypt(&dk.ciphertext_blob, &context, None).await?;
    assert_eq!(again.plaintext, dk.plaintext);

    // Disabled keys refuse cryptography on every node.
    client.disable_key(&key.key_id).await?;
    let err = client
        .encrypt(&key.key_id, b"x", &context)
        .await
        .expect_err("disabled");
    assert_eq!(err.code(), Some(ErrorCode::Disabled));
    client.enable_key(&key.key_id).await?;

    // The client found every member from its seeds; mutations went to the leader.
    let view = client.refresh().await?;
    println!("leader: {:?}", view.leader);
    for node in &view.nodes {
        println!(
            "  node {:?} at {}: {} calls from this client, healthy={}",
            node.id, node.endpoint, node.attempts, node.healthy
        );
    }
    Ok(())
}
