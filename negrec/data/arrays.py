"""Array helpers for logs of tens of millions of rows: lean in memory (no full-size temporaries
where a chunked pass does) and free of Python loops per row or per user."""
from __future__ import annotations

import numpy as np

CHUNK = 1 << 20


_libc = None


def release_memory() -> None:
    """Hand freed memory back to the OS between the stages of a large preparation. Arrow's
    allocator and glibc's heap both keep freed blocks mapped (glibc raises its mmap threshold to
    32 MiB after the first large free, so the chunk-sized temporaries below all land on the heap);
    without this, memory freed by one stage still counts as resident while the next one runs."""
    global _libc
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # noqa: BLE001 - best effort
        pass
    if _libc is None:
        try:
            import ctypes

            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


def chunks(n: int, size: int = CHUNK):
    for a in range(0, n, size):
        yield a, min(a + size, n)


def narrow_int(values: np.ndarray) -> np.ndarray:
    """int32 when every value fits, else int64 (no copy when the dtype is already right)."""
    values = np.asarray(values)
    if values.dtype.kind not in "iu":
        values = values.astype(np.int64)
    if len(values) and (values.min() < np.iinfo(np.int32).min or values.max() > np.iinfo(np.int32).max):
        return values.astype(np.int64, copy=False)
    return values.astype(np.int32, copy=False)


def bits(n: int) -> int:
    """Bits needed to hold 0..n."""
    return max(int(n).bit_length(), 1)


def run_starts(values: np.ndarray) -> np.ndarray:
    """Start offset of every run of equal values (a sorted array)."""
    if len(values) == 0:
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def rank_within(groups: np.ndarray, reverse: bool = False) -> np.ndarray:
    """0-based position of each element within its run of equal (sorted) group ids."""
    starts = run_starts(groups)
    lengths = np.diff(np.r_[starts, len(groups)])
    r = np.arange(len(groups)) - np.repeat(starts, lengths)
    return (np.repeat(lengths, lengths) - 1 - r) if reverse else r


def expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of the ranges [starts[r], starts[r] + lengths[r]) (int64)."""
    lengths = np.maximum(np.asarray(lengths, np.int64), 0)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    return np.repeat(np.asarray(starts, np.int64) - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)


def seek(ts: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each query r, the first index i in [lo[r], hi[r]) with ts[i] >= t[r] (hi[r] if none).
    `ts` is sorted within every [lo, hi) segment: a vectorised binary search over all queries at once
    (what a searchsorted on a (user, ts) composite key gives, without building that key)."""
    lo = np.asarray(lo, np.int64).copy()
    hi = np.asarray(hi, np.int64).copy()
    t = np.asarray(t, np.int64)
    if len(lo) == 0:
        return lo
    steps = bits(int((hi - lo).max()) + 1)
    for _ in range(steps):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) >> 1
        below = np.zeros(len(lo), bool)
        below[active] = ts[mid[active]] < t[active]
        lo = np.where(below, mid + 1, lo)
        hi = np.where(active & ~below, mid, hi)
    return lo


def compact(arr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """arr[keep] written over arr's own buffer, chunk by chunk (no second full-size array).
    Returns a view of the first keep.sum() elements."""
    w = 0
    for a, b in chunks(len(arr)):
        part = arr[a:b][keep[a:b]]
        arr[w:w + len(part)] = part
        w += len(part)
    return arr[:w]


def take(values: np.ndarray, idx: np.ndarray, dtype=None) -> np.ndarray:
    """values[idx] in chunks (only the output is full-size)."""
    out = np.empty(len(idx), dtype or values.dtype)
    for a, b in chunks(len(idx)):
        out[a:b] = values[idx[a:b]]
    return out

