// The server's settings as VS Code holds them: offers `serverSettingKeys` and `serverSettings`.
//
// package.json contributes every server setting under `mellum.*` (the same names, camelCase, as
// mellum_lsp/settings.py). Only the values the user set are sent, nested as the server reads them
// ({"completion": {"maxTokens": 32}}), so the server's own defaults stay the defaults. Settings of
// this extension alone (how to start the server, tracing) are never sent: the server would report
// them as unknown.

/** Settings read by this extension only, relative to `mellum.`. */
export const CLIENT_ONLY = new Set(["serverPath", "serverArgs", "trace.server"]);

interface Contributions {
  contributes?: { configuration?: { properties?: Record<string, unknown> } | { properties?: Record<string, unknown> }[] };
}

/** The server settings this extension contributes, relative to `mellum.` (`completion.maxTokens`). */
export function serverSettingKeys(packageJSON: Contributions): string[] {
  const sections = packageJSON.contributes?.configuration ?? [];
  const list = Array.isArray(sections) ? sections : [sections];
  const keys: string[] = [];
  for (const section of list) {
    for (const key of Object.keys(section.properties ?? {})) {
      if (!key.startsWith("mellum.")) continue;
      const rel = key.slice("mellum.".length);
      if (!CLIENT_ONLY.has(rel)) keys.push(rel);
    }
  }
  return keys;
}

/** What `vscode.WorkspaceConfiguration` offers that we need (a plain object in tests). */
export interface SettingsSource {
  get<T>(key: string): T | undefined;
  inspect(key: string): { globalValue?: unknown; workspaceValue?: unknown; workspaceFolderValue?: unknown } | undefined;
}

/** The `mellum` section to send: the values set by the user, nested by the dots of their names. */
export function serverSettings(keys: string[], config: SettingsSource): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of keys) {
    const seen = config.inspect(key);
    const isSet =
      seen !== undefined &&
      (seen.globalValue !== undefined || seen.workspaceValue !== undefined || seen.workspaceFolderValue !== undefined);
    if (!isSet) continue;
    const parts = key.split(".");
    let node = out;
    for (const part of parts.slice(0, -1)) {
      node = (node[part] ??= {}) as Record<string, unknown>;
    }
    node[parts[parts.length - 1]] = config.get(key);
  }
  return out;
}
