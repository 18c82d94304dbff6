/*
 * sessiongate bootstrap page script (inline, behind a nonce).
 *
 * Served for a tab-mode navigation that arrives without identity (reload, address
 * bar, bookmark, new or duplicated tab). It finds the tab's session again — or gets
 * a new one — and reloads the same URL with a single-use ticket:
 *
 *   1. read the tab's token and tab id from sessionStorage;
 *   2. is another live document of this browser holding this tab id (a duplicated
 *      tab)? Then this tab takes a new tab id;
 *   3. POST P/session with the page's challenge (and the token, if any);
 *   4. store token, handle and tab id; location.replace(same URL + __sg_t + __sg_b);
 *   5. on failure, say so and offer "Try again".
 *
 * See src/agent/PROTOCOL.md, "The bootstrap page". The page's CSP allows this
 * script, its own <style> and same-origin fetch; nothing else.
 */
(() => {
  "use strict";

  const KEY = {
    token: "sessiongate.token",
    tab: "sessiongate.tab",
    handle: "sessiongate.handle",
    tickets: "sessiongate.tickets",
  };
  const PROBE_MS = 150; // how long a live tab has to answer a probe
  const REQUEST_MS = 15000; // give up on POST session after this
  const SHOW_PROGRESS_MS = 1000; // say "Starting…" only if it takes a while

  const meta = (name) => {
    const el = document.querySelector('meta[name="' + name + '"]');
    return el ? el.getAttribute("content") || "" : "";
  };
  const challenge = meta("sessiongate-challenge");
  const prefix = (meta("sessiongate-prefix") || "/__sessiongate").replace(/\/+$/, "");
  // meta("sessiongate-duplicate-tab") is informational: the gateway applies the
  // policy; this script reports a duplicate either way (it needs a tab id of its own).

  // --------------------------------------------------------------------- tools

  const storage = (() => {
    try {
      const s = window.sessionStorage;
      s.setItem("sessiongate.probe", "1");
      s.removeItem("sessiongate.probe");
      return s;
    } catch (_) {
      return null;
    }
  })();

  const load = (key) => {
    try {
      return storage.getItem(key);
    } catch (_) {
      return null;
    }
  };

  const save = (key, value) => {
    try {
      storage.setItem(key, value);
      return true;
    } catch (_) {
      return false;
    }
  };

  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  /** Splits an absolute URL into what precedes the query, the query and the hash. */
  function split(href) {
    const hashAt = href.indexOf("#");
    const hash = hashAt < 0 ? "" : href.slice(hashAt);
    const rest = hashAt < 0 ? href : href.slice(0, hashAt);
    const queryAt = rest.indexOf("?");
    return queryAt < 0
      ? { base: rest, query: null, hash }
      : { base: rest.slice(0, queryAt), query: rest.slice(queryAt + 1), hash };
  }

  const paramName = (part) => {
    const name = part.split("=")[0];
    try {
      return decodeURIComponent(name.replace(/\+/g, " "));
    } catch (_) {
      return name;
    }
  };

  /** The current bootstrap hop (`__sg_b`), 0 when absent. */
  function currentHop() {
    const { query } = split(location.href);
    let hop = 0;
    for (const part of query ? query.split("&") : []) {
      if (paramName(part) !== "__sg_b") continue;
      const value = parseInt(part.slice(part.indexOf("=") + 1), 10);
      hop = Number.isFinite(value) && value > 0 ? value : 0;
    }
    return hop;
  }

  /** The URL without `__sg*` parameters; the others stay byte for byte, and the hash too. */
  function stripReserved(href) {
    const { base, query, hash } = split(href);
    if (query === null) return href;
    const kept = query.split("&").filter((part) => part !== "" && !paramName(part).startsWith("__sg"));
    return base + (kept.length ? "?" + kept.join("&") : "") + hash;
  }

  function withParams(href, pairs) {
    const { base, query, hash } = split(href);
    const added = pairs.map(([name, value]) => name + "=" + encodeURIComponent(value)).join("&");
    return base + "?" + (query ? query + "&" : "") + added + hash;
  }

  // ------------------------------------------------------------ duplicate tabs

  /** Does any other document answer `{alive: tabId}` to `{probe: tabId}` in time? */
  function probe(tabId) {
    return new Promise((resolve) => {
      let channel;
      try {
        channel = new BroadcastChannel("sessiongate");
      } catch (_) {
        resolve(false);
        return;
      }
      const done = (alive) => {
        clearTimeout(timer);
        try {
          channel.close();
        } catch (_) {
          /* already closed */
        }
        resolve(alive);
      };
      const timer = setTimeout(() => done(false), PROBE_MS);
      channel.onmessage = (event) => {
        const message = event.data;
        if (message && typeof message === "object" && message.alive === tabId) done(true);
      };
      try {
        channel.postMessage({ probe: tabId });
      } catch (_) {
        done(false);
      }
    });
  }

  /** Is the tab's Web Lock free? null when Web Locks are unavailable. */
  async function lockFree(name) {
    const locks = navigator.locks;
    if (!locks || typeof locks.request !== "function") return null;
    try {
      return await locks.request(name, { ifAvailable: true }, (lock) => lock !== null);
    } catch (_) {
      return null;
    }
  }

  /**
   * Is another live document of this browser using `tabId` (a duplicated tab, or a
   * window.open() that copied sessionStorage)? The holder of the tab's Web Lock is
   * asked to confirm on the channel, so a previous document of this very tab that
   * is still unloading does not count; one that stays silent but keeps the lock
   * (e.g. a frozen background tab) still does.
   */
  async function isDuplicate(tabId) {
    if (window.top !== window) return false; // a frame shares its tab's storage and lock
    const name = "sessiongate.tab." + tabId;
    const free = await lockFree(name);
    if (free === true) return false;
    if (await probe(tabId)) return true;
    if (free === null) return false; // no Web Locks: the probe is all we have
    return (await lockFree(name)) === false;
  }

  // ------------------------------------------------------------------- the page

  const main = document.getElementById("sessiongate") || document.body;
  let settled = false;

  function element(tag, text) {
    const el = document.createElement(tag);
    if (text != null) el.textContent = text;
    return el;
  }

  function showProgress() {
    if (settled || !main) return;
    main.replaceChildren(element("p", "Starting your session…"));
  }

  function fail(detail) {
    settled = true;
    if (!main) return;
    const title = element("h1", "This page could not start");
    const text = element("p", detail);
    const again = element("a", "Try again");
    const clean = stripReserved(location.href);
    again.href = clean;
    again.addEventListener("click", (event) => {
      if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      // A fresh bootstrap: without __sg_b, so the hop count starts again.
      if (clean === location.href) location.reload();
      else location.replace(clean);
    });
    const line = element("p");
    line.append(again);
    main.replaceChildren(title, text, line);
    again.focus();
  }

  async function run() {
    if (!challenge) {
      fail("The page is incomplete. Reload it to try again.");
      return;
    }
    if (!storage) {
      fail(
        "This application keeps one session per browser tab and needs session storage " +
          "for it, which this browser window does not allow.",
      );
      return;
    }

    const token = load(KEY.token);
    let tabId = load(KEY.tab);
    const duplicate = tabId ? await isDuplicate(tabId) : false;
    if (!tabId || duplicate) tabId = randomId();

    const headers = { "Content-Type": "application/json", "X-Sessiongate-Agent": "1" };
    if (token) headers["X-Session-Token"] = token;
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    const timer = controller ? setTimeout(() => controller.abort(), REQUEST_MS) : 0;

    let reply;
    try {
      const response = await fetch(prefix + "/session", {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        headers,
        body: JSON.stringify({ challenge, duplicate }),
        signal: controller ? controller.signal : undefined,
      });
      if (response.status !== 200) {
        fail(
          response.status === 503
            ? "The server is busy. Please try again in a moment."
            : "The server did not accept the request (" + response.status + ").",
        );
        return;
      }
      reply = await response.json();
    } catch (_) {
      fail("The server could not be reached. Check the connection and try again.");
      return;
    } finally {
      clearTimeout(timer);
    }

    const valid = (v) => typeof v === "string" && v.length > 0 && v.length <= 1024;
    if (!reply || !valid(reply.handle) || !valid(reply.ticket) || (reply.token != null && !valid(reply.token))) {
      fail("The server sent an answer this page does not understand.");
      return;
    }

    const stored =
      (reply.token == null || save(KEY.token, reply.token)) && save(KEY.handle, reply.handle) && save(KEY.tab, tabId);
    if (!stored) {
      fail("This browser window refused to store the session for this tab.");
      return;
    }
    // Spare tickets for the agent of the next page (it drops them after 90 s).
    if (Array.isArray(reply.tickets) && reply.tickets.length) {
      save(KEY.tickets, JSON.stringify({ at: Date.now(), handle: reply.handle, tickets: reply.tickets.slice(0, 8) }));
    }

    settled = true;
    const hop = currentHop();
    location.replace(withParams(stripReserved(location.href), [["__sg_t", reply.ticket], ["__sg_b", String(hop + 1)]]));
  }

  setTimeout(showProgress, SHOW_PROGRESS_MS);
  run().catch(() => fail("Something went wrong while starting the session."));
})();
