"""Curvature: diagonal Fisher estimators (`fisher`), their per-layer rules (`layer_rules`),
the finite-difference gradient of VL's regulariser (`finite_difference`), and the
arithmetic float32 work runs in, TF32 or not (`precision`)."""
