// Gatehouse browser tests: drives Debian's headless Chromium with playwright-core through a
// whole sign-in: a protected page, the IdP's login form, the who-am-I page (screenshot), sign-out
// at Gatehouse and at the IdP, and the protected page again.
//
// Usage: node browser.mjs '<json>' with
//   {"start": URL of a protected page, "gateway": Gatehouse's external URL,
//    "username": ..., "password": ..., "screenshot": PNG path, "chromium": optional path}
// or, to approve a device sign-in (RFC 8628) as a person would:
//   {"scenario": "device", "start": verification_uri_complete, "username": ..., "password": ...}
// Prints one JSON object: the URLs and page texts seen at each step, and the cookies (names and
// attributes only; values are replaced by their length).
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const device = cfg.scenario === 'device';
for (const k of device ? ['start', 'username', 'password'] : ['start', 'gateway', 'username', 'password', 'screenshot']) {
  if (typeof cfg[k] !== 'string') {
    console.error(`browser: "${k}" is required`);
    process.exit(2);
  }
}

const browser = await chromium.launch({
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors'],
});
const out = {};
const cookies = async (ctx) => (await ctx.cookies()).map(({ value, ...rest }) => ({ ...rest, valueLength: value.length }));
const onGateway = (u) => u.toString().startsWith(cfg.gateway);
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  context.setDefaultTimeout(20000);
  const page = await context.newPage();

  if (device) {
    await page.goto(cfg.start);
    out.user_code = await page.innerText('#user-code');
    await page.click('#confirm');
    await page.fill('input[name=username]', cfg.username);
    await page.fill('input[name=password]', cfg.password);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('text=Sign-in Success');
    out.done_text = await page.innerText('body');
    throw null; // done: skip the gateway scenario
  }

  await page.goto(cfg.start);
  out.login_url = page.url();
  await page.fill('input[name=username]', cfg.username);
  await page.fill('input[name=password]', cfg.password);
  await Promise.all([page.waitForURL(onGateway), page.click('#login button[type=submit]')]);
  out.after_login_url = page.url();
  out.after_login_text = await page.innerText('body');
  out.cookies = await cookies(context);

  await page.goto(`${cfg.gateway}/.gatehouse/`);
  out.whoami_url = page.url();
  out.whoami_text = await page.innerText('body');
  await page.screenshot({ path: cfg.screenshot, fullPage: true });

  await page.click('form[action="/.gatehouse/logout"] button[type=submit]');
  await page.waitForSelector('button[value=yes]');
  out.idp_logout_url = page.url();
  await Promise.all([
    page.waitForURL((u) => u.toString().startsWith(`${cfg.gateway}/.gatehouse/signed-out`)),
    page.click('button[value=yes]'),
  ]);
  out.signed_out_url = page.url();
  out.signed_out_text = await page.innerText('body');
  out.cookies_after_logout = await cookies(context);

  await page.goto(cfg.start);
  out.after_logout_url = page.url();
  out.after_logout_has_login_form = (await page.locator('input[name=password]').count()) > 0;
} catch (e) {
  if (e !== null) out.error = String(e?.stack ?? e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
