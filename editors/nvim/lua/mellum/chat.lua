--- `:MellumChat {question}`: ask about the current file (or the lines of a range) in a scratch
--- split.
---
--- Sends the custom request `mellum/chat` with `{ message, context = { textDocument = { uri },
--- range? } }`; the server streams `mellum/chatChunk` notifications `{ conversationId, kind =
--- "content" | "reasoning", text }` and answers `{ conversationId, answer }`. Chunks are
--- appended to the chat buffer as they arrive (reasoning under its own heading); the answer is
--- written only when nothing was streamed. A chunk whose conversation is not known yet belongs
--- to the oldest question of that client still waiting.
---
--- Offers: `ask(question, source_bufnr, range)`, `on_chunk(err, params, ctx)` (the
--- notification handler), `buffer()` (the chat buffer, created on demand).
local compat = require("mellum.compat")

local M = {}

local chat_buf = nil
local waiting = {} -- client id -> list of turns without a conversation id yet (oldest first)
local turns = {} -- conversation id -> turn; a turn is { streamed = bool, kind = string? }

--- The chat buffer, shown in a split if no window has it.
function M.buffer()
  if not (chat_buf and vim.api.nvim_buf_is_valid(chat_buf)) then
    chat_buf = vim.api.nvim_create_buf(false, true)
    vim.api.nvim_buf_set_name(chat_buf, "mellum://chat")
    vim.bo[chat_buf].filetype = "markdown"
    vim.bo[chat_buf].bufhidden = "hide"
  end
  if vim.fn.bufwinid(chat_buf) == -1 then
    local from = vim.api.nvim_get_current_win()
    vim.cmd("botright split")
    vim.api.nvim_win_set_buf(0, chat_buf)
    vim.api.nvim_set_current_win(from)
  end
  return chat_buf
end

--- Append `s` to the end of the chat buffer (continuing its last line).
local function append(s)
  local buf = M.buffer()
  local last = vim.api.nvim_buf_line_count(buf)
  local tail = vim.api.nvim_buf_get_lines(buf, last - 1, last, false)[1] or ""
  vim.api.nvim_buf_set_lines(buf, last - 1, last, false, vim.split(tail .. s, "\n", { plain = true }))
  local win = vim.fn.bufwinid(buf)
  if win ~= -1 then
    vim.api.nvim_win_set_cursor(win, { vim.api.nvim_buf_line_count(buf), 0 })
  end
end

local function turn_for(conversation, client_id)
  local turn = turns[conversation]
  if not turn then
    turn = table.remove(waiting[client_id] or {}, 1)
    if turn then
      turns[conversation] = turn
    end
  end
  return turn
end

function M.on_chunk(_, params, ctx)
  if type(params) ~= "table" or type(params.text) ~= "string" then
    return
  end
  local turn = turn_for(params.conversationId, ctx.client_id)
  if not turn then
    return
  end
  local kind = params.kind == "reasoning" and "reasoning" or "content"
  if turn.kind ~= kind then
    append(kind == "reasoning" and "\n_reasoning:_\n" or (turn.kind and "\n\n" or ""))
    turn.kind = kind
  end
  turn.streamed = true
  append(params.text)
end

--- Ask `question` about `source_bufnr`; `range` is an LSP Range or nil.
function M.ask(question, source_bufnr, range)
  local client = compat.clients(source_bufnr, "mellum")[1]
  if not client then
    vim.notify("mellum: no Mellum server in this buffer (open a file of a configured filetype)", vim.log.levels.ERROR)
    return
  end
  local context = { textDocument = { uri = vim.uri_from_bufnr(source_bufnr) }, range = range }
  local turn = { streamed = false }
  waiting[client.id] = waiting[client.id] or {}
  table.insert(waiting[client.id], turn)
  append((vim.api.nvim_buf_line_count(M.buffer()) > 1 and "\n\n" or "") .. "## You\n" .. question .. "\n\n## Mellum\n")
  compat.request(client, "mellum/chat", { message = question, context = context }, function(err, result)
    for i, t in ipairs(waiting[client.id] or {}) do
      if t == turn then
        table.remove(waiting[client.id], i)
        break
      end
    end
    if err then
      append("\n[error] " .. (err.message or vim.inspect(err)))
      return
    end
    if type(result) == "table" and result.conversationId ~= nil then
      turns[result.conversationId] = turn
    end
    if not turn.streamed and type(result) == "table" and type(result.answer) == "string" then
      append(result.answer)
    end
  end, source_bufnr)
end

return M
