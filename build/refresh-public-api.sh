#!/usr/bin/env bash
# Records the public API of the packages in src/*/PublicAPI.Unshipped.txt (Microsoft.CodeAnalysis.PublicApiAnalyzers):
# builds each package once with the analyzers' errors demoted to warnings, adds every symbol reported as RS0016
# ("not part of the declared public API") and removes every entry reported as RS0017 ("is part of the declared API,
# but is either not public or could not be found"). Review the diff: it is the change of the public API.
# Usage: build/refresh-public-api.sh            (all packages under src/)
#        build/refresh-public-api.sh src/MdtDist.Core/MdtDist.Core.csproj
set -euo pipefail
cd "$(dirname "$0")/.."
projects=("$@")
if [ ${#projects[@]} -eq 0 ]; then projects=(src/*/*.csproj); fi
for proj in "${projects[@]}"; do
  dir=$(dirname "$proj")
  unshipped="$dir/PublicAPI.Unshipped.txt"
  [ -f "$unshipped" ] || { echo "skip $proj (no PublicAPI.Unshipped.txt)"; continue; }
  log=$(mktemp)
  dotnet build "$proj" --no-incremental -p:TreatWarningsAsErrors=false -v q -clp:NoSummary > "$log" 2>&1 || true
  full=$(cd "$dir" && pwd)/$(basename "$proj")
  added=$(grep -F "[$full]" "$log" | grep -oP "RS0016: Symbol '\K.*(?=' is not part of the declared public API)" | sort -u || true)
  removed=$(grep -F "[$full]" "$log" | grep -oP "RS0017: Symbol '\K.*(?=' is part of the declared API)" | sort -u || true)
  rm -f "$log"
  tmp=$(mktemp)
  { grep -v -x -F '#nullable enable' "$unshipped" | grep -v '^$' || true; printf '%s\n' "$added"; } \
    | grep -v '^$' | grep -v -x -F -f <(printf '%s\n' "$removed" | grep -v '^$' || printf '\001\n') | LC_ALL=C sort -u > "$tmp" || true
  { echo '#nullable enable'; cat "$tmp"; } > "$unshipped"
  rm -f "$tmp"
  echo "$proj: +$(printf '%s' "$added" | grep -c . || true) -$(printf '%s' "$removed" | grep -c . || true) -> $(grep -vc '#nullable' "$unshipped") entries unshipped"
done
