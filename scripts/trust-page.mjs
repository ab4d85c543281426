// Opens a tenant's trust page (GET /api/v1/tenant/posture?format=html) in
// headless Chromium, takes a full-page screenshot, and reports what the
// page did: console messages, page errors, and every request it made.
// Usage: node scripts/trust-page.mjs URL TOKEN OUT.png
// Prints one JSON object; exits 1 when the page logged an error, threw, or
// requested anything but itself. Needs playwright-core (scripts/trust-page
// installs it) and Chromium (STRONGROOM_CHROMIUM, default /usr/bin/chromium).
import { chromium } from 'playwright-core';

const [url, token, out] = process.argv.slice(2);
if (!url || !token || !out) {
    console.error('usage: node scripts/trust-page.mjs URL TOKEN OUT.png');
    process.exit(2);
}
const browser = await chromium.launch({
    executablePath: process.env.STRONGROOM_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { url, status: null, title: null, console: [], errors: [], requests: [] };
try {
    const page = await browser.newPage({
        viewport: { width: 1100, height: 900 },
        extraHTTPHeaders: { Authorization: `Bearer ${token}` },
    });
    page.on('console', (m) => result.console.push({ type: m.type(), text: m.text() }));
    page.on('pageerror', (e) => result.errors.push(String(e)));
    page.on('request', (r) => result.requests.push(r.url()));
    const response = await page.goto(url, { waitUntil: 'load' });
    result.status = response ? response.status() : null;
    result.title = await page.title();
    result.rows = await page.locator('tbody tr').count();
    await page.screenshot({ path: out, fullPage: true });
} finally {
    await browser.close();
}
const elsewhere = result.requests.filter((r) => r !== url);
const bad = result.status !== 200 || result.errors.length > 0 || elsewhere.length > 0
    || result.console.some((m) => m.type === 'error' || m.type === 'warning');
console.log(JSON.stringify(result));
process.exit(bad ? 1 : 0);
