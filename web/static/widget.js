/*
 * Warmline customer chat widget. Embed with one tag:
 *
 *   <script src="https://YOUR-WARMLINE/widget.js" data-tenant="demo" defer></script>
 *
 * Optional attributes: data-title="Support", data-transport="auto|websocket|longpoll",
 * data-open="true" (open on load). The widget lives in a Shadow DOM (nothing leaks into or out
 * of the host page), loads /static/warmline-client.js from the same origin as this script, and
 * exposes window.Warmline = {open(), close(), toggle()}; a `warmline:open` event on window
 * opens it too. An optional window.WarmlineConfig = {transport, wsRetryMs, fallbackAfter,
 * baseMs, capMs}, set before this script runs, tunes the connection. Every piece of message text is rendered with textContent.
 */
(function () {
  'use strict';
  if (window.Warmline && window.Warmline.__loaded) return;

  var script = document.currentScript ||
    document.querySelector('script[src*="widget.js"][data-tenant]');
  if (!script) return;
  var tenant = script.getAttribute('data-tenant') || 'demo';
  var origin = new URL(script.src, location.href).origin;
  var title = script.getAttribute('data-title') || 'Support';
  var transport = script.getAttribute('data-transport') || 'auto';
  var openOnLoad = script.getAttribute('data-open') === 'true';

  var api = { __loaded: true, open: function () { pending = 'open'; }, close: function () {}, toggle: function () { pending = 'open'; } };
  var pending = null;
  window.Warmline = api;
  window.addEventListener('warmline:open', function () { api.open(); });

  var CSS = [
    ':host{all:initial;position:fixed;right:20px;bottom:20px;z-index:2147483000;',
    'font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1d2433;',
    '--wl-accent:#2f6f5e;--wl-accent-ink:#fff;--wl-bg:#fff;--wl-soft:#f3f5f4;--wl-line:#e2e6e4;--wl-muted:#5d6672}',
    '*{box-sizing:border-box}',
    '[hidden]{display:none!important}',
    '.wl-launcher{width:58px;height:58px;border-radius:50%;border:0;background:var(--wl-accent);color:var(--wl-accent-ink);',
    'box-shadow:0 6px 20px rgba(20,40,35,.28);cursor:pointer;display:grid;place-items:center;position:relative;transition:transform .15s}',
    '.wl-launcher:hover{transform:scale(1.05)}',
    '.wl-launcher:focus-visible,.wl-btn:focus-visible,.wl-icon:focus-visible,.wl-star:focus-visible,.wl-input:focus-visible{outline:3px solid #f2b84b;outline-offset:2px}',
    '.wl-launcher svg{width:28px;height:28px}',
    '.wl-badge{position:absolute;top:-4px;right:-4px;min-width:22px;height:22px;padding:0 6px;border-radius:11px;background:#c8412f;color:#fff;font-size:12px;font-weight:700;display:grid;place-items:center}',
    '.wl-panel{position:absolute;right:0;bottom:74px;width:380px;max-width:calc(100vw - 24px);height:min(600px,calc(100vh - 110px));',
    'background:var(--wl-bg);border-radius:16px;box-shadow:0 18px 50px rgba(20,30,40,.25);display:flex;flex-direction:column;overflow:hidden;border:1px solid var(--wl-line)}',
    '.wl-panel[hidden]{display:none}',
    '.wl-head{background:var(--wl-accent);color:var(--wl-accent-ink);padding:14px 12px 14px 18px;display:flex;align-items:center;gap:10px}',
    '.wl-head h2{font-size:16px;margin:0;font-weight:650;flex:1}',
    '.wl-sub{display:block;font-size:12.5px;font-weight:400;opacity:.88;margin-top:1px}',
    '.wl-dot{display:inline-block;width:8px;height:8px;border-radius:50%;background:#9be3b7;margin-right:6px;vertical-align:1px}',
    '.wl-dot.off{background:#f2b84b}',
    '.wl-icon{background:transparent;border:0;color:inherit;width:36px;height:36px;border-radius:8px;cursor:pointer;font-size:22px;line-height:1}',
    '.wl-icon:hover{background:rgba(255,255,255,.15)}',
    '.wl-banner{padding:10px 16px;background:#fdf6e7;border-bottom:1px solid #f1e3c4;font-size:13.5px;color:#5b4a1e}',
    '.wl-banner[hidden]{display:none}',
    '.wl-banner strong{display:block;font-weight:650}',
    '.wl-log{flex:1;overflow-y:auto;padding:16px 14px 8px;display:flex;flex-direction:column;gap:8px;background:var(--wl-soft)}',
    '.wl-msg{max-width:84%;display:flex;flex-direction:column;gap:3px}',
    '.wl-msg .wl-who{font-size:11.5px;color:var(--wl-muted);padding:0 4px}',
    '.wl-bubble{padding:9px 13px;border-radius:16px;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}',
    '.wl-msg.customer{align-self:flex-end}',
    '.wl-msg.customer .wl-who{text-align:right}',
    '.wl-msg.customer .wl-bubble{background:var(--wl-accent);color:var(--wl-accent-ink);border-bottom-right-radius:5px}',
    '.wl-msg.customer.pending .wl-bubble{opacity:.65}',
    '.wl-msg.bot .wl-bubble,.wl-msg.agent .wl-bubble{background:#fff;border:1px solid var(--wl-line);border-bottom-left-radius:5px}',
    '.wl-msg.agent .wl-bubble{border-color:#bcd9cf}',
    '.wl-msg.streaming .wl-bubble::after{content:"▍";opacity:.5;animation:wl-blink 1s steps(2) infinite}',
    '@keyframes wl-blink{50%{opacity:0}}',
    '.wl-sources{list-style:none;margin:2px 0 0;padding:0 4px;font-size:12.5px;display:flex;flex-direction:column;gap:2px}',
    '.wl-sources li::before{content:"↗ ";color:var(--wl-muted)}',
    '.wl-sources a{color:var(--wl-accent);text-decoration:underline;text-underline-offset:2px}',
    '.wl-note{align-self:center;font-size:12.5px;color:var(--wl-muted);background:#fff;border:1px solid var(--wl-line);border-radius:999px;padding:3px 12px;text-align:center;max-width:92%}',
    '.wl-typing{padding:0 16px 6px;font-size:12.5px;color:var(--wl-muted);min-height:20px;background:var(--wl-soft)}',
    '.wl-typing span{display:inline-block;width:5px;height:5px;margin-left:2px;border-radius:50%;background:var(--wl-muted);animation:wl-bounce 1.2s infinite}',
    '.wl-typing span:nth-child(2){animation-delay:.15s}.wl-typing span:nth-child(3){animation-delay:.3s}',
    '@keyframes wl-bounce{0%,60%,100%{transform:none;opacity:.5}30%{transform:translateY(-3px);opacity:1}}',
    '.wl-rate{padding:12px 16px;border-top:1px solid var(--wl-line);text-align:center;background:#fff}',
    '.wl-rate[hidden]{display:none}',
    '.wl-rate p{margin:0 0 6px;font-size:14px}',
    '.wl-stars{display:inline-flex;gap:4px}',
    '.wl-star{font-size:28px;line-height:1;background:none;border:0;cursor:pointer;color:#c9ced3;padding:2px 4px;border-radius:6px}',
    '.wl-star.on{color:#e8a317}',
    '.wl-foot{border-top:1px solid var(--wl-line);padding:10px 12px 12px;background:#fff;display:flex;flex-direction:column;gap:8px}',
    '.wl-actions{display:flex;justify-content:space-between;align-items:center;gap:8px}',
    '.wl-link{background:none;border:1px solid var(--wl-line);color:var(--wl-accent);border-radius:999px;padding:5px 12px;font:inherit;font-size:13px;cursor:pointer}',
    '.wl-link:hover{background:var(--wl-soft)}',
    '.wl-link[hidden]{display:none}',
    '.wl-conn{font-size:12px;color:var(--wl-muted)}',
    '.wl-compose{display:flex;gap:8px;align-items:flex-end}',
    '.wl-input{flex:1;resize:none;border:1px solid #cfd6d3;border-radius:12px;padding:9px 12px;font:inherit;max-height:120px;min-height:42px;color:inherit;background:#fff}',
    '.wl-input:focus{border-color:var(--wl-accent);outline:none;box-shadow:0 0 0 3px rgba(47,111,94,.18)}',
    '.wl-btn{background:var(--wl-accent);color:var(--wl-accent-ink);border:0;border-radius:12px;height:42px;padding:0 16px;font:inherit;font-weight:600;cursor:pointer}',
    '.wl-btn:disabled{opacity:.5;cursor:default}',
    '.wl-sr{position:absolute;width:1px;height:1px;padding:0;margin:-1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;border:0}',
    '@media (max-width:480px){:host{right:12px;bottom:12px}',
    '.wl-panel{position:fixed;inset:0;width:100vw;max-width:100vw;height:100%;border-radius:0;border:0}',
    '.wl-msg{max-width:90%}',
    ':host(.wl-open) .wl-launcher{display:none}}',
    '@media (prefers-reduced-motion:reduce){.wl-typing span,.wl-msg.streaming .wl-bubble::after{animation:none}.wl-launcher{transition:none}}'
  ].join('\n');

  function el(tag, cls, text) {
    var n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text != null) n.textContent = String(text);
    return n;
  }

  function safeUrl(u) {
    try {
      var url = new URL(String(u), origin);
      return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
    } catch (e) { return null; }
  }

  function fmtEta(s) {
    s = Math.max(0, Math.round(Number(s) || 0));
    if (s < 45) return 'less than a minute';
    var m = Math.round(s / 60);
    return 'about ' + m + ' min';
  }

  function agentName(a) {
    if (!a) return null;
    if (typeof a === 'string') return a;
    return a.name || a.id || null;
  }

  function build(mod) {
    var host = el('div');
    host.id = 'warmline-widget';
    host.setAttribute('data-warmline', tenant);
    var root = host.attachShadow({ mode: 'open' });
    var style = el('style'); style.textContent = CSS; root.appendChild(style);

    // --- launcher
    var launcher = el('button', 'wl-launcher');
    launcher.type = 'button';
    launcher.setAttribute('aria-label', 'Open chat with ' + title);
    launcher.setAttribute('aria-expanded', 'false');
    launcher.setAttribute('aria-controls', 'wl-panel');
    var svgNS = 'http://www.w3.org/2000/svg';
    var svg = document.createElementNS(svgNS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24'); svg.setAttribute('fill', 'none');
    svg.setAttribute('stroke', 'currentColor'); svg.setAttribute('stroke-width', '2');
    svg.setAttribute('stroke-linecap', 'round'); svg.setAttribute('stroke-linejoin', 'round');
    svg.setAttribute('aria-hidden', 'true');
    var path = document.createElementNS(svgNS, 'path');
    path.setAttribute('d', 'M21 12a8 8 0 0 1-11.6 7.1L4 20l1.1-4.4A8 8 0 1 1 21 12z');
    svg.appendChild(path);
    launcher.appendChild(svg);
    var badge = el('span', 'wl-badge'); badge.hidden = true; badge.setAttribute('aria-hidden', 'true');
    launcher.appendChild(badge);

    // --- panel
    var panel = el('section', 'wl-panel');
    panel.id = 'wl-panel';
    panel.hidden = true;
    panel.setAttribute('role', 'dialog');
    panel.setAttribute('aria-label', 'Chat with ' + title);

    var head = el('header', 'wl-head');
    var h2 = el('h2', null, title);
    var sub = el('span', 'wl-sub');
    var dot = el('span', 'wl-dot off'); dot.setAttribute('aria-hidden', 'true');
    var subText = el('span', 'wl-status', 'Connecting…');
    sub.appendChild(dot); sub.appendChild(subText); h2.appendChild(sub);
    var closeBtn = el('button', 'wl-icon', '×');
    closeBtn.type = 'button'; closeBtn.setAttribute('aria-label', 'Close chat');
    head.appendChild(h2); head.appendChild(closeBtn);

    var banner = el('div', 'wl-banner'); banner.hidden = true;
    banner.setAttribute('role', 'status');
    var bannerTitle = el('strong'); var bannerText = el('span', 'wl-queue');
    banner.appendChild(bannerTitle); banner.appendChild(bannerText);

    var log = el('div', 'wl-log');
    log.setAttribute('role', 'log');
    log.setAttribute('aria-live', 'off');   // announcements go through the live region below
    log.setAttribute('aria-label', 'Messages');
    log.tabIndex = 0;

    var typingRow = el('div', 'wl-typing'); typingRow.setAttribute('aria-hidden', 'true');

    var live = el('div', 'wl-sr'); live.setAttribute('aria-live', 'polite'); live.setAttribute('aria-atomic', 'true');
    live.className = 'wl-sr wl-live';

    var rateBox = el('div', 'wl-rate'); rateBox.hidden = true;
    var rateQ = el('p', null, 'How did we do?');
    rateQ.id = 'wl-rate-q';
    var stars = el('div', 'wl-stars'); stars.setAttribute('role', 'radiogroup'); stars.setAttribute('aria-labelledby', 'wl-rate-q');
    var starBtns = [];
    for (var i = 1; i <= 5; i++) {
      var b = el('button', 'wl-star', '★');
      b.type = 'button'; b.setAttribute('role', 'radio'); b.setAttribute('aria-checked', 'false');
      b.setAttribute('aria-label', i + (i === 1 ? ' star' : ' stars'));
      b.dataset.score = String(i);
      b.tabIndex = i === 1 ? 0 : -1;
      starBtns.push(b); stars.appendChild(b);
    }
    rateBox.appendChild(rateQ); rateBox.appendChild(stars);

    var foot = el('div', 'wl-foot');
    var actions = el('div', 'wl-actions');
    var humanBtn = el('button', 'wl-link', 'Talk to a person'); humanBtn.type = 'button';
    var conn = el('span', 'wl-conn');
    actions.appendChild(humanBtn); actions.appendChild(conn);
    var form = el('form', 'wl-compose');
    var input = el('textarea', 'wl-input');
    input.rows = 1; input.placeholder = 'Write a message…'; input.setAttribute('aria-label', 'Message');
    input.maxLength = 4000;
    var sendBtn = el('button', 'wl-btn', 'Send'); sendBtn.type = 'submit';
    form.appendChild(input); form.appendChild(sendBtn);
    foot.appendChild(actions); foot.appendChild(form);

    panel.appendChild(head); panel.appendChild(banner); panel.appendChild(log);
    panel.appendChild(typingRow); panel.appendChild(rateBox); panel.appendChild(foot); panel.appendChild(live);
    root.appendChild(panel); root.appendChild(launcher);
    document.body.appendChild(host);

    // --- state
    // window.WarmlineConfig (optional, set before this script runs) tunes the client:
    // {transport, wsRetryMs, fallbackAfter, baseMs, capMs}
    var cfg = window.WarmlineConfig || {};
    var client = new mod.WarmlineClient({
      baseUrl: origin, tenant: tenant, transport: cfg.transport || transport,
      wsRetryMs: cfg.wsRetryMs, fallbackAfter: cfg.fallbackAfter, baseMs: cfg.baseMs, capMs: cfg.capMs
    });
    var store = client.storage;
    var historySeq = parseInt(store.getItem('warmline:' + tenant + ':last_seq') || '0', 10) || 0;
    var curSeq = 0;            // seq of the event being rendered
    var ratedKey = 'warmline:' + tenant + ':rated';
    var connected = false;
    var isOpen = false;
    var unread = 0;
    var state = null;
    var agent = null;          // name of the agent who owns the conversation
    var announcedJoin = false;
    var rated = false;
    var resolvedMark = '';
    var byMsgId = {};          // message id (server or bot stream id) -> row
    var pendingRows = {};      // client id -> row (not yet seen as an event)
    var ackSeq = {};           // seq -> client id
    var typingTimer = null;
    var myTyping = false, myTypingTimer = null;

    window.__warmlineClient = client;   // for debugging and tests

    function atBottom() { return log.scrollHeight - log.scrollTop - log.clientHeight < 60; }
    function scroll(force) { if (force || atBottom()) log.scrollTop = log.scrollHeight; }

    function announce(text) {
      live.textContent = '';
      setTimeout(function () { live.textContent = text; }, 30);
    }

    function bump(text) {
      if (curSeq && curSeq <= historySeq) return;   // replayed history, already seen
      if (!isOpen) {
        unread++;
        badge.textContent = unread > 9 ? '9+' : String(unread);
        badge.hidden = false;
        launcher.setAttribute('aria-label', 'Open chat with ' + title + ' (' + unread + ' new)');
      }
      announce(text);
    }

    function note(text) {
      var n = el('div', 'wl-note', text);
      var stick = atBottom();
      log.appendChild(n);
      scroll(stick);
      return n;
    }

    function msgRow(role, who) {
      var row = el('div', 'wl-msg ' + role);
      if (who) row.appendChild(el('span', 'wl-who', who));
      var bubble = el('div', 'wl-bubble');
      row.appendChild(bubble);
      row._bubble = bubble;
      return row;
    }

    function setSources(row, sources) {
      if (row._sources) { row.removeChild(row._sources); row._sources = null; }
      if (!sources || !sources.length) return;
      var ul = el('ul', 'wl-sources');
      ul.setAttribute('aria-label', 'Sources');
      var seen = {};
      sources.forEach(function (s) {
        if (!s) return;
        var label = s.title || s.url || s.doc_id || 'Source';
        var key = (s.url || '') + '|' + label;
        if (seen[key]) return; seen[key] = 1;
        var li = el('li');
        var href = s.url ? safeUrl(s.url) : null;
        if (href) {
          var a = el('a', null, label);
          a.href = href; a.target = '_blank'; a.rel = 'noopener noreferrer';
          li.appendChild(a);
        } else {
          li.textContent = label;
        }
        ul.appendChild(li);
      });
      row.appendChild(ul);
      row._sources = ul;
    }

    function appendRow(row) {
      var stick = atBottom() || row.classList.contains('customer');
      log.appendChild(row);
      scroll(stick);
    }

    function authorLabel(a) {
      if (!a) return '';
      if (a.role === 'customer') return 'You';
      if (a.role === 'bot') return a.name || 'Assistant';
      if (a.role === 'agent') return a.name || 'Agent';
      return a.name || '';
    }

    function onMessage(ev) {
      var a = ev.author || {};
      var role = a.role || 'system';
      if (role === 'system') { note(ev.text || ''); bump(ev.text || ''); return; }
      if (role === 'agent') {
        var nm = agentName(a);
        if (nm && !agent) agent = nm;
        if (state === 'human' && !announcedJoin) joined();
        hideTyping();
      }
      if (role === 'customer') {
        var cid = null;
        if (ev.client_id && pendingRows[ev.client_id]) cid = ev.client_id;
        else if (ev.id && pendingRows[ev.id]) cid = ev.id;
        else if (ackSeq[ev.seq] && pendingRows[ackSeq[ev.seq]]) cid = ackSeq[ev.seq];
        else {
          for (var k in pendingRows) {
            if (pendingRows[k]._text === ev.text && !pendingRows[k]._seq) { cid = k; break; }
          }
        }
        if (cid) {
          var prow = pendingRows[cid];
          delete pendingRows[cid];
          prow.classList.remove('pending');
          prow.dataset.seq = String(ev.seq);
          if (ev.id) { prow.dataset.id = ev.id; byMsgId[ev.id] = prow; }
          return;
        }
      }
      var row = ev.id && byMsgId[ev.id];
      if (row) {
        // a streamed bot answer: the final event replaces the streamed text
        row._bubble.textContent = ev.text || '';
        row.classList.remove('streaming');
        var who = row.querySelector('.wl-who');
        if (who) who.textContent = authorLabel(a);
      } else {
        row = msgRow(role, role === 'customer' ? null : authorLabel(a));
        row._bubble.textContent = ev.text || '';
        if (ev.id) { row.dataset.id = ev.id; byMsgId[ev.id] = row; }
        appendRow(row);
      }
      row.dataset.seq = String(ev.seq);
      if (role === 'bot' || ev.sources) setSources(row, ev.sources);
      scroll(false);
      if (role !== 'customer') bump(authorLabel(a) + ': ' + (ev.text || ''));
    }

    function joined() {
      announcedJoin = true;
      var t = (agent || 'An agent') + ' joined';
      note(t);
      bump(t);
      renderBanner();
    }

    function onState(ev) {
      var prev = state;
      state = ev.to;
      var nm = agentName(ev.agent);
      if (ev.to === 'queued') {
        announcedJoin = false; agent = null;
        if (prev !== 'queued') { note('Connecting you to a person…'); announce('Connecting you to a person'); }
      } else if (ev.to === 'human') {
        if (nm) agent = nm;
        if (agent) joined(); else announcedJoin = false;
      } else if (ev.to === 'resolved') {
        note('Conversation resolved');
        if (!(curSeq && curSeq <= historySeq)) announce('Conversation resolved. You can rate this conversation.');
        resolvedMark = (client.conversationId || '') + ':' + ev.seq;
        rated = store.getItem(ratedKey) === resolvedMark;
      } else if (ev.to === 'bot' && prev === 'resolved') {
        note('Conversation reopened');
      }
      renderState();
    }

    var queueInfo = null;
    function renderBanner() {
      if (state === 'queued' || (queueInfo && state !== 'human' && state !== 'resolved')) {
        banner.hidden = false;
        bannerTitle.textContent = 'Connecting you to a person…';
        if (queueInfo && queueInfo.position != null) {
          bannerText.textContent = 'You are number ' + queueInfo.position + ' in line · ' +
            fmtEta(queueInfo.eta_s) + ' estimated wait';
        } else {
          bannerText.textContent = 'Finding the next available agent.';
        }
      } else if (state === 'human' && agent) {
        banner.hidden = false;
        bannerTitle.textContent = agent + ' joined';
        bannerText.textContent = 'You are chatting with a person.';
      } else {
        banner.hidden = true;
      }
    }

    function renderState() {
      humanBtn.hidden = !(state === 'bot' || state === 'confused' || state === null);
      var stick = atBottom();
      rateBox.hidden = !(state === 'resolved' && !rated);
      scroll(stick);
      if (state === 'human' || state === 'resolved' || state === 'bot') queueInfo = null;
      renderBanner();
      h2.firstChild.textContent = state === 'human' && agent ? agent : title;
    }

    function hideTyping() {
      clearTimeout(typingTimer);
      typingRow.textContent = '';
    }

    function showTyping(name) {
      typingRow.textContent = '';
      typingRow.appendChild(document.createTextNode((name || 'Agent') + ' is typing'));
      for (var j = 0; j < 3; j++) typingRow.appendChild(el('span'));
      clearTimeout(typingTimer);
      typingTimer = setTimeout(hideTyping, 8000);
    }

    function setConn(status, info) {
      connected = status === 'connected';
      dot.className = 'wl-dot' + (connected ? '' : ' off');
      var via = client.transport === 'longpoll' ? ' (long polling)' : '';
      subText.textContent = connected ? 'Online' : (status === 'closed' ? 'Offline' : (status === 'connecting' || status === 'idle' ? 'Connecting…' : 'Reconnecting…'));
      conn.textContent = connected ? '' : subText.textContent;
      host.setAttribute('data-status', status);
      host.setAttribute('data-transport', client.transport || '');
      subText.title = connected ? 'Connected' + via : '';
      void info;
    }

    client.on('status', setConn);
    client.on('transport', function () { setConn(client.status); });
    client.on('welcome', function (w) {
      host.setAttribute('data-conversation', w.conversation_id || '');
      if (w.state && state == null) { state = w.state; renderState(); }
    });
    client.on('reset', function () {
      // the old conversation is gone: clear the transcript
      log.textContent = ''; byMsgId = {}; state = null; agent = null; announcedJoin = false;
      var keep = pendingRows; pendingRows = {};
      for (var k in keep) { pendingRows[k] = keep[k]; log.appendChild(keep[k]); }
      renderState();
    });
    client.on('event', function (ev) {
      curSeq = Number(ev.seq) || 0;
      if (ev.kind === 'message') onMessage(ev);
      else if (ev.kind === 'state') onState(ev);
    });
    client.on('ack', function (a) {
      if (a.seq != null && a.id) {
        ackSeq[a.seq] = a.id;
        var r = pendingRows[a.id];
        if (r) r._seq = a.seq;
      }
    });
    client.on('bot_delta', function (f) {
      if (!f.message_id) return;
      var row = byMsgId[f.message_id];
      if (!row) {
        row = msgRow('bot streaming', 'Assistant');
        row.dataset.id = f.message_id;
        byMsgId[f.message_id] = row;
        appendRow(row);
      }
      if (!row.classList.contains('streaming')) return;   // the final event already arrived
      var stick = atBottom();
      row._bubble.textContent += String(f.delta || '');
      scroll(stick);
    });
    client.on('queue', function (q) {
      queueInfo = { position: q.position, eta_s: q.eta_s };
      renderBanner();
    });
    client.on('typing', function (t) {
      if (t.role && t.role !== 'agent') return;
      if (t.on) showTyping(agent); else hideTyping();
    });
    client.on('error', function (e) {
      if (e.code === 'rate_limited') note('You are sending messages too fast. Please wait a moment.');
      else if (e.code === 'too_large') note('That message is too long.');
      else if (e.code === 'invalid_transition' && e.ref === 'human') note('A person is already on the way.');
    });

    function addPending(id, text) {
      var row = msgRow('customer pending', null);
      row._bubble.textContent = text;
      row._text = text;
      row.dataset.cid = id;
      pendingRows[id] = row;
      appendRow(row);
    }
    // messages written before a reload and never acked are still in the outbox
    client.pending().forEach(function (f) { addPending(f.id, f.text); });

    function submit() {
      var text = input.value.replace(/\s+$/, '').replace(/^\s+/, '');
      if (!text) return;
      input.value = '';
      autosize();
      stopTyping();
      var id = client.send(text);
      addPending(id, text);
      scroll(true);
      if (!started) start();
    }

    function stopTyping() {
      clearTimeout(myTypingTimer);
      if (myTyping) { myTyping = false; client.typing(false); }
    }

    function autosize() {
      input.style.height = 'auto';
      input.style.height = Math.min(120, input.scrollHeight + 2) + 'px';
    }

    form.addEventListener('submit', function (e) { e.preventDefault(); submit(); });
    input.addEventListener('keydown', function (e) {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submit(); }
    });
    input.addEventListener('input', function () {
      autosize();
      if (!input.value) { stopTyping(); return; }
      if (!myTyping) { myTyping = true; client.typing(true); }
      clearTimeout(myTypingTimer);
      myTypingTimer = setTimeout(stopTyping, 3000);
    });
    humanBtn.addEventListener('click', function () {
      if (!started) start();
      client.requestHuman();
      humanBtn.hidden = true;
      input.focus();
    });

    function setStars(n) {
      starBtns.forEach(function (b, idx) {
        b.classList.toggle('on', idx < n);
        b.setAttribute('aria-checked', idx + 1 === n ? 'true' : 'false');
        b.tabIndex = (n ? idx + 1 === n : idx === 0) ? 0 : -1;
      });
    }
    stars.addEventListener('click', function (e) {
      var b = e.target.closest('.wl-star');
      if (!b) return;
      var score = Number(b.dataset.score);
      setStars(score);
      client.rate(score);
      rated = true;
      try { store.setItem(ratedKey, resolvedMark); } catch (err) { /* ignore */ }
      rateBox.hidden = true;
      note('Thanks for your feedback! (' + score + '/5)');
      announce('Thanks for your feedback');
      input.focus();
    });
    stars.addEventListener('keydown', function (e) {
      var idx = starBtns.indexOf(root.activeElement);
      if (idx < 0) return;
      var next = null;
      if (e.key === 'ArrowRight' || e.key === 'ArrowUp') next = Math.min(4, idx + 1);
      if (e.key === 'ArrowLeft' || e.key === 'ArrowDown') next = Math.max(0, idx - 1);
      if (next != null) {
        e.preventDefault();
        starBtns.forEach(function (b, k) { b.tabIndex = k === next ? 0 : -1; b.classList.toggle('on', k <= next); });
        starBtns[next].focus();
      }
    });

    var started = false;
    function start() {
      if (started) return;
      started = true;
      client.connect();
    }

    function open() {
      if (!started) start();
      isOpen = true;
      panel.hidden = false;
      host.classList.add('wl-open');
      launcher.setAttribute('aria-expanded', 'true');
      launcher.setAttribute('aria-label', 'Close chat with ' + title);
      unread = 0; badge.hidden = true;
      scroll(true);
      try { sessionStorage.setItem('warmline:' + tenant + ':open', '1'); } catch (e) { /* ignore */ }
      setTimeout(function () { input.focus(); }, 0);
    }
    function close() {
      isOpen = false;
      panel.hidden = true;
      host.classList.remove('wl-open');
      launcher.setAttribute('aria-expanded', 'false');
      launcher.setAttribute('aria-label', 'Open chat with ' + title);
      stopTyping();
      try { sessionStorage.removeItem('warmline:' + tenant + ':open'); } catch (e) { /* ignore */ }
      launcher.focus();
    }
    launcher.addEventListener('click', function () { if (isOpen) close(); else open(); });
    closeBtn.addEventListener('click', close);
    panel.addEventListener('keydown', function (e) {
      if (e.key === 'Escape') { e.preventDefault(); close(); }
    });

    api.open = open;
    api.close = close;
    api.toggle = function () { if (isOpen) close(); else open(); };
    api.client = client;

    renderState();
    setConn('idle');
    var wasOpen = false;
    try { wasOpen = sessionStorage.getItem('warmline:' + tenant + ':open') === '1'; } catch (e) { /* ignore */ }
    // a stored conversation resumes at once (unread badge, live updates); a new one starts on open
    if (client.hasSession || client.pending().length) start();
    if (pending === 'open' || openOnLoad || wasOpen) open();
    pending = null;
  }

  function boot() {
    import(origin + '/static/warmline-client.js').then(build, function (err) {
      if (window.console) console.warn('Warmline widget could not load its client:', err);
    });
  }
  if (document.body) boot(); else document.addEventListener('DOMContentLoaded', boot);
})();
