# Sourced by the GPU session scripts (gpu_session.sh, tp_gpu.sh, from the repo root): $OUT, the wheels
# carried in .whl/ installed into /tmp/site (see README "GPU work"), PYTHONPATH, unbuffered output.
OUT=${OUT:-/tmp/cgwatch-out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
