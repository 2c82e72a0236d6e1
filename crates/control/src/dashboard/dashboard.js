// Fulcrum's dashboard: asks for the admin token, then shows what serves,
// the pools' observed against expected shares, the routes and the guard's
// verdicts, config versions with their diffs, the journal and incidents,
// and rolls back. Every call carries `Authorization: Bearer`; every string
// from the API reaches the page as text, never as markup.
'use strict';

const KEY = 'fulcrum-admin-token';
// Journal kinds after which what serves and the list of versions change.
const CHANGES = new Set(['applied', 'staged', 'promoted', 'rolled_back']);
const KEEP_EVENTS = 1000;
const $ = (id) => document.getElementById(id);
const DATA = ['serving', 'versions-now', 'guard', 'pools', 'routes', 'incidents', 'versions', 'timeline', 'rollback-what', 'rollback-result'];

let session = null; // { token, abort }: one per sign-in
let data = fresh();
// The version chosen in the list to serve again, or null: the rollback
// button's own target (the canary, or the serving version's parent).
let rollbackTo = null;

function fresh() {
  // guard: undefined until asked, null when the server has no guard.
  return { status: null, guard: undefined, history: null, events: new Map(), lastSeq: 0, samples: [], polling: null, streaming: null };
}

// ---------------------------------------------------------------- DOM

// An element; strings among `kids` become text nodes, so nothing is parsed.
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const k of kids.flat()) {
    if (k !== undefined && k !== null && k !== false) e.append(k instanceof Node ? k : String(k));
  }
  return e;
}

const pct = (x) => (x === undefined || x === null ? '–' : (x * 100).toFixed(1) + '%');
const ms = (x) => (x === undefined || x === null ? '–' : x.toFixed(1) + ' ms');
// Local date and time (a version from last week must not look like
// today's); the exact UTC time on hover.
const clock = (t) => el('time', { datetime: t, title: t }, new Date(t).toLocaleString());
const badge = (text, kind) => el('span', { class: 'badge ' + (kind || text) }, text);
const sleep = (n) => new Promise((r) => setTimeout(r, n));

// One line of a semantic diff, as `fulcrum diff` prints it.
function diffLine(c) {
  const sign = { added: '+', removed: '-' }[c.op] || '~';
  let s = `${sign} ${c.kind} ${c.name}`;
  if (c.field) s += ` ${c.field}`;
  if (c.old != null && c.new != null) s += `: ${c.old} → ${c.new}`;
  else if (c.old != null || c.new != null) s += `: ${c.old ?? c.new}`;
  return el('li', { class: 'diff-' + c.op }, s);
}

// Each version's `applied` event, by version number: read once per render,
// not once per version (hundreds of versions times a thousand events).
function appliedByVersion() {
  const m = new Map();
  for (const e of data.events.values()) if (e.kind === 'applied') m.set(e.version, e);
  return m;
}

// The semantic diff of version `n`, from its `applied` event (in
// `applied`, from appliedByVersion), else from `fallback` (the diff an
// alert carries).
function diffOf(n, applied, fallback) {
  const diff = applied.get(n)?.detail?.diff || fallback;
  if (!diff) return el('p', { class: 'muted' }, `no diff: v${n} was not applied in the last ${KEEP_EVENTS} events`);
  if (!diff.length) return el('p', { class: 'muted' }, 'no semantic change');
  return el('ul', { class: 'diff' }, diff.map(diffLine));
}

// ---------------------------------------------------------------- API

class SignedOut extends Error {}

async function api(path, init = {}) {
  const s = session;
  if (!s) throw new SignedOut();
  const headers = { ...init.headers, Authorization: 'Bearer ' + s.token };
  const r = await fetch(path, { ...init, headers, signal: s.abort.signal });
  if (r.status === 401 || r.status === 403) {
    signOut(`${r.status}: ${await reason(r)}`);
    throw new SignedOut();
  }
  return r;
}

async function reason(r) {
  try {
    return (await r.json()).error || r.statusText;
  } catch {
    return r.statusText;
  }
}

