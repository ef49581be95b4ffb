//! Who acquired a connection: the call site and the tracing span.

use std::fmt;
use std::panic::Location;

/// The source location of a checkout (`file:line:column`).
///
/// Captured for free from [`Location::caller`] by `#[track_caller]` on
/// [`WatchedPool::get`](crate::WatchedPool::get).
///
/// ```
/// let site = poolwatch::CallSite::new("src/jobs/cleanup.rs", 42, 17);
/// assert_eq!(site.to_string(), "src/jobs/cleanup.rs:42:17");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CallSite {
    /// Source file, as the compiler names it.
    pub file: &'static str,
    /// Line, starting at 1.
    pub line: u32,
    /// Column, starting at 1.
    pub column: u32,
}

impl CallSite {
    /// The bucket that collects statistics of call sites beyond the
    /// configured cap ([`WatchConfig::max_sites`](crate::WatchConfig::max_sites)).
    pub const OVERFLOW: CallSite = CallSite {
        file: "<other call sites>",
        line: 0,
        column: 0,
    };

    /// A call site from its parts.
    pub const fn new(file: &'static str, line: u32, column: u32) -> Self {
        Self { file, line, column }
    }

    /// Whether this is the [`CallSite::OVERFLOW`] bucket.
    pub fn is_overflow(&self) -> bool {
        *self == Self::OVERFLOW
    }
}

impl From<&'static Location<'static>> for CallSite {
    fn from(location: &'static Location<'static>) -> Self {
        Self::new(location.file(), location.line(), location.column())
    }
}

impl fmt::Display for CallSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_overflow() {
            f.write_str(self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// The tracing span that was current when a connection was acquired: the
/// request handler or background job that holds it.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry();
/// tracing::subscriber::with_default(subscriber, || {
///     assert_eq!(poolwatch::SpanInfo::current(), None);
///     let span = tracing::info_span!("cleanup_job");
///     let _entered = span.enter();
///     assert_eq!(poolwatch::SpanInfo::current().unwrap().name, "cleanup_job");
/// });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SpanInfo {
    /// The span's name (`info_span!("name")`).
    pub name: &'static str,
    /// The span's id, as the subscriber assigned it.
    pub id: u64,
}

impl SpanInfo {
    /// The span the current thread is in, if any.
    ///
    /// Reads the dispatcher's current span without cloning it (no reference
    /// count traffic), so it is cheap enough for every checkout.
    pub fn current() -> Option<SpanInfo> {
        tracing::dispatcher::get_default(|dispatch| {
            dispatch
                .current_span()
                .into_inner()
                .map(|(id, metadata)| SpanInfo {
                    name: metadata.name(),
                    id: id.into_u64(),
                })
        })
    }
}

impl fmt::Display for SpanInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.name, self.id)
    }
}

/// [`SpanInfo`] in 16 bytes (a `NonZeroU64` and a metadata reference), as
/// the ledger keeps it per outstanding guard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanRef {
    pub(crate) id: std::num::NonZeroU64,
    pub(crate) metadata: &'static tracing::Metadata<'static>,
}

impl SpanRef {
    /// The span the current thread is in, if any.
    #[inline]
    pub(crate) fn current() -> Option<SpanRef> {
        tracing::dispatcher::get_default(|dispatch| {
            dispatch
                .current_span()
                .into_inner()
                .map(|(id, metadata)| SpanRef {
                    id: id.into_non_zero_u64(),
                    metadata,
                })
        })
    }

    pub(crate) fn info(self) -> SpanInfo {
        SpanInfo {
            name: self.metadata.name(),
            id: self.id.get(),
        }
    }
}
