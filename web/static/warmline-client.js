/**
 * Warmline browser client (wire protocol v1). ES module, no dependencies, no build step.
 *
 * Customer chat:
 *
 *   import { WarmlineClient } from '/static/warmline-client.js';
 *   const chat = new WarmlineClient({ baseUrl: 'https://support.example.com', tenant: 'demo' });
 *   chat.on('event', (ev) => render(ev));          // persistent events, each seq exactly once, in order
 *   chat.on('state', (to, ev) => ...);             // 'bot' | 'confused' | 'queued' | 'human' | 'resolved'
 *   chat.on('queue', ({position, eta_s}) => ...);  // place in line while queued
 *   chat.on('typing', ({on, role}) => ...);        // the other side is typing
 *   chat.on('status', (status, info) => ...);      // 'idle'|'connecting'|'connected'|'reconnecting'|'closed'
 *   chat.on('frame', (frame) => ...);              // every server frame, raw (bot_delta, ack, error, ...)
 *   chat.connect();
 *   const id = chat.send('Hello');                 // returns the client message id (idempotency key)
 *   chat.requestHuman(); chat.typing(true); chat.rate(5, 'thanks');
 *   chat.close();
 *
 *   Other events: 'welcome', 'ack', 'bot_delta', 'error', 'transport' ('websocket'|'longpoll').
 *   `on()` returns a function that removes the handler.
 *
 * Options of WarmlineClient:
 *   baseUrl      origin of the Warmline server (default: location.origin)
 *   tenant       tenant id (required)
 *   transport    'auto' (WebSocket, then long polling if it cannot open) | 'websocket' | 'longpoll'
 *   storage      a Storage-like object {getItem,setItem,removeItem} (default: localStorage, or memory)
 *   history      true (default): the first connection of a page load replays the whole conversation
 *                (last_seq 0) so a reloaded page can redraw its transcript; false: resume from the
 *                last_seq kept in storage.
 *   wsRetryMs    while on long polling, try the WebSocket again this often (default 30000)
 *   fallbackAfter  WebSocket failures in a row, before any welcome, that switch to long polling (3)
 *
 * Reliability: application heartbeat (ping every heartbeat_s from welcome; no frame for two
 * intervals means the socket is dead), reconnect with exponential backoff and full jitter
 * (random in [0, min(10 s, 0.5 s * 2^n)]), resume with token + last_seq, events deduplicated by
 * seq, an outbox of unacked messages resent with the same id after a reconnect, `reconnect`
 * frames honoured, and a long-polling fallback that switches back to the WebSocket without
 * losing or repeating anything. Token, conversation and last_seq are kept in storage under
 * `warmline:<tenant>:token`, `warmline:<tenant>:conversation`, `warmline:<tenant>:last_seq`.
 *
 * Lower level, used by the agent and supervisor dashboards:
 *
 *   import { ReconnectingSocket } from '/static/warmline-client.js';
 *   const sock = new ReconnectingSocket(wsUrl('/v1/ws/agent'), () => ({type: 'hello', token}), {
 *     onFrame: (f) => ..., onWelcome: (f) => ..., onStatus: (s) => ...,
 *   });
 *   sock.connect(); sock.send({type: 'claim', conversation_id: 'c_1'}); sock.close();
 */

/** Full-jitter exponential backoff: a random delay in [0, min(cap, base * 2^attempt)] ms. */
export function backoffDelay(attempt, base = 500, cap = 10000, random = Math.random) {
  const ceiling = Math.min(cap, base * Math.pow(2, Math.max(0, attempt)));
  return Math.floor(random() * ceiling);
}

/** A random id for message idempotency (crypto.randomUUID where available). */
export function newId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') {
    try { return c.randomUUID(); } catch (_) { /* insecure context */ }
  }
  const b = new Uint8Array(16);
  if (c && c.getRandomValues) c.getRandomValues(b);
  else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Turn an http(s) base URL and a path into a ws(s) URL. */
