//! The peer link's frame decoder (`sokdo_replication::frame::decode`): a stream of
//! length-prefixed rkyv archives from another instance.
//!
//! Properties (in `sokdo_replication::frame::fuzz_decode_all`): decoding never panics;
//! every frame it accepts survives encode → decode unchanged.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sokdo_replication::frame::fuzz_decode_all(data);
});
