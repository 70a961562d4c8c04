"""The CPU demo's own pieces, not PSA: the synthetic dataset (`data`) and the pre-training that stands in
for ImageNet (`pretrain`). `psa_baseline/` holds PSA alone."""
