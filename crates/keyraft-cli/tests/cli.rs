//! The `keyraft` binary as a user drives it: `keyraft dev` brings a cluster up and writes
//! `cluster.env`; client commands print AWS-shaped JSON, and failures print the error
//! envelope on stderr with exit status 1; Ctrl-C (SIGINT) stops every node.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn keyraft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyraft"))
}

fn env_file(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs a client command; returns (exit ok, stdout JSON or stderr JSON).
fn run(env: &[(String, String)], args: &[&str]) -> (bool, Value) {
    let out = keyraft()
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    let value = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "{args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&text)
        )
    });
    (out.status.success(), value)
}

/// A `keyraft dev` cluster; dropping it sends Ctrl-C (SIGINT) and waits.
struct Dev {
    child: std::process::Child,
    env: Vec<(String, String)>,
    pids: Vec<i32>,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start(region: &str) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("dev");
        // Kept for the failure message: why `dev` did not come up.
        let log_path = dir.path().join("dev.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = keyraft()
            .args([
                "dev",
                "--nodes",
                "3",
                "--base-port",
                "0",
                "--region",
                region,
                "--data-dir",
            ])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // `dev` prints one JSON line once the cluster is ready.
        let stdout = child.stdout.take().unwrap();
        let line = std::thread::spawn(move || {
            use std::io::BufRead;
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            line
        })
        .join()
        .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            // SIGINT, not SIGKILL: `dev` must get the chance to stop its nodes.
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("keyraft dev did not come up: {line:?}; its log:\n{log}")
        });
        assert_eq!(ready["Region"], region);
        let pids = ready["Nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["Pid"].as_i64().unwrap() as i32)
            .collect();
        Dev {
            child,
            env: env_file(&data.join("cluster.env")),
            pids,
            data,
            _dir: dir,
        }
    }

    /// Sends `signal` (Ctrl-C is SIGINT; `kill`, systemd and `docker stop` send SIGTERM),
    /// then waits for `dev` and every node to be gone.
    fn stop(mut self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "keyraft dev did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in &self.pids {
            let gone = (0..200).any(|_| {
                let alive = kill(Pid::from_raw(*pid), None).is_ok()
                    && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .is_ok_and(|s| !s.contains(") Z "));
                if alive {
                    std::thread::sleep(Duration::from_millis(50));
                }
                !alive
            });
            assert!(gone, "node process {pid} still runs");
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
            let _ = self.child.wait();
        }
    }
}

