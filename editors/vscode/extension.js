// Mellum for VS Code: starts `mellum-lsp serve` and lets vscode-languageclient wire up
// textDocument/inlineCompletion (ghost text), settings (section "mellum") and progress.
// Accepting a suggestion runs the item's `mellum.accepted` command on the server.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function createClient() {
  const [command, ...args] = vscode.workspace.getConfiguration("mellumServer").get("command");
  const serverOptions = { command, args, transport: TransportKind.stdio };
  const clientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    // The server also pulls "mellum" with workspace/configuration on every change.
    synchronize: { configurationSection: "mellum" },
    initializationOptions: { mellum: JSON.parse(JSON.stringify(vscode.workspace.getConfiguration("mellum"))) },
  };
  const c = new LanguageClient("mellum", "Mellum", serverOptions, clientOptions);
  // inline completion is LSP 3.18: a proposed feature in vscode-languageclient 9.x
  c.registerProposedFeatures();
  return c;
}

async function activate(context) {
  client = createClient();
  context.subscriptions.push(
    vscode.commands.registerCommand("mellum.restartServer", async () => {
      await client.stop();
      client = createClient();
      await client.start();
    }),
  );
  await client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