async function loadStatus() {
  const r = await api('/status');
  if (!r.ok) throw new Error(`GET /status: ${r.status} ${await reason(r)}`);
  data.status = await r.json();
  sample(data.status);
  renderNow();
  renderPools();
}

async function loadGuard() {
  const r = await api('/guard');
  if (r.status === 404) data.guard = null;
  else if (r.ok) data.guard = await r.json();
  else throw new Error(`GET /guard: ${r.status} ${await reason(r)}`);
  renderGuard();
  renderPools();
  renderRoutes();
}

async function loadHistory() {
  const r = await api('/history');
  if (!r.ok) throw new Error(`GET /history: ${r.status} ${await reason(r)}`);
  data.history = await r.json();
  renderVersions();
  renderIncidents();
  renderNow();
}

// Every event kept, newest first (a lagged stream's events arrive late).
const newestFirst = () => [...data.events.values()].sort((a, b) => b.seq - a.seq);

function addEvents(list) {
  let changed = false;
  for (const e of list) {
    data.events.set(e.seq, e);
    data.lastSeq = Math.max(data.lastSeq, e.seq);
    changed ||= CHANGES.has(e.kind);
  }
  for (const e of newestFirst().slice(KEEP_EVENTS)) data.events.delete(e.seq);
  renderTimeline();
  renderIncidents();
  // Other kinds change no version's state or diff: the list stays as the
  // reader left it (what is open, where the focus is).
  if (changed) Promise.all([loadStatus(), loadHistory()]).catch(trouble);
}

// ---------------------------------------------------------------- live

// Status and the guard, every second, while signed in.
async function poll(s) {
  while (session === s) {
    await Promise.all([loadStatus(), loadGuard()]).then(
      () => health('polling', true),
      (e) => health('polling', false, e),
    );
    await sleep(1000);
  }
}

// The journal as server-sent events, read with fetch(): EventSource cannot
// send the token. After a drop, resume after the last event seen.
async function stream(s) {
  while (session === s) {
    try {
      const headers = { Accept: 'text/event-stream', 'Last-Event-ID': String(data.lastSeq) };
      const r = await api('/events?stream=true', { headers });
      if (!r.ok) throw new Error(`GET /events: ${r.status} ${await reason(r)}`);
      health('streaming', true);
      await readEvents(r.body, dispatch);
      health('streaming', false, new Error('the event stream ended'));
    } catch (e) {
      health('streaming', false, e);
    }
    await sleep(1000);
  }
}

// Parse a text/event-stream body: `field: value` lines, a blank line ends
// an event, a line starting with `:` is a comment (keep-alive).
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let ev = { id: null, type: 'message', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    // A lone CR at the very end may be the first half of a CRLF: wait.
    for (let m; (m = /\r\n|\n|\r(?=[^\n])/.exec(buf)); ) {
      const line = buf.slice(0, m.index);
      buf = buf.slice(m.index + m[0].length);
      if (line === '') {
        if (ev.data.length) onEvent(ev);
        ev = { id: null, type: 'message', data: [] };
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') ev.id = value;
      else if (field === 'event') ev.type = value;
      else if (field === 'data') ev.data.push(value);
    }
  }
}

function dispatch(ev) {
  // The id is the event's seq: where a reconnection resumes.
  if (ev.id) data.lastSeq = Math.max(data.lastSeq, Number(ev.id));
  if (ev.type === 'lagged') {
    // The server dropped some for a slow reader: read them back.
    api(`/events?after=${data.lastSeq}&limit=${KEEP_EVENTS}`)
      .then((r) => r.json())
      .then((b) => addEvents(b.events), trouble);
    return;
  }
  addEvents([JSON.parse(ev.data.join('\n'))]);
}

// on: true, false (trouble: why), or null (signed out).
function live(on, why) {
  const l = $('live');
  l.className = on ? 'on' : 'off';
  l.textContent = on ? 'live' : on === null ? 'offline' : 'reconnecting';
  l.title = why || '';
}

