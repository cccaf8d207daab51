// Warmline supervisor queue-pressure dashboard (/supervisor).
import { ReconnectingSocket, wsUrl } from '/static/warmline-client.js';
import { el, fmtDuration, pct, humanize, takeTokenFromUrl, setConn } from '/static/ui.js';

const TOKEN_KEY = 'warmline:supervisor:token';
const HISTORY_KEY = 'warmline:supervisor:history';
const WINDOW_MS = 15 * 60 * 1000;
const STATES = [
  ['bot', '#5b8bd0'], ['confused', '#c98a2e'], ['queued', '#e0a43a'], ['human', '#2f9e6e'], ['resolved', '#a0a7b1'],
];
const $ = (id) => document.getElementById(id);
const ui = {
  signin: $('signin'), form: $('signin-form'), token: $('token'), error: $('signin-error'),
  app: $('app'), conn: $('conn'), updated: $('updated'), signout: $('signout'),
  states: $('states'), statesTotal: $('states-total'), agents: $('agents'), agentsCount: $('agents-count'),
  agentsEmpty: $('agents-empty'), depth: $('chart-depth'), wait: $('chart-wait'),
};
const k = (name) => document.querySelector(`[data-k="${name}"]`);

let sock = null;
let last = null;
let lastAt = 0;
let history = loadHistory();   // [{t, depth, wait}]

function loadHistory() {
  try {
    const h = JSON.parse(sessionStorage.getItem(HISTORY_KEY) || '[]');
    const cut = Date.now() - WINDOW_MS;
    return Array.isArray(h) ? h.filter((p) => p && p.t > cut) : [];
  } catch (_) { return []; }
}
let saveTimer = null;
function saveHistory() {
  if (saveTimer) return;
  saveTimer = setTimeout(() => {
    saveTimer = null;
    try { sessionStorage.setItem(HISTORY_KEY, JSON.stringify(history)); } catch (_) { /* ignore */ }
  }, 2000);
}

// ---------------------------------------------------------------- sign in
function showSignin(msg) {
  ui.app.hidden = true;
  ui.signout.hidden = true;
  ui.signin.hidden = false;
  ui.error.textContent = msg || '';
  setConn(ui.conn, 'idle');
  ui.token.focus();
}
ui.form.addEventListener('submit', (e) => {
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
  showSignin('');
});

function start(token) {
  ui.signin.hidden = true;
  ui.app.hidden = false;
  ui.signout.hidden = false;
  if (sock) sock.close();
  sock = new ReconnectingSocket(wsUrl('/v1/ws/supervisor'), () => ({ type: 'hello', token }));
  sock.on('status', (s) => setConn(ui.conn, s));
  sock.on('fatal', () => { localStorage.removeItem(TOKEN_KEY); showSignin('That token was not accepted.'); });
  sock.on('frame', (f) => {
    if (f.type === 'stats') onStats(f);
    else if (f.type === 'welcome' && f.stats) onStats(f.stats);
    else if (f.type === 'error' && f.code === 'unauthorized' && !sock.welcomed) {
      sock.close(); localStorage.removeItem(TOKEN_KEY); showSignin('That token was not accepted.');
    }
  });
  sock.connect();
  requestAnimationFrame(draw);
}

// ---------------------------------------------------------------- stats
function num(x) { const v = Number(x); return Number.isFinite(v) ? v : 0; }

function onStats(s) {
  last = s;
  lastAt = Date.now();
  const t = Date.now();
  const point = { t, depth: num(s.queue_depth), wait: num(s.longest_wait_s) };
  const prev = history[history.length - 1];
  if (prev && t - prev.t < 1000 && prev.depth === point.depth) history[history.length - 1] = point;
  else history.push(point);
  const cut = t - WINDOW_MS;
  while (history.length && history[0].t < cut) history.shift();
  saveHistory();
  render(s);
  scheduleDraw();
}

