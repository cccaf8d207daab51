// Warmline agent live-dispatch dashboard (/agent).
import { ReconnectingSocket, wsUrl, newId } from '/static/warmline-client.js';
import { el, link, fmtDuration, fmtTime, humanize, takeTokenFromUrl, toast, setConn } from '/static/ui.js';

const TOKEN_KEY = 'warmline:agent:token';
const PRESENCE_KEY = 'warmline:agent:presence';
const ALERTS_KEY = 'warmline:agent:alerts';
const $ = (id) => document.getElementById(id);

const ui = {
  signin: $('signin'), signinForm: $('signin-form'), token: $('token'), signinError: $('signin-error'),
  app: $('app'), controls: $('controls'), me: $('me'), presence: $('presence'), capacity: $('capacity'),
  alerts: $('alerts'), signout: $('signout'), conn: $('conn'),
  queue: $('queue'), queueCount: $('queue-count'), queueEmpty: $('queue-empty'),
  mine: $('mine'), mineCount: $('mine-count'), mineEmpty: $('mine-empty'),
  convoEmpty: $('convo-empty'), convo: $('convo'), convoTitle: $('convo-title'), convoState: $('convo-state'),
  transcript: $('transcript'), typing: $('typing'), composer: $('composer'), reply: $('reply'),
  btnResolve: $('btn-resolve'), btnRequeue: $('btn-requeue'), btnTransfer: $('btn-transfer'),
  context: $('context'),
  dlgRequeue: $('dlg-requeue'), requeueReason: $('requeue-reason'),
  dlgTransfer: $('dlg-transfer'), transferSelect: $('transfer-select'), transferId: $('transfer-id'),
};

let sock = null;
let me = null;                 // {id, name, tenant}
let agents = [];               // [{id, name, status}]
let queue = [];                // [{conversation_id, waiting_s, priority, reason, preview, _at}]
const convos = new Map();      // conversation id -> convo
let activeId = null;
const outbox = new Map();      // client id -> message frame
const refs = new Map();        // ref -> {action, conversation_id}
let myTypingFor = null, myTypingTimer = null;
let audio = null;

function convo(id) {
  let c = convos.get(id);
  if (!c) {
    c = { id, events: [], seqs: new Set(), lastSeq: 0, unread: 0, context: null, state: 'human',
          ended: false, pending: new Map(), customer: null, typingTimer: null, typing: false, mine: true };
    convos.set(id, c);
  }
  return c;
}

// ---------------------------------------------------------------- sign in
function showSignin(message) {
  ui.app.hidden = true;
  ui.controls.hidden = true;
  ui.signin.hidden = false;
  ui.signinError.textContent = message || '';
  setConn(ui.conn, 'idle');
  ui.token.focus();
}

ui.signinForm.addEventListener('submit', (e) => {
  e.preventDefault();
  const t = ui.token.value.trim();
  if (!t) return;
  localStorage.setItem(TOKEN_KEY, t);
  start(t);
});

ui.signout.addEventListener('click', () => {
  if (sock) sock.close();
  sock = null;
  localStorage.removeItem(TOKEN_KEY);
  convos.clear(); queue = []; activeId = null;
  renderQueue(); renderMine(); renderActive();
  showSignin('');
});

function start(token) {
  ui.signin.hidden = true;
  ui.app.hidden = false;
  if (sock) sock.close();
  sock = new ReconnectingSocket(wsUrl('/v1/ws/agent'), () => ({ type: 'hello', token }), {});
  sock.on('status', (s) => setConn(ui.conn, s));
  sock.on('welcome', onWelcome);
  sock.on('frame', onFrame);
  sock.on('fatal', () => { localStorage.removeItem(TOKEN_KEY); showSignin('That token was not accepted.'); });
  sock.connect();
}

