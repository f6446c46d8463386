// The key controls (index.html and keys.html): generate, export passphrase-wrapped, import,
// forget, and the keys stored in this browser. Keys go between the worker, IndexedDB and files
// the user downloads; never to the server.
import { $, say, showKey, download } from './dom.js';
import { listKeys, deleteKey, setActiveKey, keepWorkerKey } from './store.js';

export function bindKeys(call, initial) {
  const msg = $('keys-message');

  async function refresh() {
    const { fingerprint, name } = await call('status');
    showKey($('fingerprint'), fingerprint ? { fingerprint, name } : null);
    $('export').disabled = !fingerprint;
    $('forget').disabled = !fingerprint;
    await renderStored(fingerprint);
  }

  async function renderStored(current) {
    const list = $('stored');
    if (!list) return;
    const keys = await listKeys();
    list.replaceChildren(...keys.map((k) => {
      const li = document.createElement('li');
      li.dataset.fingerprint = k.fingerprint;
      if (k.fingerprint === current) li.className = 'active';
      const code = document.createElement('code');
      code.textContent = k.fingerprint;
      const label = document.createElement('span');
      label.textContent = `${k.name} · made ${new Date(k.created).toLocaleString()}`;
      const use = document.createElement('button');
      use.type = 'button';
      use.textContent = k.fingerprint === current ? 'In use' : 'Use';
      use.disabled = k.fingerprint === current;
      use.addEventListener('click', async () => {
        await call('importKey', { text: k.file });
        setActiveKey(k.fingerprint);
        await refresh();
        say(msg, `Using key ${k.fingerprint} (${k.name}).`, 'ok');
      });
      li.append(code, label, use);
      return li;
    }));
    $('stored-empty').hidden = keys.length > 0;
  }

  $('generate').addEventListener('click', async () => {
    try {
      const fp = await call('generateKey', { name: $('key-name').value.trim() || 'my key' });
      await keepWorkerKey(call);
      await refresh();
      say(msg, `New key generated and kept in this browser. Fingerprint ${fp}. Export it too: clearing the browser's data deletes it.`, 'ok');
    } catch (err) { say(msg, err.message, 'error'); }
  });

  $('export').addEventListener('click', async () => {
    const passphrase = $('export-pass').value;
    if (!passphrase) {
      say(msg, 'Choose a passphrase first: the exported file is protected by it.', 'error');
      return;
    }
    say(msg, 'Protecting the key with your passphrase (Argon2id)…');
    try {
      const text = await call('exportKey', { passphrase });
      const fp = $('fingerprint').dataset.fingerprint;
      download(`veil-key-${fp}.json`, new Blob([text], { type: 'application/json' }));
      say(msg, `Exported veil-key-${fp}.json. Keep the file and the passphrase apart.`, 'ok');
    } catch (err) { say(msg, err.message, 'error'); }
  });

  $('forget').addEventListener('click', async () => {
    const fp = $('fingerprint').dataset.fingerprint;
    await call('forgetKey');
    if (fp) await deleteKey(fp);
    await refresh();
    say(msg, 'The key is gone from this page and this browser. Import its file to use it again.', 'ok');
  });

  $('import').addEventListener('click', async () => {
    const file = $('import-file').files[0];
    if (!file) { say(msg, 'Choose a key file to import.', 'error'); return; }
    say(msg, 'Unlocking the key…');
    try {
      const text = await file.text();
      const fp = await call('importKey', { text, passphrase: $('import-pass').value });
      await keepWorkerKey(call);
      await refresh();
      say(msg, `Imported the key with fingerprint ${fp}; it is kept in this browser.`, 'ok');
    } catch (err) { say(msg, `Import failed: ${err.message}`, 'error'); }
  });

  return refresh().then(() => {
    if (initial) say(msg, `Loaded your key ${initial.fingerprint} (${initial.name}) from this browser.`, 'ok');
  });
}
