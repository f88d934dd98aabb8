//! The one module that touches DPDK: safe, owned types over `dpdk-sys`.
//!
//! - [`Eal`]: EAL initialisation (once per process; argv kept alive).
//! - [`Mempool`]: a packet-buffer pool, with in-use accounting for the
//!   shutdown leak check.
//! - [`Port`]: configure/start/stop/stats/link of one ethdev, handing out one
//!   [`RxQueue`] and one [`TxQueue`] per queue index (each owned by exactly one
//!   worker, so they are `Send` but not `Clone`).
//! - [`Mbuf`] and [`Burst`]: owned packet buffers. Dropping one returns it to
//!   its pool; neither is `Clone`. (Only what the packet path uses today is
//!   wrapped; the scheduler will add push/retain to `Burst`.)
//! - [`launch`]/[`wait`]: run a closure on a DPDK worker lcore.
//!
//! Everything else in the workspace is safe Rust.
//!
//! DPDK facts learned the hard way (also in ARCHITECTURE.md):
//! - EAL keeps pointers into argv after `rte_eal_init` returns, so the argv
//!   strings live inside [`Eal`] for the life of the process.
//! - `rte_eal_init` can succeed only once per process, even after
//!   `rte_eal_cleanup`.
//! - The rx/tx burst functions are `static inline`; the C shim exports them.
//!   They are called once per burst, never per packet.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use dpdk_sys as sys;
use thiserror::Error;

/// The largest burst a [`Burst`] can hold. Config validation enforces it.
pub const MAX_BURST: usize = 256;

/// A DPDK call failed. The message names the call and DPDK's reason.
#[derive(Debug, Error)]
pub enum DpdkError {
    #[error("{call} failed: {reason} (code {code})")]
    Call {
        call: &'static str,
        code: i32,
        reason: String,
    },
    #[error("EAL is already initialised in this process (DPDK allows it once)")]
    EalTwice,
    #[error("argument contains a NUL byte: {0:?}")]
    NulInArg(String),
    #[error("no DPDK port named {name:?}; probed ports: {available}")]
    NoSuchPort { name: String, available: String },
    #[error("port {port}: {what}")]
    Port { port: String, what: String },
}

fn strerror(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local,
    // NUL-terminated string for any errno value.
    unsafe { CStr::from_ptr(sys::rte_strerror(code.abs())) }
        .to_string_lossy()
        .into_owned()
}

fn last_rte_errno() -> i32 {
    // SAFETY: reads the calling thread's rte_errno; no preconditions.
    unsafe { sys::sluice_errno() }
}

/// Turns a DPDK return code (negative errno on failure) into a Result.
fn check(call: &'static str, ret: c_int) -> Result<c_int, DpdkError> {
    if ret < 0 {
        Err(DpdkError::Call {
            call,
            code: ret,
            reason: strerror(ret),
        })
    } else {
        Ok(ret)
    }
}

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// The initialised Environment Abstraction Layer. Dropping it calls
/// `rte_eal_cleanup`; drop it last, after every port and pool.
pub struct Eal {
    // EAL keeps pointers into argv: these must outlive the process's use of DPDK.
    _args: Vec<CString>,
    _argv: Vec<*mut c_char>,
}

impl Eal {
    /// Initialises EAL with `args` (the first is the program name).
    pub fn init(args: &[String]) -> Result<Eal, DpdkError> {
        if EAL_STARTED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalTwice);
        }
        let cargs = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| DpdkError::NulInArg(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv: Vec<*mut c_char> = cargs.iter().map(|a| a.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        // SAFETY: argv is a NULL-terminated array of valid C strings that we
        // keep alive in the returned Eal; EAL is initialised at most once
        // (guarded by EAL_STARTED).
        let ret = unsafe { sys::rte_eal_init((argv.len() - 1) as c_int, argv.as_mut_ptr()) };
        if ret < 0 {
            let code = last_rte_errno();
            return Err(DpdkError::Call {
                call: "rte_eal_init",
                code,
                reason: strerror(code),
            });
        }
        Ok(Eal {
            _args: cargs,
            _argv: argv,
        })
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: every DPDK object owned by the program has been dropped
        // before Eal (the app owns Eal outermost); cleanup is allowed once.
        unsafe {
            sys::rte_eal_cleanup();
        }
    }
}

