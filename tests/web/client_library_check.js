// Evaluated in Chromium by test_client_library.py: drives warmline-client.js with a fake
// WebSocket and returns what it observed.
async () => {
  const m = await import('/static/warmline-client.js');
  const until = async (cond, ms = 4000) => {
    const end = Date.now() + ms;
    while (!cond()) { if (Date.now() > end) throw new Error('timeout: ' + cond); await new Promise(r => setTimeout(r, 5)); }
  };
  const memory = () => { const s = new Map(); return { getItem: k => s.has(k) ? s.get(k) : null,
    setItem: (k, v) => s.set(k, String(v)), removeItem: k => s.delete(k) }; };
  const sockets = [];
  class FakeWS {
    constructor(url) {
      this.url = url; this.readyState = 0; this.sent = []; sockets.push(this);
      setTimeout(() => { if (this.readyState === 0) { this.readyState = 1; this.onopen && this.onopen(); } }, 0);
    }
    send(d) { this.sent.push(JSON.parse(d)); }
    close() { this.readyState = 3; }
    recv(f) { this.onmessage && this.onmessage({ data: JSON.stringify(f) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose && this.onclose({ code, reason: '' }); }
  }
  const out = {};
  out.backoffMax = [0, 1, 2, 3, 4, 5, 6, 10].map(n => m.backoffDelay(n, 500, 10000, () => 0.999999));
  out.backoffMin = m.backoffDelay(5, 500, 10000, () => 0);

  const storage = memory();
  const welcome = (hb) => ({ type: 'welcome', conversation_id: 'c1', token: 'T1', state: 'bot', last_seq: 0, heartbeat_s: hb });
  const msg = (seq, text) => ({ type: 'event', conversation_id: 'c1', seq, ts: 1, kind: 'message', id: 'm' + seq,
                                author: { role: 'bot', id: 'b', name: 'Bot' }, text });
  const c = new m.WarmlineClient({ tenant: 'acme', storage, WebSocket: FakeWS, baseMs: 10, capMs: 40,
                                   transport: 'websocket' });
  const seen = [];
  c.on('event', e => seen.push(e.seq));
  c.connect();
  await until(() => sockets[0] && sockets[0].sent.length);
  out.hello1 = sockets[0].sent[0];
  sockets[0].recv(welcome(0.2));
  const id = c.send('hello there');
  out.msg1 = sockets[0].sent.find(f => f.type === 'message');
  sockets[0].recv(msg(1, 'a'));
  sockets[0].recv(msg(1, 'a again'));         // duplicate seq: dropped
  sockets[0].drop();                           // network gone before the ack

  await until(() => sockets[1] && sockets[1].sent.length);
  out.hello2 = sockets[1].sent[0];             // resume with token and last seq
  sockets[1].recv(welcome(0.2));
  out.resent = sockets[1].sent.filter(f => f.type === 'message');
  sockets[1].recv(msg(1, 'replayed'));         // replay overlap: dropped
  sockets[1].recv({ type: 'event', conversation_id: 'c1', seq: 2, ts: 1, kind: 'message', id,
                    author: { role: 'customer', id: 'c1', name: 'Customer' }, text: 'hello there' });
  sockets[1].recv({ type: 'ack', id, seq: 2 });
  out.outboxAfterAck = c.outbox.size;

  // heartbeat: pings every heartbeat_s; silence for two intervals = dead socket, reconnect
  const t0 = Date.now();
  await until(() => sockets.length >= 3);
  out.deadAfterMs = Date.now() - t0;
  out.pings = sockets[1].sent.filter(f => f.type === 'ping').length;

  // a draining server: `reconnect` with after_ms
  await until(() => sockets[2].sent.length);
  sockets[2].recv(welcome(15));
  const t1 = Date.now();
  sockets[2].recv({ type: 'reconnect', after_ms: 150 });
  sockets[2].drop(1012);
  await until(() => sockets.length >= 4);
  out.reconnectAfterMs = Date.now() - t1;
  out.hello4 = await (async () => { await until(() => sockets[3].sent.length); return sockets[3].sent[0]; })();
  out.seen = seen;
  out.stored = { token: storage.getItem('warmline:acme:token'), last: storage.getItem('warmline:acme:last_seq'),
                 conversation: storage.getItem('warmline:acme:conversation') };
  c.close();

  // a page reload: a new client on the same storage resumes with the stored token
  const before = sockets.length;
  const again = new m.WarmlineClient({ tenant: 'acme', storage, WebSocket: FakeWS, transport: 'websocket', history: false });
  again.connect();
  await until(() => sockets.length > before && sockets[before].sent.length);
  out.reloadHello = sockets[before].sent[0];
  again.close();

  // WebSocket never opens: long polling after 3 failures in a row
  class DeadWS { constructor() { sockets.push(this); setTimeout(() => this.onclose && this.onclose({ code: 1006 }), 0); }
                 send() {} close() {} }
  const transports = [];
  const lp = new m.WarmlineClient({ tenant: 'other', storage: memory(), WebSocket: DeadWS, baseMs: 5, capMs: 10,
                                    wsRetryMs: 60000 });
  lp.on('transport', t => transports.push(t));
  const n0 = sockets.length;
  lp.connect();
  await until(() => transports.includes('longpoll'));
  out.transports = transports;
  out.wsAttemptsBeforeFallback = sockets.length - n0;
  lp.close();
  return out;
}
