// Drives real VS Code (code-server) in Debian's Chromium through playwright-core, as a person
// would: open a file, wait until the Mellum server has it, type, wait for the ghost text, take a
// screenshot, accept with Tab, save, take another screenshot; then "Mellum: Restart server" from
// the command palette and a suggestion from the new server; "Mellum: Ask" and "Mellum: Edit with
// instruction…"; then a wrong `mellum.serverPath` (pasted into the user settings.json editor) and
// the error message the extension shows for it.
//
// Usage: NODE_PATH=<dir with playwright-core> node vscode_driver.js '<json>' where the JSON has
//   url, chromium (executable), file (name to open with Quick Open), type (text typed at the end of
//   the file), typeAfterRestart, question (for Mellum: Ask), instruction (for Mellum: Edit with
//   instruction…), settingsFile (the user settings.json), badServerPath, screenshots (folder),
//   timeoutMs (per step).
// Prints one JSON line: {ok, ghostText, ghostAfterRestart, statusLabel, ask, edit,
//   notFoundMessage, steps: {name: ms}, screenshots, error?}.
// Run by tests/editors/test_vscode.py, which checks the saved file.
"use strict";

const fs = require("fs");
const path = require("path");
const { chromium } = require("playwright-core");

const GHOST = ".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text";
// the extension's status-bar item: its accessible label tells the state (editors/vscode/src/status.ts)
const STATUS = '.statusbar-item [aria-label^="Mellum"]';

