"""DuckDB 1.5.5 attaches a REST catalog (its iceberg extension, over httpfs; both from PyPI, so
nothing is downloaded at run time) and reports what it sees: the tables, and the row count and
rating sum of one table. Prints JSON."""
import argparse
import json
import pathlib

import duckdb
import duckdb_extension_avro
import duckdb_extension_httpfs
import duckdb_extension_iceberg

parser = argparse.ArgumentParser()
parser.add_argument("--uri", required=True)
parser.add_argument("--table", required=True, help="namespace.table")
args = parser.parse_args()

con = duckdb.connect()
for package, name in ((duckdb_extension_httpfs, "httpfs"), (duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
    extension = next(pathlib.Path(package.__file__).parent.rglob(f"{name}.duckdb_extension"))
    con.execute(f"LOAD '{extension}'")
con.execute(f"ATTACH 'warehouse' AS lake (TYPE iceberg, ENDPOINT '{args.uri}', AUTHORIZATION_TYPE 'none')")
tables = sorted(f"{schema}.{name}" for _, schema, name, *_ in con.execute("SHOW ALL TABLES").fetchall())
rows, rating_sum = con.execute(f"SELECT count(*), sum(rating) FROM lake.{args.table}").fetchone()
print(json.dumps({"tables": tables, "rows": rows, "rating_sum": rating_sum}))
