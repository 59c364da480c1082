"""Weights in and out: `load` (native, official and timm files; `load_model`, `save_model`), `native`
(safetensors with the config in its header), `official` (the released `.pth` files), `export` and `onnx`."""