function render(s) {
  k('queue_depth').textContent = String(num(s.queue_depth));
  k('longest_wait').textContent = fmtDuration(num(s.longest_wait_s));
  $('tile-wait').classList.toggle('alert', num(s.longest_wait_s) > 120);
  const a = s.agents || {};
  k('agents_online').textContent = String(num(a.online));
  k('agents_hint').textContent = `online · ${num(a.away)} away · ${num(a.offline)} offline`;
  const cap = s.capacity || {};
  const total = num(cap.total), used = num(cap.used);
  k('capacity').textContent = `${used} / ${total}`;
  k('capacity_meter').style.width = total ? `${Math.min(100, (used / total) * 100)}%` : '0%';
  k('handoff_rate').textContent = pct(s.handoff_rate);
  k('bot_resolution_rate').textContent = pct(s.bot_resolution_rate);
  const sla = s.sla_breaches;
  k('sla_breaches').textContent = sla == null ? '–' : String(num(sla));
  $('tile-sla').classList.toggle('alert', num(sla) > 0);
  if (s.rating_avg != null && Number.isFinite(Number(s.rating_avg))) {
    $('tile-rating').hidden = false;
    k('rating_avg').textContent = Number(s.rating_avg).toFixed(1);
  }

  // states bars
  const st = s.states || {};
  const max = Math.max(1, ...STATES.map(([n]) => num(st[n])));
  const sum = STATES.reduce((acc, [n]) => acc + num(st[n]), 0);
  ui.statesTotal.textContent = String(sum);
  ui.states.textContent = '';
  for (const [name, color] of STATES) {
    const v = num(st[name]);
    const fill = el('div', { class: 'fill' });
    fill.style.width = `${(v / max) * 100}%`;
    fill.style.background = color;
    ui.states.appendChild(el('div', { class: 'bar', dataset: { state: name } }, [
      el('span', null, humanize(name)),
      el('div', { class: 'track', role: 'presentation' }, fill),
      el('span', { class: 'n' }, String(v)),
    ]));
  }

  // agents table
  const list = Array.isArray(s.agent_list) ? s.agent_list : null;
  if (list) {
    ui.agents.textContent = '';
    const order = { online: 0, away: 1, offline: 2 };
    const sorted = [...list].sort((x, y) => (order[x.status] ?? 3) - (order[y.status] ?? 3) || String(x.name).localeCompare(String(y.name)));
    for (const ag of sorted) {
      const load = num(ag.load), capa = num(ag.capacity);
      const fill = el('div', { class: 'fill' + (capa && load >= capa ? ' full' : '') });
      fill.style.width = capa ? `${Math.min(100, (load / capa) * 100)}%` : '0%';
      ui.agents.appendChild(el('tr', null, [
        el('td', null, ag.name || ag.id || '—'),
        el('td', null, [el('span', { class: `status-dot ${ag.status || ''}`, 'aria-hidden': 'true' }), humanize(ag.status || 'unknown')]),
        el('td', null, el('div', { class: 'load' }, [el('div', { class: 'track' }, fill), el('span', null, `${load} / ${capa}`)])),
      ]));
    }
    ui.agentsCount.textContent = String(list.length);
    ui.agentsEmpty.hidden = list.length > 0;
  }
}

setInterval(() => {
  if (!lastAt) return;
  const ago = Math.round((Date.now() - lastAt) / 1000);
  ui.updated.textContent = ago < 2 ? 'Live' : `Updated ${ago}s ago`;
}, 1000);

// ---------------------------------------------------------------- charts
let drawQueued = false;
function scheduleDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; draw(); });
}
setInterval(scheduleDraw, 1000);   // the window scrolls even when nothing changes
window.addEventListener('resize', scheduleDraw);

