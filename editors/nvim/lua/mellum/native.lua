--- Inline suggestions on Neovim 0.12+: the built-in `vim.lsp.inline_completion` shows them
--- (extmarks in its namespace "nvim.lsp.inline_completion"); this module only adds the keys.
---
--- Offers: `attach(client, bufnr, opts)`.
local text = require("mellum.text")
local keys = require("mellum.keys")

local M = {}

local function buf_insert(bufnr, s)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local lines = text.lines(s)
  vim.api.nvim_buf_set_text(bufnr, row - 1, col, row - 1, col, lines)
  vim.api.nvim_win_set_cursor(0, { row + #lines - 1, (#lines == 1 and col or 0) + #lines[#lines] })
end

--- Insert the first word of the shown suggestion (the server serves the rest when asked again).
local function accept_word(bufnr)
  local ic = vim.lsp.inline_completion
  return ic.get({
    bufnr = bufnr,
    on_accept = function(item)
      local s = item.insert_text
      s = type(s) == "string" and s or s.value
      if item.range then -- the item replaces its range: drop what is typed already
        local row, col = unpack(vim.api.nvim_win_get_cursor(0))
        local start = item.range.start
        if start.row == row - 1 and start.col < col then
          local typed = vim.api.nvim_get_current_line():sub(start.col + 1, col)
          if s:sub(1, #typed) ~= typed then
            return
          end
          s = s:sub(#typed + 1)
        end
      end
      buf_insert(bufnr, text.next_word(s))
    end,
  })
end

--- Whether the built-in shows a suggestion in `bufnr` (it has no public query for this).
local function shown(bufnr)
  local ns = vim.api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  return ns ~= nil and #vim.api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { limit = 1 }) > 0
end

--- Run `fn` after the mapping returns (mappings may not change text or autocommands).
local function later_if_shown(bufnr, fn)
  if not shown(bufnr) then
    return false
  end
  vim.schedule(fn)
  return true
end

function M.attach(_, bufnr, opts)
  local ic = vim.lsp.inline_completion
  ic.enable(true, { bufnr = bufnr })
  keys.map(bufnr, opts.keymaps, {
    accept = function()
      return ic.get({ bufnr = bufnr })
    end,
    accept_word = function()
      return accept_word(bufnr)
    end,
    next = function()
      return later_if_shown(bufnr, function()
        ic.select({ bufnr = bufnr, count = 1 })
      end)
    end,
    prev = function()
      return later_if_shown(bufnr, function()
        ic.select({ bufnr = bufnr, count = -1 })
      end)
    end,
    dismiss = function()
      return later_if_shown(bufnr, function()
        -- no public "hide": re-enabling drops the shown suggestion and pending requests
        ic.enable(false, { bufnr = bufnr })
        ic.enable(true, { bufnr = bufnr })
      end)
    end,
  })
end

return M
