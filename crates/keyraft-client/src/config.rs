//! # Where a client's settings come from
//!
//! A client needs seed endpoints, a region and an access key. Each comes from the first
//! source that has it, in the order the AWS SDKs use:
//!
//! 1. **explicit**: set in code on a [`ConfigBuilder`] (the CLI's flags land here);
//! 2. **environment**: `KEYRAFT_ENDPOINTS` (comma-separated), `KEYRAFT_REGION`,
//!    `KEYRAFT_ACCESS_KEY_ID`, `KEYRAFT_SECRET_ACCESS_KEY` — what `keyraft dev` writes
//!    to `cluster.env`;
//! 3. **profile**: a section of the shared credentials file (see [`crate::profile`]),
//!    named by `KEYRAFT_PROFILE` (default `default`).
//!
//! A profile named in code ([`ConfigBuilder::profile`]) is explicit: its values then
//! win over the environment. The access key id and its secret always come as a pair
//! from one source, never one from each.
//!
//! The profile file is only read when something is still missing after the explicit
//! settings and the environment, or when a profile was asked for by name; a missing
//! file is an error only in the second case.

use std::path::PathBuf;
use std::time::Duration;

use crate::profile::{self, split_endpoints, Profile};
use crate::Error;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach and authenticate to a cluster.
///
/// ```
/// use std::time::Duration;
/// use keyraft_client::ClientConfig;
/// let config = ClientConfig {
///     endpoints: vec!["http://127.0.0.1:7101".into()],
///     region: "dev-1".into(),
///     access_key_id: "KRAK...".into(),
///     secret_access_key: "...".into(),
///     timeout: Duration::from_secs(10),
///     user_agent: "my-app/1.0".into(),
/// };
/// assert!(!format!("{config:?}").contains("secret_access_key: \"...\""));
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    /// Client API URLs of one or more nodes (seeds), e.g. `http://127.0.0.1:7101`; the
    /// client discovers the other members from them.
    pub endpoints: Vec<String>,
    /// The region the cluster serves. If set, a cluster that reports another region is
    /// refused ([`Error::Config`]); empty accepts any.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// How long one logical call may take, retries included.
    pub timeout: Duration,
    /// User agent sent with every request.
    pub user_agent: String,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClientConfig {
    /// Reads the environment (`KEYRAFT_ENDPOINTS`, `KEYRAFT_REGION`,
    /// `KEYRAFT_ACCESS_KEY_ID`, `KEYRAFT_SECRET_ACCESS_KEY`), completed from the
    /// credentials profile (`KEYRAFT_PROFILE`, default `default`) where a variable is
    /// not set.
    ///
    /// ```no_run
    /// let config = keyraft_client::ClientConfig::from_env()?;
    /// println!("{} seed endpoint(s)", config.endpoints.len());
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn from_env() -> Result<ClientConfig, Error> {
        ConfigBuilder::default().build()
    }

    /// Like [`ClientConfig::from_env`] with a custom lookup of environment variables
    /// (`HOME` and `KEYRAFT_SHARED_CREDENTIALS_FILE` are looked up through it too).
    ///
    /// ```
    /// use std::collections::HashMap;
    /// let env = HashMap::from([
    ///     ("KEYRAFT_ENDPOINTS", "http://a:7101, http://b:7101"),
    ///     ("KEYRAFT_ACCESS_KEY_ID", "AK"),
    ///     ("KEYRAFT_SECRET_ACCESS_KEY", "secret"),
    /// ]);
    /// let config = keyraft_client::ClientConfig::from_lookup(|k| env.get(k).map(|v| v.to_string()))?;
    /// assert_eq!(config.endpoints, ["http://a:7101", "http://b:7101"]);
    /// assert_eq!(config.region, "");
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, Error> {
        ConfigBuilder::default().build_with(get)
    }

    /// A builder for settings given in code, completed from the environment and the
    /// credentials profile.
    ///
    /// ```no_run
    /// let config = keyraft_client::ClientConfig::builder()
    ///     .endpoints(["http://10.0.0.5:7101"])
    ///     .profile("prod")
    ///     .build()?;
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

/// Settings given in code; [`ConfigBuilder::build`] completes them. Each setting comes
/// from the first source that has it:
///
/// 1. set here, in code (the CLI's flags land here);
/// 2. the environment: `KEYRAFT_ENDPOINTS` (comma-separated), `KEYRAFT_REGION`,
///    `KEYRAFT_ACCESS_KEY_ID`, `KEYRAFT_SECRET_ACCESS_KEY`;
/// 3. a profile of the credentials file (see [`crate::profile`]), named by
///    `KEYRAFT_PROFILE` (default `default`).
///
/// A profile named here ([`ConfigBuilder::profile`]) is explicit: its values then win
/// over the environment, and it must exist. The access key id and its secret always
/// come as a pair from one source. The file is read only when something is still
/// missing, or a profile was named.
///
/// ```
/// use std::time::Duration;
/// let config = keyraft_client::ClientConfig::builder()
///     .endpoints(["http://127.0.0.1:7101"])
///     .region("dev-1")
///     .credentials("AK", "secret")
///     .timeout(Duration::from_secs(5))
///     .build_with(|_| None)?;
/// assert_eq!(config.timeout, Duration::from_secs(5));
/// # Ok::<(), keyraft_client::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ConfigBuilder {
    endpoints: Option<Vec<String>>,
    region: Option<String>,
    credentials: Option<(String, String)>,
    profile: Option<String>,
    credentials_file: Option<PathBuf>,
    timeout: Option<Duration>,
    user_agent: Option<String>,
}

