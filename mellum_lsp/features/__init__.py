"""The language server's features: one module per LSP method group, each with `register(server)`
and thin handlers over pure functions (wired in ``server.py``).

- lifecycle.py: initialize/initialized/shutdown, settings, workspace folders and indexing.
- sync.py: document sync, watched files.
- inline.py: inline completion and the completion fallback, one shared path.
- commands.py: feedback commands (local counters). status.py: mellum/* requests.
- state.py: `MellumServer`, the state the features share.
- completions.py: per-request policy (typed-along, supersede, debounce, engine call).
- pipeline.py, debounce.py, suggestions.py, items.py: pure pieces of it.
- workspace.py: repository indexes, context caches and recent snippets per workspace folder.
- transport.py, protocol.py, progress.py: JSON-RPC loop, pygls protocol, work-done progress.
"""
