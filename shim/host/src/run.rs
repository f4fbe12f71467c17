//! Running cli components and preview1 commands to completion.

use std::time::Duration;

use wasmtime::Store;
use wasmtime_wasi::I32Exit;

use crate::program::Inner;
use crate::state::{GuestState, P1State};
use crate::{Error, Grants, Program};

/// How a guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus(pub i32);

impl ExitStatus {
    /// The exit code (0 is success).
    pub fn code(self) -> i32 {
        self.0
    }

    /// Whether the guest succeeded.
    pub fn success(self) -> bool {
        self.0 == 0
    }
}

impl Program {
    /// Runs a cli component or preview1 command to completion under `grants`.
    pub async fn run(&self, grants: &Grants) -> Result<ExitStatus, Error> {
        grants.validate()?;
        self.engine.ensure_ticking()?;
        let timeout = grants.limits.timeout;
        let engine = &self.engine.engine;
        let result = match &self.inner {
            Inner::Cli(pre) => {
                let mut store = Store::new(
                    engine,
                    GuestState::new(grants, crate::quota::Quotas::new(grants)?)?,
                );
                store.limiter(|s: &mut GuestState| &mut s.limits);
                let refused = store.data().limits.refused.clone();
                yield_every_tick(&mut store);
                within(timeout, &refused, async move {
                    let cmd = pre.instantiate_async(&mut store).await?;
                    match cmd.wasi_cli_run().call_run(&mut store).await? {
                        Ok(()) => Ok(0),
                        Err(()) => Ok(1),
                    }
                })
                .await
            }
            Inner::Core(pre) => {
                // In a pod the kernel holds the bound for any guest; the host's own
                // measuring covers components only.
                if let Some(d) = grants
                    .dirs
                    .iter()
                    .find(|d| d.max_bytes.is_some() && !d.bound_by_kernel)
                {
                    return Err(Error::Grant {
                        what: format!("directory {}", d.guest),
                        reason: "maxSize is enforced for components only, and this is a \
                                 preview1 core module; wrap it as a component (wasm-tools \
                                 component new --adapt) or drop maxSize"
                            .into(),
                    });
                }
                let mut store = Store::new(engine, P1State::new(grants)?);
                store.limiter(|s: &mut P1State| &mut s.limits);
                let refused = store.data().limits.refused.clone();
                yield_every_tick(&mut store);
                within(timeout, &refused, async move {
                    let instance = pre.instantiate_async(&mut store).await?;
                    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                    start.call_async(&mut store, ()).await.map(|()| 0)
                })
                .await
            }
            Inner::Http(_) => {
                return Err(Error::WrongKind(
                    "this component exports wasi:http/incoming-handler: serve it (wa8s run --listen ADDR) instead of running it".into(),
                ));
            }
        };
        result.map(ExitStatus)
    }
}

/// Makes a store's guest yield to the async runtime on every epoch tick. Guest code never
/// blocks a worker thread for long (other requests, timers and shutdown keep running), and
/// the deadline is enforced by the timer in [`within`] when the guest next yields.
pub(crate) fn yield_every_tick<T>(store: &mut Store<T>) {
    store.epoch_deadline_async_yield_and_update(1);
    store.set_epoch_deadline(1);
}

/// Runs guest code under its deadline. Dropping the future at the deadline stops the guest:
/// running Wasm yields at every epoch tick, and host calls are ordinary futures.
pub(crate) async fn within(
    timeout: Option<Duration>,
    memory: &crate::memory::MemoryRefusal,
    fut: impl Future<Output = wasmtime::Result<i32>>,
) -> Result<i32, Error> {
    let outcome = match timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => return Err(Error::Deadline(t)),
        },
        None => fut.await,
    };
    // The deadline is the timer above (guests yield, never trap, on epochs), so an error
    // here is either the guest's own exit or a trap.
    outcome.or_else(|e| match e.downcast_ref::<I32Exit>() {
        Some(I32Exit(code)) => Ok(*code),
        None => Err(match memory.get() {
            Some(refusal) => Error::OutOfMemory { refusal, source: e },
            None => Error::Trap(e),
        }),
    })
}
