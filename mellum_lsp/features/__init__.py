"""The language server's features, one module per idea (handlers stay in ``server.py``).

- transport.py: JSON-RPC message loop that answers malformed input.
- protocol.py: pygls' protocol with our document store, position encoding and param errors.
- pipeline.py: document snapshot -> engine params; engine text -> suggestion (pure).
- completions.py: per-request policy (typed-along, supersede, debounce, engine call).
- debounce.py, suggestions.py, items.py: pure pieces of it.
- workspace.py: repository indexes, context caches and recent snippets per workspace folder.
- progress.py: server-initiated work-done progress.
"""
