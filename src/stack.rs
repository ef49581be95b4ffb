//! Stacks of checkouts (`leak-report`): raw return addresses captured on
//! the checkout path, symbolised only when a guard is reported.
//!
//! Capture keeps only instruction pointers (8 bytes a frame) and takes no
//! lock, so it scales across threads. On Linux x86_64 it walks the stack
//! with framehop and a per-thread cache of unwind rules (`unwind`, under
//! 20 ns a frame); elsewhere, or when that walk gives up, with
//! `backtrace::trace_unsynchronized` (about 180 ns a frame). Symbolisation
//! (whose first call in a process loads debug info, 25–100 ms) happens only
//! in [`render`], which runs on the watchdog thread or on an error path,
//! never under a ledger lock.

use std::ffi::c_void;
use std::fmt::Write as _;

/// Frames kept per stack. The user's code sits right below poolwatch's own
/// few frames; the runtime's frames further down are not worth the cost.
pub(crate) const MAX_FRAMES: usize = 32;

/// User frames shown in a report; the rest are counted.
const MAX_SHOWN: usize = 16;

/// A captured stack: raw return addresses, innermost first. A boxed slice
/// (no header: 8 bytes a frame); the rare copies (a guard flagged by the
/// watchdog) allocate.
pub(crate) type RawStack = Box<[usize]>;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod unwind;

/// Captures the fast path could not walk (benches and tests check it).
pub(crate) static SLOW_CAPTURES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The current thread's stack, as raw return addresses.
#[inline(never)]
pub(crate) fn capture() -> RawStack {
    let mut ips = [0usize; MAX_FRAMES];
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    let len = match unwind::capture(&mut ips) {
        Some(len) => len,
        None => {
            SLOW_CAPTURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            capture_slow(&mut ips)
        }
    };
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    let len = capture_slow(&mut ips);
    Box::from(&ips[..len])
}

/// Fills `ips` with the current thread's return addresses, innermost first,
/// walking with `backtrace`; returns how many.
#[inline(never)]
fn capture_slow(ips: &mut [usize]) -> usize {
    let mut len = 0;
    if ips.is_empty() {
        return 0;
    }
    let record = |frame: &backtrace::Frame| {
        ips[len] = frame.ip() as usize;
        len += 1;
        len < ips.len()
    };
    // SAFETY: `trace_unsynchronized` is unsafe only because it skips the
    // crate's global lock. Off Windows it walks the stack with the
    // thread-safe `_Unwind_Backtrace`; the lock matters for dbghelp, so
    // Windows takes the synchronised path.
    #[cfg(not(windows))]
    unsafe {
        backtrace::trace_unsynchronized(record)
    };
    #[cfg(windows)]
    backtrace::trace(record);
    len
}

/// Frames that are not the user's: poolwatch itself, the runtime, the
/// standard library, the unwinder.
const INTERNAL: &[&str] = &[
    "poolwatch::",
    "tokio::",
    "std::",
    "core::",
    "alloc::",
    "backtrace::",
    "futures",
    "deadpool::",
    "tracing::",
    "test::",
];