// ---------------------------------------------------------------- frames
function onWelcome(w) {
  me = w.agent || me || {};
  ui.me.textContent = me.name ? `${me.name}` : '';
  ui.controls.hidden = false;
  if (Array.isArray(w.agents)) setAgents(w.agents);
  if (Array.isArray(w.queue)) setQueue(w.queue);
  // presence: what this agent last chose, else what the server says, else online
  let p = null;
  try { p = JSON.parse(localStorage.getItem(PRESENCE_KEY) || 'null'); } catch (_) { p = null; }
  const listed = Array.isArray(w.agents) ? w.agents.find((a) => a && a.id === me.id) : null;
  const known = (listed && listed.status) || me.status;
  const status = (p && p.status) || (known === 'away' ? 'away' : 'online');
  const capacity = p && Number.isFinite(p.capacity) ? p.capacity : (Number(me.capacity) || Number(ui.capacity.value) || 3);
  ui.presence.value = status === 'away' ? 'away' : 'online';
  ui.capacity.value = String(capacity);
  sendPresence(false);
  // conversations assigned to me: subscribe to each from what we already have
  const assigned = Array.isArray(w.assigned) ? w.assigned : [];
  const ids = new Set();
  for (const a of assigned) {
    const id = typeof a === 'string' ? a : a && a.conversation_id;
    if (!id) continue;
    ids.add(id);
    const c = convo(id);
    c.ended = false; c.mine = true;
    if (a && typeof a === 'object' && a.context) applyContext(c, a.context);
  }
  for (const c of convos.values()) if (!ids.has(c.id) && !c.ended) endConvo(c, 'No longer assigned to you');
  for (const id of ids) subscribe(id);
  // messages written while disconnected
  for (const f of outbox.values()) sock.send(f);
  renderMine();
  if (!activeId && ids.size) select(ids.values().next().value);
  else renderActive();
}

function onFrame(f) {
  switch (f.type) {
    case 'queue': if (Array.isArray(f.items)) setQueue(f.items); break;
    case 'assigned': onAssigned(f); break;
    case 'event': onEvent(f); break;
    case 'ack': onAck(f); break;
    case 'typing': onTyping(f); break;
    case 'agents': case 'agent_list': setAgents(f.agents || f.items || []); break;
    case 'unassigned': case 'released': {
      const c = convos.get(f.conversation_id);
      if (c) endConvo(c, f.reason ? humanize(f.reason) : 'No longer assigned to you');
      break;
    }
    case 'error': onError(f); break;
    default: break;
  }
}

function onError(f) {
  const r = f.ref && refs.get(f.ref);
  if (r) refs.delete(f.ref);
  if (f.code === 'unauthorized' && !(sock && sock.welcomed)) {
    sock.close();
    localStorage.removeItem(TOKEN_KEY);
    showSignin('That token was not accepted.');
    return;
  }
  if (f.code === 'conflict' && r && r.action === 'claim') {
    toast('Someone else already took that conversation.', 'error');
    queue = queue.filter((q) => q.conversation_id !== r.conversation_id);
    renderQueue();
    return;
  }
  const what = r ? `${humanize(r.action)} failed: ` : '';
  toast(what + (f.message || humanize(f.code) || 'error'), 'error');
}

function setAgents(list) {
  agents = list.filter(Boolean);
  renderTransferOptions();
}

function setQueue(items) {
  const now = Date.now();
  queue = items.filter((q) => q && q.conversation_id).map((q) => ({ ...q, _at: now }));
  renderQueue();
}

function onAssigned(f) {
  const id = f.conversation_id;
  if (!id) return;
  const c = convo(id);
  const isNew = c.ended || !c.mine || !c.context;
  c.ended = false; c.mine = true; c.state = 'human';
  if (f.context) applyContext(c, f.context);
  queue = queue.filter((q) => q.conversation_id !== id);
  renderQueue();
  subscribe(id);
  renderMine();
  if (isNew) {
    alertNew(c);
    if (!activeId || (convos.get(activeId) || {}).ended) select(id);
  }
  if (activeId === id) renderActive();
}

function applyContext(c, ctx) {
  c.context = ctx;
  if (Array.isArray(ctx.transcript)) for (const ev of ctx.transcript) addEvent(c, ev, true);
}

function subscribe(id) {
  const c = convo(id);
  if (sock) sock.send({ type: 'subscribe', conversation_id: id, last_seq: c.lastSeq });
}

