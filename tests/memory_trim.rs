//! `memory::trim` hands freed heap pages back to the system (glibc only). In a test binary
//! of its own: no other test allocates while it measures the process's resident size.

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_memory_goes_back_to_the_system() {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
    // 64 MiB in 4 KiB blocks on another thread's arena; one block in 64 stays live, so the
    // free pages lie between live ones, as after a burst of work.
    let kept = std::thread::spawn(|| {
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        kept
    })
    .join()
    .expect("allocating thread");
    let before = rss_kib();
    assert!(reconnect_operator::memory::trim(), "glibc released nothing");
    let after = rss_kib();
    assert!(
        after + 32 * 1024 < before,
        "trimming released only {} KiB of the 63 MiB freed",
        before.saturating_sub(after)
    );
    assert_eq!(kept.len(), 256);
}
