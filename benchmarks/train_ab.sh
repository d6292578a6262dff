#!/usr/bin/env bash
# The training step of an older commit against the working tree, alternating on the same
# machine (its speed drifts by 10-35% over minutes, so figures taken apart are not comparable).
#
#   benchmarks/train_ab.sh REV [REPEATS] [-- extra benchmarks/train.py arguments]
#   benchmarks/train_ab.sh 800bd76 2 -- --preset reference-64 --min-seconds 60 --min-iters 6
#
# For each repeat and each ARCH in ${AB_ARCHS:-skip orig}: REV's benchmarks/train.py, then the
# working tree's, each in its own process with its own checkout first on sys.path (a git
# worktree of REV under ${AB_WORKTREE:-.ab/REV in the repository}). Prints one JSON line per run:
# {"rep", "code": "REV" | "worktree", "arch", "end_utc", "result": <benchmarks/train.py's JSON line>}.
set -euo pipefail
rev=${1:?usage: benchmarks/train_ab.sh REV [REPEATS] [-- train.py arguments]}
shift
repeats=1
if [[ $# -gt 0 && $1 != "--" ]]; then repeats=$1; shift; fi
[[ $# -gt 0 && $1 == "--" ]] && shift
extra=("$@")
[[ ${#extra[@]} -gt 0 ]] || extra=(--preset reference-64 --min-seconds 60 --min-iters 6)

repo=$(cd "$(dirname "$0")/.." && pwd)
sha=$(git -C "$repo" rev-parse --verify "$rev^{commit}")
tree=${AB_WORKTREE:-$repo/.ab/${sha:0:12}}
if [[ ! -d $tree ]]; then
  git -C "$repo" worktree add --detach -f "$tree" "$sha" >/dev/null 2>&1
fi
py=${PYTHON:-python}

for rep in $(seq 1 "$repeats"); do
  for arch in ${AB_ARCHS:-skip orig}; do
    for code in "$rev" worktree; do
      root=$repo
      [[ $code == worktree ]] || root=$tree
      # the script's own folder is sys.path[0]; PYTHONPATH puts its checkout before the
      # editable install of the working tree
      line=$(PYTHONPATH=$root "$py" "$root/benchmarks/train.py" "${extra[@]}" --architecture "$arch" 2>/dev/null | tail -1)
      [[ -n $line ]] || line=null
      printf '{"rep": %d, "code": "%s", "arch": "%s", "end_utc": "%s", "result": %s}\n' \
        "$rep" "$code" "$arch" "$(date -u +%FT%TZ)" "$line"
    done
  done
done
