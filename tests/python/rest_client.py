"""Drives `runtime catalog serve` with PyIceberg's RestCatalog, an independent REST client.

Lists namespaces, loads and scans a table the engine wrote, creates a namespace and a table,
appends to it (a commit through the REST endpoint), then makes two writers race: both load the
table, the first appends, the second (whose `assert-ref-snapshot-id` now fails) must get 409,
which PyIceberg raises as CommitFailedException inside its append; PyIceberg then re-validates
against the new table and commits again, as a REST client should. Every commit attempt and every
409 is counted. Prints what it saw as JSON.

    python rest_client.py --uri http://127.0.0.1:8181 --table curated.movie_ratings
"""

import argparse
import json

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.schema import Schema
from pyiceberg.types import LongType, NestedField, StringType


COMMITS = {"attempts": 0, "conflicts": 0}


def counting(commit):
    def wrapper(self, table, requirements, updates):
        COMMITS["attempts"] += 1
        try:
            return commit(self, table, requirements, updates)
        except CommitFailedException:
            COMMITS["conflicts"] += 1
            raise

    return wrapper


RestCatalog.commit_table = counting(RestCatalog.commit_table)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()

    catalog = RestCatalog("ratings_flow", uri=args.uri)
    seen = {"namespaces": sorted(".".join(ns) for ns in catalog.list_namespaces())}
    table = catalog.load_table(args.table)
    seen["engine_table_rows"] = table.scan().to_arrow().num_rows
    seen["engine_table_snapshots"] = len(table.snapshots())
    try:
        catalog.load_table("curated.no_such_table")
        seen["missing_table"] = "loaded"
    except NoSuchTableError:
        seen["missing_table"] = "NoSuchTableError"

    catalog.create_namespace("notes")
    schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "text", StringType(), required=False))
    notes = catalog.create_table("notes.from_pyiceberg", schema=schema)
    rows = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "text": ["a", "b", None]},
                    schema=pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("text", pa.string())]))
    notes.append(rows)
    seen["tables_in_notes"] = [".".join(t) for t in catalog.list_tables("notes")]
    seen["notes_rows_after_append"] = catalog.load_table("notes.from_pyiceberg").scan().to_arrow().num_rows

    first = catalog.load_table("notes.from_pyiceberg")
    second = catalog.load_table("notes.from_pyiceberg")
    first.append(rows)
    before_race = dict(COMMITS)
    second.append(rows)
    seen["race_attempts"] = COMMITS["attempts"] - before_race["attempts"]
    seen["race_conflicts"] = COMMITS["conflicts"] - before_race["conflicts"]
    final = catalog.load_table("notes.from_pyiceberg")
    seen["notes_rows_after_race"] = final.scan().to_arrow().num_rows
    seen["notes_snapshots"] = len(final.snapshots())
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
