//! The dmp reader on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pmem_formats::dmp::DmpReader;

fuzz_target!(|data: &[u8]| {
    pmem_fuzz::open_and_read(data, DmpReader::open);
});
