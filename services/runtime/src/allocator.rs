//! The allocator of the fx processes: jemalloc, with the configuration `.cargo/config.toml`
//! builds into it (two arenas, dirty pages returned after a second by a background thread).
//! Each binary installs it with [`crate::jemalloc!`] in its `main.rs`; a library cannot, since
//! tests that count their own allocations install theirs.
//!
//! Why not glibc's malloc: at saturation, malloc and free were about a fifth of fx-krw's CPU
//! samples (`perf`), with glibc consolidating and unlinking chunks; jemalloc so configured took
//! fx-krw's CPU per saga down by 7–30 % and fx-trade's and fx-usd's by 9–25 % in alternated
//! runs, at no more resident memory (docs/benchmarks.md, "The allocator"). Its defaults (four
//! arenas per core, ten seconds before dirty pages go back) held 10–25 MiB more per service.

/// Installs jemalloc as the process's global allocator (see [`crate::allocator`]).
#[macro_export]
macro_rules! jemalloc {
    () => {
        #[global_allocator]
        static JEMALLOC: $crate::Jemalloc = $crate::Jemalloc;
    };
}
