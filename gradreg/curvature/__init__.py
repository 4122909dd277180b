"""Curvature: diagonal Fisher estimators (`fisher`), their per-layer rules (`layer_rules`),
and the finite-difference gradient of VL's regulariser (`finite_difference`)."""
