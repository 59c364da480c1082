"""Inference applications: `Predictor` (arrays in, tensors out), `predict` (files in, files out), and
`pseudolabel` (teachers turning an rgb folder into a multi-modal dataset)."""
