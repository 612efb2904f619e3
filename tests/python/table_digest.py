"""What PyIceberg reads from a ratings-flow table, as a digest to compare two lakehouses by.

Opens the SQLite catalog with PyIceberg's SqlCatalog. The warehouse is a local folder or an
`s3://bucket/prefix`: then PyIceberg reads every file through its own S3 FileIO from
`--s3-endpoint` (credentials from the AWS environment variables). Prints JSON: the row count,
the rows per partition (by the column the partition field is named after), and a SHA-256 of the
sorted rows (every column, as JSON).

    python table_digest.py --database D --warehouse W --catalog C --table T [--s3-endpoint URL]
"""

import argparse
import datetime
import hashlib
import json
import os

from pyiceberg.catalog.sql import SqlCatalog


def plain(value):
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float):
        return repr(value)
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--s3-endpoint")
    args = parser.parse_args()

    warehouse = args.warehouse if "://" in args.warehouse else f"file://{args.warehouse}"
    properties = {"uri": f"sqlite:///{args.database}", "warehouse": warehouse}
    if args.s3_endpoint:
        properties.update(
            {
                "s3.endpoint": args.s3_endpoint,
                "s3.region": "us-east-1",
                "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
                "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"],
                "s3.force-virtual-addressing": "false",
            }
        )
    table = SqlCatalog(args.catalog, **properties).load_table(args.table)
    rows = table.scan().to_arrow().to_pylist()
    partition_column = table.spec().fields[0].name
    per_partition: dict = {}
    lines = []
    for row in rows:
        key = str(plain(row[partition_column]))
        per_partition[key] = per_partition.get(key, 0) + 1
        lines.append(json.dumps({k: plain(v) for k, v in row.items()}, sort_keys=True))
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
        digest.update(b"\n")
    files = [task.file.file_path for task in table.scan().plan_files()]
    print(
        json.dumps(
            {
                "rows": len(rows),
                "partitions": dict(sorted(per_partition.items())),
                "checksum": digest.hexdigest(),
                "file_schemes": sorted({path.split("://")[0] for path in files}),
            }
        )
    )


if __name__ == "__main__":
    main()