fn port_names() -> Vec<String> {
    let mut names = Vec::new();
    for id in 0..sys::RTE_MAX_ETHPORTS as u16 {
        // SAFETY: any port id is accepted; invalid ones return 0.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            continue;
        }
        let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: buf has RTE_ETH_NAME_MAX_LEN bytes, as the API requires.
        if unsafe { sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) } == 0 {
            // SAFETY: the API wrote a NUL-terminated name into buf.
            names.push(
                unsafe { CStr::from_ptr(buf.as_ptr()) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    names
}

/// The TSC frequency in Hz.
pub fn tsc_hz() -> u64 {
    // SAFETY: plain getter, valid after EAL init (returns 0 before).
    unsafe { sys::rte_get_tsc_hz() }
}

/// mimalloc's `mi_option_purge_delay`: its index in `mi_option_e`
/// (`mimalloc.h`), the same in the v2 and v3 headers that
/// `libmimalloc-sys` 0.1.49 bundles (it builds v3). `libmimalloc-sys` names
/// only some options, so the index is restated here, and the crate's
/// version is pinned exactly (`dataplane/Cargo.toml`): a release that
/// reordered the enum must not silently set another option.
const MI_OPTION_PURGE_DELAY: c_int = 15;

/// Tells mimalloc (the binaries' global allocator) never to hand freed
/// memory back to the kernel. Call first thing in `main`, before the
/// threads start.
///
/// Every purge is an `madvise` that unmaps pages of the process, and the
/// kernel then flushes the TLB of every CPU running the process, with an
/// inter-processor interrupt: the worker cores too, which do not allocate
/// but share the address space with the control thread, whose 10k-row
/// batches free megabytes each. `sluice-perf updates` counted about 1,500
/// TLB-shootdown interrupts on the worker's CPU per run (up to 130 a second
/// during storms, /proc/interrupts) with mimalloc's default purge delay
/// (v3: 1 s) and 3 to 5 with none. The price: the process keeps its peak
/// heap (the control thread's largest batch) resident. Being set here, the
/// option ignores `MIMALLOC_PURGE_DELAY` from the environment.
pub fn allocator_keep_freed_memory() {
    // SAFETY: mi_option_set stores an integer in mimalloc's option table
    // (an atomic store); any option index and value is accepted, and
    // mimalloc reads the value at its next purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Asks the CPU to bring the cache line holding `r` into L1 (a hint: it
/// never faults, blocks or changes memory). The worker issues these for a
/// whole burst before it touches any of the lines, so that their misses
/// overlap instead of being paid one after another.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint on an address taken from a live
    // reference; it cannot fault and does not access memory architecturally.
    unsafe {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((r as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// [`prefetch`] for every cache line `r` spans (a value that straddles a
/// line boundary needs two).
#[inline(always)]
pub fn prefetch_lines<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = r as *const T as usize;
        let end = start + std::mem::size_of::<T>().max(1) - 1;
        let mut line = start & !63;
        while line <= end {
            // SAFETY: PREFETCHT0 is a hint; `line` lies within the cache
            // lines `r` occupies, and a prefetch never faults anyway.
            unsafe {
                use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
            }
            line += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// A vector of `n` copies of `value` whose memory the kernel is asked to
/// back with transparent huge pages (`madvise(MADV_HUGEPAGE)`, before the
/// first touch). For the big random-access tables (flows, bindings): with
/// 4 KiB pages nearly every lookup in a table of a gigabyte is also a TLB
/// miss, whose page walk misses the caches too. THP here is in `madvise`
/// mode, so without the advice there are none. If the advice fails (THP
/// off), the vector is the same, on small pages.
pub fn huge_vec<T: Clone>(n: usize, value: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<T>();
    const HUGE: usize = 2 << 20;
    if bytes >= HUGE {
        let start = v.as_ptr() as usize;
        // Whole 2 MiB pages inside the allocation only.
        let lo = start.next_multiple_of(HUGE);
        let hi = (start + bytes) & !(HUGE - 1);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the allocation `v` owns and nothing
            // has touched yet; MADV_HUGEPAGE only changes how the kernel backs
            // those pages, never their contents or validity.
            let rc = unsafe { libc::madvise(lo as *mut c_void, hi - lo, libc::MADV_HUGEPAGE) };
            if rc != 0 {
                log::debug!("madvise(MADV_HUGEPAGE) failed; using small pages");
            }
        }
    }
    v.resize(n, value);
    v
}

/// Reads the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: reads the TSC; no memory is touched.
    unsafe { sys::sluice_rdtsc() }
}

/// A packet-buffer pool. `Send + Sync`: DPDK mempools are thread-safe.
pub struct Mempool {
    ptr: NonNull<sys::rte_mempool>,
    size: u32,
}

// SAFETY: rte_mempool get/put are multi-producer/multi-consumer safe, and
// the read-only accessors used here have no thread affinity.
unsafe impl Send for Mempool {}
// SAFETY: as above; &Mempool exposes only thread-safe operations.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pktmbuf pool of `n` buffers with a per-lcore cache.
    pub fn new(name: &str, n: u32, cache: u32, data_room: u16) -> Result<Mempool, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::NulInArg(name.to_owned()))?;
        // SAFETY: cname is a valid C string; the other arguments are plain
        // values. SOCKET_ID_ANY is -1.
        let ptr =
            unsafe { sys::rte_pktmbuf_pool_create(cname.as_ptr(), n, cache, 0, data_room, -1) };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Mempool { ptr, size: n }),
            None => {
                let code = last_rte_errno();
                Err(DpdkError::Call {
                    call: "rte_pktmbuf_pool_create",
                    code,
                    reason: strerror(code),
                })
            }
        }
    }

    /// Buffers currently out of the pool (held by ports, workers or caches
    /// of other lcores count as available).
    pub fn in_use(&self) -> u32 {
        // SAFETY: ptr is a live mempool for the life of self.
        unsafe { sys::rte_mempool_in_use_count(self.ptr.as_ptr()) }
    }

    /// Total buffers in the pool.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A new single-segment mbuf holding a copy of `bytes`, for frames the
    /// control thread sends (not the fast path: no per-lcore cache off an
    /// lcore). `None` if the pool is empty or the bytes do not fit.
    pub fn frame(&self, bytes: &[u8]) -> Option<Mbuf> {
        let len = u16::try_from(bytes.len()).ok()?;
        // SAFETY: the pool is live; `bytes` is valid for `len` bytes and
        // only read; the shim returns an mbuf we then own, or NULL.
        let m = unsafe {
            sys::sluice_pktmbuf_from_bytes(self.ptr.as_ptr(), bytes.as_ptr().cast(), len)
        };
        NonNull::new(m).map(Mbuf)
    }
}

