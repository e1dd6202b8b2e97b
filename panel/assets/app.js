// kodo's panel: a page per URL fragment (#/flows, #/flows/NAME,
// #/executions, #/executions/FID, #/login), over kodo's own HTTP API with
// the session cookie. Text is always set as text; only HTML the server
// sanitized (/panel/render) is set as HTML.
'use strict';

const main = () => document.getElementById('main');
let session = null; // {user, admin, csrf}
let leaving = []; // what to stop when the page changes (timers, streams)
let shown = 0; // the page being shown: a page still loading for an older one draws nothing

// An element with attributes and children (strings become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'on') {
      for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
    } else if (value === true) {
      node.setAttribute(key, '');
    } else {
      node.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main().replaceChildren(...nodes.flat());
}

// Shows `nodes` only if page `page` is still the one asked for.
function showFor(page, ...nodes) {
  if (page === shown) show(...nodes);
  return page === shown;
}

// A call to kodo's API; a 401 sends the browser to the login page.
async function api(method, path, body) {
  const headers = { 'accept': 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (session && session.csrf) headers['x-kodo-csrf'] = session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401 && !path.startsWith('/panel/')) {
    session = null;
    location.hash = '#/login';
    throw new Error('not logged in');
  }
  return { status: response.status, ok: response.ok, data };
}

function problem(result) {
  const data = result.data || {};
  const lines = [data.error || `failed (${result.status})`];
  if (data.errors && typeof data.errors === 'object') {
    for (const [field, messages] of Object.entries(data.errors)) {
      lines.push(`${field}: ${[].concat(messages).join(', ')}`);
    }
  }
  return el('div', { class: 'notice', role: 'alert' }, lines.join(' — '));
}

function statusBadge(status) {
  return el('span', { class: `status ${status}`, 'data-status': status }, status);
}

function when(ts) {
  return ts ? new Date(ts * 1000).toLocaleString() : '';
}

// ---- login ----

function loginPage() {
  const token = el('input', { type: 'password', name: 'token', id: 'token', autocomplete: 'current-password', required: true });
  const out = el('div');
  const form = el('form', { class: 'fields', id: 'login' },
    el('label', {}, 'Token', token),
    el('button', { type: 'submit' }, 'Log in'), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const result = await api('POST', '/panel/login', { token: token.value });
    if (!result.ok) { out.replaceChildren(problem(result)); return; }
    session = result.data;
    location.hash = '#/flows';
  });
  show(el('h1', {}, 'Log in'), el('p', { class: 'muted' }, 'With a token of this node ([[auth.tokens]]).'), form);
  token.focus();
}

// ---- flows ----

async function flowsPage(page) {
  const { data } = await api('GET', '/flows');
  const cards = data.flows.map((f) => el('div', { class: 'card flow', 'data-flow': f.name },
    el('h2', {}, el('a', { href: `#/flows/${encodeURIComponent(f.name)}` }, f.name)),
    el('p', { class: 'muted' }, f.description || `a ${f.kind} flow`)));
  showFor(page, el('h1', {}, 'Flows'), cards.length ? cards : el('p', {}, 'No flows.'));
}

// Form fields from Kodosumi-shaped elements; returns [nodes, read()].
function formFields(elements, rendered) {
  const nodes = [];
  const readers = [];
  for (const element of elements) {
    const name = element.name;
    const label = element.label || name;
    switch (element.type) {
      case 'markdown': case 'html': {
        const box = el('div', { class: 'text' });
        rendered.push([box, element.type, element.text || '']);
        nodes.push(box);
        break;
      }
      case 'text': case 'password': case 'date': case 'time': case 'datetime-local': case 'number': {
        const input = el('input', {
          type: element.type, name, id: `f-${name}`, placeholder: element.placeholder,
          required: element.required === true, min: element.min_value, max: element.max_value,
          step: element.type === 'number' ? (element.step || 'any') : null,
        });
        if (element.value !== undefined && element.value !== null) input.value = element.value;
        nodes.push(el('label', {}, label, input));
        readers.push((out) => { if (input.value !== '') out[name] = element.type === 'number' ? Number(input.value) : input.value; });
        break;
      }
      case 'textarea': {
        const area = el('textarea', { name, id: `f-${name}`, placeholder: element.placeholder, required: element.required === true });
        if (element.value) area.value = element.value;
        nodes.push(el('label', {}, label, area));
        readers.push((out) => { if (area.value !== '') out[name] = area.value; });
        break;
      }
      case 'boolean': {
        const box = el('input', { type: 'checkbox', name, id: `f-${name}`, checked: element.value === true });
        nodes.push(el('label', { class: 'check' }, box, element.option || label));
        readers.push((out) => { if (box.checked) out[name] = 'on'; });
        break;
      }
      case 'select': {
        const select = el('select', { name, id: `f-${name}` },
          element.required === true ? null : el('option', { value: '' }, '—'),
          (element.option || []).map((o) => el('option', {
            value: o.name, selected: o.value === true || element.value === o.name,
          }, o.label || o.name)));
        nodes.push(el('label', {}, label, select));
        readers.push((out) => { if (select.value !== '') out[name] = select.value; });
        break;
      }
      default: break; // submit, cancel, break, hr: the form's own button stands in
    }
  }
  return [nodes, () => { const out = {}; for (const read of readers) read(out); return out; }];
}

