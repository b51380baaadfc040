//! The allocator's settings for this process (uploads' buffers).

/// glibc's malloc, left to its defaults, hands an upload's 128 KiB buffers
/// (an SFTP write and its serialised packet) back to the kernel and takes
/// them again (the heap trimmed past 256 KiB, mmap above 128 KiB): page
/// faults and zeroed pages for every write, about a sixth of the client's
/// CPU on a 256 MiB upload. Keep up to 64 MiB of freed heap and serve up to
/// 4 MiB from it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt only sets allocator parameters (its result, 0 on an
    // unknown parameter, changes nothing); called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}
