"""Lists, with PyIceberg alone, every file a table's metadata references and the rows each
snapshot reads (time travel), as JSON. The Rust tests compare it with the files on disk after
`runtime maintain`.
"""

import argparse
import json

from pyiceberg.catalog.sql import SqlCatalog


def local(path: str) -> str:
    return path.removeprefix("file://")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", required=True)
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--catalog", required=True)
    parser.add_argument("--table", required=True)
    args = parser.parse_args()

    catalog = SqlCatalog(args.catalog, uri=f"sqlite:///{args.database}", warehouse=f"file://{args.warehouse}")
    table = catalog.load_table(args.table)
    referenced = {local(table.metadata_location)}
    referenced.update(local(entry.metadata_file) for entry in table.metadata.metadata_log)
    rows = {}
    for snapshot in table.snapshots():
        referenced.add(local(snapshot.manifest_list))
        for manifest in snapshot.manifests(table.io):
            referenced.add(local(manifest.manifest_path))
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                referenced.add(local(entry.data_file.file_path))
        rows[str(snapshot.snapshot_id)] = table.scan(snapshot_id=snapshot.snapshot_id).to_arrow().num_rows
    print(json.dumps({"location": local(table.metadata.location), "referenced": sorted(referenced), "rows": rows}))


if __name__ == "__main__":
    main()