function trouble(e) {
  if (e instanceof SignedOut || e?.name === 'AbortError') return;
  live(false, String(e?.message || e));
}

// `part` ('polling' or 'streaming') works again, or failed with `e`: live
// once both work, so a blip that passed does not leave "reconnecting".
function health(part, ok, e) {
  if (e instanceof SignedOut || e?.name === 'AbortError') return;
  data[part] = ok ? null : String(e?.message || e);
  const why = data.polling || data.streaming;
  if (why) live(false, why);
  else live(true);
}

// ---------------------------------------------------------------- sign in

async function signIn(token) {
  stop();
  const s = { token, abort: new AbortController() };
  session = s;
  try {
    await loadStatus();
  } catch (e) {
    if (!(e instanceof SignedOut)) signOut(`cannot read /status: ${e.message}`);
    return;
  }
  sessionStorage.setItem(KEY, token);
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('sign-out').hidden = false;
  poll(s);
  loadHistory().catch(trouble);
  firstEvents(s).then(() => stream(s));
}

// The last events, until they come (a failed first read would leave the
// timeline empty and the stream never started).
async function firstEvents(s) {
  while (session === s) {
    try {
      const r = await api(`/events?limit=${KEEP_EVENTS}`);
      if (!r.ok) throw new Error(`GET /events: ${r.status} ${await reason(r)}`);
      addEvents((await r.json()).events);
      return;
    } catch (e) {
      health('streaming', false, e);
    }
    await sleep(1000);
  }
}

// Forget the token and every datum shown; show the prompt and why.
function signOut(why) {
  sessionStorage.removeItem(KEY);
  stop();
  $('dashboard').hidden = true;
  $('sign-out').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why || '';
  $('token').value = '';
  $('token').focus();
}

function stop() {
  if (session) session.abort.abort();
  session = null;
  data = fresh();
  for (const id of DATA) $(id).replaceChildren();
  delete $('serving').dataset.version;
  $('rollback-confirm').hidden = true;
  rollbackTo = null;
  live(null);
}

// ---------------------------------------------------------------- render

function renderNow() {
  const st = data.status;
  if (!st) return;
  const v = st.version;
  const serving = $('serving');
  serving.dataset.version = v.number;
  serving.replaceChildren(`v${v.number} serving`, st.canary ? `, canary v${st.canary.version.number}` : '');
  const rows = [
    el('p', { class: 'now' }, badge('serving', 'serving'), ` v${v.number} (${st.label}) by ${v.author}`, v.message ? `: ${v.message}` : '', ', ', clock(v.time)),
  ];
  if (st.canary) {
    const c = st.canary;
    rows.push(
      el('p', { class: 'now', id: 'canary' }, badge('canary', 'canary'), ` v${c.version.number} on ${pct(c.fraction)} of clients by ${c.version.author}`,
        c.held ? `, bake over, promotion held: the guard is not yet sure: ${c.held}`
          : `, ${Math.ceil(c.remaining_ms / 1000)} s of ${Math.round(c.bake_ms / 1000)} s bake left`),
    );
  }
  if (st.drift?.problems?.length) rows.push(el('ul', { class: 'drift' }, st.drift.problems.map((p) => el('li', {}, 'drift: ' + p))));
  $('versions-now').replaceChildren(...rows);
  // A version chosen in the list is not what a rollback does once a
  // canary runs (the canary is dropped first): ask again.
  if (st.canary && rollbackTo !== null) {
    rollbackTo = null;
    $('rollback-confirm').hidden = true;
    $('rollback-result').textContent = 'a canary started: choose again';
    $('rollback-result').className = 'fail';
  }
  // What the rollback button would do, or the version chosen in the list.
  const target = st.canary ? `drop canary v${st.canary.version.number}; v${v.number} keeps serving`
    : v.parent ? `serve v${v.parent} again instead of v${v.number}` : null;
  $('rollback-ask').textContent = st.canary ? `Drop canary v${st.canary.version.number}…`
    : v.parent ? `Roll back to v${v.parent}…` : 'Roll back…';
  const chosen = rollbackTo !== null && !st.canary && rollbackTo !== v.number
    ? `serve v${rollbackTo} again instead of v${v.number}` : null;
  $('rollback-what').textContent = chosen || target ? `Roll back: ${chosen || target}?` : '';
  $('rollback-ask').disabled = !target;
  $('rollback-ask').title = target ? '' : `v${v.number} is the first version: nothing to roll back to`;
}

