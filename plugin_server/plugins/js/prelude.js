// Runs first in every JavaScript plugin's isolate (plugin_server/plugins/js/engine.py).
// It gives the plugin the original server's globals (console, fetch, posthog,
// RetryError, Buffer, require) and builds the bridge the worker drives: the
// plugin's meta calls become requests in an outbox that the worker reads as
// JSON, and their answers come back through resolve(). Nothing here can reach
// anything outside the isolate; __TOKEN__ is replaced by a random name per load.
(function (global) {
  "use strict";
  const now = Date.now.bind(Date);
  const stringify = JSON.stringify;
  const parse = JSON.parse;
  delete global.WebAssembly;
  delete global.SharedArrayBuffer;
  delete global.Atomics;

  let deadline = Infinity;
  let limitSeconds = 30;
  let metaCalls = 0;
  let metaCallsMax = Infinity;
  let nextId = 1;
  let outbox = [];
  const waiting = new Map();
  const timers = new Map();
  const calls = new Map();

  const plural = (n) => `${n} second${n === 1 ? "" : "s"}`;
  Object.defineProperty(global, "__guard___TOKEN__", {
    value: function (line, column) {
      if (now() > deadline) {
        throw new Error(`Script execution timed out after looping for ${plural(limitSeconds)} on line ${line}:${column}`);
      }
    },
  });

  function toPlain(value) {
    return value === undefined ? null : parse(stringify(value, (key, item) => (item === undefined ? null : item)));
  }

  function request(api, method, args, kwargs) {
    metaCalls += 1;
    if (metaCalls > metaCallsMax) {
      return Promise.reject(new Error(`Plugin made more than ${metaCallsMax} meta calls in one call`));
    }
    let item;
    try {
      item = { t: "meta", id: nextId++, api, method, args: toPlain(args), kwargs: toPlain(kwargs || {}) };
    } catch (error) {
      return Promise.reject(new Error(`meta.${api}.${method}(): arguments must be JSON values (${error.message})`));
    }
    return new Promise((resolve, reject) => {
      waiting.set(item.id, { resolve, reject });
      outbox.push(item);
    });
  }

  function formatArg(arg) {
    if (arg instanceof Error) return `${arg.name}: ${arg.message}`;
    if (arg !== null && typeof arg === "object") {
      try {
        return stringify(arg);
      } catch (error) {
        return String(arg);
      }
    }
    return String(arg);
  }

  const console = {};
  for (const level of ["debug", "log", "info", "warn", "error"]) {
    console[level] = (...args) => {
      outbox.push({ t: "log", level: level.toUpperCase(), message: args.map(formatArg).join(" ") });
    };
  }

  class RetryError extends Error {
    constructor(message) {
      super(message);
      this.name = "RetryError";
    }
  }

  // --- Buffer: base64 and utf-8, as plugins used it (V8 alone has no atob nor TextEncoder) ---
  const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const utf8Bytes = (text) => Array.from(unescape(encodeURIComponent(text)), (c) => c.charCodeAt(0));
  function utf8Text(bytes) {
    const binary = Array.from(bytes, (b) => String.fromCharCode(b)).join("");
    try {
      return decodeURIComponent(escape(binary));
    } catch (error) {
      return binary;
    }
  }
  function base64Bytes(text) {
    const clean = String(text).replace(/-/g, "+").replace(/_/g, "/").replace(/[^A-Za-z0-9+/]/g, "");
    const bytes = [];
    for (let i = 0; i < clean.length; i += 4) {
      const n = [0, 1, 2, 3].map((k) => (i + k < clean.length ? ALPHABET.indexOf(clean[i + k]) : -1));
      bytes.push((n[0] << 2) | (n[1] >> 4));
      if (n[2] >= 0) bytes.push(((n[1] & 15) << 4) | (n[2] >> 2));
      if (n[3] >= 0) bytes.push(((n[2] & 3) << 6) | n[3]);
    }
    return bytes;
  }
  function base64Text(bytes) {
    let out = "";
    for (let i = 0; i < bytes.length; i += 3) {
      const [a, b, c] = [bytes[i], bytes[i + 1], bytes[i + 2]];
      out += ALPHABET[a >> 2] + ALPHABET[((a & 3) << 4) | ((b || 0) >> 4)];
      out += b === undefined ? "=" : ALPHABET[((b & 15) << 2) | ((c || 0) >> 6)];
      out += c === undefined ? "=" : ALPHABET[c & 63];
    }
    return out;
  }
  class Buffer extends Uint8Array {
    static from(value, encoding) {
      if (value instanceof Uint8Array || Array.isArray(value)) return new Buffer(value);
      const text = String(value);
      if (encoding === "base64" || encoding === "base64url") return new Buffer(base64Bytes(text));
      if (encoding === "hex") {
        return new Buffer((text.match(/../g) || []).map((pair) => parseInt(pair, 16)));
      }
      if (encoding === "binary" || encoding === "latin1") return new Buffer(Array.from(text, (c) => c.charCodeAt(0) & 255));
      return new Buffer(utf8Bytes(text));
    }
    static isBuffer(value) {
      return value instanceof Buffer;
    }
    static byteLength(value, encoding) {
      return Buffer.from(value, encoding).length;
    }
    toString(encoding) {
      if (encoding === "base64") return base64Text(this);
      if (encoding === "hex") return Array.from(this, (b) => b.toString(16).padStart(2, "0")).join("");
      return utf8Text(this);
    }
    toJSON() {
      return { type: "Buffer", data: Array.from(this) };
    }
  }

  // --- fetch (node-fetch's shape), through the worker's guarded meta host --------------
  class Headers {
    constructor(values) {
      this._values = {};
      for (const [name, value] of Object.entries(values || {})) this._values[name.toLowerCase()] = String(value);
    }
    get(name) {
      const value = this._values[String(name).toLowerCase()];
      return value === undefined ? null : value;
    }
    has(name) {
      return String(name).toLowerCase() in this._values;
    }
    forEach(callback) {
      for (const [name, value] of Object.entries(this._values)) callback(value, name);
    }
    raw() {
      return { ...this._values };
    }
  }

  async function fetch(url, init) {
    const options = init || {};
    const kwargs = { method: String(options.method || "GET").toUpperCase() };
    if (options.headers) {
      kwargs.headers = options.headers instanceof Headers ? options.headers.raw() : options.headers;
    }
    if (options.body !== undefined && options.body !== null) {
      kwargs.data = typeof options.body === "string" ? options.body : stringify(options.body);
    }
    if (options.timeout) kwargs.timeout = options.timeout / 1000;
    const answer = await request("fetch", "fetch", [String(url)], kwargs);
    const text = answer.text;
    return {
      status: answer.status,
      statusText: String(answer.status),
      ok: answer.ok,
      url: answer.url,
      headers: new Headers(answer.headers),
      text: async () => text,
      json: async () => parse(text),
      buffer: async () => Buffer.from(text),
    };
  }

  // --- digests for crypto.createHash: md5, sha1, sha256 over bytes (FIPS 180-4, RFC 1321) ---
  function padded(bytes, littleEndian) {
    const length = bytes.length;
    const out = bytes.slice();
    out.push(0x80);
    while (out.length % 64 !== 56) out.push(0);
    const bits = length * 8;
    const words = [bits >>> 0, Math.floor(bits / 0x100000000) >>> 0];
    const lengthBytes = [];
    for (const word of littleEndian ? words : [words[1], words[0]]) {
      for (let k = 0; k < 4; k++) lengthBytes.push(littleEndian ? (word >>> (8 * k)) & 255 : (word >>> (24 - 8 * k)) & 255);
    }
    return out.concat(lengthBytes);
  }
  const rotl = (x, n) => (x << n) | (x >>> (32 - n));
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  const bigEndianWords = (block) => Array.from({ length: 16 }, (_, i) => (block[i * 4] << 24) | (block[i * 4 + 1] << 16) | (block[i * 4 + 2] << 8) | block[i * 4 + 3]);
  const wordsToBytes = (words, littleEndian) => words.flatMap((w) => [0, 1, 2, 3].map((k) => (littleEndian ? (w >>> (8 * k)) & 255 : (w >>> (24 - 8 * k)) & 255)));

  const K256 = [];
  {
    const primes = [];
    for (let n = 2; primes.length < 64; n++) if (primes.every((p) => n % p !== 0)) primes.push(n);
    for (const p of primes) K256.push((Math.cbrt(p) % 1) * 0x100000000 >>> 0);
  }
  function sha256(bytes) {
    const h = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    const data = padded(bytes, false);
    for (let offset = 0; offset < data.length; offset += 64) {
      const w = bigEndianWords(data.slice(offset, offset + 64));
      for (let i = 16; i < 64; i++) {
        const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
        const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let [a, b, c, d, e, f, g, k] = h;
      for (let i = 0; i < 64; i++) {
        const t1 = (k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i]) | 0;
        const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        [k, g, f, e, d, c, b, a] = [g, f, e, (d + t1) | 0, c, b, a, (t1 + t2) | 0];
      }
      [a, b, c, d, e, f, g, k].forEach((v, i) => (h[i] = (h[i] + v) | 0));
    }
    return wordsToBytes(h, false);
  }
  function sha1(bytes) {
    const h = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];
    const data = padded(bytes, false);
    for (let offset = 0; offset < data.length; offset += 64) {
      const w = bigEndianWords(data.slice(offset, offset + 64));
      for (let i = 16; i < 80; i++) w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
      let [a, b, c, d, e] = h;
      for (let i = 0; i < 80; i++) {
        const [f, k] = i < 20 ? [(b & c) | (~b & d), 0x5a827999] : i < 40 ? [b ^ c ^ d, 0x6ed9eba1] : i < 60 ? [(b & c) | (b & d) | (c & d), 0x8f1bbcdc] : [b ^ c ^ d, 0xca62c1d6];
        [e, d, c, b, a] = [d, c, rotl(b, 30), a, (rotl(a, 5) + f + e + k + w[i]) | 0];
      }
      [a, b, c, d, e].forEach((v, i) => (h[i] = (h[i] + v) | 0));
    }
    return wordsToBytes(h, false);
  }
  const MD5_SHIFTS = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
  const MD5_K = Array.from({ length: 64 }, (_, i) => (Math.abs(Math.sin(i + 1)) * 0x100000000) >>> 0);
  function md5(bytes) {
    const h = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    const data = padded(bytes, true);
    for (let offset = 0; offset < data.length; offset += 64) {
      const m = Array.from({ length: 16 }, (_, i) => data[offset + i * 4] | (data[offset + i * 4 + 1] << 8) | (data[offset + i * 4 + 2] << 16) | (data[offset + i * 4 + 3] << 24));
      let [a, b, c, d] = h;
      for (let i = 0; i < 64; i++) {
        const round = i >> 4;
        const f = round === 0 ? (b & c) | (~b & d) : round === 1 ? (d & b) | (~d & c) : round === 2 ? b ^ c ^ d : c ^ (b | ~d);
        const g = round === 0 ? i : round === 1 ? (5 * i + 1) % 16 : round === 2 ? (3 * i + 5) % 16 : (7 * i) % 16;
        const sum = (a + f + MD5_K[i] + m[g]) | 0;
        [a, d, c, b] = [d, c, b, (b + rotl(sum, MD5_SHIFTS[round * 4 + (i % 4)])) | 0];
      }
      [a, b, c, d].forEach((v, i) => (h[i] = (h[i] + v) | 0));
    }
    return wordsToBytes(h, true);
  }
  const DIGESTS = { md5, sha1, sha256 };

  // --- require: the modules the original provided that can run here ----------------------
  function hashOf(algorithm) {
    let bytes = [];
    const hash = {
      update(data, encoding) {
        bytes = bytes.concat(Array.from(data instanceof Uint8Array ? data : Buffer.from(data, encoding)));
        return hash;
      },
      digest(encoding) {
        const result = new Buffer(DIGESTS[algorithm](bytes));
        return encoding ? result.toString(encoding) : result;
      },
    };
    return hash;
  }
  const crypto = {
    createHash(algorithm) {
      const name = String(algorithm).toLowerCase();
      if (!Object.prototype.hasOwnProperty.call(DIGESTS, name)) throw new Error(`Digest method not supported: ${algorithm}`);
      return hashOf(name);
    },
    randomUUID() {
      const bytes = new Uint8Array(16);
      for (let i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
      bytes[6] = (bytes[6] & 0x0f) | 0x40;
      bytes[8] = (bytes[8] & 0x3f) | 0x80;
      const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    },
  };
  const contrib = {
    createBuffer() {
      throw new Error("createBuffer from @posthog/plugin-contrib is not available in this server");
    },
    isNumeric: (value) => typeof value === "number" || (typeof value === "string" && value.trim() !== "" && !isNaN(Number(value))),
    isValidEmail: (value) => typeof value === "string" && /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(value),
    retry: async (fn, attempts = 3) => {
      let last;
      for (let i = 0; i < attempts; i++) {
        try {
          return await fn();
        } catch (error) {
          last = error;
        }
      }
      throw last;
    },
  };
  const fetchModule = Object.assign(fetch, { default: fetch, Headers });
  const modules = {
    "@posthog/plugin-scaffold": { RetryError },
    "@posthog/plugin-contrib": contrib,
    "node-fetch": fetchModule,
    crypto,
    url: { URL: global.URL, URLSearchParams: global.URLSearchParams, parse: (text) => new global.URL(text) },
    buffer: { Buffer },
  };
  function require(name) {
    if (Object.prototype.hasOwnProperty.call(modules, name)) return modules[name];
    throw new Error(`Cannot import '${name}'! This package is not provided by PostHog in plugins.`);
  }

  // --- timers: fired by the worker when their time comes --------------------------------
  let nextTimer = 1;
  function setTimeout(callback, ms, ...args) {
    const id = nextTimer++;
    timers.set(id, { due: now() + Math.max(0, Number(ms) || 0), callback, args });
    return id;
  }
  function clearTimeout(id) {
    timers.delete(id);
  }

  // --- meta -------------------------------------------------------------------------------
  function makeMeta(config, attachments) {
    const api = (name, methods) => {
      const object = {};
      for (const [jsName, method] of Object.entries(methods)) {
        object[jsName] = (...args) => request(name, method, args);
      }
      return object;
    };
    const storage = api("storage", { get: "get", del: "delete" });
    storage.set = (key, value) => (value === undefined ? request("storage", "delete", [key]) : request("storage", "set", [key, value]));
    const jobs = new Proxy(
      {},
      {
        get(_target, name) {
          if (typeof name !== "string") return undefined;
          return (payload) => ({
            runNow: () => request("jobs", "run_now", [name, payload === undefined ? null : payload]),
            runIn: (duration, unit) => request("jobs", "run_in", [name, payload === undefined ? null : payload], { duration, unit }),
            runAt: (date) => request("jobs", "run_at", [name, payload === undefined ? null : payload, new Date(date).toISOString()]),
          });
        },
      },
    );
    const files = {};
    for (const [key, value] of Object.entries(attachments)) {
      files[key] = { content_type: value.content_type, file_name: value.file_name, contents: Buffer.from(value.contents, "base64") };
    }
    return {
      config,
      attachments: files,
      global: {},
      cache: api("cache", { set: "set", get: "get", incr: "incr", expire: "expire", lpush: "lpush", lrange: "lrange", llen: "llen", lpop: "lpop", lrem: "lrem" }),
      storage,
      geoip: api("geoip", { locate: "locate" }),
      jobs,
      utils: {},
    };
  }

  const posthog = {
    capture(event, properties) {
      outbox.push({ t: "capture", args: toPlain([event, properties || {}]) });
    },
  };

  Object.assign(global, { console, fetch, posthog, RetryError, Buffer, require, setTimeout, clearTimeout });

  // --- the bridge the worker drives --------------------------------------------------------
  const hooks = ["setupPlugin", "teardownPlugin", "processEvent", "processEventBatch", "onEvent", "onSnapshot",
    "runEveryMinute", "runEveryHour", "runEveryDay", "jobs"];
  let plugin = {};
  let meta = null;

  function describe(error) {
    if (error instanceof Error) {
      return { name: error.name || "Error", message: String(error.message), stack: String(error.stack || "") };
    }
    return { name: "Error", message: formatArg(error), stack: "" };
  }

  const host = {
    configure(settings) {
      limitSeconds = settings.limitSeconds;
      metaCallsMax = settings.metaCallsMax;
      meta = makeMeta(settings.config, settings.attachments);
      return 0;
    },
    exports(found) {
      // The original's order: exports, then module.exports, then the module's globals.
      for (const name of hooks) {
        for (const place of found) {
          if (place && place[name]) {
            plugin[name] = place[name];
            break;
          }
        }
      }
      return stringify(hooks.filter((name) => typeof plugin[name] === "function" || (name === "jobs" && plugin.jobs && typeof plugin.jobs === "object")).concat(
        plugin.jobs && typeof plugin.jobs === "object" ? Object.keys(plugin.jobs).filter((job) => typeof plugin.jobs[job] === "function").map((job) => `job:${job}`) : []));
    },
    start(callId, name, args, limitMs) {
      deadline = now() + limitMs;
      metaCalls = 0;
      const fn = name.startsWith("job:") ? plugin.jobs[name.slice(4)] : plugin[name];
      const state = { done: false };
      calls.set(callId, state);
      try {
        const result = fn.apply(plugin, [...args, meta]);
        Promise.resolve(result).then(
          (value) => Object.assign(state, { done: true, value }),
          (error) => Object.assign(state, { done: true, error: describe(error) }),
        );
      } catch (error) {
        Object.assign(state, { done: true, error: describe(error) });
      }
      return host.poll(callId);
    },
    poll(callId) {
      const state = calls.get(callId);
      const items = outbox;
      outbox = [];
      let nextDue = null;
      for (const timer of timers.values()) if (nextDue === null || timer.due < nextDue) nextDue = timer.due;
      const answer = { done: state.done, outbox: items, waiting: waiting.size, timer: nextDue === null ? null : nextDue - now() };
      if (state.done) {
        calls.delete(callId);
        if (state.error) answer.error = state.error;
        else {
          try {
            answer.value = toPlain(state.value);
          } catch (error) {
            answer.error = { name: "TypeError", message: `The plugin returned something that is not plain data (${error.message})`, stack: "" };
          }
        }
      }
      return stringify(answer);
    },
    resolve(id, ok, value) {
      const waiter = waiting.get(id);
      if (!waiter) return 0;
      waiting.delete(id);
      if (ok) waiter.resolve(value);
      else waiter.reject(new Error(value));
      return 0;
    },
    fireTimers(limitMs) {
      deadline = Math.min(deadline, now() + limitMs);
      const due = [...timers.entries()].filter(([, timer]) => timer.due <= now());
      for (const [id, timer] of due) {
        timers.delete(id);
        timer.callback(...timer.args);
      }
      return 0;
    },
    abandon(callId) {
      // Other calls of this isolate may be in flight (concurrent exports): only this one goes.
      calls.delete(callId);
      return 0;
    },
  };
  Object.defineProperty(global, "__host___TOKEN__", { value: Object.freeze(host) });
})(globalThis);
