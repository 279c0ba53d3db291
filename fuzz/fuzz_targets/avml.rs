//! The avml reader on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_formats::avml::AvmlReader;

fuzz_target!(|data: &[u8]| {
    pmem_fuzz::open_and_read(data, AvmlReader::open);
});