/** Add one persistent event to a conversation; false if it was a duplicate. */
function addEvent(c, ev, quiet) {
  const seq = Number(ev.seq);
  if (!Number.isFinite(seq) || c.seqs.has(seq)) return false;
  c.seqs.add(seq);
  let i = c.events.length;
  while (i > 0 && Number(c.events[i - 1].seq) > seq) i--;
  c.events.splice(i, 0, ev);
  if (seq > c.lastSeq) c.lastSeq = seq;
  const a = ev.author || {};
  if (ev.kind === 'message') {
    if (a.role === 'customer' && a.name && !c.customer) c.customer = a.name;
    if (a.role === 'agent' && me && a.id === me.id) {
      // my own message landed: drop its pending copy
      if (ev.client_id) outbox.delete(ev.client_id);
      if (ev.client_id && c.pending.has(ev.client_id)) c.pending.delete(ev.client_id);
      else if (ev.id && c.pending.has(ev.id)) c.pending.delete(ev.id);
      else for (const [cid, p] of c.pending) if (p.seq === seq || (!p.seq && p.text === ev.text)) { c.pending.delete(cid); break; }
    }
    if (!quiet && a.role === 'customer' && (c.id !== activeId || document.hidden)) c.unread += 1;
    if (a.role === 'customer') { c.typing = false; }
  }
  if (ev.kind === 'state') {
    c.state = ev.to;
    const owner = ev.agent && (typeof ev.agent === 'string' ? ev.agent : ev.agent.id);
    if (ev.to === 'human' && owner && me && owner !== me.id && owner !== me.name) {
      if (!quiet) endConvo(c, `Transferred to ${agentLabel(ev.agent)}`, true);
    } else if (ev.to === 'resolved' || ev.to === 'queued' || ev.to === 'bot') {
      if (!quiet || ev.to === 'resolved') endConvo(c, ev.to === 'resolved' ? 'Resolved' : 'Back in the queue', true);
    } else if (ev.to === 'human' && !quiet) {
      c.ended = false;
    }
  }
  return true;
}

function agentLabel(a) {
  if (!a) return 'another agent';
  if (typeof a === 'string') { const x = agents.find((g) => g.id === a); return x ? x.name || a : a; }
  return a.name || a.id || 'another agent';
}

function endConvo(c, why, fromEvent) {
  c.ended = true;
  c.endReason = why;
  c.typing = false;
  if (!fromEvent) renderMine();
}

function onEvent(ev) {
  const id = ev.conversation_id;
  if (!id) return;
  const c = convo(id);
  if (!addEvent(c, ev, false)) return;
  renderMine();
  if (id === activeId) {
    appendEvent(c, ev);
    renderHeader(c);
    renderPending(c);
  }
  updateTitle();
}

function onAck(f) {
  const frame = outbox.get(f.id);
  if (!frame) return;
  outbox.delete(f.id);
  const c = convos.get(frame.conversation_id);
  if (!c) return;
  const p = c.pending.get(f.id);
  if (p) {
    if (c.seqs.has(Number(f.seq))) { c.pending.delete(f.id); if (c.id === activeId) renderPending(c); }
    else p.seq = Number(f.seq);
  }
}

function onTyping(f) {
  if (f.role === 'agent') return;
  const c = convos.get(f.conversation_id);
  if (!c) return;
  c.typing = !!f.on;
  clearTimeout(c.typingTimer);
  if (c.typing) c.typingTimer = setTimeout(() => { c.typing = false; if (c.id === activeId) renderTyping(c); }, 8000);
  if (c.id === activeId) renderTyping(c);
}

// ---------------------------------------------------------------- actions
function send(frame, action) {
  if (action) {
    const ref = 'r' + Math.random().toString(36).slice(2, 12);
    refs.set(ref, { action, conversation_id: frame.conversation_id });
    if (refs.size > 200) refs.delete(refs.keys().next().value);
    frame.ref = ref;
  }
  if (!sock || !sock.send(frame)) {
    toast('Not connected: try again in a moment.', 'error');
    return false;
  }
  return true;
}

function sendPresence(remember) {
  const status = ui.presence.value;
  const capacity = Math.max(0, Math.min(50, parseInt(ui.capacity.value, 10) || 0));
  if (remember) localStorage.setItem(PRESENCE_KEY, JSON.stringify({ status, capacity }));
  if (sock) sock.send({ type: 'presence', status, capacity });
}
ui.presence.addEventListener('change', () => sendPresence(true));
ui.capacity.addEventListener('change', () => sendPresence(true));

function claim(id) {
  send({ type: 'claim', conversation_id: id }, 'claim');
}

