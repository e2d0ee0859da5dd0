// Sluice's web UI: one page, hash routing, no build step and no outside
// resources. It speaks only the admin API under /api/ (docs/http.md), as
// any other client would, with HTTP basic authentication.
//
// Reading order: formatting and DOM helpers, the API client and the login,
// shared components (lists with server-side paging, dialogs, charts), then
// one function per page, and the router at the end.

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat('en-US');

const format = {
  int(value) {
    return value === null || value === undefined ? '–' : numberFormat.format(value);
  },

  /** A per-second rate: two decimals below 10, fewer above. */
  rate(value) {
    if (!value) return '0/s';
    const digits = value < 10 ? 2 : value < 100 ? 1 : 0;
    return `${numberFormat.format(Number(value.toFixed(digits)))}/s`;
  },

  bytes(value) {
    if (value === null || value === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let scaled = value;
    let unit = 0;
    while (scaled >= 1024 && unit < units.length - 1) {
      scaled /= 1024;
      unit += 1;
    }
    return unit === 0 ? `${value} B` : `${scaled.toFixed(scaled < 10 ? 2 : 1)} ${units[unit]}`;
  },

  byteRate(value) {
    return value ? `${format.bytes(Math.round(value))}/s` : '0 B/s';
  },

  /** Local time as `YYYY-MM-DD HH:MM:SS`. */
  time(ms) {
    if (ms === null || ms === undefined || ms < 0) return '–';
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
      + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  },

  duration(ms) {
    let seconds = Math.floor(ms / 1000);
    const days = Math.floor(seconds / 86400);
    seconds -= days * 86400;
    const hours = Math.floor(seconds / 3600);
    seconds -= hours * 3600;
    const minutes = Math.floor(seconds / 60);
    seconds -= minutes * 60;
    if (days) return `${days}d ${hours}h`;
    if (hours) return `${hours}h ${minutes}m`;
    if (minutes) return `${minutes}m ${seconds}s`;
    return `${seconds}s`;
  },

  /** Hex text as byte pairs separated by spaces. */
  hexPairs(hex) {
    return hex.replace(/(..)(?=.)/g, '$1 ');
  },
};

/** `<input type=datetime-local>` value to milliseconds since the epoch. */
function localInputToMs(value) {
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? null : ms;
}

function msToLocalInput(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T`
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// ---------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------

/**
 * Builds an element. `props` keys: `class`, `testid` (data-testid), `on…`
 * (event listeners), `dataset`, `hidden`, `disabled`, `checked`, `value`;
 * anything else becomes an attribute. Children are nodes or text (never
 * parsed as HTML); null, false and undefined children are skipped.
 */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'testid') node.dataset.testid = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (['hidden', 'disabled', 'checked', 'value', 'selected', 'required'].includes(key)) {
      node[key] = value;
    } else node.setAttribute(key, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function replaceChildren(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** Encodes path segments for an API path or a hash route. */
function pathOf(...segments) {
  return segments.map((segment) => encodeURIComponent(segment)).join('/');
}

/** `?a=1&b=2` without empty values, or ''. */
function queryOf(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/** A hash link to a route. */
function route(segments, params = {}) {
  return `#/${pathOf(...segments)}${queryOf(params)}`;
}

const muted = (text) => h('span', { class: 'muted' }, text);
const nullValue = () => h('span', { class: 'null' }, 'null');

/** The default exchange has the empty name; paths call it amq.default. */
const exchangePathName = (name) => (name === '' ? 'amq.default' : name);
const exchangeLabel = (name) => (name === '' ? '(AMQP default)' : name);

// ---------------------------------------------------------------------------
// API client and login
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `request failed with status ${status}`);
    this.status = status;
    this.code = error?.code;
    this.name = 'ApiError';
    this.errorName = error?.name;
    this.field = error?.field;
  }
}

/**
 * Who the UI is. Guest is tried first (the broker accepts it from
 * loopback); credentials someone typed live in sessionStorage, so they last
 * as long as the tab and no longer.
 */
const session = {
  storageKey: 'sluice.credentials',
  loggedOutKey: 'sluice.logged-out',
  loginShown: false,

  credentials() {
    const stored = sessionStorage.getItem(this.storageKey);
    if (stored) {
      try {
        const { user, password } = JSON.parse(stored);
        return { user, password, typed: true };
      } catch {
        sessionStorage.removeItem(this.storageKey);
      }
    }
    if (sessionStorage.getItem(this.loggedOutKey)) return null;
    return { user: 'guest', password: 'guest', typed: false };
  },

  store(user, password) {
    sessionStorage.setItem(this.storageKey, JSON.stringify({ user, password }));
    sessionStorage.removeItem(this.loggedOutKey);
  },

  logOut() {
    sessionStorage.removeItem(this.storageKey);
    sessionStorage.setItem(this.loggedOutKey, '1');
    showLogin('');
  },
};

function basicAuthorization(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `Basic ${btoa(binary)}`;
}

/**
 * Calls the API. Resolves with the JSON answer (null for 204); rejects
 * with an ApiError carrying the API's `error.message`. A 401 opens the
 * login form, and no request is sent while it is open. `trial`
 * credentials (the login form's) are used once instead of the session's.
 */
async function api(method, path, body, trial = null) {
  const credentials = trial ?? (session.loginShown ? null : session.credentials());
  if (!credentials) {
    if (!session.loginShown) showLogin('');
    throw new ApiError(401, { message: 'log in first' });
  }
  const headers = {
    Authorization: basicAuthorization(credentials.user, credentials.password),
    'X-Sluice-Client': 'ui',
    Accept: 'application/json',
  };
  const init = { method, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { message: `cannot reach the broker (${error.message})` });
  }
  const text = response.status === 204 ? '' : await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data?.error ?? { message: text || response.statusText });
    if (response.status === 401 && !trial) showLogin(credentials.typed ? error.message : '');
    throw error;
  }
  return data;
}

function showLogin(message) {
  session.loginShown = true;
  const overlay = document.getElementById('login');
  const errorLine = document.getElementById('login-error');
  errorLine.textContent = message;
  errorLine.hidden = !message;
  if (overlay.hidden) {
    overlay.hidden = false;
    document.getElementById('login-user').focus();
  }
  updateSessionLabel();
}

function hideLogin() {
  session.loginShown = false;
  document.getElementById('login').hidden = true;
  updateSessionLabel();
}

function updateSessionLabel() {
  const credentials = session.credentials();
  const signedIn = credentials && !session.loginShown;
  document.getElementById('session-user').textContent = signedIn ? credentials.user : '';
  document.getElementById('logout').hidden = !signedIn;
}

function setUpLogin() {
  const form = document.getElementById('login-form');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const user = document.getElementById('login-user').value;
    const password = document.getElementById('login-password').value;
    const errorLine = document.getElementById('login-error');
    const submit = form.querySelector('button[type=submit]');
    submit.disabled = true;
    try {
      await api('GET', '/api/overview', undefined, { user, password, typed: true });
      session.store(user, password);
      document.getElementById('login-password').value = '';
      hideLogin();
      router.render();
    } catch (error) {
      errorLine.textContent = error.status === 401
        ? 'Wrong user name or password (or this user may log in only from the broker\'s own machine).'
        : error.message;
      errorLine.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  document.getElementById('logout').addEventListener('click', () => {
    session.logOut();
    router.render();
  });
}

// ---------------------------------------------------------------------------
// Notices: success messages fade, errors stay until dismissed
// ---------------------------------------------------------------------------

function notify(message, kind = 'ok') {
  const area = document.getElementById('notices');
  const notice = h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: `notice-${kind}` },
    h('span', {}, message),
    h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: () => notice.remove() }, '×'));
  area.append(notice);
  while (area.children.length > 4) area.firstElementChild.remove();
  if (kind !== 'error') setTimeout(() => notice.remove(), 6000);
}

// ---------------------------------------------------------------------------
// Page lifetime: timers and listeners that end when the page is left
// ---------------------------------------------------------------------------

class PageContext {
  constructor(query) {
    this.query = query;
    this.alive = true;
    this.cleanups = [];
    this.pollers = [];
  }

  /** Runs `task` every `ms` until the page is left; runs never overlap. */
  every(ms, task) {
    const poller = { ms, task, timer: null, running: null };
    this.pollers.push(poller);
    this.startPoller(poller);
    this.cleanups.push(() => clearInterval(poller.timer));
  }

  startPoller(poller) {
    poller.timer = setInterval(() => {
      if (poller.running || !this.alive || document.hidden) return;
      poller.running = poller.task().finally(() => { poller.running = null; });
    }, poller.ms);
  }

  /**
   * Stops the page's polling and waits for polls in flight. A page about
   * to delete what it shows holds first, so that no poll asks for what is
   * gone; `resume` restarts polling when the deletion failed.
   */
  async hold() {
    for (const poller of this.pollers) clearInterval(poller.timer);
    await Promise.allSettled(this.pollers.map((poller) => poller.running).filter(Boolean));
  }

  resume() {
    if (!this.alive) return;
    for (const poller of this.pollers) this.startPoller(poller);
  }

  /** Runs `work` (a deletion of this page's subject) with polling held. */
  async held(work) {
    await this.hold();
    try {
      return await work();
    } catch (error) {
      this.resume();
      throw error;
    }
  }

  listen(target, event, handler) {
    target.addEventListener(event, handler);
    this.cleanups.push(() => target.removeEventListener(event, handler));
  }

  leave() {
    this.alive = false;
    for (const cleanup of this.cleanups) cleanup();
    this.cleanups = [];
  }

  /** Rewrites the current route's query without a new history entry or render. */
  setQuery(params) {
    const path = (location.hash.slice(1) || '/').split('?')[0];
    history.replaceState(null, '', `#${path}${queryOf(params)}`);
  }
}

// ---------------------------------------------------------------------------
// Components
// ---------------------------------------------------------------------------

/**
 * Whether `error` means the page's subject does not exist (it was never
 * loaded and the API says 404); if so the page shows only that, with a
 * way back, and stops polling.
 */
function showedMissing(ctx, root, error, back, backLabel) {
  if (error.status !== 404 || root.dataset.loaded === 'true') return false;
  ctx.hold();
  const title = root.querySelector('h1')?.textContent ?? 'Not found';
  replaceChildren(root, pageHeader(title),
    h('p', { class: 'error', testid: 'page-error' }, error.message),
    h('p', {}, h('a', { href: back }, `‹ ${backLabel}`)));
  return true;
}

/**
 * GETs `path` for a page that polls it: the answer, or null once the page
 * was left or after showing the failure in `errorLine` (hidden again by
 * the next answer).
 */
async function pollGet(ctx, path, errorLine) {
  let data;
  try {
    data = await api('GET', path);
  } catch (error) {
    errorLine.textContent = error.message;
    errorLine.hidden = false;
    return null;
  }
  if (!ctx.alive) return null;
  errorLine.hidden = true;
  return data;
}

function section(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, ...children);
}

function pageHeader(title, ...extra) {
  return h('div', { class: 'page-header' }, h('h1', {}, title), h('div', { class: 'actions' }, ...extra));
}

/** Key–value pairs as a definition list. */
function facts(pairs, testid) {
  return h('dl', { class: 'facts', testid },
    pairs.map(([label, value, id]) => h('div', {},
      h('dt', {}, label),
      h('dd', { testid: id }, value))));
}

/**
 * A table. `columns`: `{ label, cell: row => node|text, numeric, testid }`.
 * Each row gets `data-testid=<rowTestid>` and `data-key=<rowKey(row)>`.
 */
function dataTable({ columns, rows, rowTestid, rowKey, empty = 'Nothing here.', testid }) {
  const head = h('tr', {}, columns.map((column) => h('th', { class: column.numeric ? 'num' : null }, column.label)));
  const body = rows.length
    ? rows.map((row) => h('tr', { testid: rowTestid, dataset: rowKey ? { key: rowKey(row) } : {} },
      columns.map((column) => h('td', { class: column.numeric ? 'num' : null, testid: column.testid }, column.cell(row)))))
    : [h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, empty))];
  return h('div', { class: 'table-wrap' }, h('table', { testid }, h('thead', {}, head), h('tbody', {}, body)));
}

/** Page navigation below a list: « Previous · page x of y · Next ». */
function pager({ id, page, pageSize, total, onPage }) {
  const pages = Math.max(1, Math.ceil(total / pageSize));
  const first = total === 0 ? 0 : (page - 1) * pageSize + 1;
  const last = Math.min(total, page * pageSize);
  return h('div', { class: 'pager', testid: `${id}-pager` },
    h('button', { type: 'button', testid: `${id}-prev`, disabled: page <= 1, onclick: () => onPage(page - 1) }, '‹ Previous'),
    h('span', { testid: `${id}-page-info` }, total === 0 ? 'none' : `${format.int(first)}–${format.int(last)} of ${format.int(total)}`,
      pages > 1 ? ` · page ${page} of ${pages}` : ''),
    h('button', { type: 'button', testid: `${id}-next`, disabled: page >= pages, onclick: () => onPage(page + 1) }, 'Next ›'));
}

const PAGE_SIZES = [20, 50, 100];

/**
 * A list backed by one of the API's paged list routes: a filter box, the
 * table of the current page and a pager. Only one page is ever in the DOM;
 * the server filters and cuts. Refreshes itself every `refreshMs`.
 *
 * `params()` adds query parameters (such as `vhost`); `state` carries
 * `filter`, `page` and `page_size`. The page's main list (`mirror`) keeps
 * them in the route's query, with what `onQuery()` adds, so a reload or a
 * shared link shows the same page.
 */
function pagedList(ctx, { id, path, columns, rowKey, params = () => ({}), empty, refreshMs = 5000, placeholder = 'Filter by name', onQuery, mirror = true }) {
  const query = mirror ? ctx.query : new URLSearchParams();
  const state = {
    filter: query.get('filter') || '',
    page: Math.max(1, Number(query.get('page')) || 1),
    pageSize: PAGE_SIZES.includes(Number(query.get('page_size'))) ? Number(query.get('page_size')) : 50,
  };
  const filterInput = h('input', {
    type: 'search', placeholder, value: state.filter, testid: `${id}-filter`, 'aria-label': placeholder,
  });
  const sizeSelect = h('select', { testid: `${id}-page-size`, 'aria-label': 'Rows per page' },
    PAGE_SIZES.map((size) => h('option', { value: String(size), selected: size === state.pageSize }, `${size} per page`)));
  const total = h('span', { class: 'muted', testid: `${id}-total` });
  const errorLine = h('p', { class: 'error', testid: `${id}-error`, hidden: true });
  const tableSlot = h('div', { class: 'list-table' });
  const pagerSlot = h('div');
  let sequence = 0;

  const syncQuery = () => {
    if (!mirror) return;
    const query = { filter: state.filter, page: state.page > 1 ? state.page : '', page_size: state.pageSize !== 50 ? state.pageSize : '' };
    ctx.setQuery({ ...(onQuery ? onQuery() : {}), ...query });
  };

  async function load() {
    const mine = ++sequence;
    try {
      const data = await api('GET', path + queryOf({ ...params(), filter: state.filter, page: state.page, page_size: state.pageSize }));
      if (mine !== sequence || !ctx.alive) return;
      const pages = Math.max(1, Math.ceil(data.total / state.pageSize));
      if (state.page > pages) {
        state.page = pages;
        syncQuery();
        await load();
        return;
      }
      errorLine.hidden = true;
      total.textContent = `${format.int(data.total)} ${data.total === 1 ? 'item' : 'items'}${state.filter ? ' matching' : ''}`;
      replaceChildren(tableSlot, dataTable({ columns, rows: data.items, rowTestid: `${id}-row`, rowKey, empty, testid: `${id}-table` }));
      replaceChildren(pagerSlot, data.total > state.pageSize ? pager({
        id, page: state.page, pageSize: state.pageSize, total: data.total,
        onPage: (page) => { state.page = page; syncQuery(); load(); },
      }) : null);
      tableSlot.dataset.loaded = 'true';
    } catch (error) {
      if (mine !== sequence || !ctx.alive) return;
      errorLine.textContent = error.message;
      errorLine.hidden = false;
    }
  }

  let debounce = null;
  filterInput.addEventListener('input', () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => {
      state.filter = filterInput.value.trim();
      state.page = 1;
      syncQuery();
      load();
    }, 250);
  });
  sizeSelect.addEventListener('change', () => {
    state.pageSize = Number(sizeSelect.value);
    state.page = 1;
    syncQuery();
    load();
  });
  ctx.cleanups.push(() => clearTimeout(debounce));
  if (refreshMs) ctx.every(refreshMs, load);
  load();

  const element = h('div', { class: 'paged-list', testid: id },
    h('div', { class: 'toolbar' }, filterInput, sizeSelect, total),
    errorLine, tableSlot, pagerSlot);
  return { element, reload: load };
}