impl Drop for Mempool {
    fn drop(&mut self) {
        // SAFETY: the pool is dropped after the ports using it are closed
        // (App drops ports first); freeing a pool with buffers out is
        // still memory-safe for DPDK, which only unmaps it.
        unsafe { sys::rte_mempool_free(self.ptr.as_ptr()) }
    }
}

/// One owned packet buffer. Dropping it returns it (and any chained
/// segments) to its pool. Never `Clone`.
#[repr(transparent)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an Mbuf is uniquely owned; moving it between lcores is how DPDK
// pipelines work, and freeing from any lcore is allowed.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// The packet bytes of the first segment, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: we own the mbuf; buf_addr + data_off .. + data_len lies
        // inside the buffer DPDK allocated, and &mut self guarantees no alias.
        unsafe {
            let m = self.0.as_ptr();
            let base = ((*m).buf_addr as *mut u8).add((*m).data_off as usize);
            std::slice::from_raw_parts_mut(base, (*m).data_len as usize)
        }
    }

    /// The packet bytes of the first segment.
    #[inline]
    pub fn data(&self) -> &[u8] {
        // SAFETY: as data_mut; &self only reads.
        unsafe {
            let m = self.0.as_ptr();
            let base = ((*m).buf_addr as *const u8).add((*m).data_off as usize);
            std::slice::from_raw_parts(base, (*m).data_len as usize)
        }
    }

    /// A copy of the whole packet in a new mbuf from `pool` (`None` when
    /// the pool is empty): what a worker hands the control thread when the
    /// original must still be forwarded.
    #[inline]
    pub fn copy_into(&self, pool: &Mempool) -> Option<Mbuf> {
        // SAFETY: both live; rte_pktmbuf_copy only reads `self` and
        // returns a new mbuf we own, or NULL.
        let m = unsafe { sys::sluice_pktmbuf_clone_bytes(self.0.as_ptr(), pool.ptr.as_ptr()) };
        NonNull::new(m).map(Mbuf)
    }

    /// Total packet length over all segments.
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        // SAFETY: reading a field of an mbuf we own.
        unsafe { (*self.0.as_ptr()).pkt_len }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own this mbuf and nobody else refers to it.
        unsafe { sys::sluice_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Up to [`MAX_BURST`] owned mbufs, filled by rx and emptied by tx. The
/// array is reused burst after burst, so the fast path never allocates.
pub struct Burst {
    bufs: [MaybeUninit<Mbuf>; MAX_BURST],
    len: usize,
}

impl Default for Burst {
    fn default() -> Self {
        Burst::new()
    }
}

impl Burst {
    pub fn new() -> Burst {
        Burst {
            bufs: [const { MaybeUninit::uninit() }; MAX_BURST],
            len: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mbufs held, mutable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        // SAFETY: the first len entries are initialised Mbufs.
        unsafe { std::slice::from_raw_parts_mut(self.bufs.as_mut_ptr() as *mut Mbuf, self.len) }
    }

    /// The mbufs held.
    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: the first len entries are initialised Mbufs.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr() as *const Mbuf, self.len) }
    }

    /// Moves every mbuf out, in order, into `f`; the burst is empty after.
    #[inline]
    pub fn drain(&mut self, mut f: impl FnMut(usize, Mbuf)) {
        let n = self.len;
        // Set first: if `f` panicked, the rest would leak, never double-free.
        self.len = 0;
        for i in 0..n {
            // SAFETY: entries 0..n were initialised Mbufs; each is read
            // out exactly once and len is already 0.
            let m = unsafe { self.bufs[i].assume_init_read() };
            f(i, m);
        }
    }

    /// Keeps the mbufs at the positions `keep` accepts, in order, and frees
    /// the others.
    pub fn retain(&mut self, mut keep: impl FnMut(usize) -> bool) {
        let n = self.len;
        self.len = 0;
        let mut kept = 0;
        for i in 0..n {
            // SAFETY: entries 0..n were initialised Mbufs; each is read out
            // exactly once (len is 0 meanwhile), then written back below
            // `i` or dropped (freed).
            let m = unsafe { self.bufs[i].assume_init_read() };
            if keep(i) {
                self.bufs[kept].write(m);
                kept += 1;
            } else {
                drop(m);
            }
        }
        self.len = kept;
    }

    /// Moves the mbufs at the positions `take` accepts into `sink`, in
    /// order, and keeps the others (in order).
    pub fn extract(
        &mut self,
        mut take: impl FnMut(usize) -> bool,
        mut sink: impl FnMut(usize, Mbuf),
    ) {
        let n = self.len;
        self.len = 0;
        let mut kept = 0;
        for i in 0..n {
            // SAFETY: as in `retain`: each entry is read out exactly once,
            // then written back below `i` or moved into `sink`.
            let m = unsafe { self.bufs[i].assume_init_read() };
            if take(i) {
                sink(i, m);
            } else {
                self.bufs[kept].write(m);
                kept += 1;
            }
        }
        self.len = kept;
    }

    /// Appends `m`, or hands it back when the burst is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        match self.bufs.get_mut(self.len) {
            Some(slot) => {
                slot.write(m);
                self.len += 1;
                Ok(())
            }
            None => Err(m),
        }
    }

    /// Frees every mbuf held.
    pub fn clear(&mut self) {
        if self.len == 0 {
            return;
        }
        let n = self.len;
        self.len = 0;
        // SAFETY: the first n entries are initialised Mbufs that we own;
        // len is already 0 so they are never used again.
        unsafe {
            sys::rte_pktmbuf_free_bulk(
                self.bufs.as_mut_ptr() as *mut *mut sys::rte_mbuf,
                n as c_uint,
            )
        }
    }

    fn raw(&mut self) -> *mut *mut sys::rte_mbuf {
        self.bufs.as_mut_ptr() as *mut *mut sys::rte_mbuf
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Link state of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub speed_mbps: u32,
    pub full_duplex: bool,
}

