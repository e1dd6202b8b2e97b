//! A byte budget for events in flight, shared by the transports.

use crate::TransportError;
use kodo_core::Event;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;

/// The largest budget a tokio semaphore hands out in one request.
const MAX_BUDGET: usize = u32::MAX as usize;

/// At most `capacity` bytes of events in flight, and the most ever held.
pub(crate) struct Budget {
    permits: Semaphore,
    capacity: usize,
    peak: AtomicUsize,
}

impl Budget {
    /// A budget of `capacity_bytes` (at least 1).
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        let capacity = capacity_bytes.clamp(1, MAX_BUDGET);
        Self {
            permits: Semaphore::new(capacity),
            capacity,
            peak: AtomicUsize::new(0),
        }
    }

    /// What events cost: their weights, capped so that even one huge event
    /// fits in an empty budget.
    pub(crate) fn cost(&self, events: &[Event]) -> u32 {
        events
            .iter()
            .map(|e| e.weight().min(self.capacity))
            .sum::<usize>()
            .min(self.capacity) as u32
    }

    /// Takes `cost`, waiting for room; [`Budget::give`] returns it.
    pub(crate) async fn take(&self, cost: u32) -> Result<(), TransportError> {
        self.permits
            .acquire_many(cost)
            .await
            .map_err(|_| TransportError::Closed)?
            .forget();
        self.peak.fetch_max(self.used(), Ordering::Relaxed);
        Ok(())
    }

    /// Gives back what [`Budget::take`] took.
    pub(crate) fn give(&self, cost: usize) {
        self.permits.add_permits(cost);
    }

    /// Bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// The most bytes ever held at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The bound.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}
