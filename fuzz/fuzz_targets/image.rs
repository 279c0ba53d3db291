//! What `pmem info` / `convert` do with any file: detect the format by its
//! magic and open it with that reader (raw for anything unrecognised).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new(pmem_fuzz::PATH);
    let file = pmem_fuzz::image_file(data);
    if let Ok(mut reader) = pmem_formats::open_image_file(path, file, None) {
        pmem_fuzz::exercise(reader.as_mut());
    }
});