/**
 * A table over rows already in memory, a page at a time (a topic's
 * partitions, a group's offsets: there can be thousands).
 */
function localPagedTable({ id, columns, rows, rowKey, empty, pageSize = 100 }) {
  const wrapper = h('div', { testid: id });
  let page = 1;
  const draw = () => {
    const pages = Math.max(1, Math.ceil(rows.length / pageSize));
    page = Math.min(page, pages);
    const slice = rows.slice((page - 1) * pageSize, page * pageSize);
    replaceChildren(wrapper,
      dataTable({ columns, rows: slice, rowTestid: `${id}-row`, rowKey, empty, testid: `${id}-table` }),
      rows.length > pageSize ? pager({ id, page, pageSize, total: rows.length, onPage: (p) => { page = p; draw(); } }) : null);
  };
  draw();
  return {
    element: wrapper,
    update(newRows) {
      rows = newRows;
      draw();
    },
  };
}

/**
 * A modal confirmation. `action` runs on confirm; its error is shown in the
 * dialog, which stays open. With `input`, the text typed is passed to the
 * action. Resolves true when the action succeeded, false when cancelled.
 */
function confirmAction({ title, message, confirmLabel = 'Confirm', danger = true, input, action }) {
  return new Promise((resolve) => {
    const field = input
      ? h('input', { testid: 'confirm-input', value: input.value || '', placeholder: input.placeholder || '', 'aria-label': input.label })
      : null;
    const errorLine = h('p', { class: 'error', testid: 'confirm-error', hidden: true });
    const ok = h('button', { type: 'submit', class: danger ? 'danger' : 'primary', testid: 'confirm-ok' }, confirmLabel);
    const cancel = h('button', { type: 'button', testid: 'confirm-cancel' }, 'Cancel');
    const form = h('form', { method: 'dialog' },
      h('h2', {}, title),
      h('p', { testid: 'confirm-message' }, message),
      input ? h('label', {}, input.label, field) : null,
      errorLine,
      h('div', { class: 'dialog-buttons' }, cancel, ok));
    const dialog = h('dialog', { class: 'confirm', testid: 'confirm-dialog' }, form);
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      dialog.close();
      dialog.remove();
      resolve(result);
    };
    cancel.addEventListener('click', () => finish(false));
    dialog.addEventListener('cancel', (event) => { event.preventDefault(); finish(false); });
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      ok.disabled = true;
      cancel.disabled = true;
      try {
        await action(field ? field.value : undefined);
        finish(true);
      } catch (error) {
        errorLine.textContent = error.message;
        errorLine.hidden = false;
        ok.disabled = false;
        cancel.disabled = false;
      }
    });
    document.body.append(dialog);
    dialog.showModal();
    (field || ok).focus();
  });
}

/**
 * A form whose submit runs `onSubmit(values)`. Fields come from `fields`
 * (built by `field`); the error or result line sits below the buttons.
 * `onSubmit` may return a text to show as the result.
 */
