--- Inline suggestions drawn by the plugin (Neovim 0.10–0.11, which have inline virtual text but
--- no built-in inline completion; also usable on 0.12 with `inline = "plugin"`).
---
--- While typing in Insert mode (TextChangedI / CursorMovedI, debounced) it sends
--- `textDocument/inlineCompletion` and shows the first item as virtual text: an extmark in the
--- namespace "mellum.inline" (first line inline at the cursor, further lines as virtual lines,
--- highlight group `MellumSuggestion`, linked to Comment). Typing the suggestion's next characters
--- keeps the rest shown.
---
--- Offers: `namespace`, `attach(client, bufnr, opts)`, `detach(bufnr)`, `accept(bufnr)`,
--- `accept_word(bufnr)`, `cycle(bufnr, step)`, `dismiss(bufnr)`, `suggestion(bufnr)` (0: the
--- current buffer).
local compat = require("mellum.compat")
local keys = require("mellum.keys")
local text = require("mellum.text")

local M = {}

M.namespace = vim.api.nvim_create_namespace("mellum.inline")
local AUTOMATIC = 2 -- InlineCompletionTriggerKind.Automatic

local function resolve(bufnr)
  return (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
end

--- Per-buffer state: { client_id, opts, timer, request_id, items, index, text, row, col }.
--- `text` is what is still to be inserted at (row, col) (1-based row, 0-based byte column).
local buffers = {}

local function clear(bufnr)
  local st = buffers[bufnr]
  if st then
    st.text, st.items = nil, nil
  end
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  end
end

local function render(bufnr)
  local st = buffers[bufnr]
  vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  if not (st and st.text and st.text ~= "") then
    return
  end
  local lines = text.lines(st.text)
  local virt_lines = {}
  for i = 2, #lines do
    table.insert(virt_lines, { { lines[i], "MellumSuggestion" } })
  end
  vim.api.nvim_buf_set_extmark(bufnr, M.namespace, st.row - 1, st.col, {
    virt_text = { { lines[1], "MellumSuggestion" } },
    virt_text_pos = "inline",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

--- The text an item would add at the cursor, or nil when it does not continue what is typed.
local function item_text(item, client, row, col)
  local s = item.insertText
  if type(s) == "table" then
    s = s.value -- a snippet: shown and inserted as its raw text
  end
  if type(s) ~= "string" or s == "" then
    return nil
  end
  local range = item.range
  if range and range.start.line == row - 1 then
    local line = vim.api.nvim_get_current_line()
    local start = compat.byte_col(line, range.start.character, client.offset_encoding)
    if start < col then -- the item replaces text typed before the cursor: show only the rest
      local typed = line:sub(start + 1, col)
      if s:sub(1, #typed) ~= typed then
        return nil
      end
      s = s:sub(#typed + 1)
    end
  end
  return s ~= "" and s or nil
end

local function show_item(bufnr, index)
  local st = buffers[bufnr]
  local client = vim.lsp.get_client_by_id(st.client_id)
  local item = st.items and st.items[index]
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  st.index = index
  st.text = client and item and item_text(item, client, row, col) or nil
  st.row, st.col = row, col
  render(bufnr)
end

local function request(bufnr)
  local st = buffers[bufnr]
  if not st or vim.api.nvim_get_current_buf() ~= bufnr or not vim.api.nvim_get_mode().mode:match("^i") then
    return
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  if not client then
    return
  end
  if st.request_id then
    compat.cancel(client, st.request_id)
    st.request_id = nil
  end
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  params.context = { triggerKind = AUTOMATIC }
  local tick = vim.api.nvim_buf_get_changedtick(bufnr)
  local cursor = vim.api.nvim_win_get_cursor(0)
  local ok, id
  ok, id = compat.request(client, "textDocument/inlineCompletion", params, function(err, result)
    if st.request_id == id then
      st.request_id = nil
    end
    if err or not result or buffers[bufnr] ~= st then
      return
    end
    local now = vim.api.nvim_win_get_cursor(0)
    if vim.api.nvim_get_current_buf() ~= bufnr or vim.api.nvim_buf_get_changedtick(bufnr) ~= tick then
      return -- the text changed meanwhile: a newer request is on its way
    end
    if now[1] ~= cursor[1] or now[2] ~= cursor[2] or not vim.api.nvim_get_mode().mode:match("^i") then
      return
    end
    st.items = result.items or result
    show_item(bufnr, 1)
  end, bufnr)
  st.request_id = ok and id or nil
end

--- After an edit or a cursor move: keep the suggestion if it is still ahead of the cursor
--- (typed along, or partly accepted), else drop it; then ask again after the debounce delay.
local function on_change(bufnr)
  local st = buffers[bufnr]
  if not st then
    return
  end
  if st.text then
    local row, col = unpack(vim.api.nvim_win_get_cursor(0))
    local line = vim.api.nvim_get_current_line()
    local typed = row == st.row and col >= st.col and line:sub(st.col + 1, col) or nil
    if typed and typed ~= "" and st.text:sub(1, #typed) == typed and #typed < #st.text then
      st.text, st.col = st.text:sub(#typed + 1), col
      render(bufnr)
    elseif not (typed == "" and col == st.col) then
      clear(bufnr)
    end
  end
  st.timer:stop()
  st.timer:start(st.opts.debounce_ms, 0, vim.schedule_wrap(function()
    request(bufnr)
  end))
end

local function feedback(bufnr, name, extra)
  local st = buffers[bufnr]
  local item = st.items and st.items[st.index]
  local command = item and item.command
  if not command then
    return
  end
  local client = vim.lsp.get_client_by_id(st.client_id)
  if name ~= command.command then
    local args = vim.tbl_extend("force", (command.arguments or {})[1] or {}, extra or {})
    command = { title = command.title, command = name, arguments = { args } }
  end
  compat.exec_command(client, command, bufnr)
end

--- Insert `s` at the suggestion's position and move the cursor after it.
local function insert(bufnr, s)
  local st = buffers[bufnr]
  local lines = text.lines(s)
  vim.api.nvim_buf_set_text(bufnr, st.row - 1, st.col, st.row - 1, st.col, lines)
  local row, col = st.row + #lines - 1, (#lines == 1 and st.col or 0) + #lines[#lines]
  vim.api.nvim_win_set_cursor(0, { row, col })
  return row, col
end

--- The suggestion shown in `bufnr` (the text still to insert), or nil.
function M.suggestion(bufnr)
  bufnr = resolve(bufnr)
  local st = buffers[bufnr]
  return st and st.text
end

function M.accept(bufnr)
  bufnr = resolve(bufnr)
  local st = buffers[bufnr]
  if not (st and st.text) then
    return false
  end
  insert(bufnr, st.text)
  feedback(bufnr, "mellum.accepted")
  clear(bufnr)
  return true
end

function M.accept_word(bufnr)
  bufnr = resolve(bufnr)
  local st = buffers[bufnr]
  if not (st and st.text) then
    return false
  end
  local word = text.next_word(st.text)
  local rest = st.text:sub(#word + 1)
  st.row, st.col = insert(bufnr, word)
  feedback(bufnr, "mellum.partiallyAccepted", { acceptedLength = #word })
  st.text = rest ~= "" and rest or nil
  render(bufnr)
  return true
end

function M.cycle(bufnr, step)
  bufnr = resolve(bufnr)
  local st = buffers[bufnr]
  if not (st and st.items and #st.items > 0) then
    return false
  end
  show_item(bufnr, (st.index - 1 + step) % #st.items + 1)
  return true
end

function M.dismiss(bufnr)
  bufnr = resolve(bufnr)
  local st = buffers[bufnr]
  if not (st and st.text) then
    return false
  end
  feedback(bufnr, "mellum.rejected")
  clear(bufnr)
  return true
end

--- A key action: when a suggestion is shown, run `fn(bufnr)` after the mapping returns
--- (expression mappings may not change the text) and report true.
local function later(bufnr, fn)
  return function()
    if not M.suggestion(bufnr) then
      return false
    end
    vim.schedule(function()
      fn(bufnr)
    end)
    return true
  end
end

function M.attach(client, bufnr, opts)
  if buffers[bufnr] then
    buffers[bufnr].client_id = client.id
    return
  end
  vim.api.nvim_set_hl(0, "MellumSuggestion", { link = "Comment", default = true })
  buffers[bufnr] = { client_id = client.id, opts = opts, timer = compat.uv.new_timer() }
  local group = vim.api.nvim_create_augroup("mellum.inline." .. bufnr, { clear = true })
  vim.api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_change(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      buffers[bufnr].timer:stop()
      clear(bufnr)
    end,
  })
  vim.api.nvim_create_autocmd({ "BufUnload" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.detach(bufnr)
    end,
  })
  keys.map(bufnr, opts.keymaps, {
    accept = later(bufnr, function(b)
      M.accept(b)
    end),
    accept_word = later(bufnr, function(b)
      M.accept_word(b)
    end),
    dismiss = later(bufnr, function(b)
      M.dismiss(b)
    end),
    next = later(bufnr, function(b)
      M.cycle(b, 1)
    end),
    prev = later(bufnr, function(b)
      M.cycle(b, -1)
    end),
  })
end

function M.detach(bufnr)
  local st = buffers[bufnr]
  if not st then
    return
  end
  st.timer:stop()
  st.timer:close()
  buffers[bufnr] = nil
  pcall(vim.api.nvim_del_augroup_by_name, "mellum.inline." .. bufnr)
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.api.nvim_buf_clear_namespace(bufnr, M.namespace, 0, -1)
  end
end

return M
