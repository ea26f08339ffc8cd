// Drives the dashboard page in headless Chromium and prints what it shows as JSON on stdout.
// Used by server/tests/dashboard.rs; arguments come in the environment.
const fs = require('fs');
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const URL = process.env.DASHBOARD_URL;
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

// Every tile's value, every table row's cells, and the number of points each chart draws.
async function read(page) {
  return page.evaluate(() => {
    const tiles = {};
    for (const t of document.querySelectorAll('[data-tile]')) tiles[t.dataset.tile] = t.querySelector('.v').textContent;
    const table = (id) => {
      const rows = {};
      for (const r of document.querySelectorAll(`#${id} tbody tr[data-name]`)) {
        const cells = {};
        for (const c of r.querySelectorAll('td[data-k]')) cells[c.dataset.k] = c.textContent;
        rows[r.dataset.name] = cells;
      }
      return rows;
    };
    const chart_points = {};
    for (const s of document.querySelectorAll('svg[id^="chart-"]')) {
      chart_points[s.id.slice(6)] = s.querySelectorAll('circle, rect').length;
    }
    return {
      status: document.getElementById('status').dataset.state || '',
      tiles, chart_points,
      language: table('t-language'), editor: table('t-editor'), key: table('t-key'), keys: table('t-keys'),
      languages: Object.keys(table('t-language')),
    };
  });
}

// Waits until the page has drawn data (the status says it is up to date) and `ok` holds.
async function settle(page, ok) {
  const t0 = Date.now();
  for (;;) {
    const r = await read(page);
    if (r.status === 'ok' && ok(r)) return r;
    if (Date.now() - t0 > 30000) throw new Error('the page never showed the expected figures: ' + JSON.stringify(r));
    await page.waitForTimeout(200);
  }
}

(async () => {
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ARGS });
  const out = {};
  let page;
  try {
    // A visitor without a key: the key form, no figures.
    const anon = await browser.newPage();
    await anon.goto(URL, { waitUntil: 'load' });
    await anon.waitForSelector('#keyform.show', { timeout: 30000 });
    out.unauthenticated = {
      form_shown: await anon.isVisible('#keyform'),
      shown_tile: await anon.evaluate(() => (document.querySelector('[data-tile="shown"] .v') || { textContent: '' }).textContent),
    };
    await anon.close();

    // The team lead enters the admin key once.
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 1100 } });
    page = await context.newPage();
    await page.goto(URL, { waitUntil: 'load' });
    await page.waitForSelector('#keyform.show', { timeout: 30000 });
    await page.fill('#adminkey', process.env.ADMIN_KEY);
    await page.click('#keyform button');
    out.all = await settle(page, (r) => r.tiles.shown === '4');

    // Kept for the session: a reload needs no key again.
    await page.reload({ waitUntil: 'load' });
    await settle(page, (r) => r.tiles.shown === '4');

    await page.selectOption('#f-language', 'rust');
    out.rust = await settle(page, (r) => r.languages.length === 1);

    // An event arrives while the page is open (through the API, as an editor would send it).
    const posted = await fetch(process.env.SERVER_URL + '/v1/telemetry', {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer ' + process.env.USER_KEY },
      body: JSON.stringify({ events: [{ event_id: 'late', completion_id: process.env.COMPLETION_ID, choice_index: 0, kind: 'shown' }] }),
    });
    if (posted.status !== 202) throw new Error('posting telemetry: ' + posted.status);
    out.refreshed = (await settle(page, (r) => r.tiles.shown === '2')).tiles;

    const [download] = await Promise.all([page.waitForEvent('download', { timeout: 15000 }), page.click('#csv')]);
    out.csv = fs.readFileSync(await download.path(), 'utf8');

    await page.selectOption('#f-language', '');
    await settle(page, (r) => r.tiles.shown === '5');
    if (process.env.GHOSTLINE_SCREENSHOT) await page.screenshot({ path: process.env.GHOSTLINE_SCREENSHOT, fullPage: true });
  } catch (e) {
    out.error = String(e);
    if (page && process.env.GHOSTLINE_SCREENSHOT) {
      try { await page.screenshot({ path: process.env.GHOSTLINE_SCREENSHOT, fullPage: true }); } catch (_) {}
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
})();
