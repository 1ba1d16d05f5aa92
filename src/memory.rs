//! Handing memory freed during start-up back to the system, for the long idle that follows.
//!
//! Registration allocates and frees a good deal (TLS handshakes, Rancher's JSON, the AWS
//! SDK's answers), and glibc's allocator keeps freed pages in the process for reuse: an
//! idle drover kept about 0.13 MiB of them resident for the life of the host
//! (BENCHMARKS.md, 2026-12-02). `malloc_trim(0)` returns every whole free page to the
//! kernel; the next allocation simply asks again.

/// Returns the allocator's free pages to the kernel. A no-op where the C library is not
/// glibc (musl returns memory on its own).
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's own free lists,
    // under the allocator's lock; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn releasing_leaves_the_allocator_working() {
        let freed: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        drop(freed);
        super::release_freed();
        let again = vec![7u8; 1 << 20];
        assert_eq!(again.iter().map(|&b| b as usize).sum::<usize>(), 7 << 20);
    }
}