function sendReply() {
  const c = convos.get(activeId);
  const text = ui.reply.value.trim();
  if (!c || !text || c.ended) return;
  const id = newId();
  const frame = { type: 'message', conversation_id: c.id, id, text };
  outbox.set(id, frame);
  c.pending.set(id, { text, seq: null });
  if (sock) sock.send(frame);    // kept in the outbox and resent after a reconnect until acked
  ui.reply.value = '';
  autosize();
  stopTyping();
  renderPending(c);
  scrollDown(true);
}

ui.composer.addEventListener('submit', (e) => { e.preventDefault(); sendReply(); });
ui.reply.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendReply(); }
});
ui.reply.addEventListener('input', () => {
  autosize();
  if (!activeId) return;
  if (!ui.reply.value) { stopTyping(); return; }
  if (myTypingFor !== activeId) {
    stopTyping();
    myTypingFor = activeId;
    if (sock) sock.send({ type: 'typing', conversation_id: activeId, on: true });
  }
  clearTimeout(myTypingTimer);
  myTypingTimer = setTimeout(stopTyping, 3000);
});

function stopTyping() {
  clearTimeout(myTypingTimer);
  if (myTypingFor && sock) sock.send({ type: 'typing', conversation_id: myTypingFor, on: false });
  myTypingFor = null;
}

function autosize() {
  ui.reply.style.height = 'auto';
  ui.reply.style.height = Math.min(160, ui.reply.scrollHeight + 2) + 'px';
}

ui.btnResolve.addEventListener('click', () => {
  const c = convos.get(activeId);
  if (!c) return;
  if (c.ended) { dismiss(c); return; }
  send({ type: 'resolve', conversation_id: c.id }, 'resolve');
});

ui.btnRequeue.addEventListener('click', () => {
  if (!activeId) return;
  ui.requeueReason.value = '';
  ui.dlgRequeue.returnValue = '';
  ui.dlgRequeue.showModal();
});
ui.dlgRequeue.addEventListener('close', () => {
  if (ui.dlgRequeue.returnValue !== 'ok' || !activeId) return;
  const reason = ui.requeueReason.value.trim() || 'requeued by agent';
  send({ type: 'requeue', conversation_id: activeId, reason }, 'requeue');
});

ui.btnTransfer.addEventListener('click', () => {
  if (!activeId) return;
  renderTransferOptions();
  ui.transferId.value = '';
  ui.dlgTransfer.returnValue = '';
  ui.dlgTransfer.showModal();
});
ui.dlgTransfer.addEventListener('close', () => {
  if (ui.dlgTransfer.returnValue !== 'ok' || !activeId) return;
  const to = ui.transferId.value.trim() || ui.transferSelect.value;
  if (!to) { toast('Pick an agent to transfer to.', 'error'); return; }
  send({ type: 'transfer', conversation_id: activeId, to_agent_id: to }, 'transfer');
});

function renderTransferOptions() {
  const sel = ui.transferSelect;
  const cur = sel.value;
  sel.textContent = '';
  const others = agents.filter((a) => !me || a.id !== me.id);
  if (!others.length) sel.appendChild(el('option', { value: '' }, 'No other agents listed'));
  for (const a of others) {
    const label = `${a.name || a.id}${a.status ? ' · ' + a.status : ''}`;
    sel.appendChild(el('option', { value: a.id }, label));
  }
  if (cur) sel.value = cur;
}

function dismiss(c) {
  convos.delete(c.id);
  if (activeId === c.id) activeId = null;
  renderMine();
  const next = [...convos.values()].find((x) => !x.ended);
  if (next) select(next.id); else renderActive();
}

// ---------------------------------------------------------------- alerts
function ensureAudio() {
  if (!audio) {
    const AC = window.AudioContext || window.webkitAudioContext;
    if (AC) audio = new AC();
  }
  if (audio && audio.state === 'suspended') audio.resume().catch(() => {});
}

function beep() {
  if (!audio || audio.state !== 'running') return;
  const t = audio.currentTime;
  [[880, 0], [660, 0.16]].forEach(([freq, at]) => {
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.type = 'sine';
    o.frequency.value = freq;
    g.gain.setValueAtTime(0.0001, t + at);
    g.gain.exponentialRampToValueAtTime(0.18, t + at + 0.02);
    g.gain.exponentialRampToValueAtTime(0.0001, t + at + 0.22);
    o.connect(g).connect(audio.destination);
    o.start(t + at);
    o.stop(t + at + 0.25);
  });
}

