// Small DOM helpers shared by the dashboards. Text always goes through textContent.

/** Create an element: el('div', {class: 'x', title: 'y'}, 'text' | Node | [children]). */
export function el(tag, attrs, children) {
  const n = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') n.className = v;
      else if (k === 'dataset') Object.assign(n.dataset, v);
      else if (k.startsWith('on') && typeof v === 'function') n.addEventListener(k.slice(2), v);
      else if (k === 'text') n.textContent = String(v);
      else n.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(n, children);
  return n;
}

function append(n, c) {
  if (c == null || c === false) return;
  if (Array.isArray(c)) { for (const x of c) append(n, x); return; }
  n.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
}

/** An http(s) URL, or null for anything else (javascript:, data:, garbage). */
export function safeUrl(u) {
  try {
    const url = new URL(String(u), location.href);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch (_) { return null; }
}

/** A link if the URL is safe, else plain text. */
export function link(text, url) {
  const href = url ? safeUrl(url) : null;
  if (!href) return el('span', null, text);
  return el('a', { href, target: '_blank', rel: 'noopener noreferrer' }, text);
}

/** 75 -> "1:15", 3700 -> "1:01:40" */
export function fmtDuration(s) {
  s = Math.max(0, Math.floor(Number(s) || 0));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const mm = h ? String(m).padStart(2, '0') : String(m);
  return (h ? h + ':' : '') + mm + ':' + String(sec).padStart(2, '0');
}

export function fmtTime(ts) {
  const d = ts ? new Date(ts * 1000) : new Date();
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

export function pct(x) {
  const v = Number(x);
  if (!Number.isFinite(v)) return '–';
  return (v <= 1 ? v * 100 : v).toFixed(0) + '%';
}

export function humanize(s) {
  if (!s) return '';
  const t = String(s).replace(/[_-]+/g, ' ').trim();
  return t.charAt(0).toUpperCase() + t.slice(1);
}

/** Take ?token=… from the URL into storage and remove it from the address bar. */
export function takeTokenFromUrl(key) {
  const url = new URL(location.href);
  const t = url.searchParams.get('token');
  if (t) {
    try { localStorage.setItem(key, t); } catch (_) { /* ignore */ }
    url.searchParams.delete('token');
    history.replaceState(null, '', url.pathname + (url.search ? url.search : '') + url.hash);
  }
  try { return localStorage.getItem(key); } catch (_) { return t; }
}

export function toast(text, kind) {
  const box = document.getElementById('toasts');
  if (!box) return;
  const t = el('div', { class: 'toast' + (kind ? ' ' + kind : '') }, text);
  box.appendChild(t);
  setTimeout(() => t.remove(), kind === 'error' ? 6000 : 4000);
}

const CONN_TEXT = {
  idle: 'Not connected', connecting: 'Connecting…', connected: 'Connected',
  reconnecting: 'Reconnecting…', closed: 'Disconnected',
};
export function setConn(node, status) {
  node.dataset.status = status;
  node.textContent = CONN_TEXT[status] || status;
}
