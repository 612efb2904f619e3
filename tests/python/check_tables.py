"""Reads a ratings-flow table with independent Iceberg readers and prints what they see as JSON.

PyIceberg opens the same SQLite catalog through its SqlCatalog; DuckDB's iceberg extension reads
the table's current metadata file directly. The Rust test compares both with the engine's view.
"""

import argparse
import hashlib
import json
import pathlib

import duckdb
import duckdb_extension_avro
import duckdb_extension_iceberg
from pyiceberg.catalog.sql import SqlCatalog


def row_line(row: dict) -> str:
    return "|".join(
        [
            row["event_id"],
            row["user_id"],
            row["movie_id"],
            f"{row['rating']:.3f}",
            str(row["is_approved"]).lower(),
            str(row["rating_timestamp"]),
            row["rating_date"].isoformat(),
        ]
    )


def checksum(rows: list) -> str:
    digest = hashlib.sha256()
    for line in sorted(row_line(r) for r in rows):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()

    catalog = SqlCatalog(args.catalog, uri=f"sqlite:///{args.database}", warehouse=f"file://{args.warehouse}")
    table = catalog.load_table(args.table)
    rows = table.scan().to_arrow().to_pylist()
    per_partition: dict = {}
    for row in rows:
        day = row["rating_date"].isoformat()
        per_partition[day] = per_partition.get(day, 0) + 1
    tasks = list(table.scan().plan_files())
    live = sorted(task.file.file_path for task in tasks)
    position_deletes = sorted({d.file_path for task in tasks for d in task.delete_files})
    deleted = set()
    operations = []
    for snapshot in sorted(table.snapshots(), key=lambda s: s.sequence_number):
        operations.append(snapshot.summary.operation.value)
        entries = table.inspect.entries(snapshot_id=snapshot.snapshot_id).to_pylist()
        deleted.update(e["data_file"]["file_path"] for e in entries if e["status"] == 2)

    con = duckdb.connect()
    # Both extensions come from PyPI wheels (pinned); DuckDB must not try to download anything.
    for package, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
        extension = next(pathlib.Path(package.__file__).parent.rglob(f"{name}.duckdb_extension"))
        con.execute(f"LOAD '{extension}'")
    metadata = table.metadata_location.removeprefix("file://")
    duck_rows = con.execute(
        "SELECT event_id, user_id, movie_id, rating, is_approved, rating_timestamp, rating_date "
        f"FROM iceberg_scan('{metadata}')"
    ).fetchall()
    names = ["event_id", "user_id", "movie_id", "rating", "is_approved", "rating_timestamp", "rating_date"]
    duck_dicts = [dict(zip(names, r)) for r in duck_rows]
    # The codecs of the live data files' column chunks, as DuckDB's Parquet reader sees them.
    paths = [path.removeprefix("file://") for path in live]
    codecs = sorted(
        {row[0] for row in con.execute("SELECT DISTINCT compression FROM parquet_metadata(?)", [paths]).fetchall()}
    ) if paths else []

    print(
        json.dumps(
            {
                "rows": len(rows),
                "per_partition": per_partition,
                "checksum": checksum(rows),
                "live_files": live,
                "deleted_files": sorted(deleted),
                "position_delete_files": position_deletes,
                "operations": operations,
                "duckdb_rows": len(duck_dicts),
                "duckdb_checksum": checksum(duck_dicts),
                "duckdb_codecs": codecs,
            }
        )
    )


if __name__ == "__main__":
    main()