function alertNew(c) {
  const who = convoTitle(c);
  const reason = c.context && c.context.reason ? ` (${humanize(c.context.reason)})` : '';
  toast(`New conversation: ${who}${reason}`);
  if (alertsOn()) {
    beep();
    if ('Notification' in window && Notification.permission === 'granted' && (document.hidden || !document.hasFocus())) {
      try {
        const n = new Notification('Warmline: new conversation', {
          body: `${who}${reason}` + (c.context && c.context.summary ? `\n${c.context.summary}` : ''),
          tag: 'warmline-' + c.id,
        });
        n.onclick = () => { window.focus(); select(c.id); n.close(); };
      } catch (_) { /* some browsers only allow notifications from a service worker */ }
    }
  }
}

// Alerts are on unless the agent turns them off. Sound needs one user gesture to unlock the
// AudioContext; desktop notifications need permission, asked for on a click of the button.
function alertsOn() { return localStorage.getItem(ALERTS_KEY) !== '0'; }

function renderAlerts() {
  const on = alertsOn();
  const perm = 'Notification' in window ? Notification.permission : 'unsupported';
  let label = 'Alerts off';
  if (on) label = perm === 'default' ? 'Enable notifications' : 'Alerts on';
  ui.alerts.textContent = label;
  ui.alerts.setAttribute('aria-pressed', on ? 'true' : 'false');
  ui.alerts.title = on ? 'Sound and desktop notification on new assignments (click to turn off)'
    : 'Alerts are off (click to turn on)';
}

ui.alerts.addEventListener('click', async () => {
  const perm = 'Notification' in window ? Notification.permission : 'unsupported';
  if (alertsOn() && perm !== 'default') {
    localStorage.setItem(ALERTS_KEY, '0');
    renderAlerts();
    return;
  }
  localStorage.setItem(ALERTS_KEY, '1');
  ensureAudio();
  beep();
  if (perm === 'default') {
    try { await Notification.requestPermission(); } catch (_) { /* ignore */ }
  }
  renderAlerts();
});
// audio may only start after a user gesture: unlock it on the first one
const unlock = () => { if (alertsOn()) ensureAudio(); };
document.addEventListener('pointerdown', unlock, { once: true });
document.addEventListener('keydown', unlock, { once: true });

// ---------------------------------------------------------------- rendering
function waitingNow(q) {
  return (Number(q.waiting_s) || 0) + (Date.now() - q._at) / 1000;
}

function renderQueue() {
  ui.queue.textContent = '';
  const items = [...queue].sort((a, b) => (Number(b.priority) || 0) - (Number(a.priority) || 0) || waitingNow(b) - waitingNow(a));
  for (const q of items) {
    const w = waitingNow(q);
    const prio = Number(q.priority) || 0;
    const li = el('li', { class: 'qitem', dataset: { id: q.conversation_id } }, [
      el('div', { class: 'meta' }, [
        el('span', { class: 'wait' + (w > 120 ? ' long' : ''), title: 'Waiting' }, fmtDuration(w)),
        prio > 0 ? el('span', { class: 'badge high' }, `P${prio}`) : null,
        el('span', { class: 'reason' }, humanize(q.reason) || 'Queued'),
      ]),
      el('button', { class: 'btn small primary', type: 'button', 'aria-label': `Claim conversation ${q.preview || q.conversation_id}`,
        onclick: () => claim(q.conversation_id) }, 'Claim'),
      el('div', { class: 'preview' }, q.preview || '—'),
    ]);
    ui.queue.appendChild(li);
  }
  ui.queueCount.textContent = String(queue.length);
  ui.queueCount.classList.toggle('hot', queue.length > 0);
  ui.queueEmpty.hidden = queue.length > 0;
}

setInterval(() => {
  for (const li of ui.queue.children) {
    const q = queue.find((x) => x.conversation_id === li.dataset.id);
    const span = li.querySelector('.wait');
    if (q && span) {
      const w = waitingNow(q);
      span.textContent = fmtDuration(w);
      span.classList.toggle('long', w > 120);
    }
  }
}, 1000);

