"""Export of Mellum checkpoints to ONNX Runtime folders (needs torch, onnx and onnxscript).

``ops`` (custom torch ops and their ONNX translations) · ``onnx_export`` (the export-path model
and the graph contract) · ``quantize`` (MatMulNBits, QMoE) · ``genai`` (genai_config.json) ·
``verify`` (parity with PyTorch) · ``cli`` (``mellum-lsp export``). The runtime side is
``engine.backends.ort_backend``, which imports nothing from here.
"""