function actionForm({ id, fields, submitLabel, onSubmit, inline = false }) {
  const errorLine = h('p', { class: 'error', testid: `${id}-error`, hidden: true });
  const result = h('p', { class: 'result', testid: `${id}-result`, hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', testid: `${id}-submit` }, submitLabel);
  const form = h('form', { class: inline ? 'form inline' : 'form', testid: id, novalidate: true },
    fields, h('div', { class: 'form-buttons' }, submit), errorLine, result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    errorLine.hidden = true;
    result.hidden = true;
    submit.disabled = true;
    try {
      const message = await onSubmit(form);
      if (message) {
        replaceChildren(result, message);
        result.hidden = false;
      }
    } catch (error) {
      errorLine.textContent = error.field ? `${error.field}: ${error.message}` : error.message;
      errorLine.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** A labelled input; `control` is an element, its testid set from `id`. */
function field(label, control, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'label' }, label), control, hint ? h('span', { class: 'hint' }, hint) : null);
}

function checkbox(label, testid, checked) {
  return h('label', { class: 'check' }, h('input', { type: 'checkbox', testid, checked }), label);
}

/** The value of the form control with this testid. */
function valueOf(form, testid) {
  const control = form.querySelector(`[data-testid="${testid}"]`);
  return control.type === 'checkbox' ? control.checked : control.value;
}

/** An error on a field the UI checks itself, shaped like the API's. */
function fieldError(name, message) {
  return new ApiError(400, { code: 2, name: 'invalid_field', field: name, message });
}

/** `key=value` lines as an object; blank lines are skipped. */
function parseKeyValueLines(text, name) {
  const entries = {};
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf('=');
    if (at <= 0) throw fieldError(name, `line ${index + 1} is not key=value`);
    entries[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return entries;
}

/** A JSON object typed into a text area (empty means none). */
function parseJsonObject(text, name) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw fieldError(name, `not JSON: ${error.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw fieldError(name, 'must be a JSON object such as {"x-max-length": 1000}');
  }
  return value;
}

/** A JSON value compactly, or a dash for an empty object. */
function jsonCell(value) {
  if (value === null || value === undefined) return nullValue();
  if (typeof value === 'object' && Object.keys(value).length === 0) return muted('–');
  return h('code', {}, JSON.stringify(value));
}

/** Long text shown cut, with the full text on demand. */
function longText(text, testid, limit = 500) {
  if (text === null || text === undefined) return h('span', { testid }, nullValue());
  if (text.length <= limit) return h('span', { class: 'content', testid }, text);
  const node = h('span', { class: 'content', testid }, text.slice(0, limit));
  const more = h('button', {
    type: 'button', class: 'link',
    onclick: () => { node.textContent = text; more.remove(); },
  }, ` … show all ${format.int(text.length)} characters`);
  return h('span', {}, node, more);
}

/** The virtual hosts, for selectors. */
async function vhostNames() {
  const data = await api('GET', '/api/vhosts?page_size=1000');
  return data.items.map((vhost) => vhost.name);
}

function vhostSelect(testid, names, selected, { all = false } = {}) {
  return h('select', { testid, 'aria-label': 'Virtual host' },
    all ? h('option', { value: '', selected: !selected }, 'All virtual hosts') : null,
    names.map((name) => h('option', { value: name, selected: name === selected }, name)));
}

// ---------------------------------------------------------------------------
// Time-series charts in <svg>
// ---------------------------------------------------------------------------

/** What the broker keeps (GET /api/overview/history): an hour at 5 s. */
const HISTORY_KEEP_MS = 60 * 60 * 1000;
const POLL_MS = 2000;
/** A gap longer than this between points (the broker or the page was away) breaks the line. */
const GAP_MS = 12_000;
const CHART_RANGES = [[5, '5 minutes'], [15, '15 minutes'], [60, '1 hour']];
const CHART_COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626'];
const SVG_NS = 'http://www.w3.org/2000/svg';
const AXIS_FONT = '11px system-ui, sans-serif';

/** The time range every chart shows; chosen on any chart, kept for the tab. */
const chartRange = {
  minutes: Number(sessionStorage.getItem('sluice.chart-minutes')) || 5,
  charts: new Set(),
  set(minutes) {
    this.minutes = minutes;
    sessionStorage.setItem('sluice.chart-minutes', String(minutes));
    for (const chart of this.charts) chart.rangeChanged();
  },
};

/** Keeps the points of the last hour (what the broker keeps too). */
function trimHistory(points, now = Date.now()) {
  while (points.length && points[0].t < now - HISTORY_KEEP_MS) points.shift();
}

/**
 * Puts the broker's history (`server`, oldest first) under the points this
 * tab collected itself: the broker's cover everything up to its newest
 * point, the tab's own add what came after.
 */
function mergeHistory(local, server) {
  const newest = server.length ? server[server.length - 1].t : -Infinity;
  const merged = [...server, ...local.filter((point) => point.t > newest)];
  local.splice(0, local.length, ...merged);
  trimHistory(local);
}

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined) continue;
    if (key === 'testid') node.dataset.testid = value;
    else node.setAttribute(key, String(value));
  }
  if (text !== undefined) node.textContent = text;
  return node;
}

let measureContext = null;
/** Width in pixels of `text` in the axis font. */
function textWidth(text) {
  measureContext ??= document.createElement('canvas').getContext('2d');
  measureContext.font = AXIS_FONT;
  return measureContext.measureText(text).width;
}

/** The smallest 1, 2 or 5 times a power of ten at or above `value`. */
function niceCeiling(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

const GRID_LINES = 4;
const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/**
 * The vertical scale: four equal steps of a round size up to `ceiling`,
 * and the one unit every label of the axis is written in (`divisor`
 * turns a value into that unit). Bytes step by round numbers of B, KiB,
 * MiB…; counts by whole numbers.
 */
function chartScale(max, kind) {
  if (kind === 'bytes') {
    let divisor = 1;
    let unit = 0;
    while (max / GRID_LINES / divisor >= 1024 && unit < BYTE_UNITS.length - 1) {
      divisor *= 1024;
      unit += 1;
    }
    const step = Math.max(unit === 0 ? 256 : 1, niceCeiling(max / GRID_LINES / divisor));
    return { ceiling: GRID_LINES * step * divisor, divisor, unit: `${BYTE_UNITS[unit]}/s` };
  }
  const step = kind === 'count' ? Math.max(1, niceCeiling(max / GRID_LINES)) : niceCeiling(max / GRID_LINES);
  return { ceiling: max > 0 || kind === 'count' ? GRID_LINES * step : 1, divisor: 1, unit: null };
}

/** A tick label: the number alone, at most two decimals. */
function tickLabel(value) {
  return numberFormat.format(Number(value.toFixed(2)));
}

/**
 * A line chart over the chosen range: `series` are `{ key, label }`,
 * points `{ t, values: { key: number } }`. The legend shows each series'
 * latest value as text (id `<id>-<key>`), so its numbers can be read
 * without the picture. Axis labels are `<text>` placed inside the drawing
 * (the left margin grows to the widest label), all in the one unit named
 * at the top of the axis (`<id>-unit`).
 */
class TimeChart {
  /**
   * `scale`: `rate` (per second), `bytes` (per second) or `count` (whole
   * numbers); `unit` names the vertical axis of rates and counts.
   */
  constructor({ id, title, series, formatValue = format.rate, scale = 'rate', unit = '/s', height = 180 }) {
    this.id = id;
    this.scale = scale;
    this.unit = unit;
    this.series = series.map((entry, index) => ({ ...entry, color: entry.color || CHART_COLORS[index % CHART_COLORS.length] }));
    this.formatValue = formatValue;
    this.height = height;
    this.points = [];
    this.svg = svg('svg', { id, testid: id, height, width: '100%', role: 'img', 'aria-label': title, class: 'chart-drawing' });
    this.values = new Map();
    const legend = h('ul', { class: 'legend' }, this.series.map((entry) => {
      const value = h('span', { id: `${id}-${entry.key}`, testid: `${id}-${entry.key}`, class: 'legend-value' }, '–');
      this.values.set(entry.key, value);
      return h('li', {}, h('span', { class: 'swatch', style: `background:${entry.color}` }), entry.label, ' ', value);
    }));
    this.rangeSelect = h('select', { testid: `${id}-range`, 'aria-label': 'Time range', class: 'chart-range' },
      CHART_RANGES.map(([minutes, label]) => h('option', { value: String(minutes), selected: minutes === chartRange.minutes }, label)));
    this.rangeSelect.addEventListener('change', () => chartRange.set(Number(this.rangeSelect.value)));
    chartRange.charts.add(this);
    this.element = h('figure', { class: 'chart' },
      h('figcaption', {}, h('span', {}, title), this.rangeSelect), this.svg, legend);
  }

  /** Stops following the shared range (the page is left). */
  detach() {
    chartRange.charts.delete(this);
  }

  rangeChanged() {
    this.rangeSelect.value = String(chartRange.minutes);
    this.draw();
  }

  update(points) {
    this.points = points;
    const last = points[points.length - 1];
    for (const entry of this.series) {
      this.values.get(entry.key).textContent = last ? this.formatValue(last.values[entry.key] ?? 0) : '–';
    }
    this.draw();
  }

  draw() {
    const width = Math.max(200, this.svg.clientWidth || this.svg.getBoundingClientRect().width || 600);
    const height = this.height;
    const rangeMs = chartRange.minutes * 60_000;
    const now = Date.now();
    const start = now - rangeMs;
    const shown = this.points.filter((point) => point.t >= start);
    this.svg.dataset.points = String(shown.length);
    this.svg.dataset.first = shown.length ? String(shown[0].t) : '';
    let max = 0;
    for (const point of shown) {
      for (const entry of this.series) max = Math.max(max, point.values[entry.key] ?? 0);
    }
    const scale = chartScale(max, this.scale);
    const unit = scale.unit ?? this.unit;
    const labels = Array.from({ length: GRID_LINES + 1 }, (_, i) => tickLabel((scale.ceiling * i) / GRID_LINES / scale.divisor));
    const right = 8;
    const top = 26;
    const bottom = 20;
    const left = Math.ceil(Math.max(...labels.map(textWidth), textWidth(unit) - 4) + 10);
    const plotWidth = width - left - right;
    const plotHeight = height - top - bottom;
    const x = (t) => left + ((t - start) / rangeMs) * plotWidth;
    const y = (v) => top + plotHeight - (v / scale.ceiling) * plotHeight;

    const nodes = [];
    nodes.push(svg('text', { x: 2, y: 8, class: 'axis-unit', testid: `${this.id}-unit`, 'dominant-baseline': 'middle' }, unit));
    labels.forEach((label, i) => {
      const yy = Math.round(y((scale.ceiling * i) / GRID_LINES)) + 0.5;
      nodes.push(svg('line', { x1: left, x2: left + plotWidth, y1: yy, y2: yy, class: 'grid' }));
      nodes.push(svg('text', { x: left - 6, y: yy, 'text-anchor': 'end', 'dominant-baseline': 'middle', class: 'axis-label', 'data-axis': 'y' }, label));
    });
    const stepMinutes = chartRange.minutes <= 5 ? 1 : chartRange.minutes <= 15 ? 3 : 10;
    for (let minutes = 0; minutes <= chartRange.minutes; minutes += stepMinutes) {
      const label = minutes === 0 ? 'now' : `-${minutes}m`;
      const anchor = minutes === 0 ? 'end' : minutes === chartRange.minutes ? 'start' : 'middle';
      nodes.push(svg('text', {
        x: x(now - minutes * 60_000), y: top + plotHeight + 6, 'text-anchor': anchor, 'dominant-baseline': 'hanging', class: 'axis-label', 'data-axis': 'x',
      }, label));
    }
    if (shown.length < 2) {
      nodes.push(svg('text', { x: left + plotWidth / 2, y: top + plotHeight / 2, 'text-anchor': 'middle', 'dominant-baseline': 'middle', class: 'axis-label' }, 'collecting data…'));
    }
    for (const entry of this.series) {
      let path = '';
      let previous = null;
      for (const point of shown) {
        const px = x(point.t).toFixed(1);
        const py = y(point.values[entry.key] ?? 0).toFixed(1);
        path += `${previous === null || point.t - previous > GAP_MS ? 'M' : 'L'}${px},${py}`;
        previous = point.t;
      }
      if (path) nodes.push(svg('path', { d: path, stroke: entry.color, class: 'series' }));
    }
    this.svg.replaceChildren(...nodes);
  }
}

// History kept across page changes, for as long as the tab is open; the
// broker's own history fills it on first load.
const overviewHistory = [];
const groupLagHistory = new Map();

// ---------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------

const TOTALS = [
  ['topics', 'Topics'], ['partitions', 'Partitions'], ['groups', 'Consumer groups'],
  ['vhosts', 'Virtual hosts'], ['exchanges', 'Exchanges'], ['queues', 'Queues'],
  ['connections', 'Connections'], ['channels', 'Channels'],
  ['messages_ready', 'Messages ready'], ['messages_unacknowledged', 'Messages unacked'],
];

async function overviewPage(ctx, root) {
  const charts = [
    new TimeChart({
      id: 'chart-kafka-records', title: 'Kafka records per second', unit: 'records/s',
      series: [{ key: 'kafka_records_in', label: 'in' }, { key: 'kafka_records_out', label: 'out' }],
    }),
    new TimeChart({
      id: 'chart-kafka-bytes', title: 'Kafka bytes per second', formatValue: format.byteRate, scale: 'bytes',
      series: [{ key: 'kafka_bytes_in', label: 'in' }, { key: 'kafka_bytes_out', label: 'out' }],
    }),
    new TimeChart({
      id: 'chart-amqp', title: 'AMQP messages per second', unit: 'messages/s',
      series: [{ key: 'amqp_publish', label: 'publish' }, { key: 'amqp_deliver', label: 'deliver' }, { key: 'amqp_ack', label: 'ack' }],
    }),
  ];
  const node = h('div', { class: 'muted' }, 'Loading…');
  const totals = h('div', { class: 'totals', testid: 'totals' });
  const alarms = h('div', { class: 'alarms', testid: 'alarms' });
  const listeners = h('div', { testid: 'listeners' });
  const errorLine = h('p', { class: 'error', testid: 'page-error', hidden: true });
  replaceChildren(root,
    pageHeader('Overview'),
    errorLine,
    section(null, node, alarms),
    section('Totals', totals),
    section('Message rates', h('p', { class: 'muted' }, 'Averaged over 5 seconds. The broker keeps the last hour, a point every 5 seconds; this page adds one every 2 seconds.'),
      h('div', { class: 'charts' }, charts.map((chart) => chart.element))),
    section('Listeners', listeners));

  async function poll() {
    const data = await pollGet(ctx, '/api/overview', errorLine);
    if (!data) return;
    const now = Date.now();
    overviewHistory.push({ t: now, values: data.rates });
    trimHistory(overviewHistory, now);
    replaceChildren(node, facts([
      ['Version', data.version, 'overview-version'],
      ['Uptime', format.duration(data.uptime_ms), 'overview-uptime'],
      ['Memory', format.bytes(data.memory_bytes), 'overview-memory'],
    ], 'overview-facts'));
    replaceChildren(alarms,
      ['memory', 'disk'].map((resource) => h('span', {
        class: `badge ${data.alarms[resource] ? 'bad' : 'good'}`,
        testid: `alarm-${resource}`,
        dataset: { active: String(Boolean(data.alarms[resource])) },
      }, `${resource} alarm: ${data.alarms[resource] ? 'ACTIVE, publishers blocked' : 'off'}`)));
    replaceChildren(totals, TOTALS.map(([key, label]) => h('div', { class: 'total' },
      h('div', { class: 'total-value', id: `total-${key}`, testid: `total-${key}` }, format.int(data.totals[key])),
      h('div', { class: 'total-label' }, label))));
    replaceChildren(listeners, dataTable({
      columns: [
        { label: 'Protocol', cell: (l) => l.protocol },
        { label: 'Address', cell: (l) => h('code', {}, l.address) },
      ],
      rows: data.listeners,
      rowTestid: 'listener-row',
      rowKey: (l) => l.protocol,
      testid: 'listeners-table',
    }));
    for (const chart of charts) chart.update(overviewHistory);
    root.dataset.loaded = 'true';
  }

  ctx.listen(window, 'resize', () => charts.forEach((chart) => chart.draw()));
  ctx.cleanups.push(() => charts.forEach((chart) => chart.detach()));
  ctx.every(POLL_MS, poll);
  // The overview first: it is what tells a refused login.
  await poll();
  if (root.dataset.loaded !== 'true' || !ctx.alive) return;
  try {
    const kept = await api('GET', '/api/overview/history');
    if (!ctx.alive) return;
    mergeHistory(overviewHistory, kept.points.map((point) => ({ t: point.t, values: point.rates })));
    for (const chart of charts) chart.update(overviewHistory);
  } catch (error) {
    if (error.status === 401) throw error;
    // Without the broker's history the charts start from this page's polls.
  }
}

// ---------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------

async function topicsPage(ctx, root) {
  const list = pagedList(ctx, {
    id: 'topics',
    path: '/api/topics',
    rowKey: (t) => t.name,
    empty: 'No topics.',
    columns: [
      { label: 'Name', cell: (t) => h('a', { href: route(['topics', t.name]), testid: 'topic-link' }, t.name) },
      { label: 'Partitions', numeric: true, cell: (t) => format.int(t.partitions) },
      { label: 'Records', numeric: true, cell: (t) => format.int(t.records), testid: 'topic-records' },
      { label: 'Size', numeric: true, cell: (t) => format.bytes(t.size_bytes) },
      { label: 'In', numeric: true, cell: (t) => `${format.rate(t.records_in_rate)} · ${format.byteRate(t.bytes_in_rate)}` },
      { label: 'Out', numeric: true, cell: (t) => `${format.rate(t.records_out_rate)} · ${format.byteRate(t.bytes_out_rate)}` },
      {
        label: '',
        cell: (t) => h('span', { class: 'row-actions' },
          h('a', { href: route(['messages'], { topic: t.name }) }, 'Browse'),
          h('button', { type: 'button', class: 'danger small', testid: 'topic-delete', onclick: () => deleteTopic(t.name, list.reload) }, 'Delete')),
      },
    ],
  });

  const create = actionForm({
    id: 'topic-create',
    submitLabel: 'Create topic',
    inline: false,
    fields: [
      h('div', { class: 'row' },
        field('Name', h('input', { testid: 'topic-create-name', placeholder: 'orders', autocomplete: 'off' })),
        field('Partitions', h('input', { testid: 'topic-create-partitions', type: 'number', min: 1, value: '1' }))),
      field('Configs', h('textarea', { testid: 'topic-create-configs', rows: 3, placeholder: 'retention.ms=3600000\ncleanup.policy=compact' }), 'One key=value per line; optional.'),
    ],
    async onSubmit(form) {
      const name = valueOf(form, 'topic-create-name').trim();
      if (!name) throw fieldError('name', 'a topic needs a name');
      const partitionsText = valueOf(form, 'topic-create-partitions').trim();
      const partitions = partitionsText === '' ? 1 : Number(partitionsText);
      if (!Number.isInteger(partitions)) throw fieldError('partitions', 'partitions must be a whole number');
      const configs = parseKeyValueLines(valueOf(form, 'topic-create-configs'), 'configs');
      await api('POST', '/api/topics', { name, partitions, configs });
      form.querySelector('[data-testid="topic-create-name"]').value = '';
      notify(`Topic ${name} created.`);
      list.reload();
      return h('span', {}, 'Created ', h('a', { href: route(['topics', name]) }, name), '.');
    },
  });

  replaceChildren(root,
    pageHeader('Topics'),
    section(null, list.element),
    section('Create a topic', create));
}

/** Runs `work` with `page`'s polling held when deleting what the page shows. */
const heldBy = (page, work) => (page ? page.held(work) : work());

function deleteTopic(name, then, page) {
  return confirmAction({
    title: 'Delete topic',
    message: `Delete topic ${name} and all its records? This cannot be undone.`,
    confirmLabel: 'Delete topic',
    action: () => heldBy(page, async () => {
      await api('DELETE', `/api/topics/${pathOf(name)}`);
      notify(`Topic ${name} deleted.`);
      then();
    }),
  });
}

async function topicPage(ctx, root, [name]) {
  const summary = h('div');
  const partitions = localPagedTable({
    id: 'partitions',
    rows: [],
    rowKey: (p) => String(p.partition),
    columns: [
      { label: 'Partition', numeric: true, cell: (p) => String(p.partition) },
      { label: 'Log start', numeric: true, cell: (p) => format.int(p.log_start_offset), testid: 'partition-log-start' },
      { label: 'Log end', numeric: true, cell: (p) => format.int(p.log_end_offset), testid: 'partition-log-end' },
      { label: 'High watermark', numeric: true, cell: (p) => format.int(p.high_watermark), testid: 'partition-high-watermark' },
      { label: 'Size', numeric: true, cell: (p) => format.bytes(p.size_bytes) },
      { label: 'Segments', numeric: true, cell: (p) => format.int(p.segments) },
      { label: 'Records in / out', numeric: true, cell: (p) => `${format.int(p.records_in)} / ${format.int(p.records_out)}` },
      { label: 'Bytes in / out', numeric: true, cell: (p) => `${format.bytes(p.bytes_in)} / ${format.bytes(p.bytes_out)}` },
      { label: '', cell: (p) => h('a', { href: route(['messages'], { topic: name, partition: p.partition }) }, 'Browse') },
    ],
  });
  const configs = h('div', { testid: 'configs' });
  const bridges = h('div');
  let showInternal = false;
  const internalToggle = h('input', { type: 'checkbox', testid: 'topic-groups-internal' });
  const consumers = localPagedTable({
    id: 'topic-groups',
    rows: [],
    rowKey: (g) => g.group_id,
    empty: 'No consumer group has offsets on this topic or members assigned to it.',
    columns: [
      { label: 'Group', cell: (g) => [h('a', { href: route(['groups', g.group_id]), testid: 'topic-group-link' }, g.group_id), g.internal ? [' ', h('span', { class: 'badge' }, 'internal')] : null] },
      { label: 'State', cell: (g) => stateBadge(g.state) },
      { label: 'Members on this topic', numeric: true, cell: (g) => format.int(g.assigned_members), testid: 'topic-group-members' },
      { label: 'Partitions committed', numeric: true, cell: (g) => format.int(g.partitions_committed) },
      { label: 'Lag', numeric: true, cell: (g) => format.int(g.lag), testid: 'topic-group-lag' },
    ],
  });
  const loadConsumers = async () => {
    const data = await api('GET', `/api/topics/${pathOf(name)}/groups${queryOf({ internal: showInternal ? 'true' : 'false', page_size: 1000 })}`);
    if (ctx.alive) consumers.update(data.items);
  };
  internalToggle.addEventListener('change', () => { showInternal = internalToggle.checked; loadConsumers().catch(() => {}); });
  const errorLine = h('p', { class: 'error', testid: 'page-error', hidden: true });
  const addPartitions = actionForm({
    id: 'add-partitions',
    submitLabel: 'Set partition count',
    inline: true,
    fields: [field('New total', h('input', { testid: 'add-partitions-count', type: 'number', min: 1 }))],
    async onSubmit(form) {
      const count = Number(valueOf(form, 'add-partitions-count'));
      if (!Number.isInteger(count) || count < 1) throw fieldError('count', 'give the new total number of partitions');
      show(await api('POST', `/api/topics/${pathOf(name)}/partitions`, { count }));
      return `The topic now has ${count} partitions.`;
    },
  });

  const setConfig = actionForm({
    id: 'config-set',
    submitLabel: 'Set',
    inline: true,
    fields: [
      field('Config', h('input', { testid: 'config-set-name', placeholder: 'retention.ms', list: 'config-names' })),
      field('Value', h('input', { testid: 'config-set-value' })),
      h('datalist', { id: 'config-names' }),
    ],
    async onSubmit(form) {
      const key = valueOf(form, 'config-set-name').trim();
      if (!key) throw fieldError('set', 'name the config to set');
      show(await api('PATCH', `/api/topics/${pathOf(name)}/configs`, { set: { [key]: valueOf(form, 'config-set-value') } }));
      return `${key} set.`;
    },
  });

  function show(topic) {
    const records = topic.partitions.reduce((sum, p) => sum + (p.high_watermark - p.log_start_offset), 0);
    const size = topic.partitions.reduce((sum, p) => sum + p.size_bytes, 0);
    replaceChildren(summary, facts([
      ['Topic id', h('code', {}, topic.id), 'topic-id'],
      ['Partitions', format.int(topic.partitions.length), 'topic-partition-count'],
      ['Records', format.int(records), 'topic-records'],
      ['Size', format.bytes(size), 'topic-size'],
    ], 'topic-facts'));
    partitions.update(topic.partitions);
    const countInput = addPartitions.querySelector('[data-testid="add-partitions-count"]');
    countInput.min = String(topic.partitions.length);
    if (!countInput.value) countInput.placeholder = String(topic.partitions.length + 1);
    replaceChildren(setConfig.querySelector('#config-names'), topic.configs.map((c) => h('option', { value: c.name })));
    replaceChildren(configs, dataTable({
      testid: 'configs-table',
      rowTestid: 'config-row',
      rowKey: (c) => c.name,
      rows: topic.configs,
      empty: 'No configs.',
      columns: [
        { label: 'Name', cell: (c) => h('code', {}, c.name) },
        { label: 'Value', cell: (c) => c.value, testid: 'config-value' },
        { label: 'Source', cell: (c) => h('span', { class: `badge ${c.source === 'topic' ? 'info' : ''}` }, c.source) },
        {
          label: '',
          cell: (c) => (c.source === 'topic'
            ? h('button', {
              type: 'button', class: 'small', testid: 'config-reset',
              onclick: () => confirmAction({
                title: 'Reset config', message: `Reset ${c.name} on ${name} to the broker default?`, confirmLabel: 'Reset',
                action: async () => show(await api('PATCH', `/api/topics/${pathOf(name)}/configs`, { delete: [c.name] })),
              }),
            }, 'Reset to default')
            : null),
        },
      ],
    }));
    const bridgeParts = [];
    if (topic.stream_queues?.length) {
      bridgeParts.push(h('p', {}, 'Stream queues reading this topic: ',
        topic.stream_queues.map((q, i) => [i ? ', ' : '', h('a', { href: route(['queues', q.vhost, q.name]) }, `${q.name} (${q.vhost})`)])));
    }
    if (topic.forwarding) {
      const f = topic.forwarding;
      bridgeParts.push(h('p', {}, 'Records are forwarded to exchange ',
        h('a', { href: route(['exchanges', f.vhost, exchangePathName(f.exchange)]) }, exchangeLabel(f.exchange)),
        ` in vhost ${f.vhost} (routing key from ${f.routing_key}).`));
      bridgeParts.push(dataTable({
        rows: f.partitions,
        testid: 'forwarding-table',
        columns: [
          { label: 'Partition', numeric: true, cell: (p) => String(p.partition) },
          { label: 'Position', numeric: true, cell: (p) => format.int(p.position) },
          { label: 'Lag', numeric: true, cell: (p) => format.int(p.lag) },
        ],
      }));
    }
    replaceChildren(bridges, bridgeParts.length ? section('AMQP', bridgeParts) : null);
    root.dataset.loaded = 'true';
  }

  async function load() {
    try {
      const topic = await api('GET', `/api/topics/${pathOf(name)}`);
      if (!ctx.alive) return;
      errorLine.hidden = true;
      show(topic);
      await loadConsumers();
    } catch (error) {
      if (!ctx.alive || showedMissing(ctx, root, error, '#/topics', 'All topics')) return;
      errorLine.textContent = error.message;
      errorLine.hidden = false;
    }
  }

  replaceChildren(root,
    pageHeader(`Topic ${name}`,
      h('a', { class: 'button', href: route(['messages'], { topic: name }), testid: 'topic-browse' }, 'Browse messages'),
      h('button', {
        type: 'button', class: 'danger', testid: 'topic-delete',
        onclick: () => deleteTopic(name, () => { location.hash = '#/topics'; }, ctx),
      }, 'Delete topic')),
    h('p', {}, h('a', { href: '#/topics' }, '‹ All topics')),
    errorLine,
    section(null, summary),
    section('Partitions', partitions.element, h('h3', {}, 'Add partitions'), addPartitions),
    section('Consumer groups', h('div', { class: 'toolbar' }, h('label', { class: 'check' }, internalToggle, 'Show internal groups')), consumers.element),
    section('Configs', configs, h('h3', {}, 'Set a config'), setConfig),
    bridges);
  ctx.every(5000, load);
  await load();
}

// ---------------------------------------------------------------------------
// Consumer groups
// ---------------------------------------------------------------------------

function stateBadge(state) {
  const kind = { Stable: 'good', Empty: '', Dead: 'bad' }[state] ?? 'warn';
  return h('span', { class: `badge ${kind}`, testid: 'group-state' }, state);
}

async function groupsPage(ctx, root) {
  // The broker's own groups (forwarding a topic to an exchange) only on demand.
  let internal = ctx.query.get('internal') === 'true';
  const internalToggle = h('input', { type: 'checkbox', testid: 'groups-internal', checked: internal });
  const list = pagedList(ctx, {
    id: 'groups',
    path: '/api/groups',
    params: () => ({ internal: internal ? 'true' : 'false' }),
    onQuery: () => ({ internal: internal ? 'true' : '' }),
    rowKey: (g) => g.group_id,
    empty: internal ? 'No consumer groups.' : 'No consumer groups (the broker\'s internal groups are hidden).',
    columns: [
      {
        label: 'Group',
        cell: (g) => [h('a', { href: route(['groups', g.group_id]), testid: 'group-link' }, g.group_id),
          g.internal ? [' ', h('span', { class: 'badge', title: 'The broker\'s own consumer, forwarding a topic to an exchange', testid: 'group-internal' }, 'internal')] : null],
      },
      { label: 'State', cell: (g) => stateBadge(g.state) },
      { label: 'Type', cell: (g) => h('span', { testid: 'group-type' }, g.type || 'classic') },
      { label: 'Protocol type', cell: (g) => g.protocol_type || muted('–') },
      { label: 'Members', numeric: true, cell: (g) => format.int(g.members) },
      { label: 'Lag', numeric: true, cell: (g) => format.int(g.lag), testid: 'group-lag' },
      {
        label: 'In flight / acquired / archived',
        numeric: true,
        testid: 'group-share-records',
        cell: (g) => (g.records
          ? `${format.int(g.records.in_flight)} / ${format.int(g.records.acquired)} / ${format.int(g.records.archived)}`
          : muted('–')),
      },
    ],
  });
  internalToggle.addEventListener('change', () => {
    internal = internalToggle.checked;
    list.reload();
    const current = Object.fromEntries(new URLSearchParams(location.hash.split('?')[1] || ''));
    ctx.setQuery({ ...current, internal: internal ? 'true' : '' });
  });
  replaceChildren(root, pageHeader('Consumer groups'),
    section(null, h('div', { class: 'toolbar' }, h('label', { class: 'check' }, internalToggle, 'Show internal groups (__sluice_forward:…)')), list.element));
}

async function groupPage(ctx, root, [groupId]) {
  const errorLine = h('p', { class: 'error', testid: 'page-error', hidden: true });
  const summary = h('div');
  const members = localPagedTable({
    id: 'members',
    rows: [],
    rowKey: (m) => m.member_id,
    empty: 'No members: the group is not consuming.',
    columns: [
      { label: 'Member', cell: (m) => h('code', {}, m.member_id) },
      { label: 'Client id', cell: (m) => m.client_id },
      { label: 'Host', cell: (m) => m.client_host },
      { label: 'Instance id', cell: (m) => m.group_instance_id ?? muted('–') },
      {
        label: 'Assignments',
        cell: (m) => (m.assignments.length
          ? m.assignments.map((a) => `${a.topic}-${a.partition}`).join(', ')
          : muted('none')),
      },
    ],
  });
  const shares = localPagedTable({
    id: 'share-partitions',
    rows: [],
    rowKey: (s) => `${s.topic}/${s.partition}`,
    empty: 'No share partitions on this node yet.',
    columns: [
      { label: 'Topic', cell: (s) => h('a', { href: route(['topics', s.topic]) }, s.topic) },
      { label: 'Partition', numeric: true, cell: (s) => String(s.partition) },
      { label: 'Start offset', numeric: true, cell: (s) => format.int(s.start_offset) },
      { label: 'Available', numeric: true, cell: (s) => format.int(s.available), testid: 'share-available' },
      { label: 'Acquired', numeric: true, cell: (s) => format.int(s.acquired), testid: 'share-acquired' },
      { label: 'Archived', numeric: true, cell: (s) => format.int(s.archived), testid: 'share-archived' },
    ],
  });
  const sharesSection = section('Share partitions (records in flight, as a queue)', shares.element);
  sharesSection.hidden = true;
  const offsets = localPagedTable({
    id: 'offsets',
    rows: [],
    rowKey: (o) => `${o.topic}/${o.partition}`,
    empty: 'No committed offsets.',
    columns: [
      { label: 'Topic', cell: (o) => h('a', { href: route(['topics', o.topic]) }, o.topic) },
      { label: 'Partition', numeric: true, cell: (o) => String(o.partition) },
      { label: 'Committed', numeric: true, cell: (o) => format.int(o.committed_offset), testid: 'offset-committed' },
      { label: 'Log end', numeric: true, cell: (o) => format.int(o.log_end_offset) },
      { label: 'Lag', numeric: true, cell: (o) => format.int(o.lag), testid: 'offset-lag' },
      { label: 'Metadata', cell: (o) => o.metadata || muted('–') },
    ],
  });
  const chart = new TimeChart({
    id: 'chart-group-lag', title: 'Total lag (records)',
    series: [{ key: 'lag', label: 'lag' }],
    formatValue: (v) => format.int(Math.round(v)),
    scale: 'count',
    unit: 'records',
  });
  if (!groupLagHistory.has(groupId)) groupLagHistory.set(groupId, []);
  const history = groupLagHistory.get(groupId);
  const topicChoices = h('datalist', { id: 'reset-topics' });

  const modeSelect = h('select', { testid: 'reset-to' },
    ['earliest', 'latest', 'timestamp', 'offset'].map((to) => h('option', { value: to }, to)));
  const timestampField = field('Timestamp', h('input', { type: 'datetime-local', step: 1, testid: 'reset-timestamp', value: msToLocalInput(Date.now() - 3600 * 1000) }));
  const offsetField = field('Offset', h('input', { type: 'number', min: 0, testid: 'reset-offset', value: '0' }));
  const showModeFields = () => {
    timestampField.hidden = modeSelect.value !== 'timestamp';
    offsetField.hidden = modeSelect.value !== 'offset';
  };
  modeSelect.addEventListener('change', showModeFields);
  showModeFields();

  const reset = actionForm({
    id: 'reset',
    submitLabel: 'Reset offsets…',
    fields: [
      h('div', { class: 'row' },
        field('Topic', h('input', { testid: 'reset-topic', list: 'reset-topics', placeholder: 'all topics with offsets' })),
        field('Partitions', h('input', { testid: 'reset-partitions', placeholder: 'all, or e.g. 0,1,2' })),
        field('To', modeSelect), timestampField, offsetField),
      topicChoices,
    ],
    async onSubmit(form) {
      const body = { to: modeSelect.value };
      const topic = valueOf(form, 'reset-topic').trim();
      if (topic) body.topic = topic;
      const partitionsText = valueOf(form, 'reset-partitions').trim();
      if (partitionsText) {
        if (!topic) throw fieldError('partitions', 'choose a topic to reset single partitions');
        body.partitions = partitionsText.split(',').map((p) => Number(p.trim()));
        if (body.partitions.some((p) => !Number.isInteger(p) || p < 0)) throw fieldError('partitions', 'partitions are numbers separated by commas');
      }
      if (body.to === 'timestamp') {
        body.timestamp = localInputToMs(valueOf(form, 'reset-timestamp'));
        if (body.timestamp === null) throw fieldError('timestamp', 'choose a date and time');
      }
      if (body.to === 'offset') {
        body.offset = Number(valueOf(form, 'reset-offset'));
        if (!Number.isInteger(body.offset)) throw fieldError('offset', 'the offset is a whole number');
      }
      const target = `${topic ? `topic ${topic}` : 'every topic'}${body.partitions ? ` (partitions ${body.partitions.join(', ')})` : ''}`;
      const where = body.to === 'timestamp' ? `the first record at or after ${format.time(body.timestamp)}`
        : body.to === 'offset' ? `offset ${body.offset}` : `the ${body.to} offset`;
      const confirmed = await confirmAction({
        title: 'Reset offsets',
        message: `Move group ${groupId}'s committed offsets on ${target} to ${where}? Its consumers will re-read or skip records from there.`,
        confirmLabel: 'Reset offsets',
        action: async () => show(await api('POST', `/api/groups/${pathOf(groupId)}/reset-offsets`, body)),
      });
      return confirmed ? 'Offsets reset.' : null;
    },
  });

  function show(group) {
    replaceChildren(summary, facts([
      ['State', stateBadge(group.state), 'group-state-fact'],
      ['Type', group.type || 'classic', 'group-type-fact'],
      ['Protocol type', group.protocol_type || '–', 'group-protocol-type'],
      ['Assignor', group.protocol || '–', 'group-protocol'],
      ['Members', format.int(group.members.length), 'group-member-count'],
      ['Total lag', format.int(group.offsets.reduce((sum, o) => sum + (o.lag ?? 0), 0)), 'group-total-lag'],
    ], 'group-facts'));
    members.update(group.members);
    sharesSection.hidden = group.type !== 'share';
    shares.update(group.share_partitions || []);
    offsets.update(group.offsets);
    const topics = [...new Set(group.offsets.map((o) => o.topic))];
    replaceChildren(topicChoices, topics.map((topic) => h('option', { value: topic })));
    root.dataset.loaded = 'true';
  }

  async function poll() {
    try {
      const group = await api('GET', `/api/groups/${pathOf(groupId)}`);
      if (!ctx.alive) return;
      errorLine.hidden = true;
      const now = Date.now();
      history.push({ t: now, values: { lag: group.offsets.reduce((sum, o) => sum + (o.lag ?? 0), 0) } });
      trimHistory(history, now);
      show(group);
      chart.update(history);
    } catch (error) {
      if (!ctx.alive || showedMissing(ctx, root, error, '#/groups', 'All consumer groups')) return;
      errorLine.textContent = error.message;
      errorLine.hidden = false;
    }
  }

  replaceChildren(root,
    pageHeader(`Consumer group ${groupId}`,
      h('button', {
        type: 'button', class: 'danger', testid: 'group-delete',
        onclick: () => confirmAction({
          title: 'Delete group',
          message: `Delete consumer group ${groupId} and its committed offsets?`,
          confirmLabel: 'Delete group',
          action: () => ctx.held(async () => {
            await api('DELETE', `/api/groups/${pathOf(groupId)}`);
            notify(`Group ${groupId} deleted.`);
            location.hash = '#/groups';
          }),
        }),
      }, 'Delete group')),
    h('p', {}, h('a', { href: '#/groups' }, '‹ All consumer groups')),
    errorLine,
    section(null, summary),
    section('Lag over time', chart.element),
    section('Members', members.element),
    sharesSection,
    section('Committed offsets', offsets.element),
    section('Reset offsets', h('p', { class: 'muted' }, 'Only for a group without members: stop its consumers first.'), reset));
  ctx.listen(window, 'resize', () => chart.draw());
  ctx.cleanups.push(() => chart.detach());
  ctx.every(POLL_MS, poll);
  await poll();
  if (root.dataset.loaded !== 'true' || !ctx.alive) return;
  try {
    const kept = await api('GET', `/api/groups/${pathOf(groupId)}/lag-history`);
    if (!ctx.alive) return;
    mergeHistory(history, kept.points.map((point) => ({ t: point.t, values: { lag: point.lag } })));
    chart.update(history);
  } catch (error) {
    if (error.status === 401) throw error;
    // Without the broker's history the chart starts from this page's polls.
  }
}