impl std::fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("endpoints", &self.endpoints)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(id, _)| id),
            )
            .field("profile", &self.profile)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConfigBuilder {
    /// Seed endpoints (client API URLs).
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().endpoints(["http://a:7101", "http://b:7101"]);
    /// # let _ = b;
    /// ```
    pub fn endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = Some(endpoints.into_iter().map(Into::into).collect());
        self
    }

    /// The region the cluster must serve.
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().region("eu-1");
    /// # let _ = b;
    /// ```
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// The access key id and its secret.
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().credentials("AK", "secret");
    /// # let _ = b;
    /// ```
    pub fn credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some((access_key_id.into(), secret_access_key.into()));
        self
    }

    /// Uses this profile of the credentials file; its values then take precedence over
    /// the environment, and it must exist.
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().profile("prod");
    /// # let _ = b;
    /// ```
    pub fn profile(mut self, name: impl Into<String>) -> Self {
        self.profile = Some(name.into());
        self
    }

    /// Reads profiles from this file instead of `KEYRAFT_SHARED_CREDENTIALS_FILE` or
    /// `$HOME/.keyraft/credentials`.
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().credentials_file("ci/credentials");
    /// # let _ = b;
    /// ```
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// How long one logical call may take, retries included (default 30 s).
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().timeout(std::time::Duration::from_secs(3));
    /// # let _ = b;
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The user agent sent with every request.
    ///
    /// ```
    /// let b = keyraft_client::ClientConfig::builder().user_agent("billing/2.3");
    /// # let _ = b;
    /// ```
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = Some(user_agent.into());
        self
    }

    /// Completes the settings from the process environment and the profile file.
    ///
    /// ```no_run
    /// let config = keyraft_client::ClientConfig::builder().region("dev-1").build()?;
    /// # let _ = config;
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn build(self) -> Result<ClientConfig, Error> {
        self.build_with(|k| std::env::var(k).ok())
    }

    /// Completes the settings with a custom lookup of environment variables.
    ///
    /// ```
    /// let config = keyraft_client::ClientConfig::builder()
    ///     .credentials("AK", "secret")
    ///     .build_with(|k| (k == "KEYRAFT_ENDPOINTS").then(|| "http://a:7101".to_string()))?;
    /// assert_eq!(config.endpoints, ["http://a:7101"]);
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn build_with(self, get: impl Fn(&str) -> Option<String>) -> Result<ClientConfig, Error> {
        let env = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let env_endpoints = env("KEYRAFT_ENDPOINTS").map(|v| split_endpoints(&v));
        let env_region = env("KEYRAFT_REGION");
        let env_credentials = match (
            env("KEYRAFT_ACCESS_KEY_ID"),
            env("KEYRAFT_SECRET_ACCESS_KEY"),
        ) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (Some(_), None) => {
                return Err(Error::Config(
                    "KEYRAFT_ACCESS_KEY_ID is set but KEYRAFT_SECRET_ACCESS_KEY is not".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::Config(
                    "KEYRAFT_SECRET_ACCESS_KEY is set but KEYRAFT_ACCESS_KEY_ID is not".into(),
                ))
            }
            (None, None) => None,
        };

        let code_profile = self.profile.is_some();
        let named = self.profile.clone().or_else(|| env("KEYRAFT_PROFILE"));
        let profile_name = named.clone().unwrap_or_else(|| "default".to_string());
        let file = self
            .credentials_file
            .clone()
            .or_else(|| env("KEYRAFT_SHARED_CREDENTIALS_FILE").map(PathBuf::from))
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".keyraft").join("credentials")));
        let incomplete = (self.endpoints.is_none() && env_endpoints.is_none())
            || (self.region.is_none() && env_region.is_none())
            || (self.credentials.is_none() && env_credentials.is_none());
        let profile = if named.is_some() || incomplete {
            load_profile(file.as_ref(), &profile_name, named.is_some())?
        } else {
            None
        };
        let profile_endpoints = profile.as_ref().and_then(|p| p.endpoints.clone());
        let profile_region = profile.as_ref().and_then(|p| p.region.clone());
        let profile_credentials = match profile.as_ref() {
            Some(Profile {
                access_key_id: Some(id),
                secret_access_key: Some(secret),
                ..
            }) => Some((id.clone(), secret.clone())),
            Some(Profile {
                access_key_id: None,
                secret_access_key: None,
                ..
            })
            | None => None,
            Some(_) => {
                return Err(Error::Config(format!(
                    "profile {profile_name} has only one of keyraft_access_key_id and \
                     keyraft_secret_access_key"
                )))
            }
        };

        // Explicit first; then the environment and the profile, in the order the
        // profile's origin decides.
        let (endpoints, region, credentials) = if code_profile {
            (
                self.endpoints.or(profile_endpoints).or(env_endpoints),
                self.region.or(profile_region).or(env_region),
                self.credentials.or(profile_credentials).or(env_credentials),
            )
        } else {
            (
                self.endpoints.or(env_endpoints).or(profile_endpoints),
                self.region.or(env_region).or(profile_region),
                self.credentials.or(env_credentials).or(profile_credentials),
            )
        };
        let endpoints = endpoints
            .filter(|e| !e.is_empty())
            .ok_or_else(|| Error::Config("KEYRAFT_ENDPOINTS is not set".into()))?;
        let (access_key_id, secret_access_key) = credentials.ok_or_else(|| {
            Error::Config(format!(
                "KEYRAFT_ACCESS_KEY_ID is not set (nor in credentials profile {profile_name})"
            ))
        })?;
        Ok(ClientConfig {
            endpoints,
            region: region.unwrap_or_default(),
            access_key_id,
            secret_access_key,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            user_agent: self
                .user_agent
                .unwrap_or_else(|| format!("keyraft-client/{}", env!("CARGO_PKG_VERSION"))),
        })
    }
}