/// Whether `s` starts with a path (`ident::…`), not a generic parameter, a
/// `fn()` type, a tuple or a slice.
fn starts_with_path(s: &str) -> bool {
    s.split_once("::").is_some_and(|(head, _)| {
        !head.is_empty() && head.chars().all(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The path that names a frame's crate: for `<T as Trait>::f` the type's,
/// or the trait's when the type is not a path (`F`, `fn() -> …`, `[T]`).
fn crate_path(name: &str) -> &str {
    let name = name
        .trim_start_matches(['<', '&'])
        .trim_start_matches("mut ")
        .trim_start_matches("dyn ");
    match name.split_once(" as ") {
        Some((self_type, rest)) if !starts_with_path(self_type) => rest,
        _ => name,
    }
}

fn is_internal(name: &str) -> bool {
    // C frames (`__libc_start_main`, `clone3`, …) have no path.
    !name.contains("::") || {
        let path = crate_path(name);
        INTERNAL.iter().any(|prefix| path.starts_with(prefix))
    }
}

/// Symbolises a stack and renders the user's frames, innermost first, one
/// per line (`name at file:line`; a frame with inlined calls gives one
/// line per call), then what was left out. The footer counts frames:
/// shown + trimmed + not shown = captured.
pub(crate) fn render(stack: &[usize]) -> String {
    let mut out = String::new();
    let (mut shown, mut trimmed, mut not_shown) = (0usize, 0usize, 0usize);
    let mut lines = Vec::new();
    for &ip in stack {
        lines.clear();
        backtrace::resolve(ip as *mut c_void, |symbol| {
            let Some(name) = symbol.name().map(|n| format!("{n:#}")) else {
                return;
            };
            if is_internal(&name) {
                return;
            }
            let mut line = name;
            if let (Some(file), Some(lineno)) = (symbol.filename(), symbol.lineno()) {
                let _ = write!(line, " at {}:{lineno}", file.display());
            }
            lines.push(line);
        });
        if lines.is_empty() {
            trimmed += 1; // poolwatch's, the runtime's, std's, or unknown
        } else if shown >= MAX_SHOWN {
            not_shown += 1;
        } else {
            shown += 1;
            for line in &lines {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let _ = write!(
        out,
        "({shown} frames shown, {trimmed} poolwatch/runtime/std frames trimmed"
    );
    if not_shown > 0 {
        let _ = write!(out, ", {not_shown} more not shown");
    }
    let _ = write!(out, "; {} captured)", stack.len());
    out
}

/// Symbolises one address of poolwatch's own, so the process's debug info
/// is loaded (the first symbolisation's 25–100 ms) before a report needs
/// it.
pub(crate) fn warm_up() {
    backtrace::resolve(warm_up as *mut c_void, |_| {});
}

/// [`render`] for an optional stack.
pub(crate) fn render_opt(stack: Option<&RawStack>) -> Option<String> {
    stack.map(|s| render(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        for internal in [
            "<poolwatch::pool::WatchedPool<M>>::checkout::{{closure}}",
            "<core::pin::Pin<P> as core::future::future::Future>::poll",
            "<F as core::future::into_future::IntoFuture>::into_future",
            "<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once",
            "tokio::runtime::task::harness::poll_future",
            "std::panicking::try",
            "__libc_start_main",
        ] {
            assert!(is_internal(internal), "{internal}");
        }
        for user in [
            "app::jobs::cleanup::{{closure}}",
            "<app::Cache as core::ops::drop::Drop>::drop",
            "<&mut app::Repo>::load",
        ] {
            assert!(!is_internal(user), "{user}");
        }
    }

    #[inline(never)]
    fn a_recognisable_caller() -> RawStack {
        capture()
    }

    #[test]
    fn captures_and_renders_the_caller() {
        let stack = a_recognisable_caller();
        assert!(stack.len() > 3 && stack.len() <= MAX_FRAMES);
        let mut names = Vec::new();
        for &ip in stack.iter() {
            backtrace::resolve(ip as *mut c_void, |s| {
                names.push(s.name().map(|n| format!("{n:#}")).unwrap_or_default());
            });
        }
        assert!(
            names.iter().any(|n| n.contains("a_recognisable_caller")),
            "{names:#?}"
        );
        // Everything here is poolwatch's or std's own: all trimmed.
        let text = render(&stack);
        assert!(text.starts_with('('), "{text}");
        assert!(text.contains("trimmed"), "{text}");
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use std::time::Instant;

    #[inline(never)]
    fn at_depth(depth: usize) -> RawStack {
        if depth <= 1 {
            capture()
        } else {
            let stack = at_depth(depth - 1);
            std::hint::black_box(stack)
        }
    }

    /// `cargo test --release --features leak-report --lib capture_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn capture_cost() {
        for depth in [1, 8, 16] {
            let frames = at_depth(depth).len();
            let start = Instant::now();
            for _ in 0..50_000 {
                std::hint::black_box(at_depth(depth));
            }
            println!(
                "{frames} frames: {:?} per capture",
                start.elapsed() / 50_000
            );
        }
        let frames = at_depth(16).len();
        let run = |n: u32| {
            let start = Instant::now();
            for _ in 0..n {
                std::hint::black_box(at_depth(16));
            }
            start.elapsed() / n
        };
        run(10_000);
        println!("{frames} frames: {:?} per capture, 1 thread", run(100_000));
        let per_thread: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2).map(|_| s.spawn(|| run(100_000))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        println!("{frames} frames: {per_thread:?} per capture, 2 threads at once");
    }
}
