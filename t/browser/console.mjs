// Drives the example console (docs/examples/console/) in Debian's Chromium
// the way a moderator would: paste the token, fill a form, click, read the
// page. Prints what the page showed as one JSON object on stdout; judging
// it is t/90-browser.t's job. Exits non-zero only when the page could not
// be driven at all (no browser, page did not load, a step timed out).
//
//   node t/browser/console.mjs URL TOKEN [bans|actions] [BASE]
//
//   bans     ban carol 30 min, ban dave 120 min, ban erin 45 min, ban
//            frank 30 min (for a moderator token, under a tight limit)
//   actions  unban, mute in a call, kick, block, bulk deactivate and the
//            task poll until it finishes (for an admin token)
//   BASE     typed into the gateway base URL field first (a gateway on
//            another origin than the page: CORS); default: leave it as the
//            page set it
//
// Environment: CHROMIUM (default /usr/bin/chromium),
// STREAM_MOD_BROWSER_TIMEOUT_MS (per step, default 30000),
// STREAM_MOD_BROWSER_SCREENSHOT=FILE.png (full page at the end).

import { chromium } from 'playwright-core';

const [url, token, scenario = 'bans', base] = process.argv.slice(2);
if (!url || token === undefined || !['bans', 'actions'].includes(scenario)) {
    process.stderr.write('usage: node console.mjs URL TOKEN [bans|actions] [BASE]\n');
    process.exit(64);
}

const STEP_MS = Number(process.env.STREAM_MOD_BROWSER_TIMEOUT_MS) || 30000;

// a last resort: never hang a test run
setTimeout(() => {
    process.stderr.write(`console.mjs: gave up after ${(STEP_MS * 8) / 1000} s\n`);
    process.exit(3);
}, STEP_MS * 8).unref();

const out = {
    url, scenario, page_errors: [], console_errors: [], failed_requests: [], steps: [],
};

// Everything the result panel and the newest log line show, read in one go
// as soon as the log has more than `before` lines.
function snapshot(before) {
    const items = document.querySelectorAll('#log li');
    if (items.length <= before) return false;
    const t = (id) => document.getElementById(id).textContent;
    const li = items[0];
    return {
        seq: document.getElementById('result').dataset.seq,
        action: t('result-action'),
        request: t('result-request'),
        outcome: t('result-outcome'),
        status: t('result-status'),
        code: t('result-code'),
        message: t('result-message'),
        retry_after: t('result-retry-after'),
        ratelimit_limit: t('result-ratelimit-limit'),
        ratelimit_remaining: t('result-ratelimit-remaining'),
        ratelimit_reset: t('result-ratelimit-reset'),
        body: t('result-body'),
        log_top: { ...li.dataset, text: li.textContent },
        log_count: items.length,
    };
}

function readLog() {
    return [...document.querySelectorAll('#log li')].map((li) => ({ ...li.dataset, text: li.textContent }));
}

const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: STEP_MS,
});

let exitCode = 0;
try {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (e) => out.page_errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') out.console_errors.push(m.text()); });
    page.on('requestfailed', (r) => out.failed_requests.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`));

    const res = await page.goto(url);
    out.http_status = res.status();
    out.content_type = res.headers()['content-type'] ?? null;
    await page.waitForSelector('body[data-ready="1"]', { state: 'attached' });
    out.title = await page.title();
    out.base = await page.inputValue('#base');
    if (base) await page.fill('#base', base);
    out.mint_command = await page.textContent('#mint-cmd');
    out.stylesheet_applied = await page.evaluate(
        () => getComputedStyle(document.getElementById('actions')).display === 'grid');

    await page.fill('#token', token);
    out.whoami = await page.getAttribute('#whoami', 'data-user');

    // fill the fields (strings fill, booleans (un)check), click, read
    async function step(name, fields, button) {
        const before = await page.locator('#log li').count();
        for (const [sel, v] of Object.entries(fields)) {
            if (typeof v === 'boolean') await page.setChecked(sel, v);
            else await page.fill(sel, String(v));
        }
        await page.click(button);
        const handle = await page.waitForFunction(snapshot, before);
        const shown = await handle.jsonValue();
        out.steps.push({ name, ...shown });
        return shown;
    }

    if (scenario === 'bans') {
        await step('ban carol 30', { '#ban-target': 'carol', '#ban-reason': 'spam',
            '#ban-timeout': 30, '#ban-ip': false }, '#ban-submit');
        await step('ban dave 120', { '#ban-target': 'dave', '#ban-reason': 'spam',
            '#ban-timeout': 120 }, '#ban-submit');
        await step('ban erin 45', { '#ban-target': 'erin', '#ban-reason': '',
            '#ban-timeout': 45 }, '#ban-submit');
        await step('ban frank 30', { '#ban-target': 'frank', '#ban-reason': 'flood',
            '#ban-timeout': 30 }, '#ban-submit');
    } else {
        await step('unban carol', { '#unban-target': 'carol' }, '#unban-submit');
        await step('mute u-2,u-3 in default:c-1', { '#mute-call-type': 'default',
            '#mute-call-id': 'c-1', '#mute-users': 'u-2, u-3', '#mute-all': false,
            '#mute-audio': true, '#mute-video': true, '#mute-screenshare': false }, '#mute-submit');
        await step('kick u-4 from default:c-1', { '#kick-call-type': 'default',
            '#kick-call-id': 'c-1', '#kick-user': 'u-4', '#kick-block': true }, '#kick-submit');
        await step('block u-5', { '#block-target': 'u-5' }, '#block-submit');
        await step('deactivate u-7,u-8', { '#deactivate-users': 'u-7,u-8',
            '#deactivate-messages': false }, '#deactivate-submit');

        await page.waitForSelector('#task:not([data-state="idle"]):not([data-state="polling"])',
            { state: 'attached', timeout: STEP_MS * 2 });
        out.task = await page.evaluate(() => ({
            state: document.getElementById('task').dataset.state,
            task_id: document.getElementById('task-id').textContent,
            status: document.getElementById('task-status').textContent,
            polls: document.getElementById('task-polls').textContent,
            history: [...document.querySelectorAll('#task-history li')].map((li) => li.textContent),
            result: document.getElementById('task-result').textContent,
            visible: !document.getElementById('task').hidden,
        }));
    }

    out.log = await page.evaluate(readLog);
    out.busy = await page.getAttribute('body', 'data-busy');

    if (process.env.STREAM_MOD_BROWSER_SCREENSHOT) {
        const file = process.env.STREAM_MOD_BROWSER_SCREENSHOT.replace(/(\.png)?$/, `-${scenario}$1`);
        await page.screenshot({ path: file, fullPage: true });
    }
} catch (e) {
    out.error = String(e && e.stack ? e.stack : e);
    process.stderr.write(`console.mjs: ${out.error}\n`);
    exitCode = 1;
} finally {
    await browser.close().catch(() => {});
}

process.stdout.write(JSON.stringify(out) + '\n');
process.exitCode = exitCode;
