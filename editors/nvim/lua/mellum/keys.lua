--- Insert-mode keys for inline suggestions (shared by the built-in and the plugin's ghost text).
---
--- Offers: `map(bufnr, keymaps, actions)`: for each action name in `keymaps` ("accept",
--- "accept_word", "next", "prev", "dismiss") whose key is not false, a buffer-local mapping that
--- runs the action and, when the action returns false (nothing shown), types the key itself.
local M = {}

function M.map(bufnr, keymaps, actions)
  for name, action in pairs(actions) do
    local lhs = keymaps[name]
    if lhs then
      vim.keymap.set("i", lhs, function()
        if action() then
          return ""
        end
        return lhs
      end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = "Mellum: " .. name })
    end
  end
end

return M
