"""``python -m export``: the same as ``mellum-lsp export``."""

from .cli import main

raise SystemExit(main())
