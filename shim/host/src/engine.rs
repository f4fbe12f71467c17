//! Engine setup in one place: component model, epoch interruption (deadlines), stack limit,
//! the pooling allocator when serving, and precompilation.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::Error;

/// The Wasmtime version this host embeds (part of every precompile cache key).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// How often the epoch advances; deadlines are rounded up to this.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most bytes of native stack a guest may use before it traps (stack exhaustion).
    pub max_wasm_stack: usize,
    /// Pre-allocate slots for this many concurrent instances (pooling allocator). Pays off
    /// when serving many short requests; `None` allocates on demand (one-shot runs).
    pub pooled_instances: Option<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_wasm_stack: 1 << 20,
            pooled_instances: None,
        }
    }
}

/// A Wasmtime engine with an epoch ticker. Cheap to clone.
///
/// The ticker thread starts with the first guest (see [`HostEngine::ensure_ticking`]), not
/// with the engine: a process that loads its program and then gives up its privileges (the
/// shim's guest) must have only one thread when it does, since capabilities, the bounding
/// set and `no_new_privs` are per thread.
#[derive(Clone)]
pub struct HostEngine {
    pub(crate) engine: Engine,
    config: EngineConfig,
    ticker: Arc<Ticker>,
}

impl std::fmt::Debug for HostEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostEngine")
            .field("config", &self.config)
            .finish()
    }
}

struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    started: std::sync::OnceLock<Result<(), String>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl HostEngine {
    /// Creates an engine. With `pooled_instances`, falls back to on-demand allocation if the
    /// machine cannot reserve the pool's virtual memory.
    pub fn new(config: &EngineConfig) -> Result<Self, Error> {
        let engine = match config.pooled_instances {
            Some(n) => Engine::new(&wasm_config(config, Some(n)))
                .or_else(|_| Engine::new(&wasm_config(config, None))),
            None => Engine::new(&wasm_config(config, None)),
        }
        .map_err(Error::wasmtime("creating the engine"))?;
        Ok(HostEngine {
            engine,
            config: config.clone(),
            ticker: Arc::new(Ticker {
                stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                started: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Starts the thread that advances the epoch (deadlines, yields) unless it runs already;
    /// every path that makes a store calls this first.
    pub(crate) fn ensure_ticking(&self) -> Result<(), Error> {
        let started = self.ticker.started.get_or_init(|| {
            let weak = self.engine.weak();
            let flag = self.ticker.stop.clone();
            // It holds only a weak reference so the engine can drop, and stops with it.
            std::thread::Builder::new()
                .name("wa8s-epoch".into())
                .spawn(move || {
                    while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map(drop)
                .map_err(|e| e.to_string())
        });
        started
            .clone()
            .map_err(|e| Error::Engine(format!("starting the epoch thread: {e}")))
    }

    /// Compiles a component or core module to native code for this engine, for the
    /// precompile cache.
    pub fn precompile(&self, wasm: &[u8]) -> Result<Vec<u8>, Error> {
        let result = if wasmparser::Parser::is_component(wasm) {
            self.engine.precompile_component(wasm)
        } else {
            self.engine.precompile_module(wasm)
        };
        result.map_err(Error::Invalid)
    }

    /// A key that changes whenever precompiled code from this engine would not load in
    /// another: Wasmtime version, target, CPU features, and every compilation setting.
    pub fn compatibility_key(&self) -> String {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        WASMTIME_VERSION.hash(&mut h);
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

fn wasm_config(config: &EngineConfig, pooled: Option<u32>) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .async_stack_size(config.max_wasm_stack + (1 << 20));
    if let Some(n) = pooled {
        let mut pool = PoolingAllocationConfig::new();
        // Adapter-built components hold a dozen core instances and a few memories each.
        pool.total_component_instances(n)
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(4))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memories_per_component(8)
            .max_memories_per_module(2)
            .max_tables_per_module(4);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

/// FNV-1a: stable across Rust releases, unlike `DefaultHasher`, so cache keys survive
/// toolchain upgrades.
struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}
