// The pool-managerd console: a read-only view of one node, served by the daemon at /ui.
//
// Plain JavaScript, no framework, no build step. Views are hash routes (#/, #/pool/<id>,
// #/gpus). Every call is a same-origin GET carrying the API token (asked for once, when a
// call answers 401, and kept in this tab's sessionStorage). The pools stay live from the
// journal's event stream (GET /v2/events read with fetch: EventSource cannot send the token).
// Errors are shown on the page, never thrown into the console.
'use strict';

(() => {
  const TOKEN_KEY = 'pool-managerd.token';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  /** A pool page keeps this many of the pool's newest events. */
  const EVENTS_KEPT = 400;
  /** Rows of a pool page's events table. */
  const EVENTS_SHOWN = 80;
  /** Events of a pool within this many ms cause one refetch of its status. */
  const REFRESH_MS = 40;
  /** Page size of GET /v2/pools/{id}/events. */
  const EVENTS_PAGE = 1000;

  const state = {
    pools: new Map(), // id -> GET /v2/pools/{id}
    why: new Map(), // id -> GET /v2/pools/{id}/explain, for pools that are not ready
    lastEventId: null, // the id: of the last stream event, to resume after it
    view: 'pools',
    page: null, // the open pool page: {id, events, shown, status, explanation}
    timers: new Map(), // debounced refreshes by key
    shownPhase: new Map(), // id -> {phase, ms}: when the table first showed the pool's phase
  };

  // ---- DOM helpers ------------------------------------------------------------------------

  /** An element with attributes (`text`: its text, `class`: its classes) and children. */
  function el(tag, attrs, ...children) {
    return build(document.createElement(tag), attrs, children);
  }

  /** An SVG element, as `el`. */
  function svg(tag, attrs, ...children) {
    return build(document.createElementNS(SVG_NS, tag), attrs, children);
  }

  function build(node, attrs, children) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  const $ = (selector) => document.querySelector(selector);
  const view = () => document.getElementById('view');
  const enc = encodeURIComponent;

  function replace(node, ...children) {
    node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined));
  }

  function time(ms) {
    if (typeof ms !== 'number') return '';
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + '.' + String(d.getMilliseconds()).padStart(3, '0');
  }

  function short(text, max) {
    return text.length > max ? text.slice(0, max - 1) + '…' : text;
  }

  function bytes(n) {
    if (typeof n !== 'number') return '';
    const gib = n / 1024 ** 3;
    return gib >= 1 ? gib.toFixed(1) + ' GiB' : (n / 1024 ** 2).toFixed(0) + ' MiB';
  }

  /** Shows a failure on the page (the notice area), not in the console. */
  function notice(message) {
    const box = $('#notice');
    if (box) box.textContent = message;
  }

  function debounce(key, ms, run) {
    clearTimeout(state.timers.get(key));
    state.timers.set(key, setTimeout(() => {
      state.timers.delete(key);
      run();
    }, ms));
  }

  /** Runs an async task; its failure goes to the notice area. */
  function spawn(task) {
    task().catch((e) => notice(String(e && e.message ? e.message : e)));
  }

  // ---- the API, with the token ----------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, body) {
      super(`${status}: ${body && body.error ? body.error : 'no detail'}`);
      this.status = status;
      this.body = body;
    }
  }

  let tokenAsked = null;

  /** Shows the token form until a token is entered; every waiting call then retries. */
  function askToken(refused) {
    if (tokenAsked) return tokenAsked;
    tokenAsked = new Promise((resolve) => {
      const panel = $('#token-panel');
      const input = $('#token-input');
      $('#token-error').textContent = refused ? 'That token was refused; enter the current one.' : '';
      panel.hidden = false;
      input.value = '';
      input.focus();
      $('#token-form').onsubmit = (event) => {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        panel.hidden = true;
        tokenAsked = null;
        resolve();
      };
    });
    return tokenAsked;
  }

  /** A same-origin GET with the token; a 401 asks for the token and tries again. */
  async function call(path, headers) {
    for (;;) {
      const sent = sessionStorage.getItem(TOKEN_KEY);
      const all = Object.assign({}, headers || {});
      if (sent) all.Authorization = 'Bearer ' + sent;
      const response = await fetch(path, { headers: all, cache: 'no-store' });
      if (response.status !== 401) return response;
      await response.text();
      if (sessionStorage.getItem(TOKEN_KEY) !== sent) continue; // another call got a new one
      await askToken(Boolean(sent));
    }
  }

  async function readJson(response) {
    const text = await response.text();
    try {
      return JSON.parse(text);
    } catch (_) {
      return null;
    }
  }

  async function getJson(path) {
    const response = await call(path);
    const body = await readJson(response);
    if (!response.ok) throw new ApiFailure(response.status, body);
    return body;
  }

  // ---- the live stream ----------------------------------------------------------------------

  function streamState(text) {
    $('#stream-state').textContent = text;
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  /** Reads GET /v2/events for ever: reconnects (after its last id) when it ends. */
  async function stream() {
    let delay = 250;
    for (;;) {
      let why = 'ended';
      try {
        const headers = { Accept: 'text/event-stream' };
        if (state.lastEventId !== null) headers['Last-Event-ID'] = String(state.lastEventId);
        const response = await call('/v2/events', headers);
        if (response.status === 400 || response.status === 410) {
          // The journal does not hold that id (another daemon, or expired): start afresh.
          await response.text();
          state.lastEventId = null;
          spawn(loadPools);
          why = `cannot resume (${response.status})`;
        } else if (!response.ok || !response.body) {
          why = `status ${response.status}`;
        } else {
          streamState('live');
          delay = 250;
          why = (await readStream(response.body.getReader())) || 'ended';
        }
      } catch (e) {
        why = 'disconnected';
      }
      streamState(`reconnecting (${why})`);
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }

  /** Parses the stream's messages until it ends; answers why (`dropped`, ...) or null. */
  async function readStream(reader) {
    const decoder = new TextDecoder();
    let buffer = '';
    let message = { id: null, event: 'message', data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, { stream: true });
      let at;
      while ((at = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, at).replace(/\r$/, '');
        buffer = buffer.slice(at + 1);
        if (line === '') {
          const end = dispatch(message);
          message = { id: null, event: 'message', data: [] };
          if (end) {
            reader.cancel().catch(() => {});
            return end;
          }
        } else if (!line.startsWith(':')) {
          field(message, line);
        }
      }
    }
  }

  function field(message, line) {
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (name === 'id') message.id = value;
    else if (name === 'event') message.event = value;
    else if (name === 'data') message.data.push(value);
  }

  /** One message: an event, or the stream's end (`dropped`, `shutdown`, `error`). */
  function dispatch(message) {
    if (message.data.length === 0) return null;
    let data;
    try {
      data = JSON.parse(message.data.join('\n'));
    } catch (_) {
      return null;
    }
    if (['dropped', 'shutdown', 'error'].includes(message.event)) {
      if (typeof data.last_event_id === 'number') state.lastEventId = data.last_event_id;
      return message.event;
    }
    if (message.id !== null) state.lastEventId = Number(message.id);
    onEvent(data);
    return null;
  }

  function onEvent(envelope) {
    const id = envelope.pool_id;
    if (id) {
      if (envelope.event.kind === 'PoolRemoved') {
        state.pools.delete(id);
        state.why.delete(id);
        if (state.view === 'pools') renderPools();
      } else {
        debounce('pool:' + id, REFRESH_MS, () => spawn(() => refreshPool(id)));
      }
      if (state.page && state.page.id === id) addPageEvent(state.page, envelope);
    }
    if (state.view === 'gpus') debounce('gpus', 300, () => spawn(showGpus));
  }

  // ---- pools ------------------------------------------------------------------------------

  async function explain(id, status) {
    if (status.ready && !(state.page && state.page.id === id)) {
      state.why.delete(id);
      return;
    }
    state.why.set(id, await getJson(`/v2/pools/${enc(id)}/explain`));
  }

  async function loadPools() {
    const list = await getJson('/v2/pools');
    state.pools = new Map(list.map((pool) => [pool.pool_id, pool]));
    await Promise.all(list.map((pool) => explain(pool.pool_id, pool)));
    if (state.view === 'pools') renderPools();
  }

  async function refreshPool(id) {
    const response = await call(`/v2/pools/${enc(id)}`);
    const body = await readJson(response);
    if (response.status === 404) {
      state.pools.delete(id);
    } else if (!response.ok) {
      throw new ApiFailure(response.status, body);
    } else {
      state.pools.set(id, body);
      await explain(id, body);
    }
    if (state.view === 'pools') renderPools();
    if (state.page && state.page.id === id) renderPageStatus(state.page);
  }

  function phaseBadge(phase) {
    return el('span', { class: `phase phase-${phase}`, text: phase });
  }

  function poolRow(pool) {
    const why = state.why.get(pool.pool_id);
    const whyText = !pool.ready && why ? why.why : '';
    const shown = state.shownPhase.get(pool.pool_id);
    if (!shown || shown.phase !== pool.phase) state.shownPhase.set(pool.pool_id, { phase: pool.phase, ms: Date.now() });
    return el('tr', { 'data-pool': pool.pool_id, 'data-phase': pool.phase, 'data-phase-shown-ms': state.shownPhase.get(pool.pool_id).ms },
      el('th', { scope: 'row' }, el('a', { href: `#/pool/${enc(pool.pool_id)}`, text: pool.pool_id })),
      el('td', {}, phaseBadge(pool.phase)),
      el('td', { text: pool.ready ? 'yes' : 'no' }),
      el('td', { class: 'num', text: `${pool.slots_free}/${pool.slots_total}` }),
      el('td', { class: 'num', text: pool.active_leases }),
      el('td', { class: 'num', text: pool.pid ?? '—' }),
      el('td', { class: 'num', text: pool.restart_count }),
      el('td', { class: 'model', text: pool.model_ref ?? '—' }),
      el('td', { class: 'why', title: whyText || null, text: short(whyText, 220) }));
  }

  function renderPools() {
    const pools = [...state.pools.values()].sort((a, b) => a.pool_id.localeCompare(b.pool_id));
    const head = ['Pool', 'Phase', 'Ready', 'Slots free/total', 'Leases', 'PID', 'Restarts', 'Model', 'Why not ready']
      .map((name) => el('th', { scope: 'col', text: name }));
    const table = el('table', { id: 'pools-table', class: 'grid' },
      el('caption', { text: `${pools.length} pool${pools.length === 1 ? '' : 's'}, live from the event stream` }),
      el('thead', {}, el('tr', {}, head)),
      el('tbody', {}, pools.map(poolRow)));
    replace(view(), el('h2', { text: 'Pools' }), noticeBox(),
      pools.length ? table : el('p', { text: 'No pools yet: preload one through the API.' }));
  }

  function noticeBox() {
    return el('p', { id: 'notice', class: 'error', role: 'alert' });
  }

  // ---- a pool's page ------------------------------------------------------------------------

  function section(id, title, ...body) {
    return el('section', { id, 'aria-labelledby': id + '-h' }, el('h3', { id: id + '-h', text: title }), body);
  }

  async function openPool(id) {
    const page = { id, events: [], shown: new Map() };
    state.page = page;
    replace(view(),
      el('p', {}, el('a', { href: '#/', text: '← all pools' })),
      el('h2', { text: `Pool ${id}` }), noticeBox(),
      section('pool-timeline', 'Timeline', el('div', { id: 'timeline' }), legend()),
      el('div', { class: 'columns' },
        section('pool-status', 'Status', el('p', { text: 'loading…' })),
        section('pool-explain', 'Why it is in its phase', el('p', { text: 'loading…' }))),
      section('pool-events', 'Recent events', el('p', { text: 'loading…' })),
      section('pool-log', 'Engine log', el('p', { text: 'loading…' })));
    spawn(() => refreshPool(id));
    spawn(() => loadLog(page));
    const history = await loadPoolEvents(id);
    if (state.page !== page) return;
    const bySeq = new Map([...history, ...page.events].map((e) => [e.seq, e]));
    page.events = [...bySeq.values()].sort((a, b) => a.seq - b.seq).slice(-EVENTS_KEPT);
    page.loaded = true;
    renderPageEvents(page);
  }

  /** The pool's newest events, paging forward through its history. */
  async function loadPoolEvents(id) {
    let kept = [];
    let query = `limit=${EVENTS_PAGE}`;
    for (let pages = 0; pages < 100; pages++) {
      const batch = await getJson(`/v2/pools/${enc(id)}/events?${query}`);
      kept = kept.concat(batch).slice(-EVENTS_KEPT);
      if (batch.length < EVENTS_PAGE) break;
      query = `since=${batch[batch.length - 1].seq + 1}&limit=${EVENTS_PAGE}`;
    }
    return kept;
  }

  function addPageEvent(page, envelope) {
    const last = page.events[page.events.length - 1];
    if (last && envelope.seq <= last.seq) return;
    page.events.push(envelope);
    if (page.events.length > EVENTS_KEPT) page.events.shift();
    if (page.loaded) renderPageEvents(page);
  }

  function renderPageEvents(page) {
    const now = Date.now();
    for (const e of page.events) if (!page.shown.has(e.seq)) page.shown.set(e.seq, now);
    drawTimeline(page);
    const rows = page.events.slice(-EVENTS_SHOWN).reverse().map((e) => eventRow(page, e));
    const head = ['Seq', 'Time', 'Event', 'Details'].map((name) => el('th', { scope: 'col', text: name }));
    replace($('#pool-events'), el('h3', { id: 'pool-events-h', text: 'Recent events' }),
      el('table', { id: 'events-table', class: 'grid events' },
        el('caption', { text: `newest first; ${page.events.length} kept` }),
        el('thead', {}, el('tr', {}, head)), el('tbody', {}, rows)));
  }

  function details(event) {
    const rest = Object.assign({}, event);
    delete rest.kind;
    const text = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');
    return short(text, 200);
  }

  function eventRow(page, e) {
    return el('tr', { 'data-seq': e.seq, 'data-kind': e.event.kind, 'data-shown-ms': page.shown.get(e.seq) },
      el('td', { class: 'num', text: e.seq }),
      el('td', { text: time(e.ts_ms) }),
      el('td', { class: 'kind', text: e.event.kind }),
      el('td', { class: 'details', text: details(e.event) }));
  }

  function renderPageStatus(page) {
    const pool = state.pools.get(page.id);
    const box = $('#pool-status');
    if (!box) return;
    if (!pool) {
      replace(box, el('h3', { id: 'pool-status-h', text: 'Status' }), el('p', { text: 'This pool is not in the registry (removed?).' }));
      return;
    }
    const rows = [
      ['Phase', phaseBadge(pool.phase)], ['Ready', pool.ready ? 'yes' : 'no'],
      ['Slots free/total', `${pool.slots_free}/${pool.slots_total}`], ['Leases', pool.active_leases],
      ['PID', pool.pid ?? '—'], ['Restarts', pool.restart_count], ['Crashes', pool.crash_count],
      ['Breaker', pool.breaker], ['Backoff', `${pool.backoff_ms} ms`], ['Model', pool.model_ref ?? '—'],
      ['Engine', `${pool.engine ?? '—'} ${pool.engine_version ?? ''}`], ['Devices', pool.device_mask ?? '—'],
      ['VRAM', pool.vram_used_bytes == null ? '—' : bytes(pool.vram_used_bytes)], ['Last error', pool.last_error ?? '—'],
    ];
    replace(box, el('h3', { id: 'pool-status-h', text: 'Status' }),
      el('dl', { class: 'facts' }, rows.map(([k, v]) => [el('dt', { text: k }), el('dd', {}, typeof v === 'object' ? v : String(v))])));
    renderExplanation(state.why.get(page.id));
  }

  function renderExplanation(x) {
    const box = $('#pool-explain');
    if (!box || !x) return;
    const list = (items, line) => (items.length ? el('ul', {}, items.map((i) => el('li', {}, line(i)))) : null);
    replace(box, el('h3', { id: 'pool-explain-h', text: 'Why it is in its phase' }),
      el('p', { class: 'why headline', text: x.why }),
      x.since ? el('p', { text: `since ${x.since.at} (seq ${x.since.seq})` }) : null,
      x.chain.length ? el('details', {}, el('summary', { text: `What led here (${x.chain.length} steps)` }),
        el('ol', {}, x.chain.map((s) => el('li', { text: `#${s.seq} ${s.text}` })))) : null,
      x.next.length ? el('h4', { text: 'Next' }) : null,
      list(x.next, (n) => (n.at ? `${n.at}: ${n.text}` : n.text)),
      x.actions.length ? el('h4', { text: 'What you can do' }) : null,
      list(x.actions, (a) => [a.text, a.request ? el('code', { text: ' ' + a.request }) : null]));
  }

  // ---- the timeline -------------------------------------------------------------------------

  const LANES = ['starting', 'ready', 'reloading', 'draining', 'stopping', 'stopped', 'backoff', 'circuit_open', 'half_open', 'failed'];
  const LANE_H = 16;
  const MARKS_H = 26;
  const LEFT = 96;
  const WIDTH = 1160;

  /** The phase an event starts, given the phase before it (null: no change). */
  function phaseAfter(event, current) {
    const kind = event.kind;
    if (current === 'reloading') {
      if (kind === 'ReloadSucceeded' || kind === 'ReloadRolledBack') return 'ready';
      if (kind === 'ReloadFailed') return event.rolling_back ? null : 'failed';
      return kind === 'PoolRemoved' ? 'end' : null;
    }
    const simple = {
      PreloadRequested: 'starting', EngineStartRequested: 'starting', EngineSpawned: 'starting',
      PoolReady: 'ready', EngineAdopted: 'ready', HandoffRegistered: 'ready',
      DrainRequested: 'draining', ReloadRequested: 'reloading', EngineStopRequested: 'stopping',
      EngineStopped: 'stopped', RestartScheduled: 'backoff', CircuitOpened: 'circuit_open',
      CircuitHalfOpened: 'half_open', PreloadFailed: 'failed', EngineLost: 'failed', PoolRemoved: 'end',
    };
    if (kind === 'EngineExited') return event.reason === 'graceful' ? 'stopped' : 'failed';
    return simple[kind] || null;
  }

  /** The spans `{phase, from, to, seq}` of the events, oldest first. */
  function spans(events, now) {
    const out = [];
    let open = null;
    for (const e of events) {
      const phase = phaseAfter(e.event, open ? open.phase : null);
      if (!phase || (open && open.phase === phase)) continue;
      if (open) open.to = e.ts_ms;
      open = phase === 'end' ? null : { phase, from: e.ts_ms, to: now, seq: e.seq, event: e.event };
      if (open) out.push(open);
    }
    return out;
  }

  /** What a marker stands for: `{type, label}`, or null for no marker. */
  function markerOf(event) {
    switch (event.kind) {
      case 'EngineExited':
        return event.reason === 'graceful' ? null : { type: 'crash', label: event.reason };
      case 'PreloadFailed':
        return { type: 'crash', label: event.cause || event.failure };
      case 'EngineLost':
        return { type: 'crash', label: 'lost' };
      case 'DrainRequested': case 'DrainCompleted':
        return { type: 'drain', label: event.kind };
      case 'ReloadRequested': case 'ReloadSucceeded': case 'ReloadFailed': case 'ReloadRolledBack':
        return { type: 'reload', label: event.kind };
      case 'EngineAdopted':
        return { type: 'adopt', label: 'adopted' };
      case 'CircuitOpened': case 'CircuitHalfOpened': case 'CircuitClosed': case 'CircuitReset':
        return { type: 'breaker', label: event.kind };
      default:
        return null;
    }
  }

  function spanTitle(s) {
    const e = s.event;
    let extra = '';
    if (e.kind === 'RestartScheduled') extra = ` (restart ${e.attempt} after ${e.delay_ms} ms, ${e.reason})`;
    if (e.kind === 'CircuitOpened') extra = ` (${e.failures} ${e.class} failures, half-open at ${time(e.half_open_at_ms)})`;
    return `${s.phase} from ${time(s.from)} to ${time(s.to)}${extra}`;
  }

  function drawTimeline(page) {
    const box = $('#timeline');
    if (!box) return;
    const events = page.events;
    if (!events.length) {
      replace(box, el('p', { text: 'No events.' }));
      return;
    }
    const now = Math.max(Date.now(), events[events.length - 1].ts_ms);
    const scale = timeScale(events.map((e) => e.ts_ms).concat([now]));
    const x = scale.x;
    const height = MARKS_H + LANES.length * LANE_H + 22;
    const chart = svg('svg', {
      id: 'timeline-svg', viewBox: `0 0 ${WIDTH} ${height}`, role: 'img',
      'aria-label': `Timeline of pool ${page.id}: phases over time, with crash, drain, reload, breaker and adoption markers`,
    }, svg('title', { text: `Timeline of pool ${page.id}` }));
    LANES.forEach((lane, i) => {
      const y = MARKS_H + i * LANE_H;
      chart.append(svg('rect', { class: 'lane', x: LEFT, y, width: WIDTH - LEFT, height: LANE_H - 2 }),
        svg('text', { class: 'lane-name', x: LEFT - 6, y: y + LANE_H - 5, 'text-anchor': 'end', text: lane }));
    });
    for (const s of spans(events, now)) {
      const y = MARKS_H + LANES.indexOf(s.phase) * LANE_H;
      chart.append(svg('rect', {
        class: `span phase-${s.phase}`, 'data-phase': s.phase, 'data-seq': s.seq,
        x: x(s.from), y, width: Math.max(x(s.to) - x(s.from), 2), height: LANE_H - 2,
      }, svg('title', { text: spanTitle(s) })));
    }
    drawMarkers(chart, events, x);
    drawAxis(chart, scale, height);
    replace(box, chart);
  }

  function drawMarkers(chart, events, x) {
    chart.append(svg('text', { class: 'lane-name', x: LEFT - 6, y: 16, 'text-anchor': 'end', text: 'events' }));
    for (const e of events) {
      const mark = markerOf(e.event);
      if (!mark) continue;
      const cx = x(e.ts_ms);
      const shape = mark.type === 'crash'
        ? svg('path', { d: `M${cx - 5} 4 L${cx + 5} 14 M${cx + 5} 4 L${cx - 5} 14` })
        : svg('path', { d: `M${cx} 3 L${cx + 5} 9 L${cx} 15 L${cx - 5} 9 Z` });
      chart.append(svg('g', {
        class: `marker marker-${mark.type} reason-${mark.label}`, 'data-kind': e.event.kind, 'data-reason': mark.label, 'data-seq': e.seq,
      }, svg('title', { text: `#${e.seq} ${time(e.ts_ms)} ${e.event.kind}: ${mark.label}` }), shape));
    }
  }

  /** Quiet gaps longer than this are drawn shorter (logarithmically), so that bursts show. */
  const GAP_MS = 1000;

  /** The x of a time over `times` (sorted): linear, but for quiet gaps over GAP_MS. */
  function timeScale(times) {
    const shown = [0];
    const cuts = [];
    for (let i = 1; i < times.length; i++) {
      const gap = times[i] - times[i - 1];
      const drawn = gap <= GAP_MS ? gap : GAP_MS * (1 + Math.log(gap / GAP_MS));
      shown.push(shown[i - 1] + drawn);
      if (drawn < gap) cuts.push({ from: times[i - 1], to: times[i], gap });
    }
    const total = Math.max(shown[shown.length - 1], 1);
    const px = (d) => LEFT + (d / total) * (WIDTH - LEFT - 8);
    const x = (ts) => {
      if (ts <= times[0]) return px(0);
      for (let i = 1; i < times.length; i++) {
        if (ts <= times[i]) {
          const gap = times[i] - times[i - 1];
          return px(shown[i - 1] + (gap ? ((ts - times[i - 1]) / gap) * (shown[i] - shown[i - 1]) : 0));
        }
      }
      return px(total);
    };
    return { x, cuts, from: times[0], to: times[times.length - 1] };
  }

  /** Time labels (at the ends and after each shortened gap) and the shortened gaps' marks. */
  function drawAxis(chart, scale, height) {
    const y = height - 6;
    const ticks = [scale.from, ...scale.cuts.map((c) => c.to), scale.to];
    const right = scale.x(scale.to);
    let last = -Infinity;
    ticks.forEach((ts, i) => {
      const at = scale.x(ts);
      const end = i === ticks.length - 1;
      if (i > 0 && !end && (at - last < 120 || right - at < 120)) return;
      last = at;
      chart.append(svg('text', { class: 'tick', x: at, y, 'text-anchor': i === 0 ? 'start' : end ? 'end' : 'middle', text: time(ts) }));
    });
    for (const cut of scale.cuts) {
      const at = (scale.x(cut.from) + scale.x(cut.to)) / 2;
      chart.append(svg('g', { class: 'cut' },
        svg('title', { text: `${(cut.gap / 1000).toFixed(1)} s without events (drawn shorter)` }),
        svg('path', { d: `M${at - 3} ${MARKS_H - 2} L${at + 1} ${height - 20} M${at + 1} ${MARKS_H - 2} L${at + 5} ${height - 20}` })));
    }
  }

  function legend() {
    const phases = LANES.map((p) => el('li', {}, el('span', { class: `swatch phase-${p}`, 'aria-hidden': 'true' }), p));
    const marks = [['crash', 'crash or lost engine (its reason)'], ['drain', 'drain'], ['reload', 'reload'], ['breaker', 'breaker'], ['adopt', 'adoption']]
      .map(([type, text]) => el('li', {}, el('span', { class: `swatch mark-${type}`, 'aria-hidden': 'true' }), text));
    return el('ul', { class: 'legend', 'aria-label': 'Legend' }, phases, marks);
  }

  // ---- the engine log -----------------------------------------------------------------------

  async function loadLog(page) {
    const response = await call(`/v2/pools/${enc(page.id)}/logs?tail=200`);
    const body = await readJson(response);
    const box = $('#pool-log');
    if (state.page !== page || !box) return;
    const head = el('h3', { id: 'pool-log-h', text: 'Engine log' });
    const reload = el('button', { type: 'button', text: 'Reload log' });
    reload.addEventListener('click', () => spawn(() => loadLog(page)));
    if (!response.ok) {
      const noRoute = !body || (typeof body.error === 'string' && body.error.startsWith('no route'));
      const why = response.status === 404 && noRoute ? '' : body && body.error ? `: ${body.error}` : '';
      replace(box, head, el('p', { class: 'log-missing', text: `log not available (${response.status})${why}` }), reload);
      return;
    }
    const lines = (body.lines || []).map((line) => el('span', { class: `line line-${line.source}`, 'data-source': line.source },
      el('span', { class: 'src', text: line.source }), line.text + '\n'));
    replace(box, head,
      el('p', { text: `${body.path}${body.truncated ? ' (the last lines only)' : ''}` }),
      el('pre', { class: 'log', tabindex: '0', 'aria-label': `Engine log of pool ${page.id}` }, lines), reload);
  }

  // ---- GPUs ---------------------------------------------------------------------------------

  function vramBar(label, total, free, processes) {
    const bar = svg('svg', { class: 'vram', viewBox: '0 0 1000 24', preserveAspectRatio: 'none', role: 'img', 'aria-label': `${label}: ${bytes(total - free)} of ${bytes(total)} used` },
      svg('rect', { class: 'vram-free', x: 0, y: 0, width: 1000, height: 24 }));
    const scale = (n) => (total > 0 ? (n / total) * 1000 : 0);
    let at = 0;
    let listed = 0;
    for (const p of processes) {
      const w = scale(p.used_bytes);
      bar.append(svg('rect', { class: p.pool_id ? 'vram-pool' : 'vram-process', 'data-pid': p.pid, x: at, y: 0, width: Math.max(w, 1), height: 24 },
        svg('title', { text: `pid ${p.pid}${p.pool_id ? ' (pool ' + p.pool_id + ')' : ''}: ${bytes(p.used_bytes)}` })));
      at += w;
      listed += p.used_bytes;
    }
    const other = Math.max(total - free - listed, 0);
    if (other > 0) bar.append(svg('rect', { class: 'vram-other', x: at, y: 0, width: scale(other), height: 24 }, svg('title', { text: `other use: ${bytes(other)}` })));
    return bar;
  }

  function processTable(processes) {
    if (!processes.length) return el('p', { text: 'No compute process.' });
    return el('table', { class: 'grid' },
      el('thead', {}, el('tr', {}, ['PID', 'Pool', 'VRAM'].map((n) => el('th', { scope: 'col', text: n })))),
      el('tbody', {}, processes.map((p) => el('tr', {},
        el('td', { class: 'num', text: p.pid }),
        el('td', {}, p.pool_id ? el('a', { href: `#/pool/${enc(p.pool_id)}`, text: p.pool_id }) : '—'),
        el('td', { class: 'num', text: bytes(p.used_bytes) })))));
  }

  function gpuCard(gpu) {
    const quarantine = gpu.quarantined
      ? el('span', { class: 'badge quarantined', text: `quarantined since ${time(gpu.quarantined_since_ms)}` })
      : el('span', { class: 'badge ok', text: 'not quarantined' });
    const migs = gpu.mig_devices.map((m) => el('div', { class: 'mig', 'data-uuid': m.uuid },
      el('h4', { text: `MIG ${m.name} (${m.uuid})` }),
      vramBar(`MIG ${m.uuid}`, m.vram_total_bytes, m.vram_free_bytes, m.processes), processTable(m.processes)));
    return el('section', { class: 'gpu', 'data-uuid': gpu.uuid, 'aria-labelledby': `gpu-${gpu.index}` },
      el('h3', { id: `gpu-${gpu.index}`, text: `GPU ${gpu.index}: ${gpu.name}` }), quarantine,
      el('p', { text: `${gpu.uuid}, compute ${gpu.compute_capability}, ${bytes(gpu.vram_total_bytes - gpu.vram_free_bytes)} of ${bytes(gpu.vram_total_bytes)} used` }),
      vramBar(`GPU ${gpu.index}`, gpu.vram_total_bytes, gpu.vram_free_bytes, gpu.processes), processTable(gpu.processes), migs);
  }

  function vramLegend() {
    const items = [['vram-pool', "a pool's engine"], ['vram-process', 'another process'], ['vram-other', 'other use'], ['vram-free', 'free']];
    return el('ul', { class: 'legend', 'aria-label': 'VRAM legend' },
      items.map(([type, text]) => el('li', {}, el('span', { class: `swatch ${type}`, 'aria-hidden': 'true' }), text)));
  }

  async function showGpus() {
    const gpus = await getJson('/v2/gpus');
    if (state.view !== 'gpus') return;
    replace(view(), el('h2', { text: 'GPUs' }), noticeBox(),
      gpus.length ? [vramLegend(), el('div', { id: 'gpus' }, gpus.map(gpuCard))] : el('p', { text: 'No GPU in the last reading (GET /health says why).' }));
  }

  // ---- routes -------------------------------------------------------------------------------

  function route() {
    const hash = location.hash || '#/';
    const pool = /^#\/pool\/(.+)$/.exec(hash);
    state.page = null;
    if (pool) {
      state.view = 'pool';
      spawn(() => openPool(decodeURIComponent(pool[1])));
    } else if (hash === '#/gpus') {
      state.view = 'gpus';
      replace(view(), el('h2', { text: 'GPUs' }), noticeBox(), el('p', { text: 'loading…' }));
      spawn(showGpus);
    } else {
      state.view = 'pools';
      renderPools();
    }
    for (const [link, name] of [['#nav-pools', 'pools'], ['#nav-gpus', 'gpus']]) {
      if (state.view === name) $(link).setAttribute('aria-current', 'page');
      else $(link).removeAttribute('aria-current');
    }
  }

  function start() {
    window.addEventListener('hashchange', route);
    route();
    stream();
    spawn(loadPools);
    // The last span of a pool's timeline runs to now.
    setInterval(() => {
      if (state.page && state.page.loaded) drawTimeline(state.page);
    }, 5000);
  }

  start();
})();
