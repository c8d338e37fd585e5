--- Mellum for Neovim 0.7+: local code suggestions, code actions and chat from `mellum-lsp serve`.
---
---   require("mellum").setup({
---     cmd = { "mellum-lsp", "serve" },          -- the default; or an absolute path
---     settings = { completion = { maxTokens = 64 } },  -- the server's "mellum" settings
---   })
---
--- How suggestions appear depends on the Neovim version (`inline = "auto"`):
---   0.12+      "native":     the built-in vim.lsp.inline_completion (ghost text)
---   0.10–0.11  "plugin":     ghost text drawn by this plugin (namespace "mellum.inline")
---   0.7–0.9    "completion": one "Mellum AI" item in the completion menu (<C-x><C-o>)
--- Keys (Insert mode, ghost text only; set a key to false to leave it unmapped): accept <Tab>,
--- accept_word <M-Right>, next <M-]>, prev <M-[>, dismiss <C-]>.
--- Code actions: vim.lsp.buf.code_action(). Commands: :MellumChat {question} (with a range:
--- about those lines), :[range]MellumEdit {instruction}, :MellumStatus.
---
--- Offers: `defaults`, `setup(opts)`, `inline_mode(requested)`, `missing_command(cmd)`,
--- `client_config(opts, bufnr, mode)`.
local compat = require("mellum.compat")

local M = {}

M.defaults = {
  cmd = { "mellum-lsp", "serve" },
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust", "java", "c", "cpp" },
  root_markers = { ".git", "pyproject.toml", "setup.py", "package.json", "go.mod", "Cargo.toml", "pom.xml", "build.gradle" },
  settings = {}, -- the "mellum" section: model = { path = ... }, completion = { ... }, context = { ... }
  inline = "auto", -- "auto" | "native" | "plugin" | "completion" | "off"
  debounce_ms = 120, -- ghost text drawn by the plugin: delay after the last keystroke
  keymaps = { accept = "<Tab>", accept_word = "<M-Right>", next = "<M-]>", prev = "<M-[>", dismiss = "<C-]>" },
}

--- How suggestions are shown on this Neovim, given the `inline` option.
function M.inline_mode(requested)
  if requested == "off" or requested == false then
    return "off"
  end
  local native = vim.lsp.inline_completion ~= nil
  if native and (requested == "auto" or requested == "native") then
    return "native"
  end
  if compat.has("0.10") and requested ~= "completion" then
    return "plugin"
  end
  return "completion"
end

--- An error message if the server command cannot be run, else nil.
function M.missing_command(cmd)
  local exe = cmd[1]
  if type(exe) == "string" and vim.fn.executable(exe) == 1 then
    return nil
  end
  return table.concat({
    ("mellum: cannot start the language server: %q is not an executable file"):format(tostring(exe)),
    (exe and not tostring(exe):find("/")) and " on $PATH." or ".",
    " Install it with `pipx install mellum-lsp` (puts mellum-lsp in ~/.local/bin),",
    " or put the bin folder of the virtualenv that has it on $PATH, or give its full path:",
    ' require("mellum").setup({ cmd = { "/path/to/.venv/bin/mellum-lsp", "serve" } }).',
    " `mellum-lsp doctor` checks the installation.",
  })
end

local function as_object(t)
  return (type(t) ~= "table" or next(t) ~= nil) and t or vim.empty_dict() -- {} would be sent as []
end

local function attach(client, bufnr, mode, opts)
  if mode == "native" then
    require("mellum.native").attach(client, bufnr, opts)
  elseif mode == "plugin" then
    require("mellum.ghost").attach(client, bufnr, opts)
  elseif mode == "completion" then
    require("mellum.completion").attach(client, bufnr)
  end
end

--- The vim.lsp client configuration for `bufnr`.
function M.client_config(opts, bufnr, mode)
  local name = vim.api.nvim_buf_get_name(bufnr)
  local settings = as_object(opts.settings)
  local config = {
    name = "mellum",
    cmd = opts.cmd,
    root_dir = name ~= "" and compat.root_dir(name, opts.root_markers) or vim.fn.getcwd(),
    init_options = { mellum = settings },
    settings = { mellum = settings }, -- answers workspace/configuration
    handlers = { ["mellum/chatChunk"] = require("mellum.chat").on_chunk },
    on_attach = function(client, b)
      attach(client, b, mode, opts)
    end,
  }
  if mode == "plugin" then -- announce inline completion, so the server sends no completion item
    local capabilities = vim.lsp.protocol.make_client_capabilities()
    capabilities.textDocument.inlineCompletion = capabilities.textDocument.inlineCompletion
      or { dynamicRegistration = false }
    config.capabilities = capabilities
  end
  return config
end

local function start(opts, mode, bufnr, state)
  if vim.bo[bufnr].buftype ~= "" then
    return
  end
  local problem = M.missing_command(opts.cmd)
  if problem then
    if not state.warned then
      state.warned = true
      vim.notify(problem, vim.log.levels.ERROR)
    end
    return
  end
  compat.start(M.client_config(opts, bufnr, mode), bufnr)
end

local function range_of(command_opts, bufnr)
  if command_opts.range == 0 then
    return nil
  end
  local client = compat.clients(bufnr, "mellum")[1]
  local encoding = client and client.offset_encoding or "utf-16"
  return require("mellum.edit").line_range(bufnr, command_opts.line1, command_opts.line2, encoding)
end

local function commands()
  vim.api.nvim_create_user_command("MellumChat", function(c)
    local bufnr = vim.api.nvim_get_current_buf()
    require("mellum.chat").ask(c.args, bufnr, range_of(c, bufnr))
  end, { nargs = "+", range = true, desc = "Ask Mellum about this file (or the lines of a range)" })
  vim.api.nvim_create_user_command("MellumEdit", function(c)
    require("mellum.edit").run(c.args, vim.api.nvim_get_current_buf(), c.line1, c.line2)
  end, { nargs = "+", range = true, desc = "Rewrite the lines of the range (default: this line)" })
  vim.api.nvim_create_user_command("MellumStatus", function()
    local client = compat.clients(0, "mellum")[1]
    if not client then
      vim.notify("mellum: no Mellum server in this buffer", vim.log.levels.WARN)
      return
    end
    compat.request(client, "mellum/status", vim.empty_dict(), function(err, result)
      vim.notify(err and ("mellum: " .. err.message) or vim.inspect(result))
    end, 0)
  end, { desc = "Show the Mellum server's status" })
end

function M.setup(opts)
  opts = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  if opts.keymaps == false then
    opts.keymaps = {}
  end
  local mode = M.inline_mode(opts.inline)
  if opts.inline == "plugin" and mode ~= "plugin" then
    vim.notify("mellum: inline = \"plugin\" needs Neovim 0.10+; using the completion item", vim.log.levels.WARN)
  end
  local state = { warned = false }
  local group = vim.api.nvim_create_augroup("mellum", { clear = true })
  vim.api.nvim_create_autocmd("FileType", {
    group = group,
    pattern = opts.filetypes,
    callback = function(args)
      start(opts, mode, args.buf, state)
    end,
  })
  commands()
  -- buffers opened before setup() ran (e.g. when the plugin is loaded lazily)
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) and vim.tbl_contains(opts.filetypes, vim.bo[bufnr].filetype) then
      start(opts, mode, bufnr, state)
    end
  end
  return mode
end

return M
