// Drives the operator console in Debian's headless Chromium, as a person on call would: log in,
// replay a dead letter and watch it succeed, trace the event through its retries, resolve a
// conflict, look up and cancel a certificate; axe-core checks every page, and a screenshot of
// each is kept. Started by tests/e2e/console.rs, which made the dead letter, the conflict and
// the certificate and checks the services afterwards. Exits 1 on the first failed check.
//
// Environment: CONSOLE_URL, CONSOLE_USER, CONSOLE_PASSWORD, EVENT_ID, CONFLICT_ID, CERT_CODE,
// SCREENSHOT_DIR.

import { chromium } from "playwright-core";
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE = require.resolve("axe-core/axe.min.js");
const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env("CONSOLE_URL");
const shots = env("SCREENSHOT_DIR");
mkdirSync(shots, { recursive: true });

function check(ok, what) {
  if (!ok) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

/** Every axe-core rule that applies, on the page as it is now; any violation fails. */
async function accessible(page, name) {
  await page.addScriptTag({ path: AXE });
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ["violations"] }));
  const found = result.violations.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  check(found.length === 0, `${name}: no accessibility violations${found.length ? ": " + found.join("; ") : ""}`);
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/** Reloads until `text` shows in `locator`, for at most `seconds`. */
async function until(page, locator, text, seconds) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const content = (await page.locator(locator).allInnerTexts()).join("\n");
    if (content.includes(text)) return content;
    if (Date.now() > end) throw new Error(`timed out waiting for "${text}" in ${locator}; last: ${content}`);
    await page.waitForTimeout(500);
    await page.reload();
  }
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
// axe-core is injected as a script; the console's own policy forbids every script.
const context = await browser.newContext({ bypassCSP: true, viewport: { width: 1366, height: 900 } });
const page = await context.newPage();
let failed = false;
try {
  // Log in: a wrong password is refused, the right one lands on the overview.
  const first = await page.goto(`${base}/`);
  check(first.headers()["content-security-policy"]?.includes("default-src 'none'"), "the pages forbid scripts");
  check(page.url().endsWith("/login"), "without a session the console asks to log in");
  await accessible(page, "login");
  await page.fill("#user", env("CONSOLE_USER"));
  await page.fill("#password", "not-the-password");
  await page.click("button[type=submit]");
  check((await page.textContent("[role=alert]")).includes("Wrong user name or password"), "a wrong password is refused");
  await page.fill("#user", env("CONSOLE_USER"));
  await page.fill("#password", env("CONSOLE_PASSWORD"));
  await page.click("button[type=submit]");
  await page.waitForURL(`${base}/`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "console_session");
  check(session?.httpOnly && session?.sameSite === "Strict", "the session cookie is HttpOnly and SameSite=Strict");

  // Overview: both services' figures and charts.
  check((await page.textContent("#crm-h")).includes("crm-sync"), "the overview shows crm-sync");
  check((await page.locator("section[aria-labelledby=crm-h] .figure").count()) >= 6, "crm-sync's figures are shown");
  check((await page.locator("section[aria-labelledby=crm-h] svg rect.s-bad").count()) >= 1, "the chart shows the dead letter");
  check((await page.locator("section[aria-labelledby=gift-h] .figure").count()) >= 4, "gift-certificates' figures are shown");
  await accessible(page, "overview");

  // Dead letters: find the test's letter, open it, dry-run its replay, confirm, see it sent.
  const eventId = env("EVENT_ID");
  await page.click("nav >> text=Dead letters");
  await page.fill("#event_id", eventId);
  await page.click("form.filters button[type=submit]");
  const row = page.locator("tbody tr", { hasText: eventId });
  check((await row.count()) === 1, "the dead letter is listed");
  await accessible(page, "dead-letters");
  await row.locator("a").click();
  check((await page.textContent("h1")).startsWith("Dead letter"), "one letter opens");
  const payload = await page.textContent("pre.payload");
  check(payload.includes(eventId) && !payload.includes("client-"), "its payload shows the event and masks the client");
  await accessible(page, "dead-letter");
  await page.goBack();
  await page.check(`tbody tr:has-text("${eventId}") input[type=checkbox]`);
  await page.click('button:has-text("Dry run of the selected")');
  check((await page.textContent("h1")).includes("dry run"), "a replay starts with a dry run");
  check((await page.textContent("[role=status]")).includes("1 letters matched"), "the dry run lists the letter");
  await accessible(page, "replay-dry-run");
  await page.click('button:has-text("Confirm: replay 1 letters")');
  check((await page.textContent("[role=status]")).includes("1 letters replayed"), "the confirmed replay is sent");
  await accessible(page, "replay-sent");

  // Trace: the event's timeline, through its retries and the replay, to success.
  await page.click("nav >> text=Trace");
  await page.selectOption("#key", "event_id");
  await page.fill("#value", eventId);
  await page.click("form.filters button[type=submit]");
  const steps = await until(page, "ol.steps", "success", 60);
  for (const step of ["retry scheduled", "dead lettered", "replayed from the dead letters", "success"]) {
    check(steps.includes(step), `the timeline shows "${step}"`);
  }
  await accessible(page, "trace");

  // Conflicts: both values, resolved with an edited one, recorded with who decided.
  const conflict = env("CONFLICT_ID");
  await page.click("nav >> text=Conflicts");
  check((await page.locator(`a[href="/conflicts/${conflict}"]`).count()) === 1, "the open conflict is listed");
  await accessible(page, "conflicts");
  await page.click(`a[href="/conflicts/${conflict}"]`);
  const sides = await page.textContent("table");
  check(sides.includes("vip") && sides.includes("churned"), "both values are shown");
  await accessible(page, "conflict");
  await page.check("#c-value");
  await page.fill("#value", "vip-returning");
  await page.click('button:has-text("Resolve")');
  const resolution = await page.textContent("dl[aria-label=Resolution]");
  check(resolution.includes("vip-returning") && resolution.includes(env("CONSOLE_USER")), "the resolution is recorded with who decided");

  // Certificates: looked up by code, shown masked; cancelled with a reason.
  const code = env("CERT_CODE");
  await page.click("nav >> text=Certificates");
  await page.fill("#code", code);
  await page.click('button:has-text("Look up")');
  check(!page.url().includes(code), "the code never goes into the address");
  const heading = await page.textContent("#cert-h");
  check(!heading.includes(code) && heading.includes(code.slice(-4)), "the code is shown masked");
  check((await page.content()).includes("Balance"), "the balance is shown");
  await accessible(page, "certificate");
  await page.fill("#reason", "customer asked, ticket 42");
  await page.click('button:has-text("Cancel this certificate")');
  check((await page.textContent("[role=status]")).includes("Cancelled"), "the certificate is cancelled");
  check((await page.textContent("#cert-h")).toLowerCase().includes("cancelled"), "its state reads cancelled");
  check(!(await page.locator('button:has-text("Cancel this certificate")').count()), "a cancelled certificate offers no cancel");

  // Uploads, SMS and the console's own record of what was done.
  for (const [link, name] of [["Uploads", "uploads"], ["SMS", "sms"]]) {
    await page.click(`nav >> text=${link}`);
    check(!(await page.locator("[role=alert]").count()), `${name}: the service answered`);
    await accessible(page, name);
  }
  await page.click("nav >> text=Activity");
  const activity = await page.textContent("table");
  for (const action of ["login", "dead_letters.replay", "conflict.resolve", "certificate.cancel"]) {
    check(activity.includes(action), `the activity shows ${action}`);
  }
  await accessible(page, "activity");

  await page.click('button:has-text("Log out")');
  await page.goto(`${base}/`);
  check(page.url().endsWith("/login"), "after logging out the console asks to log in again");
} catch (e) {
  failed = true;
  console.error(`not ok - ${e.message}`);
  await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`page at failure: ${page.url()}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