function convoTitle(c) {
  const short = c.id.replace(/^c_/, '').slice(0, 5);
  return c.customer && c.customer !== 'Customer' ? c.customer : `Customer #${short}`;
}

function lastText(c) {
  for (let i = c.events.length - 1; i >= 0; i--) {
    const e = c.events[i];
    if (e.kind === 'message') return `${e.author && e.author.role === 'agent' ? 'You: ' : ''}${e.text || ''}`;
  }
  return c.context && c.context.summary ? c.context.summary : '';
}

function renderMine() {
  ui.mine.textContent = '';
  const list = [...convos.values()].sort((a, b) => Number(a.ended) - Number(b.ended));
  for (const c of list) {
    const btn = el('button', {
      class: 'citem' + (c.ended ? ' ended' : ''), type: 'button', 'aria-current': c.id === activeId ? 'true' : 'false',
      dataset: { id: c.id }, onclick: () => select(c.id),
    }, [
      el('span', { class: 'title' }, convoTitle(c)),
      c.unread ? el('span', { class: 'unread', 'aria-label': `${c.unread} unread` }, String(c.unread))
        : el('span', { class: 'badge ' + (c.ended ? 'resolved' : c.state) }, c.ended ? (c.endReason || 'Ended') : humanize(c.state)),
      el('span', { class: 'last' }, lastText(c)),
    ]);
    ui.mine.appendChild(el('li', null, btn));
  }
  const open = list.filter((c) => !c.ended).length;
  ui.mineCount.textContent = String(open);
  ui.mineEmpty.hidden = convos.size > 0;
  updateTitle();
}

function updateTitle() {
  const n = [...convos.values()].reduce((s, c) => s + c.unread, 0);
  document.title = (n ? `(${n}) ` : '') + 'Warmline · Agent';
}

function select(id) {
  if (activeId !== id) stopTyping();
  activeId = id;
  const c = convos.get(id);
  if (c) c.unread = 0;
  renderMine();
  renderActive();
  if (c && !c.ended) ui.reply.focus();
}

function renderActive() {
  const c = activeId && convos.get(activeId);
  ui.convoEmpty.hidden = !!c;
  ui.convo.hidden = !c;
  if (!c) { renderContext(null); return; }
  renderHeader(c);
  ui.transcript.textContent = '';
  for (const ev of c.events) appendEvent(c, ev, true);
  renderPending(c);
  renderTyping(c);
  renderContext(c);
  scrollDown(true);
}

function renderHeader(c) {
  ui.convoTitle.textContent = convoTitle(c);
  ui.convoState.className = 'badge ' + (c.ended ? 'resolved' : c.state);
  ui.convoState.textContent = c.ended ? (c.endReason || 'Ended') : humanize(c.state);
  ui.btnRequeue.hidden = c.ended;
  ui.btnTransfer.hidden = c.ended;
  ui.btnResolve.textContent = c.ended ? 'Close' : 'Resolve';
  ui.reply.disabled = c.ended;
  ui.composer.querySelector('button').disabled = c.ended;
  ui.reply.placeholder = c.ended ? 'This conversation is no longer yours.' : 'Write a reply… (Enter to send, Shift+Enter for a new line)';
  const p = ui.mine.querySelector(`[data-id="${CSS.escape(c.id)}"]`);
  if (p) p.setAttribute('aria-current', 'true');
}

function atBottom() { const t = ui.transcript; return t.scrollHeight - t.scrollTop - t.clientHeight < 80; }
function scrollDown(force) { if (force || atBottom()) ui.transcript.scrollTop = ui.transcript.scrollHeight; }

