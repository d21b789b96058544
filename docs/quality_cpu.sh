#!/usr/bin/env bash
# Reduced quality comparison on CPU (QUALITY.md): the plain path against the fast-CPU path, 3 seeds
# each, equal steps, FID with default_1.pt (the real statistics of celeba-2k at 32x32 are computed
# on first use and cached). Then python -m fastdcgan.fid on a trained and an untrained checkpoint.
#   FASTDCGAN_FID_WEIGHTS=/path/default_1.pt nice -n 10 docs/quality_cpu.sh > quality.log 2>&1
#   python docs/plot_quality.py runs/quality-cpu docs/quality_fid.png
set -uo pipefail
cd "$(dirname "$0")/.."
W=${FASTDCGAN_FID_WEIGHTS:?set FASTDCGAN_FID_WEIGHTS to default_1.pt (see README)}
DATA=${DATA:-../shared/data/celeba-2k}
OUT=${OUT:-runs/quality-cpu}
mkdir -p "$OUT"
COMMON="data.root=$DATA data.image_size=32 data.workers=1 model.ngf=16 model.ndf=16 train.batch_size=64
  train.epochs=1000 train.max_steps=300 log.every=25 sample.every=150 ckpt.every=150 ckpt.keep=2
  fid.every=100 fid.n=200 fid.batch=50 fid.weights=$W device=cpu"
PLAIN="data.backend=torch precision=fp32 compile=off channels_last=false cuda_graphs=false"
FAST="data.backend=torch precision=fp32 compile=default channels_last=true cuda_graphs=true"
T='%e s wall, %U s user, %S s sys'
for seed in 0 1 2; do
  for path in plain fast; do
    sw=$PLAIN; [ $path = fast ] && sw=$FAST
    echo "== $path seed $seed: python -m fastdcgan.train $COMMON $sw train.seed=$seed train.run_dir=$OUT/$path-s$seed" | tr -s ' \n' ' '
    echo
    /usr/bin/time -f "$T" python -m fastdcgan.train $COMMON $sw train.seed=$seed train.run_dir=$OUT/$path-s$seed \
      > "$OUT/$path-s$seed.log" 2>&1
    tail -n 2 "$OUT/$path-s$seed.log"
  done
done
echo "== untrained checkpoint (1 step), plain settings, seed 0"
/usr/bin/time -f "$T" python -m fastdcgan.train $COMMON $PLAIN fid.every=0 train.seed=0 train.max_steps=1 \
  train.run_dir=$OUT/init-s0 > "$OUT/init-s0.log" 2>&1
for ck in init-s0 plain-s0; do
  echo "== python -m fastdcgan.fid --checkpoint $OUT/$ck --n 500 --batch 50 --weights $W"
  /usr/bin/time -f "$T" python -m fastdcgan.fid --checkpoint $OUT/$ck --n 500 --batch 50 --weights $W 2>&1 | tail -n 3
done
echo "== estimator noise: plain-s0 final, n=200, noise seeds 1 and 2 (training used seed 0)"
for s in 1 2; do
  python -m fastdcgan.fid --checkpoint $OUT/plain-s0 --n 200 --batch 50 --seed $s --weights $W 2>&1 | tail -n 1
done
echo "== done"
