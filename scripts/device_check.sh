#!/usr/bin/env bash
# The GPU checks of zsl-gen in one call, for a session lent a GPU machine (see README, "GPU check").
# The machine has PyTorch and Lightning but not Hydra/OmegaConf, and cannot fetch anything: `prepare` packs
# their wheels and the real xlsa17 semantics into .device/ (git-ignored) here; `run` does the checks there.
#
#   bash scripts/device_check.sh prepare          # here, once: .device/whl/*.whl, .device/xlsa17/<DS>/att_splits.mat
#   bash scripts/device_check.sh run              # there (carry .device), results and logs under $OUT
#   DEVICE=cpu TINY=1 bash scripts/device_check.sh run   # the same steps on this CPU, tiny (checks the script)
#
# `run` does, each step logged and timed, none stopping the others:
#   1. the machine: nvidia-smi, torch, the GPU's bf16 support;
#   2. every generator trained for 2 epochs with trainer=gpu (fp32, then bf16 for three of them), each run's
#      exported generator then evaluated on the CPU with zsl-eval (a GPU-trained generator reused without one);
#   3. zsl-bench on the GPU at CUB shapes, all five methods, fp32 and bf16 (real CUB semantics from the kit).
set -uo pipefail
mode=${1:-run}
kit=.device
cd "$(dirname "$0")/.."

if [ "$mode" = prepare ]; then
  set -e
  shared=${SHARED:-$(cd .. && pwd)/shared}
  exclude=$(git rev-parse --git-path info/exclude)  # (a worktree's or submodule's .git is a file)
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.device/' "$exclude" 2>/dev/null || echo '/.device/' >> "$exclude"
  rm -rf "$kit" && mkdir -p "$kit/whl"
  # the device's python is 3.12; hydra's antlr4 runtime is a source distribution only: built here (pure Python)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$kit/whl" hydra-core==1.3.2 omegaconf==2.3.0
  python3 -m pip wheel -q --no-deps -w "$kit/whl" antlr4-python3-runtime==4.9.3
  for ds in CUB AWA2 SUN; do
    if [ -f "$shared/data/xlsa17/$ds/att_splits.mat" ]; then
      mkdir -p "$kit/xlsa17/$ds" && cp "$shared/data/xlsa17/$ds/att_splits.mat" "$kit/xlsa17/$ds/"
    fi
  done
  du -sh "$kit"
  echo "next: run(command='bash scripts/device_check.sh run', carry=['.device'], timeout_s=540)"
  exit 0
fi
[ "$mode" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }

out=${OUT:-outputs/device_check}
mkdir -p "$out"
device=${DEVICE:-cuda}
trainer=$([ "$device" = cuda ] && echo gpu || echo cpu)
runs=$(mktemp -d)
if ! python3 -c "import hydra, omegaconf" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$kit"/whl/*.whl || { echo "no Hydra and no wheels: run 'bash scripts/device_check.sh prepare' here first"; exit 2; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 WANDB_MODE=disabled
# what zsl-gen imports on the paths below (the GPU image had all of these, except Hydra/OmegaConf, in 2026-11)
missing=$(python3 -c "
import importlib.util as u
need = ['torch', 'pytorch_lightning', 'torchmetrics', 'numpy', 'scipy', 'h5py', 'safetensors', 'yaml',
        'hydra', 'omegaconf']
print(' '.join(n for n in need if u.find_spec(n) is None))")
[ -z "$missing" ] || { echo "missing Python packages: $missing (carry their wheels: see the device README)"; exit 2; }
log=$out/device_check.log
: > "$log"
failed=0
step() {  # step <name> <command...>: run, log, time; a failure is counted, not fatal
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$log"
  if "$@" >> "$log" 2>&1; then echo "   ok ($((SECONDS - t0)) s)" | tee -a "$log"
  else echo "   FAILED ($((SECONDS - t0)) s, exit $?)" | tee -a "$log"; failed=$((failed + 1)); fi
}

step machine bash -c "nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'; python3 -c \"
import torch, zsl_gen.runtime as r
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'bf16 native', r.native_bf16('$device'))\""

set_tiny() {  # set_tiny <generator>: smaller networks for TINY=1 (CADA-VAE has no hidden_dim: its sizes are per VAE)
  [ -n "${TINY:-}" ] || return 0
  if [ "$1" = cadavae ]; then
    tiny=(generator.syn_num=50 generator.system.n_latent_seen=50 generator.system.feature_enc_hidden=64
          generator.system.feature_dec_hidden=64 generator.system.semantic_enc_hidden=64
          generator.system.semantic_dec_hidden=64)
  else
    tiny=(generator.system.hidden_dim=64 generator.syn_num=50)
  fi
}
for g in cvae fclswgan fvaegan tfvaegan cadavae; do
  tiny=(); set_tiny "$g"
  step "train $g on $device" python3 -m zsl_gen.cli.train "trainer=$trainer" "generator=$g" generator.epochs=2 \
    classifier.epochs=3 ${tiny[@]+"${tiny[@]}"} "hydra.run.dir=$runs/$g"
  step "evaluate $g's export on cpu" python3 -m zsl_gen.cli.evaluate "generator=$runs/$g/generator" device=cpu \
    "hydra.run.dir=$runs/$g/eval_cpu"
done
for g in cvae fclswgan cadavae; do  # cvae: a BCE reconstruction, which CUDA autocast refuses unless run outside it
  tiny=(); set_tiny "$g"
  step "train $g on $device, bf16" python3 -m zsl_gen.cli.train "trainer=$trainer" "generator=$g" precision=bf16 \
    generator.epochs=2 classifier.epochs=3 ${tiny[@]+"${tiny[@]}"} "hydra.run.dir=$runs/${g}_bf16"
done
python3 - "$runs" > "$out/runs.json" <<'EOF'
import json, sys
from pathlib import Path
rows = {}
for f in sorted(Path(sys.argv[1]).glob("**/results.json")):
    r = json.loads(f.read_text())
    rows[str(f.parent.relative_to(sys.argv[1]))] = {
        "device": r.get("device"), "results": r.get("results"), "versions": r.get("versions"), "timing": r.get("timing"),
        "trainer": ((r.get("config") or {}).get("trainer") or {}).get("accelerator"),
        "precision": ((r.get("config") or {}).get("trainer") or {}).get("precision"),
        "classifier_precision": ((r.get("config") or {}).get("classifier") or {}).get("precision")}
print(json.dumps(rows, indent=1, default=str))
EOF

if [ -n "${TINY:-}" ]; then
  bench=(--tiny --methods cvae,cadavae --steps 2 --warmup 1)
else
  bench=(--methods fclswgan,cadavae,cvae,fvaegan,tfvaegan --datasets CUB --precision fp32,bf16 --steps 12 --warmup 3)
fi
step "zsl-bench on $device" python3 -m zsl_gen.bench --device "$device" --data-root "$kit" "${bench[@]}" \
  --cache "$runs/bench-cache" --out "$out/bench_$device.json"
rm -rf "$runs"
echo "device check: $failed step(s) failed; log $log" | tee -a "$log"
[ "$failed" -eq 0 ]
