//! Where data keys come from: the [`DataKeyProvider`] seam.
//!
//! The message format needs exactly two things from a key service: a fresh data key
//! (plaintext and encrypted) bound to an encryption context, and the plaintext back for
//! an encrypted one. Keeping that behind a two-method trait lets the format be tested
//! against an in-memory provider, lets [`CachingProvider`](super::CachingProvider) wrap
//! any provider, and keeps the network out of the byte-level code.

use std::future::Future;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

use super::EnvelopeError;
use crate::{Client, EncryptionContext};

const KEY_LEN: usize = 32;

/// A 256-bit plaintext data key. The bytes are wiped when the value is dropped, and the
/// type deliberately has no `Debug`, so a key cannot end up in a log line by accident.
///
/// ```
/// use keyraft_client::envelope::PlaintextKey;
/// let key = PlaintextKey::from_bytes(&[7u8; 32])?;
/// assert_eq!(key.as_bytes()[0], 7);
/// assert!(PlaintextKey::from_bytes(&[7u8; 16]).is_err());
/// # Ok::<(), keyraft_client::envelope::EnvelopeError>(())
/// ```
#[derive(Clone)]
pub struct PlaintextKey(Zeroizing<[u8; KEY_LEN]>);

impl PlaintextKey {
    /// The length of a data key: 32 bytes (AES-256).
    ///
    /// ```
    /// assert_eq!(keyraft_client::envelope::PlaintextKey::LEN, 32);
    /// ```
    pub const LEN: usize = KEY_LEN;

    /// Copies a key out of `bytes`, which must be exactly [`PlaintextKey::LEN`] long.
    /// The caller remains responsible for wiping `bytes`.
    ///
    /// ```
    /// use keyraft_client::envelope::PlaintextKey;
    /// assert!(PlaintextKey::from_bytes(&[0u8; 32]).is_ok());
    /// ```
    pub fn from_bytes(bytes: &[u8]) -> Result<PlaintextKey, EnvelopeError> {
        let mut key = Zeroizing::new([0u8; Self::LEN]);
        if bytes.len() != Self::LEN {
            return Err(EnvelopeError::Provider(format!(
                "the data key is {} bytes; AES-256 needs {}",
                bytes.len(),
                Self::LEN
            )));
        }
        key.copy_from_slice(bytes);
        Ok(PlaintextKey(key))
    }

    /// A fresh random key (for providers that make their own data keys).
    ///
    /// ```
    /// use keyraft_client::envelope::PlaintextKey;
    /// assert_ne!(PlaintextKey::random().as_bytes(), PlaintextKey::random().as_bytes());
    /// ```
    pub fn random() -> PlaintextKey {
        let mut key = Zeroizing::new([0u8; Self::LEN]);
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), key.as_mut());
        PlaintextKey(key)
    }

    /// The key bytes.
    ///
    /// ```
    /// use keyraft_client::envelope::PlaintextKey;
    /// assert_eq!(PlaintextKey::from_bytes(&[1u8; 32])?.as_bytes(), &[1u8; 32]);
    /// # Ok::<(), keyraft_client::envelope::EnvelopeError>(())
    /// ```
    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

/// A data key as a provider hands it out: the plaintext to encrypt with, the encrypted
/// copy that goes into the message header, and the id (ARN) of the key that protects
/// it. No `Debug`, because of the plaintext.
///
/// ```
/// use keyraft_client::envelope::{DataKey, PlaintextKey};
/// let key = DataKey {
///     plaintext: PlaintextKey::random(),
///     encrypted: b"opaque blob".to_vec(),
///     key_id: "arn:keyraft:kms:local:000000000000:key/1234".into(),
/// };
/// assert_eq!(key.encrypted.len(), 11);
/// ```
#[derive(Clone)]
pub struct DataKey {
    /// The plaintext data key.
    pub plaintext: PlaintextKey,
    /// The data key encrypted under the master key; opaque to this library.
    pub encrypted: Vec<u8>,
    /// The key that protects `encrypted`, as the service names it (an ARN for
    /// Keyraft). Empty if the provider does not know.
    pub key_id: String,
}

