--- `:MellumEdit {instruction}`: rewrite the lines of a range (default: the cursor line).
---
--- Sends the custom request `mellum/edit` with `{ textDocument = { uri }, range, instruction }`.
--- The server answers with a WorkspaceEdit, applied here, or with null after applying the edit
--- itself through `workspace/applyEdit` (which Neovim handles).
---
--- Offers: `line_range(bufnr, first, last, encoding)`, `run(instruction, bufnr, first, last)`.
local compat = require("mellum.compat")

local M = {}

--- The LSP Range covering lines `first`..`last` (1-based, inclusive), in `encoding`.
function M.line_range(bufnr, first, last, encoding)
  local last_line = vim.api.nvim_buf_get_lines(bufnr, last - 1, last, false)[1] or ""
  return {
    start = { line = first - 1, character = 0 },
    ["end"] = { line = last - 1, character = compat.char_len(last_line, encoding) },
  }
end

function M.run(instruction, bufnr, first, last)
  local client = compat.clients(bufnr, "mellum")[1]
  if not client then
    vim.notify("mellum: no Mellum server in this buffer (open a file of a configured filetype)", vim.log.levels.ERROR)
    return
  end
  local encoding = client.offset_encoding or "utf-16"
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(bufnr) },
    range = M.line_range(bufnr, first, last, encoding),
    instruction = instruction,
  }
  compat.request(client, "mellum/edit", params, function(err, result)
    if err then
      vim.notify("mellum: edit failed: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    elseif type(result) == "table" and (result.changes or result.documentChanges) then
      vim.lsp.util.apply_workspace_edit(result, encoding)
    end
  end, bufnr)
end

return M
