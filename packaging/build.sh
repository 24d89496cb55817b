#!/usr/bin/env bash
# Builds the stripped release binaries and every package of the workspace into
# target/packages/: a .deb (cargo-deb) for each crate with [package.metadata.deb] and an
# .rpm (cargo-generate-rpm) for each with [package.metadata.generate-rpm].
# Needs: cargo-deb, cargo-generate-rpm (cargo install --locked), python3.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/packages
rm -rf "$out"
mkdir -p "$out"

# One line per packaged crate: NAME<TAB>MANIFEST_DIR<TAB>deb|-<TAB>rpm|-
mapfile -t packages < <(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    meta = p.get("metadata") or {}
    deb, rpm = "deb" in meta, "generate-rpm" in meta
    if deb or rpm:
        print("\t".join([p["name"], os.path.dirname(p["manifest_path"]),
                         "deb" if deb else "-", "rpm" if rpm else "-"]))
')
[ "${#packages[@]}" -gt 0 ] || { echo "build.sh: no packaged crates" >&2; exit 1; }

# The simulator's .so ships in the orchard package; a plugin package builds its own crate.
build=(-p orchard-plugin-simulator)
for line in "${packages[@]}"; do
    IFS=$'\t' read -r name _ _ _ <<<"$line"
    build+=(-p "$name")
done
echo "== cargo build --release ${build[*]}"
cargo build --release --locked "${build[@]}"

for line in "${packages[@]}"; do
    IFS=$'\t' read -r name dir deb rpm <<<"$line"
    if [ "$deb" = deb ]; then
        echo "== cargo deb -p $name"
        cargo deb --no-build --locked -p "$name" --output "$out/"
    fi
    if [ "$rpm" = rpm ]; then
        # cargo-generate-rpm's -p takes the crate's directory (none for the root crate).
        rel=${dir#"$PWD"}
        rel=${rel#/}
        echo "== cargo generate-rpm ${rel:+-p $rel} ($name)"
        cargo generate-rpm ${rel:+-p "$rel"} -o "$out/"
    fi
done
ls -l "$out"
