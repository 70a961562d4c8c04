"""Tools beside the pipeline (scripts/README.md): run from the checkout's root as `python -m scripts.NAME`."""
