// Drives code-server (VS Code 1.100 in a browser) with the ghostline extension installed:
// opens a Python file, types in it, waits for ghost text, accepts it with Tab and saves.
// Used by tests/editor_vscode.rs; arguments come in the environment.
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

(async () => {
  const url = process.env.CODE_SERVER_URL;
  const file = process.env.GHOSTLINE_TEST_FILE_NAME;
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const out = { steps: [] };
  try {
    const page = await browser.newPage();
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 120000 });
    await page.waitForSelector('.monaco-workbench', { timeout: 120000 });
    out.steps.push('workbench');
    // Open the file from the explorer (the workspace folder is open at start).
    const row = page.locator('.explorer-folders-view .monaco-list-row', { hasText: file });
    await row.first().waitFor({ timeout: 60000 });
    await row.first().click();
    await page.waitForSelector('.monaco-editor .view-lines', { timeout: 30000 });
    await page.locator('.monaco-editor .view-lines').first().click();
    out.steps.push('opened');
    // The extension activates on startup-finished, which can come after the editor is usable:
    // typed text must reach a running language client, so wait for its status bar item to
    // say ready (the check icon) before typing.
    const item = page.locator('.statusbar-item', { hasText: 'ghostline' });
    await item.first().waitFor({ timeout: 90000 });
    await page.locator('.statusbar-item:has-text("ghostline") .codicon-check').first().waitFor({ timeout: 90000 });
    out.steps.push('extension ready');
    // Line 7, end of line: Ctrl+G 7, End.
    await page.waitForTimeout(1500);
    await page.keyboard.press('Control+G');
    await page.keyboard.type('7');
    await page.keyboard.press('Enter');
    await page.keyboard.press('End');
    await page.keyboard.type('len(', { delay: 80 });
    // Ask explicitly too (editor.action.inlineSuggest.trigger), as a user would with Alt+\.
    await page.waitForTimeout(1000);
    await page.keyboard.press('Alt+Backslash');
    await page.waitForSelector('.ghost-text-decoration, .ghost-text', { timeout: 90000 });
    out.ghost = await page.$$eval('.ghost-text-decoration, .ghost-text', (els) => els.map((e) => e.textContent).join(''));
    out.steps.push('ghost text');
    if (process.env.GHOSTLINE_SCREENSHOT) {
      await page.screenshot({ path: process.env.GHOSTLINE_SCREENSHOT });
    }
    await page.keyboard.press('Tab');
    await page.waitForTimeout(500);
    await page.keyboard.press('Control+S');
    await page.waitForTimeout(4000); // the LSP's telemetry batch goes out every 3 s
    out.steps.push('accepted');
  } catch (e) {
    out.error = String(e);
    if (process.env.GHOSTLINE_SCREENSHOT) {
      try { await browser.contexts()[0].pages()[0].screenshot({ path: process.env.GHOSTLINE_SCREENSHOT }); } catch (_) {}
    }
  } finally {
    await browser.close();
    console.log(JSON.stringify(out));
  }
})();
