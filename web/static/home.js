// Demo home page: shows the demo tokens (GET /v1/api/demo, demo mode only) as one-click links.
import { toast } from '/static/ui.js';

const $ = (id) => document.getElementById(id);

$('open-chat').addEventListener('click', () => {
  if (window.Warmline && typeof window.Warmline.open === 'function') window.Warmline.open();
  else window.dispatchEvent(new Event('warmline:open'));
});

for (const b of document.querySelectorAll('[data-copy]')) {
  b.addEventListener('click', async () => {
    const text = $(b.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); toast('Copied'); } catch (_) { toast('Copy failed: select the text instead', 'error'); }
  });
}

async function loadDemo() {
  let data = null;
  try {
    const res = await fetch('/v1/api/demo', { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (res.ok) data = await res.json();
  } catch (_) { data = null; }
  $('demo-loading').hidden = true;
  if (!data || (!data.agent_token && !data.supervisor_token)) {
    $('demo-off').hidden = false;
    return;
  }
  $('demo-tokens').hidden = false;
  $('tenant').textContent = data.tenant || '';
  $('agent-token').textContent = data.agent_token || '';
  $('supervisor-token').textContent = data.supervisor_token || '';
  if (data.agent_token) {
    const a = $('agent-link');
    a.href = '/agent?token=' + encodeURIComponent(data.agent_token);
    a.classList.add('primary');
    a.textContent = 'Open as the demo agent';
  }
  if (data.supervisor_token) {
    const s = $('supervisor-link');
    s.href = '/supervisor?token=' + encodeURIComponent(data.supervisor_token);
    s.classList.add('primary');
    s.textContent = 'Open as the demo supervisor';
  }
}
loadDemo();
