//! A `.zst` image: the zstd reader indexes the frames (seek table or frame
//! walk), then the image inside is detected and opened through it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Read;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let path = Path::new(pmem_fuzz::PATH);
    let Ok((mut file, _)) = pmem_formats::unwrap_zstd(path, pmem_fuzz::image_file(data)) else {
        return;
    };
    // The decompressed bytes, bounded: a frame may claim any content size.
    let mut head = Vec::new();
    let _ = (&mut file).take(1 << 20).read_to_end(&mut head);
    if let Ok(mut reader) = pmem_formats::open_image_file(path, file, None) {
        pmem_fuzz::exercise(reader.as_mut());
    }
});