function appendEvent(c, ev, bulk) {
  const stick = bulk || atBottom();
  let node;
  if (ev.kind === 'message') {
    const a = ev.author || {};
    const role = a.role || 'system';
    if (role === 'system') node = el('div', { class: 'sys' }, ev.text || '');
    else {
      const mine = role === 'agent' && me && a.id === me.id;
      const who = role === 'customer' ? (a.name || 'Customer') : role === 'bot' ? (a.name || 'Bot') : (mine ? 'You' : (a.name || 'Agent'));
      node = el('div', { class: `msg ${role}`, dataset: { seq: ev.seq } }, [
        el('span', { class: 'who' }, `${who} · ${fmtTime(ev.ts)}`),
        el('div', { class: 'bubble' }, ev.text || ''),
        Array.isArray(ev.sources) && ev.sources.length
          ? el('div', { class: 'srcs' }, ['Sources: ', ...ev.sources.flatMap((s, i) => [i ? ', ' : '', link(s.title || s.url || s.doc_id || 'source', s.url)])])
          : null,
      ]);
    }
  } else if (ev.kind === 'state') {
    let text = `${humanize(ev.from)} → ${humanize(ev.to)}`;
    if (ev.reason) text += ` · ${humanize(ev.reason)}`;
    if (ev.details && typeof ev.details.note === 'string' && ev.details.note) text += `: ${ev.details.note}`;
    if (ev.to === 'human' && ev.agent) text += ` · ${agentLabel(ev.agent)}`;
    node = el('div', { class: 'sys', dataset: { seq: ev.seq } }, text);
  } else {
    return;
  }
  // keep seq order even if an older event arrives late
  const later = [...ui.transcript.querySelectorAll('[data-seq]')].find((n) => Number(n.dataset.seq) > Number(ev.seq));
  if (later) ui.transcript.insertBefore(node, later);
  else {
    const firstPending = ui.transcript.querySelector('.pending');
    ui.transcript.insertBefore(node, firstPending);
  }
  if (!bulk) scrollDown(stick);
}

function renderPending(c) {
  for (const n of ui.transcript.querySelectorAll('.pending')) n.remove();
  for (const [cid, p] of c.pending) {
    ui.transcript.appendChild(el('div', { class: 'msg agent pending', dataset: { cid } }, [
      el('span', { class: 'who' }, 'You · sending…'),
      el('div', { class: 'bubble' }, p.text),
    ]));
  }
}

function renderTyping(c) {
  ui.typing.textContent = c.typing && !c.ended ? `${c.customer || 'Customer'} is typing…` : '';
}

function renderContext(c) {
  const box = ui.context;
  box.textContent = '';
  const ctx = c && c.context;
  if (!ctx) {
    box.appendChild(el('p', { class: 'empty' }, c ? 'No handoff notes for this conversation.' : 'The bot\'s handoff notes appear here.'));
    return;
  }
  box.appendChild(el('div', { class: 'handoff' }, [
    el('div', { class: 'kv' }, [el('dt', null, 'Why the bot handed off')]),
    el('div', { class: 'reason' }, humanize(ctx.reason) || 'Not given'),
  ]));
  const dl = el('dl', { class: 'kv' });
  if (ctx.summary) dl.append(el('dt', null, 'Summary'), el('dd', null, ctx.summary));
  if (ctx.bot_answer) dl.append(el('dt', null, 'What the bot answered'), el('dd', null, el('blockquote', { class: 'quote' }, ctx.bot_answer)));
  if (Array.isArray(ctx.retrieved) && ctx.retrieved.length) {
    dl.append(el('dt', null, 'What it retrieved'), el('dd', null, el('ul', { class: 'retrieved' },
      ctx.retrieved.map((r) => el('li', null, [
        link(r.title || r.url || r.doc_id || 'document', r.url),
        el('span', { class: 'score', title: 'retrieval score' }, Number.isFinite(Number(r.score)) ? Number(r.score).toFixed(2) : ''),
      ])))));
  }
  dl.append(el('dt', null, 'Conversation'), el('dd', null, c.id));
  box.appendChild(dl);
}

document.addEventListener('visibilitychange', () => {
  if (!document.hidden && activeId) {
    const c = convos.get(activeId);
    if (c && c.unread) { c.unread = 0; renderMine(); }
  }
});
document.addEventListener('keydown', (e) => {
  // Alt+1..9: jump to my Nth conversation
  if (e.altKey && /^[1-9]$/.test(e.key)) {
    const c = [...convos.values()][Number(e.key) - 1];
    if (c) { e.preventDefault(); select(c.id); }
  }
});

// ---------------------------------------------------------------- boot
renderAlerts();
renderQueue();
renderMine();
renderActive();
const token = takeTokenFromUrl(TOKEN_KEY);
if (token) start(token); else showSignin('');
window.__warmlineAgent = { convos, get queue() { return queue; }, get sock() { return sock; } };
