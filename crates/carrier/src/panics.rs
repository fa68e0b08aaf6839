//! Panics in user code: caught where they happen, reported, and never allowed to take a shard,
//! a command or a worker away silently.
//!
//! [`catch`] runs a future and turns a panic inside it into an error carrying the panic's
//! message and (in a worker) its location. Adapters wrap every call into user code with it: a
//! panicking event handler costs that one event, a panicking command handler answers its caller
//! with an error. What is caught is reported to the admiral as [`Status::Panic`] by the code
//! that caught it, with the context only it knows (shard, event kind, command).
//!
//! Panics nobody catches (in a task user code spawned, or in a library's own task, such as
//! serenity's per-event handler tasks) are reported by the panic hook every worker installs
//! (`install_hook`): it keeps the standard message on stderr and sends a report with the
//! worker, the message and the location. The hook never blocks: reports go through a bounded
//! queue, and a storm of panics drops reports beyond it (counted in the next one that fits).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use crate::ipc::Ipc;
pub use crate::ipc::proto::PanicReport;
use crate::ipc::proto::Status;

/// A panic caught by [`catch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    /// The panic's message.
    pub message: String,
    /// Where it happened, when the worker's hook saw it.
    pub location: Option<String>,
}

impl Panicked {
    /// A report of this panic in `context`, caught.
    #[must_use]
    pub fn report(self, context: &str, shard: Option<u32>, event: Option<String>) -> PanicReport {
        PanicReport {
            context: context.to_owned(),
            shard,
            event,
            message: self.message,
            location: self.location,
            caught: true,
            dropped_before: 0,
        }
    }
}

thread_local! {
    /// How many [`catch`] scopes are polling on this thread: the hook stays quiet inside one.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// The location of the last panic the hook saw inside a scope.
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Leaves a [`catch`] scope when dropped, also while unwinding.
struct Depth;

impl Depth {
    fn enter() -> Self {
        CATCHING.with(|c| c.set(c.get() + 1));
        Self
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        CATCHING.with(|c| c.set(c.get() - 1));
    }
}

/// Runs `future`; a panic inside it becomes [`Panicked`] instead of unwinding further.
pub async fn catch<F: Future>(future: F) -> Result<F::Output, Panicked> {
    use futures::FutureExt as _;
    let mut future = std::pin::pin!(future);
    let scoped = std::future::poll_fn(move |cx: &mut Context<'_>| -> Poll<F::Output> {
        let _depth = Depth::enter();
        future.as_mut().poll(cx)
    });
    let result = AssertUnwindSafe(scoped).catch_unwind().await;
    result.map_err(|payload| Panicked {
        message: message(&*payload),
        location: LAST_LOCATION.with(|l| l.borrow_mut().take()),
    })
}

/// Runs `f`; a panic inside it becomes [`Panicked`].
pub fn catch_sync<T>(f: impl FnOnce() -> T) -> Result<T, Panicked> {
    let result = {
        let _depth = Depth::enter();
        std::panic::catch_unwind(AssertUnwindSafe(f))
    };
    result.map_err(|payload| Panicked {
        message: message(&*payload),
        location: LAST_LOCATION.with(|l| l.borrow_mut().take()),
    })
}

/// Runs a user's hook that adjusts a builder. If it panics, the builder `fresh` makes is used
/// instead, and the panic is returned for the caller to report where it happened.
pub fn adjust<B>(
    builder: B,
    hook: impl FnOnce(B) -> B,
    fresh: impl FnOnce() -> B,
) -> (B, Option<Panicked>) {
    match catch_sync(|| hook(builder)) {
        Ok(adjusted) => (adjusted, None),
        Err(panicked) => (fresh(), Some(panicked)),
    }
}

/// The text of a panic payload.
fn message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned())
}

/// Reports queued by the hook, not yet sent.
const HOOK_QUEUE: usize = 256;

static HOOK: OnceLock<mpsc::Sender<PanicReport>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Installs this worker's panic hook (once per process): the standard message still goes to
/// stderr; panics outside a [`catch`] scope are also reported to the admiral through `ipc`.
pub(crate) fn install_hook(ipc: &Ipc) {
    let (tx, mut rx) = mpsc::channel::<PanicReport>(HOOK_QUEUE);
    if HOOK.set(tx).is_err() {
        return;
    }
    let ipc = ipc.clone();
    tokio::spawn(async move {
        while let Some(report) = rx.recv().await {
            let _ = ipc.report(Status::Panic(report)).await;
        }
    });
    let previous = Arc::new(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        if CATCHING.with(Cell::get) > 0 {
            LAST_LOCATION.with(|l| *l.borrow_mut() = location);
            return;
        }
        let Some(tx) = HOOK.get() else { return };
        let report = PanicReport {
            context: "task".to_owned(),
            shard: None,
            event: None,
            message: message(info.payload()),
            location,
            caught: false,
            dropped_before: DROPPED.load(Ordering::Relaxed),
        };
        if tx.try_send(report).is_ok() {
            DROPPED.store(0, Ordering::Relaxed);
        } else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }));
}
