-- Drives a real headless Neovim through one suggestion round-trip with the mellum plugin and
-- writes what happened to a JSON file (read by tests/editors/test_nvim.py).
--
--   nvim --headless -u NONE -i NONE -c "luafile nvim_driver.lua"
--
-- Environment: MELLUM_PLUGIN_DIR (editors/nvim), MELLUM_FILE (a Python file to edit),
-- MELLUM_TYPE (text typed on a new last line), MELLUM_SCENARIO ("completion": the completion item
-- through <C-x><C-o> and <C-y>; "native": the built-in ghost text and <Tab>; "plugin": the
-- plugin's ghost text, <M-Right> then <Tab>), MELLUM_SETTINGS (JSON), MELLUM_RESULT (output),
-- MELLUM_TIMEOUT_MS (for the first suggestion).
--
-- Keys go through nvim_input, which Neovim reads only from its main loop, so the steps run in a
-- coroutine that yields to the loop while it waits on a condition (polled, with a deadline).
local uv = vim.uv or vim.loop
local env = function(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default == nil then
      error("missing environment variable " .. name)
    end
    return default
  end
  return v
end

local scenario = env("MELLUM_SCENARIO")
local result_path = env("MELLUM_RESULT")
local first_timeout = tonumber(env("MELLUM_TIMEOUT_MS", "40000"))
local t0 = uv.hrtime()
local result = { scenario = scenario, version = ("%d.%d.%d"):format(vim.version().major, vim.version().minor, vim.version().patch), timings_ms = {} }

local function ms()
  return (uv.hrtime() - t0) / 1e6
end

local function mark(name)
  result.timings_ms[name] = math.floor(ms())
end

local function finish()
  result.total_ms = math.floor(ms())
  local f = assert(io.open(result_path, "w"))
  f:write(vim.fn.json_encode(result))
  f:close()
  vim.cmd("qa!")
end

local co
local function step()
  local ok, err = coroutine.resume(co)
  if not ok then
    result.ok = false
    result.error = tostring(err)
    result.lines_at_error = vim.api.nvim_buf_get_lines(0, 0, -1, false)
    result.mode_at_error = vim.api.nvim_get_mode().mode
    result.complete_info_at_error = vim.fn.complete_info()
    finish()
  elseif coroutine.status(co) == "dead" then
    finish()
  end
end

--- Yield to the main loop until `pred()` is truthy; return its value.
local function wait(what, timeout_ms, pred)
  local deadline = ms() + timeout_ms
  while true do
    local ok, v = pcall(pred)
    if ok and v then
      return v
    end
    if ms() > deadline then
      error(("timed out after %d ms waiting for %s%s"):format(timeout_ms, what, ok and "" or (": " .. tostring(v))), 0)
    end
    vim.defer_fn(step, 20)
    coroutine.yield()
  end
end

local request = function(client, method, params, handler)
  if vim.fn.has("nvim-0.11") == 1 then
    return client:request(method, params, handler, 0)
  end
  return client.request(method, params, handler, 0)
end

--- A request to the server, waited for.
local function rpc(client, method, params, timeout_ms)
  local done, answer, failure = false, nil, nil
  request(client, method, params, function(err, res)
    done, answer, failure = true, res, err
  end)
  wait(method, timeout_ms or 10000, function()
    return done
  end)
  if failure then
    error(method .. " failed: " .. vim.inspect(failure), 0)
  end
  return answer
end

local function lines()
  return vim.api.nvim_buf_get_lines(0, 0, -1, false)
end

--- The lines after inserting `s` at the end of `base` (a list of lines).
local function with_insert(base, s)
  local out = vim.deepcopy(base)
  local added = vim.split(s, "\n", { plain = true })
  out[#out] = out[#out] .. added[1]
  for i = 2, #added do
    table.insert(out, added[i])
  end
  return out
end

local function same(a, b)
  return vim.deep_equal(a, b)
end

--- The ghost text drawn by an extmark in namespace `ns_name` (first line + virtual lines).
local function ghost_text(ns_name)
  local ns = vim.api.nvim_get_namespaces()[ns_name]
  if not ns then
    return nil
  end
  local marks = vim.api.nvim_buf_get_extmarks(0, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local details = marks[1][4]
  local parts = {}
  local first = {}
  for _, chunk in ipairs(details.virt_text or {}) do
    table.insert(first, chunk[1])
  end
  table.insert(parts, table.concat(first))
  for _, line in ipairs(details.virt_lines or {}) do
    local l = {}
    for _, chunk in ipairs(line) do
      table.insert(l, chunk[1])
    end
    table.insert(parts, table.concat(l))
  end
  local s = table.concat(parts, "\n")
  return s ~= "" and s or nil
end

local function server_checks(client, accepted_events)
  local uri = vim.uri_from_bufnr(0)
  local want = table.concat(lines(), "\n")
  local doc = wait("the server's copy of the buffer to match", 10000, function()
    local d = rpc(client, "mellum/document", { uri = uri })
    result.server_text = d.text
    local text = d.text:gsub("\n$", "")
    return text == want and d
  end)
  result.server_document_matches = doc ~= nil
  local status = wait("the server to count the acceptance", 10000, function()
    local s = rpc(client, "mellum/status", vim.empty_dict())
    for _, event in ipairs(accepted_events) do
      if not (s.session and (s.session[event] or 0) >= 1) then
        return false
      end
    end
    return s
  end)
  result.session = status.session
end

local function main()
  vim.cmd("filetype on")
  vim.o.autoindent = false -- MELLUM_TYPE holds the indentation itself
  vim.opt.runtimepath:prepend(env("MELLUM_PLUGIN_DIR"))
  local settings = vim.fn.json_decode(env("MELLUM_SETTINGS", "{}"))
  local inline = ({ completion = "completion", native = "native", plugin = "plugin" })[scenario]
  result.mode = require("mellum").setup({ settings = settings, inline = inline })
  vim.cmd("edit " .. vim.fn.fnameescape(env("MELLUM_FILE")))
  local client = wait("the mellum client to initialize", 20000, function()
    for _, c in pairs((vim.lsp.get_clients or vim.lsp.get_active_clients)()) do
      if c.name == "mellum" and c.initialized then
        return c
      end
    end
  end)
  mark("client_ready")
  result.offset_encoding = client.offset_encoding
  wait("the engine to be connected", first_timeout, function()
    local s = rpc(client, "mellum/status", vim.empty_dict())
    return type(s.engine) == "table" and s.engine.connected
  end)
  mark("engine_ready")

  local typed = env("MELLUM_TYPE")
  vim.api.nvim_input("Go" .. typed)
  local base = wait("the typed text", 5000, function()
    local l = lines()
    return l[#l] == typed and vim.api.nvim_get_mode().mode == "i" and l
  end)
  result.before = base
  mark("typed")

  if scenario == "completion" then
    local seen
    vim.api.nvim_create_autocmd("CompleteDone", {
      callback = function()
        seen = vim.v.completed_item
      end,
    })
    vim.api.nvim_input("<C-x><C-o>")
    -- (headless, no UI draws the menu, so pum_visible stays 0: wait for the items instead)
    local items = wait("the completion menu", first_timeout, function()
      local info = vim.fn.complete_info({ "mode", "items" })
      return info.mode ~= "" and #info.items > 0 and info.items
    end)
    mark("suggestion_shown")
    result.menu = vim.tbl_map(function(i)
      return i.abbr
    end, items)
    seen = nil -- (the omnifunc's first, asynchronous pass ends with an empty CompleteDone)
    vim.api.nvim_input("<C-y>")
    wait("CompleteDone", 5000, function()
      return seen ~= nil
    end)
    local item = require("mellum.completion").is_mellum_item(seen)
    if not item then
      error("the accepted item is not Mellum's: " .. vim.inspect(seen), 0)
    end
    result.omnifunc = vim.bo.omnifunc
    local new_text = item.text
    result.suggestion = new_text
    -- the item replaces the word before the cursor (none here: the typed text ends with a blank)
    result.expected = with_insert(base, new_text)
    result.after = wait("the item's text in the buffer", 5000, function()
      local l = lines()
      return same(l, result.expected) and l
    end)
    mark("accepted")
    vim.api.nvim_input("<Esc>")
    server_checks(client, { "accepted" })
  elseif scenario == "native" then
    local ghost = wait("ghost text from vim.lsp.inline_completion", first_timeout, function()
      return ghost_text("nvim.lsp.inline_completion")
    end)
    mark("suggestion_shown")
    result.suggestion = ghost
    result.expected = with_insert(base, ghost)
    vim.api.nvim_input("<Tab>")
    result.after = wait("the ghost text in the buffer", 5000, function()
      local l = lines()
      return same(l, result.expected) and l
    end)
    mark("accepted")
    vim.api.nvim_input("<Esc>")
    server_checks(client, { "accepted" })
  elseif scenario == "plugin" then
    local ghost = require("mellum.ghost")
    local accepted_text
    local accept = ghost.accept
    ghost.accept = function(bufnr)
      accepted_text = ghost.suggestion(bufnr)
      return accept(bufnr)
    end
    local shown = wait("ghost text in namespace mellum.inline", first_timeout, function()
      return ghost_text("mellum.inline")
    end)
    mark("suggestion_shown")
    if shown ~= ghost.suggestion(0) then
      error(("the extmark shows %q but the plugin holds %q"):format(shown, tostring(ghost.suggestion(0))), 0)
    end
    result.suggestion = shown
    local word = require("mellum.text").next_word(shown)
    result.word = word
    local partial = with_insert(base, word)
    vim.api.nvim_input("<M-Right>")
    result.after_word = wait("the first word in the buffer", 5000, function()
      local l = lines()
      return same(l, partial) and l
    end)
    if #word < #shown then
      result.rest_after_word = wait("the rest still shown", 5000, function()
        return ghost_text("mellum.inline")
      end)
    end
    mark("word_accepted")
    vim.api.nvim_input("<Tab>")
    wait("the accept key to run", 5000, function()
      return accepted_text ~= nil or #word == #shown
    end)
    result.accepted_rest = accepted_text
    result.expected = with_insert(partial, accepted_text or "")
    result.after = wait("the rest in the buffer", 5000, function()
      local l = lines()
      return same(l, result.expected) and l
    end)
    mark("accepted")
    result.extmarks_after_accept = #vim.api.nvim_buf_get_extmarks(0, ghost.namespace, 0, -1, {})
    vim.api.nvim_input("<Esc>")
    server_checks(client, { "accepted", "partially_accepted" })
  else
    error("unknown MELLUM_SCENARIO " .. scenario, 0)
  end
  result.ok = true
end

co = coroutine.create(main)
vim.defer_fn(step, 0)
