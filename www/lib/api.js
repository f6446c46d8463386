// Talking to the server: the owner token, JSON calls, lab runs and their event streams. Nothing
// here sends a key or a plaintext image; callers send ciphertexts, scrambles or lab requests.
import { keepOwnerToken, keptOwnerToken } from './store.js';

let ownerTokenPromise = null;

// This browser's owner token: the kept one, or a new one from the factory (`fresh`: replace a
// token the factory no longer knows). One request at a time, so two pages' first calls do not
// make two owners.
function ownerToken(fresh = false) {
  const previous = ownerTokenPromise;
  ownerTokenPromise = (async () => {
    if (!fresh) {
      const kept = (await previous?.catch(() => null)) ?? await keptOwnerToken();
      if (kept) return kept;
    }
    const r = await fetch('/api/owners', { method: 'POST' });
    const body = await r.json().catch(() => ({}));
    if (!r.ok || !body.token) throw new Error(body.error || `the factory gave no owner token (${r.status})`);
    await keepOwnerToken(body.token);
    return body.token;
  })();
  return ownerTokenPromise;
}

// fetch() with the owner token. A token the factory does not know (its data was reset) is
// replaced once; what the old one owned is gone with it.
export async function ownerFetch(url, options = {}) {
  const send = (token) => fetch(url, { ...options, headers: { ...(options.headers || {}), authorization: `Bearer ${token}` } });
  const r = await send(await ownerToken());
  return r.status === 401 ? send(await ownerToken(true)) : r;
}

// A Server-Sent Events stream read with the owner token (EventSource cannot send a header):
// calls `on(name, data)` per event until the stream ends, then `onEnd(error)`. Returns a
// function that stops reading.
export function ownerEvents(url, on, onEnd) {
  const abort = new AbortController();
  (async () => {
    const r = await ownerFetch(url, { signal: abort.signal, headers: { accept: 'text/event-stream' } });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || `the server answered ${r.status}`);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length) on(name, JSON.parse(data.join('\n')));
      }
    }
  })().then(() => onEnd?.(null), (e) => { if (!abort.signal.aborted) onEnd?.(e); });
  return () => abort.abort();
}

// The factory's routes, where what a caller sees depends on its owner token, and the labs'
// starts, which count against the owner's attack quota; the rest (flows, health) is public and
// goes without one.
const OWNED = /^\/api\/(datasets|jobs|models|me|leakage\/attacks|rtas\/runs)(\/|\?|$)/;

// What a failed response says, with when to retry if it is past a quota (429 Retry-After).
export function failure(r, body) {
  const text = body?.error || `The server answered ${r.status}.`;
  const retry = r.status === 429 ? r.headers.get('retry-after') : null;
  return retry && !/retry in/.test(text) ? `${text} (try again in ${retry} s)` : text;
}

// Starts a lab run: POSTs `body` as JSON with the owner token (each visitor's attacks count
// against its own quota). Resolves to the run, or rejects with what to tell the user.
export async function startRun(url, body) {
  let resp;
  try {
    resp = await ownerFetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`The server cannot be reached: ${e.message}`);
  }
  const answer = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(failure(resp, answer));
  return answer;
}

// An EventSource of a lab run that breaks while the run is still going (the server stopped)
// ends it as failed, with a message.
export function failOnBrokenStream(source, say, setState) {
  source.onerror = () => {
    if (document.body.dataset.state === 'running') {
      say('The event stream was interrupted (the server may have stopped).', 'error');
      source.close();
      setState('failed');
    }
  };
}

export async function apiJson(url, options) {
  const r = await (OWNED.test(url) ? ownerFetch : fetch)(url, options);
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) throw new Error(failure(r, body));
  return body;
}

