//! A store with hooks around its writes: for measurements (commit latency)
//! and fault injection in tests, without repeating the whole trait.

use crate::{EventQuery, ExecutionRow, ListQuery, NodeClaim, SharedStore, Store, StoreError};
use async_trait::async_trait;
use kodo_core::{Event, Fid, Status};
use std::sync::Arc;

/// What runs around each [`Store::write`] of a [`Hooked`] store.
pub trait WriteHooks: Send + Sync + std::fmt::Debug + 'static {
    /// Before the write; an error here fails the write (nothing is stored).
    fn before(&self, _events: &[Event]) -> Result<(), StoreError> {
        Ok(())
    }

    /// After the write committed.
    fn after(&self, _events: &[Event]) {}
}

/// A store whose writes pass through [`WriteHooks`]; everything else goes
/// straight to the inner store.
#[derive(Debug)]
pub struct Hooked<H> {
    inner: SharedStore,
    hooks: Arc<H>,
}

impl<H: WriteHooks> Hooked<H> {
    /// Wraps `inner`.
    pub fn new(inner: SharedStore, hooks: Arc<H>) -> Self {
        Self { inner, hooks }
    }
}

#[async_trait]
impl<H: WriteHooks> Store for Hooked<H> {
    async fn write(&self, events: &[Event]) -> Result<(), StoreError> {
        self.hooks.before(events)?;
        self.inner.write(events).await?;
        self.hooks.after(events);
        Ok(())
    }
    async fn execution(&self, fid: &Fid) -> Result<Option<ExecutionRow>, StoreError> {
        self.inner.execution(fid).await
    }
    async fn executions(&self, query: &ListQuery) -> Result<Vec<ExecutionRow>, StoreError> {
        self.inner.executions(query).await
    }
    async fn events(&self, fid: &Fid, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        self.inner.events(fid, query).await
    }
    async fn event_count(&self, fid: &Fid) -> Result<u64, StoreError> {
        self.inner.event_count(fid).await
    }
    async fn unfinished(&self, node: &str) -> Result<Vec<ExecutionRow>, StoreError> {
        self.inner.unfinished(node).await
    }
    async fn claim_node(&self, node: &str) -> Result<NodeClaim, StoreError> {
        self.inner.claim_node(node).await
    }
    async fn adopt(&self, fid: &Fid, node: &str) -> Result<(), StoreError> {
        self.inner.adopt(fid, node).await
    }
    async fn fence(&self, fid: &Fid, attempt: u32) -> Result<Option<(u64, Status)>, StoreError> {
        self.inner.fence(fid, attempt).await
    }
    async fn fence_first(
        &self,
        fid: &Fid,
        attempt: u32,
    ) -> Result<Option<(u64, Status)>, StoreError> {
        self.inner.fence_first(fid, attempt).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}