export function wsUrl(path, baseUrl) {
  const base = baseUrl || (globalThis.location ? globalThis.location.origin : 'http://localhost');
  const u = new URL(path, base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.toString();
}

/** Minimal event emitter. */
export class Emitter {
  constructor() { this._handlers = new Map(); }
  /** Add a handler; returns a function that removes it. */
  on(type, fn) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) { const s = this._handlers.get(type); if (s) s.delete(fn); }
  emit(type, ...args) {
    const s = this._handlers.get(type);
    if (!s) return;
    for (const fn of Array.from(s)) {
      try { fn(...args); } catch (err) { setTimeout(() => { throw err; }); }
    }
  }
}

function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => { m.set(k, String(v)); },
    removeItem: (k) => { m.delete(k); },
  };
}

/** localStorage if it works (it throws in some sandboxed or private contexts), else memory. */
export function defaultStorage() {
  try {
    const ls = globalThis.localStorage;
    const k = '__warmline_probe__';
    ls.setItem(k, '1');
    ls.removeItem(k);
    return ls;
  } catch (_) {
    return memoryStorage();
  }
}

/**
 * A WebSocket that keeps itself open: sends a hello on every (re)connect, keeps an
 * application-level heartbeat, reconnects with full-jitter exponential backoff, and honours
 * the server's `reconnect` frame. JSON frames only.
 *
 * Status values: 'idle', 'connecting', 'connected' (a welcome was received), 'reconnecting',
 * 'closed' (close() was called or a fatal close code was received).
 */
export class ReconnectingSocket extends Emitter {
  /**
   * @param {string} url  ws:// or wss:// URL
   * @param {() => object} hello  builds the hello frame sent after every open
   * @param {object} [opts]
   * @param {(frame: object) => void} [opts.onFrame]
   * @param {(frame: object) => void} [opts.onWelcome]
   * @param {(status: string, info: object) => void} [opts.onStatus]
   * @param {number} [opts.heartbeatS=15]  default until a welcome says otherwise
   * @param {number} [opts.baseMs=500]
   * @param {number} [opts.capMs=10000]
   * @param {number[]} [opts.fatalCloseCodes=[1008]]  close codes that stop reconnecting
   * @param {Function} [opts.WebSocket]  WebSocket constructor (default: globalThis.WebSocket)
   */
  constructor(url, hello, opts = {}) {
    super();
    this.url = url;
    this.hello = hello;
    this.opts = opts;
    this.heartbeatS = opts.heartbeatS || 15;
    this.baseMs = opts.baseMs ?? 500;
    this.capMs = opts.capMs ?? 10000;
    this.fatalCloseCodes = opts.fatalCloseCodes || [1008];
    this.status = 'idle';
    this.attempt = 0;              // reconnect attempts since the last welcome
    this.failuresInARow = 0;       // connections that ended before a welcome
    this.everWelcomed = false;
    this.ws = null;
    this.welcomed = false;         // on the current connection
    this._stopped = true;
    this._retryTimer = null;
    this._pingTimer = null;
    this._deadTimer = null;
    this._lastRx = 0;
    if (opts.onFrame) this.on('frame', opts.onFrame);
    if (opts.onWelcome) this.on('welcome', opts.onWelcome);
    if (opts.onStatus) this.on('status', opts.onStatus);
  }

  get connected() { return !!(this.ws && this.welcomed && this.ws.readyState === 1); }

  _setStatus(status, info = {}) {
    if (this.status === status && !info.force) return;
    this.status = status;
    this.emit('status', status, info);
  }

  /** Open the socket (idempotent). */
  connect() {
    this._stopped = false;
    if (this.ws || this._retryTimer) return;
    this._open();
  }

