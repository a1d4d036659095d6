# The device check of `pakd compress` on CUDA (--bf16): text (tiny BERT, the main NLP recipe's
# stages) and vision (the shipped ResNet-18 recipe), --quick; reload in fresh processes; a pytest subset.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}; mkdir -p $OUT; S=$OUT/summary.txt; R=$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a $S
python3 -c "from importlib.metadata import version as v; print('device', {n: v(n) for n in ('pyarrow', 'fsspec', 'anyio', 'idna', 'typer', 'pandas', 'onnx', 'onnxruntime', 'matplotlib', 'jinja2')})" 2>&1 | tail -1 | tee -a $S
if [ -z "${LOCAL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3 | tee -a $S
  export PYTHONPATH=/tmp/site:$R/.dev/assets:$R
  mkdir -p /usr/share/datasets/fashion-mnist && cp .dev/fmnist/* /usr/share/datasets/fashion-mnist/
  FLAGS="--bf16"; BENCH="--benchmark-device cuda"
else
  export PYTHONPATH=$R/.dev/assets:$R; FLAGS=""; BENCH=""
fi
python3 -c "import torch, transformers, datasets, accelerate, evaluate, huggingface_hub, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), '| transformers', transformers.__version__, 'datasets', datasets.__version__, 'accelerate', accelerate.__version__, 'hub', huggingface_hub.__version__, 'ort', onnxruntime.__version__)" 2>&1 | tail -2 | tee -a $S
sed "s#TEACHER_DIR#$R/.dev/teacher#" .dev/tiny-rt.yaml > /tmp/tiny-rt.yaml
t0=$(date +%s)
timeout 180 python3 -m pakd_hf compress /tmp/tiny-rt.yaml --output-dir /tmp/rt --quick $FLAGS > $OUT/rt.log 2>&1
echo "text compress rc=$? in $(( $(date +%s) - t0 )) s" | tee -a $S
python3 - /tmp/rt/report.json <<'PY' 2>&1 | tee -a $S
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r.get(k) for k in ("training_overrides", "accuracy_teacher", "accuracy_student", "accuracy_student_validation", "size_ratio", "benchmark_device", "compress_seconds")})
PY
cp /tmp/rt/report.json $OUT/rt-report.json 2>/dev/null
[ -z "${LOCAL:-}" ] && timeout 60 python3 .dev/reload.py /tmp/rt/student text 2>&1 | grep '^\[' | tee -a $S
t0=$(date +%s)
timeout 200 python3 -m pakd_hf compress recipes/vision/fashion-mnist-resnet18.yaml --output-dir /tmp/fm --quick $FLAGS $BENCH > $OUT/fm.log 2>&1
echo "vision compress rc=$? in $(( $(date +%s) - t0 )) s" | tee -a $S
python3 - /tmp/fm/report.json <<'PY' 2>&1 | tee -a $S
import json, sys
r = json.load(open(sys.argv[1]))
print({k: r.get(k) for k in ("training_overrides", "accuracy_teacher", "accuracy_student", "accuracy_student_int8", "size_ratio", "size_ratio_int8", "benchmark_device", "speedup_b1", "speedup_b32", "compress_seconds")})
PY
cp /tmp/fm/report.json $OUT/fm-report.json 2>/dev/null
[ -z "${LOCAL:-}" ] && timeout 60 python3 .dev/reload.py /tmp/fm/student image 2>&1 | grep '^\[' | tee -a $S
[ -n "${LOCAL:-}" ] && exit 0
timeout ${PYTEST_S:-170} python3 -m pytest -v -p no:cacheprovider tests/test_trainer.py tests/test_distill.py tests/test_prune_trainer.py tests/test_rotate.py tests/test_vocab_trainer.py tests/test_checkpoints.py tests/test_compress.py > $OUT/pytest.log 2>&1
echo "pytest rc=$?: $(tail -1 $OUT/pytest.log)" | tee -a $S
grep -E "(FAILED|ERROR)" $OUT/pytest.log | head -20 | tee -a $S
