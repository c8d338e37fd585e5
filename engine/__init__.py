"""The mellum-lsp engine: the model, its KV cache, generation and the engine process.

Knows no editor. Runs on ONNX Runtime (default when an export is present), PyTorch (reference)
or a remote OpenAI-compatible server.
"""
