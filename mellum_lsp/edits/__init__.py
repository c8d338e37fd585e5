"""Code actions without an editor: what to offer, what to ask the model, and whether its answer is safe.

Pure modules over text (no LSP types, no engine); the handlers in `features/` convert positions
with `documents.py` and talk to the engine. Offsets are character offsets (code points).
- `syntax`: tree-sitter ERROR/MISSING nodes (and Python's compile error) as `SyntaxProblem`s;
  `diagnostic_problems` is what to publish.
- `actions`: the action catalogue (`list_actions`) and each action's scope.
- `prompts`: chat messages or a fill-in-the-middle request for an action, and the candidate text
  its answer gives.
- `formats`: search/replace blocks and fenced code blocks, parsed and applied; their Lark grammar.
- `validate`: `validate_edit` — no new syntax problem, still compiles, inside the scope, not a no-op.
- `diff`: `minimal_edits(old, new)` as `TextEdit`s.
- `structure`, `offsets`: tree-sitter structure (definitions, statements, doc and hint slots) and
  offset conversions, shared by the modules above.
"""

from .actions import Action, Diagnostic, Scope, edit_scope, fix_scope, list_actions
from .diff import TextEdit, apply_edits, minimal_edits
from .formats import (
    SEARCH_REPLACE_LARK,
    EditFormatError,
    SearchReplace,
    apply_search_replace,
    extract_code_block,
    parse_search_replace,
    replace_region,
    search_replace_grammar,
)
from .prompts import FimPlan, chat_candidate, chat_messages, edit_grammar, fim_candidate, fim_plan, fim_plans
from .syntax import SyntaxProblem, diagnostic_problems, python_compile_problem, syntax_problems
from .validate import Verdict, validate_edit

__all__ = [
    "SEARCH_REPLACE_LARK",
    "Action",
    "Diagnostic",
    "EditFormatError",
    "FimPlan",
    "Scope",
    "SearchReplace",
    "SyntaxProblem",
    "TextEdit",
    "Verdict",
    "apply_edits",
    "apply_search_replace",
    "chat_candidate",
    "chat_messages",
    "diagnostic_problems",
    "edit_grammar",
    "edit_scope",
    "extract_code_block",
    "fim_candidate",
    "fim_plan",
    "fim_plans",
    "fix_scope",
    "list_actions",
    "minimal_edits",
    "parse_search_replace",
    "python_compile_problem",
    "replace_region",
    "search_replace_grammar",
    "syntax_problems",
    "validate_edit",
]
