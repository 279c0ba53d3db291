//! The AFF4 reader (ZIP64 container, Turtle metadata, map, bevies) on
//! arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_formats::aff4::Aff4Reader;

fuzz_target!(|data: &[u8]| {
    pmem_fuzz::open_and_read(data, Aff4Reader::open);
});
