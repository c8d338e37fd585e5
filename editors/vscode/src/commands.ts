// The commands that talk to the server: "Mellum: Edit with instruction…" (mellum/edit) and
// "Mellum: Ask" (mellum/chat). Offers `editWithInstruction`, `ask`, `explainFailure`.

import * as path from "path";
import * as vscode from "vscode";
import { ErrorCodes, LSPErrorCodes, LanguageClient, ResponseError, WorkspaceEdit } from "vscode-languageclient/node";
import { CHAT_SCHEME, Transcripts, chatUri, conversationOf } from "./chat";
import { CHAT, ChatParams, ChatResult, EDIT, EditParams, EditResult } from "./protocol";

/** A message for a failed request: says when the server does not offer `method` yet. */
export function explainFailure(method: string, what: string, error: unknown): string {
  if (error instanceof ResponseError && error.code === ErrorCodes.MethodNotFound) {
    return `Mellum: this mellum-lsp does not offer ${what} yet (no ${method}); update mellum-lsp.`;
  }
  if (error instanceof ResponseError && error.code === LSPErrorCodes.RequestCancelled) return "";
  const text = error instanceof Error ? error.message : String(error);
  return `Mellum: ${what} failed: ${text}`;
}

function asWorkspaceEdit(result: EditResult): { edit?: WorkspaceEdit; message?: string } {
  if (!result) return {};
  if ("changes" in result || "documentChanges" in result) return { edit: result as WorkspaceEdit };
  const r = result as { edit?: WorkspaceEdit | null; message?: string };
  return { edit: r.edit ?? undefined, message: r.message };
}

/** Ask for an instruction, send mellum/edit for the selection, apply the edit it answers. */
export async function editWithInstruction(client: LanguageClient | undefined): Promise<void> {
  const editor = vscode.window.activeTextEditor;
  if (!client?.isRunning()) {
    void vscode.window.showErrorMessage("Mellum: the server is not running (see the Mellum output).");
    return;
  }
  if (!editor || editor.document.uri.scheme === CHAT_SCHEME) {
    void vscode.window.showErrorMessage("Mellum: open a file and select the code to edit first.");
    return;
  }
  const instruction = await vscode.window.showInputBox({
    title: "Mellum: Edit with instruction",
    prompt: editor.selection.isEmpty ? "How should the code at the cursor change?" : "How should the selection change?",
    placeHolder: "for example: add type hints",
    ignoreFocusOut: true,
  });
  if (!instruction) return;
  const c2p = client.code2ProtocolConverter;
  const params: EditParams = {
    textDocument: { uri: c2p.asUri(editor.document.uri) },
    range: c2p.asRange(editor.selection),
    instruction,
  };
  const version = editor.document.version;
  try {
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: "Mellum: editing…", cancellable: true },
      (_progress, token) => client.sendRequest<EditResult>(EDIT, params, token),
    );
    const { edit, message } = asWorkspaceEdit(result);
    if (!edit) {
      void vscode.window.showInformationMessage(message ?? "Mellum: no edit for this instruction.");
      return;
    }
    if (editor.document.version !== version) {
      void vscode.window.showWarningMessage("Mellum: the file changed while the edit was made; edit not applied.");
      return;
    }
    const applied = await vscode.workspace.applyEdit(await client.protocol2CodeConverter.asWorkspaceEdit(edit));
    if (!applied) void vscode.window.showWarningMessage("Mellum: the edit was not applied.");
    else if (message) void vscode.window.showInformationMessage(`Mellum: ${message}`);
  } catch (e) {
    const text = explainFailure(EDIT, "Edit with instruction", e);
    if (text) void vscode.window.showErrorMessage(text);
  }
}

/** The code the question is about: the selection, or the whole file when nothing is selected. */
function contextOf(client: LanguageClient, editor: vscode.TextEditor | undefined) {
  if (!editor || editor.document.uri.scheme === CHAT_SCHEME) return { context: null, about: undefined };
  const doc = editor.document;
  const range = editor.selection.isEmpty ? new vscode.Range(0, 0, doc.lineCount, 0) : editor.selection;
  const name = path.basename(doc.uri.path);
  const about = editor.selection.isEmpty ? name : `${name}, lines ${range.start.line + 1}-${range.end.line + 1}`;
  const c2p = client.code2ProtocolConverter;
  return { context: { textDocument: { uri: c2p.asUri(doc.uri) }, range: c2p.asRange(range) }, about };
}

/**
 * Ask a question (mellum/chat) about the selection of `codeEditor`; from a chat transcript,
 * continue its conversation. The transcript opens beside the editor and fills as chunks arrive.
 */
export async function ask(
  client: LanguageClient | undefined,
  transcripts: Transcripts,
  codeEditor: vscode.TextEditor | undefined,
): Promise<void> {
  if (!client?.isRunning()) {
    void vscode.window.showErrorMessage("Mellum: the server is not running (see the Mellum output).");
    return;
  }
  const active = vscode.window.activeTextEditor;
  const conversationId = active ? conversationOf(active.document.uri) : undefined;
  const message = await vscode.window.showInputBox({
    title: conversationId ? "Mellum: Ask (this conversation)" : "Mellum: Ask",
    prompt: "Your question",
    ignoreFocusOut: true,
  });
  if (!message) return;
  const { context, about } = contextOf(client, codeEditor);
  const params: ChatParams = { message, context, ...(conversationId ? { conversationId } : {}) };
  const turn = transcripts.ask(message, about, conversationId);
  try {
    const result = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "Mellum: answering…", cancellable: true },
      (_progress, token) => client.sendRequest<ChatResult>(CHAT, params, token),
    );
    transcripts.answered(turn, result);
    await vscode.window.showTextDocument(chatUri(result.conversationId), {
      viewColumn: vscode.ViewColumn.Beside,
      preserveFocus: true,
      preview: false,
    });
  } catch (e) {
    const text = explainFailure(CHAT, "chat", e);
    transcripts.failed(turn, text || "cancelled");
    if (text) void vscode.window.showErrorMessage(text);
  }
}
