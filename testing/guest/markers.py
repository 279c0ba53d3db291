"""Marker pages: the host's independent copy of the page format that
testing/guest-agent plants in guest RAM (see its crate docs for the layout).

The host regenerates every page from (seed, index) rather than trusting the
agent's memory, so a planted page that was corrupted before pmem read it
fails the check as surely as a pmem bug does.
"""

import hashlib
import struct

PAGE_SIZE = 4096
MAGIC = b"PMEMMARK"
HEADER_LEN = 32
BLOCKS_PER_PAGE = (PAGE_SIZE - HEADER_LEN) // 32  # 127


def page(seed, index, count):
    """The exact 4096 bytes the agent writes for page `index`."""
    header = MAGIC + struct.pack("<QQQ", seed, index, count)
    prefix = struct.pack("<QQ", seed, index)
    body = b"".join(
        hashlib.sha256(prefix + struct.pack("<Q", j)).digest()
        for j in range(BLOCKS_PER_PAGE)
    )
    return header + body


class MarkerList:
    """A marker list written by the agent: seed, and each page's frame."""

    def __init__(self, seed, pages, frames, source="?"):
        self.seed = seed
        self.pages = pages
        self.frames = frames  # frames[index] = physical frame number
        self.source = source

    @classmethod
    def load(cls, path):
        seed = pages = None
        frames = {}
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                key, value = line.split()
                if key == "seed":
                    seed = int(value, 0)
                elif key == "pages":
                    pages = int(value)
                elif key == "page_size":
                    if int(value) != PAGE_SIZE:
                        raise ValueError(f"{path}: page size {value}, expected {PAGE_SIZE}")
                else:
                    frames[int(key)] = int(value, 0)
        if seed is None or pages is None or len(frames) != pages:
            raise ValueError(
                f"{path}: incomplete marker list (seed {seed}, pages {pages}, "
                f"{len(frames)} frames listed)"
            )
        return cls(seed, pages, [frames[i] for i in range(pages)], source=str(path))

    def expected_pages(self):
        """(index, physical address, expected bytes) for every marker."""
        for index, pfn in enumerate(self.frames):
            yield index, pfn * PAGE_SIZE, page(self.seed, index, self.pages)


def check(image, markers, expected=None):
    """Compares every marker page with `image` (an images.Image).

    Returns (checked, matching, first_failures) where first_failures lists up
    to 5 human-readable reasons. `expected` may be a precomputed list of
    (index, address, bytes) to avoid regenerating pages for each image.
    """
    checked = matching = 0
    failures = []
    for index, address, want in expected if expected is not None else markers.expected_pages():
        checked += 1
        got = image.read(address, PAGE_SIZE)
        if got == want:
            matching += 1
        elif len(failures) < 5:
            if got is None:
                why = "address not in the image"
            elif got[:8] == MAGIC:
                seed, idx = struct.unpack_from("<QQ", got, 8)
                why = f"another marker there (seed {seed:#x}, index {idx})"
            else:
                diff = next(i for i in range(PAGE_SIZE) if got[i] != want[i])
                why = f"content differs from byte {diff}"
            failures.append(f"marker {index} at {address:#x}: {why}")
    return checked, matching, failures


if __name__ == "__main__":
    # Self-test value shared with the agent's unit test.
    print(hashlib.sha256(page(0x1234, 7, 16384)).hexdigest())
