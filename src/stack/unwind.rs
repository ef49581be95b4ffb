//! The fast path of [`capture`](super::capture) on Linux x86_64: the
//! stack walked with `framehop` over the process's own `.eh_frame`.
//!
//! libgcc's `_Unwind_Backtrace` (what `backtrace` uses) parses the DWARF
//! CFI of every frame on every walk, about 200 ns a frame. framehop turns
//! the CFI of an address into a small unwind rule once and keeps it in a
//! cache, so walking through the same code again costs a few nanoseconds a
//! frame. Checkouts come from a handful of call sites, so nearly every walk
//! is a cache hit.
//!
//! * The modules (the executable, the shared libraries, the vDSO) are read
//!   once per process from `dl_iterate_phdr`: the executable segment as the
//!   code range, `PT_GNU_EH_FRAME` as `.eh_frame_hdr`, and `.eh_frame` from
//!   the header's pointer up to the end of its segment (both must be in
//!   read-only segments). Shared libraries are pinned (`RTLD_NODELETE`), so
//!   the sections read stay mapped for the life of the process; a module
//!   that cannot be pinned, or has no such sections, is left out.
//! * Each thread has its own rule cache and its own stack bounds: no lock,
//!   no shared cache line written.
//! * Only the current thread's stack is read, between the stack pointer of
//!   the walk's first frame and the top of the thread's stack.
//!
//! [`capture`] gives up (returns `None`) when a frame's address is in no
//! module read at start-up (code loaded later with `dlopen`, JIT code), when
//! the stack pointer is not on the thread's stack (an alternate signal
//! stack, a coroutine), or when framehop stops with an error before the end
//! of the stack: the caller then walks with `backtrace` instead.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ops::Range;
use std::sync::OnceLock;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder};

/// Section data: memory of a module that stays mapped for the life of the
/// process (see [`Process::load`]).
type Bytes = &'static [u8];

/// What the walk needs to know about the process, built on the first
/// capture.
struct Process {
    unwinder: UnwinderX86_64<Bytes>,
    /// The code ranges of the modules in `unwinder`, sorted by start.
    code: Vec<Range<u64>>,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

thread_local! {
    /// This thread's framehop cache (unwind rules by address).
    static CACHE: RefCell<Option<Box<CacheX86_64>>> = const { RefCell::new(None) };
    /// This thread's stack, `lo..hi`; `0..0` until looked up, `1..0` when
    /// it could not be.
    static STACK: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Fills `ips` with the current thread's return addresses, innermost first
/// (the first is an address in this function), up to `ips.len()` of them,
/// and returns how many; `None` when the fast path cannot walk this stack
/// (see the module docs), leaving `ips` in an unspecified state.
#[inline(never)]
pub(crate) fn capture(ips: &mut [usize]) -> Option<usize> {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers into outputs; no memory, stack or flags
    // are touched. `lea` gives the address of the next instruction, which
    // is in this function's body, where the stack pointer and the frame
    // pointer read here are the ones its CFI describes.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
            options(nomem, nostack, preserves_flags),
        );
    }
    let process = PROCESS.get_or_init(Process::load);
    let (lo, hi) = stack_bounds();
    if !(lo <= sp && sp < hi) {
        return None;
    }
    // Everything from `sp` up belongs to this function or its callers,
    // which are all still running: the frames are intact while we walk.
    let mut read_stack = |addr: u64| {
        if addr >= sp && addr.checked_add(8).is_some_and(|end| end <= hi) {
            // SAFETY: `sp..hi` is this thread's live stack (checked against
            // the bounds pthread reports), mapped and readable for as long
            // as this function runs; the read is unaligned-safe.
            Ok(unsafe { std::ptr::read_unaligned(addr as *const u64) })
        } else {
            Err(())
        }
    };
    // `try_with`: a checkout from another thread-local's destructor runs
    // after this cache may be gone; then the slow walk takes over (an
    // aborting process is the one thing a diagnostic must never cause).
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            let cache = cache.get_or_insert_with(|| Box::new(CacheX86_64::new()));
            let mut frames = process.unwinder.iter_frames(
                ip,
                UnwindRegsX86_64::new(ip, sp, bp),
                cache,
                &mut read_stack,
            );
            let mut len = 0;
            while len < ips.len() {
                match frames.next() {
                    Ok(Some(frame)) => {
                        let address = frame.address();
                        // framehop would walk on from an address it has no
                        // unwind information for by guessing (frame pointers):
                        // stop before it does.
                        if !process.covers(address) {
                            return None;
                        }
                        ips[len] = address as usize;
                        len += 1;
                    }
                    Ok(None) => break,
                    Err(_) => return None,
                }
            }
            Some(len)
        })
        .ok()
        .flatten()
}

