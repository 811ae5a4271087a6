#!/usr/bin/env bash
# One run on a lent GPU machine (JAX backend: the machine has JAX and PyTorch, no TensorFlow).
# Needs, carried beside the checkout: .whl/ (keras, optree, namex, openslide-python,
# openslide-bin wheels for its Python 3.12) and .device_data/ai4all.tgz (a subset of
# ../shared/data/pcam-ai4all: 6,000 train + all 3,000 valid patches; the whole set does not
# fit the 64 MiB a run may carry). Writes what it measured to $OUT.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD KERAS_BACKEND=jax
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m wsi_saliency info | tee -a "$OUT/gpu.txt"
# 0. Issue 10 first (the device time is short): the largest Camelyon16-like slide, 98,304 x
#    221,184 px, written there (make_large_slides.py's JPEG tiles need an imagecodecs wheel in
#    .whl/), scanned whole with ResNet50 (random weights) + Grad-CAM, the dense map on every
#    patch (the worst case), reading in processes: end to end against model-only, and the
#    command, in $OUT/throughput_h200.json. Goal: under 10 s, ratio >= 0.7.
python3 benchmarks/make_large_slides.py --only c16-98kx221k --cache /tmp/slides \
    --json "$OUT/large_slides_h200.json" 2>&1 | tail -3
timeout 420 python3 benchmarks/bench_throughput.py --slide /tmp/slides/c16-98kx221k.tif \
    --cases resnet50 --readers processes --roi-patches 0 --batch-size 256 --region 2048 \
    --out "$OUT/throughput_h200.json" 2>&1 | grep -E "end_to_end|ratio|model_only_s|wrote"
mkdir -p /tmp/data && tar -xzf .device_data/ai4all.tgz -C /tmp/data
# 1. ResNet50 from scratch on real PCam patches (no ImageNet weights can be fetched there).
#    weights none merges head and fine-tune epochs into one phase: --finetune-epochs 0.
#    (Before the make_augmenter fix, Keras ran the JAX train step uncompiled: 367 s epoch 1.)
( time python3 -m wsi_saliency --device gpu train --data /tmp/data/ai4all --backbone resnet50 \
    --weights none --head-epochs 8 --finetune-epochs 0 --batch-size 128 \
    --set train.lr_schedule=cosine --set train.head_lr=1e-3 --set train.verbose=2 \
    --set train.early_stopping_patience=0 --set data.cache_dir=/tmp/cache \
    --out /tmp/run_resnet50 ) > "$OUT/train.log" 2>&1
tail -25 "$OUT/train.log"
cp /tmp/run_resnet50/metrics.json "$OUT/train_metrics.json"
cp /tmp/run_resnet50/run.json "$OUT/train_run.json"
cp /tmp/run_resnet50/logs/history.csv "$OUT/train_history.csv"
# 2. Large synthetic slides scanned with that model: end-to-end against model-only patches/s,
#    read from a level at the model's 0.972 um/px (as Camelyon16's level 2) and resampled x2
#    from a 0.486 um/px level 0; mixed precision off and auto (on with the GPU).
for mpp in 0.972 0.486; do
  slide=()
  for mp in off auto; do
    python3 benchmarks/bench_scan_large.py --size 24000x19200 --mpp $mpp --workers 16 \
        --batch-size 256 --region 1024 --model /tmp/run_resnet50/model.keras "${slide[@]}" \
        --mixed-precision $mp --json "$OUT/scan_large_resnet50_mpp${mpp}_mp${mp}.json" \
        2>&1 | grep -E "patches_per_s|ratio|total_s" | tr -s ' '
    slide=(--slide "$(ls -td /tmp/bench-scan-large-*/ | head -1)large.tif")  # written once
  done
done