function renderGuard() {
  const g = data.guard;
  if (g === undefined) return;
  if (g === null || g.state === 'disabled') {
    const why = g === null ? 'not available' : 'disabled ([guard] enabled = false)';
    $('guard').replaceChildren(el('p', { class: 'muted', id: 'guard-state' }, 'guard: ' + why));
    return;
  }
  const change = g.change ? ` watching v${g.change.number} by ${g.change.author}${g.change.message ? ': ' + g.change.message : ''}` : '';
  $('guard').replaceChildren(el('p', { id: 'guard-state' }, 'guard: ', badge(g.state), ' ', badge(g.verdict), change));
}

// Observed shares without the guard: request counts from /status over the
// last 30 s (since the start when nothing moved in that time).
function sample(st) {
  const now = Date.now();
  const counts = {};
  for (const p of st.pools) for (const b of p.backends) counts[p.name + ' ' + b.addr] = b.requests;
  data.samples.push({ t: now, counts });
  while (data.samples.length > 1 && now - data.samples[0].t > 30000) data.samples.shift();
}

function countedShares(pool) {
  const first = data.samples[0].counts;
  const last = data.samples[data.samples.length - 1].counts;
  const key = (b) => pool.name + ' ' + b.addr;
  let deltas = pool.backends.map((b) => (last[key(b)] || 0) - (first[key(b)] || 0));
  let window = 'last 30 s';
  if (deltas.every((d) => d <= 0)) {
    deltas = pool.backends.map((b) => b.requests);
    window = 'since start';
  }
  const total = deltas.reduce((a, b) => a + b, 0);
  return { window, total, share: deltas.map((d) => (total ? d / total : null)) };
}

function renderPools() {
  const st = data.status;
  if (!st) return;
  const guarded = new Map((data.guard?.pools || []).map((p) => [p.name, p]));
  $('pools').replaceChildren(...st.pools.map((p) => {
    // The guard judges a pool only with traffic in its window.
    const g = guarded.get(p.name)?.requests > 0 ? guarded.get(p.name) : null;
    const counted = countedShares(p);
    // Backends only a canary has (`/status` lists the stable config's).
    const canaryOnly = (g?.backends || []).filter((gb) => !p.backends.some((b) => b.addr === gb.addr))
      .map((gb) => el('tr', { 'data-pool': p.name, 'data-backend': gb.addr, 'data-observed': gb.observed ?? '', 'data-expected': gb.expected ?? '' },
        el('td', {}, gb.addr), el('td', {}, shareBar(gb.observed, gb.expected)), el('td', { class: 'num' }, pct(gb.observed)),
        el('td', { class: 'num' }, pct(gb.expected)), el('td', { class: 'num' }, '–'), el('td', {}, badge('canary', 'canary')),
        el('td', { class: 'num' }, '–'), el('td', { class: 'num' }, gb.requests)));
    const rows = p.backends.map((b, i) => {
      const gb = g?.backends?.find((x) => x.addr === b.addr);
      // The guard's window when it judges the pool, else the counted one.
      const observed = gb ? gb.observed : counted.share[i];
      const expected = gb?.expected ?? null;
      const bar = shareBar(observed, expected);
      const state = b.ejected ? badge('ejected', 'fail') : b.healthy ? badge('healthy', 'pass') : badge('down', 'fail');
      return el('tr', { 'data-pool': p.name, 'data-backend': b.addr, 'data-observed': observed ?? '', 'data-expected': expected ?? '' },
        el('td', {}, b.addr), el('td', {}, bar), el('td', { class: 'num' }, pct(observed)), el('td', { class: 'num' }, pct(expected)),
        el('td', { class: 'num' }, b.weight), el('td', {}, state), el('td', { class: 'num' }, b.in_flight), el('td', { class: 'num' }, gb ? gb.requests : b.requests));
    });
    const source = g ? `guard: ${g.requests} requests, healthy ${pct(g.healthy_fraction)}` : `observed over ${counted.total} requests, ${counted.window}`;
    return el('div', { class: 'pool', 'data-pool': p.name },
      el('h3', {}, p.name, ' ', el('small', {}, p.algorithm), p.panic ? badge('panic', 'fail') : '', g ? [' ', badge(g.verdict)] : ''),
      el('p', { class: 'muted' }, source, g?.reason ? ` · ${g.reason}` : ''),
      el('table', {}, el('tr', {}, ['backend', 'share', 'observed', 'expected', 'weight', 'health', 'in flight', 'requests'].map((h) => el('th', {}, h))), rows, canaryOnly));
  }));
}