async function renderInto(box, kind, text) {
  const result = await api('POST', '/panel/render', { [kind]: text });
  if (result.ok) box.innerHTML = result.data.html; // sanitized by the server
  else box.textContent = text;
}

async function flowPage(page, name) {
  const result = await api('GET', `/flows/${encodeURIComponent(name)}`);
  if (!result.ok) { showFor(page, el('h1', {}, name), problem(result)); return; }
  const flow = result.data;
  const out = el('div');
  const rendered = [];
  let fields; let read;
  if (flow.form && Array.isArray(flow.form.elements)) {
    [fields, read] = formFields(flow.form.elements, rendered);
  } else {
    const area = el('textarea', { name: 'inputs', id: 'inputs' }, '{}');
    fields = [el('label', {}, 'Inputs (a JSON object)', area)];
    read = () => JSON.parse(area.value || '{}');
  }
  const form = el('form', { class: 'fields', id: 'launch' }, fields,
    el('button', { type: 'submit' }, 'Launch'), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let inputs;
    try { inputs = read(); } catch (e) { out.replaceChildren(el('div', { class: 'notice' }, `not JSON: ${e.message}`)); return; }
    const launched = await api('POST', `/flows/${encodeURIComponent(name)}/executions`, { inputs });
    if (!launched.ok) { out.replaceChildren(problem(launched)); return; }
    location.hash = `#/executions/${launched.data.fid}`;
  });
  if (!showFor(page, el('h1', {}, flow.name), el('p', { class: 'muted' }, flow.description || ''), form)) return;
  for (const [box, kind, text] of rendered) renderInto(box, kind === 'html' ? 'html' : 'markdown', text);
}

// ---- executions ----

function hashQuery() {
  const query = location.hash.split('?')[1] || '';
  return new URLSearchParams(query);
}

async function executionsPage(page) {
  const query = hashQuery();
  const status = el('select', { id: 'filter-status' },
    ['', 'starting', 'running', 'awaiting', 'paused', 'finished', 'error', 'killed']
      .map((s) => el('option', { value: s, selected: query.get('status') === s }, s || 'any status')));
  const flows = (await api('GET', '/flows')).data.flows;
  const flow = el('select', { id: 'filter-flow' },
    el('option', { value: '' }, 'any flow'),
    flows.map((f) => el('option', { value: f.name, selected: query.get('flow') === f.name }, f.name)));
  const apply = () => {
    const next = new URLSearchParams();
    if (status.value) next.set('status', status.value);
    if (flow.value) next.set('flow', flow.value);
    location.hash = `#/executions?${next}`;
  };
  status.addEventListener('change', apply);
  flow.addEventListener('change', apply);
  const body = el('tbody');
  const pager = el('div', { class: 'pager' });
  if (!showFor(page, el('h1', {}, 'Executions'),
    el('div', { class: 'filters' }, el('label', {}, 'Status', status), el('label', {}, 'Flow', flow)),
    el('div', { class: 'table' }, el('table', { id: 'executions' },
      el('thead', {}, el('tr', {}, ['Execution', 'Flow', 'Status', 'Owner', 'Launched'].map((h) => el('th', {}, h)))),
      body)), pager)) return;
  const load = async () => {
    const params = new URLSearchParams({ limit: '25' });
    for (const key of ['status', 'flow', 'cursor']) if (query.get(key)) params.set(key, query.get(key));
    const { data } = await api('GET', `/executions?${params}`);
    body.replaceChildren(...data.executions.map((x) => el('tr', { 'data-fid': x.fid },
      el('td', { class: 'fid' }, el('a', { href: `#/executions/${x.fid}` }, x.fid)),
      el('td', {}, x.flow), el('td', {}, statusBadge(x.status)), el('td', {}, x.owner),
      el('td', {}, when(x.created)))));
    if (!data.executions.length) body.replaceChildren(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'None.')));
    const links = [];
    if (query.get('cursor')) {
      const first = new URLSearchParams(query); first.delete('cursor');
      links.push(el('a', { href: `#/executions?${first}` }, 'First page'));
    }
    if (data.next_cursor) {
      const next = new URLSearchParams(query); next.set('cursor', data.next_cursor);
      links.push(el('a', { href: `#/executions?${next}`, id: 'next-page' }, 'Next page'));
    }
    pager.replaceChildren(...links);
  };
  await load();
  if (page !== shown) return;
  const timer = setInterval(() => load().catch(() => {}), 2000);
  leaving.push(() => clearInterval(timer));
}

