// Small DOM helpers every page uses: element lookup, messages, progress bars, downloads, and
// showing a key's fingerprint.

export const $ = (id) => document.getElementById(id);

export function say(el, text, kind) {
  el.textContent = text;
  el.className = `message ${kind || ''}`;
}

// Shows a key ({fingerprint, name} or null) in `el`, its fingerprint in data-fingerprint.
export function showKey(el, key, none = 'no key loaded') {
  el.textContent = key ? `${key.fingerprint} (${key.name})` : none;
  el.dataset.fingerprint = key?.fingerprint || '';
}

export function progressTo(bar, label) {
  return ({ done, total, what }) => {
    bar.max = total;
    bar.value = done;
    if (label) label.textContent = `${what}: ${done} / ${total}`;
  };
}

export function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