/// The current thread's stack, `lo..hi`, looked up once per thread.
fn stack_bounds() -> (u64, u64) {
    STACK
        .try_with(|cached| {
            if cached.get() == (0, 0) {
                cached.set(thread_stack().unwrap_or((1, 0)));
            }
            cached.get()
        })
        .unwrap_or((1, 0))
}

/// The current thread's stack from pthread.
fn thread_stack() -> Option<(u64, u64)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is written by `pthread_getattr_np` before it is read,
    // and destroyed once, only when it was initialised.
    unsafe {
        if libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) != 0 {
            return None;
        }
        let mut addr: *mut c_void = std::ptr::null_mut();
        let mut size: usize = 0;
        let rc = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if rc != 0 || addr.is_null() {
            return None;
        }
        let lo = addr as u64;
        Some((lo, lo.checked_add(size as u64)?))
    }
}

/// What `dl_iterate_phdr` tells about one module.
struct Found {
    /// As `dl_iterate_phdr` gives it: empty for the executable.
    name: CString,
    /// Whether the module can never be unloaded (the executable, the vDSO).
    permanent: bool,
    base: u64,
    code: Range<u64>,
    eh_frame_hdr: Range<u64>,
    eh_frame: Range<u64>,
}

impl Process {
    fn load() -> Process {
        let found = loaded_modules();
        // Pin the shared libraries so that what is read from them stays
        // mapped. `dlopen` is not called from inside `dl_iterate_phdr`'s
        // callback (which holds the loader's lock).
        let pinned: Vec<bool> = found
            .iter()
            .map(|module| module.permanent || pin(&module.name))
            .collect();
        // A library could have been unloaded, and another with the same
        // name loaded elsewhere, between the listing and the pinning: keep
        // only the modules still where they were listed.
        let again = loaded_modules();
        let mut unwinder = UnwinderX86_64::new();
        let mut code = Vec::new();
        for (module, pinned) in found.into_iter().zip(pinned) {
            let still_there = again
                .iter()
                .any(|m| m.name == module.name && m.base == module.base && m.code == module.code);
            if !(pinned && still_there) {
                continue;
            }
            // SAFETY: both ranges lie in read-only segments (see `module`)
            // of a module that cannot be unloaded any more (checked above):
            // mapped, readable and unchanging for the life of the process.
            let (eh_frame_hdr, eh_frame) =
                unsafe { (bytes(&module.eh_frame_hdr), bytes(&module.eh_frame)) };
            let svma = |r: &Range<u64>| r.start - module.base..r.end - module.base;
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: Some(svma(&module.code)),
                eh_frame_svma: Some(svma(&module.eh_frame)),
                eh_frame: Some(eh_frame),
                eh_frame_hdr_svma: Some(svma(&module.eh_frame_hdr)),
                eh_frame_hdr: Some(eh_frame_hdr),
                ..Default::default()
            };
            let name = module.name.to_string_lossy().into_owned();
            unwinder.add_module(Module::new(name, module.code.clone(), module.base, info));
            code.push(module.code);
        }
        code.sort_by_key(|r| r.start);
        Process { unwinder, code }
    }

    /// Whether `address` is in the code of a module the unwinder has.
    fn covers(&self, address: u64) -> bool {
        let i = self.code.partition_point(|r| r.start <= address);
        i > 0 && address < self.code[i - 1].end
    }
}

/// # Safety
///
/// `range` must be mapped and readable, and stay so for the life of the
/// process.
unsafe fn bytes(range: &Range<u64>) -> Bytes {
    // SAFETY: guaranteed by the caller.
    unsafe {
        std::slice::from_raw_parts(range.start as *const u8, (range.end - range.start) as usize)
    }
}

/// Makes the loaded library `name` impossible to unload. Whether it is.
fn pin(name: &CStr) -> bool {
    if name.to_bytes().is_empty() {
        return false;
    }
    // SAFETY: `name` is a NUL-terminated string. With `RTLD_NOLOAD` nothing
    // is loaded (no constructor runs); `RTLD_NODELETE` marks the library
    // as never to be unloaded. The handle is deliberately not closed: the
    // reference it holds is part of the pin.
    let handle = unsafe {
        libc::dlopen(
            name.as_ptr(),
            libc::RTLD_NOLOAD | libc::RTLD_NODELETE | libc::RTLD_LAZY,
        )
    };
    if handle.is_null() {
        // SAFETY: clears the error this failure left, so that the
        // application's next `dlerror` does not report it.
        unsafe { libc::dlerror() };
        return false;
    }
    true
}

