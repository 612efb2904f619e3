"""The movies batch pipeline, checked independently of the engine: pyarrow reads the raw Parquet
files and computes the expected curated table (the oracle), PyIceberg reads what the engine wrote.

  movies.py craft --out DIR
      writes crafted raw files: day1.parquet, day2.parquet, day3_bad_language.parquet
  movies.py compare --database DB --warehouse WH --catalog C --table T RAW_FILE...
      prints JSON: rows per partition of the files PyIceberg plans, duplicate keys, and every row
      that differs from the oracle computed from RAW_FILE... (in ingestion order); and how many
      rows PyIceberg's own reader returns and how many of those differ
  movies.py dump --database DB --warehouse WH --catalog C --table T
      prints every curated row, sorted, as JSON (to compare two tables)
"""

import argparse
import datetime
import json

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog

GENRES = pa.list_(pa.struct([("id", pa.int64()), ("name", pa.string())]))
RAW_SCHEMA = pa.schema(
    [
        ("rating_id", pa.string()),
        ("movie_id", pa.int64()),
        ("user_id", pa.int64()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
        ("original_title", pa.string()),
        ("original_language", pa.string()),
        ("budget", pa.int64()),
        ("adult", pa.bool_()),
        ("genres", GENRES),
        ("ingestion_date", pa.date32()),
    ]
)


def row(rating_id, timestamp, day, *, title="Film", language="en", genres=(("1", "Drama"),), rating=4.0):
    return {
        "rating_id": rating_id,
        "movie_id": 7,
        "user_id": 11,
        "rating": rating,
        "timestamp": timestamp,
        "original_title": title,
        "original_language": language,
        "budget": 1000,
        "adult": False,
        "genres": None if genres is None else [{"id": int(i), "name": n} for i, n in genres],
        "ingestion_date": day,
    }


def craft(out: str) -> None:
    day1, day2, day3 = (datetime.date(2021, 1, d) for d in (1, 2, 3))
    t1 = 1609459200  # 2021-01-01T00:00:00Z
    first = [
        row("dup", t1 + 100, day1, title="First version"),
        row("nullgenres", t1 + 200, day1, genres=None),
        row("emptygenres", t1 + 300, day1, genres=()),
        row("twogenres", t1 + 400, day1, genres=(("1", "Drama"), ("2", "Comedy"))),
        row("stays", t1 + 500, day1, title="Newer than its day-2 copy"),
        row("tie", t1 + 600, day1, title="Tie, ingested first"),
    ]
    second = [
        row("dup", t1 + 90_000, day2, title="Second version", rating=5.0),
        row("stays", t1 + 1, day2, title="Older copy ingested later"),
        row("tie", t1 + 600, day2, title="Tie, ingested later"),
        row("new", t1 + 90_500, day2),
        row("old", t1 - 2 * 86_400, day2, title="Rated two days before its ingestion"),
    ]
    third = [row("three", t1 + 180_000, day3, language="eng")]
    for name, rows in (("day1", first), ("day2", second), ("day3_bad_language", third)):
        pq.write_table(pa.Table.from_pylist(rows, schema=RAW_SCHEMA), f"{out}/{name}.parquet")


def oracle(raw_files):
    """Latest timestamp per rating_id; ties to the later ingestion date, then the later row."""
    best = {}
    for path in raw_files:
        for position, r in enumerate(pq.read_table(path).to_pylist()):
            rank = (r["timestamp"], r["ingestion_date"], path, position)
            if r["rating_id"] not in best or rank > best[r["rating_id"]][0]:
                best[r["rating_id"]] = (rank, r)
    expected = {}
    for key, (_, r) in best.items():
        expected[key] = {
            "rating_id": r["rating_id"],
            "movie_id": r["movie_id"],
            "user_id": r["user_id"],
            "rating": r["rating"],
            "timestamp": datetime.datetime.fromtimestamp(r["timestamp"], datetime.timezone.utc),
            "original_title": r["original_title"],
            "original_language": r["original_language"].upper(),
            "budget": r["budget"],
            "is_adult": r["adult"],
            "is_multigenre": len(r["genres"] or []) > 1,
            "genres": r["genres"],
            "ingestion_date": r["ingestion_date"],
        }
    return expected


def load(args):
    catalog = SqlCatalog(args.catalog, uri=f"sqlite:///{args.database}", warehouse=f"file://{args.warehouse}")
    return catalog.load_table(args.table)


def file_rows(table):
    """The live rows of the data files PyIceberg plans, read by pyarrow itself (PyIceberg 0.12's
    reader turns a null list into an empty one, the files keep the null), without the positions
    their position delete files name."""
    rows = []
    for task in table.scan().plan_files():
        path = task.file.file_path
        deleted = set()
        for delete in task.delete_files:
            deletes = pq.read_table(delete.file_path.removeprefix("file://")).to_pylist()
            deleted.update(d["pos"] for d in deletes if d["file_path"] == path)
        data = pq.read_table(path.removeprefix("file://")).to_pylist()
        rows.extend(r for position, r in enumerate(data) if position not in deleted)
    return rows


# The engine's lineage after the declared columns: where the winning record was ingested.
LINEAGE = ("ingestion_ts_ms", "source_partition", "source_offset")


def declared(row):
    return row and {k: v for k, v in row.items() if k not in LINEAGE}


def null_list_as_empty(row):
    return row and {**row, "genres": row["genres"] or []}


def plain(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["craft", "compare", "dump"])
    parser.add_argument("raw", nargs="*")
    parser.add_argument("--out")
    parser.add_argument("--database")
    parser.add_argument("--warehouse")
    parser.add_argument("--catalog")
    parser.add_argument("--table")
    args = parser.parse_args()
    if args.command == "craft":
        craft(args.out)
        return
    iceberg_table = load(args)
    table = iceberg_table.scan().to_arrow()
    rows = file_rows(iceberg_table)
    if args.command == "dump":
        print(json.dumps(sorted(json.dumps({k: plain(v) for k, v in r.items()}, sort_keys=True) for r in rows)))
        return
    expected = oracle(args.raw)
    per_partition = {}
    seen = {}
    for r in rows:
        day = r["ingestion_date"].isoformat()
        per_partition[day] = per_partition.get(day, 0) + 1
        seen[r["rating_id"]] = seen.get(r["rating_id"], 0) + 1
    mismatches = []
    for r in rows:
        want = expected.get(r["rating_id"])
        r = declared(r)
        if want != r:
            mismatches.append({"found": {k: plain(v) for k, v in r.items()}, "expected": want and {k: plain(v) for k, v in want.items()}})
    # PyIceberg's own reading agrees too (null lists compared as empty, see file_rows).
    read = table.to_pylist()
    pyiceberg_mismatches = sum(1 for r in read if null_list_as_empty(expected.get(r["rating_id"])) != null_list_as_empty(declared(r)))
    print(
        json.dumps(
            {
                "rows": len(rows),
                "pyiceberg_rows": len(read),
                "pyiceberg_mismatches": pyiceberg_mismatches,
                "per_partition": per_partition,
                "duplicates": sorted(k for k, n in seen.items() if n > 1),
                "missing": sorted(set(expected) - set(seen)),
                "mismatches": mismatches[:10],
                "mismatch_count": len(mismatches),
                "columns": table.schema.names,
                "multigenre_true": sum(1 for r in rows if r["is_multigenre"]),
            }
        )
    )


if __name__ == "__main__":
    main()