// ---------------------------------------------------------------------------
// Exchanges
// ---------------------------------------------------------------------------

const EXCHANGE_TYPES = ['direct', 'fanout', 'topic', 'headers'];

/** A duration argument in milliseconds, readably. */
function argumentMs(value) {
  return typeof value === 'number' && value >= 1000 && value % 1000 === 0 ? format.duration(value) : `${format.int(value)} ms`;
}

/**
 * Queue and exchange arguments that matter at a glance, as RabbitMQ's
 * management UI marks them: `[argument, short flag, badge id, badge text]`.
 */
const ARGUMENT_BADGES = [
  ['x-queue-type', null, 'type', (v) => `type: ${v}`],
  ['x-dead-letter-exchange', 'DLX', 'dlx', (v, args) => `DLX: ${exchangeLabel(String(v))}`
    + (args['x-dead-letter-routing-key'] !== undefined ? ` → ${args['x-dead-letter-routing-key']}` : '')],
  ['x-dead-letter-routing-key', 'DLK', null, null],
  ['x-message-ttl', 'TTL', 'ttl', (v) => `TTL: ${argumentMs(v)}`],
  ['x-expires', 'Exp', 'expires', (v) => `expires after ${argumentMs(v)} unused`],
  ['x-max-length', 'Lim', 'max-length', (v) => `max-length: ${format.int(v)}`],
  ['x-max-length-bytes', 'Lim B', 'max-length-bytes', (v) => `max-length: ${format.bytes(v)}`],
  ['x-overflow', null, 'overflow', (v) => `overflow: ${v}`],
  ['x-max-priority', 'Pri', 'priority', (v) => `priority: 0–${v}`],
  ['x-single-active-consumer', 'SAC', 'single-active-consumer', (v) => (v ? 'single active consumer' : 'any consumer')],
  ['alternate-exchange', 'AE', 'alternate-exchange', (v) => `alternate exchange: ${v}`],
];

