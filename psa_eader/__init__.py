"""EADER (Stammes et al.): end-to-end adversarial erasing as a hook inside a CAM classifier's training."""