/// Port counters, as the PMD reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    pub rx_nombuf: u64,
}

/// How a port is configured.
#[derive(Debug, Clone, Copy)]
pub struct PortSetup {
    pub queues: u16,
    pub rx_desc: u16,
    pub tx_desc: u16,
}

// Bit values of RTE_ETH_RSS_* (function-like macros bindgen cannot expand).
const RSS_IPV4: u64 = 1 << 2;
const RSS_FRAG_IPV4: u64 = 1 << 3;
const RSS_IPV4_TCP: u64 = 1 << 4;
const RSS_IPV4_UDP: u64 = 1 << 5;
const RSS_IPV4_OTHER: u64 = 1 << 7;
const RSS_IPV6: u64 = 1 << 8;
const RSS_FRAG_IPV6: u64 = 1 << 9;
const RSS_IPV6_TCP: u64 = 1 << 10;
const RSS_IPV6_UDP: u64 = 1 << 11;
const RSS_IPV6_OTHER: u64 = 1 << 13;
const RSS_WANTED: u64 = RSS_IPV4
    | RSS_FRAG_IPV4
    | RSS_IPV4_TCP
    | RSS_IPV4_UDP
    | RSS_IPV4_OTHER
    | RSS_IPV6
    | RSS_FRAG_IPV6
    | RSS_IPV6_TCP
    | RSS_IPV6_UDP
    | RSS_IPV6_OTHER;