// How a result's payload is shown: Kodosumi's Markdown and HTML rendered
// (sanitized by the server), text as text, anything else as JSON.
function resultBox(kind, payload) {
  const box = el('div', { class: `result ${kind}` });
  const body = payload && typeof payload === 'object' && !Array.isArray(payload) && Object.keys(payload).length === 1
    ? Object.entries(payload)[0] : null;
  if (body && body[0] === 'Markdown' && typeof body[1]?.body === 'string') {
    renderInto(box, 'markdown', body[1].body);
  } else if (body && body[0] === 'HTML' && typeof body[1]?.body === 'string') {
    renderInto(box, 'html', body[1].body);
  } else if (body && body[0] === 'Text' && typeof body[1]?.body === 'string') {
    box.append(el('pre', {}, body[1].body));
  } else if (typeof payload === 'string') {
    box.append(el('pre', {}, payload));
  } else {
    box.append(el('pre', {}, JSON.stringify(payload, null, 2)));
  }
  return box;
}

async function executionPage(page, fid) {
  const at = `/executions/${encodeURIComponent(fid)}`;
  const got = await api('GET', at);
  if (!got.ok) { showFor(page, el('h1', {}, 'Execution'), problem(got)); return; }
  const row = got.data;
  const badge = el('span', { id: 'status' }, statusBadge(row.status));
  const facts = el('dl', { class: 'facts' },
    el('dt', {}, 'Flow'), el('dd', {}, row.flow),
    el('dt', {}, 'Owner'), el('dd', {}, row.owner),
    el('dt', {}, 'Launched'), el('dd', {}, when(row.created)),
    el('dt', {}, 'Updated'), el('dd', { id: 'updated' }, when(row.updated)));
  const notice = el('div');
  const kill = el('button', { type: 'button', class: 'danger', id: 'kill' }, 'Kill');
  kill.addEventListener('click', async () => {
    const result = await api('POST', `${at}/kill`);
    notice.replaceChildren(result.ok ? el('p', { class: 'muted' }, 'Killing…') : problem(result));
  });
  const actions = el('div', { class: 'actions' }, kill,
    el('a', { href: `${at}/events.jsonl`, download: `${fid}.jsonl`, id: 'download' }, 'Download events (JSON lines)'));
  const durable = await api('GET', `${at}/durable`);
  if (durable.ok) {
    for (const [label, verb] of [['Pause', 'pause'], ['Resume', 'resume']]) {
      const button = el('button', { type: 'button', class: 'quiet', id: verb }, label);
      button.addEventListener('click', async () => {
        const result = await api('POST', `${at}/${verb}`);
        notice.replaceChildren(result.ok ? el('p', { class: 'muted' }, `${label} asked.`) : problem(result));
      });
      actions.append(button);
    }
  }
  const locks = el('div', { id: 'locks' });
  const results = el('div', { class: 'results', id: 'results' });
  const log = el('pre', { class: 'log', id: 'log' });
  if (!showFor(page, el('h1', {}, row.flow, ' ', badge), facts, actions, notice, locks,
    el('h2', {}, 'Results'), results, el('h2', {}, 'Output'), log)) return;

  const setStatus = (status) => {
    badge.replaceChildren(statusBadge(status));
    kill.hidden = ['finished', 'error', 'killed'].includes(status);
  };
  setStatus(row.status);
  const openLocks = new Map();
  const stream = new EventSource(`${at}/stream`);
  leaving.push(() => stream.close());
  const on = (kind, fn) => stream.addEventListener(kind, (event) => {
    // The stream's own `error` (a dropped connection) is no kodo event.
    if (!(event instanceof MessageEvent)) return;
    let payload = null;
    try { payload = JSON.parse(event.data); } catch (_) { payload = event.data; }
    fn(payload);
    document.getElementById('updated')?.replaceChildren(new Date().toLocaleString());
  });
  for (const kind of ['stdout', 'stderr', 'debug']) {
    on(kind, (text) => {
      log.append(el('span', { class: kind }, typeof text === 'string' ? text : JSON.stringify(text)), '\n');
      log.scrollTop = log.scrollHeight;
    });
  }
  for (const kind of ['result', 'final', 'action', 'agent']) {
    on(kind, (payload) => {
      const box = resultBox(kind, payload);
      if (kind !== 'result') box.prepend(el('div', { class: 'muted' }, kind));
      results.append(box);
    });
  }
  on('error', (payload) => results.append(el('div', { class: 'result error' },
    typeof payload === 'string' ? payload : JSON.stringify(payload))));
  on('status', (status) => {
    setStatus(status);
    if (['finished', 'error', 'killed'].includes(status)) stream.close();
  });
  on('lock', (lock) => {
    // kodo's own hold (a MIP-003 job awaiting payment): no one answers it here.
    const box = lock.lid.startsWith('hold-')
      ? el('section', { class: 'lock' }, el('h2', {}, 'Awaiting payment'),
        el('p', { class: 'muted' }, 'The flow starts once its payment service confirms the payment.'))
      : lockForm(fid, lock);
    openLocks.set(lock.lid, box);
    locks.append(box);
  });
  on('lease', (lease) => {
    openLocks.get(lease.lid)?.remove();
    openLocks.delete(lease.lid);
  });
}

