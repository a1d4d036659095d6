set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
S=$OUT/summary.txt; R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3 | tee -a $S
export PYTHONPATH=/tmp/site:$R/.dev/assets:$R
timeout ${PYTEST_S:-180} python3 -m pytest -v -p no:cacheprovider tests/test_compress_ddp.py tests/test_ddp.py > $OUT/pytest3.log 2>&1
echo "pytest rc=$?: $(tail -1 $OUT/pytest3.log)" | tee -a $S
grep -E "(PASSED|FAILED|ERROR)" $OUT/pytest3.log | head -20 | tee -a $S
grep -E "^E  " $OUT/pytest3.log | head -30 | tee -a $S
