"""Prediction output files that grow as results arrive and survive the writer being killed.

- CSV: each chunk is appended with one write() on an O_APPEND descriptor and fsynced; a last
  line cut short by a crash is cut off on the next open, so the file holds whole rows only.
- Parquet: a Parquet file is only readable once its footer is written, so chunks go to
  `OUT.parquet.parts/part-*.parquet` (each written atomically); `finish` merges the finished
  file and the parts, row group by row group, into `OUT.parquet` (atomically) and removes them.

Either way `done_paths` says which files a rerun can skip.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import shutil
import time
import uuid
from pathlib import Path

from transferkit.atomic import atomic_path
from transferkit.errors import ConfigError, DataError

# Flush to disk at least this often (rows, seconds): what a kill can cost a rerun.
FLUSH_ROWS = {".csv": 1, ".parquet": 2048}
FLUSH_SECONDS = 10.0


@functools.lru_cache(maxsize=1)
def schema():
    """The rows' Arrow schema (pyarrow is imported only when a sink is used)."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("label", pa.string()), ("confidence", pa.float64()),
                      ("top_k", pa.string()), ("unknown", pa.bool_()), ("score", pa.float64()),
                      ("error", pa.string())])


FIELDS = ["path", "label", "confidence", "top_k", "unknown", "score", "error"]


def open_sink(output, flush_rows: int | None = None):
    """The sink for `output` by its suffix (.parquet or .csv)."""
    if not isinstance(output, (str, os.PathLike)) or not str(output).strip():
        raise ConfigError(f"output must be a .parquet or .csv path, got {output!r}.")
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in FLUSH_ROWS:
        raise ConfigError(f"output must end in .parquet or .csv, got '{path}'.")
    if flush_rows is not None and (isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1):
        raise ConfigError(f"flush_rows must be a positive integer, got {flush_rows!r}.")
    if path.is_dir():
        raise ConfigError(f"output '{path}' is a folder; give a file name ending in {suffix}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    sink = CsvSink if suffix == ".csv" else ParquetSink
    return sink(path, flush_rows or FLUSH_ROWS[suffix])


class _Buffered:
    def __init__(self, path: Path, flush_rows: int):
        self.path, self.flush_rows = path, flush_rows
        self._pending, self._rows, self._last = [], 0, time.monotonic()

    def write(self, table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= self.flush_rows or time.monotonic() - self._last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            import pyarrow as pa

            self._write(pa.concat_tables(self._pending))
        self._pending, self._rows, self._last = [], 0, time.monotonic()

    def close(self) -> None:
        self.flush()

    def finish(self) -> None:
        self.flush()


class CsvSink(_Buffered):
    def done_paths(self) -> set[str]:
        if not self.path.is_file():
            return set()
        _drop_partial_line(self.path)
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames and reader.fieldnames != FIELDS:
                raise DataError(f"'{self.path}' is not a prediction file of this kind (columns {reader.fieldnames}, "
                                f"expected {FIELDS}); choose another --output.")
            return {row["path"] for row in reader}

    def _write(self, table) -> None:
        text = io.StringIO()
        writer = csv.writer(text)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        if new:
            writer.writerow(FIELDS)
        for row in table.to_pylist():
            writer.writerow(["" if row[k] is None else (int(row[k]) if k == "unknown" else row[k]) for k in FIELDS])
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, text.getvalue().encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)


def _drop_partial_line(path: Path) -> None:
    """Cut a last line that a killed writer left without its newline."""
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        content = handle.read()
        handle.truncate(content.rfind(b"\n") + 1)


class ParquetSink(_Buffered):
    @property
    def parts(self) -> Path:
        return self.path.with_name(self.path.name + ".parts")

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []

    def done_paths(self) -> set[str]:
        import pyarrow.parquet as pq

        done = set()
        for file in ([self.path] if self.path.is_file() else []) + self._part_files():
            done.update(pq.read_table(file, columns=["path"]).column("path").to_pylist())
        return done

    def _write(self, table) -> None:
        import pyarrow.parquet as pq

        self.parts.mkdir(exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        with atomic_path(self.parts / name) as tmp:
            pq.write_table(table, tmp)

    def finish(self) -> None:
        """Merge the finished file and the parts into one Parquet file, row group by row group."""
        import pyarrow.parquet as pq

        self.flush()
        parts = self._part_files()
        if not parts:
            return
        sources = ([self.path] if self.path.is_file() else []) + parts
        with atomic_path(self.path) as tmp:
            with pq.ParquetWriter(tmp, schema()) as writer:
                for file in sources:
                    handle = pq.ParquetFile(file)
                    for group in range(handle.num_row_groups):
                        writer.write_table(handle.read_row_group(group).cast(schema()))
        shutil.rmtree(self.parts)
