//! glibc malloc tuning for a process that runs a sled store: a fixed mmap threshold, set once
//! when a store opens. It lives with the store because sled's IO buffers are what it is for.

/// Allocations at or above this many bytes get their own mapping from glibc's malloc, returned
/// to the system when freed.
const MMAP_THRESHOLD_BYTES: i32 = 256 * 1024;

/// Fixes glibc's mmap threshold (process-wide, once). By default glibc raises the threshold
/// each time a mapped chunk is freed, after which large short-lived buffers (sled's 512 KiB IO
/// buffers, one per log segment) come from a heap that does not shrink: fx-trade's resident
/// memory after 100,000 sagas was 74 MiB with the default and 45 MiB with 256 KiB, at the same
/// throughput (docs/benchmarks.md). Nothing to do with other allocators.
pub(super) fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; M_MMAP_THRESHOLD takes a byte
            // count up to 32 MiB on 64-bit glibc, which this is.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        });
    }
}