/** Every argument as a badge with its meaning (`<prefix>-<id>`), unknown ones as `name: value`. */
function argumentBadges(args, prefix) {
  const entries = Object.entries(args || {});
  if (!entries.length) return muted('none');
  const known = new Map(ARGUMENT_BADGES.map(([name, , id, text]) => [name, { id, text }]));
  const badges = [];
  for (const [name, value] of entries) {
    const badge = known.get(name);
    if (badge && !badge.id) continue;
    const text = badge ? badge.text(value, args) : `${name}: ${typeof value === 'object' ? JSON.stringify(value) : value}`;
    badges.push(h('span', { class: 'badge info', title: `${name} = ${JSON.stringify(value)}`, testid: `${prefix}-${badge ? badge.id : 'other'}` }, text));
  }
  return h('span', { class: 'badges' }, badges);
}

function features(item) {
  const flags = [];
  if (item.durable) flags.push(['D', 'durable']);
  if (item.auto_delete) flags.push(['AD', 'auto-delete']);
  if (item.internal) flags.push(['I', 'internal']);
  if (item.exclusive) flags.push(['Excl', 'exclusive']);
  const args = item.arguments || {};
  const rest = { ...args };
  for (const [name, flag] of ARGUMENT_BADGES) {
    if (!(name in args)) continue;
    delete rest[name];
    if (flag) flags.push([flag, `${name} = ${JSON.stringify(args[name])}`]);
  }
  if (Object.keys(rest).length) flags.push(['Args', JSON.stringify(rest)]);
  return flags.length ? flags.map(([label, title]) => h('abbr', { class: 'flag', title }, label)) : muted('–');
}

async function exchangesPage(ctx, root) {
  const names = await vhostNames();
  let vhost = ctx.query.get('vhost') || '';
  const select = vhostSelect('exchanges-vhost', names, vhost, { all: true });
  const list = pagedList(ctx, {
    id: 'exchanges',
    path: '/api/exchanges',
    params: () => ({ vhost }),
    onQuery: () => ({ vhost }),
    rowKey: (e) => `${e.vhost}/${e.name}`,
    empty: 'No exchanges.',
    columns: [
      { label: 'Virtual host', cell: (e) => e.vhost },
      { label: 'Name', cell: (e) => h('a', { href: route(['exchanges', e.vhost, exchangePathName(e.name)]), testid: 'exchange-link' }, exchangeLabel(e.name)) },
      { label: 'Type', cell: (e) => e.type },
      { label: 'Features', cell: features },
      { label: 'Bindings', numeric: true, cell: (e) => format.int(e.bindings) },
      {
        label: '',
        cell: (e) => (e.name === '' || e.name.startsWith('amq.') ? null
          : h('button', { type: 'button', class: 'danger small', testid: 'exchange-delete', onclick: () => deleteExchange(e, list.reload) }, 'Delete')),
      },
    ],
  });
  select.addEventListener('change', () => { vhost = select.value; list.reload(); ctx.setQuery({ vhost }); });

  const declare = actionForm({
    id: 'exchange-declare',
    submitLabel: 'Declare exchange',
    fields: [
      h('div', { class: 'row' },
        field('Virtual host', vhostSelect('exchange-declare-vhost', names, vhost || '/')),
        field('Name', h('input', { testid: 'exchange-declare-name', autocomplete: 'off' })),
        field('Type', h('select', { testid: 'exchange-declare-type' }, EXCHANGE_TYPES.map((t) => h('option', { value: t }, t))))),
      h('div', { class: 'row' },
        checkbox('Durable', 'exchange-declare-durable', true),
        checkbox('Auto-delete', 'exchange-declare-auto-delete', false),
        checkbox('Internal', 'exchange-declare-internal', false)),
      field('Arguments', h('textarea', { testid: 'exchange-declare-arguments', rows: 2, placeholder: '{"alternate-exchange": "unrouted"}' }), 'A JSON object; optional.'),
    ],
    async onSubmit(form) {
      const target = valueOf(form, 'exchange-declare-vhost');
      const name = valueOf(form, 'exchange-declare-name').trim();
      if (!name) throw fieldError('name', 'an exchange needs a name');
      await api('PUT', `/api/exchanges/${pathOf(target, name)}`, {
        type: valueOf(form, 'exchange-declare-type'),
        durable: valueOf(form, 'exchange-declare-durable'),
        auto_delete: valueOf(form, 'exchange-declare-auto-delete'),
        internal: valueOf(form, 'exchange-declare-internal'),
        arguments: parseJsonObject(valueOf(form, 'exchange-declare-arguments'), 'arguments'),
      });
      notify(`Exchange ${name} declared.`);
      list.reload();
      return h('span', {}, 'Declared ', h('a', { href: route(['exchanges', target, name]) }, name), '.');
    },
  });

  replaceChildren(root,
    pageHeader('Exchanges'),
    section(null, h('div', { class: 'toolbar' }, field('Virtual host', select)), list.element),
    section('Declare an exchange', declare));
}

function deleteExchange(exchange, then, page) {
  return confirmAction({
    title: 'Delete exchange',
    message: `Delete exchange ${exchange.name} in vhost ${exchange.vhost} and its bindings?`,
    confirmLabel: 'Delete exchange',
    action: () => heldBy(page, async () => {
      await api('DELETE', `/api/exchanges/${pathOf(exchange.vhost, exchangePathName(exchange.name))}`);
      notify(`Exchange ${exchange.name} deleted.`);
      then();
    }),
  });
}

/**
 * Bindings touching one exchange or queue. The list route filters by a
 * substring of several fields, so this asks for the name and keeps exact
 * matches.
 */
async function bindingsOf(vhost, name, keep) {
  const data = await api('GET', `/api/bindings${queryOf({ vhost, filter: name, page_size: 1000 })}`);
  return { rows: data.items.filter(keep), more: data.total > data.items.length };
}

function bindingColumns(onChange) {
  return [
    { label: 'Source', cell: (b) => h('a', { href: route(['exchanges', b.vhost, exchangePathName(b.source)]) }, exchangeLabel(b.source)) },
    {
      label: 'Destination',
      cell: (b) => [h('a', { href: route([b.destination_type === 'queue' ? 'queues' : 'exchanges', b.vhost, b.destination]) }, b.destination),
        ' ', muted(`(${b.destination_type})`)],
    },
    { label: 'Routing key', cell: (b) => (b.routing_key === '' ? muted('(empty)') : h('code', {}, b.routing_key)) },
    { label: 'Arguments', cell: (b) => jsonCell(b.arguments) },
    { label: '', cell: (b) => h('button', { type: 'button', class: 'danger small', testid: 'binding-delete', onclick: () => deleteBinding(b, onChange) }, 'Unbind') },
  ];
}

function deleteBinding(binding, then) {
  return confirmAction({
    title: 'Delete binding',
    message: `Unbind ${binding.destination_type} ${binding.destination} from exchange ${exchangeLabel(binding.source)}`
      + ` (routing key "${binding.routing_key}") in vhost ${binding.vhost}?`,
    confirmLabel: 'Unbind',
    action: async () => {
      const hasArguments = binding.arguments && Object.keys(binding.arguments).length > 0;
      await api('DELETE', `/api/bindings${queryOf({
        vhost: binding.vhost,
        source: binding.source,
        destination: binding.destination,
        destination_type: binding.destination_type,
        routing_key: binding.routing_key,
        arguments: hasArguments ? JSON.stringify(binding.arguments) : '',
      })}`);
      notify('Binding deleted.');
      then();
    },
  });
}

/** Publishing a test message to an exchange of `vhost`. */
function publishForm({ vhost, exchange, routingKey = '', exchangeEditable = false }) {
  return actionForm({
    id: 'publish',
    submitLabel: 'Publish message',
    fields: [
      h('div', { class: 'row' },
        exchangeEditable
          ? field('Exchange', h('input', { testid: 'publish-exchange', value: exchange, placeholder: '(AMQP default)' }))
          : null,
        field('Routing key', h('input', { testid: 'publish-routing-key', value: routingKey })),
        field('Content type', h('input', { testid: 'publish-content-type', placeholder: 'text/plain' })),
        field('Encoding', h('select', { testid: 'publish-encoding' }, ['text', 'hex', 'base64'].map((e) => h('option', { value: e }, e))))),
      field('Payload', h('textarea', { testid: 'publish-payload', rows: 4 })),
      field('Headers', h('textarea', { testid: 'publish-headers', rows: 2, placeholder: 'source=web' }), 'One key=value per line; values are strings.'),
      checkbox('Persistent (delivery mode 2)', 'publish-persistent', true),
    ],
    async onSubmit(form) {
      const target = exchangeEditable ? valueOf(form, 'publish-exchange').trim() : exchange;
      const properties = { delivery_mode: valueOf(form, 'publish-persistent') ? 2 : 1 };
      const contentType = valueOf(form, 'publish-content-type').trim();
      if (contentType) properties.content_type = contentType;
      const headers = parseKeyValueLines(valueOf(form, 'publish-headers'), 'headers');
      if (Object.keys(headers).length) properties.headers = headers;
      const answer = await api('POST', `/api/exchanges/${pathOf(vhost, exchangePathName(target))}/publish`, {
        routing_key: valueOf(form, 'publish-routing-key'),
        payload: valueOf(form, 'publish-payload'),
        encoding: valueOf(form, 'publish-encoding'),
        properties,
      });
      if (answer.rejected) return 'Rejected: a full queue with x-overflow reject-publish refused it.';
      if (!answer.routed) return 'Published, but no queue was bound to receive it: the message was dropped.';
      return `Published: routed to ${answer.queues} ${answer.queues === 1 ? 'queue' : 'queues'}.`;
    },
  });
}

async function exchangePage(ctx, root, [vhost, pathName]) {
  const name = pathName === 'amq.default' ? '' : pathName;
  const errorLine = h('p', { class: 'error', testid: 'page-error', hidden: true });
  const summary = h('div');
  const bindings = h('div', { testid: 'exchange-bindings' });

  async function load() {
    try {
      const [exchange, found] = await Promise.all([
        api('GET', `/api/exchanges/${pathOf(vhost, pathName)}`),
        name === '' ? { rows: [], more: false } : bindingsOf(vhost, name, (b) => b.source === name),
      ]);
      if (!ctx.alive) return;
      errorLine.hidden = true;
      replaceChildren(summary, facts([
        ['Virtual host', exchange.vhost, 'exchange-vhost'],
        ['Type', exchange.type, 'exchange-type'],
        ['Features', features(exchange), 'exchange-features'],
        ['Bindings', format.int(exchange.bindings), 'exchange-binding-count'],
      ], 'exchange-facts'));
      replaceChildren(bindings,
        name === '' ? h('p', { class: 'muted' }, 'The default exchange routes to the queue named by the routing key; it has no bindings of its own.')
          : dataTable({ rows: found.rows, columns: bindingColumns(load), rowTestid: 'binding-row', testid: 'bindings-table', empty: 'No bindings from this exchange.' }),
        found.more ? h('p', { class: 'muted' }, 'Only the first 1,000 matching bindings are shown; see the Bindings page.') : null);
      root.dataset.loaded = 'true';
    } catch (error) {
      if (!ctx.alive || showedMissing(ctx, root, error, '#/exchanges', 'All exchanges')) return;
      errorLine.textContent = error.message;
      errorLine.hidden = false;
    }
  }

  replaceChildren(root,
    pageHeader(`Exchange ${exchangeLabel(name)}`,
      name === '' || name.startsWith('amq.') ? null : h('button', {
        type: 'button', class: 'danger', testid: 'exchange-delete',
        onclick: () => deleteExchange({ vhost, name }, () => { location.hash = '#/exchanges'; }, ctx),
      }, 'Delete exchange')),
    h('p', {}, h('a', { href: '#/exchanges' }, '‹ All exchanges')),
    errorLine,
    section(null, summary),
    section('Bindings from this exchange', bindings),
    section('Publish a message', publishForm({ vhost, exchange: name })));
  ctx.every(5000, load);
  await load();
}

// ---------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------

async function queuesPage(ctx, root) {
  const names = await vhostNames();
  let vhost = ctx.query.get('vhost') || '';
  const select = vhostSelect('queues-vhost', names, vhost, { all: true });
  const list = pagedList(ctx, {
    id: 'queues',
    path: '/api/queues',
    params: () => ({ vhost }),
    onQuery: () => ({ vhost }),
    rowKey: (q) => `${q.vhost}/${q.name}`,
    empty: 'No queues.',
    columns: [
      { label: 'Virtual host', cell: (q) => q.vhost },
      { label: 'Name', cell: (q) => h('a', { href: route(['queues', q.vhost, q.name]), testid: 'queue-link' }, q.name) },
      { label: 'Type', cell: (q) => (q.type === 'stream' ? [q.type, ' ', muted(`(${q.topic})`)] : q.type) },
      { label: 'Features', cell: features },
      // On a cluster: the node holding the queue's messages.
      { label: 'Node', cell: (q) => (q.node === null || q.node === undefined ? '' : [`${q.node}`, q.state === 'remote' ? muted(' (remote)') : null]), testid: 'queue-node' },
      { label: 'Ready', numeric: true, cell: (q) => format.int(q.messages_ready), testid: 'queue-ready' },
      { label: 'Unacked', numeric: true, cell: (q) => format.int(q.messages_unacknowledged), testid: 'queue-unacked' },
      { label: 'Consumers', numeric: true, cell: (q) => format.int(q.consumers), testid: 'queue-consumers' },
      {
        label: 'Publish / deliver / ack',
        numeric: true,
        cell: (q) => h('span', { class: 'stack', testid: 'queue-rates' },
          h('span', { title: 'publish' }, format.rate(q.publish_rate)),
          h('span', { title: 'deliver' }, format.rate(q.deliver_rate)),
          h('span', { title: 'ack' }, format.rate(q.ack_rate))),
      },
      {
        label: '',
        cell: (q) => h('span', { class: 'row-actions' },
          q.type === 'classic' ? h('button', { type: 'button', class: 'small', testid: 'queue-purge', onclick: () => purgeQueue(q, list.reload) }, 'Purge') : null,
          h('button', { type: 'button', class: 'danger small', testid: 'queue-delete', onclick: () => deleteQueue(q, list.reload) }, 'Delete')),
      },
    ],
  });
  select.addEventListener('change', () => { vhost = select.value; list.reload(); ctx.setQuery({ vhost }); });

  const declare = actionForm({
    id: 'queue-declare',
    submitLabel: 'Declare queue',
    fields: [
      h('div', { class: 'row' },
        field('Virtual host', vhostSelect('queue-declare-vhost', names, vhost || '/')),
        field('Name', h('input', { testid: 'queue-declare-name', autocomplete: 'off' }))),
      h('div', { class: 'row' },
        checkbox('Durable', 'queue-declare-durable', true),
        checkbox('Auto-delete', 'queue-declare-auto-delete', false)),
      field('Arguments', h('textarea', { testid: 'queue-declare-arguments', rows: 2, placeholder: '{"x-max-length": 1000, "x-queue-type": "classic"}' }), 'A JSON object; optional.'),
    ],
    async onSubmit(form) {
      const target = valueOf(form, 'queue-declare-vhost');
      const name = valueOf(form, 'queue-declare-name').trim();
      if (!name) throw fieldError('name', 'a queue needs a name');
      await api('PUT', `/api/queues/${pathOf(target, name)}`, {
        durable: valueOf(form, 'queue-declare-durable'),
        auto_delete: valueOf(form, 'queue-declare-auto-delete'),
        arguments: parseJsonObject(valueOf(form, 'queue-declare-arguments'), 'arguments'),
      });
      form.querySelector('[data-testid="queue-declare-name"]').value = '';
      notify(`Queue ${name} declared.`);
      list.reload();
      return h('span', {}, 'Declared ', h('a', { href: route(['queues', target, name]), testid: 'queue-declared-link' }, name), '.');
    },
  });

  replaceChildren(root,
    pageHeader('Queues'),
    section(null, h('div', { class: 'toolbar' }, field('Virtual host', select)), list.element),
    section('Declare a queue', declare));
}