#[test]
fn dev_cluster_and_client_commands() {
    let dev = Dev::start("cli-1");
    assert_eq!(dev.pids.len(), 3);
    // Three nodes on one host: each is configured to run on its share of the cores.
    let cores = std::thread::available_parallelism().unwrap().get();
    for id in 1..=3 {
        let config = std::fs::read_to_string(dev.data.join(format!("node{id}.toml"))).unwrap();
        let workers = config
            .lines()
            .find_map(|l| l.strip_prefix("worker_threads = "))
            .unwrap_or_else(|| panic!("node {id}'s configuration sets no worker_threads"));
        assert_eq!(workers.parse::<usize>().unwrap(), (cores / 3).max(1));
    }
    let env = dev.env.clone();
    let endpoints = &env
        .iter()
        .find(|(k, _)| k == "KEYRAFT_ENDPOINTS")
        .unwrap()
        .1;
    assert_eq!(endpoints.split(',').count(), 3);

    let (ok, created) = run(&env, &["key", "create", "--description", "from the cli"]);
    assert!(ok, "{created}");
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["KeyMetadata"]["KeyState"], "Enabled");
    assert!(created["KeyMetadata"]["Arn"]
        .as_str()
        .unwrap()
        .starts_with("arn:keyraft:cli-1:111122223333:key/"));

    let (ok, enc) = run(
        &env,
        &[
            "encrypt",
            "--key-id",
            &key_id,
            "--plaintext",
            "hello",
            "--context",
            "app=cli",
        ],
    );
    assert!(ok, "{enc}");
    let blob = enc["CiphertextBlob"].as_str().unwrap().to_string();
    let (ok, dec) = run(
        &env,
        &["decrypt", "--ciphertext", &blob, "--context", "app=cli"],
    );
    assert!(ok, "{dec}");
    assert_eq!(dec["Plaintext"], "aGVsbG8=");
    assert_eq!(dec["KeyId"], enc["KeyId"]);

    let (ok, err) = run(&env, &["decrypt", "--ciphertext", &blob]);
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "InvalidCiphertextException");
    let (ok, err) = run(&env, &["key", "describe", "--key-id", "alias/nope"]);
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "NotFoundException");

    let (ok, dk) = run(
        &env,
        &[
            "data-key",
            "generate",
            "--key-id",
            &key_id,
            "--key-spec",
            "AES_128",
        ],
    );
    assert!(ok, "{dk}");
    assert_eq!(dk["Plaintext"].as_str().unwrap().len(), 24);
    let (ok, list) = run(&env, &["key", "list"]);
    assert!(ok);
    assert_eq!(list["Keys"][0]["KeyId"], key_id.as_str());

    let (ok, status) = run(&env, &["cluster", "status"]);
    assert!(ok, "{status}");
    let members = status["Members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(status["Leader"].as_u64().unwrap() >= 1);
    for m in members {
        assert!(endpoints.contains(m["Endpoint"].as_str().unwrap()), "{m}");
        assert!(["Leader", "Follower"].contains(&m["Role"].as_str().unwrap()));
    }
    let (ok, audit) = run(&env, &["audit", "tail", "--limit", "5"]);
    assert!(ok);
    assert_eq!(audit["ChainVerified"], true);
    assert_eq!(audit["Events"].as_array().unwrap().len(), 5);

    // Aliases, descriptions, tags, ReEncrypt and random bytes.
    let (ok, _) = run(
        &env,
        &[
            "alias",
            "create",
            "--alias-name",
            "alias/cli",
            "--target-key-id",
            &key_id,
        ],
    );
    assert!(ok);
    let (ok, aliases) = run(&env, &["alias", "list", "--key-id", "alias/cli"]);
    assert!(ok);
    assert_eq!(aliases["Aliases"][0]["AliasName"], "alias/cli");
    assert_eq!(aliases["Aliases"][0]["TargetKeyId"], key_id.as_str());
    let (ok, err) = run(
        &env,
        &[
            "alias",
            "create",
            "--alias-name",
            "alias/aws/x",
            "--target-key-id",
            &key_id,
        ],
    );
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "InvalidAliasNameException");
    let (ok, _) = run(
        &env,
        &[
            "key",
            "update-description",
            "--key-id",
            "alias/cli",
            "--description",
            "renamed",
        ],
    );
    assert!(ok);
    let (_, described) = run(&env, &["key", "describe", "--key-id", "alias/cli"]);
    assert_eq!(described["KeyMetadata"]["Description"], "renamed");
    let (ok, _) = run(
        &env,
        &[
            "key", "tag", "--key-id", &key_id, "--tag", "env=dev", "--tag", "team=cli",
        ],
    );
    assert!(ok);
    let (ok, _) = run(
        &env,
        &["key", "untag", "--key-id", &key_id, "--tag-key", "team"],
    );
    assert!(ok);
    let (_, tags) = run(&env, &["key", "tags", "--key-id", &key_id]);
    assert_eq!(
        tags["Tags"],
        serde_json::json!([{"TagKey": "env", "TagValue": "dev"}])
    );
    let (ok, moved) = run(
        &env,
        &[
            "re-encrypt",
            "--ciphertext",
            &blob,
            "--source-context",
            "app=cli",
            "--destination-key-id",
            "alias/cli",
            "--destination-context",
            "app=moved",
        ],
    );
    assert!(ok, "{moved}");
    let moved_blob = moved["CiphertextBlob"].as_str().unwrap().to_string();
    let (ok, dec) = run(
        &env,
        &[
            "decrypt",
            "--ciphertext",
            &moved_blob,
            "--context",
            "app=moved",
        ],
    );
    assert!(ok);
    assert_eq!(dec["Plaintext"], "aGVsbG8=");
    let (ok, random) = run(&env, &["random", "--bytes", "16"]);
    assert!(ok);
    assert_eq!(random["Plaintext"].as_str().unwrap().len(), 24);

    let (ok, quota) = run(&env, &["quota", "set", "--keys", "50"]);
    assert!(ok, "{quota}");
    assert_eq!(quota["Keys"]["Limit"], 50);
    let (_, quota) = run(&env, &["quota", "get"]);
    assert_eq!(quota["Account"], "111122223333");
    assert_eq!(quota["Keys"]["Used"], 1);
    assert_eq!(quota["Aliases"]["Used"], 1);

    // Ctrl-C stops every node.
    dev.stop(Signal::SIGINT);
}

