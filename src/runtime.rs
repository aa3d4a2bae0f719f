//! Process set-up shared by every entry point (the binary and the benchmark examples), so a
//! benchmark measures what `streamgate run` runs: the malloc setting first, then the async
//! runtime.

/// glibc gives each thread that allocates its own malloc arena (up to 8 per core), each
/// keeping its freed memory: one arena trades a little peak throughput for memory, the right
/// trade on a gateway (measured with `streamgate bench`: peak 28 MiB instead of 44 MiB, its
/// overload phase ~20 % slower; at gateway rates no CPU difference). Call it first in `main`,
/// before any thread starts ([`start`] does). `MALLOC_ARENA_MAX` in the environment (glibc reads it itself) takes precedence.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// The async runtime of `streamgate run` and `streamgate bench`: multi-threaded (one worker
/// per core), timers and I/O.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("streamgate")
        .build()
}

/// For a benchmark's `main`: [`one_malloc_arena`], then [`build`]. Panics if the runtime
/// cannot start (nothing to measure then).
pub fn start() -> tokio::runtime::Runtime {
    one_malloc_arena();
    build().expect("cannot start the async runtime")
}