function purgeQueue(queue, then) {
  return confirmAction({
    title: 'Purge queue',
    message: `Remove every ready message from queue ${queue.name} in vhost ${queue.vhost}? This cannot be undone.`,
    confirmLabel: 'Purge',
    action: async () => {
      const answer = await api('DELETE', `/api/queues/${pathOf(queue.vhost, queue.name)}/contents`);
      notify(`Purged ${format.int(answer.purged)} messages from ${queue.name}.`);
      then();
    },
  });
}

function deleteQueue(queue, then, page) {
  return confirmAction({
    title: 'Delete queue',
    message: `Delete queue ${queue.name} in vhost ${queue.vhost} with its messages?`,
    confirmLabel: 'Delete queue',
    action: () => heldBy(page, async () => {
      await api('DELETE', `/api/queues/${pathOf(queue.vhost, queue.name)}`);
      notify(`Queue ${queue.name} deleted.`);
      then();
    }),
  });
}

function propertiesCell(properties) {
  const entries = Object.entries(properties || {});
  if (!entries.length) return muted('–');
  return h('ul', { class: 'plain' }, entries.map(([key, value]) => h('li', {}, h('code', {}, key), ': ',
    typeof value === 'object' ? JSON.stringify(value) : String(value))));
}

async function queuePage(ctx, root, [vhost, name]) {
  const errorLine = h('p', { class: 'error', testid: 'page-error', hidden: true });
  const summary = h('div');
  const bindings = h('div', { testid: 'queue-bindings' });
  const peekResult = h('div', { testid: 'peek-messages' });
  // Shown once the queue's type is known: a stream refuses queue.purge.
  const purgeButton = h('button', { type: 'button', testid: 'queue-purge', hidden: true, onclick: () => purgeQueue({ vhost, name }, load) }, 'Purge');
  const peekNote = h('p', { class: 'muted' }, 'Shows ready messages in delivery order without consuming them.');

  async function load() {
    try {
      const [found, bound] = await Promise.all([
        api('GET', `/api/queues/${pathOf(vhost, name)}`),
        bindingsOf(vhost, name, (b) => b.destination_type === 'queue' && b.destination === name),
      ]);
      if (!ctx.alive) return;
      const queue = found;
      errorLine.hidden = true;
      purgeButton.hidden = queue.type !== 'classic';
      for (const part of classicOnly) part.hidden = queue.type !== 'classic';
      if (queue.type === 'stream') peekNote.textContent = 'Shows the oldest records its topic keeps (x-stream-offset in the headers); a stream is never consumed.';
      replaceChildren(summary, facts([
        ['Virtual host', queue.vhost, 'queue-vhost'],
        ['Type', queue.type === 'stream' ? ['stream of topic ', h('a', { href: route(['topics', queue.topic]) }, queue.topic)] : queue.type, 'queue-type'],
        ['Features', features(queue), 'queue-features'],
        ['Arguments', argumentBadges(queue.arguments, 'queue-arg'), 'queue-arguments'],
        ['Ready', format.int(queue.messages_ready), 'queue-ready'],
        ['Unacked', format.int(queue.messages_unacknowledged), 'queue-unacked'],
        ['Total', format.int(queue.messages), 'queue-total'],
        ['Consumers', format.int(queue.consumers), 'queue-consumers'],
        ['Publish / deliver / ack', `${format.rate(queue.publish_rate)} · ${format.rate(queue.deliver_rate)} · ${format.rate(queue.ack_rate)}`, 'queue-rates'],
        ['Redeliver', format.rate(queue.redeliver_rate), 'queue-redeliver-rate'],
      ], 'queue-facts'));
      replaceChildren(bindings,
        h('p', { class: 'muted' }, 'Every queue is also bound to the default exchange with its own name as routing key.'),
        dataTable({ rows: bound.rows, columns: bindingColumns(load), rowTestid: 'binding-row', testid: 'bindings-table', empty: 'No other bindings.' }),
        bound.more ? h('p', { class: 'muted' }, 'Only the first 1,000 matching bindings are shown; see the Bindings page.') : null);
      root.dataset.loaded = 'true';
    } catch (error) {
      if (!ctx.alive || showedMissing(ctx, root, error, '#/queues', 'All queues')) return;
      errorLine.textContent = error.message;
      errorLine.hidden = false;
    }
  }

  const peek = actionForm({
    id: 'peek',
    submitLabel: 'Peek',
    inline: true,
    fields: [
      field('Messages', h('input', { testid: 'peek-count', type: 'number', min: 1, max: 100, value: '10' })),
      field('Show payload as', h('select', { testid: 'peek-encoding' }, ['text', 'hex', 'base64'].map((e) => h('option', { value: e }, e)))),
    ],
    async onSubmit(form) {
      const count = Number(valueOf(form, 'peek-count'));
      if (!Number.isInteger(count) || count < 1 || count > 100) throw fieldError('count', 'peek at 1 to 100 messages');
      const encoding = valueOf(form, 'peek-encoding');
      const data = await api('GET', `/api/queues/${pathOf(vhost, name)}/messages${queryOf({ count, encoding })}`);
      replaceChildren(peekResult, dataTable({
        testid: 'peek-table',
        rowTestid: 'peek-row',
        rows: data.messages.map((message, index) => ({ ...message, position: index + 1 })),
        empty: 'The queue has no ready messages.',
        columns: [
          { label: '#', numeric: true, cell: (m) => String(m.position) },
          { label: 'Exchange', cell: (m) => exchangeLabel(m.exchange) },
          { label: 'Routing key', cell: (m) => h('code', {}, m.routing_key), testid: 'peek-routing-key' },
          { label: 'Redelivered', cell: (m) => (m.redelivered ? 'yes' : 'no') },
          { label: 'Properties', cell: (m) => propertiesCell(m.properties), testid: 'peek-properties' },
          { label: 'Bytes', numeric: true, cell: (m) => format.int(m.payload_bytes) },
          { label: 'Payload', cell: (m) => longText(encoding === 'hex' ? format.hexPairs(m.payload) : m.payload, 'peek-payload') },
        ],
      }));
      return `${data.messages.length} ${data.messages.length === 1 ? 'message' : 'messages'} at the head; nothing was consumed.`;
    },
  });

  const getResult = h('div', { testid: 'get-messages' });
  const getForm = actionForm({
    id: 'get',
    submitLabel: 'Get messages',
    inline: true,
    fields: [
      field('Messages', h('input', { testid: 'get-count', type: 'number', min: 1, max: 100, value: '1' })),
      field('Then', h('select', { testid: 'get-ackmode' },
        h('option', { value: 'reject_requeue_true' }, 'Requeue (put back, redelivered)'),
        h('option', { value: 'ack_requeue_false' }, 'Ack (remove from the queue)'),
        h('option', { value: 'reject_requeue_false' }, 'Reject (dead-letter, or drop without DLX)'))),
      field('Show payload as', h('select', { testid: 'get-encoding' }, ['text', 'hex', 'base64'].map((e) => h('option', { value: e }, e)))),
    ],
    async onSubmit(form) {
      const count = Number(valueOf(form, 'get-count'));
      if (!Number.isInteger(count) || count < 1 || count > 100) throw fieldError('count', 'get 1 to 100 messages');
      const ackmode = valueOf(form, 'get-ackmode');
      const encoding = valueOf(form, 'get-encoding');
      const take = async () => {
        const data = await api('POST', `/api/queues/${pathOf(vhost, name)}/get`, { count, ackmode, encoding });
        replaceChildren(getResult, dataTable({
          testid: 'get-table',
          rowTestid: 'get-row',
          rows: data.messages.map((message, index) => ({ ...message, position: index + 1 })),
          empty: 'The queue had no ready messages.',
          columns: [
            { label: '#', numeric: true, cell: (m) => String(m.position) },
            { label: 'Exchange', cell: (m) => exchangeLabel(m.exchange) },
            { label: 'Routing key', cell: (m) => h('code', {}, m.routing_key) },
            { label: 'Redelivered', cell: (m) => (m.redelivered ? 'yes' : 'no') },
            { label: 'Properties', cell: (m) => propertiesCell(m.properties) },
            { label: 'Bytes', numeric: true, cell: (m) => format.int(m.payload_bytes) },
            { label: 'Payload', cell: (m) => longText(encoding === 'hex' ? format.hexPairs(m.payload) : m.payload, 'get-payload') },
          ],
        }));
        load();
        return data.messages.length;
      };
      const done = { ack_requeue_false: 'acknowledged (removed)', reject_requeue_false: 'rejected', reject_requeue_true: 'requeued' }[ackmode];
      let taken;
      if (ackmode === 'reject_requeue_true') taken = await take();
      else {
        const confirmed = await confirmAction({
          title: ackmode === 'ack_requeue_false' ? 'Get and acknowledge' : 'Get and reject',
          message: `Take up to ${count} ${count === 1 ? 'message' : 'messages'} from queue ${name} and ${ackmode === 'ack_requeue_false'
            ? 'remove them' : 'reject them (dead-lettered if the queue has a dead-letter exchange, else dropped)'}?`,
          confirmLabel: 'Get messages',
          action: async () => { taken = await take(); },
        });
        if (!confirmed) return null;
      }
      return `${taken} ${taken === 1 ? 'message' : 'messages'} taken and ${done}.`;
    },
  });

  const moveForm = actionForm({
    id: 'move',
    submitLabel: 'Move messages…',
    inline: true,
    fields: [
      field('To queue', h('input', { testid: 'move-destination', list: 'move-queues', autocomplete: 'off' })),
      h('datalist', { id: 'move-queues' }),
      field('How many', h('input', { testid: 'move-count', type: 'number', min: 1, placeholder: 'all' })),
    ],
    async onSubmit(form) {
      const destination = valueOf(form, 'move-destination').trim();
      if (!destination) throw fieldError('destination', 'name the queue to move messages to');
      const countText = valueOf(form, 'move-count').trim();
      const body = { destination };
      if (countText) {
        body.count = Number(countText);
        if (!Number.isInteger(body.count) || body.count < 1) throw fieldError('count', 'a whole number of messages, or empty for all');
      }
      let answer = null;
      const confirmed = await confirmAction({
        title: 'Move messages',
        message: `Move ${body.count ? `up to ${format.int(body.count)}` : 'every ready'} ${body.count === 1 ? 'message' : 'messages'} from queue ${name} to queue ${destination}?`
          + ' Each leaves this queue only once the destination holds it.',
        confirmLabel: 'Move',
        danger: false,
        action: async () => { answer = await api('POST', `/api/queues/${pathOf(vhost, name)}/move`, body); },
      });
      if (!confirmed) return null;
      load();
      return `Moved ${format.int(answer.moved)} ${answer.moved === 1 ? 'message' : 'messages'} to ${destination}.`;
    },
  });
  // Shown once the queue is known to be classic: a stream is never consumed.
  const classicOnly = [
    section('Get messages', h('p', { class: 'muted' }, 'Consumes from the head as basic.get does, then puts the messages back, acknowledges or rejects them.'), getForm, getResult),
    section('Move messages', h('p', { class: 'muted' }, 'To another queue of this virtual host through the default exchange, as a shovel from a dead-letter queue would; properties and persistence are kept.'), moveForm),
  ];
  for (const part of classicOnly) part.hidden = true;
  const moveChoices = moveForm.querySelector('#move-queues');
  moveForm.querySelector('[data-testid="move-destination"]').addEventListener('focus', async () => {
    try {
      const data = await api('GET', `/api/queues${queryOf({ vhost, page_size: 1000 })}`);
      replaceChildren(moveChoices, data.items.filter((q) => q.name !== name).map((q) => h('option', { value: q.name })));
    } catch {
      // Suggestions are a convenience; the move reports real errors.
    }
  });

  const bind = actionForm({
    id: 'bind',
    submitLabel: 'Bind',
    inline: true,
    fields: [
      field('From exchange', h('input', { testid: 'bind-source', placeholder: 'amq.topic' })),
      field('Routing key', h('input', { testid: 'bind-routing-key' })),
    ],
    async onSubmit(form) {
      const source = valueOf(form, 'bind-source').trim();
      if (!source) throw fieldError('source', 'name the exchange to bind from');
      await api('POST', '/api/bindings', {
        vhost, source, destination: name, destination_type: 'queue', routing_key: valueOf(form, 'bind-routing-key'),
      });
      await load();
      return 'Bound.';
    },
  });

  replaceChildren(root,
    pageHeader(`Queue ${name}`,
      purgeButton,
      h('button', {
        type: 'button', class: 'danger', testid: 'queue-delete',
        onclick: () => deleteQueue({ vhost, name }, () => { location.hash = '#/queues'; }, ctx),
      }, 'Delete queue')),
    h('p', {}, h('a', { href: '#/queues' }, '‹ All queues')),
    errorLine,
    section(null, summary),
    section('Peek at the head', peekNote, peek, peekResult),
    ...classicOnly,
    section('Publish a message', h('p', { class: 'muted' }, 'Through the default exchange, whose routing key names this queue; change the exchange to test other routes.'),
      publishForm({ vhost, exchange: '', routingKey: name, exchangeEditable: true })),
    section('Bindings', bindings, h('h3', {}, 'Add a binding'), bind));
  ctx.every(5000, load);
  await load();
}

// ---------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------

