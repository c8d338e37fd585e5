"""The Mellum 2 architecture in PyTorch.

``config`` (pure Python, no torch) · ``norm`` · ``rope`` · ``attention`` · ``moe`` · ``block`` ·
``mellum`` (the model and its pure forward) · ``mtp`` (the draft layer) · ``kv`` (the KV cache).
Import from the submodules; this package imports nothing so that ``config`` stays torch-free.
"""
