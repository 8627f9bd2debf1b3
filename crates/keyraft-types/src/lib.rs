//! # Keyraft's domain model
//!
//! Everything here is plain data: identifiers, ARNs, key metadata and states, encryption
//! contexts, audit events and the error enum with stable, AWS-named codes. Nothing in this
//! crate does I/O, reads a clock or draws randomness except where a function says so by
//! name (`KeyId::random`), so that every other crate — the deterministic state machine
//! included — can share these types without inheriting side effects.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audit;
pub mod error;
pub mod ids;
pub mod key;
pub mod policy;

pub use audit::{
    AuditEvent, AuditRecord, AuthzCheck, EventType, KeyCheck, RequestParameters, UserIdentity,
};
pub use error::{ErrorCode, KmsError, KmsResult};
pub use ids::{
    new_id, AccountId, AliasName, KeyId, KeyRef, NodeId, Region, RESERVED_ALIAS_PREFIXES,
};
pub use key::{
    CryptoOperation, DataKeySpec, EncryptionAlgorithm, EncryptionContext, KeyManager, KeyMetadata,
    KeySpec, KeyState, KeyUsage, MessageType, Origin, Sha2, SigningAlgorithm,
};
pub use policy::{
    evaluate, AllowedBy, AuthzPrincipal, AuthzRequest, Decision, Grant, GrantConstraints,
    GrantOperation, GrantRequest, PolicyDocument, PolicyKind,
};