async function bindingsPage(ctx, root) {
  const names = await vhostNames();
  let vhost = ctx.query.get('vhost') || '';
  const select = vhostSelect('bindings-vhost', names, vhost, { all: true });
  const list = pagedList(ctx, {
    id: 'bindings',
    path: '/api/bindings',
    params: () => ({ vhost }),
    onQuery: () => ({ vhost }),
    placeholder: 'Filter by exchange, destination or routing key',
    rowKey: (b) => `${b.vhost}/${b.source}/${b.destination_type}/${b.destination}/${b.routing_key}`,
    empty: 'No bindings.',
    columns: [{ label: 'Virtual host', cell: (b) => b.vhost }, ...bindingColumns(() => list.reload())],
  });
  select.addEventListener('change', () => { vhost = select.value; list.reload(); ctx.setQuery({ vhost }); });

  const create = actionForm({
    id: 'binding-create',
    submitLabel: 'Bind',
    fields: [
      h('div', { class: 'row' },
        field('Virtual host', vhostSelect('binding-create-vhost', names, vhost || '/')),
        field('From exchange', h('input', { testid: 'binding-create-source' })),
        field('To', h('select', { testid: 'binding-create-type' }, h('option', { value: 'queue' }, 'queue'), h('option', { value: 'exchange' }, 'exchange'))),
        field('Destination', h('input', { testid: 'binding-create-destination' })),
        field('Routing key', h('input', { testid: 'binding-create-routing-key' }))),
      field('Arguments', h('textarea', { testid: 'binding-create-arguments', rows: 2, placeholder: '{"x-match": "all", "format": "pdf"}' }), 'A JSON object; optional (headers exchanges match on it).'),
    ],
    async onSubmit(form) {
      const body = {
        vhost: valueOf(form, 'binding-create-vhost'),
        source: valueOf(form, 'binding-create-source').trim(),
        destination: valueOf(form, 'binding-create-destination').trim(),
        destination_type: valueOf(form, 'binding-create-type'),
        routing_key: valueOf(form, 'binding-create-routing-key'),
        arguments: parseJsonObject(valueOf(form, 'binding-create-arguments'), 'arguments'),
      };
      if (!body.source) throw fieldError('source', 'name the exchange to bind from');
      if (!body.destination) throw fieldError('destination', 'name the queue or exchange to bind to');
      await api('POST', '/api/bindings', body);
      notify('Binding created.');
      list.reload();
      return 'Bound.';
    },
  });

  replaceChildren(root,
    pageHeader('Bindings'),
    h('p', { class: 'muted' }, 'The implicit binding of every queue to the default exchange is not listed.'),
    section(null, h('div', { class: 'toolbar' }, field('Virtual host', select)), list.element),
    section('Create a binding', create));
}

// ---------------------------------------------------------------------------
// Connections and channels
// ---------------------------------------------------------------------------

// What a client sees when the web UI closes its connection.
const CLOSE_EFFECT = {
  amqp: ' The client receives connection.close with the reason.',
  kafka: ' Kafka clients are disconnected and may reconnect.',
  mqtt: ' MQTT 5 clients receive DISCONNECT (administrative action) with the reason; the client\'s will is sent (after its delay).',
  stomp: ' The client receives an ERROR frame with the reason.',
};

// The first few of a connection's subscriptions (an MQTT session's topic
// filters, a STOMP connection's subscription ids), every one in the tooltip.
function subscriptionList(protocol, subscriptions) {
  const shown = 3;
  const noun = protocol === 'stomp' ? 'subscription id' : 'topic filter';
  const rest = subscriptions.length - shown;
  return h('span', {
    class: 'subscriptions', testid: 'connection-subscriptions',
    title: `${subscriptions.length} ${noun}${subscriptions.length === 1 ? '' : 's'}:\n${subscriptions.join('\n')}`,
  },
  subscriptions.slice(0, shown).map((s) => h('code', { testid: 'connection-subscription' }, s)),
  rest > 0 ? muted(`+${rest} more`) : null);
}

async function connectionsPage(ctx, root) {
  const list = pagedList(ctx, {
    id: 'connections',
    path: '/api/connections',
    placeholder: 'Filter by address, client or user',
    rowKey: (c) => String(c.id),
    empty: 'No client connections.',
    columns: [
      { label: 'Id', numeric: true, cell: (c) => String(c.id) },
      {
        label: 'Protocol',
        cell: (c) => h('span', { class: 'stack' },
          h('span', { class: `badge ${c.protocol}` }, c.protocol),
          c.protocol_version ? h('span', { class: 'muted', testid: 'connection-version' }, c.protocol_version) : null),
      },
      { label: 'Peer', cell: (c) => h('code', {}, c.peer) },
      {
        label: 'Client',
        cell: (c) => {
          const client = h('span', { testid: 'connection-client' }, c.client_name ?? muted('–'));
          const subscriptions = c.subscriptions ?? [];
          if (subscriptions.length === 0) return client;
          return h('span', { class: 'stack' }, client, subscriptionList(c.protocol, subscriptions));
        },
      },
      { label: 'User', cell: (c) => c.user ?? muted('–') },
      { label: 'Vhost', cell: (c) => c.vhost ?? muted('–') },
      { label: 'Connected', cell: (c) => format.time(c.connected_at) },
      { label: 'Channels', numeric: true, cell: (c) => format.int(c.channels) },
      {
        label: 'Received / sent',
        numeric: true,
        cell: (c) => h('span', { class: 'stack' },
          h('span', { title: 'received' }, `${format.bytes(c.bytes_in)} · ${format.byteRate(c.recv_rate)}`),
          h('span', { title: 'sent' }, `${format.bytes(c.bytes_out)} · ${format.byteRate(c.send_rate)}`)),
      },
      {
        label: '',
        cell: (c) => h('button', {
          type: 'button', class: 'danger small', testid: 'connection-close',
          onclick: () => confirmAction({
            title: 'Close connection',
            message: `Close ${c.protocol} connection ${c.id} from ${c.peer}${c.client_name ? ` (${c.client_name})` : ''}?`
              + (CLOSE_EFFECT[c.protocol] ?? ''),
            confirmLabel: 'Close connection',
            input: { label: 'Reason', value: 'Closed from the web UI' },
            action: async (reason) => {
              await api('DELETE', `/api/connections/${c.id}${queryOf({ reason })}`);
              notify(`Connection ${c.id} closed.`);
              list.reload();
            },
          }),
        }, 'Close'),
      },
    ],
  });
  const channels = pagedList(ctx, {
    id: 'channels',
    path: '/api/channels',
    placeholder: 'Filter',
    rowKey: (c) => `${c.connection}/${c.number}`,
    empty: 'No AMQP channels.',
    mirror: false,
    columns: [
      { label: 'Connection', numeric: true, cell: (c) => String(c.connection) },
      { label: 'Channel', numeric: true, cell: (c) => String(c.number) },
      { label: 'Consumers', numeric: true, cell: (c) => format.int(c.consumers) },
      { label: 'Prefetch', numeric: true, cell: (c) => (c.prefetch ? format.int(c.prefetch) : muted('unlimited')) },
      { label: 'Unacked', numeric: true, cell: (c) => format.int(c.unacked) },
      { label: 'Mode', cell: (c) => [c.confirm ? 'confirm' : null, c.transactional ? 'transactional' : null].filter(Boolean).join(', ') || muted('–') },
    ],
  });
  replaceChildren(root,
    pageHeader('Connections'),
    section(null, list.element),
    section('AMQP channels', channels.element));
}

// ---------------------------------------------------------------------------
// Message browser
// ---------------------------------------------------------------------------

const BROWSE_LIMITS = [20, 50, 100, 200];

