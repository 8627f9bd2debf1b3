//! The audit trail: query it, verify a node's chain, and follow new events.
//!
//! ```no_run
//! # async fn demo(admin: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
//! use keyraft_client::types::AuditQueryRequest;
//! let page = admin
//!     .audit_query(AuditQueryRequest {
//!         event_name: "Decrypt".into(),
//!         outcome: "failure".into(),
//!         ..Default::default()
//!     })
//!     .await?;
//! for event in &page.events_json {
//!     println!("{event}");
//! }
//! # Ok(()) }
//! ```

use keyraft_proto::v1::*;

use crate::{Client, Error, Route};

impl Client {
    /// One page of audit events matching the request's filters, oldest first;
    /// `next_sequence` (0 at the head) is where the next page starts.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let page = client.audit_query(Default::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn audit_query(&self, req: AuditQueryRequest) -> Result<AuditQueryResponse, Error> {
        self.call(
            Route::Any,
            "/keyraft.v1.AdminService/AuditQuery",
            req,
            |c, r| async move { Self::admin(c).audit_query(r).await },
        )
        .await
    }

    /// Walks the chain of the node this client reaches and returns its head, and the
    /// hash at `at_sequence` (0: none) for comparing nodes.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let chain = client.audit_verify(0).await?;
    /// # Ok(()) }
    /// ```
    pub async fn audit_verify(&self, at_sequence: u64) -> Result<AuditVerifyResponse, Error> {
        let req = AuditVerifyRequest { at_sequence };
        self.call(
            Route::Any,
            "/keyraft.v1.AdminService/AuditVerify",
            req,
            |c, r| async move { Self::admin(c).audit_verify(r).await },
        )
        .await
    }

    /// Records that a full export has written every event through `through` (the
    /// region's administrator only); only exported events may be pruned.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// client.audit_mark_exported(1234).await?;
    /// # Ok(()) }
    /// ```
    pub async fn audit_mark_exported(&self, through: u64) -> Result<(), Error> {
        let req = AuditMarkExportedRequest {
            through,
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            "/keyraft.v1.AdminService/AuditMarkExported",
            req,
            |c, r| async move { Self::admin(c).audit_mark_exported(r).await },
        )
        .await
        .map(|_| ())
    }

    /// Prunes up to 10,000 exported events older than `retention_days`, leaving a
    /// signed checkpoint; call again until it prunes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::Error> {
    /// let pruned = client.audit_prune(365).await?;
    /// # Ok(()) }
    /// ```
    pub async fn audit_prune(&self, retention_days: u32) -> Result<AuditPruneResponse, Error> {
        let req = AuditPruneRequest {
            retention_days,
            request_id: Self::request_id(),
        };
        self.call(
            Route::Leader,
            "/keyraft.v1.AdminService/AuditPrune",
            req,
            |c, r| async move { Self::admin(c).audit_prune(r).await },
        )
        .await
    }
}