/// Reads one profile. A missing file or profile is an error only if it was named.
fn load_profile(file: Option<&PathBuf>, name: &str, named: bool) -> Result<Option<Profile>, Error> {
    let Some(path) = file else {
        return if named {
            Err(Error::Config(format!(
                "profile {name} was asked for, but no credentials file is known (HOME is not set)"
            )))
        } else {
            Ok(None)
        };
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => return Ok(None),
        Err(e) => {
            return Err(Error::Config(format!(
                "cannot read credentials file {}: {e}",
                path.display()
            )))
        }
    };
    let mut profiles = profile::parse(&text)
        .map_err(|e| Error::Config(format!("credentials file {}: {e}", path.display())))?;
    match profiles.remove(name) {
        Some(p) => Ok(Some(p)),
        None if named => Err(Error::Config(format!(
            "credentials file {} has no profile [{name}]",
            path.display()
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Env {
        vars: HashMap<String, String>,
        _dir: tempfile::TempDir,
    }

    impl Env {
        fn new(file: &str, vars: &[(&str, &str)]) -> Env {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join(".keyraft")).unwrap();
            std::fs::write(dir.path().join(".keyraft/credentials"), file).unwrap();
            let mut map: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            map.insert("HOME".into(), dir.path().display().to_string());
            Env {
                vars: map,
                _dir: dir,
            }
        }
        fn get(&self) -> impl Fn(&str) -> Option<String> + '_ {
            |k| self.vars.get(k).cloned()
        }
    }

    const FILE: &str = "[default]\nkeyraft_access_key_id = P-AK\nkeyraft_secret_access_key = P-S\n\
                        region = p-region\nendpoints = http://profile:1\n\
                        [prod]\nkeyraft_access_key_id = PROD-AK\nkeyraft_secret_access_key = PROD-S\n\
                        region = prod-1\nendpoints = http://prod:1,http://prod:2\n\
                        [half]\nkeyraft_access_key_id = H\n";

    #[test]
    fn environment_alone_works_as_before() {
        let env = Env::new(
            "",
            &[
                ("KEYRAFT_ENDPOINTS", "http://a:1, http://b:2,"),
                ("KEYRAFT_ACCESS_KEY_ID", "AK"),
                ("KEYRAFT_SECRET_ACCESS_KEY", "S"),
            ],
        );
        let c = ClientConfig::from_lookup(env.get()).unwrap();
        assert_eq!(c.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!((c.access_key_id.as_str(), c.region.as_str()), ("AK", ""));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn the_default_profile_completes_the_environment() {
        let env = Env::new(FILE, &[("KEYRAFT_REGION", "env-region")]);
        let c = ClientConfig::from_lookup(env.get()).unwrap();
        assert_eq!(c.endpoints, ["http://profile:1"]);
        assert_eq!(c.region, "env-region");
        assert_eq!(
            (c.access_key_id.as_str(), c.secret_access_key.as_str()),
            ("P-AK", "P-S")
        );
    }

    #[test]
    fn environment_beats_profile_and_explicit_beats_both() {
        let env = Env::new(
            FILE,
            &[
                ("KEYRAFT_PROFILE", "prod"),
                ("KEYRAFT_ACCESS_KEY_ID", "ENV-AK"),
                ("KEYRAFT_SECRET_ACCESS_KEY", "ENV-S"),
            ],
        );
        let c = ClientConfig::from_lookup(env.get()).unwrap();
        assert_eq!(c.access_key_id, "ENV-AK");
        assert_eq!(c.region, "prod-1");
        assert_eq!(c.endpoints, ["http://prod:1", "http://prod:2"]);
        let c = ClientConfig::builder()
            .region("explicit")
            .credentials("X-AK", "X-S")
            .build_with(env.get())
            .unwrap();
        assert_eq!(
            (c.region.as_str(), c.access_key_id.as_str()),
            ("explicit", "X-AK")
        );
    }

    #[test]
    fn a_profile_named_in_code_beats_the_environment() {
        let env = Env::new(
            FILE,
            &[
                ("KEYRAFT_ACCESS_KEY_ID", "ENV-AK"),
                ("KEYRAFT_SECRET_ACCESS_KEY", "ENV-S"),
                ("KEYRAFT_ENDPOINTS", "http://env:1"),
            ],
        );
        let c = ClientConfig::builder()
            .profile("prod")
            .build_with(env.get())
            .unwrap();
        assert_eq!(c.access_key_id, "PROD-AK");
        assert_eq!(c.endpoints, ["http://prod:1", "http://prod:2"]);
    }

    #[test]
    fn missing_and_broken_profiles() {
        // A named profile must exist; the default one need not.
        let env = Env::new(FILE, &[("KEYRAFT_PROFILE", "nope")]);
        let e = ClientConfig::from_lookup(env.get()).unwrap_err();
        assert!(e.to_string().contains("no profile [nope]"), "{e}");
        let env = Env::new("[other]\n", &[]);
        let e = ClientConfig::from_lookup(env.get()).unwrap_err();
        assert!(
            e.to_string().contains("KEYRAFT_ENDPOINTS is not set"),
            "{e}"
        );
        // Half a key pair is refused, in a profile and in the environment.
        let env = Env::new(FILE, &[("KEYRAFT_PROFILE", "half")]);
        let e = ClientConfig::from_lookup(env.get()).unwrap_err();
        assert!(e.to_string().contains("only one of"), "{e}");
        let env = Env::new(FILE, &[("KEYRAFT_ACCESS_KEY_ID", "AK")]);
        let e = ClientConfig::from_lookup(env.get()).unwrap_err();
        assert!(
            e.to_string().contains("KEYRAFT_SECRET_ACCESS_KEY is not"),
            "{e}"
        );
        // A malformed file names its line, not its content.
        let env = Env::new("[default]\nhunter2\n", &[]);
        let e = ClientConfig::from_lookup(env.get()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // KEYRAFT_SHARED_CREDENTIALS_FILE points elsewhere; a named missing file fails.
        let env = Env::new(
            FILE,
            &[
                (
                    "KEYRAFT_SHARED_CREDENTIALS_FILE",
                    "/nonexistent/keyraft/credentials",
                ),
                ("KEYRAFT_PROFILE", "prod"),
            ],
        );
        let e = ClientConfig::from_lookup(env.get()).unwrap_err();
        assert!(
            e.to_string().contains("cannot read credentials file"),
            "{e}"
        );
    }

    #[test]
    fn a_complete_environment_never_reads_the_file() {
        let env = Env::new(
            "this is not a credentials file",
            &[
                ("KEYRAFT_ENDPOINTS", "http://a:1"),
                ("KEYRAFT_REGION", "r"),
                ("KEYRAFT_ACCESS_KEY_ID", "AK"),
                ("KEYRAFT_SECRET_ACCESS_KEY", "S"),
            ],
        );
        assert!(ClientConfig::from_lookup(env.get()).is_ok());
    }
}
