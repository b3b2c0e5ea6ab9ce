#!/usr/bin/env bash
# The README's results table: every method's CUB recipe (experiment=<method>_cub) on simulated CUB features
# (real CUB attributes and splits from ../shared/data/xlsa17/CUB, format-exact simulated res101.mat).
# EPOCHS_<METHOD> truncates the published schedule (CPU budget); evaluation once, at the last epoch.
# METHODS (space-separated) picks rows; SEED sets the seed (default: each recipe's own); EXTRA adds Hydra
# overrides to every run (e.g. "trainer.precision=bf16-mixed classifier.precision=bf16") and TAG names them.
# Usage: bash scripts/cub_simulated_results.sh [out_dir]   (then: zsl-report <out_dir>/runs)
#   e.g. METHODS="cadavae" EPOCHS_CADAVAE=100 bash scripts/cub_simulated_results.sh
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0;; -*) echo "error: unknown option $1 (usage: bash $0 [out_dir])" >&2; exit 2;; esac
out=${1:-outputs/cub_simulated}
shared=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
declare -A EPOCHS=([eszsl]=0 [cadavae]=${EPOCHS_CADAVAE:-6} [cvae]=${EPOCHS_CVAE:-6} [fclswgan]=${EPOCHS_FCLSWGAN:-2} \
                   [fvaegan]=${EPOCHS_FVAEGAN:-2} [tfvaegan]=${EPOCHS_TFVAEGAN:-1})
for method in ${METHODS:-eszsl cadavae cvae fclswgan fvaegan tfvaegan}; do
  if [ -z "${EPOCHS[$method]+set}" ]; then
    echo "error: METHODS: no method '$method'; the methods are ${!EPOCHS[*]}" >&2; exit 2
  fi
done
mkdir -p "$out"
[ -f "$out/CUB/res101.mat" ] || zsl-data simulate --att-splits "$shared/data/xlsa17/CUB/att_splits.mat" \
  --out "$out/CUB" --feature-dim 2048 --seed 0
failed=0
for method in ${METHODS:-eszsl cadavae cvae fclswgan fvaegan tfvaegan}; do
  if [ "$method" = eszsl ]; then
    args=(generator=eszsl dataset=cub)
  else
    e=${EPOCHS[$method]}
    args=(experiment=${method}_cub generator.epochs=$e eval_every=$e)
  fi
  [ -n "${SEED:-}" ] && args+=(seed=$SEED)
  read -r -a extra <<< "${EXTRA:-}"
  name=$method${TAG:+_$TAG}${SEED:+_seed$SEED}
  if [ -e "$out/runs/$name/results.json" ] || [ -d "$out/runs/$name/checkpoints" ]; then
    echo "$method: $out/runs/$name already holds a run (zsl-train would refuse it): remove it or set another TAG"
    continue
  fi
  zsl-train "${args[@]}" "${extra[@]}" data_dir="$out/CUB" logger=none hydra.run.dir="$out/runs/$name" \
    > "$out/$name.log" 2>&1 || { echo "$method failed: see $out/$name.log"; failed=$((failed + 1)); }
  grep -a -A4 "^zsl-gen ·" "$out/$name.log" || true
done
[ "$failed" -eq 0 ] || { echo "$failed run(s) failed" >&2; exit 1; }