/// The modules of the process that have an `.eh_frame_hdr`.
fn loaded_modules() -> Vec<Found> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `dl_iterate_phdr` passes a valid `info` for the duration
        // of the call, and `data` is the `&mut Vec<Found>` given below.
        let (info, found) = unsafe { (&*info, &mut *data.cast::<Vec<Found>>()) };
        // SAFETY: as above; the header table is `dlpi_phnum` entries long
        // and mapped while the module is listed.
        if let Some(module) = unsafe { module(info) } {
            found.push(module);
        }
        0
    }
    let mut found: Vec<Found> = Vec::new();
    // SAFETY: `each` only uses `data` as the `Vec<Found>` passed here, which
    // outlives the call.
    unsafe {
        libc::dl_iterate_phdr(Some(each), (&mut found as *mut Vec<Found>).cast());
    }
    found
}

/// A module as `dl_iterate_phdr` lists it, if it has the sections needed.
///
/// # Safety
///
/// `info` must be what `dl_iterate_phdr` passed to its callback, used
/// during that callback.
unsafe fn module(info: &libc::dl_phdr_info) -> Option<Found> {
    let base = info.dlpi_addr;
    if info.dlpi_phdr.is_null() {
        return None;
    }
    // SAFETY: the loader's header table for this module, `dlpi_phnum` long.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
    let at = |h: &libc::Elf64_Phdr| {
        let start = base.checked_add(h.p_vaddr)?;
        Some(start..start.checked_add(h.p_memsz)?)
    };
    let loads = || headers.iter().filter(|h| h.p_type == libc::PT_LOAD);
    // The executable segments, as one range (there is usually one).
    let code = loads()
        .filter(|h| h.p_flags & libc::PF_X != 0)
        .filter_map(at)
        .reduce(|a, b| a.start.min(b.start)..a.end.max(b.end))?;
    let eh_frame_hdr = headers
        .iter()
        .find(|h| h.p_type == libc::PT_GNU_EH_FRAME)
        .and_then(at)?;
    // The read-only segment around an address: the header must be mapped
    // before it is read, and nothing may write to the sections while
    // framehop reads them.
    let segment_of = |address: u64| {
        loads()
            .filter(|h| h.p_flags & libc::PF_W == 0)
            .filter_map(at)
            .find(|segment| segment.start <= address && address < segment.end)
    };
    let hdr_segment = segment_of(eh_frame_hdr.start)?;
    if eh_frame_hdr.end > hdr_segment.end || eh_frame_hdr.end - eh_frame_hdr.start < 8 {
        return None;
    }
    // SAFETY: `eh_frame_hdr` lies in a loaded segment (checked above),
    // mapped while the module is listed.
    let hdr = unsafe { bytes(&eh_frame_hdr) };
    let eh_frame_start = eh_frame_ptr(hdr, eh_frame_hdr.start, base)?;
    // `.eh_frame` has no size of its own here: bound it by its segment.
    let eh_frame = eh_frame_start..segment_of(eh_frame_start)?.end;
    // SAFETY: a NUL-terminated string owned by the loader, valid during the
    // callback; copied out.
    let name = unsafe { CStr::from_ptr(info.dlpi_name.cast::<c_char>()) }.to_owned();
    let permanent = name.to_bytes().is_empty() || is_vdso(base, &code);
    Some(Found {
        name,
        permanent,
        base,
        code,
        eh_frame_hdr,
        eh_frame,
    })
}

/// Whether the module with this code is the vDSO, which the kernel maps for
/// the life of the process.
fn is_vdso(base: u64, code: &Range<u64>) -> bool {
    // SAFETY: `getauxval` only reads the auxiliary vector.
    let vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) };
    vdso != 0 && (vdso == base || code.contains(&vdso))
}

