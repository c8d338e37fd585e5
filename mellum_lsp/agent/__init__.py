"""Chat and the agent, without an editor: conversations, tools confined to the workspace, the loop.

Pure of LSP types; the handlers in `features/chat.py` and `features/agent.py` wire them to the
client (streamed chunks, `workspace/applyEdit`) and to the engine (`chat` requests).
- `conversation`: conversations by id, the messages the engine sees and the transcript entries.
- `chat`: one chat turn with its context (selection, file, retrieved code) within a token budget.
- `paths`: the workspace folders as the agent may see them (confinement, .gitignore, binaries).
- `tools`: the agent's tools and their schemas; `grounding`: grammars narrowing calls to the workspace.
- `loop`: the tool loop with its limits; `consent`: a proposed edit as an applyEdit to confirm.
- `transcript`: a conversation as Markdown (`mellum-chat:/<id>.md`).
"""