async function main() {
  const cfg = JSON.parse(process.argv[2]);
  const timeout = cfg.timeoutMs ?? 60000;
  const steps = {};
  const shots = [];
  const consoleErrors = [];
  let t = Date.now();
  const step = (name) => {
    const now = Date.now();
    steps[name] = now - t;
    t = now;
  };
  fs.mkdirSync(cfg.screenshots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  const browserContext = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    permissions: ["clipboard-read", "clipboard-write"],
  });
  const page = await browserContext.newPage();
  page.setDefaultTimeout(timeout);
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text().slice(0, 300));
  });
  const shot = async (name) => {
    const file = path.join(cfg.screenshots, name);
    await page.screenshot({ path: file });
    shots.push(file);
    return file;
  };
  const statusLabel = async () => {
    const el = page.locator(STATUS).first();
    return (await el.count()) ? await el.getAttribute("aria-label") : null;
  };
  // Wait until the status item's label starts with `prefix`, has all of `has` and none of `hasNot`.
  const waitForStatus = (want) =>
    page.waitForFunction(
      ([sel, w]) => {
        const el = document.querySelector(sel);
        const label = el && el.getAttribute("aria-label");
        return (
          !!label &&
          label.startsWith(w.prefix) &&
          (w.has || []).every((s) => label.includes(s)) &&
          !(w.hasNot || []).some((s) => label.includes(s))
        );
      },
      [STATUS, want],
      { timeout },
    );
  const ready = { prefix: "Mellum ready", has: ["file synced"] };
  // The ghost text as a string: the inline part (one span per token) on the cursor's line, then
  // the lines of the view zone below it when the suggestion has several lines.
  const readGhost = () =>
    page.evaluate(() => {
      const text = (el) => el.textContent.replace(/\u00a0/g, " ");
      const inline = [...document.querySelectorAll(".monaco-editor .ghost-text-decoration")].map(text).join("");
      const zones = [...document.querySelectorAll(".monaco-editor .ghost-text")].map((zone) => {
        const lines = zone.querySelectorAll(".view-line");
        return lines.length ? [...lines].map(text).join("\n") : text(zone);
      });
      return zones.length ? [inline, ...zones].join("\n") : inline;
    });
  const ghostText = async () => {
    await page.locator(GHOST).first().waitFor({ state: "visible" });
    // the first ghost text may be replaced while the last requests finish: wait for it to settle
    let ghost = "";
    for (let i = 0; i < 20; i++) {
      const now = await readGhost();
      if (now && now === ghost) break;
      ghost = now;
      await page.waitForTimeout(150);
    }
    return ghost;
  };
  const toasts = ".notification-toast .notification-list-item-message";
  // Run a command that asks for text in an input box; what came of it: {kind: "transcript", text}
  // (a mellum-chat: document opened), {kind: "message", text} (a notification naming `what`),
  // or {kind: "edited"} (the file changed).
  const commandOutcome = async (title, answer, what) => {
    await runCommand(title);
    const input = page.locator(".quick-input-widget input");
    await input.waitFor();
    await input.fill(answer);
    await page.keyboard.press("Enter");
    const transcript = page.locator('.tab[data-resource-name$=".md"]').first();
    const message = page.locator(toasts, { hasText: what }).first();
    const dirty = page.locator(".tab.dirty").first();
    const kind = await Promise.any([
      transcript.waitFor().then(() => "transcript"),
      message.waitFor().then(() => "message"),
      dirty.waitFor().then(() => "edited"),
    ]);
    if (kind === "message") return { kind, text: await message.textContent() };
    if (kind === "transcript") {
      const group = page.locator(".editor-group-container", { has: page.locator(".tab.active[data-resource-name$='.md']") });
      await page.waitForFunction(() => !document.body.innerText.includes("_…_"), null, { timeout });
      return { kind, text: (await group.locator(".view-lines").first().innerText()).replace(/\u00a0/g, " ") };
    }
    return { kind };
  };
  const runCommand = async (title) => {
    await page.keyboard.press("F1");
    const input = page.locator(".quick-input-widget input");
    await input.waitFor();
    await input.fill(`>${title}`);
    await page.locator(`.quick-input-list .monaco-list-row[aria-label*="${title}"]`).first().waitFor();
    await page.keyboard.press("Enter");
  };
  const result = { ok: false, steps, screenshots: shots };
  try {
    // One page load for the whole run: each load starts another extension host.
    await page.goto(cfg.url);
    await page.locator(".monaco-workbench .part.editor").waitFor();
    await page.locator(STATUS).first().waitFor();
    step("workbench");

    await page.locator(".monaco-workbench .part.editor").click({ position: { x: 300, y: 300 } });
    await page.keyboard.press("Control+P");
    const quickOpen = page.locator(".quick-input-widget input");
    await quickOpen.waitFor();
    await quickOpen.fill(cfg.file);
    await page.locator(`.quick-input-list .monaco-list-row[aria-label*="${cfg.file}"]`).first().waitFor();
    await page.keyboard.press("Enter");
    await page.locator(`.tab[data-resource-name="${cfg.file}"], .tab[aria-label^="${cfg.file}"]`).first().waitFor();
    const editor = page.locator(".part.editor .monaco-editor .view-lines").first();
    await editor.waitFor();
    step("file opened");

    // The extension starts after the workbench; type only once the server has the document.
    await waitForStatus(ready);
    result.readyLabel = await statusLabel();
    step("server has the document");

    await editor.click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type(cfg.type, { delay: 40 });
    step("typed");
    result.ghostText = await ghostText();
    step("ghost text shown");
    result.statusLabel = await statusLabel();
    await shot("1-ghost-text.png");

    await page.keyboard.press("Tab");
    await page.locator(GHOST).first().waitFor({ state: "detached", timeout: 10000 }).catch(() => undefined);
    step("accepted");
    await page.keyboard.press("Control+S");
    await page.locator(".tab.dirty").first().waitFor({ state: "detached", timeout: 15000 });
    step("saved");
    await shot("2-accepted.png");
    result.statusLabelAfter = await statusLabel();

    // A new server: the status starts over (no last suggestion) and has the document again.
    await runCommand("Mellum: Restart server");
    await waitForStatus({ ...ready, hasNot: ["last suggestion"] });
    step("restarted");
    await editor.click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type(cfg.typeAfterRestart, { delay: 40 });
    result.ghostAfterRestart = await ghostText();
    step("ghost text after restart");
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S"); // a clean file: an edit would make it dirty
    await page.locator(".tab.dirty").first().waitFor({ state: "detached", timeout: 15000 });

    // Ask and Edit with instruction: the chat transcript opens beside the editor, or (a server
    // without mellum/chat, mellum/edit) the extension says that the server does not offer them.
    result.ask = await commandOutcome("Mellum: Ask", cfg.question, "chat");
    step("ask");
    await editor.click();
    await page.keyboard.press("Home");
    await page.keyboard.press("Shift+End");
    result.edit = await commandOutcome("Mellum: Edit with instruction", cfg.instruction, "Edit with instruction");
    step("edit with instruction");
    await runCommand("Notifications: Clear All Notifications");

    // A wrong mellum.serverPath, set in the settings editor: the extension restarts, finds
    // nothing and says how to install.
    const settings = JSON.parse(fs.readFileSync(cfg.settingsFile, "utf8"));
    await runCommand("Preferences: Open User Settings (JSON)");
    await page.locator('.tab[data-resource-name="settings.json"]').first().waitFor();
    await page.locator(".part.editor .monaco-editor.focused").first().waitFor();
    const wrong = JSON.stringify({ ...settings, "mellum.serverPath": cfg.badServerPath }, null, 2);
    await page.evaluate((text) => navigator.clipboard.writeText(text), wrong);
    await page.keyboard.press("Control+A");
    await page.keyboard.press("Control+V"); // typed, the editor would indent and close brackets
    await page.keyboard.press("Control+S");
    const toast = page.locator(toasts, { hasText: cfg.badServerPath });
    await toast.first().waitFor();
    result.settingsSaved = fs.readFileSync(cfg.settingsFile, "utf8");
    result.notFoundMessage = await toast.first().textContent();
    await waitForStatus({ prefix: "Mellum: error" });
    result.statusLabelNotFound = await statusLabel();
    step("server not found");
    await shot("3-server-not-found.png");
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e).slice(0, 2000);
    result.statusLabelAtFailure = await statusLabel().catch(() => null);
    await shot("failure.png").catch(() => undefined);
    result.notifications = await page
      .locator(toasts)
      .allTextContents()
      .catch(() => []);
  } finally {
    result.consoleErrors = consoleErrors.slice(0, 20);
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e) }) + "\n");
  process.exitCode = 1;
});