/// Where `.eh_frame` starts, from the `eh_frame_ptr` field of an
/// `.eh_frame_hdr` at address `hdr_address` (LSB, "Exception Frame
/// Header").
fn eh_frame_ptr(hdr: &[u8], hdr_address: u64, base: u64) -> Option<u64> {
    const OMIT: u8 = 0xff;
    let (&version, rest) = hdr.split_first()?;
    let (&encoding, _) = rest.split_first()?;
    if version != 1 || encoding == OMIT {
        return None;
    }
    // The field follows version, eh_frame_ptr_enc, fde_count_enc and
    // table_enc.
    let field = hdr.get(4..)?;
    let read = |n: usize| -> Option<[u8; 8]> {
        let mut bytes = [0; 8];
        bytes[..n].copy_from_slice(field.get(..n)?);
        Some(bytes)
    };
    let value: i64 = match encoding & 0x0f {
        0x00 | 0x04 | 0x0c => i64::from_le_bytes(read(8)?),
        0x02 => i64::from(u16::from_le_bytes(read(2)?[..2].try_into().ok()?)),
        0x03 => i64::from(u32::from_le_bytes(read(4)?[..4].try_into().ok()?)),
        0x0a => i64::from(i16::from_le_bytes(read(2)?[..2].try_into().ok()?)),
        0x0b => i64::from(i32::from_le_bytes(read(4)?[..4].try_into().ok()?)),
        _ => return None,
    };
    let relative_to = match encoding & 0x70 {
        // Absolute: a link-time address.
        0x00 => base,
        // pcrel: relative to the field itself.
        0x10 => hdr_address + 4,
        // datarel: relative to the start of `.eh_frame_hdr`.
        0x30 => hdr_address,
        _ => return None,
    };
    relative_to.checked_add_signed(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for a whole test thread's stack, so neither walk is cut short.
    const ROOM: usize = 256;

    /// The names of the functions at `ip` (more than one when inlined).
    fn names(ip: usize) -> String {
        let mut names = String::new();
        backtrace::resolve(ip as *mut c_void, |symbol| {
            if let Some(name) = symbol.name() {
                names.push_str(&format!("{name:#} | "));
            }
        });
        names
    }

    /// The fast and the `backtrace` walk of the same stack, from two calls
    /// in one function `depth` frames deep.
    #[inline(never)]
    fn both_at_depth(depth: usize) -> (Vec<usize>, Vec<usize>) {
        if depth > 1 {
            let both = both_at_depth(depth - 1);
            return std::hint::black_box(both);
        }
        let mut fast = vec![0; ROOM];
        let len = capture(&mut fast).expect("the fast path walks a test thread's stack");
        fast.truncate(len);
        let mut slow = vec![0; ROOM];
        let len = super::super::capture_slow(&mut slow);
        slow.truncate(len);
        // libgcc reports one frame past the outermost (`clone3`,
        // `_start`), with no address; framehop stops at the outermost.
        if slow.last() == Some(&0) {
            slow.pop();
        }
        (fast, slow)
    }

    /// Where `both_at_depth`'s innermost frame is in `stack`.
    fn innermost(stack: &[usize], what: &str) -> usize {
        let names: Vec<_> = stack.iter().map(|&ip| names(ip)).collect();
        names
            .iter()
            .position(|n| n.contains("both_at_depth"))
            .unwrap_or_else(|| panic!("{what}: no both_at_depth in {names:#?}"))
    }

    /// Both walks agree from `both_at_depth`'s caller outwards, they differ
    /// only in the frames inside the two captures, and the fast walk has
    /// every level of the recursion.
    fn check_against_backtrace(depth: usize) {
        let (fast, slow) = both_at_depth(depth);
        assert!(fast.len() < ROOM && slow.len() < ROOM, "cut short");
        let f = innermost(&fast, "fast");
        let s = innermost(&slow, "backtrace");
        // The fast walk starts in the capture function itself.
        assert!(f <= 1, "{f} frames before the caller");
        assert!(
            names(fast[0]).contains("unwind::capture"),
            "{}",
            names(fast[0])
        );
        assert_eq!(fast[f + 1..], slow[s + 1..], "depth {depth}");
        let levels = fast[f..]
            .iter()
            .filter(|&&ip| names(ip).contains("both_at_depth"))
            .count();
        assert_eq!(levels, depth);
    }

    #[test]
    fn agrees_with_backtrace() {
        for depth in [1, 2, 7, 20] {
            check_against_backtrace(depth);
        }
    }

    #[inline(never)]
    fn public_capture_at_depth(depth: usize) -> super::super::RawStack {
        if depth > 1 {
            std::hint::black_box(public_capture_at_depth(depth - 1))
        } else {
            super::super::capture()
        }
    }

    #[test]
    fn the_fast_path_is_used() {
        let stack = public_capture_at_depth(3);
        assert!(
            names(stack[0]).contains("unwind::capture"),
            "{:#?}",
            stack.iter().map(|&ip| names(ip)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn captures_on_several_threads_at_once() {
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for thread in 0..4 {
                let start = &start;
                s.spawn(move || {
                    let depth = 3 + 5 * thread;
                    start.wait();
                    let mut first = None;
                    for _ in 0..2_000 {
                        let stack = public_capture_at_depth(depth);
                        let first = first.get_or_insert_with(|| stack.clone());
                        assert_eq!(&stack, first);
                    }
                    let first = first.unwrap();
                    assert!(names(first[0]).contains("unwind::capture"));
                    check_against_backtrace(depth);
                });
            }
        });
    }

    #[test]
    fn walks_through_a_shared_library() {
        // qsort (libc) calls back into this file: the stack has libc's
        // frames in the middle.
        static STACKS: std::sync::Mutex<Option<(Vec<usize>, Vec<usize>)>> =
            std::sync::Mutex::new(None);
        extern "C" fn compare(a: *const c_void, b: *const c_void) -> c_int {
            let mut stacks = STACKS.lock().unwrap();
            if stacks.is_none() {
                *stacks = Some(both_at_depth(1));
            }
            // SAFETY: qsort passes pointers to two elements of the array.
            unsafe { (*a.cast::<u32>()).cmp(&*b.cast::<u32>()) as c_int }
        }
        let mut items = [3u32, 1, 2];
        // SAFETY: `items` is 3 elements of 4 bytes, and `compare` compares
        // two of them.
        unsafe { libc::qsort(items.as_mut_ptr().cast(), 3, 4, Some(compare)) };
        let (fast, slow) = STACKS.lock().unwrap().take().unwrap();
        let f = innermost(&fast, "fast");
        let s = innermost(&slow, "backtrace");
        assert_eq!(fast[f + 1..], slow[s + 1..]);
        let all: Vec<_> = fast.iter().map(|&ip| names(ip)).collect();
        assert!(all.iter().any(|n| n.contains("qsort")), "{all:#?}");
    }

    #[test]
    fn falls_back_off_the_thread_stack() {
        std::thread::spawn(|| {
            // As if this thread ran on a stack pthread does not know.
            STACK.with(|s| s.set((1, 0)));
            assert_eq!(capture(&mut [0; 8]), None);
            let stack = public_capture_at_depth(3);
            assert!(!names(stack[0]).contains("unwind::capture"));
            let all: Vec<_> = stack.iter().map(|&ip| names(ip)).collect();
            let levels = all.iter().filter(|n| n.contains("public_capture_at_depth"));
            assert_eq!(levels.count(), 3, "{all:#?}");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn decodes_the_eh_frame_pointer() {
        // pcrel | sdata4: the usual.
        let hdr = [1, 0x1b, 0x03, 0x3b, 0xf0, 0xff, 0xff, 0xff];
        assert_eq!(eh_frame_ptr(&hdr, 0x1000, 0), Some(0x1004 - 0x10));
        // datarel | udata4.
        let hdr = [1, 0x33, 0x03, 0x3b, 0x20, 0, 0, 0];
        assert_eq!(eh_frame_ptr(&hdr, 0x1000, 0), Some(0x1020));
        // absptr: a link-time address, relocated by the base.
        let hdr = [1, 0x00, 0x03, 0x3b, 0x00, 0x20, 0, 0, 0, 0, 0, 0];
        assert_eq!(eh_frame_ptr(&hdr, 0x1000, 0x7000_0000), Some(0x7000_2000));
        // Omitted, another version, truncated, an encoding not handled.
        assert_eq!(eh_frame_ptr(&[1, 0xff, 0, 0, 0, 0, 0, 0], 0x1000, 0), None);
        assert_eq!(eh_frame_ptr(&[2, 0x1b, 0, 0, 0, 0, 0, 0], 0x1000, 0), None);
        assert_eq!(eh_frame_ptr(&[1, 0x1b, 0, 0, 0, 0], 0x1000, 0), None);
        assert_eq!(eh_frame_ptr(&[1, 0x5b, 0, 0, 0, 0, 0, 0], 0x1000, 0), None);
    }

    #[test]
    fn knows_this_code_and_nothing_else() {
        let process = PROCESS.get_or_init(Process::load);
        assert!(process.covers(capture as fn(&mut [usize]) -> Option<usize> as usize as u64));
        assert!(
            process.covers(libc::getpid as unsafe extern "C" fn() -> libc::pid_t as usize as u64),
            "libc"
        );
        assert!(!process.covers(0));
        assert!(!process.covers(1 << 47));
        let local = 0u8;
        assert!(!process.covers(&local as *const u8 as u64), "the stack");
    }
}
