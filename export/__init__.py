"""Export of Mellum checkpoints to ONNX Runtime folders (needs torch, onnx and onnxscript).

``ops`` (custom torch ops and their ONNX translations) · ``onnx_export`` (the export-path model
and the graph contract) · ``mtp_export`` (mtp.onnx) · ``quantize`` (MatMulNBits, QMoE, from real
or random weights) · ``random_export`` (``--random-config``: a configuration with random weights)
· ``genai`` (genai_config.json) · ``verify`` (parity with PyTorch) · ``cli`` (``mellum-lsp
export``) · ``refresh_embedded`` (the embedded model's export from its safetensors). The runtime
side is ``engine.backends.ort_backend``, which imports nothing from here.
"""