/// A Toeplitz key made of one repeated 16-bit pattern hashes (a,b) and (b,a)
/// alike, so both directions of a flow reach the same queue (and worker).
const SYMMETRIC_RSS_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
    0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a, 0x6d, 0x5a,
];

/// One ethdev port. Stops and closes the device on Drop.
pub struct Port {
    id: u16,
    name: String,
    started: bool,
}

impl Port {
    /// Finds a probed port by its device name (`net_tap0`, `0000:03:00.0`).
    pub fn by_name(name: &str) -> Result<Port, DpdkError> {
        let cname = CString::new(name).map_err(|_| DpdkError::NulInArg(name.to_owned()))?;
        let mut id: u16 = 0;
        // SAFETY: cname is a valid C string, id a valid out-pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if ret != 0 {
            return Err(DpdkError::NoSuchPort {
                name: name.to_owned(),
                available: format!("{:?}", port_names()),
            });
        }
        Ok(Port {
            id,
            name: name.to_owned(),
            started: false,
        })
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn err(&self, what: String) -> DpdkError {
        DpdkError::Port {
            port: self.name.clone(),
            what,
        }
    }

    /// Configures `setup.queues` rx and tx queue pairs on `pool`, with
    /// symmetric RSS when there is more than one queue, and enables
    /// promiscuous mode (a bump in the wire must see every frame).
    pub fn configure(&mut self, setup: PortSetup, pool: &Mempool) -> Result<(), DpdkError> {
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: info is a valid out-struct for this port id.
        check("rte_eth_dev_info_get", unsafe {
            sys::rte_eth_dev_info_get(self.id, &mut info)
        })?;
        if setup.queues > info.max_rx_queues || setup.queues > info.max_tx_queues {
            return Err(self.err(format!(
                "{} workers need {} rx and tx queues, but the device offers {} rx and {} tx",
                setup.queues, setup.queues, info.max_rx_queues, info.max_tx_queues
            )));
        }
        let mut conf = sys::rte_eth_conf::default();
        // DPDK copies the key during configure; it only has to live until then.
        let mut key = SYMMETRIC_RSS_KEY;
        if setup.queues > 1 {
            let hf = RSS_WANTED & info.flow_type_rss_offloads;
            if hf == 0 {
                return Err(self.err(
                    "several workers need RSS, and the device hashes no IP flow types".into(),
                ));
            }
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len = 40;
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
        }
        // SAFETY: conf is a fully initialised rte_eth_conf.
        check("rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(self.id, setup.queues, setup.queues, &conf)
        })?;
        let mut rx_desc = setup.rx_desc;
        let mut tx_desc = setup.tx_desc;
        // SAFETY: valid port id and out-pointers.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(self.id, &mut rx_desc, &mut tx_desc)
        })?;
        // SAFETY: valid port id.
        let socket = unsafe { sys::rte_eth_dev_socket_id(self.id) };
        let socket = if socket < 0 { 0 } else { socket as c_uint };
        for q in 0..setup.queues {
            // SAFETY: the queue id is below the configured count; a null
            // rxconf/txconf selects the driver defaults; pool outlives the port.
            check("rte_eth_rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(
                    self.id,
                    q,
                    rx_desc,
                    socket,
                    std::ptr::null(),
                    pool.ptr.as_ptr(),
                )
            })?;
            // SAFETY: as above.
            check("rte_eth_tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(self.id, q, tx_desc, socket, std::ptr::null())
            })?;
        }
        // Some PMDs (net_null, net_pcap) do not support promiscuous mode and
        // need none: they already deliver everything. Not an error.
        // SAFETY: valid port id.
        let _ = unsafe { sys::rte_eth_promiscuous_enable(self.id) };
        Ok(())
    }

    /// Starts the port.
    pub fn start(&mut self) -> Result<(), DpdkError> {
        // SAFETY: the port was configured.
        check("rte_eth_dev_start", unsafe {
            sys::rte_eth_dev_start(self.id)
        })?;
        self.started = true;
        Ok(())
    }

    /// Stops the port (idempotent). Workers must no longer poll it.
    pub fn stop(&mut self) {
        if self.started {
            // SAFETY: valid started port; no lcore polls it any more (the
            // caller joined the workers first).
            unsafe {
                sys::rte_eth_dev_stop(self.id);
            }
            self.started = false;
        }
    }

    /// Reads the port counters.
    pub fn stats(&self) -> Result<PortStats, DpdkError> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-struct.
        check("rte_eth_stats_get", unsafe {
            sys::rte_eth_stats_get(self.id, &mut s)
        })?;
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Reads the link state without waiting.
    pub fn link(&self) -> Result<LinkStatus, DpdkError> {
        let mut l = sys::rte_eth_link::default();
        // SAFETY: l is a valid out-struct.
        check("rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.id, &mut l)
        })?;
        Ok(LinkStatus {
            up: l.link_status() == 1,
            speed_mbps: l.link_speed,
            full_duplex: l.link_duplex() == 1,
        })
    }

    /// The receive side of queue `q`. Call once per queue index and hand
    /// the result to exactly one worker.
    pub fn rx_queue(&self, q: u16) -> RxQueue {
        RxQueue {
            port: self.id,
            queue: q,
        }
    }

    /// The transmit side of queue `q`; see [`Port::rx_queue`].
    pub fn tx_queue(&self, q: u16) -> TxQueue {
        TxQueue {
            port: self.id,
            queue: q,
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        self.stop();
        // SAFETY: the port is stopped and no queue handle is in use (workers
        // have been joined before ports are dropped).
        unsafe {
            sys::rte_eth_dev_close(self.id);
        }
    }
}

