"""Process-wide memory behaviour of the face worker (shared plumbing of the face backends)."""

from __future__ import annotations


M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


def pin_mmap_threshold(threshold_bytes: int = 256 * 1024) -> bool:
    """Fix glibc's mmap threshold in this (worker) process; return whether it was set.

    By default glibc raises the threshold each time a large mmapped block is freed, up to 32 MiB, so the
    per-request buffers of a face pipeline (decoded images, detector and recogniser inputs: 1 to 10 MB
    each) soon come from the heap instead, and the heap keeps what fragmentation strands: resident memory
    grows in steps over a long run. With a fixed threshold, blocks above it are mapped for each request
    and unmapped when freed."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc
        return False

