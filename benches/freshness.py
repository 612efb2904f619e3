"""Freshness of a stream run: for every raw row, the time from its Kafka timestamp (stamped when
`runtime produce --stamp-now` sent it) to the commit of the raw snapshot that added it.

Reads the catalog with PyIceberg: the manifest entries of the raw table give each data file's
adding snapshot, whose timestamp is when the rows became visible.

Usage: python benches/freshness.py CATALOG_DB WAREHOUSE [TABLE]
Prints p50/p90/p99/max in seconds over all rows.
"""

import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog


def main():
    database, warehouse = sys.argv[1], sys.argv[2]
    name = sys.argv[3] if len(sys.argv) > 3 else "raw.movie_ratings_raw"
    catalog = SqlCatalog("ratings_flow", uri=f"sqlite:///{database}", warehouse=f"file://{warehouse}")
    table = catalog.load_table(name)
    committed_at = {s.snapshot_id: s.timestamp_ms for s in table.metadata.snapshots}
    entries = table.inspect.entries().to_pylist()
    delays = []
    for entry in entries:
        if entry["status"] == 2:  # DELETED
            continue
        path = entry["data_file"]["file_path"].removeprefix("file://")
        visible = committed_at[entry["snapshot_id"]]
        stamps = pq.read_table(path, columns=["ingestion_ts_ms"]).column(0)
        delays.extend((visible - t) / 1000.0 for t in stamps.to_pylist())
    delays.sort()
    if not delays:
        print("no rows")
        return
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))]
    print(
        f"freshness over {len(delays)} rows: p50 {pick(0.5):.2f} s, p90 {pick(0.9):.2f} s, "
        f"p99 {pick(0.99):.2f} s, max {delays[-1]:.2f} s"
    )


if __name__ == "__main__":
    main()
