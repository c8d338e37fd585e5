--- Pure text helpers for suggestions.
---
--- Offers: `next_word(text)` (the part accept-word inserts), `lines(text)`.
local M = {}

--- The leading piece of `text` that "accept word" inserts: a line break with the next line's
--- indentation, or optional blanks then an identifier, or optional blanks then a run of
--- punctuation.
function M.next_word(text)
  return text:match("^\r?\n[ \t]*")
    or text:match("^[ \t]*[%w_]+")
    or text:match("^[ \t]*[^%w_%s]+")
    or text:match("^[ \t]+")
    or text:sub(1, 1)
end

--- `text` split at line breaks (a suggestion becomes buffer lines).
function M.lines(text)
  return vim.split(text, "\n", { plain = true })
end

return M
