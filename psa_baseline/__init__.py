"""PSA baseline (Ahn & Kwak, CVPR 2018): WideResNet-38 CAMs, AffinityNet, random walk, evaluation."""
