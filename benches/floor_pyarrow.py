"""pyarrow's C++ Parquet writer on exactly the columns `benches/floor.rs` writes.

`cargo bench --bench floor` leaves the raw and curated columns of its 1M events as Arrow IPC
files in target/floor-columns/ (one per partition) with the columns the engine writes without a
dictionary. This writes each set as zstd-1 Parquet files, one per partition, with the same
dictionary settings and encodings, and prints the median of the runs beside the size written:

    .venv/bin/python benches/floor_pyarrow.py [target/floor-columns] [runs] [--both]

With `--both` each set is written with its distinct columns delta-encoded and plain, run by run
in turn, and then each distinct column alone both ways: what the graph's `distinct_encoding`
costs or saves on the best writer measured.
"""
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq


def load(folder: Path, name: str):
    tables = [pa.ipc.open_file(path).read_all() for path in sorted(folder.glob(f"{name}-*.arrow"))]
    plain = [c for c in (folder / f"{name}.plain").read_text().split("\n") if c]
    encoding_file = folder / f"{name}.encoding"
    delta = encoding_file.exists() and encoding_file.read_text().strip() == "delta"
    return tables, plain, delta


def delta_encoding(field: pa.Field):
    """The engine's encoding of a distinct column of this type (operators::writer::DistinctEncoding)."""
    t = field.type
    if pa.types.is_integer(t) or pa.types.is_date(t) or pa.types.is_time(t) or pa.types.is_timestamp(t):
        return "DELTA_BINARY_PACKED"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "DELTA_LENGTH_BYTE_ARRAY"
    return None


def write(tables, plain, delta, out: Path) -> int:
    size = 0
    for index, table in enumerate(tables):
        dictionary = [c for c in table.column_names if c not in plain]
        encodings = {}
        if delta:
            encodings = {c: delta_encoding(table.schema.field(c)) for c in plain if c in table.column_names}
            encodings = {c: e for c, e in encodings.items() if e}
        path = out / f"{index}.parquet"
        pq.write_table(table, path, compression="zstd", compression_level=1, use_dictionary=dictionary,
                       column_encoding=encodings or None)
        size += path.stat().st_size
        # As `benches/floor.rs` does after each round: the next round's file fills page-cache
        # pages freed a moment before, as the Rust writers' files do.
        path.unlink()
    return size


def timed(tables, plain, encodings, runs: int):
    """Median and minimum seconds of writing `tables` once per encoding choice in `encodings`
    (True: delta), the choices taking turns run by run; and the bytes each wrote."""
    times = {delta: [] for delta in encodings}
    sizes = {}
    with tempfile.TemporaryDirectory() as out:
        for _ in range(runs):
            for delta in encodings:
                start = time.perf_counter()
                sizes[delta] = write(tables, plain, delta, Path(out))
                times[delta].append(time.perf_counter() - start)
    return {delta: (statistics.median(t), min(t), sizes[delta]) for delta, t in times.items()}


def main() -> None:
    arguments = [a for a in sys.argv[1:] if not a.startswith("--")]
    both = "--both" in sys.argv[1:]
    folder = Path(arguments[0] if arguments else os.environ.get("CARGO_TARGET_DIR", "target"))
    if folder.name != "floor-columns":
        folder = folder / "floor-columns"
    runs = int(arguments[1]) if len(arguments) > 1 else 10
    if not any(folder.glob("raw-*.arrow")):
        sys.exit(f"no columns in {folder}: run `cargo bench -p ratings-benches --bench floor` first")
    print(f"pyarrow {pa.__version__}, zstd level 1, {runs} runs, median")
    label = lambda delta: "delta" if delta else "plain"
    for name in ("raw", "curated"):
        tables, plain, delta = load(folder, name)
        rows = sum(t.num_rows for t in tables)
        results = timed(tables, plain, (True, False) if both else (delta,), runs)
        for encoding, (median, least, size) in results.items():
            print(f"{name:8} {rows:>9} rows in {len(tables):>2} files, distinct columns {label(encoding)}: "
                  f"{median * 1000:7.1f} ms (min {least * 1000:.1f}), {size / 1e6:.1f} MB")
        if both:
            for column in plain:
                alone = [t.select([column]) for t in tables]
                results = timed(alone, plain, (True, False), runs)
                print(f"  {column:18} " + ", ".join(
                    f"{label(encoding)} {median * 1000:6.1f} ms {size / 1e6:5.1f} MB" for encoding, (median, _, size) in results.items()))


if __name__ == "__main__":
    main()
