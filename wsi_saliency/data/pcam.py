"""The official PatchCamelyon (PCam) HDF5 layout: read a split in shuffled batches, write one.

A PCam folder holds, per split ``train``, ``valid`` and ``test``, two files::

    camelyonpatch_level_2_split_{split}_x.h5   key "x": uint8 (N, 96, 96, 3) RGB patches
    camelyonpatch_level_2_split_{split}_y.h5   key "y": uint8 (N, 1, 1, 1) labels in {0, 1}

A label is 1 when the centre 32x32 pixels of the patch hold tumour. Patches are at 10x,
about :data:`PCAM_MPP` microns per pixel. Labels stored as ``(N,)`` or ``(N, 1)`` are
accepted as well.

:class:`PcamSplit` streams a split in contiguous chunks and never loads the images whole
(the official train x is about 7 GB); :class:`PcamWriter` writes a split chunk by chunk and
renames its files into place only when everything was written.
"""

from __future__ import annotations

import contextlib
import os
import threading
import zlib
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

import h5py
import numpy as np

from wsi_saliency.errors import DataError, InputError

# One lock for every open split: the HDF5 library is not safe to enter from two threads at
# once, even on different files (a training run that read train and valid splits from two
# reader pools died in H5Dread_chunk). Only the reads hold it; inflating runs outside it.
_HDF5_LOCK = threading.Lock()

PATCH_SIZE = 96
"""Side of a PCam patch in pixels."""

PCAM_MPP = 0.972
"""Microns per pixel of PCam patches (Camelyon16 level 0 is 0.243 um/px, PCam is 4x coarser)."""

SPLITS = ("train", "valid", "test")
"""The split names of the official layout, in their usual order."""

PATCH_SHAPE = (PATCH_SIZE, PATCH_SIZE, 3)
PATCH_BYTES = PATCH_SIZE * PATCH_SIZE * 3
DEFAULT_READ_ROWS = 1024
_PARTIAL_SUFFIX = ".partial"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return split


def split_paths(folder: str | os.PathLike[str], split: str) -> tuple[Path, Path]:
    """Paths of the ``(x, y)`` HDF5 files of ``split`` inside ``folder`` (they may not exist)."""
    _check_split(split)
    folder = Path(folder)
    stem = f"camelyonpatch_level_2_split_{split}"
    return folder / f"{stem}_x.h5", folder / f"{stem}_y.h5"


def _expected_files_hint(folder: Path, split: str) -> str:
    x_path, y_path = split_paths(folder, split)
    return f"a PCam folder must contain {x_path.name} and {y_path.name} for split {split!r}"


def has_pcam_split(folder: str | os.PathLike[str], split: str) -> bool:
    """True when both files of ``split`` exist in ``folder`` (their content is not checked)."""
    x_path, y_path = split_paths(folder, split)
    return x_path.is_file() and y_path.is_file()


def _open_h5(path: Path, **kwargs: object) -> h5py.File:
    try:
        return h5py.File(path, "r", **kwargs)
    except OSError as exc:
        reason = str(exc).split("(")[0].strip() or type(exc).__name__
        raise DataError(
            f"cannot read {path} as HDF5 ({reason}); re-download or re-convert it"
        ) from None


def _labels_from_dataset(ds: h5py.Dataset, path: Path, n: int) -> np.ndarray:
    """Return the labels of ``ds`` as uint8 (N,), checking shape, dtype and values."""
    shape = ds.shape
    if len(shape) == 0 or any(s != 1 for s in shape[1:]):
        raise DataError(
            f"{path}: 'y' has shape {shape}; expected (N,), (N, 1) or (N, 1, 1, 1) labels"
        )
    if shape[0] != n:
        raise DataError(
            f"{path}: 'y' holds {shape[0]} labels but the x file holds {n} patches; "
            "the x and y files of a split must have the same length"
        )
    if ds.dtype.kind not in "biuf":
        raise DataError(f"{path}: 'y' has dtype {ds.dtype}; expected uint8 labels 0 or 1")
    raw = np.asarray(ds[()]).reshape(n)
    bad = (raw != 0) & (raw != 1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: label {raw[first].item()!r} at row {first} is not 0 or 1 "
            f"({int(bad.sum())} bad labels); PCam labels must be 0 (normal) or 1 (tumour)"
        )
    return raw.astype(np.uint8)


