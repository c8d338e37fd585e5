// The status-bar item: the model, the last completion's latency and cache reuse, and whether the
// server has the active file. Offers `StatusState`, `describe` (pure) and `StatusItem`.

import * as vscode from "vscode";
import type { CompletionMetrics, ServerStatus } from "./protocol";

export interface StatusState {
  phase: "starting" | "running" | "stopped" | "error";
  error?: string;
  /** How the server was found ("PATH", "mellum.serverPath", ...) and its version. */
  server?: string;
  engine?: ServerStatus["engine"];
  /** The active editor's file is open in the server (checked with mellum/document). */
  activeSynced?: boolean;
  last?: CompletionMetrics;
}

export interface Described {
  text: string;
  tooltip: string;
  /** Also read by the editor test (tests/editors/vscode_driver.js) to know when to type. */
  label: string;
}

function modelName(engine: ServerStatus["engine"]): string {
  const info = engine?.info ?? {};
  const model = info.model ?? info.model_id ?? "model";
  return model.replace(/[\\/]+$/, "").split(/[\\/]/).pop() || model;
}

/** Percent of the prompt served from the engine's cache, or undefined when unknown. */
export function reusePercent(m: CompletionMetrics | undefined): number | undefined {
  const c = m?.cache;
  if (!c || !c.prompt_tokens) return undefined;
  return Math.round((100 * (c.reused_tokens ?? 0)) / c.prompt_tokens);
}

/** The item's text, tooltip and accessible label for a state. */
export function describe(s: StatusState): Described {
  if (s.phase === "error") {
    return { text: "$(error) Mellum", tooltip: s.error ?? "error", label: `Mellum: error: ${s.error ?? ""}` };
  }
  if (s.phase === "stopped") return { text: "$(circle-slash) Mellum", tooltip: "server stopped", label: "Mellum: stopped" };
  if (s.phase === "starting") return { text: "$(loading~spin) Mellum", tooltip: "starting the server", label: "Mellum: starting" };
  if (!s.engine?.connected) {
    return { text: "$(loading~spin) Mellum: loading model", tooltip: "the engine is starting", label: "Mellum: loading model" };
  }
  const model = modelName(s.engine);
  const parts = [`$(sparkle) ${model}`];
  const lines = [`Mellum: ${model} (${s.engine.info.backend ?? "?"} backend)`];
  if (s.server) lines.push(`server: ${s.server}`);
  const last = s.last;
  const reuse = reusePercent(last);
  if (last) {
    parts.push(last.served === "typed_along" ? "typed along" : `${Math.round(last.latency_ms)} ms`);
    if (reuse !== undefined) parts.push(`${reuse}% cached`);
    lines.push(`last suggestion: ${last.served}, ${last.latency_ms.toFixed(0)} ms`);
    if (last.cache?.prompt_tokens) {
      lines.push(`prompt: ${last.cache.prompt_tokens} tokens, ${last.cache.reused_tokens ?? 0} reused from the cache`);
    }
  }
  const file = s.activeSynced ? "file synced" : "file not open in the server";
  lines.push(`active file: ${s.activeSynced ? "open in the server" : "not open in the server"}`);
  const label =
    `Mellum ready: ${model}; ${file}` +
    (last ? `; last suggestion ${Math.round(last.latency_ms)} ms` : "") +
    (reuse !== undefined ? `, ${reuse}% of the prompt cached` : "");
  return { text: parts.join(" · "), tooltip: lines.join("\n"), label };
}

/** The status-bar item, redrawn on every change of state. */
export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private state: StatusState = { phase: "starting" };

  constructor(command: string) {
    this.item = vscode.window.createStatusBarItem("mellum.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "Mellum";
    this.item.command = command;
    this.render();
    this.item.show();
  }

  get current(): StatusState {
    return this.state;
  }

  update(change: Partial<StatusState>): void {
    this.state = { ...this.state, ...change };
    this.render();
  }

  reset(phase: StatusState["phase"], error?: string): void {
    this.state = { phase, error };
    this.render();
  }

  private render(): void {
    const d = describe(this.state);
    this.item.text = d.text;
    this.item.tooltip = d.tooltip;
    this.item.accessibilityInformation = { label: d.label };
  }

  dispose(): void {
    this.item.dispose();
  }
}