// A backend's observed share as a bar, with its expected share as a mark.
function shareBar(observed, expected) {
  const bar = el('div', { class: 'bar' });
  const fill = el('div', { class: 'fill' });
  fill.style.width = ((observed || 0) * 100).toFixed(1) + '%';
  bar.append(fill);
  if (expected != null) {
    const mark = el('div', { class: 'expected', title: 'expected ' + pct(expected) });
    mark.style.left = (expected * 100).toFixed(1) + '%';
    bar.append(mark);
  }
  return bar;
}

function renderRoutes() {
  const g = data.guard;
  if (g === undefined) return;
  if (g === null || g.state === 'disabled' || !g.routes) {
    const why = g?.state === 'disabled' ? 'disabled' : 'not available';
    $('routes').replaceChildren(el('p', { class: 'muted' }, `guard: ${why} (per-route rates and baselines come from it)`));
    return;
  }
  // A baseline of 0 is one: shown, not taken for none.
  const cell = (now, base, fmt) => el('td', { class: 'num' }, fmt(now), base != null ? el('small', {}, ' (was ' + fmt(base) + ')') : '');
  const num = (x) => (x === undefined || x === null ? '–' : String(x));
  $('routes').replaceChildren(el('table', {},
    el('tr', {}, ['route', 'pool', 'requests', 'errors', 'outcome signal', 'p99', 'verdict'].map((h) => el('th', {}, h))),
    g.routes.map((r) => {
      const b = r.baseline || {};
      return el('tr', { 'data-route': r.name, 'data-verdict': r.verdict },
        el('td', {}, r.name), el('td', {}, r.pool), cell(r.requests, b.requests, num), cell(r.error_rate, b.error_rate, pct),
        cell(r.outcome_rate, b.outcome_rate, pct), cell(r.p99_ms, b.p99_ms, ms), el('td', { title: r.reason || '' }, badge(r.verdict), ' ', r.reason || ''));
    })));
}

function versionMeta(n) {
  return data.history?.versions?.find((v) => v.number === n);
}

function renderIncidents() {
  const incidents = newestFirst().filter((e) => (e.kind === 'alert' || e.kind === 'rolled_back') && e.actor === 'guard');
  if (!incidents.length) {
    $('incidents').replaceChildren(el('p', { class: 'muted' }, `none in the last ${KEEP_EVENTS} events`));
    return;
  }
  const applied = appliedByVersion();
  $('incidents').replaceChildren(...incidents.map((e) => {
    const v = e.version != null ? versionMeta(e.version) : null;
    const change = e.version == null ? el('p', { class: 'muted' }, 'names no change')
      : el('div', {}, el('p', {}, `the change: v${e.version}`, v ? ` by ${v.author}${v.message ? ': ' + v.message : ''}` : ''), diffOf(e.version, applied, e.detail?.diff));
    return el('article', { class: 'incident kind-' + e.kind, 'data-seq': e.seq, 'data-version': e.version ?? '' },
      el('p', {}, clock(e.time), ' ', badge(e.kind.replace('_', ' '), 'kind-' + e.kind), ' ', e.summary), change);
  }));
}