/// A source of data keys: Keyraft itself ([`Client`]), a cache in front of it
/// ([`CachingProvider`](super::CachingProvider)), or an in-memory fake in tests.
///
/// Both methods get the encryption context, which the provider must bind to the
/// encrypted key (Keyraft uses it as additional authenticated data), so decryption
/// under another context fails. `size` is a hint for caches: how many bytes the key is
/// about to protect (the plaintext length when encrypting, the message length when
/// decrypting), or `None` when unknown, as for streams.
///
/// `Client` has an inherent `generate_data_key` with other parameters; to call the
/// trait's, write `DataKeyProvider::generate_data_key(&client, ..)`.
///
/// ```
/// use keyraft_client::envelope::{DataKey, DataKeyProvider, EnvelopeError, PlaintextKey};
/// use keyraft_client::EncryptionContext;
///
/// /// Hands out one fixed key (a test double; it protects nothing).
/// struct Fixed;
///
/// impl DataKeyProvider for Fixed {
///     async fn generate_data_key(
///         &self,
///         key_id: &str,
///         _context: &EncryptionContext,
///         _size: Option<u64>,
///     ) -> Result<DataKey, EnvelopeError> {
///         Ok(DataKey {
///             plaintext: PlaintextKey::from_bytes(&[9; 32])?,
///             encrypted: vec![1],
///             key_id: key_id.into(),
///         })
///     }
///
///     async fn decrypt_data_key(
///         &self,
///         encrypted: &[u8],
///         _context: &EncryptionContext,
///         _size: Option<u64>,
///     ) -> Result<DataKey, EnvelopeError> {
///         Ok(DataKey {
///             plaintext: PlaintextKey::from_bytes(&[9; 32])?,
///             encrypted: encrypted.to_vec(),
///             key_id: String::new(),
///         })
///     }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let ctx = EncryptionContext::new();
/// let msg = keyraft_client::envelope::encrypt(&Fixed, "k", b"hi", &ctx).await?;
/// let (plaintext, _) = keyraft_client::envelope::decrypt(&Fixed, &msg, None).await?;
/// assert_eq!(plaintext, b"hi");
/// # Ok::<(), EnvelopeError>(()) }).unwrap();
/// ```
pub trait DataKeyProvider: Send + Sync {
    /// A fresh data key under `key_id`, bound to `context`.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
    /// use keyraft_client::envelope::DataKeyProvider;
    /// let key = DataKeyProvider::generate_data_key(client, "alias/orders", &Default::default(), None).await?;
    /// assert!(!key.encrypted.is_empty());
    /// # Ok(()) }
    /// ```
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> impl Future<Output = Result<DataKey, EnvelopeError>> + Send;

    /// The plaintext of `encrypted`, which must have been made under `context`.
    /// `key_id` of the answer names the key that decrypted it, if known.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
    /// use keyraft_client::envelope::DataKeyProvider;
    /// let ctx = Default::default();
    /// let key = DataKeyProvider::generate_data_key(client, "alias/orders", &ctx, None).await?;
    /// let again = client.decrypt_data_key(&key.encrypted, &ctx, None).await?;
    /// assert_eq!(again.plaintext.as_bytes(), key.plaintext.as_bytes());
    /// # Ok(()) }
    /// ```
    fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> impl Future<Output = Result<DataKey, EnvelopeError>> + Send;
}

/// Keyraft as a provider: `GenerateDataKey` with `KeySpec=AES_256`, and `Decrypt`
/// without a key id (the ciphertext names its key). The plaintext copies in the
/// responses are wiped once the key has been taken out of them.
impl DataKeyProvider for Client {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        _size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        let mut resp = Client::generate_data_key(self, key_id, "AES_256", 0, context).await?;
        let plaintext = PlaintextKey::from_bytes(&resp.plaintext);
        resp.plaintext.zeroize();
        Ok(DataKey {
            plaintext: plaintext?,
            encrypted: std::mem::take(&mut resp.ciphertext_blob),
            key_id: std::mem::take(&mut resp.key_id),
        })
    }

    async fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        _size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        let mut resp = Client::decrypt(self, encrypted, context, None).await?;
        let plaintext = PlaintextKey::from_bytes(&resp.plaintext);
        resp.plaintext.zeroize();
        Ok(DataKey {
            plaintext: plaintext?,
            encrypted: encrypted.to_vec(),
            key_id: std::mem::take(&mut resp.key_id),
        })
    }
}

/// A shared reference to a provider is a provider.
impl<P: DataKeyProvider> DataKeyProvider for &P {
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> impl Future<Output = Result<DataKey, EnvelopeError>> + Send {
        (**self).generate_data_key(key_id, context, size)
    }

    fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> impl Future<Output = Result<DataKey, EnvelopeError>> + Send {
        (**self).decrypt_data_key(encrypted, context, size)
    }
}

/// An `Arc` of a provider is a provider (share one cache between tasks this way).
impl<P: DataKeyProvider> DataKeyProvider for Arc<P> {
    fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> impl Future<Output = Result<DataKey, EnvelopeError>> + Send {
        (**self).generate_data_key(key_id, context, size)
    }

    fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> impl Future<Output = Result<DataKey, EnvelopeError>> + Send {
        (**self).decrypt_data_key(encrypted, context, size)
    }
}
