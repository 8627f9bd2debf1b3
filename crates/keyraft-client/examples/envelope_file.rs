//! Envelope-encrypt a file of any size under a Keyraft key, and decrypt it again.
//!
//! ```sh
//! keyraft dev &                                  # a local cluster
//! set -a; . ./keyraft-dev/cluster.env; set +a    # endpoints and credentials
//! KEY=$(keyraft key create --description files | jq -r .KeyMetadata.KeyId)
//! cargo run -p keyraft-client --example envelope_file -- encrypt $KEY big.iso big.iso.krfe
//! cargo run -p keyraft-client --example envelope_file -- decrypt big.iso.krfe big.iso.out
//! ```
//!
//! One data key per file from `GenerateDataKey`; the file is encrypted locally in
//! 64 KiB authenticated frames, one frame in memory at a time. Decryption writes to a
//! temporary file and renames it only once every frame verified, so a tampered or
//! truncated message never leaves plaintext under the output's name. `keyraft envelope
//! encrypt|decrypt` is the same thing as a CLI command.

use std::path::Path;
use std::time::Instant;

use keyraft_client::envelope::{decrypt_stream, encrypt_stream, EncryptOptions};
use keyraft_client::{Client, ClientConfig, EncryptionContext};
use tokio::fs::{self, File};
use tokio::io::{BufReader, BufWriter};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let client = Client::connect(ClientConfig::from_env()?)?;
    // The context is authenticated with the data key and stored in the clear.
    let context = EncryptionContext::from([("purpose".to_string(), "example".to_string())]);
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["encrypt", key_id, input, output] => {
            let started = Instant::now();
            let reader = BufReader::with_capacity(1 << 20, File::open(input).await?);
            let mut writer = BufWriter::with_capacity(1 << 20, File::create(output).await?);
            let info = encrypt_stream(
                &client,
                key_id,
                &context,
                reader,
                &mut writer,
                &EncryptOptions::default(),
                None,
            )
            .await?;
            writer.into_inner().sync_all().await?;
            report("encrypted", info.plaintext_len, started);
            println!("under {}", info.key_id);
        }
        ["decrypt", input, output] => {
            let started = Instant::now();
            let partial = format!("{output}.partial");
            let reader = BufReader::with_capacity(1 << 20, File::open(input).await?);
            let mut writer = BufWriter::with_capacity(1 << 20, File::create(&partial).await?);
            match decrypt_stream(&client, reader, &mut writer, Some(&context), None).await {
                Ok(info) => {
                    writer.into_inner().sync_all().await?;
                    fs::rename(&partial, Path::new(output)).await?;
                    report("decrypted", info.plaintext_len, started);
                }
                Err(e) => {
                    drop(writer);
                    let _ = fs::remove_file(&partial).await;
                    return Err(e.into());
                }
            }
        }
        _ => {
            eprintln!("usage: envelope_file encrypt KEY_ID IN OUT | envelope_file decrypt IN OUT");
            std::process::exit(2);
        }
    }
    Ok(())
}

fn report(what: &str, bytes: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    println!(
        "{what} {bytes} bytes in {secs:.2} s ({:.0} MiB/s)",
        bytes as f64 / secs / (1024.0 * 1024.0)
    );
}