/** A maximum with 4 round ticks: 4, 8, 20, 40, 80, 200… */
function niceMax(v, min) {
  const m = Math.max(min, v) / 4;
  const p = Math.pow(10, Math.floor(Math.log10(m)));
  for (const f of [1, 2, 5, 10]) if (f * p >= m) return 4 * f * p;
  return 40 * p;
}
function niceWaitMax(v) {
  const steps = [60, 120, 240, 480, 1200, 2400, 3600, 7200, 14400, 28800];
  for (const s of steps) if (v <= s) return s;
  return niceMax(v, 60);
}
function fmtAxisWait(s) {
  if (s === 0) return '0';
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${+(s / 60).toFixed(1)}m`;
  return `${+(s / 3600).toFixed(1)}h`;
}

function draw() {
  if (ui.app.hidden) return;
  drawChart(ui.depth, 'depth', { color: '#2f6f5e', fill: 'rgba(47,111,94,.12)', max: (v) => niceMax(v, 4), fmt: (v) => String(Math.round(v)) });
  drawChart(ui.wait, 'wait', { color: '#b7791f', fill: 'rgba(224,164,58,.14)', max: niceWaitMax, fmt: fmtAxisWait });
}

function drawChart(canvas, key, o) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 44, r: 14, t: 12, b: 24 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const now = Date.now();
  const t0 = now - WINDOW_MS;
  const pts = history.filter((p) => p.t >= t0 - 60000);
  const vmax = o.max(Math.max(0, ...pts.map((p) => p[key])));
  const x = (t) => pad.l + ((t - t0) / WINDOW_MS) * pw;
  const y = (v) => pad.t + ph - (v / vmax) * ph;

  ctx.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
  ctx.textBaseline = 'middle';
  // grid + y labels
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4;
    const yy = Math.round(y(v)) + 0.5;
    ctx.strokeStyle = i === 0 ? '#cfd5dc' : '#eceff2';
    ctx.lineWidth = 1;
    ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(w - pad.r, yy); ctx.stroke();
    ctx.fillStyle = '#6a7280';
    ctx.textAlign = 'right';
    ctx.fillText(o.fmt(v), pad.l - 8, yy);
  }
  // x labels every 5 minutes
  ctx.textAlign = 'center';
  ctx.textBaseline = 'top';
  for (let m = 15; m >= 0; m -= 5) {
    const xx = x(now - m * 60000);
    ctx.fillStyle = '#6a7280';
    ctx.fillText(m === 0 ? 'now' : `−${m} min`, Math.min(w - pad.r - 12, Math.max(pad.l + 16, xx)), h - pad.b + 7);
  }
  if (!pts.length) {
    ctx.fillStyle = '#9aa1ab';
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText('waiting for data…', pad.l + pw / 2, pad.t + ph / 2);
    return;
  }
  ctx.save();
  ctx.beginPath();
  ctx.rect(pad.l, pad.t - 2, pw + 2, ph + 4);
  ctx.clip();
  // line: straight between samples, flat from the last one to now
  const line = pts.map((p) => [x(p.t), y(p[key])]);
  line.push([x(now), y(pts[pts.length - 1][key])]);
  ctx.beginPath();
  line.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
  ctx.lineTo(line[line.length - 1][0], y(0));
  ctx.lineTo(line[0][0], y(0));
  ctx.closePath();
  ctx.fillStyle = o.fill;
  ctx.fill();
  ctx.beginPath();
  line.forEach(([px, py], i) => (i ? ctx.lineTo(px, py) : ctx.moveTo(px, py)));
  ctx.strokeStyle = o.color;
  ctx.lineWidth = 2;
  ctx.lineJoin = 'round';
  ctx.stroke();
  ctx.restore();
  // current value
  const [lx, ly] = line[line.length - 1];
  ctx.beginPath();
  ctx.arc(lx, ly, 3.5, 0, Math.PI * 2);
  ctx.fillStyle = o.color;
  ctx.fill();
  canvas.dataset.points = String(pts.length);
  canvas.dataset.last = String(pts[pts.length - 1][key]);
}

// ---------------------------------------------------------------- boot
const token = takeTokenFromUrl(TOKEN_KEY);
if (token) start(token); else showSignin('');
window.__warmlineSupervisor = { get history() { return history; }, get last() { return last; }, onStats };
