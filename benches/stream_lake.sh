# Sourced by the stream bench scripts (after setting `bin`, the release build folder):
# `graph_for TOPIC FOLDER` writes the shipped graph, reading TOPIC, into FOLDER with its lakehouse
# there (its schema, blocklist and plugin paths go with it) and creates its tables.
graph_for() { # topic, folder
  mkdir -p "$2"
  cp -r graphs/schemas graphs/blocklists "$2/"
  sed -e "s|../.lakehouse/catalog.db|$2/catalog.db|" -e "s|../.lakehouse/warehouse|$2/warehouse|" \
      -e "s|../plugins/lib/|$PWD/plugins/lib/|" -e "s|^topic = .*|topic = \"$1\"|" graphs/ratings.toml > "$2/graph.toml"
  "$bin/runtime" --graph "$2/graph.toml" init >/dev/null
}
