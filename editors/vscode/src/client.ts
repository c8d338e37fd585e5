// The language client for `mellum-lsp serve`: offers `createClient` and `ClientHooks`.
//
// vscode-languageclient (10 and newer: LSP 3.18) registers the inline-completion provider, code
// actions and the server's commands from the server's capabilities. Settings: the `mellum` section
// goes in `initializationOptions` and answers `workspace/configuration` (see settings.ts).

import * as vscode from "vscode";
import { LanguageClient, LanguageClientOptions, ServerOptions, TransportKind } from "vscode-languageclient/node";
import { serverSettings } from "./settings";

export interface ClientHooks {
  /** After the server answered an inline-completion request for `uri`. */
  completed(uri: vscode.Uri): void;
  /** After a document was sent to the server with didOpen. */
  opened(uri: vscode.Uri): void;
}

export function createClient(
  command: string,
  args: string[],
  settingKeys: string[],
  output: vscode.LogOutputChannel,
  hooks: ClientHooks,
): LanguageClient {
  const mellumSection = (scope?: vscode.Uri) => serverSettings(settingKeys, vscode.workspace.getConfiguration("mellum", scope));
  const serverOptions: ServerOptions = {
    command,
    args: ["serve", ...args],
    transport: TransportKind.stdio,
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    outputChannel: output,
    initializationOptions: { mellum: mellumSection() },
    middleware: {
      workspace: {
        configuration: async (params, token, next) => {
          const answers = await next(params, token);
          if (!Array.isArray(answers)) return answers;
          return params.items.map((item, i) =>
            item.section === "mellum" ? mellumSection(item.scopeUri ? vscode.Uri.parse(item.scopeUri) : undefined) : answers[i],
          );
        },
      },
      didOpen: async (document, next) => {
        await next(document);
        hooks.opened(document.uri);
      },
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        const result = await next(document, position, context, token);
        if (!token.isCancellationRequested) hooks.completed(document.uri);
        return result;
      },
    },
  };
  return new LanguageClient("mellum", "Mellum", serverOptions, clientOptions);
}
