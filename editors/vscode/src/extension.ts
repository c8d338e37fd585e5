// Mellum for VS Code: starts `mellum-lsp serve` and wires it into the editor.
//
// Inline completions (ghost text) and code actions come from the language client; this file adds
// the commands (Edit with instruction…, Ask, Restart server, Show output), the status-bar item,
// the chat transcripts and the Mellum output channel. Offers `activate`, `deactivate`.

import * as os from "os";
import * as vscode from "vscode";
import { DidChangeConfigurationNotification, LanguageClient, State } from "vscode-languageclient/node";
import { CHAT_SCHEME, Transcripts, chatUri } from "./chat";
import { createClient } from "./client";
import { ask, editWithInstruction } from "./commands";
import { CHAT_CHUNK, ChatChunk, CompletionMetrics, DOCUMENT, LAST_COMPLETION, METRICS, STATUS, ServerStatus } from "./protocol";
import { findServer } from "./serverCommand";
import { serverSettingKeys } from "./settings";
import { StatusItem } from "./status";

const SHOWN = new Set(["model", "typed_along", "engine_typed_ahead"]);

/** One running server at a time: start, stop, restart, and what the status bar shows of it. */
class ServerManager implements vscode.Disposable {
  client: LanguageClient | undefined;
  private generation = 0;
  private readonly perClient: vscode.Disposable[] = [];

  constructor(
    private readonly settingKeys: string[],
    private readonly output: vscode.LogOutputChannel,
    private readonly status: StatusItem,
    private readonly transcripts: Transcripts,
  ) {}

  async start(): Promise<void> {
    const generation = ++this.generation;
    const config = vscode.workspace.getConfiguration("mellum");
    const found = findServer({
      setting: config.get<string>("serverPath") ?? "",
      folders: (vscode.workspace.workspaceFolders ?? []).filter((f) => f.uri.scheme === "file").map((f) => f.uri.fsPath),
      pathEnv: process.env.PATH ?? "",
      home: os.homedir(),
    });
    if ("error" in found) {
      this.status.reset("error", found.error);
      this.output.error(found.error);
      void vscode.window.showErrorMessage(`Mellum: ${found.error}`, "Open Settings").then((choice) => {
        if (choice) void vscode.commands.executeCommand("workbench.action.openSettings", "mellum.serverPath");
      });
      return;
    }
    const args = config.get<string[]>("serverArgs") ?? [];
    this.output.info(`starting ${found.command} serve ${args.join(" ")} (found through ${found.how})`);
    this.status.reset("starting");
    const client = createClient(found.command, args, this.settingKeys, this.output, {
      completed: (uri) => void this.refreshLast(client, uri),
      opened: (uri) => {
        if (uri.toString() === vscode.window.activeTextEditor?.document.uri.toString()) void this.checkActive();
      },
    });
    this.client = client;
    this.perClient.push(
      client.onDidChangeState((e) => {
        if (e.newState === State.Stopped && this.client === client) this.status.reset("stopped");
      }),
      client.onNotification(METRICS, (m: CompletionMetrics & { event?: string }) => {
        this.output.debug(`metrics ${JSON.stringify(m)}`);
        if (m.event === "completion" && m.text && SHOWN.has(m.served)) this.status.update({ last: m });
      }),
      client.onNotification(CHAT_CHUNK, (c: ChatChunk) => this.transcripts.chunk(c)),
    );
    try {
      await client.start();
    } catch (e) {
      if (generation !== this.generation) return;
      const text = e instanceof Error ? e.message : String(e);
      this.status.reset("error", `the server did not start: ${text}`);
      this.output.error(`the server did not start: ${text}`);
      return;
    }
    if (generation !== this.generation) return;
    const info = client.initializeResult?.serverInfo;
    this.status.update({ phase: "running", server: `${found.command} (${info?.name ?? "?"} ${info?.version ?? ""})` });
    const schemes = (client.initializeResult?.capabilities.workspace as { textDocumentContent?: { schemes?: string[] } })
      ?.textDocumentContent?.schemes;
    if (!schemes?.includes(CHAT_SCHEME)) {
      // the server does not serve transcripts itself (LSP 3.18 workspace/textDocumentContent)
      this.perClient.push(vscode.workspace.registerTextDocumentContentProvider(CHAT_SCHEME, this.transcripts));
    }
    void this.checkActive();
    void this.waitForEngine(client, generation);
  }

