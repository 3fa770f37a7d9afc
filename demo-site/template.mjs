// The demo page's placeholders, filled the way the node fills them
// (engine/p2p/src/http/template.rs; both run tests/data/template-cases.json):
// `{{name}}` must be supplied, `{{name|default}}` may be (else the default, as written);
// anything else starting with `{{` is malformed. Values are escaped for a double-quoted
// attribute, except names in `raw` (the dev server's own attribute lists, built from fixed
// strings).

export class TemplateError extends Error {
  /** kind: 'missing' (names: string[]) or 'malformed' (at: UTF-8 byte offset). */
  constructor(kind, detail) {
    super(kind === 'missing'
      ? `this server has no value for ${detail.map((n) => `{{${n}}}`).join(', ')}`
      : `malformed placeholder at byte ${detail} (expected {{name}} or {{name|default}})`);
    this.name = 'TemplateError';
    this.kind = kind;
    if (kind === 'missing') this.names = detail;
    else this.at = detail;
  }
}

export const escapeAttr = (s) => String(s).replace(/[&"'<>]/g, (c) =>
  ({ '&': '&amp;', '"': '&quot;', "'": '&#39;', '<': '&lt;', '>': '&gt;' })[c]);

const NAME = /^[A-Za-z][A-Za-z0-9_]*$/;

/** Fills `template` from `values` (a plain object; undefined or null = no value). */
export function fillTemplate(template, values, { raw = new Set() } = {}) {
  let out = '';
  const missing = [];
  let i = 0;
  for (;;) {
    const open = template.indexOf('{{', i);
    if (open < 0) break;
    out += template.slice(i, open);
    const close = template.indexOf('}}', open + 2);
    const at = () => Buffer.byteLength(template.slice(0, open));
    if (close < 0) throw new TemplateError('malformed', at());
    const body = template.slice(open + 2, close);
    const bar = body.indexOf('|');
    const name = bar < 0 ? body : body.slice(0, bar);
    const fallback = bar < 0 ? null : body.slice(bar + 1);
    if (!NAME.test(name) || (fallback !== null && fallback.includes('{{'))) throw new TemplateError('malformed', at());
    const value = Object.hasOwn(values, name) ? values[name] : undefined;
    if (value !== undefined && value !== null) out += raw.has(name) ? String(value) : escapeAttr(value);
    else if (fallback !== null) out += fallback;
    else if (!missing.includes(name)) missing.push(name);
    i = close + 2;
  }
  out += template.slice(i);
  if (missing.length > 0) throw new TemplateError('missing', missing);
  return out;
}
