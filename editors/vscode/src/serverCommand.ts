// Where `mellum-lsp` is: offers `findServer` (a pure search) and `NOT_FOUND_HELP`.

import * as fs from "fs";
import * as path from "path";

export const NOT_FOUND_HELP =
  "Install it with 'pipx install mellum-lsp' (puts it on PATH), or 'pip install mellum-lsp' into " +
  "the workspace's .venv, or set mellum.serverPath to the full path of mellum-lsp.";

export interface ServerLookup {
  /** `mellum.serverPath` (empty: search). */
  setting: string;
  /** The workspace folders' paths, searched for `.venv/bin/mellum-lsp`. */
  folders: string[];
  /** The PATH to search. */
  pathEnv: string;
  home: string;
  isExecutable?: (file: string) => boolean;
}

export type ServerFound = { command: string; how: string } | { error: string };

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * The `mellum-lsp` to start: the setting (`~`, `${workspaceFolder}` and relative paths resolved
 * against the first folder), else the first on PATH, else the first folder `.venv` that has one.
 */
export function findServer(lookup: ServerLookup): ServerFound {
  const isExec = lookup.isExecutable ?? executable;
  const exe = process.platform === "win32" ? "mellum-lsp.exe" : "mellum-lsp";
  if (lookup.setting.trim()) {
    let file = lookup.setting.trim();
    if (file === "~" || file.startsWith("~/")) file = path.join(lookup.home, file.slice(1));
    if (lookup.folders.length) file = file.replace(/\$\{workspaceFolder\}/g, lookup.folders[0]);
    if (!path.isAbsolute(file) && lookup.folders.length) file = path.join(lookup.folders[0], file);
    if (isExec(file)) return { command: file, how: "mellum.serverPath" };
    return { error: `mellum.serverPath is ${JSON.stringify(lookup.setting)}, which is not an executable file. ${NOT_FOUND_HELP}` };
  }
  for (const dir of lookup.pathEnv.split(path.delimiter).filter(Boolean)) {
    const file = path.join(dir, exe);
    if (isExec(file)) return { command: file, how: "PATH" };
  }
  const bin = process.platform === "win32" ? "Scripts" : "bin";
  for (const folder of lookup.folders) {
    const file = path.join(folder, ".venv", bin, exe);
    if (isExec(file)) return { command: file, how: `${path.basename(folder)}/.venv` };
  }
  const where = ["PATH", ...lookup.folders.map((f) => path.join(f, ".venv", bin))].join(", ");
  return { error: `Cannot find mellum-lsp (looked in ${where}). ${NOT_FOUND_HELP}` };
}
