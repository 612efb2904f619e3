"""A small schema registry for tests and the demo.

It implements the documented Confluent Schema Registry endpoints the engine and `runtime produce`
use, and nothing more:

- POST /subjects/{subject}/versions  {"schema": "..."}  -> {"id": N}  (same schema again: same id)
- GET  /schemas/ids/{id}                                 -> {"schema": "..."}
- GET  /subjects/{subject}/versions/latest               -> {"subject", "version", "id", "schema"}
- GET  /subjects                                         -> ["subject", ...]
- errors as {"error_code": 40401|40403|..., "message": "..."} with the HTTP status.

No compatibility checks: the engine resolves writer schemas against its reader schema itself.
State is kept in a JSON file (--state) so a stopped and restarted registry still knows its ids,
as a real registry backed by its Kafka topic would.

Usage: python registry.py --port 8081 --state .kafka/registry.json
"""

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class Store:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.schemas = {}  # id -> schema text
        self.subjects = {}  # subject -> [id, ...] (versions in order)
        if path and os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
            self.schemas = {int(k): v for k, v in data["schemas"].items()}
            self.subjects = data["subjects"]

    def save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"schemas": self.schemas, "subjects": self.subjects}, f)
        os.replace(tmp, self.path)

    def register(self, subject, schema):
        with self.lock:
            existing = next((i for i, s in self.schemas.items() if s == schema), None)
            schema_id = existing if existing is not None else max(self.schemas, default=0) + 1
            self.schemas[schema_id] = schema
            versions = self.subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            self.save()
            return schema_id


class Handler(BaseHTTPRequestHandler):
    store = None

    def log_message(self, format, *args):  # quiet: tests read the engine's output, not ours
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.reply(status, {"error_code": code, "message": message})

    def do_GET(self):
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        store = self.store
        if parts == ["subjects"]:
            return self.reply(200, sorted(store.subjects))
        if len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
            try:
                schema_id = int(parts[2])
            except ValueError:
                return self.error(404, 40403, "Schema not found")
            schema = store.schemas.get(schema_id)
            if schema is None:
                return self.error(404, 40403, "Schema not found")
            return self.reply(200, {"schema": schema})
        if len(parts) == 4 and parts[0] == "subjects" and parts[2] == "versions":
            versions = store.subjects.get(parts[1])
            if not versions:
                return self.error(404, 40401, "Subject '%s' not found." % parts[1])
            if parts[3] == "latest":
                index = len(versions)
            else:
                try:
                    index = int(parts[3])
                except ValueError:
                    return self.error(422, 42202, "Invalid version")
                if not 1 <= index <= len(versions):
                    return self.error(404, 40402, "Version %s not found." % parts[3])
            schema_id = versions[index - 1]
            return self.reply(
                200,
                {"subject": parts[1], "version": index, "id": schema_id, "schema": store.schemas[schema_id]},
            )
        return self.error(404, 404, "HTTP 404 Not Found")

    def do_POST(self):
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
            return self.error(404, 404, "HTTP 404 Not Found")
        length = int(self.headers.get("Content-Length", "0"))
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
            schema = body["schema"]
            json.loads(schema)
        except (ValueError, KeyError, TypeError):
            return self.error(422, 42201, "Invalid schema")
        return self.reply(200, {"id": self.store.register(parts[1], schema)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--state", default=None, help="JSON file keeping registered schemas across restarts")
    args = parser.parse_args()
    Handler.store = Store(args.state)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print("schema registry listening on http://%s:%d" % (args.host, server.server_port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
