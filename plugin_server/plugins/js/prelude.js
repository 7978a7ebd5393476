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

  // --- Buffer: base64 and utf-8, as plugins used it -----------------------------------
  class Buffer extends Uint8Array {
    static from(value, encoding) {
      if (value instanceof Uint8Array || Array.isArray(value)) return new Buffer(value);
      const text = String(value);
      if (encoding === "base64") {
        const binary = atob(text.replace(/[^A-Za-z0-9+/]/g, ""));
        return new Buffer(Array.from(binary, (c) => c.charCodeAt(0)));
      }
      if (encoding === "hex") {
        return new Buffer((text.match(/../g) || []).map((pair) => parseInt(pair, 16)));
      }
      return new Buffer(new TextEncoder().encode(text));
    }
    static isBuffer(value) {
      return value instanceof Buffer;
    }
    static byteLength(value, encoding) {
      return Buffer.from(value, encoding).length;
    }
    toString(encoding) {
      if (encoding === "base64") return btoa(Array.from(this, (b) => String.fromCharCode(b)).join(""));
      if (encoding === "hex") return Array.from(this, (b) => b.toString(16).padStart(2, "0")).join("");
      return new TextDecoder().decode(this);
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

  // --- require: the modules the original provided that can run here ----------------------
  function hashOf(algorithm) {
    const parts = [];
    const hash = {
      update(data, encoding) {
        parts.push(Buffer.isBuffer(data) ? data.toString("base64") : Buffer.from(data, encoding).toString("base64"));
        return hash;
      },
      digest(encoding) {
        return global.__hash___TOKEN__(algorithm, parts, encoding || "buffer");
      },
    };
    return hash;
  }
  const crypto = {
    createHash(algorithm) {
      const name = String(algorithm).toLowerCase();
      if (!["md5", "sha1", "sha256", "sha512"].includes(name)) throw new Error(`Digest method not supported: ${algorithm}`);
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
      return 0;
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