function renderVersions() {
  const h = data.history;
  if (!h) return;
  // Any stored version can serve again, not only the parent (when the
  // parent was bad too); not while a canary runs: that is dropped first.
  const canary = h.versions.some((v) => v.state === 'canary');
  // What the reader opened or closed stays so.
  const was = new Map([...$('versions').querySelectorAll('details')].map((d) => [Number(d.dataset.version), d.open]));
  const open = (v) => was.get(v.number) ?? v.state !== 'stored';
  const applied = appliedByVersion();
  $('versions').replaceChildren(...h.versions.map((v) =>
    el('details', { class: 'version', 'data-version': v.number, 'data-state': v.state, open: open(v) ? '' : null },
      el('summary', {}, `v${v.number} `, badge(v.state), ` by ${v.author}`, v.message ? `: ${v.message}` : '', ' · ', clock(v.time), ` · ${v.hash}`,
        v.state === 'stored' && !canary ? [' ', el('button', { type: 'button', class: 'serve-again', 'data-serve': v.number }, `Serve v${v.number} again…`)] : null),
      v.parent == null ? el('p', { class: 'muted' }, 'the first version') : diffOf(v.number, applied))));
}

function renderTimeline() {
  const events = newestFirst().slice(0, 500);
  $('timeline').replaceChildren(...events.map((e) =>
    el('li', { class: 'kind-' + e.kind, 'data-seq': e.seq, 'data-kind': e.kind, 'data-version': e.version ?? '' },
      clock(e.time), ' ', badge(e.kind.replace('_', ' '), 'kind-' + e.kind), ` ${e.actor}`, e.version != null ? ` v${e.version}` : '', ': ', e.summary,
      e.kind === 'applied' && e.detail?.diff?.length ? el('ul', { class: 'diff' }, e.detail.diff.map(diffLine)) : '')));
}

// ---------------------------------------------------------------- rollback

async function rollback() {
  const why = $('rollback-reason').value.trim() || 'rolled back from the dashboard';
  const query = { author: 'dashboard', reason: why };
  if (rollbackTo !== null) query.to = rollbackTo;
  const result = $('rollback-result');
  let r;
  try {
    r = await api('/rollback?' + new URLSearchParams(query), { method: 'POST' });
  } catch (e) {
    if (e instanceof SignedOut) return;
    // Nothing was done: the confirmation and the reason stay for a retry.
    result.textContent = `not sent: ${e.message}; nothing changed`;
    result.className = 'fail';
    return;
  }
  $('rollback-confirm').hidden = true;
  rollbackTo = null;
  const body = await r.json().catch(() => ({}));
  result.textContent = r.ok ? body.summary : `refused: ${body.error || r.status}`;
  result.className = r.ok ? 'pass' : 'fail';
  await Promise.all([loadStatus(), loadHistory()]);
}

// ---------------------------------------------------------------- start

$('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  $('login-error').textContent = '';
  signIn($('token').value.trim());
});
$('sign-out').addEventListener('click', () => signOut('signed out'));
function askRollback(to) {
  rollbackTo = to;
  renderNow();
  $('rollback-result').textContent = '';
  $('rollback-confirm').hidden = false;
  $('rollback-reason').focus();
}
$('rollback-ask').addEventListener('click', () => askRollback(null));
$('versions').addEventListener('click', (e) => {
  const button = e.target.closest('button[data-serve]');
  if (!button) return;
  // A button in a <summary> would also open or close its version.
  e.preventDefault();
  askRollback(Number(button.dataset.serve));
});
$('rollback-no').addEventListener('click', () => {
  rollbackTo = null;
  $('rollback-confirm').hidden = true;
});
$('rollback-yes').addEventListener('click', () => rollback().catch(trouble));

const saved = sessionStorage.getItem(KEY);
if (saved) signIn(saved);
else signOut('');
