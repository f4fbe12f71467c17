//! Memory bounds: each instance's linear memories and tables together, and a budget every
//! instance of the process shares. The shared budget sits below the container's memory limit
//! (less the runtime's own measured overhead), so growth past it is refused in the guest —
//! one request fails (its allocator reports out of memory, usually a trap and a 500) — and
//! the kernel's OOM killer, which would end every request of the replica, is never reached.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use wasmtime::ResourceLimiter;

/// Bytes one table element is counted as (a function reference is a pointer in Wasmtime).
const TABLE_ELEMENT_BYTES: u64 = 8;

/// Bytes of linear memory and tables the instances of one process may hold together.
/// Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct MemoryBudget(Arc<Budget>);

#[derive(Debug)]
struct Budget {
    limit: u64,
    used: AtomicU64,
    refusals: AtomicU64,
}

impl PartialEq for MemoryBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MemoryBudget {}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        MemoryBudget(Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }))
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// Bytes the live instances hold now.
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Growths refused so far because the budget was spent.
    pub fn refusals(&self) -> u64 {
        self.0.refusals.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: u64) -> bool {
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|n| *n <= self.0.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.0.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Which bound a growth met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Instance(u64),
    Shared(u64),
}

/// One store's limiter: counts what its instance holds, takes growth from the shared budget,
/// and gives it all back when the store is dropped.
pub(crate) struct Limiter {
    instance_limit: Option<u64>,
    budget: Option<MemoryBudget>,
    held: u64,
    instances: usize,
    pub(crate) refused: MemoryRefusal,
}

/// The first growth a store's limits refused, if any; shared with whoever reports the
/// guest's end (a guest whose allocator then gives up traps, and is reported as out of memory).
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryRefusal(Arc<OnceLock<(u64, Bound)>>);

impl MemoryRefusal {
    /// The refusal a trap followed, if the limits refused a growth.
    pub(crate) fn get(&self) -> Option<Refusal> {
        self.0
            .get()
            .map(|&(desired, bound)| Refusal { desired, bound })
    }
}

/// A growth the memory limits refused: how far the guest wanted to grow, and which bound
/// stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    desired: u64,
    bound: Bound,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let desired = self.desired;
        match self.bound {
            Bound::Instance(limit) => write!(
                f,
                "the guest ran out of memory: growing its memories and tables to {desired} bytes \
                 was refused (the limit is {limit} bytes per instance: resources.memory, or \
                 --memory)"
            ),
            Bound::Shared(limit) => write!(
                f,
                "the guest ran out of memory: growing to {desired} bytes was refused because the \
                 instances of this process together hold their budget of {limit} bytes \
                 (resources.memory less the runtime's own)"
            ),
        }
    }
}

impl Limiter {
    /// A store's limiter: `instance_limit` bounds its memories and tables together,
    /// `budget` is shared with the process's other stores.
    pub(crate) fn new(instance_limit: Option<u64>, budget: Option<MemoryBudget>) -> Self {
        Limiter {
            instance_limit,
            budget,
            held: 0,
            instances: 64,
            refused: MemoryRefusal::default(),
        }
    }

    /// Takes `delta` more bytes for this store, if both bounds allow.
    fn grow(&mut self, delta: u64) -> bool {
        let total = self.held.saturating_add(delta);
        let bound = if let Some(limit) = self.instance_limit.filter(|l| total > *l) {
            Some(Bound::Instance(limit))
        } else if let Some(b) = self.budget.as_ref().filter(|b| !b.take(delta)) {
            b.0.refusals.fetch_add(1, Ordering::Relaxed);
            Some(Bound::Shared(b.limit()))
        } else {
            None
        };
        match bound {
            None => {
                self.held = total;
                true
            }
            Some(bound) => {
                tracing::warn!(
                    held = self.held,
                    requested = delta,
                    ?bound,
                    "memory growth denied"
                );
                let _ = self.refused.0.set((total, bound));
                false
            }
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(self.held);
        }
    }
}

/// Whether `desired` respects the memory's or table's own declared maximum.
fn within(desired: usize, maximum: Option<usize>) -> bool {
    maximum.is_none_or(|m| desired <= m)
}

impl ResourceLimiter for Limiter {
    // A refused growth returns false: the guest's memory.grow gets -1 (its allocator reports
    // out of memory) rather than a trap, as the Wasm spec describes. Creation goes through
    // here too (from size zero), so an instance cannot start above its bounds either.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(within(desired, maximum) && self.grow(desired.saturating_sub(current) as u64))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let elements = desired.saturating_sub(current) as u64;
        Ok(within(desired, maximum) && self.grow(elements.saturating_mul(TABLE_ELEMENT_BYTES)))
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        10_000
    }

    fn memories(&self) -> usize {
        10_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(instance: Option<u64>, budget: &MemoryBudget) -> Limiter {
        Limiter::new(instance, Some(budget.clone()))
    }

    #[test]
    fn memories_and_tables_of_an_instance_count_together() {
        let budget = MemoryBudget::new(u64::MAX);
        let mut l = limiter(Some(1 << 20), &budget);
        for _ in 0..8 {
            assert!(l.memory_growing(0, 64 << 10, None).expect("ok"));
        }
        // 512 KiB held: a table of 64Ki elements (512 KiB) fits, one more element does not.
        assert!(l.table_growing(0, 64 << 10, None).expect("ok"));
        assert!(!l.table_growing(0, 1, None).expect("ok"));
        assert!(!l.memory_growing(64 << 10, 128 << 10, None).expect("ok"));
        assert!(
            l.refused
                .get()
                .expect("refused")
                .to_string()
                .contains("the limit is 1048576 bytes per instance")
        );
    }

    #[test]
    fn instances_share_the_budget_and_give_it_back_when_dropped() {
        let budget = MemoryBudget::new(3 << 20);
        let mut a = limiter(Some(2 << 20), &budget);
        let mut b = limiter(Some(2 << 20), &budget);
        assert!(a.memory_growing(0, 2 << 20, None).expect("ok"));
        assert!(
            !b.memory_growing(0, 2 << 20, None).expect("ok"),
            "over the shared budget"
        );
        assert!(b.memory_growing(0, 1 << 20, None).expect("ok"));
        assert_eq!(budget.used(), 3 << 20);
        assert_eq!(budget.refusals(), 1);
        assert!(
            b.refused
                .get()
                .expect("refused")
                .to_string()
                .contains("budget of 3145728")
        );
        drop(a);
        assert_eq!(budget.used(), 1 << 20);
        assert!(b.memory_growing(1 << 20, 2 << 20, None).expect("ok"));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_declared_maximum_is_respected() {
        let budget = MemoryBudget::new(u64::MAX);
        let mut l = limiter(None, &budget);
        assert!(!l.memory_growing(0, 2 << 16, Some(1 << 16)).expect("ok"));
    }
}
