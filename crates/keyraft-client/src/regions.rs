//! # One client per region
//!
//! A Keyraft cluster serves exactly one region, and a key's ARN names it. An
//! application that works with several regions keeps one [`Client`] per region — each
//! with its own view, connections and retry budget — and picks by region name, or by
//! the region in a key's ARN.

use std::collections::BTreeMap;

use crate::{Client, ClientConfig, ClientOptions, Error};

/// Clients of several regions' clusters, by region name.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use keyraft_client::{Client, ClientConfig};
/// # async fn demo() -> Result<(), keyraft_client::Error> {
/// let regions = Client::for_regions(BTreeMap::from([
///     ("eu-1".to_string(), ClientConfig::builder().profile("eu").build()?),
///     ("us-1".to_string(), ClientConfig::builder().profile("us").build()?),
/// ]))?;
/// let key = regions.region("eu-1")?.create_key("eu data").await?;
/// let same = regions.for_arn(&key.arn)?.describe_key(&key.arn).await?;
/// assert_eq!(same.key_id, key.key_id);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RegionalClients {
    clients: BTreeMap<String, Client>,
}

impl RegionalClients {
    /// Clients for each region's configuration, all with `options`. A configuration
    /// whose `region` is empty gets the map's key; one that names another region is
    /// refused.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use keyraft_client::{ClientConfig, ClientOptions, RegionalClients};
    /// let eu = ClientConfig::builder()
    ///     .endpoints(["http://10.1.0.5:7101"])
    ///     .credentials("AK", "secret")
    ///     .build_with(|_| None)?;
    /// let regions = RegionalClients::new(BTreeMap::from([("eu-1".to_string(), eu)]), ClientOptions::default())?;
    /// assert_eq!(regions.regions().collect::<Vec<_>>(), ["eu-1"]);
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn new(
        configs: BTreeMap<String, ClientConfig>,
        options: ClientOptions,
    ) -> Result<RegionalClients, Error> {
        let mut clients = BTreeMap::new();
        for (region, mut config) in configs {
            if region.is_empty() {
                return Err(Error::Config("a region name is empty".into()));
            }
            if config.region.is_empty() {
                config.region = region.clone();
            } else if config.region != region {
                return Err(Error::Config(format!(
                    "the configuration for region {region} names region {}",
                    config.region
                )));
            }
            clients.insert(region, Client::with_options(config, options.clone())?);
        }
        Ok(RegionalClients { clients })
    }

    /// The client of `region`.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use keyraft_client::{ClientConfig, ClientOptions, RegionalClients};
    /// # let c = ClientConfig::builder().endpoints(["http://a:1"]).credentials("A", "S").build_with(|_| None)?;
    /// let regions = RegionalClients::new(BTreeMap::from([("eu-1".to_string(), c)]), ClientOptions::default())?;
    /// assert!(regions.region("eu-1").is_ok());
    /// assert!(regions.region("mars-1").is_err());
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn region(&self, region: &str) -> Result<&Client, Error> {
        self.clients
            .get(region)
            .ok_or_else(|| Error::Config(format!("no client configured for region {region}")))
    }

    /// The client of the region an ARN names (`arn:keyraft:<region>:...`).
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use keyraft_client::{ClientConfig, ClientOptions, RegionalClients};
    /// # let c = ClientConfig::builder().endpoints(["http://a:1"]).credentials("A", "S").build_with(|_| None)?;
    /// let regions = RegionalClients::new(BTreeMap::from([("eu-1".to_string(), c)]), ClientOptions::default())?;
    /// assert!(regions.for_arn("arn:keyraft:eu-1:111122223333:key/abc").is_ok());
    /// assert!(regions.for_arn("not-an-arn").is_err());
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn for_arn(&self, arn: &str) -> Result<&Client, Error> {
        let mut parts = arn.splitn(4, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("arn"), Some(_), Some(region)) if !region.is_empty() => self.region(region),
            _ => Err(Error::Config(format!("not an ARN: {arn}"))),
        }
    }

    /// The configured region names, in order.
    ///
    /// ```
    /// # use std::collections::BTreeMap;
    /// # use keyraft_client::{ClientOptions, RegionalClients};
    /// let none = RegionalClients::new(BTreeMap::new(), ClientOptions::default())?;
    /// assert_eq!(none.regions().count(), 0);
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.clients.keys().map(String::as_str)
    }
}

impl Client {
    /// Clients for several regions (see [`RegionalClients`]), with default options.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use keyraft_client::{Client, ClientConfig};
    /// let c = ClientConfig::builder().endpoints(["http://a:1"]).credentials("A", "S").build_with(|_| None)?;
    /// let regions = Client::for_regions(BTreeMap::from([("us-1".to_string(), c)]))?;
    /// assert_eq!(regions.region("us-1")?.config().region, "us-1");
    /// # Ok::<(), keyraft_client::Error>(())
    /// ```
    pub fn for_regions(configs: BTreeMap<String, ClientConfig>) -> Result<RegionalClients, Error> {
        RegionalClients::new(configs, ClientOptions::default())
    }
}
