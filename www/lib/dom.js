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

// Fills the definition list `dl` with `rows` of [term, value] or [term, value, id] (the value's
// element gets the id, for tests and links).
export function definitions(dl, rows) {
  dl.replaceChildren(...rows.flatMap(([term, value, id]) => {
    const dt = document.createElement('dt');
    dt.textContent = term;
    const dd = document.createElement('dd');
    dd.textContent = value;
    if (id) dd.id = id;
    return [dt, dd];
  }));
}

// A page's message line #message, for pages with only one.
export const sayMessage = (text, kind) => say($('message'), text, kind);
