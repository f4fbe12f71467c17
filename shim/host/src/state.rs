//! Per-instance store state and building the WASI context from [`Grants`].

use wasmtime::component::ResourceTable;

use wasmtime_wasi::cli::OutputFile;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::memory::Limiter;
use crate::net::{GuestNet, Learned, OutboundHttp, open_sockets};
use crate::quota::Quotas;
use crate::{Error, Grants, Stdio};

/// Store data for components (cli and http).
pub(crate) struct GuestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundHttp,
    table: ResourceTable,
    pub(crate) limits: Limiter,
    pub(crate) quotas: Quotas,
    pub(crate) net: GuestNet,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl GuestState {
    /// A store's state. `quotas` come from [`Quotas::new`] on the same grants, resolved
    /// once per program rather than per request.
    pub(crate) fn new(grants: &Grants, quotas: Quotas) -> Result<Self, Error> {
        let net = GuestNet {
            policy: grants.network.clone(),
            lookups: Default::default(),
            telemetry: grants.telemetry.clone(),
        };
        Ok(GuestState {
            wasi: builder(grants, &net.lookups.learned)?.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHttp::new(
                grants.network.clone(),
                grants.trust.clone(),
                grants.telemetry.clone(),
            ),
            table: ResourceTable::new(),
            limits: Limiter::new(grants.limits.memory_bytes, grants.limits.budget.clone()),
            quotas,
            net,
        })
    }
}

impl GuestState {
    /// The guest's outgoing requests become spans within `cx` (its request's span).
    pub(crate) fn trace_within(&mut self, cx: opentelemetry::Context) {
        self.hooks.trace_within(cx);
    }
}

/// Store data for preview1 core modules.
pub(crate) struct P1State {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limits: Limiter,
}

impl P1State {
    pub(crate) fn new(grants: &Grants) -> Result<Self, Error> {
        Ok(P1State {
            wasi: builder(grants, &Learned::default())?.build_p1(),
            limits: Limiter::new(grants.limits.memory_bytes, grants.limits.budget.clone()),
        })
    }
}

fn builder(grants: &Grants, learned: &Learned) -> Result<WasiCtxBuilder, Error> {
    let mut b = WasiCtxBuilder::new();
    b.args(&grants.args).envs(&grants.env);
    set_stdio(&mut b, &grants.stdout, true);
    set_stdio(&mut b, &grants.stderr, false);
    for d in &grants.dirs {
        let perms = if d.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&d.host, &d.guest, perms)
            .map_err(|source| Error::Preopen {
                guest: d.guest.clone(),
                host: d.host.clone(),
                source,
            })?;
    }
    open_sockets(&mut b, &grants.network, learned, &grants.telemetry);
    Ok(b)
}

fn set_stdio(b: &mut WasiCtxBuilder, stdio: &Stdio, out: bool) {
    match (stdio, out) {
        (Stdio::Null, _) => {}
        (Stdio::Inherit, true) => {
            b.inherit_stdout();
        }
        (Stdio::Inherit, false) => {
            b.inherit_stderr();
        }
        (Stdio::File(f), out) => match f.try_clone() {
            Ok(f) if out => {
                b.stdout(OutputFile::new(f));
            }
            Ok(f) => {
                b.stderr(OutputFile::new(f));
            }
            Err(e) => tracing::warn!("guest output file unusable, discarding output: {e}"),
        },
        (Stdio::Capture(c), true) => {
            b.stdout(c.0.clone());
        }
        (Stdio::Capture(c), false) => {
            b.stderr(c.0.clone());
        }
    }
}