/// The receive side of one port queue, owned by one worker.
pub struct RxQueue {
    port: u16,
    queue: u16,
}

/// The transmit side of one port queue, owned by one worker.
pub struct TxQueue {
    port: u16,
    queue: u16,
}

impl RxQueue {
    /// Receives up to `max` packets into an empty `burst`; returns how many.
    #[inline]
    pub fn rx(&mut self, burst: &mut Burst, max: usize) -> usize {
        debug_assert!(burst.is_empty());
        let max = max.min(MAX_BURST - burst.len);
        // SAFETY: the burst has room for max pointers past len; this queue
        // is polled only by the worker that owns self (&mut).
        let n = unsafe {
            sys::sluice_rx_burst(
                self.port,
                self.queue,
                burst.raw().add(burst.len),
                max as u16,
            )
        };
        burst.len += n as usize;
        n as usize
    }
}

impl TxQueue {
    /// Transmits the whole burst. Packets the PMD did not take are freed
    /// and reported; the burst is empty afterwards.
    #[inline]
    pub fn tx(&mut self, burst: &mut Burst) -> TxOutcome {
        let n = burst.len;
        let mut out = TxOutcome::default();
        if n == 0 {
            return out;
        }
        // SAFETY: the first n entries are owned mbufs; the PMD takes
        // ownership of the first `sent`. This queue is used only by the
        // worker that owns self (&mut).
        let sent =
            unsafe { sys::sluice_tx_burst(self.port, self.queue, burst.raw(), n as u16) } as usize;
        out.sent = sent;
        if sent < n {
            out.dropped = n - sent;
            out.dropped_bytes = burst.as_slice()[sent..]
                .iter()
                .map(|m| m.pkt_len() as u64)
                .sum();
            // SAFETY: entries sent..n are still ours; free them and forget all.
            unsafe { sys::rte_pktmbuf_free_bulk(burst.raw().add(sent), (n - sent) as c_uint) };
        }
        burst.len = 0;
        out
    }
}

