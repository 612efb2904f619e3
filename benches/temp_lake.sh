# Sourced by the whole-process bench scripts: the shipped graph moved into a fresh temporary folder
# (its schema, blocklist and plugin paths go with it), with its lakehouse there too. Sets `work`
# (removed on exit) and `bin` (the release runtime).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r graphs/schemas graphs/blocklists "$work/"
sed -e "s|../.lakehouse/catalog.db|$work/catalog.db|" -e "s|../.lakehouse/warehouse|$work/warehouse|" \
    -e "s|../plugins/lib/|$PWD/plugins/lib/|" graphs/ratings.toml > "$work/graph.toml"
bin=${CARGO_TARGET_DIR:-target}/release/runtime
