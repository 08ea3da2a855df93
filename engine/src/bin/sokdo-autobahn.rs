//! Test only: `sokdo` built with the cargo feature `autobahn`, which adds the `/autobahn`
//! echo endpoint the conformance test drives (docs/CONFORMANCE.md). A binary of its own so
//! that the feature build lives beside the default `sokdo` in one target directory, neither
//! rebuilding the other: `cargo build -p sokdo-engine --bin sokdo-autobahn --features autobahn`.
#![forbid(unsafe_code)]

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sokdo_engine::server::main()
}
