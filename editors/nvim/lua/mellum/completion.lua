--- The suggestion as a completion item, for Neovim without inline virtual text (0.7–0.9).
---
--- The server answers `textDocument/completion` with one "Mellum AI" item (sorted first) when
--- the client does not announce inline completion (`completion.fallback` = "auto").
---
--- `omnifunc` (set as the buffer's 'omnifunc' when that is empty; <C-x><C-o>) asks the Mellum
--- server and offers the item with its first line as the completion word; when the item is
--- accepted (CompleteDone) the other lines are added after it. Vim cannot insert a multi-line
--- word: Neovim before 0.10 would put NUL characters in its place, and 0.7's incremental sync
--- then sends the server a wrong text. Items accepted through other completion sources
--- (vim.lsp.omnifunc, nvim-cmp) are left to them; CompleteDone still runs the item's
--- `mellum.accepted` command for Vim's own menu.
---
--- Offers: `attach(client, bufnr)`, `omnifunc(findstart, base)`, `is_mellum_item(completed_item)`.
local compat = require("mellum.compat")
local text = require("mellum.text")

local M = {}

--- `{ text = full text, command = LSP command }` for a `v:completed_item` holding Mellum's
--- suggestion (from `omnifunc` or from vim.lsp.omnifunc), else nil.
function M.is_mellum_item(completed)
  local data = type(completed) == "table" and completed.user_data
  if type(data) == "string" and data ~= "" then
    local ok, decoded = pcall(vim.fn.json_decode, data)
    data = ok and decoded or nil
  end
  if type(data) ~= "table" then
    return nil
  end
  if type(data.mellum) == "table" then
    return data.mellum
  end
  local item = data.nvim and data.nvim.lsp and data.nvim.lsp.completion_item
  if type(item) == "table" and item.command and item.command.command == "mellum.accepted" then
    return { text = item.textEdit and item.textEdit.newText or item.insertText, command = item.command }
  end
  return nil
end

--- Vim completion items for an LSP completion result; `line` is the cursor line.
local function complete_items(result, line, encoding)
  local items = type(result) == "table" and (result.items or result) or {}
  local out, start = {}, nil
  for _, item in ipairs(items) do
    local edit = item.textEdit
    local new_text = edit and edit.newText or item.insertText or item.label
    if edit and edit.range and type(new_text) == "string" and new_text ~= "" then
      start = compat.byte_col(line, edit.range.start.character, encoding)
      table.insert(out, {
        word = text.lines(new_text)[1],
        abbr = item.label,
        menu = item.labelDetails and item.labelDetails.description or "Mellum",
        info = new_text,
        icase = 1,
        dup = 1,
        empty = 1,
        user_data = { mellum = { text = new_text, command = item.command } },
      })
    end
  end
  return out, start
end

--- 'omnifunc' asking the Mellum server of the current buffer (asynchronously, like
--- vim.lsp.omnifunc: the first call starts the request and returns -2).
function M.omnifunc(findstart, _)
  if findstart ~= 1 then
    return {}
  end
  local bufnr = vim.api.nvim_get_current_buf()
  local client = compat.clients(bufnr, "mellum")[1]
  if not client then
    return -3
  end
  local cursor = vim.api.nvim_win_get_cursor(0)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = 1 } -- Invoked
  compat.request(client, "textDocument/completion", params, function(err, result)
    local now = vim.api.nvim_win_get_cursor(0)
    if err or not result or vim.fn.mode() ~= "i" or now[1] ~= cursor[1] or now[2] ~= cursor[2] then
      return
    end
    local items, start = complete_items(result, vim.api.nvim_get_current_line(), client.offset_encoding)
    if #items > 0 then
      vim.fn.complete(start + 1, items)
    end
  end, bufnr)
  return -2
end

--- Add the lines after the first of an accepted suggestion (the first was inserted by Vim).
local function add_other_lines(full)
  local lines = text.lines(full)
  if #lines < 2 then
    return
  end
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local inserted = vim.api.nvim_get_current_line():sub(1, col)
  if inserted:sub(-#lines[1]) ~= lines[1] then
    return -- the text changed since the item was accepted
  end
  local rest = { "" }
  vim.list_extend(rest, lines, 2)
  vim.api.nvim_buf_set_text(0, row - 1, col, row - 1, col, rest)
  vim.api.nvim_win_set_cursor(0, { row + #rest - 1, #rest[#rest] })
end

function M.attach(client, bufnr)
  if vim.bo[bufnr].omnifunc == "" then
    vim.bo[bufnr].omnifunc = "v:lua.require'mellum.completion'.omnifunc"
  end
  local group = vim.api.nvim_create_augroup("mellum.completion." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd("CompleteDone", {
    group = group,
    buffer = bufnr,
    callback = function()
      local completed = vim.v.completed_item
      local suggestion = M.is_mellum_item(completed)
      if not suggestion then
        return
      end
      local ours = type(completed.user_data) == "table" and completed.user_data.mellum ~= nil
      vim.schedule(function() -- CompleteDone may not change the text
        if ours and type(suggestion.text) == "string" then
          add_other_lines(suggestion.text)
        end
        compat.exec_command(vim.lsp.get_client_by_id(client.id), suggestion.command, bufnr)
      end)
    end,
  })
end

return M
