// The messages between this extension and mellum-lsp beyond standard LSP.
// Offers the method names and the shapes of their parameters and answers.
//
// Served today (mellum_lsp/server.py): mellum/lastCompletion, mellum/status, mellum/document and the
// $/mellum/metrics notification (setting debug.metrics). Not served yet, coded to the agreed
// contract: mellum/edit, mellum/chat and the mellum/chatChunk notification.

import type { Range, WorkspaceEdit } from "vscode-languageclient/node";

export const LAST_COMPLETION = "mellum/lastCompletion";
export const STATUS = "mellum/status";
export const DOCUMENT = "mellum/document";
export const METRICS = "$/mellum/metrics";
export const EDIT = "mellum/edit";
export const CHAT = "mellum/chat";
export const CHAT_CHUNK = "mellum/chatChunk";

/** The engine's prompt-cache accounting of one completion. */
export interface CacheInfo {
  prompt_tokens?: number;
  reused_tokens?: number;
  computed_tokens?: number;
  source?: string;
}

/** mellum/lastCompletion {uri?} -> the metrics of the last answer (or null before any). */
export interface CompletionMetrics {
  uri: string;
  id: string;
  served: string; // model | typed_along | engine_typed_ahead | superseded | disabled | no_engine | error
  text: string;
  latency_ms: number;
  cache?: CacheInfo | null;
  error?: string;
}

/** mellum/status {} -> what the server runs on. */
export interface ServerStatus {
  version: string;
  positionEncoding: string;
  engine: {
    socket: string;
    connected: boolean;
    info: { model?: string; model_id?: string; backend?: string; context_length?: number };
  } | null;
  roots: Record<string, { built: boolean; files: number }>;
  settingsProblems: string[];
}

/** mellum/document {uri} -> the server's copy of an open document. */
export interface ServerDocument {
  text: string;
  version: number;
  lineCount: number;
}

/** mellum/edit: rewrite `range` following `instruction`. */
export interface EditParams {
  textDocument: { uri: string };
  range: Range;
  instruction: string;
}

/** What mellum/edit answers: a WorkspaceEdit, or one under `edit` with a message. */
export type EditResult = WorkspaceEdit | { edit?: WorkspaceEdit | null; message?: string } | null;

/** mellum/chat: a question about `context`; `conversationId` continues a conversation. */
export interface ChatParams {
  message: string;
  context: { textDocument: { uri: string }; range: Range } | null;
  conversationId?: string;
}

export interface ChatResult {
  conversationId: string;
  answer: string;
}

/** mellum/chatChunk: a piece of an answer while it is generated. */
export interface ChatChunk {
  conversationId: string;
  kind: string; // "content" (the answer), "reasoning" (a trace), or another kind shown as-is
  text: string;
}
