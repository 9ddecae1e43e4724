// The checks the console runs in the browser, with WebCrypto alone: each event's hash
// recomputed from what the API served, the chain of prev_hash links, RFC 6962 / RFC 9162
// inclusion proofs and the Ed25519 signature of the account's digest. No I/O here: app.js
// fetches, this module judges, and the browser tests call these functions directly.

export const GENESIS_HASH = '0'.repeat(64);

const enc = new TextEncoder();

export function hexToBytes(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex)) {
    throw new Error(`not a hex string: ${String(hex).slice(0, 80)}`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// ---------------------------------------------------------------------------------------
// JSON kept as its exact text. JSON.parse would turn 2^64-1 into 18446744073709552000 and
// 1.0 into 1, so a payload rebuilt from it would not be the text the server hashed. This
// parser keeps every scalar's text as served; the server writes them with the same
// serializer that wrote the canonical payload, so sorting keys and dropping white space
// rebuilds the canonical text byte for byte.

export function parseRaw(text) {
  let i = 0;
  const scalar = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null/y;
  const fail = (what) => {
    throw new Error(`JSON: ${what} at offset ${i}`);
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const expect = (c) => {
    ws();
    if (text[i] !== c) fail(`expected ${c}`);
    i++;
  };
  const string = () => {
    const start = i;
    i++;
    while (i < text.length && text[i] !== '"') i += text[i] === '\\' ? 2 : 1;
    if (i >= text.length) fail('unterminated string');
    i++;
    const raw = text.slice(start, i);
    return { kind: 'string', raw, value: JSON.parse(raw) };
  };
  const value = () => {
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const entries = [];
      ws();
      if (text[i] === '}') {
        i++;
        return { kind: 'object', entries };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = string();
        expect(':');
        entries.push([key, value()]);
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        expect('}');
        return { kind: 'object', entries };
      }
    }
    if (c === '[') {
      i++;
      const items = [];
      ws();
      if (text[i] === ']') {
        i++;
        return { kind: 'array', items };
      }
      for (;;) {
        items.push(value());
        ws();
        if (text[i] === ',') {
          i++;
          continue;
        }
        expect(']');
        return { kind: 'array', items };
      }
    }
    if (c === '"') return string();
    scalar.lastIndex = i;
    const m = scalar.exec(text);
    if (!m) fail('unexpected character');
    i += m[0].length;
    return { kind: 'scalar', raw: m[0] };
  };
  const root = value();
  ws();
  if (i !== text.length) fail('trailing text');
  return root;
}

// The member `name` of a raw object, or undefined.
export function member(node, name) {
  if (!node || node.kind !== 'object') return undefined;
  const hit = node.entries.find(([k]) => k.value === name);
  return hit && hit[1];
}

// Rust orders map keys by their UTF-8 bytes; JavaScript's default sort uses UTF-16 units,
// which differ above U+FFFF.
function compareUtf8(a, b) {
  const x = enc.encode(a);
  const y = enc.encode(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}

export function canonical(node) {
  switch (node.kind) {
    case 'object':
      return `{${[...node.entries]
        .sort(([a], [b]) => compareUtf8(a.value, b.value))
        .map(([k, v]) => `${k.raw}:${canonical(v)}`)
        .join(',')}}`;
    case 'array':
      return `[${node.items.map(canonical).join(',')}]`;
    default:
      return node.raw;
  }
}

// The text of a raw tree indented for reading, every scalar exactly as served.
export function pretty(node, indent = '') {
  const inner = `${indent}  `;
  switch (node.kind) {
    case 'object':
      if (!node.entries.length) return '{}';
      return `{\n${node.entries.map(([k, v]) => `${inner}${k.raw}: ${pretty(v, inner)}`).join(',\n')}\n${indent}}`;
    case 'array':
      if (!node.items.length) return '[]';
      return `[\n${node.items.map((v) => `${inner}${pretty(v, inner)}`).join(',\n')}\n${indent}]`;
    default:
      return node.raw;
  }
}

// Each leaf of a raw tree by its dotted path (objects descended, arrays kept whole), as its
// canonical text: what a field-level diff compares.
export function leaves(node, prefix = '', out = new Map()) {
  if (node.kind === 'object' && node.entries.length) {
    for (const [k, v] of node.entries) leaves(v, prefix ? `${prefix}.${k.value}` : k.value, out);
  } else if (prefix) {
    out.set(prefix, canonical(node));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Event hashes (README, "Hashes and exact numbers"; events/src/seal.rs).

// "2026-11-28T14:16:28.487624Z" as integer microseconds since the epoch.
export function micros(rfc3339) {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$/.exec(rfc3339);
  if (!m) throw new Error(`recorded_at is not RFC 3339 UTC: ${rfc3339}`);
  const seconds = BigInt(Date.parse(`${m[1]}Z`) / 1000);
  const fraction = BigInt((m[2] || '').padEnd(9, '0').slice(0, 6));
  return (seconds * 1000000n + fraction).toString();
}

const ABSENT_V1 = new Uint8Array(8);
const ABSENT_V2 = new Uint8Array(8).fill(0xff);

function lengthPrefixed(text) {
  const bytes = enc.encode(text);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, BigInt(bytes.length));
  return concat(len, bytes);
}

// The exact bytes whose SHA-256 is the event's hash, from one raw history entry. The
// event's account is its actor's: the history serves only the caller's account's events,
// and every actor of them, key or system, belongs to that account.
export function hashInput(entry) {
  const text = (name) => {
    const node = member(entry, name);
    if (!node) throw new Error(`the event has no ${name}`);
    return node.kind === 'string' ? node.value : node.raw;
  };
  const optional = (node) => (!node || node.raw === 'null' ? null : node.value);
  const actor = member(entry, 'actor');
  const version = text('hash_version');
  let absent;
  if (version === '1') absent = ABSENT_V1;
  else if (version === '2') absent = ABSENT_V2;
  else throw new Error(`unknown hash version ${version}`);
  const fields = [
    `taskledger-event-v${version}`,
    text('prev_hash'),
    text('event_id'),
    text('type'),
    text('version'),
    text('task_id'),
    member(actor, 'account_id').value,
    text('sequence'),
    text('global_position'),
    micros(text('recorded_at')),
    member(actor, 'account_id').value,
    optional(member(actor, 'key_id')),
    member(actor, 'scope').value,
    optional(member(entry, 'request_id')),
    canonical(member(entry, 'payload')),
  ];
  return concat(...fields.map((f) => (f === null ? absent : lengthPrefixed(f))));
}

function describe(e) {
  return `event ${e.sequence} (${e.type}, global position ${e.global_position}, id ${e.event_id})`;
}

// Checks one task's whole history. `raw` is the parsed-as-text history (its entries in
// `events`, task_id added to each), `events` the same entries parsed plainly. Returns
// [{name, ok, detail}]: the content hashes, then the chain.
export async function checkChain(raw, events) {
  const hashes = { name: 'Content hashes', ok: true, detail: `${events.length} recomputed` };
  const chain = { name: 'Chain links', ok: true, detail: 'every prev_hash links to the previous event; the first is genesis' };
  if (events.length === 0) {
    chain.ok = false;
    chain.detail = 'the task has no events';
  }
  for (let i = 0; i < events.length; i++) {
    const e = events[i];
    if (hashes.ok) {
      let expected;
      try {
        expected = bytesToHex(await sha256(hashInput(raw[i])));
      } catch (err) {
        expected = `unreadable (${err.message})`;
      }
      if (expected !== e.hash) {
        hashes.ok = false;
        hashes.detail = `${describe(e)}: the stored hash does not match the event's content`;
      }
    }
    if (chain.ok) {
      const wantSeq = i + 1;
      const wantPrev = i === 0 ? GENESIS_HASH : events[i - 1].hash;
      if (e.sequence !== wantSeq) {
        chain.ok = false;
        chain.detail = `${describe(e)}: expected sequence ${wantSeq} (an event is missing)`;
      } else if (e.prev_hash !== wantPrev) {
        chain.ok = false;
        chain.detail = i === 0
          ? `${describe(e)}: the first event's prev_hash is not the genesis hash`
          : `${describe(e)}: prev_hash is not the hash of event ${events[i - 1].sequence}`;
      }
    }
  }
  return [hashes, chain];
}

// ---------------------------------------------------------------------------------------
// RFC 6962 Merkle trees: leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right).
// The data of a ledger leaf is the event hash's 32 bytes.

export async function leafHash(data) {
  return sha256(concat(Uint8Array.of(0), data));
}

export async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

// RFC 9162 section 2.1.3.2: whether `path` proves `leaf` (a leaf hash) at `index` in the tree
// of `size` leaves whose root is `root`. Sizes may exceed 2^32, so no bitwise operators.
export async function verifyInclusion(index, size, leaf, path, root) {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) {
    return false;
  }
  let fn = index;
  let sn = size - 1;
  let r = leaf;
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await nodeHash(p, r);
      if (fn % 2 === 0) {
        while (fn % 2 === 0 && fn !== 0) {
          fn = Math.floor(fn / 2);
          sn = Math.floor(sn / 2);
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn = Math.floor(fn / 2);
    sn = Math.floor(sn / 2);
  }
  return sn === 0 && equalBytes(r, root);
}

// Whether `signatureHex` is the Ed25519 signature of the UTF-8 `message` by `publicKeyHex`.
export async function verifyEd25519(publicKeyHex, message, signatureHex) {
  const key = await crypto.subtle.importKey('raw', hexToBytes(publicKeyHex), { name: 'Ed25519' }, false, ['verify']);
  return crypto.subtle.verify({ name: 'Ed25519' }, key, hexToBytes(signatureHex), enc.encode(message));
}

// Whether the signed text binds the digest's fields: a JSON object with equal fields, or a
// text that names each of them.
export function messageBinds(digest) {
  const want = { account_id: digest.account_id, tree_size: digest.tree_size, root_hash: digest.root_hash };
  try {
    const signed = JSON.parse(digest.signed_message);
    if (signed && typeof signed === 'object') {
      return Object.entries(want).every(([k, v]) => String(signed[k]) === String(v));
    }
  } catch {
    // Not JSON: look for the values as words of the text.
  }
  const words = new Set(String(digest.signed_message).split(/[^0-9A-Za-z_-]+/));
  return Object.values(want).every((v) => words.has(String(v)));
}

// Checks the digest and each event's inclusion proof. `proofs[i]` is the answer of
// /v1/ledger/proof/inclusion for events[i] (null when the event is newer than the digest).
export async function checkDigest(digest, publicKeys, events, proofs) {
  const signature = { name: 'Digest signature', ok: false, detail: '' };
  const inclusion = { name: 'Inclusion proofs', ok: true, detail: '' };
  const key = (publicKeys.keys || []).find((k) => k.key_id === digest.key_id);
  if (digest.algorithm !== 'ed25519') {
    signature.detail = `unknown signature algorithm ${digest.algorithm}`;
  } else if (!key) {
    signature.detail = `signing key ${digest.key_id} is not among the published public keys`;
  } else if (!messageBinds(digest)) {
    signature.detail = 'the signed message does not name this account, tree size and root hash';
  } else if (events.length && digest.account_id !== events[0].actor.account_id) {
    signature.detail = `the digest is of account ${digest.account_id}, not this task's`;
  } else {
    let valid = false;
    try {
      valid = await verifyEd25519(key.public_key, digest.signed_message, digest.signature);
    } catch (err) {
      signature.detail = `the signature could not be checked: ${err.message}`;
    }
    if (valid) {
      signature.ok = true;
      signature.detail = `signed by ${digest.key_id} at ${digest.signed_at}; tree of ${digest.tree_size} events`;
    } else if (!signature.detail) {
      signature.detail = `the signature does not verify with the published key ${digest.key_id}`;
    }
  }
  let root;
  try {
    root = hexToBytes(digest.root_hash);
  } catch (err) {
    inclusion.ok = false;
    inclusion.detail = `the digest's root hash is unreadable: ${err.message}`;
    return [inclusion, signature];
  }
  let checked = 0;
  let newer = 0;
  for (let i = 0; i < events.length; i++) {
    const e = events[i];
    const proof = proofs[i];
    if (proof === null) {
      newer++;
      continue;
    }
    let ok = false;
    try {
      ok = proof.tree_size === digest.tree_size
        && await verifyInclusion(proof.leaf_index, proof.tree_size, await leafHash(hexToBytes(e.hash)),
          proof.audit_path.map(hexToBytes), root);
    } catch {
      ok = false;
    }
    if (!ok) {
      inclusion.ok = false;
      inclusion.detail = `${describe(e)}: its inclusion proof does not lead to the signed root`;
      break;
    }
    checked++;
  }
  if (inclusion.ok) {
    inclusion.detail = `${checked} of ${events.length} events proven in the signed tree of ${digest.tree_size}`;
    if (newer) {
      inclusion.ok = false;
      inclusion.partial = true;
      inclusion.detail += `; ${newer} newer than the digest, not checked yet`;
    }
  }
  return [inclusion, signature];
}
