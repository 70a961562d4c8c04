# Sourced by scripts/gpu_check.sh and scripts/gpu_demo.sh (needs PY and G=.gpu folder): on a lent GPU machine
# (no internet, no pydensecrf) install pydensecrf2 and segmentation-models-pytorch from the files carried in
# .gpu/ into a temporary folder, and put it and the repository on PYTHONPATH. Nothing to do where both import.
if ! $PY -c "import pydensecrf.densecrf, segmentation_models_pytorch" 2>/dev/null; then
    S=$(mktemp -d)
    $PY -m pip install -q --no-build-isolation --no-deps --target "$S" "$G"/pydensecrf2-1.1.tar.gz \
        "$G"/segmentation_models_pytorch-0.6.0-py3-none-any.whl || exit 1
    export PYTHONPATH=$S:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-}:$PWD
