//! Hands freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory freed by one thread's arena for later use by that arena,
//! and returns to the system only what lies at the top of the main heap. An operator's work
//! comes in bursts on changing threads (a cold start validates thousands of credentials,
//! then all is quiet), so without help its resident size stays at the high-water mark of
//! the burst plus the fragments between live objects: measured at 10,000 credentials, 79
//! MiB resident for 37 MiB of live heap. `malloc_trim` walks every arena and releases
//! whole free pages (glibc 2.8 and later), which brought the same run to 61.5 MiB
//! (docs/performance.md).
//!
//! One thread per process calls it every [`TRIM_EVERY`]; each call takes the arenas' locks
//! briefly and costs well under a millisecond at this heap size. Other C libraries (musl)
//! return memory themselves: there this does nothing.

use std::time::Duration;

/// How often freed memory is handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Starts the trimming thread, once per process however often it is called.
pub fn start_trimming() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("memory-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    trim();
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "could not start the memory trimming thread");
        }
    });
}

/// Releases free heap pages to the system; returns whether any were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    unsafe extern "C" {
        /// glibc, malloc.h: `int malloc_trim(size_t pad)`; 1 if memory was released.
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena); a
    // `pad` of 0 keeps no extra slack at the top of the heap.
    unsafe { malloc_trim(0) == 1 }
}

/// Other C libraries return freed memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}