// The form that answers an open lock: the lock's own form (a Kodosumi
// app's @app.lock), or one answer (JSON, or else text).
function lockForm(fid, lock) {
  const data = lock.data;
  const out = el('div');
  const rendered = [];
  let fields; let read;
  if (data && typeof data === 'object' && Array.isArray(data.form)) {
    [fields, read] = formFields(data.form, rendered);
  } else {
    const question = data && typeof data === 'object' && typeof data.question === 'string'
      ? data.question : (typeof data === 'string' ? data : JSON.stringify(data));
    const answer = el('input', { type: 'text', name: 'answer', id: `answer-${lock.lid}` });
    fields = [el('p', {}, question), el('label', {}, 'Answer', answer)];
    read = () => { try { return JSON.parse(answer.value); } catch (_) { return answer.value; } };
  }
  const form = el('form', { class: 'fields lock-form', 'data-lid': lock.lid }, fields,
    el('button', { type: 'submit' }, 'Answer'), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const result = await api('POST', `/executions/${encodeURIComponent(fid)}/locks/${encodeURIComponent(lock.lid)}`, { answer: read() });
    out.replaceChildren(result.ok ? el('p', { class: 'muted' }, 'Answered.') : problem(result));
  });
  for (const [box, kind, text] of rendered) renderInto(box, kind === 'html' ? 'html' : 'markdown', text);
  return el('section', { class: 'lock' }, el('h2', {}, `Asked: ${lock.name}`), form);
}

// ---- routing ----

async function route() {
  for (const stop of leaving) stop();
  leaving = [];
  const page = ++shown;
  const hash = location.hash || '#/flows';
  const path = hash.slice(1).split('?')[0];
  if (!session) {
    const result = await api('GET', '/panel/session').catch(() => null);
    if (result && result.ok) session = result.data;
  }
  document.getElementById('nav').hidden = !session;
  document.getElementById('logout').hidden = !(session && session.login);
  document.getElementById('who').textContent = session ? `${session.user}${session.admin ? ' (admin)' : ''}` : '';
  if (!session || path === '/login') {
    if (session && path === '/login') { location.hash = '#/flows'; return; }
    if (path !== '/login') { location.hash = '#/login'; return; }
    loginPage();
    return;
  }
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  try {
    if (parts[0] === 'flows' && parts[1]) await flowPage(page, parts[1]);
    else if (parts[0] === 'executions' && parts[1]) await executionPage(page, parts[1]);
    else if (parts[0] === 'executions') await executionsPage(page);
    else await flowsPage(page);
  } catch (e) {
    if (e.message !== 'not logged in') show(el('div', { class: 'notice' }, String(e.message || e)));
  }
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('logout').addEventListener('click', async () => {
    await api('POST', '/panel/logout').catch(() => {});
    session = null;
    location.hash = '#/login';
  });
  window.addEventListener('hashchange', route);
  route();
});