class PcamSplit:
    """One split of a PCam folder, validated on open, read in batches or by index.

    Opening checks that both files exist, that ``x`` is uint8 ``(N, 96, 96, 3)``, that ``y``
    has N labels and that every label is 0 or 1 (the labels are small and loaded whole; the
    images are never loaded whole). Any problem raises :class:`DataError` naming the file.

    ``read_rows`` is the size of a contiguous read (rounded to whole HDF5 chunks) and
    ``read_workers`` the number of threads :meth:`iter_batches` reads and inflates with.

    Thread safety: one ``PcamSplit`` may be used from one thread at a time (reads also take
    an internal lock, so concurrent calls are serialised rather than corrupted). To read in
    parallel, open one ``PcamSplit`` per thread or process.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        split: str,
        *,
        read_rows: int = DEFAULT_READ_ROWS,
        read_workers: int = 2,
    ) -> None:
        if read_workers < 1:
            raise InputError(f"read_workers must be at least 1, got {read_workers}")
        self.folder = Path(folder)
        self.split = _check_split(split)
        self.x_path, self.y_path = split_paths(self.folder, split)
        for path in (self.x_path, self.y_path):
            if not path.is_file():
                raise DataError(
                    f"{path} is missing; {_expected_files_hint(self.folder, split)} "
                    "(run `wsi-saliency download pcam` or `wsi-saliency convert`)"
                )
        self._read_workers = int(read_workers)
        self._lock = _HDF5_LOCK
        # A chunk cache large enough for one aligned read keeps partial-chunk reads cheap.
        self._file = _open_h5(self.x_path, rdcc_nbytes=64 * 1024 * 1024, rdcc_nslots=10007)
        try:
            self._x = self._validated_x()
            self._labels = self._read_labels()
            self._read_rows = self._aligned_read_rows(read_rows)
            self._raw_chunk_rows = self._raw_chunk_rows_of()
            self._raw_uncompressed = self._x.compression is None
        except BaseException:
            self._file.close()
            raise

    def _validated_x(self) -> h5py.Dataset:
        if "x" not in self._file:
            keys = ", ".join(sorted(self._file.keys())) or "none"
            raise DataError(
                f"{self.x_path} has no dataset 'x' (keys: {keys}); "
                "a PCam x file stores its patches under key 'x'"
            )
        x = self._file["x"]
        if not isinstance(x, h5py.Dataset) or x.ndim != 4 or x.shape[1:] != PATCH_SHAPE:
            shape = getattr(x, "shape", "a group")
            raise DataError(
                f"{self.x_path}: 'x' has shape {shape}; expected (N, 96, 96, 3) RGB patches"
            )
        if x.dtype != np.uint8:
            raise DataError(
                f"{self.x_path}: 'x' has dtype {x.dtype}; expected uint8 pixels (0-255)"
            )
        return x

    def _read_labels(self) -> np.ndarray:
        with _open_h5(self.y_path) as yf:
            if "y" not in yf:
                keys = ", ".join(sorted(yf.keys())) or "none"
                raise DataError(
                    f"{self.y_path} has no dataset 'y' (keys: {keys}); "
                    "a PCam y file stores its labels under key 'y'"
                )
            ds = yf["y"]
            if not isinstance(ds, h5py.Dataset):
                raise DataError(f"{self.y_path}: 'y' is a group; expected a dataset of labels")
            return _labels_from_dataset(ds, self.y_path, int(self._x.shape[0]))

    def _aligned_read_rows(self, wanted: int) -> int:
        if wanted < 1:
            raise InputError(f"read_rows must be at least 1, got {wanted}")
        chunks = self._x.chunks
        if not chunks:
            return wanted
        per_chunk = int(chunks[0])
        if per_chunk > 4 * wanted:  # huge chunks: keep reads (and memory) at the size asked
            return wanted
        return max(1, round(wanted / per_chunk)) * per_chunk

    # -- basic facts -------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Number of patches in the split."""
        return int(self._labels.shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def labels(self) -> np.ndarray:
        """All labels, uint8 ``(N,)`` in file order (a read-only view)."""
        view = self._labels.view()
        view.flags.writeable = False
        return view

    @property
    def positive_fraction(self) -> float:
        """Fraction of label-1 patches; 0.0 for an empty split."""
        return float(self._labels.mean()) if self.n else 0.0

    @property
    def read_rows(self) -> int:
        """Rows per contiguous read (a multiple of the HDF5 chunk rows when x is chunked)."""
        return self._read_rows

    def __repr__(self) -> str:
        return f"PcamSplit({str(self.folder)!r}, {self.split!r}, n={self.n})"

    # -- random access -----------------------------------------------------------------------

    def read(self, index: int | slice | np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Patches and labels at ``index`` (an int, a slice or a 1-D array of row indices).

        Returns ``(x, y)``: x uint8 ``(B, 96, 96, 3)``, y float32 ``(B,)``, in the order asked
        (an int gives B = 1). Indices may repeat and be unsorted; negative ones count from
        the end. An index outside the split raises :class:`InputError`.
        """
        n = self.n
        if isinstance(index, slice):
            rows = np.arange(n)[index]
        else:
            rows = np.atleast_1d(np.asarray(index))
            if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
                raise InputError(f"index must be an int, a slice or 1-D integers, got {index!r}")
            rows = rows.astype(np.int64)
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise InputError(f"index out of range for {self.split} split of {n} patches")
            rows = np.where(rows < 0, rows + n, rows)
        x = self._read_rows_at(rows)
        return x, self._labels[rows].astype(np.float32)

    def _read_rows_at(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, *PATCH_SHAPE), np.uint8)
        if rows.size == 0:
            return out
        uniq, inverse = np.unique(rows, return_inverse=True)
        lo, hi = int(uniq[0]), int(uniq[-1]) + 1
        with self._lock, self._damaged_file_errors(lo, hi):
            if hi - lo <= 4 * uniq.size:  # dense enough: one contiguous read
                block = self._x[lo:hi]
                out[:] = block[rows - lo]
            else:  # sparse: h5py point selection needs increasing indices
                out[:] = self._x[uniq.tolist()][inverse]
        return out

    # -- streaming ---------------------------------------------------------------------------

    def iter_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        buffer_chunks: int = 8,
        drop_remainder: bool = False,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield one pass over the split as ``(x, y)`` batches.

        x is uint8 ``(B, 96, 96, 3)``, y float32 ``(B,)``; B is ``batch_size`` except for a
        last, smaller batch (left out with ``drop_remainder``).

        The split is read in contiguous chunks of :attr:`read_rows` rows. With ``shuffle``
        the chunk order is permuted per epoch, and rows are permuted within a buffer of
        ``buffer_chunks`` chunks; the next buffer is read ahead while one is handed out, so
        about ``(2 * buffer_chunks + 1) * read_rows`` patches are in memory at most
        (17 x 1024 patches = 470 MB by default). The order depends only
        on ``(seed, epoch)``. Without ``shuffle`` batches come in file order.

        Reading runs ahead in ``read_workers`` threads; gzip-compressed chunks are inflated
        with :mod:`zlib` outside the GIL, so decompression overlaps with the consumer.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if buffer_chunks < 1:
            raise InputError(f"buffer_chunks must be at least 1, got {buffer_chunks}")
        n, step = self.n, self._read_rows
        starts = np.arange(0, n, step, dtype=np.int64)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch) & 0xFFFFFFFF])
        if shuffle:
            starts = rng.permutation(starts)
        # Plan: (group, first row, row count) per read task, in the order rows are consumed.
        task_rows = self._raw_chunk_rows or step
        plan = [
            (g // buffer_chunks, t, min(t + task_rows, int(start) + step, n) - t)
            for g, start in enumerate(starts)
            for t in range(int(start), min(int(start) + step, n), task_rows)
        ]
        capacity = min(n, buffer_chunks * step) + batch_size
        buf = np.empty((capacity, *PATCH_SHAPE), np.uint8)
        rows = np.empty(capacity, np.int64)
        # Read a whole shuffle buffer ahead: while one buffer is handed out as batches, the
        # next one is read and inflated, so a fast consumer (a GPU step) never waits for a
        # refill (with a shorter look-ahead it stalled 1-2 s every buffer).
        lookahead = max(2 * self._read_workers, -(-buffer_chunks * step // task_rows) + 1)
        pool = ThreadPoolExecutor(max_workers=self._read_workers, thread_name_prefix="pcam-read")
        pending: deque[tuple[int, int, int, Future[np.ndarray]]] = deque()
        todo = iter(plan)

        def top_up() -> None:
            while len(pending) < lookahead:
                task = next(todo, None)
                if task is None:
                    return
                pending.append((*task, pool.submit(self._load_rows, task[1], task[2])))

        fill, group = 0, 0
        try:
            top_up()
            while pending:
                task_group, first, count, future = pending[0]
                if task_group != group:
                    fill = yield from self._emit(buf, rows, fill, batch_size, rng, shuffle)
                    group = task_group
                pending.popleft()
                top_up()
                buf[fill : fill + count] = future.result()
                rows[fill : fill + count] = np.arange(first, first + count)
                fill += count
            fill = yield from self._emit(buf, rows, fill, batch_size, rng, shuffle)
            if fill and not drop_remainder:
                yield buf[:fill].copy(), self._labels[rows[:fill]].astype(np.float32)
        finally:
            for *_, future in pending:
                future.cancel()
            pool.shutdown(wait=True)

    def _emit(
        self,
        buf: np.ndarray,
        rows: np.ndarray,
        fill: int,
        batch_size: int,
        rng: np.random.Generator,
        shuffle: bool,
    ) -> Generator[tuple[np.ndarray, np.ndarray], None, int]:
        """Yield the full batches of the buffer (permuted if ``shuffle``); return rows left.

        The leftover rows move to the front of the buffer, to be mixed into the next group.
        """
        order = rng.permutation(fill) if shuffle else np.arange(fill)
        full = fill // batch_size
        for b in range(full):
            sel = order[b * batch_size : (b + 1) * batch_size]
            yield buf[sel], self._labels[rows[sel]].astype(np.float32)
        rest = order[full * batch_size :]
        if rest.size:
            buf[: rest.size] = buf[rest]
            rows[: rest.size] = rows[rest]
        return int(rest.size)

    def _raw_chunk_rows_of(self) -> int | None:
        """Rows per HDF5 chunk when chunks can be read raw and inflated here, else None.

        That is when x is chunked by whole patches with no filter or only deflate (gzip).
        """
        chunks = self._x.chunks
        if not chunks or tuple(chunks[1:]) != PATCH_SHAPE or self._read_rows % chunks[0]:
            return None
        plist = self._x.id.get_create_plist()
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        if filters not in ([], [h5py.h5z.FILTER_DEFLATE]):
            return None
        return int(chunks[0])

    def _load_rows(self, first: int, count: int) -> np.ndarray:
        """Rows ``first:first+count`` as uint8 ``(count, 96, 96, 3)``; runs in a reader thread.

        With raw chunk access the task is exactly one HDF5 chunk: its bytes are read under
        the lock and inflated without it (zlib releases the GIL).
        """
        if self._raw_chunk_rows is not None:
            chunk_bytes = self._raw_chunk_rows * PATCH_BYTES
            try:
                with self._lock:
                    mask, raw = self._x.id.read_direct_chunk((first, 0, 0, 0))
                if (mask & 1) or self._raw_uncompressed:
                    data = raw
                else:
                    data = zlib.decompress(raw, bufsize=chunk_bytes)
                if len(data) == chunk_bytes:
                    return np.frombuffer(data, np.uint8).reshape(-1, *PATCH_SHAPE)[:count]
            except (OSError, KeyError, ValueError, RuntimeError, zlib.error):
                pass  # unallocated or unusual chunk: let HDF5 read it
        out = np.empty((count, *PATCH_SHAPE), np.uint8)
        with self._lock, self._damaged_file_errors(first, first + count):
            self._x.read_direct(out, np.s_[first : first + count])
        return out

    @contextlib.contextmanager
    def _damaged_file_errors(self, lo: int, hi: int) -> Iterator[None]:
        """Turn HDF5 read failures (a truncated or corrupt file) into one-line DataErrors."""
        try:
            yield
        except OSError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"{self.x_path}: cannot read patches {lo}-{hi - 1} ({reason}); the file is "
                "damaged, re-download or re-convert it"
            ) from None

    def steps_per_epoch(self, batch_size: int, *, drop_remainder: bool = False) -> int:
        """Number of batches :meth:`iter_batches` yields per epoch."""
        full, rest = divmod(self.n, batch_size)
        return full + (1 if rest and not drop_remainder else 0)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the x file; the object cannot read afterwards (labels stay available)."""
        self._file.close()

    def __enter__(self) -> PcamSplit:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_pcam(folder: str | os.PathLike[str], split: str) -> PcamSplit:
    """Open and validate ``split`` of the PCam folder ``folder`` (see :class:`PcamSplit`)."""
    return PcamSplit(folder, split)


class PcamWriter:
    """Stream patches into a new PCam split: ``append`` batches, then ``close``.

    Writes ``x`` uint8 ``(N, 96, 96, 3)`` chunked ``(chunk_rows, 96, 96, 3)`` and ``y`` uint8
    ``(N, 1, 1, 1)`` like the official files, both resizable. Rows are buffered so that
    whole chunks are written. The data goes to ``<name>.partial`` files that are renamed to
    their final names only by a successful :meth:`close` (or a clean ``with`` exit, which
    replaces any existing split); after an exception in the ``with`` block, or
    :meth:`abort`, the partial files are removed, so nothing half-written looks finished.
    Not thread-safe: append from one thread.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        split: str,
        *,
        chunk_rows: int = 256,
        compression: str | None = "gzip",
        compression_opts: int | None = 4,
    ) -> None:
        _check_split(split)
        if chunk_rows < 1:
            raise InputError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.folder = Path(folder)
        self.split = split
        self.chunk_rows = int(chunk_rows)
        self.x_path, self.y_path = split_paths(self.folder, split)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._x_tmp = self.x_path.with_name(self.x_path.name + _PARTIAL_SUFFIX)
        self._y_tmp = self.y_path.with_name(self.y_path.name + _PARTIAL_SUFFIX)
        opts: dict[str, object] = {} if compression is None else {"compression": compression}
        if compression is not None and compression_opts is not None:
            opts["compression_opts"] = compression_opts
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._xf = h5py.File(self._x_tmp, "w")
        try:
            self._yf = h5py.File(self._y_tmp, "w")
        except BaseException:
            self._xf.close()
            self._x_tmp.unlink(missing_ok=True)
            raise
        try:
            self._create_datasets(opts)
        except BaseException:
            self.abort()
            raise
        # gzip chunks are deflated here, in threads, and written raw (same bytes as HDF5's).
        self._gzip_level: int | None = None
        if compression == "gzip":
            self._gzip_level = 4 if compression_opts is None else int(compression_opts)
        self._pending_x: list[np.ndarray] = []
        self._pending_y: list[np.ndarray] = []
        self._pending = 0
        self._written = 0

    def _create_datasets(self, opts: dict[str, object]) -> None:
        self._x = self._xf.create_dataset(
            "x",
            shape=(0, *PATCH_SHAPE),
            maxshape=(None, *PATCH_SHAPE),
            dtype=np.uint8,
            chunks=(self.chunk_rows, *PATCH_SHAPE),
            **opts,
        )
        self._y = self._yf.create_dataset(
            "y",
            shape=(0, 1, 1, 1),
            maxshape=(None, 1, 1, 1),
            dtype=np.uint8,
            chunks=(max(self.chunk_rows, 4096), 1, 1, 1),
            **opts,
        )

    @property
    def n(self) -> int:
        """Rows appended so far (written or still buffered)."""
        return self._written + self._pending

    def append(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add patches ``x`` uint8 ``(B, 96, 96, 3)`` with labels ``y`` ``(B,)`` in {0, 1}.

        ``y`` may also be shaped ``(B, 1)`` or ``(B, 1, 1, 1)``. Raises :class:`DataError` on a
        wrong shape, dtype or label.
        """
        if self._closed:
            raise InputError(f"PcamWriter for {self.x_path} is closed; open a new one")
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != PATCH_SHAPE or x.dtype != np.uint8:
            raise DataError(
                f"patches for {self.x_path.name} are {x.dtype} {x.shape}; "
                "expected uint8 (B, 96, 96, 3)"
            )
        y = np.asarray(y)
        if y.size != x.shape[0] or (y.ndim > 1 and any(s != 1 for s in y.shape[1:])):
            raise DataError(
                f"labels for {self.y_path.name} have shape {y.shape} for {x.shape[0]} patches; "
                "expected one label per patch"
            )
        y = y.reshape(-1)
        if y.size and ((y != 0) & (y != 1)).any():
            raise DataError(
                f"labels for {self.y_path.name} must be 0 or 1, got values {np.unique(y).tolist()}"
            )
        if x.shape[0] == 0:
            return
        self._pending_x.append(x.copy())  # the caller may reuse its buffer
        self._pending_y.append(y.astype(np.uint8))
        self._pending += x.shape[0]
        if self._pending >= self.chunk_rows:
            self._flush(whole_chunks_only=True)

    def _flush(self, *, whole_chunks_only: bool) -> None:
        if not self._pending:
            return
        x = np.concatenate(self._pending_x) if len(self._pending_x) > 1 else self._pending_x[0]
        y = np.concatenate(self._pending_y) if len(self._pending_y) > 1 else self._pending_y[0]
        take = (x.shape[0] // self.chunk_rows) * self.chunk_rows if whole_chunks_only else len(x)
        if take:
            start, stop = self._written, self._written + take
            self._x.resize(stop, axis=0)
            self._y.resize(stop, axis=0)
            if self._gzip_level is None:
                self._x[start:stop] = x[:take]
            else:
                self._write_gzip_chunks(start, x[:take])
            self._y[start:stop] = y[:take].reshape(-1, 1, 1, 1)
            self._written = stop
        self._pending_x = [x[take:]] if take < len(x) else []
        self._pending_y = [y[take:]] if take < len(y) else []
        self._pending = len(x) - take

    def _write_gzip_chunks(self, start: int, x: np.ndarray) -> None:
        """Deflate whole chunks in threads (zlib releases the GIL) and store them as they are.

        The bytes are what HDF5's gzip filter would write, so any HDF5 reader reads them.
        ``start`` is a multiple of ``chunk_rows``; a short last piece is zero-padded to a
        full chunk, as HDF5 stores edge chunks.
        """
        rows = self.chunk_rows
        pieces = []
        for i in range(0, len(x), rows):
            piece = x[i : i + rows]
            if len(piece) < rows:
                padded = np.zeros((rows, *PATCH_SHAPE), np.uint8)
                padded[: len(piece)] = piece
                piece = padded
            pieces.append(np.ascontiguousarray(piece))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pcam-write")
        level = self._gzip_level
        for j, data in enumerate(self._pool.map(lambda a: zlib.compress(a, level), pieces)):
            self._x.id.write_direct_chunk((start + j * rows, 0, 0, 0), data)

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> tuple[Path, Path]:
        """Write what is buffered, close the files and rename them into place.

        Returns the final ``(x_path, y_path)``. Existing files of the split are replaced.
        """
        if self._closed:
            return self.x_path, self.y_path
        try:
            self._flush(whole_chunks_only=False)
            self._shutdown_pool()
            self._xf.close()
            self._yf.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        # y first: a split counts as present only when x is there too.
        os.replace(self._y_tmp, self.y_path)
        os.replace(self._x_tmp, self.x_path)
        return self.x_path, self.y_path

    def abort(self) -> None:
        """Close and delete the partial files; the split's final files are left untouched."""
        self._closed = True
        self._shutdown_pool()
        for f in (self._xf, self._yf):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken file must not mask the cause
                pass
        for tmp in (self._x_tmp, self._y_tmp):
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> PcamWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_pcam_split(
    folder: str | os.PathLike[str],
    split: str,
    x: np.ndarray,
    y: np.ndarray,
    **kw: object,
) -> tuple[Path, Path]:
    """Write a whole split at once: ``x`` uint8 ``(N, 96, 96, 3)``, ``y`` ``(N,)`` in {0, 1}.

    Keyword arguments go to :class:`PcamWriter` (``chunk_rows``, ``compression``, ...).
    Returns the final ``(x_path, y_path)``.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(x) != len(y):
        raise DataError(
            f"write_pcam_split({split!r}): {len(x)} patches but {len(y)} labels; "
            "give one label per patch"
        )
    with PcamWriter(folder, split, **kw) as writer:  # type: ignore[arg-type]
        step = max(writer.chunk_rows, 1024)
        for start in range(0, max(len(x), 1), step):
            writer.append(x[start : start + step], y[start : start + step])
    return writer.x_path, writer.y_path
