// Chat transcripts as read-only Markdown documents `mellum-chat:/<conversationId>.md`, opened
// beside the editor and updated as `mellum/chatChunk` notifications stream in.
// Offers `CHAT_SCHEME`, `chatUri`, `Transcripts` (the store and content provider) and `render` (pure).

import * as vscode from "vscode";
import type { ChatChunk, ChatResult } from "./protocol";

export const CHAT_SCHEME = "mellum-chat";

export function chatUri(conversationId: string): vscode.Uri {
  return vscode.Uri.from({ scheme: CHAT_SCHEME, path: `/${encodeURIComponent(conversationId)}.md` });
}

/** The conversation a `mellum-chat:` URI shows, or undefined for another document. */
export function conversationOf(uri: vscode.Uri): string | undefined {
  if (uri.scheme !== CHAT_SCHEME) return undefined;
  return decodeURIComponent(uri.path.replace(/^\//, "").replace(/\.md$/, ""));
}

export interface Turn {
  question: string;
  about?: string; // "app.py, lines 3-7"
  answer: string;
  thinking: string;
  done: boolean;
}

/** A conversation as Markdown. */
export function render(turns: Turn[]): string {
  const out = ["# Mellum chat", ""];
  for (const t of turns) {
    out.push(`**You**${t.about ? ` (about ${t.about})` : ""}:`, "", t.question, "");
    out.push("**Mellum**:", "");
    if (t.thinking) out.push(...t.thinking.split("\n").map((l) => `> ${l}`), "");
    out.push(t.answer || (t.done ? "_(no answer)_" : "_…_"), "");
  }
  return out.join("\n");
}

/** Conversations by id; a question waits in `pending` until its first chunk or answer names it. */
export class Transcripts implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly conversations = new Map<string, Turn[]>();
  private readonly pending: Turn[] = [];
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;
  /** Called when a conversation gets its first text (to open it beside the editor). */
  onNew: (conversationId: string) => void = () => undefined;

  provideTextDocumentContent(uri: vscode.Uri): string {
    const id = conversationOf(uri);
    return render((id && this.conversations.get(id)) || []);
  }

  /** A question sent for `conversationId`, or for a new conversation when undefined. */
  ask(question: string, about: string | undefined, conversationId: string | undefined): Turn {
    const turn: Turn = { question, about, answer: "", thinking: "", done: false };
    if (conversationId !== undefined && this.conversations.has(conversationId)) {
      this.conversations.get(conversationId)!.push(turn);
      this.changed.fire(chatUri(conversationId));
    } else {
      this.pending.push(turn);
    }
    return turn;
  }

  private bind(conversationId: string, turn?: Turn): Turn | undefined {
    const turns = this.conversations.get(conversationId);
    if (turns) return turn ?? turns[turns.length - 1];
    const first = turn ?? this.pending[0];
    if (!first) return undefined;
    const i = this.pending.indexOf(first);
    if (i >= 0) this.pending.splice(i, 1);
    this.conversations.set(conversationId, [first]);
    this.onNew(conversationId);
    return first;
  }

  chunk(c: ChatChunk): void {
    const turn = this.bind(c.conversationId);
    if (!turn || turn.done) return;
    if (c.kind === "reasoning") turn.thinking += c.text;
    else turn.answer += c.text;
    this.changed.fire(chatUri(c.conversationId));
  }

  /** The final answer of `turn` (it replaces the streamed text, which it contains). */
  answered(turn: Turn, result: ChatResult): void {
    this.bind(result.conversationId, turn);
    turn.answer = result.answer;
    turn.done = true;
    this.changed.fire(chatUri(result.conversationId));
  }

  failed(turn: Turn, message: string): void {
    const i = this.pending.indexOf(turn);
    if (i >= 0) this.pending.splice(i, 1);
    turn.answer = `_${message}_`;
    turn.done = true;
  }

  dispose(): void {
    this.changed.dispose();
  }
}