  /** Poll mellum/status until the engine is connected (the model is loaded). */
  private async waitForEngine(client: LanguageClient, generation: number): Promise<void> {
    while (generation === this.generation && client.isRunning()) {
      try {
        const s = await client.sendRequest<ServerStatus>(STATUS, {});
        if (generation !== this.generation) return;
        this.status.update({ engine: s.engine });
        if (s.engine?.connected) {
          this.output.info(`engine ready: ${JSON.stringify(s.engine.info)}`);
          return;
        }
      } catch (e) {
        this.output.warn(`mellum/status failed: ${e instanceof Error ? e.message : e}`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  /** Whether the server has the active editor's document (mellum/document answers for it). */
  async checkActive(): Promise<void> {
    const client = this.client;
    const doc = vscode.window.activeTextEditor?.document;
    if (!client?.isRunning() || !doc || doc.uri.scheme === CHAT_SCHEME) return;
    let synced = false;
    try {
      await client.sendRequest(DOCUMENT, { uri: client.code2ProtocolConverter.asUri(doc.uri) });
      synced = true;
    } catch {
      synced = false;
    }
    if (client === this.client && doc === vscode.window.activeTextEditor?.document) {
      this.status.update({ activeSynced: synced });
      if (synced) this.output.debug(`the server has ${doc.uri.toString()}`);
    }
  }

  private async refreshLast(client: LanguageClient, uri: vscode.Uri): Promise<void> {
    try {
      const m = await client.sendRequest<CompletionMetrics | null>(LAST_COMPLETION, {
        uri: client.code2ProtocolConverter.asUri(uri),
      });
      if (m && m.text && SHOWN.has(m.served) && client === this.client) this.status.update({ last: m });
    } catch (e) {
      this.output.warn(`mellum/lastCompletion failed: ${e instanceof Error ? e.message : e}`);
    }
  }

  /** Tell the server to pull the `mellum` section again (workspace/configuration). */
  configurationChanged(): void {
    if (this.client?.isRunning()) {
      void this.client.sendNotification(DidChangeConfigurationNotification.type, { settings: null });
    }
  }

  async stop(): Promise<void> {
    this.generation++;
    const client = this.client;
    this.client = undefined;
    this.perClient.splice(0).forEach((d) => d.dispose());
    if (!client) return;
    try {
      if (client.needsStop()) await client.stop();
    } catch (e) {
      this.output.warn(`stopping the server: ${e instanceof Error ? e.message : e}`);
    }
    await client.dispose();
    this.status.reset("stopped");
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  dispose(): void {
    void this.stop();
  }
}

let manager: ServerManager | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const output = vscode.window.createOutputChannel("Mellum", { log: true });
  const status = new StatusItem("mellum.showOutput");
  const transcripts = new Transcripts();
  const server = new ServerManager(serverSettingKeys(context.extension.packageJSON), output, status, transcripts);
  manager = server;
  transcripts.onNew = (id) =>
    void vscode.window.showTextDocument(chatUri(id), { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true, preview: false });
  let codeEditor = vscode.window.activeTextEditor;
  context.subscriptions.push(
    output,
    status,
    transcripts,
    server,
    vscode.commands.registerCommand("mellum.restartServer", () => server.restart()),
    vscode.commands.registerCommand("mellum.showOutput", () => output.show(true)),
    vscode.commands.registerCommand("mellum.editSelection", () => editWithInstruction(server.client)),
    vscode.commands.registerCommand("mellum.ask", () => ask(server.client, transcripts, codeEditor)),
    vscode.window.onDidChangeActiveTextEditor((editor) => {
      if (editor && editor.document.uri.scheme !== CHAT_SCHEME) codeEditor = editor;
      void server.checkActive();
    }),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("mellum.serverPath") || e.affectsConfiguration("mellum.serverArgs")) {
        output.info("mellum.serverPath or mellum.serverArgs changed: restarting the server");
        void server.restart();
      } else if (e.affectsConfiguration("mellum")) {
        server.configurationChanged();
      }
    }),
  );
  void server.start();
}

export async function deactivate(): Promise<void> {
  await manager?.stop();
}