  _open() {
    this._retryTimer = null;
    if (this._stopped) return;
    this._setStatus(this.everWelcomed || this.attempt > 0 ? 'reconnecting' : 'connecting',
      { attempt: this.attempt });
    const WS = this.opts.WebSocket || globalThis.WebSocket;
    let ws;
    try {
      if (typeof WS !== 'function') throw new Error('WebSocket is not available');
      ws = new WS(this.url);
    } catch (err) {
      this._failed(null, err);
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this._lastRx = Date.now();
      this._armHeartbeat();
      let frame;
      try { frame = this.hello(); } catch (err) { frame = null; }
      if (frame) this._raw(frame);
      this.emit('open');
    };
    ws.onmessage = (msg) => {
      if (this.ws !== ws) return;
      this._lastRx = Date.now();
      this._armDeadTimer();
      if (typeof msg.data !== 'string') return;   // JSON subprotocol only
      let frame;
      try { frame = JSON.parse(msg.data); } catch (_) { return; }
      if (!frame || typeof frame.type !== 'string') return;
      this._onFrame(frame);
    };
    ws.onerror = () => { /* a close event always follows */ };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this._failed(ev);
    };
  }

  _onFrame(frame) {
    if (frame.type === 'welcome') {
      this.welcomed = true;
      this.everWelcomed = true;
      this.attempt = 0;
      this.failuresInARow = 0;
      const hb = Number(frame.heartbeat_s);
      if (hb > 0 && hb !== this.heartbeatS) { this.heartbeatS = hb; this._armHeartbeat(); }
      this._setStatus('connected');
      this.emit('welcome', frame);
    } else if (frame.type === 'reconnect') {
      const after = Math.max(0, Number(frame.after_ms) || 0);
      this.emit('frame', frame);
      this.reconnect(after);
      return;
    }
    this.emit('frame', frame);
  }

  _failed(closeEvent, err) {
    const ws = this.ws;
    this._detach();
    const wasWelcomed = this.welcomed;
    this.welcomed = false;
    const code = closeEvent ? closeEvent.code : 0;
    this.emit('close', { code, reason: closeEvent ? closeEvent.reason : String(err || ''), wasWelcomed });
    if (this._stopped) return;
    if (this.fatalCloseCodes.includes(code)) {
      this._stopped = true;
      this._setStatus('closed', { code, fatal: true, reason: closeEvent && closeEvent.reason });
      this.emit('fatal', { code, reason: closeEvent && closeEvent.reason });
      return;
    }
    if (!wasWelcomed) {
      this.failuresInARow += 1;
      this.emit('failure', { count: this.failuresInARow, everWelcomed: this.everWelcomed, error: err });
      if (this._stopped) return;   // a handler gave up on this socket
    }
    void ws;
    this._schedule(backoffDelay(this.attempt, this.baseMs, this.capMs));
    this.attempt += 1;
  }

  _schedule(delay) {
    clearTimeout(this._retryTimer);
    this._setStatus('reconnecting', { delayMs: delay, attempt: this.attempt, force: true });
    this._retryTimer = setTimeout(() => this._open(), delay);
  }

  _detach() {
    clearInterval(this._pingTimer);
    clearTimeout(this._deadTimer);
    this._pingTimer = null;
    this._deadTimer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { if (ws.readyState === 0 || ws.readyState === 1) ws.close(1000); } catch (_) { /* ignore */ }
    }
  }

  _armHeartbeat() {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => {
      if (this.ws && this.ws.readyState === 1) this._raw({ type: 'ping' });
    }, this.heartbeatS * 1000);
    this._armDeadTimer();
  }

  _armDeadTimer() {
    clearTimeout(this._deadTimer);
    const limit = 2 * this.heartbeatS * 1000;
    this._deadTimer = setTimeout(() => this._checkDead(), limit + 50);
  }

  /** Treat the socket as dead when nothing at all arrived for two heartbeat intervals. */
  _checkDead() {
    if (!this.ws) return;
    if (Date.now() - this._lastRx >= 2 * this.heartbeatS * 1000) {
      this.emit('dead');
      this._failed({ code: 4000, reason: 'heartbeat timeout' });
    } else {
      this._armDeadTimer();
    }
  }

  /** Drop the current connection and open a new one after `delayMs` (default: now). */
  reconnect(delayMs = 0) {
    if (this._stopped) return;
    this._detach();
    this.welcomed = false;
    this._schedule(delayMs);
  }

  /** If waiting for a backoff timer, try right now (e.g. the browser came back online). */
  nudge() {
    if (this._stopped) return;
    if (!this.ws && this._retryTimer) { clearTimeout(this._retryTimer); this._open(); }
    else if (this.ws && Date.now() - this._lastRx >= 2 * this.heartbeatS * 1000) this._checkDead();
  }

  _raw(frame) {
    try { this.ws.send(JSON.stringify(frame)); return true; } catch (_) { return false; }
  }

  /** Send a frame if the session is open (welcome received). Returns true if it was written. */
  send(frame) {
    if (!this.connected) return false;
    return this._raw(frame);
  }

  /** Close for good (no reconnect). */
  close() {
    this._stopped = true;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this._detach();
    this.welcomed = false;
    this._setStatus('closed');
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Long-polling transport for the customer endpoint. Owns a poll loop; the customer client
 * supplies the frames handler and the current token / last seq.
 */
class LongPoll {
  constructor(client) {
    this.client = client;
    this.running = false;
    this.abort = null;
    this.attempt = 0;
    this.gen = 0;
  }

  async post(frame) {
    // the session token travels with every frame but hello (which carries its own, if any):
    // in the body, as a bearer token and in the query, so any conforming server finds it
    const token = this.client.token;
    const headers = { 'Content-Type': 'application/json' };
    let path = '/v1/lp/customer/send';
    if (frame.type !== 'hello' && token) {
      frame = { ...frame, token };
      headers.Authorization = `Bearer ${token}`;
      path += `?token=${encodeURIComponent(token)}`;
    }
    const res = await fetch(this.client._http(path), {
      method: 'POST',
      headers,
      body: JSON.stringify(frame),
      credentials: 'omit',
    });
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    if (Array.isArray(body)) return body;
    if (body && Array.isArray(body.frames)) return body.frames;
    if (body && typeof body.type === 'string') return [body];
    if (!res.ok) {
      const e = new Error(`HTTP ${res.status}`);
      e.status = res.status;
      throw e;
    }
    return [];
  }

  /** Start: hello (new or resume), then the poll loop. */
  start() {
    if (this.running) return;
    this.running = true;
    const gen = ++this.gen;
    this._run(gen);
  }

  stop() {
    this.running = false;
    this.gen++;
    if (this.abort) { try { this.abort.abort(); } catch (_) { /* ignore */ } }
    this.abort = null;
  }

  async _run(gen) {
    const c = this.client;
    while (this.running && gen === this.gen) {
      try {
        if (!c._lpWelcomed) {
          c._setStatus(this.attempt > 0 || c._everWelcomed ? 'reconnecting' : 'connecting');
          const frames = await this.post(c._helloFrame());
          if (gen !== this.gen) return;
          const hadWelcome = frames.some((f) => f.type === 'welcome');
          c._lpFrames(frames);
          if (!hadWelcome) throw new Error('no welcome');
          this.attempt = 0;
          continue;
        }
        this.abort = typeof AbortController === 'function' ? new AbortController() : null;
        const timer = setTimeout(() => this.abort && this.abort.abort(), 40000);
        const url = c._http(`/v1/lp/customer/poll?token=${encodeURIComponent(c.token)}&after=${c.lastSeq}`);
        let res;
        try {
          res = await fetch(url, { signal: this.abort ? this.abort.signal : undefined, credentials: 'omit', cache: 'no-store' });
        } finally { clearTimeout(timer); }
        if (gen !== this.gen) return;
        if (res.status === 401 || res.status === 403 || res.status === 404 || res.status === 410) {
          c._tokenRejected();
          continue;
        }
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const body = await res.json();
        if (gen !== this.gen) return;
        this.attempt = 0;
        const frames = Array.isArray(body) ? body : (body && body.frames) || [];
        const rc = frames.find((f) => f && f.type === 'reconnect');
        c._lpFrames(frames);
        if (rc) await sleep(Math.max(0, Number(rc.after_ms) || 0));
      } catch (err) {
        if (gen !== this.gen || !this.running) return;
        if (c._lpWelcomed) c._lpWelcomed = false;   // re-hello after a failure: cheap and safe
        c._setStatus('reconnecting');
        const d = backoffDelay(this.attempt, c.opts.baseMs ?? 500, c.opts.capMs ?? 10000);
        this.attempt += 1;
        await sleep(d);
      }
    }
  }
}

/**
 * Customer chat client. See the module documentation above.
 */
export class WarmlineClient extends Emitter {
  constructor(opts = {}) {
    super();
    if (!opts.tenant) throw new Error('WarmlineClient: tenant is required');
    this.opts = opts;
    this.tenant = String(opts.tenant);
    this.baseUrl = (opts.baseUrl || (globalThis.location ? globalThis.location.origin : '')).replace(/\/+$/, '');
    this.mode = opts.transport || 'auto';
    this.storage = opts.storage || defaultStorage();
    this.prefix = `warmline:${this.tenant}:`;
    this.token = this.storage.getItem(this.prefix + 'token') || null;
    this.conversationId = this.storage.getItem(this.prefix + 'conversation') || null;
    const storedSeq = parseInt(this.storage.getItem(this.prefix + 'last_seq') || '0', 10) || 0;
    this.lastSeq = opts.history === false ? storedSeq : 0;
    this.state = null;
    this.status = 'idle';
    this.transport = null;         // 'websocket' | 'longpoll'
    this.outbox = new Map();       // client id -> message frame (unacked)
    this._controls = [];           // request_human / rate waiting for a session
    this._everWelcomed = false;
    this._lpWelcomed = false;
    this._sock = null;
    this._lp = null;
    this._probeTimer = null;
    this._probing = false;
    this._closed = true;
    this._loadOutbox();
    this._onOnline = () => { if (this._sock) this._sock.nudge(); };
    this._onVisible = () => { if (!document.hidden && this._sock) this._sock.nudge(); };
  }

  _http(path) { return this.baseUrl + path; }

  _loadOutbox() {
    try {
      const raw = this.storage.getItem(this.prefix + 'outbox');
      if (raw) for (const f of JSON.parse(raw)) if (f && f.id) this.outbox.set(f.id, f);
    } catch (_) { /* ignore */ }
  }

  _saveOutbox() {
    try {
      if (this.outbox.size) this.storage.setItem(this.prefix + 'outbox', JSON.stringify(Array.from(this.outbox.values())));
      else this.storage.removeItem(this.prefix + 'outbox');
    } catch (_) { /* ignore */ }
  }

  /** Pending (unacked) messages, oldest first: [{id, text}]. */
  pending() { return Array.from(this.outbox.values()); }

  /** True when a conversation token is stored (a reload would resume it). */
  get hasSession() { return !!this.token; }

  _setStatus(status, info = {}) {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', status, { transport: this.transport, ...info });
  }

  _setTransport(t) {
    if (this.transport === t) return;
    this.transport = t;
    this.emit('transport', t);
  }

  _helloFrame() {
    const f = { type: 'hello', tenant: this.tenant };
    if (this.token) { f.token = this.token; f.last_seq = this.lastSeq; }
    return f;
  }

  /** Open the conversation (resumes a stored one). */
  connect() {
    this._closed = false;
    if (globalThis.addEventListener) {
      globalThis.addEventListener('online', this._onOnline);
      if (globalThis.document) document.addEventListener('visibilitychange', this._onVisible);
    }
    if (this.mode === 'longpoll' || (this.mode === 'auto' && typeof globalThis.WebSocket !== 'function')) {
      this._startLongPoll();
    } else {
      this._startSocket(false);
    }
    return this;
  }

  _startSocket(probe) {
    this._probing = probe;
    if (!this._sock) {
      this._sock = new ReconnectingSocket(wsUrl('/v1/ws/customer', this.baseUrl), () => this._helloFrame(), {
        baseMs: this.opts.baseMs, capMs: this.opts.capMs, fatalCloseCodes: [],
        WebSocket: this.opts.WebSocket,
      });
      this._sock.on('frame', (f) => { if (this._sock && this._sock.welcomed) this._onFrame(f, 'websocket'); else this._preWelcome(f); });
      this._sock.on('status', (s) => {
        if (this.transport === 'websocket' || (!this.transport && !this._probing)) {
          if (s === 'connected') return;   // reported after the welcome is processed
          this._setStatus(s === 'closed' ? (this._closed ? 'closed' : 'reconnecting') : s);
        }
      });
      this._sock.on('failure', ({ count, everWelcomed }) => this._wsFailure(count, everWelcomed));
      this._sock.on('close', ({ code, wasWelcomed }) => {
        if (code === 1008 && !wasWelcomed && this.token) this._tokenRejected(true);
      });
    }
    if (!probe) this._setTransport('websocket');
    this._sock.connect();
  }

  _preWelcome(f) {
    if (f.type === 'welcome') return;   // handled via the 'frame' after welcome is set
    if (f.type === 'error' && (f.code === 'unauthorized' || f.code === 'not_found' || f.code === 'forbidden') && this.token) {
      this._tokenRejected(true);
      return;
    }
    this._onFrame(f, 'websocket');
  }

  _wsFailure(count, everWelcomed) {
    if (this._closed) return;
    if (this._probing) {
      // the periodic WebSocket retry failed: stay on long polling
      this._stopSocket();
      this._scheduleProbe();
      return;
    }
    if (this.mode !== 'auto') return;
    const limit = everWelcomed ? (this.opts.fallbackAfterWelcome ?? 8) : (this.opts.fallbackAfter ?? 3);
    if (count >= limit) {
      this._stopSocket();
      this._startLongPoll();
    }
  }

  _stopSocket() {
    if (this._sock) { const s = this._sock; this._sock = null; s.close(); }
    this._probing = false;
  }

  _startLongPoll() {
    if (this._closed) return;
    this._setTransport('longpoll');
    this._lpWelcomed = false;
    if (!this._lp) this._lp = new LongPoll(this);
    this._lp.start();
    if (this.mode === 'auto' && typeof globalThis.WebSocket === 'function') this._scheduleProbe();
  }

  _scheduleProbe() {
    clearTimeout(this._probeTimer);
    if (this._closed || this.mode !== 'auto') return;
    this._probeTimer = setTimeout(() => {
      if (this._closed || this.transport !== 'longpoll') return;
      if (typeof globalThis.WebSocket !== 'function') { this._scheduleProbe(); return; }
      this._startSocket(true);
    }, this.opts.wsRetryMs ?? 30000);
  }

  _tokenRejected(viaSocket) {
    // the stored conversation is gone (expired, other server, wiped database): start afresh
    this.token = null;
    this.conversationId = null;
    this.lastSeq = 0;
    for (const k of ['token', 'conversation', 'last_seq']) this.storage.removeItem(this.prefix + k);
    this._lpWelcomed = false;
    this.emit('reset');
    if (viaSocket && this._sock) this._sock.reconnect(0);
  }

  _lpFrames(frames) {
    for (const f of frames) {
      if (!f || typeof f.type !== 'string') continue;
      if (f.type === 'error' && !this._lpWelcomed && this.token &&
          (f.code === 'unauthorized' || f.code === 'not_found' || f.code === 'forbidden')) {
        this._tokenRejected(false);
        continue;
      }
      this._onFrame(f, 'longpoll');
    }
  }

  _onFrame(f, via) {
    // ignore stragglers from a transport we already left
    if (via === 'longpoll' && this.transport !== 'longpoll') return;
    if (via === 'websocket' && this.transport !== 'websocket' && !(this._probing && f.type === 'welcome')) return;
    switch (f.type) {
      case 'welcome': this._onWelcome(f, via); break;
      case 'event': this._onEvent(f); return;   // emits 'frame' itself only for fresh events
      case 'ack':
        if (f.id && this.outbox.has(f.id)) { this.outbox.delete(f.id); this._saveOutbox(); }
        this.emit('ack', f);
        break;
      case 'bot_delta': this.emit('bot_delta', f); break;
      case 'queue': this.emit('queue', f); break;
      case 'typing': this.emit('typing', f); break;
      case 'error': this.emit('error', f); break;
      default: break;
    }
    this.emit('frame', f);
  }

  _onWelcome(f, via) {
    if (via === 'websocket' && this._probing) {
      // the WebSocket works again: leave long polling. Anything the poll already delivered is
      // dropped by seq; anything it had not is replayed by this hello's last_seq.
      this._probing = false;
      clearTimeout(this._probeTimer);
      if (this._lp) this._lp.stop();
      this._setTransport('websocket');
    }
    if (via === 'longpoll') this._lpWelcomed = true;
    if (f.conversation_id && this.conversationId && f.conversation_id !== this.conversationId) {
      this.lastSeq = 0;   // a different conversation: seqs start over
    }
    if (f.token) { this.token = f.token; this.storage.setItem(this.prefix + 'token', f.token); }
    if (f.conversation_id) {
      this.conversationId = f.conversation_id;
      this.storage.setItem(this.prefix + 'conversation', f.conversation_id);
    }
    if (f.state) this.state = f.state;
    this._everWelcomed = true;
    this.emit('welcome', f);
    this._setStatus('connected', { transport: via });
    this._flush();
  }

  _onEvent(f) {
    const seq = Number(f.seq);
    if (!Number.isFinite(seq) || seq <= this.lastSeq) return;   // duplicate: already seen
    this.lastSeq = seq;
    try { this.storage.setItem(this.prefix + 'last_seq', String(seq)); } catch (_) { /* ignore */ }
    if (f.kind === 'message' && f.author && f.author.role === 'customer') {
      // our own message is stored: it needs no resend even if its ack was lost
      for (const key of [f.client_id, f.id]) {
        if (key && this.outbox.has(key)) { this.outbox.delete(key); this._saveOutbox(); }
      }
    }
    this.emit('event', f);
    if (f.kind === 'state' && f.to) {
      this.state = f.to;
      this.emit('state', f.to, f);
    }
    this.emit('frame', f);
  }

  _canSend() {
    if (this.transport === 'websocket') return !!(this._sock && this._sock.connected);
    if (this.transport === 'longpoll') return this._lpWelcomed;
    return false;
  }

  _transmit(frame) {
    if (this.transport === 'websocket') return this._sock ? this._sock.send(frame) : false;
    if (this.transport === 'longpoll' && this._lpWelcomed && this._lp) {
      // one request at a time, so messages reach the server in the order they were written
      const lp = this._lp;
      this._lpChain = (this._lpChain || Promise.resolve())
        .then(() => lp.post(frame))
        .then((frames) => { if (this._lp === lp) this._lpFrames(frames); })
        .catch(() => {
          // the outbox keeps messages; the poll loop re-hellos on failure and flushes again
        });
      return true;
    }
    return false;
  }

  _flush() {
    if (!this._canSend()) return;
    for (const f of this.outbox.values()) this._transmit(f);
    const controls = this._controls;
    this._controls = [];
    for (const f of controls) this._transmit(f);
  }

  /**
   * Send a chat message. Returns its client id; it stays in the outbox (and is resent with
   * the same id after any reconnect) until the server acks it.
   */
  send(text, id = newId()) {
    const frame = { type: 'message', id, text: String(text) };
    this.outbox.set(id, frame);
    this._saveOutbox();
    if (this._canSend()) this._transmit(frame);
    return id;
  }

  /** Ask for a human agent. Queued until connected. */
  requestHuman() { this._control({ type: 'request_human' }); }

  /** Rate the conversation (1..5) once resolved. */
  rate(score, comment) {
    const f = { type: 'rate', score: Math.max(1, Math.min(5, Math.round(Number(score)))) };
    if (comment) f.comment = String(comment);
    this._control(f);
  }

  _control(f) {
    if (this._canSend()) this._transmit(f); else this._controls.push(f);
  }

  /** Tell the agent we are (not) typing. Ephemeral: dropped when offline. */
  typing(on) { if (this._canSend()) this._transmit({ type: 'typing', on: !!on }); }

  /** Send any customer frame (ephemeral: not queued). Returns true if sent. */
  sendFrame(frame) { return this._canSend() ? this._transmit(frame) : false; }

  /** Forget the stored conversation (the next connect starts a new one). */
  forget() { this._tokenRejected(false); this.outbox.clear(); this._saveOutbox(); }

  /** Close all transports for good. */
  close() {
    this._closed = true;
    clearTimeout(this._probeTimer);
    this._stopSocket();
    if (this._lp) this._lp.stop();
    if (globalThis.removeEventListener) {
      globalThis.removeEventListener('online', this._onOnline);
      if (globalThis.document) document.removeEventListener('visibilitychange', this._onVisible);
    }
    this._setStatus('closed');
  }
}

export default WarmlineClient;