async function messagesPage(ctx, root) {
  const q = ctx.query;
  const topicInput = h('input', { testid: 'browse-topic', list: 'browse-topics', value: q.get('topic') || '', placeholder: 'topic name', autocomplete: 'off' });
  const topicOptions = h('datalist', { id: 'browse-topics' });
  const partitionInput = h('input', { testid: 'browse-partition', type: 'number', min: 0, value: q.get('partition') || '0' });
  const partitionHint = h('span', { class: 'hint', testid: 'browse-partition-hint' });
  const scopeSelect = h('select', { testid: 'browse-scope' },
    h('option', { value: 'one', selected: q.get('scope') !== 'all' }, 'one partition'),
    h('option', { value: 'all', selected: q.get('scope') === 'all' }, 'all partitions'));
  const searchInput = h('input', { type: 'search', testid: 'browse-search', value: q.get('search') || '', placeholder: 'text to find (optional)', autocomplete: 'off' });
  const searchIn = h('select', { testid: 'browse-search-in' },
    [['', 'key, headers, value'], ['key', 'key'], ['headers', 'headers'], ['value', 'value']]
      .map(([value, label]) => h('option', { value, selected: value === (q.get('in') || '') }, label)));
  const fromSelect = h('select', { testid: 'browse-from' },
    h('option', { value: 'start' }, 'the log start'),
    h('option', { value: 'offset', selected: q.has('offset') }, 'an offset'),
    h('option', { value: 'timestamp', selected: q.has('timestamp') }, 'a time'));
  const offsetField = field('Offset', h('input', { testid: 'browse-offset', type: 'number', min: 0, value: q.get('offset') || '0' }));
  const timestampField = field('Time', h('input', {
    testid: 'browse-timestamp', type: 'datetime-local', step: 1,
    value: msToLocalInput(q.has('timestamp') ? Number(q.get('timestamp')) : Date.now() - 3600 * 1000),
  }));
  const limitSelect = h('select', { testid: 'browse-limit' },
    BROWSE_LIMITS.map((n) => h('option', { value: String(n), selected: n === (Number(q.get('limit')) || 50) }, String(n))));
  const encodingSelect = h('select', { testid: 'browse-encoding' },
    ['text', 'hex'].map((e) => h('option', { value: e, selected: e === (q.get('encoding') || 'text') }, e)));
  const summary = h('p', { class: 'muted', testid: 'browse-summary' });
  const results = h('div', { testid: 'browse-results' });
  const errorLine = h('p', { class: 'error', testid: 'browse-error', hidden: true });
  const nextButton = h('button', { type: 'button', testid: 'browse-next', hidden: true }, 'Next page ›');
  let partitionCount = null;
  let nextOffset = null;
  // A search (or a read of all partitions) pages by the API's cursor.
  let nextCursor = null;
  let searching = false;

  const partitionField = field('Partition', partitionInput, partitionHint);
  const showFromFields = () => {
    offsetField.hidden = fromSelect.value !== 'offset';
    timestampField.hidden = fromSelect.value !== 'timestamp';
    partitionField.hidden = scopeSelect.value === 'all';
  };
  fromSelect.addEventListener('change', showFromFields);
  scopeSelect.addEventListener('change', showFromFields);
  showFromFields();

  // Topic suggestions come from the server's filter, a few at a time.
  let suggest = null;
  topicInput.addEventListener('input', () => {
    clearTimeout(suggest);
    suggest = setTimeout(async () => {
      try {
        const data = await api('GET', `/api/topics${queryOf({ filter: topicInput.value.trim(), page_size: 20 })}`);
        replaceChildren(topicOptions, data.items.map((t) => h('option', { value: t.name })));
      } catch {
        // Suggestions are a convenience; the read reports real errors.
      }
    }, 200);
  });
  topicInput.addEventListener('change', () => describeTopic());
  ctx.cleanups.push(() => clearTimeout(suggest));

  async function describeTopic() {
    const topic = topicInput.value.trim();
    partitionCount = null;
    partitionHint.textContent = '';
    if (!topic) return;
    try {
      const described = await api('GET', `/api/topics/${pathOf(topic)}`);
      partitionCount = described.partitions.length;
      partitionInput.max = String(partitionCount - 1);
      partitionHint.textContent = partitionCount === 1 ? 'the topic has partition 0' : `the topic has partitions 0 to ${partitionCount - 1}`;
      replaceChildren(produceForm.querySelector('[data-testid="produce-partition"]'),
        h('option', { value: '' }, 'by key (or round-robin)'),
        described.partitions.slice(0, 1000).map((p) => h('option', { value: String(p.partition) }, String(p.partition))));
    } catch (error) {
      partitionHint.textContent = error.message;
    }
  }

  const showRecords = (rows, encoding, acrossPartitions) => {
    const show = (text) => (text === null || text === undefined ? null : encoding === 'hex' ? format.hexPairs(text) : text);
    replaceChildren(results, dataTable({
      testid: 'messages-table',
      rowTestid: 'message-row',
      rowKey: (m) => (acrossPartitions ? `${m.partition}/${m.offset}` : String(m.offset)),
      rows,
      empty: acrossPartitions && searchInput.value.trim() ? 'No matching records in what was scanned.' : 'No records.',
      columns: [
        acrossPartitions ? { label: 'Partition', numeric: true, cell: (m) => String(m.partition), testid: 'message-partition' } : null,
        { label: 'Offset', numeric: true, cell: (m) => String(m.offset), testid: 'message-offset' },
        { label: 'Timestamp', cell: (m) => h('span', { title: String(m.timestamp) }, format.time(m.timestamp)) },
        { label: 'Key', cell: (m) => longText(show(m.key), 'message-key', 200) },
        {
          label: 'Headers',
          cell: (m) => (m.headers.length
            ? h('ul', { class: 'plain', testid: 'message-headers' }, m.headers.map((header) => h('li', {},
              h('code', {}, header.key), ': ', header.value === null ? nullValue() : h('span', { class: 'content' }, show(header.value)))))
            : h('span', { testid: 'message-headers' }, muted('–'))),
        },
        { label: 'Value', cell: (m) => longText(show(m.value), 'message-value') },
      ].filter(Boolean),
    }));
  };

  /** Reads or searches over the API's bounded scan: all partitions, or one with a search. */
  async function search(cursor) {
    const topic = topicInput.value.trim();
    const text = searchInput.value.trim();
    const encoding = encodingSelect.value;
    const all = scopeSelect.value === 'all';
    const partition = Number(partitionInput.value);
    const params = { limit: limitSelect.value, encoding, search: text, in: searchIn.value };
    if (!all) params.partition = partition;
    if (cursor) params.cursor = cursor;
    else if (fromSelect.value === 'offset') {
      const offset = Number(offsetField.querySelector('input').value) || 0;
      if (!all) params.cursor = `${partition}:${offset}`;
      else if (partitionCount !== null) params.cursor = Array.from({ length: partitionCount }, (_, p) => `${p}:${offset}`).join(',');
    } else if (fromSelect.value === 'timestamp') {
      errorLine.textContent = 'A search starts at the log start or at an offset, not at a time.';
      errorLine.hidden = false;
      return;
    }
    ctx.setQuery({ topic, scope: all ? 'all' : '', partition: all ? '' : partition, search: text, in: searchIn.value, limit: params.limit, encoding });
    let data;
    try {
      data = await api('GET', `/api/topics/${pathOf(topic)}/messages${queryOf(params)}`);
    } catch (error) {
      if (ctx.alive) showFailure(error);
      return;
    }
    if (!ctx.alive) return;
    searching = true;
    nextCursor = data.next_cursor;
    const where = all ? `${data.topic}, all partitions` : `${data.topic} partition ${partition}`;
    const found = text ? `${format.int(data.messages.length)} matching "${text}"` : `${format.int(data.messages.length)} shown`;
    summary.textContent = `${where}: scanned ${format.int(data.scanned)} records, ${found}; `
      + (data.next_cursor ? 'more to scan (Next page goes on).' : 'reached the high watermark.');
    showRecords(data.messages, encoding, true);
    nextButton.hidden = !data.next_cursor;
    root.dataset.loaded = 'true';
  }

  /** A failed read or search: its message instead of any results. */
  function showFailure(error) {
    errorLine.textContent = error.message;
    errorLine.hidden = false;
    replaceChildren(results);
    summary.textContent = '';
    nextButton.hidden = true;
  }

  async function read(fromOffset) {
    const topic = topicInput.value.trim();
    errorLine.hidden = true;
    if (!topic) {
      errorLine.textContent = 'Choose a topic.';
      errorLine.hidden = false;
      return;
    }
    if (fromOffset === undefined && (scopeSelect.value === 'all' || searchInput.value.trim())) {
      await search();
      return;
    }
    searching = false;
    const partition = Number(partitionInput.value);
    const encoding = encodingSelect.value;
    const params = { limit: limitSelect.value, encoding };
    if (fromOffset !== undefined) params.offset = fromOffset;
    else if (fromSelect.value === 'offset') params.offset = Number(offsetField.querySelector('input').value) || 0;
    else if (fromSelect.value === 'timestamp') {
      const ms = localInputToMs(timestampField.querySelector('input').value);
      if (ms === null) {
        errorLine.textContent = 'Choose a date and time.';
        errorLine.hidden = false;
        return;
      }
      params.timestamp = ms;
    }
    ctx.setQuery({ topic, partition, offset: params.offset, timestamp: params.timestamp, limit: params.limit, encoding });
    let data;
    try {
      data = await api('GET', `/api/topics/${pathOf(topic)}/partitions/${partition}/messages${queryOf(params)}`);
    } catch (error) {
      if (ctx.alive) showFailure(error);
      return;
    }
    if (!ctx.alive) return;
    nextOffset = data.next_offset;
    const shown = data.messages.length
      ? `showing offsets ${format.int(data.messages[0].offset)} to ${format.int(data.messages[data.messages.length - 1].offset)}`
      : 'no records from there';
    summary.textContent = `${data.topic} partition ${data.partition}: records from offset ${format.int(data.log_start_offset)}`
      + ` to ${format.int(data.high_watermark - 1)} (high watermark ${format.int(data.high_watermark)}); ${shown}.`;
    showRecords(data.messages, encoding, false);
    nextButton.hidden = data.next_offset >= data.high_watermark;
    root.dataset.loaded = 'true';
  }

  nextButton.addEventListener('click', () => (searching ? search(nextCursor) : read(nextOffset)));

  const browseForm = h('form', { class: 'form', testid: 'browse-form', novalidate: true },
    h('div', { class: 'row' },
      field('Topic', topicInput), topicOptions,
      field('Read', scopeSelect),
      partitionField,
      field('From', fromSelect), offsetField, timestampField,
      field('Records', limitSelect),
      field('Show as', encodingSelect)),
    h('div', { class: 'row' },
      field('Search', searchInput, 'Case-insensitive; each page scans at most 10,000 records.'),
      field('In', searchIn)),
    h('div', { class: 'form-buttons' }, h('button', { type: 'submit', class: 'primary', testid: 'browse-read' }, 'Read')));
  browseForm.addEventListener('submit', (event) => {
    event.preventDefault();
    read();
  });

  const produceForm = actionForm({
    id: 'produce',
    submitLabel: 'Produce record',
    fields: [
      h('div', { class: 'row' },
        field('Partition', h('select', { testid: 'produce-partition' }, h('option', { value: '' }, 'by key (or round-robin)'))),
        field('Key', h('input', { testid: 'produce-key', placeholder: 'none' })),
        field('Encoding', h('select', { testid: 'produce-encoding' }, ['text', 'hex', 'base64'].map((e) => h('option', { value: e }, e))))),
      field('Value', h('textarea', { testid: 'produce-value', rows: 3 })),
      field('Headers', h('textarea', { testid: 'produce-headers', rows: 2, placeholder: 'source=web' }), 'One key=value per line.'),
    ],
    async onSubmit(form) {
      const topic = topicInput.value.trim();
      if (!topic) throw fieldError('topic', 'choose a topic above');
      const record = { value: valueOf(form, 'produce-value') };
      const key = valueOf(form, 'produce-key');
      if (key !== '') record.key = key;
      const partition = valueOf(form, 'produce-partition');
      if (partition !== '') record.partition = Number(partition);
      const headers = parseKeyValueLines(valueOf(form, 'produce-headers'), 'headers');
      record.headers = Object.entries(headers).map(([headerKey, value]) => ({ key: headerKey, value }));
      const answer = await api('POST', `/api/topics/${pathOf(topic)}/messages`, { records: [record], encoding: valueOf(form, 'produce-encoding') });
      const [placed] = answer.offsets;
      return `Produced to ${topic} partition ${placed.partition} at offset ${placed.offset}.`;
    },
  });

  replaceChildren(root,
    pageHeader('Message browser'),
    section('Read records', browseForm, errorLine, summary, results, h('div', { class: 'form-buttons' }, nextButton)),
    section('Produce a test record', h('p', { class: 'muted' }, 'To the topic chosen above; the append is durable before the answer.'), produceForm));

  if (topicInput.value) {
    await describeTopic();
    await read();
  }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/** A list of node ids as "1, 2, 3" (a dash when empty). */
const nodeList = (ids) => (ids && ids.length ? ids.join(', ') : muted('–'));

async function clusterPage(ctx, root) {
  const summary = h('div', { testid: 'cluster-summary' }, muted('Loading…'));
  const nodes = h('div', { testid: 'cluster-nodes' });
  const moves = h('div', { testid: 'cluster-moves' });
  const partitions = h('div', { testid: 'cluster-partitions' });
  const errorLine = h('p', { class: 'error', testid: 'page-error', hidden: true });
  const elect = h('button', {
    type: 'button', testid: 'cluster-elect',
    onclick: () => confirmAction({
      title: 'Elect preferred leaders',
      message: 'Move each partition\'s leadership back to its first replica, where that replica is in sync and live.',
      confirmLabel: 'Elect',
      danger: false,
      action: async () => {
        const answer = await api('POST', '/api/cluster/elect-leaders', {});
        const elected = answer.results.filter((r) => r.outcome === 'elected').length;
        notify(`${elected} leader${elected === 1 ? '' : 's'} moved.`);
        await poll();
      },
    }),
  }, 'Elect preferred leaders');
  replaceChildren(root,
    pageHeader('Cluster', elect),
    errorLine,
    section(null, summary),
    section('Nodes', nodes),
    section('Partitions moving', moves),
    section('Partitions', h('p', { class: 'muted' }, 'Every partition of every topic, as the controller placed it. The first replica is the preferred leader.'), partitions));

  function move(p) {
    return confirmAction({
      title: `Move ${p.topic} partition ${p.partition}`,
      message: 'The new replicas catch up with the leader, then the old ones are dropped. The first is the preferred leader.',
      confirmLabel: 'Move',
      danger: false,
      input: { label: 'Replicas (node ids)', value: p.replicas.join(', ') },
      action: async (text) => {
        const replicas = text.split(/[\s,]+/).filter(Boolean).map(Number);
        if (!replicas.length || replicas.some((id) => !Number.isInteger(id))) {
          throw new Error('Give node ids separated by commas, e.g. 1, 2, 3.');
        }
        await api('POST', '/api/cluster/reassign', { topic: p.topic, partition: p.partition, replicas });
        notify(`${p.topic} partition ${p.partition} is moving to ${replicas.join(', ')}.`);
        await poll();
      },
    });
  }

  async function poll() {
    const data = await pollGet(ctx, '/api/cluster', errorLine);
    if (!data) return;
    if (!data.clustered) {
      elect.hidden = true;
      replaceChildren(summary, h('p', { testid: 'cluster-single' }, 'One node (no cluster.voters): nothing is replicated.'));
      replaceChildren(nodes);
      replaceChildren(moves);
      replaceChildren(partitions);
      root.dataset.loaded = 'true';
      return;
    }
    replaceChildren(summary, facts([
      ['This node', String(data.node_id), 'cluster-this-node'],
      ['Controller', data.controller >= 0 ? String(data.controller) : muted('none'), 'cluster-controller'],
      ['Partitions', format.int(data.partitions.length), 'cluster-partition-count'],
      ['Under-replicated', format.int(data.under_replicated_partitions), 'cluster-under-replicated'],
      ['Offline', format.int(data.offline_partitions), 'cluster-offline'],
      ['Moving', format.int(data.reassignments.length), 'cluster-moving'],
    ], 'cluster-facts'));
    replaceChildren(nodes, dataTable({
      columns: [
        { label: 'Node', numeric: true, cell: (n) => [String(n.id), n.this_node ? [' ', h('span', { class: 'badge' }, 'this node')] : null] },
        { label: 'Kafka', cell: (n) => h('code', {}, n.kafka) },
        { label: 'Role', cell: (n) => n.role, testid: 'node-role' },
        { label: 'Queues', numeric: true, cell: (n) => format.int(n.queues), testid: 'node-queues' },
        { label: 'Quorum leaders', numeric: true, cell: (n) => format.int(n.quorum_leaders), testid: 'node-quorum-leaders' },
        {
          label: 'Connections',
          numeric: true,
          testid: 'node-connections',
          cell: (n) => (n.connections ? `${format.int(n.connections.kafka)} Kafka, ${format.int(n.connections.amqp)} AMQP` : muted('unknown')),
        },
        {
          label: 'State',
          testid: 'node-state',
          cell: (n) => {
            if (n.fenced) return h('span', { class: 'badge bad' }, 'fenced');
            if (n.decommissioning) return h('span', { class: 'badge warn' }, 'decommissioning');
            return h('span', { class: 'badge good' }, 'live');
          },
        },
        {
          label: '',
          cell: (n) => (n.decommissioning ? null : h('button', {
            type: 'button', class: 'danger small', testid: 'node-decommission',
            onclick: () => confirmAction({
              title: `Decommission node ${n.id}`,
              message: `Move every replica off node ${n.id}, then take it out of the cluster. Stop it once it is gone.`,
              confirmLabel: 'Decommission',
              action: async () => {
                await api('POST', `/api/cluster/nodes/${n.id}/decommission`, {});
                notify(`Node ${n.id} is being decommissioned.`);
                await poll();
              },
            }),
          }, 'Decommission')),
        },
      ],
      rows: data.nodes,
      rowTestid: 'node-row',
      rowKey: (n) => String(n.id),
      testid: 'nodes-table',
    }));
    replaceChildren(moves, dataTable({
      columns: [
        { label: 'Topic', cell: (m) => h('a', { href: route(['topics', m.topic]) }, m.topic) },
        { label: 'Partition', numeric: true, cell: (m) => String(m.partition) },
        { label: 'Replicas', cell: (m) => nodeList(m.replicas) },
        { label: 'Adding', cell: (m) => nodeList(m.adding_replicas) },
        { label: 'Removing', cell: (m) => nodeList(m.removing_replicas) },
      ],
      rows: data.reassignments,
      rowTestid: 'move-row',
      rowKey: (m) => `${m.topic}/${m.partition}`,
      empty: 'No partition is moving.',
      testid: 'moves-table',
    }));
    replaceChildren(partitions, dataTable({
      columns: [
        { label: 'Topic', cell: (p) => h('a', { href: route(['topics', p.topic]) }, p.topic) },
        { label: 'Partition', numeric: true, cell: (p) => String(p.partition) },
        { label: 'Leader', numeric: true, cell: (p) => (p.leader >= 0 ? String(p.leader) : h('span', { class: 'badge bad' }, 'none')), testid: 'partition-leader' },
        { label: 'Epoch', numeric: true, cell: (p) => String(p.leader_epoch) },
        { label: 'Replicas', cell: (p) => nodeList(p.replicas), testid: 'partition-replicas' },
        { label: 'In sync', cell: (p) => nodeList(p.in_sync_replicas), testid: 'partition-in-sync' },
        {
          label: 'State',
          testid: 'partition-state',
          cell: (p) => {
            if (p.offline) return h('span', { class: 'badge bad' }, 'offline');
            if (p.under_replicated) return h('span', { class: 'badge bad' }, 'under-replicated');
            return h('span', { class: 'badge good' }, 'in sync');
          },
        },
        { label: '', cell: (p) => h('button', { type: 'button', class: 'small', testid: 'partition-move', onclick: () => move(p) }, 'Move…') },
      ],
      rows: data.partitions,
      rowTestid: 'cluster-partition-row',
      rowKey: (p) => `${p.topic}/${p.partition}`,
      testid: 'cluster-partitions-table',
    }));
    root.dataset.loaded = 'true';
  }

  ctx.every(POLL_MS, poll);
  await poll();
}

// ---------------------------------------------------------------------------
// Router
// ---------------------------------------------------------------------------

const ROUTES = [
  { pattern: /^$/, page: 'overview', render: overviewPage },
  { pattern: /^overview$/, page: 'overview', render: overviewPage },
  { pattern: /^topics$/, page: 'topics', render: topicsPage },
  { pattern: /^topics\/([^/]+)$/, page: 'topics', render: topicPage },
  { pattern: /^groups$/, page: 'groups', render: groupsPage },
  { pattern: /^groups\/([^/]+)$/, page: 'groups', render: groupPage },
  { pattern: /^exchanges$/, page: 'exchanges', render: exchangesPage },
  { pattern: /^exchanges\/([^/]+)\/([^/]+)$/, page: 'exchanges', render: exchangePage },
  { pattern: /^queues$/, page: 'queues', render: queuesPage },
  { pattern: /^queues\/([^/]+)\/([^/]+)$/, page: 'queues', render: queuePage },
  { pattern: /^bindings$/, page: 'bindings', render: bindingsPage },
  { pattern: /^connections$/, page: 'connections', render: connectionsPage },
  { pattern: /^messages$/, page: 'messages', render: messagesPage },
  { pattern: /^cluster$/, page: 'cluster', render: clusterPage },
];

const router = {
  context: null,

  async render() {
    this.context?.leave();
    const raw = location.hash.replace(/^#\/?/, '');
    const [path, search = ''] = raw.split('?');
    const ctx = new PageContext(new URLSearchParams(search));
    this.context = ctx;
    const view = document.getElementById('view');
    const root = h('div', { class: 'page' });
    view.replaceChildren(root);
    document.querySelectorAll('dialog.confirm').forEach((dialog) => dialog.remove());

    const match = ROUTES.map((entry) => ({ entry, found: entry.pattern.exec(path.replace(/\/$/, '')) }))
      .find(({ found }) => found);
    for (const link of document.querySelectorAll('#nav a')) {
      link.classList.toggle('active', Boolean(match) && link.dataset.page === match.entry.page);
    }
    if (!match) {
      document.title = 'Not found · Sluice';
      replaceChildren(root, pageHeader('Page not found'),
        h('p', { testid: 'page-not-found' }, 'No page here. ', h('a', { href: '#/' }, 'Go to the overview.')));
      return;
    }
    root.dataset.page = match.entry.page;
    root.dataset.testid = `page-${match.entry.page}`;
    let args;
    try {
      args = match.found.slice(1).map((segment) => decodeURIComponent(segment));
    } catch {
      replaceChildren(root, pageHeader('Page not found'), h('p', { testid: 'page-not-found' }, 'This link is malformed.'));
      return;
    }
    document.title = `${[match.entry.page[0].toUpperCase() + match.entry.page.slice(1), ...args].join(' · ')} · Sluice`;
    if (session.loginShown) return;
    try {
      await match.entry.render(ctx, root, args);
    } catch (error) {
      if (!ctx.alive || error.status === 401) return;
      root.append(h('p', { class: 'error', testid: 'page-error' }, error.message));
    }
  },
};

function start() {
  setUpLogin();
  updateSessionLabel();
  window.addEventListener('hashchange', () => router.render());
  router.render();
}

start();