#[test]
fn client_commands_without_configuration_fail_with_a_typed_error() {
    let out = keyraft()
        .args(["key", "list"])
        .env_remove("KEYRAFT_ENDPOINTS")
        .env_remove("KEYRAFT_ACCESS_KEY_ID")
        .env_remove("KEYRAFT_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["Error"]["Code"], "ConfigurationError");
}

/// Bring your own key, as a user does it: random bytes wrapped with `openssl pkeyutl`
/// (RSAES-OAEP with SHA-256) to the public key Keyraft returned.
#[test]
fn imported_key_material_wrapped_with_openssl() {
    let dev = Dev::start("byok-1");
    let env = dev.env.clone();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };

    let (ok, created) = run(
        &env,
        &[
            "key",
            "create",
            "--origin",
            "EXTERNAL",
            "--description",
            "byok",
        ],
    );
    assert!(ok, "{created}");
    assert_eq!(created["KeyMetadata"]["KeyState"], "PendingImport");
    assert_eq!(created["KeyMetadata"]["Origin"], "EXTERNAL");
    let key_id = created["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let (ok, err) = run(&env, &["encrypt", "--key-id", &key_id, "--plaintext", "x"]);
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "KMSInvalidStateException");

    let wrap = |material: &[u8], name: &str| -> (std::path::PathBuf, std::path::PathBuf) {
        let (ok, params) = run(&env, &["key", "import-params", "--key-id", &key_id]);
        assert!(ok, "{params}");
        std::fs::write(
            path("wrapping.der"),
            b64(params["PublicKey"].as_str().unwrap()),
        )
        .unwrap();
        let token = path(&format!("{name}.token"));
        std::fs::write(&token, params["ImportToken"].as_str().unwrap()).unwrap();
        std::fs::write(path(&format!("{name}.bin")), material).unwrap();
        let encrypted = path(&format!("{name}.enc"));
        let out = Command::new("openssl")
            .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
            .arg(path("wrapping.der"))
            .args([
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
                "-in",
            ])
            .arg(path(&format!("{name}.bin")))
            .arg("-out")
            .arg(&encrypted)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (encrypted, token)
    };
    let material: [u8; 32] = rand::random();
    let (encrypted, token) = wrap(&material, "first");
    let import = |encrypted: &std::path::Path, token: &std::path::Path| {
        run(
            &env,
            &[
                "key",
                "import",
                "--key-id",
                &key_id,
                "--encrypted-key-material-file",
                encrypted.to_str().unwrap(),
                "--import-token-file",
                token.to_str().unwrap(),
            ],
        )
    };
    let (ok, out) = import(&encrypted, &token);
    assert!(ok, "{out}");
    let (_, described) = run(&env, &["key", "describe", "--key-id", &key_id]);
    assert_eq!(described["KeyMetadata"]["KeyState"], "Enabled");

    let (ok, enc) = run(
        &env,
        &[
            "encrypt",
            "--key-id",
            &key_id,
            "--plaintext",
            "bring your own key",
        ],
    );
    assert!(ok, "{enc}");
    let (ok, dec) = run(
        &env,
        &[
            "decrypt",
            "--ciphertext",
            enc["CiphertextBlob"].as_str().unwrap(),
        ],
    );
    assert!(ok, "{dec}");
    assert_eq!(
        b64(dec["Plaintext"].as_str().unwrap()),
        b"bring your own key"
    );

    // A used token is spent; other material is refused; the same material re-imports.
    let (ok, err) = import(&encrypted, &token);
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "InvalidImportTokenException");
    let (other, other_token) = wrap(&rand::random::<[u8; 32]>(), "other");
    let (ok, err) = import(&other, &other_token);
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "IncorrectKeyMaterialException");
    let (ok, _) = run(
        &env,
        &["key", "delete-imported-material", "--key-id", &key_id],
    );
    assert!(ok);
    let (_, described) = run(&env, &["key", "describe", "--key-id", &key_id]);
    assert_eq!(described["KeyMetadata"]["KeyState"], "PendingImport");
    let (same, same_token) = wrap(&material, "same");
    let (ok, out) = import(&same, &same_token);
    assert!(ok, "{out}");
    let (ok, dec) = run(
        &env,
        &[
            "decrypt",
            "--ciphertext",
            enc["CiphertextBlob"].as_str().unwrap(),
        ],
    );
    assert!(
        ok,
        "the same material decrypts what it encrypted before: {dec}"
    );
    let (ok, err) = run(
        &env,
        &["key", "rotation", "rotate-now", "--key-id", &key_id],
    );
    assert!(!ok);
    assert_eq!(err["Error"]["Code"], "UnsupportedOperationException");
    dev.stop(Signal::SIGTERM);
}

