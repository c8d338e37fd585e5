"""The engine's chat path as pure building blocks, wired into the RPC ``chat`` method and HTTP later.

- ``template``: chat templates from a model folder, rendered in a jinja2 sandbox; token ids whose
  special tokens come from the template only; the embedded model's template.
- ``reasoning``: the reasoning trace of Thinking models split from the answer while streaming;
  reasoning dropped from earlier turns.
- ``tools``: OpenAI ``tools`` / ``tool_choice`` validation and the tool-call text parser.
- ``constrain``: constrained decoding with llguidance (JSON Schema, Lark, tool calls).

Nothing is imported here, so ``engine.chat.template`` does not pull in llguidance or numpy.
"""
