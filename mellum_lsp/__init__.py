"""mellum-lsp: a language server for fill-in-the-middle completions from Mellum code models."""
