-- Mellum for Neovim: local FIM suggestions from `mellum-lsp serve`.
--
--   require("mellum").setup({ settings = { completion = { maxTokens = 64 } } })
--
-- Put this file on your runtimepath as lua/mellum.lua. Inline (ghost text) suggestions need
-- Neovim 0.12+, which implements textDocument/inlineCompletion:
--   vim.lsp.inline_completion.enable()                  -- show suggestions as you type
--   vim.keymap.set("i", "<C-l>", vim.lsp.inline_completion.get)  -- accept the suggestion
--   vim.keymap.set("i", "<M-]>", function() vim.lsp.inline_completion.select({ count = 1 }) end)
-- On older versions the server offers the suggestion as one completion item instead
-- (labelled "Mellum AI", sorted first): use your completion menu (or <C-x><C-o>).
local M = {}

M.defaults = {
  cmd = { "mellum-lsp", "serve" },
  filetypes = { "python", "javascript", "typescript", "typescriptreact", "go", "rust", "java", "c", "cpp" },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml", "pom.xml" },
  settings = {}, -- the "mellum" section: model = { path = ... }, completion = { ... }, context = { ... }
}

function M.setup(opts)
  opts = vim.tbl_deep_extend("force", M.defaults, opts or {})
  vim.api.nvim_create_autocmd("FileType", {
    group = vim.api.nvim_create_augroup("mellum-lsp", { clear = true }),
    pattern = opts.filetypes,
    callback = function(args)
      vim.lsp.start({
        name = "mellum",
        cmd = opts.cmd,
        root_dir = vim.fs.root(args.buf, opts.root_markers) or vim.fn.getcwd(),
        init_options = { mellum = opts.settings },
        settings = { mellum = opts.settings }, -- answers workspace/configuration
      }, { bufnr = args.buf })
      if vim.lsp.inline_completion then
        vim.lsp.inline_completion.enable(true, { bufnr = args.buf })
      end
    end,
  })
end

return M
