--- Differences between Neovim versions (0.7 … 0.12), kept in one place.
---
--- Offers: `uv`, `has(version)`, `request(client, method, params, handler, bufnr)`,
--- `cancel(client, id)`, `exec_command(client, command, bufnr)`, `clients(bufnr, name)`,
--- `start(config, bufnr)`, `root_dir(path, markers)`, `byte_col(line, character, encoding)`,
--- `char_len(line, encoding)`.
local M = {}

M.uv = vim.uv or vim.loop

--- Whether this Neovim is at least `version` ("0.10").
function M.has(version)
  return vim.fn.has("nvim-" .. version) == 1
end

-- 0.11 made client methods take `self` (client:request); 0.10 and older use client.request.
local method_calls = M.has("0.11")

--- Send a request; returns (ok, request_id) like the client does.
function M.request(client, method, params, handler, bufnr)
  if method_calls then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

function M.cancel(client, id)
  if method_calls then
    return client:cancel_request(id)
  end
  return client.cancel_request(id)
end

--- Run an LSP `Command` (from a completion item) on the server; the answer is not needed.
function M.exec_command(client, command, bufnr)
  if not (client and command and command.command) then
    return
  end
  local params = { command = command.command, arguments = command.arguments }
  M.request(client, "workspace/executeCommand", params, function() end, bufnr)
end

--- The clients named `name` attached to `bufnr`.
function M.clients(bufnr, name)
  if vim.lsp.get_clients then -- 0.10+
    return vim.lsp.get_clients({ bufnr = bufnr, name = name })
  end
  local out = {}
  for _, client in pairs(vim.lsp.buf_get_clients(bufnr)) do
    if client.name == name then
      table.insert(out, client)
    end
  end
  return out
end

--- Start (or reuse) the client for `config` and attach it to `bufnr`; returns the client id.
function M.start(config, bufnr)
  if vim.lsp.start then -- 0.8+
    return vim.lsp.start(config, { bufnr = bufnr })
  end
  -- 0.7 has no vim.lsp.start: reuse the running client of the same name and root folder.
  for _, client in pairs(vim.lsp.get_active_clients()) do
    if client.name == config.name and client.config.root_dir == config.root_dir and not client.is_stopped() then
      vim.lsp.buf_attach_client(bufnr, client.id)
      return client.id
    end
  end
  local id = vim.lsp.start_client(config)
  if id then
    vim.lsp.buf_attach_client(bufnr, id)
  end
  return id
end

--- The nearest folder above `path` holding one of `markers`, else the file's own folder.
--- (vim.fs.root needs 0.10; this works everywhere.)
function M.root_dir(path, markers)
  local dir = vim.fn.fnamemodify(path, ":p:h")
  local own = dir
  while true do
    for _, marker in ipairs(markers) do
      if M.uv.fs_stat(dir .. "/" .. marker) then
        return dir
      end
    end
    local parent = vim.fn.fnamemodify(dir, ":h")
    if parent == dir then
      return own
    end
    dir = parent
  end
end

--- Byte column in `line` of the LSP `character` counted in `encoding` ("utf-8", "utf-16", "utf-32").
function M.byte_col(line, character, encoding)
  if encoding == "utf-8" then
    return math.min(character, #line)
  end
  local ok, col
  if M.has("0.11") then
    ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  else
    ok, col = pcall(vim.str_byteindex, line, character, encoding == "utf-16")
  end
  return ok and col or #line
end

--- Length of `line` in LSP characters of `encoding`.
function M.char_len(line, encoding)
  if encoding == "utf-8" then
    return #line
  end
  if M.has("0.11") then
    return vim.str_utfindex(line, encoding)
  end
  local utf32, utf16 = vim.str_utfindex(line)
  return encoding == "utf-16" and utf16 or utf32
end

return M