/// What a [`TxQueue::tx`] did with a burst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxOutcome {
    pub sent: usize,
    /// Refused by the PMD (ring full), freed.
    pub dropped: usize,
    pub dropped_bytes: u64,
}

type WorkerFn = Box<dyn FnOnce() -> i32 + Send + 'static>;

unsafe extern "C" fn trampoline(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Box<WorkerFn> leaked by `launch`, consumed once here.
    let f: Box<WorkerFn> = unsafe { Box::from_raw(arg as *mut WorkerFn) };
    // A panic must not unwind into C.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(-1)
}

/// Runs `f` on worker lcore `lcore` (which must be an idle EAL worker).
pub fn launch(lcore: u32, f: impl FnOnce() -> i32 + Send + 'static) -> Result<(), DpdkError> {
    let boxed: Box<WorkerFn> = Box::new(Box::new(f));
    let arg = Box::into_raw(boxed) as *mut c_void;
    // SAFETY: trampoline consumes arg exactly once when it runs; if the
    // launch fails, it never runs and we reclaim arg below.
    let ret = unsafe { sys::rte_eal_remote_launch(Some(trampoline), arg, lcore) };
    if ret != 0 {
        // SAFETY: the launch failed, so arg was not handed to the lcore.
        drop(unsafe { Box::from_raw(arg as *mut WorkerFn) });
        return check("rte_eal_remote_launch", ret.min(-1)).map(|_| ());
    }
    Ok(())
}

/// Waits for worker lcore `lcore` to finish; returns its closure's value.
pub fn wait(lcore: u32) -> i32 {
    // SAFETY: waiting on any lcore id is allowed; idle ones return at once.
    unsafe { sys::rte_eal_wait_lcore(lcore) }
}

/// Worker lcore ids known to EAL (the main lcore excluded).
pub fn worker_lcores() -> Vec<u32> {
    let mut v = Vec::new();
    // SAFETY: plain iteration over EAL's lcore table; -1 starts it.
    let mut i = unsafe { sys::rte_get_next_lcore(u32::MAX, 1, 0) };
    while i < sys::RTE_MAX_LCORE {
        v.push(i);
        // SAFETY: as above.
        i = unsafe { sys::rte_get_next_lcore(i, 1, 0) };
    }
    v
}