/// Key pairs as a user meets them with OpenSSL: a signature from `keyraft sign` verifies
/// with `openssl dgst` against the key from `keyraft key public-key`, and what `openssl
/// pkeyutl` encrypts to an RSA key's public half, `keyraft decrypt` decrypts.
#[test]
fn key_pairs_interoperate_with_openssl() {
    let dev = Dev::start("pairs-1");
    let env = dev.env.clone();
    let work = tempfile::tempdir().unwrap();
    let path = |name: &str| work.path().join(name);
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let create = |spec: &str, usage: &str| {
        let (ok, created) = run(
            &env,
            &["key", "create", "--key-spec", spec, "--key-usage", usage],
        );
        assert!(ok, "{created}");
        created["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let p = |name: &str| path(name).to_str().unwrap().to_string();

    // Sign with Keyraft, verify with OpenSSL (ECDSA and RSA-PSS).
    std::fs::write(path("release.txt"), b"keyraft v1.0.0 checksums\n").unwrap();
    for (spec, alg, extra) in [
        ("ECC_NIST_P256", "ECDSA_SHA_256", vec![]),
        (
            "RSA_2048",
            "RSASSA_PSS_SHA_256",
            vec![
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ],
        ),
    ] {
        let key_id = create(spec, "SIGN_VERIFY");
        let (ok, signed) = run(
            &env,
            &[
                "sign",
                "--key-id",
                &key_id,
                "--message-file",
                &p("release.txt"),
                "--signing-algorithm",
                alg,
            ],
        );
        assert!(ok, "{signed}");
        std::fs::write(path("sig.bin"), b64(signed["Signature"].as_str().unwrap())).unwrap();
        let (ok, public) = run(
            &env,
            &[
                "key",
                "public-key",
                "--key-id",
                &key_id,
                "--der-file",
                &p("pub.der"),
            ],
        );
        assert!(ok, "{public}");
        assert_eq!(public["KeySpec"], spec);
        assert_eq!(
            b64(public["PublicKey"].as_str().unwrap()),
            std::fs::read(path("pub.der")).unwrap()
        );
        let mut args = vec![
            "dgst",
            "-sha256",
            "-keyform",
            "DER",
            "-verify",
            &p("pub.der"),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["-signature".into(), p("sig.bin"), p("release.txt")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, said) = openssl(&args);
        assert!(ok && said.contains("Verified OK"), "{spec}: {said}");

        // And Keyraft's own Verify agrees, refusing a changed message with exit 1.
        let (ok, verified) = run(
            &env,
            &[
                "verify",
                "--key-id",
                &key_id,
                "--message-file",
                &p("release.txt"),
                "--signature-file",
                &p("sig.bin"),
                "--signing-algorithm",
                alg,
            ],
        );
        assert!(ok, "{verified}");
        assert_eq!(verified["SignatureValid"], true);
        let (ok, err) = run(
            &env,
            &[
                "verify",
                "--key-id",
                &key_id,
                "--message",
                "keyraft v6.6.6",
                "--signature-file",
                &p("sig.bin"),
                "--signing-algorithm",
                alg,
            ],
        );
        assert!(!ok);
        assert_eq!(err["Error"]["Code"], "KMSInvalidSignatureException");
    }

    // Encrypt with OpenSSL to an RSA key's public half, decrypt with Keyraft.
    let key_id = create("RSA_2048", "ENCRYPT_DECRYPT");
    let (ok, public) = run(
        &env,
        &[
            "key",
            "public-key",
            "--key-id",
            &key_id,
            "--der-file",
            &p("rsa.der"),
        ],
    );
    assert!(ok, "{public}");
    std::fs::write(path("secret.txt"), b"the launch code").unwrap();
    let (ok, said) = openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        &p("rsa.der"),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-in",
        &p("secret.txt"),
        "-out",
        &p("secret.enc"),
    ]);
    assert!(ok, "{said}");
    let (ok, dec) = run(
        &env,
        &[
            "decrypt",
            "--key-id",
            &key_id,
            "--encryption-algorithm",
            "RSAES_OAEP_SHA_256",
            "--ciphertext-file",
            &p("secret.enc"),
        ],
    );
    assert!(ok, "{dec}");
    assert_eq!(b64(dec["Plaintext"].as_str().unwrap()), b"the launch code");
    assert_eq!(dec["EncryptionAlgorithm"], "RSAES_OAEP_SHA_256");
    dev.stop(Signal::SIGINT);
}
