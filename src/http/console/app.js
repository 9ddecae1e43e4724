// The console: a few views over the public API, switched by the URL's fragment (never sent to
// the server). The API key lives in sessionStorage only and travels as Basic auth, never in
// a URL. Every value from the API reaches the page through textContent, never as HTML.

import { checkChain, checkDigest, leaves, member, parseRaw, pretty } from './verify.js';

const KEY = 'taskledger.api-key';
const STATUSES = ['pending', 'completed', 'canceled', 'error'];
const TYPES = ['categorization', 'comparison', 'documenttranscription', 'imageannotation',
  'lidarsegmentation', 'textcollection', 'videoannotation'];
const SCOPES = ['customer', 'contributor', 'system'];

const main = document.getElementById('main');
const nav = document.getElementById('nav');

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function basic(key) {
  const bytes = new TextEncoder().encode(`${key}:`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

// GET an API path with the signed-in key; answers the body's text and its parsed JSON.
async function api(path, key = sessionStorage.getItem(KEY)) {
  const res = await fetch(path, { headers: { Authorization: basic(key) }, cache: 'no-store' });
  const text = await res.text();
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`;
    try {
      message = JSON.parse(text).error || message;
    } catch {
      // Not the API's error body: keep the status line.
    }
    // The signed-in key stopped working (revoked): back to the sign-in form, with the
    // API's reason.
    if (res.status === 401 && key === sessionStorage.getItem(KEY)) {
      sessionStorage.removeItem(KEY);
      renderSignIn(message);
    }
    throw new ApiError(res.status, message);
  }
  return {
    text,
    json: JSON.parse(text),
    get raw() {
      return parseRaw(text);
    },
  };
}

// h('p', {class: 'x'}, 'text', child): an element; strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
  const heading = main.querySelector('h1');
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}

function field(label, input, hint) {
  if (hint) input.setAttribute('aria-describedby', `${input.id}-hint`);
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input,
    hint ? h('small', { id: `${input.id}-hint` }, hint) : null);
}

// A JSON document shown with its numbers exactly as served (JSON.parse would round
// integers above 2^53 and print 1.0 as 1); `doc` is a raw tree from parseRaw.
function formatJson(doc) {
  return h('pre', { class: 'json', tabindex: '0' }, pretty(doc));
}

// datetime-local (the reader's local time) to RFC 3339 UTC, and back.
function toUtc(local) {
  return local ? new Date(local).toISOString() : '';
}
function toLocal(utc) {
  if (!utc) return '';
  const d = new Date(utc);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function errorBox(err) {
  return h('p', { class: 'error', role: 'alert' }, err.message);
}

// ---------------------------------------------------------------------------------------
// Key names: GET /v1/keys where the server has it, key ids otherwise.

let keyNames = null;
async function names() {
  if (keyNames) return keyNames;
  keyNames = new Map();
  try {
    const { json } = await api('/v1/keys');
    for (const k of json.keys || []) if (k.name) keyNames.set(k.key_id, k.name);
  } catch {
    // 404 on a server without key names: the ids stand in.
  }
  return keyNames;
}

function actorText(actor) {
  const who = actor.key_id ? (keyNames?.get(actor.key_id) || actor.key_id) : 'taskledger (system)';
  return `${who} (${actor.scope})`;
}

// ---------------------------------------------------------------------------------------
// Sign in.

function renderSignIn(reason = '') {
  nav.hidden = true;
  const input = h('input', { id: 'api-key', name: 'api-key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const error = h('p', { id: 'sign-in-error', class: 'error', role: 'alert' }, reason);
  const form = h('form', { class: 'sign-in', 'aria-labelledby': 'sign-in-title' },
    field('API key', input, 'Kept in this tab only (sessionStorage) and sent as Basic auth.'),
    h('button', { type: 'submit' }, 'Sign in'), error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const key = input.value.trim();
    try {
      await api('/v1/tasks?limit=1', key);
    } catch (err) {
      error.textContent = err.message;
      input.focus();
      return;
    }
    sessionStorage.setItem(KEY, key);
    keyNames = null;
    input.value = '';
    location.hash = '#/tasks';
  });
  show(h('h1', { id: 'sign-in-title' }, 'Sign in'), form);
  input.focus();
}

// ---------------------------------------------------------------------------------------
// Tasks.

function select(id, name, options, value) {
  return h('select', { id, name },
    h('option', { value: '' }, 'any'),
    options.map((o) => h('option', { value: o, selected: o === value }, o)));
}

const PAGE_SIZES = ['2', '10', '25', '50', '100'];

// A "Rows per page" choice, kept in the view's URL fragment like the filters.
function pageSize(id, params, fallback) {
  const value = PAGE_SIZES.includes(params.get('limit')) ? params.get('limit') : fallback;
  return h('select', { id, name: 'limit' }, PAGE_SIZES.map((o) => h('option', { value: o, selected: o === value }, o)));
}

async function renderTasks(params) {
  const input = (id, name, value, type = 'text') => h('input', { id, name, type, value: value || '' });
  const tags = params.getAll('tags').join(', ');
  const form = h('form', { class: 'filters', 'aria-label': 'Filter tasks' },
    field('Status', select('f-status', 'status', STATUSES, params.get('status'))),
    field('Type', select('f-type', 'type', TYPES, params.get('type'))),
    field('Project', input('f-project', 'project', params.get('project'))),
    field('Batch', input('f-batch', 'batch', params.get('batch'))),
    field('Tags', input('f-tags', 'tags', tags), 'All of them, comma-separated'),
    field('Unique id', input('f-unique', 'unique_id', params.get('unique_id'))),
    field('Created from', h('input', { id: 'f-from', type: 'datetime-local', step: '1', value: toLocal(params.get('start_time')) }), 'Your local time'),
    field('Created to', h('input', { id: 'f-to', type: 'datetime-local', step: '1', value: toLocal(params.get('end_time')) })),
    field('Rows per page', pageSize('f-limit', params, '25')),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Apply filters')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    const data = new FormData(form);
    for (const name of ['status', 'type', 'project', 'batch', 'unique_id', 'limit']) {
      const v = String(data.get(name) || '').trim();
      if (v) q.set(name, v);
    }
    for (const t of String(data.get('tags') || '').split(',').map((s) => s.trim()).filter(Boolean)) q.append('tags', t);
    const from = toUtc(form.querySelector('#f-from').value);
    const to = toUtc(form.querySelector('#f-to').value);
    if (from) q.set('start_time', from);
    if (to) q.set('end_time', to);
    location.hash = `#/tasks?${q}`;
  });
  const result = h('div', { id: 'tasks-result', 'aria-live': 'polite' }, h('p', {}, 'Loading…'));
  show(h('h1', {}, 'Tasks'), form, result);
  const query = new URLSearchParams(params);
  if (!PAGE_SIZES.includes(query.get('limit'))) query.set('limit', '25');
  let page;
  try {
    page = (await api(`/v1/tasks?${query}`)).json;
  } catch (err) {
    result.replaceChildren(errorBox(err));
    return;
  }
  const rows = page.docs.map((t) => h('tr', {},
    h('th', { scope: 'row' }, h('a', { href: `#/task/${encodeURIComponent(t.task_id)}`, class: 'mono' }, t.task_id)),
    h('td', {}, t.type), h('td', {}, t.status), h('td', {}, t.project ?? ''), h('td', {}, t.batch ?? ''),
    h('td', { class: 'time' }, t.created_at), h('td', { class: 'time' }, t.updated_at)));
  const table = h('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': 'Tasks table' },
    h('table', { id: 'tasks' },
      h('caption', {}, `${page.total} task${page.total === 1 ? '' : 's'} match`),
      h('thead', {}, h('tr', {}, ['Task id', 'Type', 'Status', 'Project', 'Batch', 'Created', 'Updated'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
  const paging = h('div', { class: 'actions' });
  if (params.has('next_token')) {
    const first = new URLSearchParams(params);
    first.delete('next_token');
    paging.append(h('a', { href: `#/tasks?${first}` }, 'First page'));
  }
  if (page.next_token) {
    paging.append(h('button', {
      type: 'button',
      id: 'next-page',
      onclick: () => {
        const next = new URLSearchParams(params);
        next.set('next_token', page.next_token);
        location.hash = `#/tasks?${next}`;
      },
    }, 'Next page'));
  }
  result.replaceChildren(rows.length ? table : h('p', {}, 'No task matches.'), paging);
  // Which query the table shows: lets a reader (or a test) tell a new page from the last.
  result.dataset.loaded = query.toString();
}

// ---------------------------------------------------------------------------------------
// One task.

// The history is read a page at a time: a task with 100,000 events opens as fast as one with
// ten, and the reader asks for more. Each page comes as plain JSON and as text-preserving
// trees for the hashes.
const HISTORY_PAGE = 100;

async function historyPage(id, history) {
  const { text, json } = await api(`/v1/task/${encodeURIComponent(id)}/history?after=${history.after}&limit=${HISTORY_PAGE}`);
  const tree = parseRaw(text);
  const taskId = member(tree, 'task_id');
  const added = [];
  for (const [i, e] of json.events.entries()) {
    added.push({ ...e, task_id: json.task_id });
    const entry = member(tree, 'events').items[i];
    history.raw.push({ kind: 'object', entries: [...entry.entries, [{ value: 'task_id', raw: '"task_id"' }, taskId]] });
  }
  history.events.push(...added);
  history.after = json.next_after;
  history.hasMore = json.has_more;
  return added;
}

function microsOf(rfc3339) {
  const m = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?Z$/.exec(rfc3339);
  return BigInt(Date.parse(`${m[1]}Z`)) * 1000n + BigInt((m[2] || '').padEnd(6, '0').slice(0, 6));
}
function rfc3339Of(us) {
  const seconds = us / 1000000n;
  const fraction = us % 1000000n;
  return new Date(Number(seconds) * 1000).toISOString().replace(/\.\d{3}Z$/, `.${String(fraction).padStart(6, '0')}Z`);
}

async function taskAsOf(id, time) {
  try {
    return (await api(`/v1/task/${encodeURIComponent(id)}?as_of=${encodeURIComponent(time)}`)).raw;
  } catch (err) {
    if (err.status === 404) return null;
    throw err;
  }
}

function diffTable(before, after, caption) {
  const a = before ? leaves(before) : new Map();
  const b = after ? leaves(after) : new Map();
  const fields = [...new Set([...a.keys(), ...b.keys()])].filter((f) => a.get(f) !== b.get(f)).sort();
  if (!fields.length) return h('p', {}, 'No field of the task changed.');
  return h('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': caption },
    h('table', { id: 'diff' }, h('caption', {}, caption),
      h('thead', {}, h('tr', {}, ['Field', 'Before', 'After'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, fields.map((f) => h('tr', {},
        h('th', { scope: 'row', class: 'mono' }, f),
        h('td', { class: a.has(f) ? 'mono' : 'absent' }, a.get(f) ?? '(absent)'),
        h('td', { class: b.has(f) ? 'mono' : 'absent' }, b.get(f) ?? '(absent)'))))));
}

function renderIntegrity(box, checks, scopeNote) {
  const failed = checks.find((c) => !c.ok && !c.partial && !c.skipped);
  const partial = checks.find((c) => c.partial);
  const result = box.querySelector('#integrity-result');
  if (failed) {
    box.dataset.result = 'failed';
    result.textContent = `Not verified: ${failed.name} check failed: ${failed.detail}`;
  } else if (partial) {
    box.dataset.result = 'partial';
    result.textContent = `Verified up to the latest signed digest. ${partial.detail}`;
  } else {
    box.dataset.result = 'verified';
    result.textContent = `Verified${scopeNote}`;
  }
  const verdict = (c) => {
    if (c.skipped) return ['skipped', '– ', 'not checked'];
    if (c.ok) return ['ok', '✓ ', 'passed'];
    return ['bad', '✗ ', c.partial ? 'incomplete' : 'failed'];
  };
  box.querySelector('ul').replaceChildren(...checks.map((c) => {
    const [cls, mark, word] = verdict(c);
    return h('li', { class: cls, 'data-check': c.name },
      h('span', { 'aria-hidden': 'true' }, mark), h('strong', {}, `${c.name}: `), word, ` (${c.detail})`);
  }));
}

// Checks the events loaded so far: every hash recomputed and every link followed back to
// genesis, then one inclusion proof, of the newest of them the signed tree holds. Its hash
// covers its prev_hash, and so every earlier event of the chain: one proof per page shown,
// never one per event.
async function verifyTask(box, history) {
  const checks = await checkChain(history.raw, history.events);
  const loaded = history.hasMore
    ? ` Events 1 to ${history.events.length} are checked; load more events to check the rest.`
    : '';
  let digest;
  try {
    digest = (await api('/v1/ledger/digest')).json;
  } catch (err) {
    if (err.status === 404) {
      checks.push({ name: 'Inclusion proofs and digest signature', ok: false, skipped: true, detail: 'this server publishes no signed digest: GET /v1/ledger/digest answered 404' });
      renderIntegrity(box, checks, ` (chain check only): every hash recomputed in this browser and every link followed to genesis; this server publishes no signed digest.${loaded}`);
      box.dataset.scope = 'chain';
      return;
    }
    checks.push({ name: 'Signed digest', ok: false, detail: `it could not be fetched: ${err.message}` });
    renderIntegrity(box, checks, '');
    return;
  }
  let publicKeys;
  const anchors = [];
  const proofs = [];
  try {
    publicKeys = (await api('/v1/ledger/public-keys')).json;
    const held = history.events.filter((e) => e.global_position <= digest.last_global_position);
    const anchor = held[held.length - 1];
    if (anchor) {
      anchors.push(anchor);
      proofs.push((await api(`/v1/ledger/proof/inclusion?event_id=${encodeURIComponent(anchor.event_id)}&tree_size=${digest.tree_size}`)).json);
    }
    for (const e of history.events) {
      if (e.global_position > digest.last_global_position) {
        anchors.push(e);
        proofs.push(null);
      }
    }
  } catch (err) {
    checks.push({ name: 'Inclusion proofs', ok: false, detail: `a proof or the public keys could not be fetched: ${err.message}` });
    renderIntegrity(box, checks, '');
    return;
  }
  const digestChecks = await checkDigest(digest, publicKeys, anchors, proofs);
  const inclusion = digestChecks.find((c) => c.name === 'Inclusion proofs');
  const proven = proofs[0] ? anchors[0] : null;
  if (proven && (inclusion.ok || inclusion.partial)) {
    const newer = anchors.length - 1;
    inclusion.detail = `event ${proven.sequence} proven in the signed tree of ${digest.tree_size}; through the chain it commits events 1 to ${proven.sequence}`
      + (newer ? `; ${newer} newer than the digest, not checked yet` : '');
  }
  checks.push(...digestChecks);
  box.dataset.scope = 'digest';
  box.dataset.checked = String(history.events.length);
  renderIntegrity(box, checks, `: every hash recomputed, the chain followed to genesis, the newest event the account's signed tree of ${digest.tree_size} events holds proven in it (its hash commits every event before it) and the digest's Ed25519 signature checked in this browser.${loaded}`);
}

async function renderTask(id) {
  const integrity = h('section', { id: 'integrity', 'aria-labelledby': 'integrity-title', 'data-result': 'checking' },
    h('h2', { id: 'integrity-title' }, 'Integrity'),
    h('p', { id: 'integrity-result', role: 'status' }, 'Checking in this browser…'),
    h('ul', { class: 'checks' }));
  const current = h('section', { 'aria-labelledby': 'current-title' }, h('h2', { id: 'current-title' }, 'Current object'), h('p', {}, 'Loading…'));
  // Millisecond steps: the events of a busy task are often less than a second apart.
  const asOfInput = h('input', { id: 'as-of', type: 'datetime-local', step: '0.001', required: true });
  const asOfOut = h('div', { id: 'as-of-result', 'aria-live': 'polite' });
  const asOfForm = h('form', { class: 'inline', 'aria-labelledby': 'as-of-title' },
    field('As of (your local time)', asOfInput), h('button', { type: 'submit' }, 'Show'));
  const asOf = h('section', { 'aria-labelledby': 'as-of-title' }, h('h2', { id: 'as-of-title' }, 'The task at a moment'), asOfForm, asOfOut);
  const historyList = h('ol', { id: 'history', 'aria-labelledby': 'history-title' });
  const more = h('button', { type: 'button', id: 'history-more', hidden: true }, 'Load more events');
  const selected = h('section', { id: 'selected', 'aria-labelledby': 'selected-title', 'aria-live': 'polite' },
    h('h2', { id: 'selected-title' }, 'Selected event'), h('p', {}, 'Select an event of the history to see the task right after it and what it changed.'));
  show(h('h1', {}, 'Task ', h('span', { class: 'mono' }, id)), integrity,
    h('div', { class: 'columns' },
      h('div', {}, h('section', { 'aria-labelledby': 'history-title' }, h('h2', { id: 'history-title' }, 'History'), historyList, more)),
      h('div', {}, selected, current, asOf)));

  let task;
  const history = { events: [], raw: [], after: 0, hasMore: false };
  try {
    [task] = await Promise.all([
      api(`/v1/task/${encodeURIComponent(id)}`).then((r) => r.raw),
      historyPage(id, history),
      names(),
    ]);
  } catch (err) {
    current.replaceChildren(h('h2', { id: 'current-title' }, 'Current object'), errorBox(err));
    integrity.dataset.result = 'failed';
    integrity.querySelector('#integrity-result').textContent = `Not checked: ${err.message}`;
    return;
  }
  current.replaceChildren(h('h2', { id: 'current-title' }, 'Current object'), formatJson(task));

  asOfForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const time = toUtc(asOfInput.value);
    try {
      const then = await taskAsOf(id, time);
      asOfOut.replaceChildren(h('h3', {}, `As of ${time}`), then ? formatJson(then) : h('p', {}, 'The task did not exist yet at that moment.'));
    } catch (err) {
      asOfOut.replaceChildren(errorBox(err));
    }
  });

  const buttons = [];
  const choose = async (i) => {
    buttons.forEach((b, j) => b.setAttribute('aria-pressed', String(i === j)));
    const e = history.events[i];
    const at = microsOf(e.recorded_at);
    const shared = history.events.some((o, j) => j !== i && o.recorded_at === e.recorded_at);
    try {
      const [after, before] = await Promise.all([
        taskAsOf(id, e.recorded_at),
        i === 0 ? null : taskAsOf(id, rfc3339Of(at - 1n)),
      ]);
      selected.replaceChildren(...[h('h2', { id: 'selected-title' }, `Event ${e.sequence}: ${e.type}`),
        shared ? h('p', { class: 'note' }, 'Other events were recorded in the same commit; the state shown is after all of them.') : null,
        diffTable(before, after, `Changes made by event ${e.sequence}`),
        h('h3', {}, 'The task right after it'), after ? formatJson(after) : h('p', {}, '(no task)'),
        h('h3', {}, 'The event'), formatJson(history.raw[i])].filter(Boolean));
    } catch (err) {
      selected.replaceChildren(h('h2', { id: 'selected-title' }, `Event ${e.sequence}`), errorBox(err));
    }
  };
  const items = (events, offset) => events.map((e, k) => {
    const i = offset + k;
    const button = h('button', { type: 'button', class: 'event', 'aria-pressed': 'false', onclick: () => choose(i) },
      h('span', { class: 'etype' }, e.type),
      // A button holds phrasing content only: the facts are spans laid out as a grid.
      h('span', { class: 'facts' },
        h('span', { class: 'k' }, 'Recorded'), h('span', {}, e.recorded_at),
        h('span', { class: 'k' }, 'Actor'), h('span', {}, actorText(e.actor)),
        h('span', { class: 'k' }, 'Request'), h('span', { class: 'mono' }, e.request_id ?? '(none)'),
        h('span', { class: 'k' }, 'Position'), h('span', {}, `${e.global_position} (sequence ${e.sequence})`)));
    buttons.push(button);
    return h('li', {}, button);
  });
  historyList.replaceChildren(...items(history.events, 0));
  more.hidden = !history.hasMore;
  const last = history.events[history.events.length - 1];
  if (last) asOfInput.value = toLocal(last.recorded_at);

  const check = async () => {
    integrity.dataset.result = 'checking';
    try {
      await verifyTask(integrity, history);
    } catch (err) {
      integrity.dataset.result = 'failed';
      integrity.querySelector('#integrity-result').textContent = `Not verified: the check stopped: ${err.message}`;
    }
  };
  more.addEventListener('click', async () => {
    more.disabled = true;
    try {
      const offset = history.events.length;
      const added = await historyPage(id, history);
      historyList.append(...items(added, offset));
      more.hidden = !history.hasMore;
    } catch (err) {
      selected.replaceChildren(h('h2', { id: 'selected-title' }, 'History'), errorBox(err));
    }
    more.disabled = false;
    await check();
  });
  await check();
}

// ---------------------------------------------------------------------------------------
// Event search.

const EVENT_FILTERS = ['task_id', 'event_type', 'actor_key_id', 'actor_scope', 'request_id', 'recorded_after', 'recorded_before'];

// Whether an event matches the filters asked for: a server without event search ignores
// them, and the console says so rather than pass its page off as the answer.
function matches(e, q) {
  const recorded = microsOf(e.recorded_at);
  return (!q.get('task_id') || e.task_id === q.get('task_id'))
    && (!q.get('event_type') || q.get('event_type').split(',').map((s) => s.trim()).includes(e.event_type))
    && (!q.get('actor_key_id') || e.actor.key_id === q.get('actor_key_id'))
    && (!q.get('actor_scope') || e.actor.scope === q.get('actor_scope'))
    && (!q.get('request_id') || e.request_id === q.get('request_id'))
    && (!q.get('recorded_after') || recorded > BigInt(Date.parse(q.get('recorded_after'))) * 1000n)
    && (!q.get('recorded_before') || recorded < BigInt(Date.parse(q.get('recorded_before'))) * 1000n);
}

async function renderEvents(params) {
  const input = (id, name) => h('input', { id, name, type: 'text', value: params.get(name) || '' });
  const form = h('form', { class: 'filters', 'aria-label': 'Search events' },
    field('Task id', input('e-task', 'task_id')),
    field('Event types', input('e-type', 'event_type'), 'Comma-separated, e.g. TaskCreated'),
    field('Actor key id', input('e-key', 'actor_key_id')),
    field('Actor scope', select('e-scope', 'actor_scope', SCOPES, params.get('actor_scope'))),
    field('Request id', input('e-request', 'request_id')),
    field('Recorded after', h('input', { id: 'e-after', type: 'datetime-local', step: '1', value: toLocal(params.get('recorded_after')) }), 'Your local time'),
    field('Recorded before', h('input', { id: 'e-before', type: 'datetime-local', step: '1', value: toLocal(params.get('recorded_before')) })),
    field('Rows per page', pageSize('e-limit', params, '50')),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Search')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    const data = new FormData(form);
    for (const name of ['task_id', 'event_type', 'actor_key_id', 'actor_scope', 'request_id', 'limit']) {
      const v = String(data.get(name) || '').trim();
      if (v) q.set(name, v);
    }
    const after = toUtc(form.querySelector('#e-after').value);
    const before = toUtc(form.querySelector('#e-before').value);
    if (after) q.set('recorded_after', after);
    if (before) q.set('recorded_before', before);
    location.hash = `#/events?${q}`;
  });
  const result = h('div', { id: 'events-result', 'aria-live': 'polite' }, h('p', {}, 'Loading…'));
  show(h('h1', {}, 'Events'), form, result);
  const query = new URLSearchParams();
  for (const name of [...EVENT_FILTERS, 'after']) if (params.get(name)) query.set(name, params.get(name));
  query.set('limit', PAGE_SIZES.includes(params.get('limit')) ? params.get('limit') : '50');
  let page;
  try {
    [page] = await Promise.all([api(`/v1/events?${query}`).then((r) => r.json), names()]);
  } catch (err) {
    result.replaceChildren(errorBox(err));
    return;
  }
  const filtered = EVENT_FILTERS.some((f) => params.get(f));
  const ignored = filtered && page.events.some((e) => !matches(e, params));
  const rows = page.events.map((e) => h('tr', {},
    h('td', {}, e.global_position), h('td', { class: 'time' }, e.recorded_at), h('td', {}, e.event_type),
    h('td', {}, e.task_id ? h('a', { href: `#/task/${encodeURIComponent(e.task_id)}`, class: 'mono' }, e.task_id) : ''),
    h('td', {}, actorText(e.actor)), h('td', { class: 'mono' }, e.request_id ?? '')));
  const table = h('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': 'Events table' },
    h('table', { id: 'events' },
      h('caption', {}, `Events in global order${filtered ? ', filtered' : ''}`),
      h('thead', {}, h('tr', {}, ['Position', 'Recorded', 'Type', 'Task', 'Actor', 'Request id'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
  const paging = h('div', { class: 'actions' });
  if (params.get('after')) {
    const first = new URLSearchParams(params);
    first.delete('after');
    paging.append(h('a', { href: `#/events?${first}` }, 'First page'));
  }
  if (page.has_more) {
    paging.append(h('button', {
      type: 'button',
      id: 'next-page',
      onclick: () => {
        const next = new URLSearchParams(params);
        next.set('after', String(page.next_after));
        location.hash = `#/events?${next}`;
      },
    }, 'Next page'));
  }
  result.replaceChildren(...[
    ignored ? h('p', { class: 'error', role: 'alert' }, 'This server does not filter events by these fields (it has no event search); the page below is unfiltered.') : null,
    rows.length ? table : h('p', {}, 'No event matches.'), paging].filter(Boolean));
  result.dataset.loaded = query.toString();
}

// ---------------------------------------------------------------------------------------

function route() {
  if (!sessionStorage.getItem(KEY)) {
    renderSignIn();
    return;
  }
  nav.hidden = false;
  const hash = location.hash.slice(1) || '/tasks';
  const [path, query = ''] = hash.split('?');
  const params = new URLSearchParams(query);
  const task = /^\/task\/([^/]+)$/.exec(path);
  for (const a of nav.querySelectorAll('a')) {
    if (a.getAttribute('href') === `#${path}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  if (task) renderTask(decodeURIComponent(task[1]));
  else if (path === '/events') renderEvents(params);
  else renderTasks(params);
}

document.getElementById('sign-out').addEventListener('click', () => {
  sessionStorage.removeItem(KEY);
  keyNames = null;
  location.hash = '#/';
  route();
});
// The fragment routes views, so the skip link moves focus itself instead of changing it.
document.querySelector('.skip').addEventListener('click', (ev) => {
  ev.preventDefault();
  main.focus();
});
window.addEventListener('hashchange', route);
route();
