/*
 * sessiongate agent.
 *
 * Injected by the gateway as the first element of <head> of every HTML page it
 * forwards (a classic, blocking script), so it runs before any script of the page.
 * It keeps the page attached to its server-side session:
 *
 *   - tab mode: the tab's token lives in sessionStorage; it is added as the
 *     X-Session-Token header to same-origin fetch/XHR, and single-use tickets
 *     (`__sg_t`) carry the session on navigations and on the requests that cannot
 *     set headers (WebSocket, EventSource, sendBeacon);
 *   - both modes: heartbeats keep the session alive while the tab is open, user
 *     activity is reported, a countdown dialog warns before an idle timeout and a
 *     notice says when the session has ended;
 *   - `window.sessiongate` lets the page observe and drive all of this.
 *
 * The wire protocol is src/agent/PROTOCOL.md. Plain ES2020, no dependencies, no
 * build step. The agent never throws into the page, never logs, and never writes
 * the token anywhere but sessionStorage and the X-Session-Token request header.
 */
(() => {
  "use strict";

  // Loaded twice (two tags, or an app that re-inserts it)? The first one rules.
  const MARK = Symbol.for("sessiongate.agent");
  if (window[MARK]) return;
  try {
    Object.defineProperty(window, MARK, { value: true });
  } catch (_) {
    return;
  }

  // ------------------------------------------------------------------ settings

  const script = document.currentScript;
  const data = (script && script.dataset) || {};
  const PREFIX = String(data.prefix || "/__sessiongate").replace(/\/+$/, "");
  const TAB = data.mode !== "browser"; // tab mode (default) or browser mode
  const PAGE_HANDLE = data.handle || null; // the session this page was served for
  const PAGE_TOKEN = TAB && data.token ? data.token : null; // only after mint/fork/rotate
  const NONCE = (script && script.nonce) || ""; // the page's CSP nonce, if any
  const LANGUAGE = String(data.lang || "auto").trim(); // browser.language
  // The token must not stay in the DOM, where any script or extension could read it.
  if (script && data.token) {
    try {
      script.removeAttribute("data-token");
    } catch (_) {
      /* nothing more we can do */
    }
  }

  const TOKEN_HEADER = "X-Session-Token";
  const STATE_HEADER = "X-Session-State";
  const TICKET_PARAM = "__sg_t";
  const CHANNEL = "sessiongate";
  const KEY = {
    token: "sessiongate.token",
    tab: "sessiongate.tab",
    handle: "sessiongate.handle",
    repair: "sessiongate.repair",
    tickets: "sessiongate.tickets", // left by the bootstrap page for the next agent
  };

  const MAX_TICKETS = 8; // pool size
  const TICKET_AGE = 90000; // tickets older than this are dropped (they live 2 min)
  const ACTIVITY_GAP = 5000; // at most one immediate activity heartbeat per 5 s
  const REPAIR_GAP = 10000; // at most one handle repair per 10 s
  const VERIFY_GAP = 2000; // at most one state-check heartbeat per 2 s
  const RETRY_MS = 15000; // retry of a failed heartbeat (capped by the interval)
  const SLACK = 250; // fire deadline timers a little late, once the server has moved
  const MAX_DELAY = 2147483647; // setTimeout's limit

  // ---------------------------------------------------------------------- texts

  /**
   * The built-in texts of the countdown window and the ended notice, by primary
   * language subtag (the same list as `LANGUAGES` in src/config/mod.rs). In
   * `message`, `{seconds}` becomes the time left with its unit, in the page's
   * language ("45 seconds", "45 Sekunden"), and `{stay}` the Stay button's text
   * (which may be overridden). `kept` is added to the notice when it
   * stopped a form or a navigation; `offline` shows when Stay or End failed.
   */
  const TEXTS = {
    en: {
      title: "Your session is about to end",
      message: "You have been inactive for a while. Your session will end in {seconds} unless you choose {stay}.",
      stay: "Stay",
      end: "End",
      ended: "Your session has ended.",
      restart: "Start again",
      kept: "What you entered is still on this page. Copy it before you start again.",
      offline: "The server could not be reached. Try again.",
    },
    de: {
      title: "Ihre Sitzung läuft gleich ab",
      message: "Sie waren eine Weile nicht aktiv. Ihre Sitzung endet in {seconds}, wenn Sie nicht „{stay}“ wählen.",
      stay: "Bleiben",
      end: "Beenden",
      ended: "Ihre Sitzung ist beendet.",
      restart: "Neu beginnen",
      kept: "Ihre Eingaben stehen noch auf dieser Seite. Kopieren Sie sie, bevor Sie neu beginnen.",
      offline: "Der Server ist nicht erreichbar. Bitte versuchen Sie es noch einmal.",
    },
    fr: {
      title: "Votre session va bientôt expirer",
      message: "Vous êtes inactif depuis un moment. Votre session se terminera dans {seconds}, sauf si vous choisissez «\u00a0{stay}\u00a0».",
      stay: "Rester",
      end: "Terminer",
      ended: "Votre session est terminée.",
      restart: "Recommencer",
      kept: "Ce que vous avez saisi est toujours sur cette page. Copiez-le avant de recommencer.",
      offline: "Le serveur est injoignable. Veuillez réessayer.",
    },
    es: {
      title: "Su sesión está a punto de terminar",
      message: "Lleva un rato sin actividad. Su sesión terminará en {seconds}, a menos que elija «{stay}».",
      stay: "Continuar",
      end: "Terminar",
      ended: "Su sesión ha terminado.",
      restart: "Empezar de nuevo",
      kept: "Lo que escribió sigue en esta página. Cópielo antes de empezar de nuevo.",
      offline: "No se pudo conectar con el servidor. Inténtelo de nuevo.",
    },
    it: {
      title: "La sessione sta per scadere",
      message: "Sei inattivo da un po'. La sessione terminerà tra {seconds}, a meno che tu non scelga «{stay}».",
      stay: "Resta",
      end: "Termina",
      ended: "La sessione è terminata.",
      restart: "Ricomincia",
      kept: "Quello che hai inserito è ancora in questa pagina. Copialo prima di ricominciare.",
      offline: "Impossibile raggiungere il server. Riprova.",
    },
    pt: {
      title: "A sessão está prestes a terminar",
      message: "Não houve atividade durante algum tempo. A sessão termina em {seconds}, a menos que escolha “{stay}”.",
      stay: "Continuar",
      end: "Terminar",
      ended: "A sessão terminou.",
      restart: "Começar de novo",
      kept: "O que escreveu continua nesta página. Copie-o antes de começar de novo.",
      offline: "O servidor não respondeu. Tente novamente.",
    },
    nl: {
      title: "Uw sessie loopt bijna af",
      message: "U bent een tijdje niet actief geweest. Uw sessie eindigt over {seconds}, tenzij u voor “{stay}” kiest.",
      stay: "Blijven",
      end: "Beëindigen",
      ended: "Uw sessie is beëindigd.",
      restart: "Opnieuw beginnen",
      kept: "Wat u hebt ingevuld, staat nog op deze pagina. Kopieer het voordat u opnieuw begint.",
      offline: "De server is niet bereikbaar. Probeer het opnieuw.",
    },
    pl: {
      title: "Sesja za chwilę wygaśnie",
      message: "Od dłuższego czasu nie było żadnej aktywności. Pozostały czas sesji: {seconds}. Wybierz „{stay}”, aby kontynuować.",
      stay: "Zostań",
      end: "Zakończ",
      ended: "Sesja została zakończona.",
      restart: "Zacznij od nowa",
      kept: "To, co wpisano, nadal jest na tej stronie. Skopiuj to, zanim zaczniesz od nowa.",
      offline: "Nie udało się połączyć z serwerem. Spróbuj ponownie.",
    },
  };

  const TEXT = readTexts(data.text); // browser.text: overrides of the built-in texts

  /** `data-text`: a JSON object of string overrides; anything else is ignored. */
  function readTexts(raw) {
    const texts = {};
    try {
      const parsed = raw ? JSON.parse(raw) : null;
      if (parsed && typeof parsed === "object") {
        for (const key of Object.keys(TEXTS.en)) {
          if (typeof parsed[key] === "string" && parsed[key]) texts[key] = parsed[key];
        }
      }
    } catch (_) {
      /* a damaged attribute: the built-in texts */
    }
    return texts;
  }

  /**
   * The language of the UI, decided when it is shown: `browser.language`, or with
   * "auto" the page's `<html lang>`, else the browser's languages — the first one
   * with built-in texts — else English. `tag` formats numbers and units.
   */
  function uiLanguage() {
    const wanted = [];
    if (LANGUAGE && LANGUAGE.toLowerCase() !== "auto") {
      wanted.push(LANGUAGE);
    } else {
      wanted.push(document.documentElement && document.documentElement.lang);
      for (const tag of navigator.languages || []) wanted.push(tag);
      wanted.push(navigator.language);
    }
    for (const raw of wanted) {
      const tag = String(raw || "").trim().replace(/_/g, "-");
      const primary = tag.split("-")[0].toLowerCase();
      if (Object.prototype.hasOwnProperty.call(TEXTS, primary)) return { tag, texts: TEXTS[primary] };
    }
    // A configured language without built-in texts comes with every text overridden.
    return { tag: wanted.length === 1 ? String(wanted[0]) : "en", texts: TEXTS.en };
  }

  /** The UI's strings: the overrides, else the language's, else English. */
  function texts() {
    const { tag, texts: builtIn } = uiLanguage();
    const pick = (key) => TEXT[key] || builtIn[key] || TEXTS.en[key];
    return { tag, pick };
  }

  /** "45 seconds", "1 Sekunde", "2 sekundy": `n` with its unit in language `tag`. */
  function formatSeconds(n, tag) {
    for (const locale of [tag, "en"]) {
      try {
        return new Intl.NumberFormat(locale, { style: "unit", unit: "second", unitDisplay: "long" }).format(n);
      } catch (_) {
        /* an unknown tag or an old browser: try the next */
      }
    }
    return n + " s";
  }

  // --------------------------------------------------------------- small tools

  const now = () => Date.now();
  const isString = (v) => typeof v === "string" && v.length > 0;
  const isFiniteNumber = (v) => typeof v === "number" && Number.isFinite(v);
  const isToken = (v) => isString(v) && v.length <= 512 && /^[A-Za-z0-9_-]+$/.test(v);
  const isTicket = (v) => isString(v) && v.length <= 1024 && /^[A-Za-z0-9._~-]+$/.test(v);
  // The gateway's interval is obeyed down to 1 s (its own floor): a higher floor
  // here would stretch a short configured interval past `abandon` and end open tabs.
  const clampHeartbeat = (ms) => (isFiniteNumber(ms) && ms > 0 ? Math.min(Math.max(ms, 1000), 600000) : 30000);

  /** Runs `fn`, swallowing any exception: the agent must never break the page. */
  function quietly(fn, ...args) {
    try {
      return fn(...args);
    } catch (_) {
      return undefined;
    }
  }

  /** Reports an exception thrown by a page callback the way event dispatch does. */
  function report(error) {
    try {
      if (typeof window.reportError === "function") window.reportError(error);
      else setTimeout(() => { throw error; }, 0);
    } catch (_) {
      /* nothing more we can do */
    }
  }

  /** A random id (16 bytes, base64url); works in insecure contexts too. */
  function randomId() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const getAttr = (el, name) => Element.prototype.getAttribute.call(el, name);
  const hasAttr = (el, name) => Element.prototype.hasAttribute.call(el, name);

  // ------------------------------------------------------------------- storage

  /** sessionStorage, or null where it is missing or refuses writes. */
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

  function load(key) {
    try {
      return storage ? storage.getItem(key) : null;
    } catch (_) {
      return null;
    }
  }

  function save(key, value) {
    try {
      if (!storage) return;
      if (value == null) storage.removeItem(key);
      else storage.setItem(key, value);
    } catch (_) {
      /* quota or privacy mode: memory still has it */
    }
  }

  // ---------------------------------------------------------------------- URLs

  function resolve(input) {
    try {
      return new URL(String(input), document.baseURI);
    } catch (_) {
      return null;
    }
  }

  /** An http(s) URL of this document's origin. */
  function sameOrigin(url) {
    return !!url && (url.protocol === "http:" || url.protocol === "https:") && url.origin === location.origin;
  }

  /** Splits an absolute URL string into what precedes the query, the query and the hash. */
  function split(href) {
    const hashAt = href.indexOf("#");
    const hash = hashAt < 0 ? "" : href.slice(hashAt);
    const rest = hashAt < 0 ? href : href.slice(0, hashAt);
    const queryAt = rest.indexOf("?");
    return queryAt < 0
      ? { base: rest, query: null, hash }
      : { base: rest.slice(0, queryAt), query: rest.slice(queryAt + 1), hash };
  }

  function isReservedParam(part) {
    let name = part.split("=")[0];
    try {
      name = decodeURIComponent(name.replace(/\+/g, " "));
    } catch (_) {
      /* keep it raw */
    }
    return name.startsWith("__sg");
  }

  /** Does the URL carry any `__sg*` query parameter? */
  function hasReserved(href) {
    const { query } = split(href);
    return !!query && query.split("&").some(isReservedParam);
  }

  /** The URL without `__sg*` parameters; the other parameters stay byte for byte. */
  function stripReserved(href) {
    const { base, query, hash } = split(href);
    if (query === null) return href;
    const kept = query.split("&").filter((part) => part !== "" && !isReservedParam(part));
    return base + (kept.length ? "?" + kept.join("&") : "") + hash;
  }

  /** The URL with `name=value` appended to its query (before any hash). */
  function addParam(href, name, value) {
    const { base, query, hash } = split(href);
    const pair = name + "=" + encodeURIComponent(value);
    return base + "?" + (query ? query.replace(/&+$/, "") + "&" : "") + pair + hash;
  }

  // ------------------------------------------------------------ session values

  let memoryToken = TAB ? PAGE_TOKEN || load(KEY.token) : null;
  let handle = PAGE_HANDLE || (TAB && memoryToken ? load(KEY.handle) : null);
  let tabId = TAB ? load(KEY.tab) : null;
  const pageId = randomId();

  if (PAGE_TOKEN && isToken(PAGE_TOKEN)) {
    save(KEY.token, PAGE_TOKEN);
    if (PAGE_HANDLE) save(KEY.handle, PAGE_HANDLE);
  }
  if (TAB && !tabId) {
    tabId = randomId();
    save(KEY.tab, tabId);
  }

  /**
   * The tab's token. sessionStorage is the source of truth (shared with same-origin
   * frames of the tab, so a rotation seen by one frame reaches all); memory is the
   * fallback when the page cleared or blocked storage.
   */
  function token() {
    if (!TAB) return null;
    const stored = load(KEY.token);
    if (stored) memoryToken = stored;
    return memoryToken;
  }

  function adoptToken(value) {
    memoryToken = value;
    save(KEY.token, value);
    candidate = null;
    tokenFailed = false;
  }

  const hasSession = () => handle != null || token() != null;

  // --------------------------------------------------------------------- state

  const STATES = ["active", "warning", "ended", "none"];
  let state = STATES.includes(data.state) ? data.state : PAGE_HANDLE ? "active" : "none";
  let deadline = null; // server ms epoch
  let warnAt = null; // server ms epoch
  let offset = 0; // server clock minus local clock, from the latest reply
  let interval = clampHeartbeat(Number(data.heartbeat));
  let lifecycle = false; // heartbeats running
  let repairing = false; // leaving to re-bootstrap
  let hidden = false; // between pagehide and pageshow
  let domReady = document.readyState !== "loading";
  let announced = state === "none" ? "none" : "active"; // last state told to the page
  let suppressNotice = false; // end({redirect}) navigates away: no notice
  let leaving = false; // navigating away on purpose ("Start again", end({redirect}))
  let pageOwnsEnd = false; // the page cancelled the `ended` event: its UI, its rules
  let candidate = null; // a token seen in a response header, not yet confirmed

  const serverNow = () => now() + offset;

  // -------------------------------------------------------------------- events

  const listeners = { warning: new Set(), active: new Set(), ended: new Set() };

  /** Calls the page's callbacks for `type`; true when one called preventDefault(). */
  function emit(type) {
    let prevented = false;
    const event = Object.freeze({
      type,
      state,
      deadline: api.deadline,
      get defaultPrevented() {
        return prevented;
      },
      preventDefault() {
        if (type !== "active") prevented = true;
      },
    });
    for (const callback of Array.from(listeners[type])) {
      try {
        callback.call(api, event);
      } catch (error) {
        report(error);
      }
    }
    return prevented;
  }

  function setState(next) {
    state = next;
    if (domReady) announce();
  }

  /** Tells the page (events, built-in UI) about a state it has not been told about. */
  function announce() {
    if (state === announced) {
      if (state === "warning") countdown.update();
      return;
    }
    announced = state;
    if (state === "warning") {
      if (!emit("warning") && !uiBelongsToTop()) countdown.show();
    } else if (state === "active") {
      countdown.hide();
      emit("active");
    } else if (state === "ended") {
      const hadFocus = countdown.hide();
      pageOwnsEnd = emit("ended");
      if (!pageOwnsEnd && !suppressNotice && !uiBelongsToTop()) notice.show(hadFocus);
    } else {
      countdown.hide();
    }
  }

  /** The session is gone: stop everything and tell the page. */
  function toEnded() {
    if (state === "ended") return;
    clearTimers();
    pool.length = 0;
    deadline = null;
    warnAt = null;
    lifecycle = false;
    setState(hasSession() ? "ended" : "none");
  }

  // ----------------------------------------------------------- reserved calls

  const nativeFetch = typeof window.fetch === "function" ? window.fetch : null;

  function reservedHeaders(auth) {
    const headers = { "Content-Type": "application/json", "X-Sessiongate-Agent": "1" };
    if (auth) headers[TOKEN_HEADER] = auth;
    return headers;
  }

  let sentSeq = 0; // requests sent
  let appliedSeq = 0; // newest request whose answer was applied

  /**
   * POSTs to a reserved endpoint with the original fetch. Resolves to
   * `{status, json, seq, fresh}` (`fresh`: no newer answer was applied meanwhile);
   * rejects on network errors.
   */
  async function post(endpoint, body, auth = token()) {
    const seq = ++sentSeq;
    const response = await nativeFetch.call(window, PREFIX + "/" + endpoint, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: reservedHeaders(auth),
      body: JSON.stringify(body || {}),
    });
    let json = null;
    try {
      json = await response.json();
    } catch (_) {
      /* not JSON */
    }
    const fresh = seq > appliedSeq;
    if (fresh && (response.status === 200 || response.status === 401)) appliedSeq = seq;
    return { status: response.status, json: json && typeof json === "object" ? json : null, seq, fresh };
  }

  /** Applies a heartbeat-style reply; `local` when this page asked for it. */
  function apply(reply, local) {
    if (!reply || typeof reply !== "object" || state === "ended") return;
    if (local) broadcast(reply);
    if (local && TAB && isToken(reply.token)) adoptToken(reply.token);
    if (isString(reply.handle)) {
      handle = reply.handle;
      if (TAB && local) save(KEY.handle, handle);
    }
    if (reply.state === "ended" || reply.state === "none") {
      toEnded();
      return;
    }
    if (local && TAB && Array.isArray(reply.tickets)) addTickets(reply.tickets, now());
    if (isFiniteNumber(reply.heartbeat)) interval = clampHeartbeat(reply.heartbeat);
    if (isFiniteNumber(reply.now)) offset = reply.now - now();
    deadline = isFiniteNumber(reply.deadline) ? reply.deadline : null;
    warnAt = isFiniteNumber(reply.warn_at) ? reply.warn_at : null;
    if (reply.state === "active" || reply.state === "warning") setState(reply.state);
    schedule(local);
  }

  /** Handles the answer to a heartbeat or extend sent with `auth`. */
  function settle(result, auth) {
    if (!result.fresh) return;
    // A token the gateway remembers as ended is answered 200 `ended` (not 401): the
    // same as a refusal while a newer candidate token may still be this tab's.
    const gone = result.status === 401 || (result.status === 200 && result.json && result.json.state === "ended");
    if (gone && TAB && candidate && auth !== candidate) {
      tokenFailed = true; // the stored token is gone; the header's may be the new one
      tryCandidate = true;
      beat();
      return;
    }
    if (result.status === 200 && result.json) {
      const current = token();
      if (TAB && auth && auth !== current) {
        // A candidate token is confirmed only if it belongs to this page's session.
        if (isString(result.json.handle) && result.json.handle === handle) adoptToken(auth);
        else {
          candidate = null;
          if (tokenFailed || !current) toEnded();
          tokenFailed = false;
          return;
        }
      }
      // A candidate stays until confirmed or refused: should the reply not name the
      // new token, it is tried once the current one is refused (after its 10 s grace).
      apply(result.json, true);
    } else if (result.status === 401) {
      candidate = null;
      tokenFailed = false;
      toEnded();
    } else {
      retryLater();
    }
  }

  // ---------------------------------------------------------------- heartbeats

  const timers = { periodic: 0, early: 0, warn: 0, deadline: 0, refill: 0 };
  let inFlight = false;
  let queued = false;
  let activityPending = false;
  let lastActivitySent = 0;
  let lastVerify = 0;
  let tryCandidate = false; // next heartbeat goes with the candidate token
  let tokenFailed = false; // the current token was refused
  let leader = !TAB; // browser mode: changed by the leader lock below

  function clearTimers() {
    for (const name of Object.keys(timers)) {
      clearTimeout(timers[name]);
      timers[name] = 0;
    }
  }

  /** A timer at server time `at`. */
  function at(serverTime, fn) {
    return setTimeout(() => quietly(fn), Math.min(Math.max(serverTime - serverNow(), 0), MAX_DELAY));
  }

  /** Does this page send the periodic heartbeat? (browser mode: the leader tab only) */
  const periodicHere = () => TAB || leader;

  /** Sets the timers from the latest reply; `periodic` restarts the interval too. */
  function schedule(periodic) {
    if (!lifecycle || state === "ended") return;
    if (periodic || !timers.periodic) {
      clearTimeout(timers.periodic);
      timers.periodic = periodicHere() ? setTimeout(() => quietly(beat), interval) : 0;
    }
    for (const name of ["early", "warn", "deadline"]) clearTimeout(timers[name]);
    timers.early = timers.warn = timers.deadline = 0;
    if (state === "active" && warnAt != null) {
      // Report pending activity just before the idle timer runs out, then look.
      timers.early = at(warnAt - 1000, () => activityPending && beat());
      timers.warn = at(warnAt + SLACK, beat);
    }
    if (deadline != null) timers.deadline = at(deadline + SLACK, beat);
  }

  function retryLater() {
    if (!lifecycle || !periodicHere()) return;
    clearTimeout(timers.periodic);
    timers.periodic = setTimeout(() => quietly(beat), Math.min(interval, RETRY_MS));
  }

  /** How many tickets to ask for: enough to have 8 that outlive the next heartbeat. */
  function wanted() {
    if (!TAB) return 0;
    prune();
    const until = now() + interval + 5000;
    const lasting = pool.filter((entry) => entry.at + TICKET_AGE > until).length;
    return Math.max(0, MAX_TICKETS - lasting);
  }

  /** Sends a heartbeat now, or right after the one in flight. */
  function beat() {
    if (!lifecycle || repairing || state === "ended" || !nativeFetch) return;
    if (inFlight) {
      queued = true;
      return;
    }
    const auth = TAB ? (tryCandidate || !token() ? candidate : token()) : null;
    tryCandidate = false;
    if (TAB && !auth) return;
    inFlight = true;
    const activity = activityPending;
    activityPending = false;
    if (activity) lastActivitySent = now();
    const body = { page: pageId, activity, visible: document.visibilityState === "visible", want: wanted() };
    post("heartbeat", body, auth)
      .then((result) => settle(result, auth))
      .catch(() => {
        if (activity) activityPending = true;
        retryLater();
      })
      .finally(() => {
        inFlight = false;
        if (queued) {
          queued = false;
          quietly(beat);
        }
      });
  }

  /** A response header suggests our view is stale: ask, but not too often. */
  function verify() {
    if (!lifecycle || now() - lastVerify < VERIFY_GAP) return;
    lastVerify = now();
    beat();
  }

  /** Starts heartbeats (first one at once: it also fills the ticket pool). */
  function startLifecycle() {
    if (lifecycle || repairing || state === "ended") return;
    if (TAB && !token() && !candidate) return; // no session yet: wait for one
    lifecycle = true;
    beat();
  }

  // ------------------------------------------------------------------- tickets

  const pool = []; // {ticket, at}, oldest first

  function prune() {
    const t = now();
    for (let i = pool.length - 1; i >= 0; i--) {
      const age = t - pool[i].at;
      if (age > TICKET_AGE || age < -60000) pool.splice(i, 1);
    }
  }

  function addTickets(list, issued) {
    for (const ticket of list) {
      if (isTicket(ticket) && !pool.some((entry) => entry.ticket === ticket)) pool.push({ ticket, at: issued });
    }
    pool.sort((a, b) => a.at - b.at);
    while (pool.length > MAX_TICKETS) pool.shift();
    if (pool.length > 0) for (const waiter of waiters.splice(0)) waiter();
  }

  const waiters = []; // callbacks waiting for the pool to fill (see whenTicket)

  /**
   * Calls `fn` as soon as the pool has a ticket — at once if it has one or none can
   * come (no session, ended), else when the next heartbeat brings some, or after
   * `ms` anyway. For requests that may start before the first heartbeat's reply.
   */
  function whenTicket(fn, ms) {
    prune();
    if (pool.length > 0 || !hasSession() || state === "ended" || repairing) {
      fn();
      return;
    }
    let done = false;
    const run = () => {
      if (done) return;
      done = true;
      quietly(fn);
    };
    waiters.push(run);
    setTimeout(run, ms);
    if (lifecycle) beat();
  }

  /** Takes a ticket (the oldest still fresh), or null: then nothing is added. */
  function takeTicket() {
    if (!TAB || repairing || state === "ended") return null;
    prune();
    const entry = pool.shift() || null;
    if (pool.length < 3 && lifecycle && !timers.refill) {
      // Refill a little later: if a navigation used the ticket, the page is gone by then.
      timers.refill = setTimeout(() => {
        timers.refill = 0;
        quietly(beat);
      }, 1000);
    }
    return entry ? entry.ticket : null;
  }

  /** `href` (same origin, no `__sg*` yet) with a ticket, or null. */
  function ticketed(url) {
    if (!sameOrigin(url) || hasReserved(url.href)) return null;
    const ticket = takeTicket();
    return ticket ? addParam(url.href, TICKET_PARAM, ticket) : null;
  }

  /** Tickets the bootstrap page got with the session, left for this page. */
  function adoptBootstrapTickets() {
    const raw = load(KEY.tickets);
    if (!raw) return;
    save(KEY.tickets, null);
    try {
      const stash = JSON.parse(raw);
      const age = now() - Number(stash.at);
      if (stash && stash.handle === handle && Array.isArray(stash.tickets) && age >= 0 && age < TICKET_AGE) {
        addTickets(stash.tickets, Number(stash.at));
      }
    } catch (_) {
      /* ignore a damaged stash */
    }
  }

  // ----------------------------------------------------- responses of the page

  /** Looks at a same-origin response's headers; `carried`: it was sent with the session. */
  function observe(header, carried) {
    const offered = TAB ? header(TOKEN_HEADER) : null;
    if (offered && isToken(offered) && offered !== token() && offered !== candidate) {
      // Confirm through a heartbeat before adopting: a cached response must not
      // move this tab into another tab's session.
      candidate = offered;
      if (lifecycle) beat();
      else startLifecycle();
    }
    if (!carried || !lifecycle) return;
    // Not trusted blindly (a cached response may say anything): a heartbeat checks.
    const said = String(header(STATE_HEADER) || "").trim().toLowerCase();
    const stale =
      said === "ended" ||
      said === "none" ||
      (said === "warning" && state !== "warning") ||
      (said === "active" && state === "warning");
    if (stale) verify();
  }

  // -------------------------------------------------------------------- fetch

  if (nativeFetch) {
    const wrapped = function fetch(input, init) {
      let request = null;
      let watch = false;
      let carried = false;
      try {
        const isRequest =
          !!input && typeof input === "object" && typeof input.url === "string" && typeof input.clone === "function";
        const url = resolve(isRequest ? input.url : input);
        if (sameOrigin(url)) {
          watch = true;
          const auth = token();
          if (auth) {
            // Once built, this Request must be the one sent (it took over any body).
            request = new Request(input, init);
            if (!request.headers.has(TOKEN_HEADER)) {
              request.headers.set(TOKEN_HEADER, auth);
              carried = request.credentials !== "omit";
            }
          } else if (!TAB) {
            const credentials = (init && init.credentials) || (isRequest ? input.credentials : "same-origin");
            carried = credentials !== "omit";
          }
        }
      } catch (_) {
        request = null; // let the browser report whatever is wrong with the arguments
        watch = false;
      }
      const promise = request ? nativeFetch.call(window, request) : nativeFetch.call(window, input, init);
      if (!watch) return promise;
      return promise.then((response) => {
        quietly(observe, (name) => response.headers.get(name), carried);
        return response;
      });
    };
    quietly(() => {
      window.fetch = wrapped;
    });
  }

  // ------------------------------------------------------------ XMLHttpRequest

  if (typeof XMLHttpRequest === "function") {
    quietly(() => {
      const proto = XMLHttpRequest.prototype;
      const nativeOpen = proto.open;
      const nativeSend = proto.send;
      const nativeSetHeader = proto.setRequestHeader;
      const info = new WeakMap(); // xhr -> {same, own, listening}

      proto.open = function open(method, url) {
        quietly(() => {
          const entry = info.get(this) || { listening: false };
          entry.same = sameOrigin(resolve(url));
          entry.own = false;
          entry.carried = false;
          info.set(this, entry);
        });
        return nativeOpen.apply(this, arguments);
      };

      proto.setRequestHeader = function setRequestHeader(name) {
        quietly(() => {
          const entry = info.get(this);
          if (entry && String(name).toLowerCase() === TOKEN_HEADER.toLowerCase()) entry.own = true;
        });
        return nativeSetHeader.apply(this, arguments);
      };

      proto.send = function send() {
        quietly(() => {
          const entry = info.get(this);
          if (!entry || !entry.same) return;
          const auth = token();
          if (auth && !entry.own) {
            nativeSetHeader.call(this, TOKEN_HEADER, auth);
            entry.carried = true;
          } else if (!TAB) {
            entry.carried = true; // same-origin XHR always sends cookies
          }
          if (!entry.listening) {
            entry.listening = true;
            this.addEventListener("readystatechange", () => {
              if (this.readyState !== 2) return; // HEADERS_RECEIVED, once per request
              const current = info.get(this);
              if (current && current.same) {
                quietly(observe, (name) => this.getResponseHeader(name), current.carried);
              }
            });
          }
        });
        return nativeSend.apply(this, arguments);
      };
    });
  }

  // ------------------------------------ WebSocket, EventSource, sendBeacon (tab)

  /** Same-origin WebSocket URL (ws/wss, or http/https which WebSocket converts)? */
  function socketUrl(raw) {
    const url = resolve(raw);
    if (!url) return null;
    const scheme = { "ws:": "http:", "wss:": "https:", "http:": "http:", "https:": "https:" }[url.protocol];
    if (!scheme || scheme !== location.protocol || url.host !== location.host) return null;
    url.protocol = scheme === "https:" ? "wss:" : "ws:"; // what older browsers accept
    return url;
  }

  function withTicket(raw, socket) {
    if (!TAB) return raw;
    const url = socket ? socketUrl(raw) : resolve(raw);
    if (!url || hasReserved(url.href)) return raw;
    if (!socket && !sameOrigin(url)) return raw;
    const ticket = takeTicket();
    return ticket ? addParam(url.href, TICKET_PARAM, ticket) : raw;
  }

  /** Replaces a constructor by a Proxy that puts a ticket on its URL argument. */
  function wrapConstructor(name, socket) {
    const Native = window[name];
    if (typeof Native !== "function" || typeof Proxy !== "function") return;
    const proxy = new Proxy(Native, {
      construct(target, args, newTarget) {
        if (args.length > 0) {
          const url = quietly(withTicket, args[0], socket);
          if (url !== undefined) args[0] = url;
        }
        return Reflect.construct(target, args, newTarget === proxy ? target : newTarget);
      },
    });
    quietly(() => {
      window[name] = proxy;
    });
  }

  wrapConstructor("WebSocket", true);
  quietly(wrapEventSource);

  /**
   * EventSource (tab mode). A native EventSource that loses its connection
   * reconnects by itself to the same URL — with its ticket already spent, so the
   * stream would silently go on without its session. For a same-origin URL the page
   * gets this stand-in instead: it holds a native EventSource opened with a ticket
   * (waiting up to 5 s for the first heartbeat's tickets when the page opens it
   * while loading), and when that one errors on its way to reconnect, closes it and
   * opens a new one with a fresh ticket (after 1 s, doubling up to 30 s while
   * attempts keep failing). The page sees what it would natively, on the same
   * object: `error` with readyState CONNECTING, then `open` and the messages.
   * Cross-origin sources keep the browser's own reconnection. A re-created source
   * starts afresh: it cannot send `Last-Event-ID`.
   */
  function wrapEventSource() {
    const Native = window.EventSource;
    if (!TAB || typeof Native !== "function" || typeof EventTarget !== "function") return;
    const FIRST_RETRY = 1000;
    const LAST_RETRY = 30000;
    const TICKET_WAIT = 5000;
    const states = new WeakMap(); // stand-in -> {url, init, source, types, handlers, ...}
    const addListener = EventTarget.prototype.addEventListener;

    /** Opens the native source, with a ticket if there is one. */
    function connect(self, st) {
      if (st.closed) return;
      const ticketed = st.managed ? quietly(withTicket, st.url, false) : undefined;
      const url = typeof ticketed === "string" ? ticketed : st.url;
      st.waiting = false;
      try {
        st.source = new Native(url, st.init);
      } catch (_) {
        st.closed = true;
        st.source = null;
        self.dispatchEvent(new Event("error"));
        return;
      }
      for (const type of st.types) listen(self, st, st.source, type);
    }

    function listen(self, st, source, type) {
      source.addEventListener(type, (event) => quietly(relay, self, st, source, type, event));
    }

    /** Passes an event of the native source on to the stand-in's listeners. */
    function relay(self, st, source, type, event) {
      if (source !== st.source || st.closed) return;
      if (type === "open") st.delay = FIRST_RETRY;
      if (type === "error" && st.managed && source.readyState === Native.CONNECTING) {
        source.close(); // it would reconnect with the spent ticket
        reconnect(self, st);
      }
      const copy =
        event instanceof MessageEvent
          ? new MessageEvent(type, { data: event.data, origin: event.origin, lastEventId: event.lastEventId })
          : new Event(type);
      self.dispatchEvent(copy);
    }

    function reconnect(self, st) {
      st.waiting = true;
      clearTimeout(st.timer);
      const delay = st.delay;
      st.delay = Math.min(delay * 2, LAST_RETRY);
      st.timer = setTimeout(() => quietly(whenTicket, () => connect(self, st), TICKET_WAIT), delay);
    }

    class EventSource extends EventTarget {
      constructor(url, init) {
        super();
        const resolved = arguments.length > 0 ? resolve(url) : null;
        if (!resolved) return new Native(...arguments); // throws the native TypeError or SyntaxError
        const st = {
          url: resolved.href,
          init,
          withCredentials: !!(init && init.withCredentials),
          managed: sameOrigin(resolved) && !hasReserved(resolved.href),
          source: null,
          types: new Set(["open", "message", "error"]),
          handlers: { open: null, message: null, error: null },
          waiting: true,
          closed: false,
          timer: 0,
          delay: FIRST_RETRY,
        };
        states.set(this, st);
        // The on* handlers run as listeners registered first.
        for (const type of ["open", "message", "error"]) {
          addListener.call(this, type, (event) => {
            const handler = st.handlers[type];
            if (typeof handler === "function") handler.call(this, event);
          });
        }
        if (st.managed) quietly(whenTicket, () => connect(this, st), TICKET_WAIT);
        else connect(this, st);
      }

      get url() {
        return states.get(this).url;
      }

      get withCredentials() {
        return states.get(this).withCredentials;
      }

      get readyState() {
        const st = states.get(this);
        if (st.closed) return Native.CLOSED;
        if (st.waiting || !st.source) return Native.CONNECTING;
        return st.source.readyState;
      }

      close() {
        const st = states.get(this);
        st.closed = true;
        clearTimeout(st.timer);
        if (st.source) st.source.close();
      }

      addEventListener(type, listener, options) {
        const st = states.get(this);
        quietly(() => {
          const name = String(type);
          if (st && !st.types.has(name)) {
            st.types.add(name); // named events (`event: x`) are relayed once listened to
            if (st.source) listen(this, st, st.source, name);
          }
        });
        return super.addEventListener(type, listener, options);
      }
    }

    for (const type of ["open", "message", "error"]) {
      Object.defineProperty(EventSource.prototype, "on" + type, {
        configurable: true,
        enumerable: true,
        get() {
          return states.get(this).handlers[type];
        },
        set(value) {
          states.get(this).handlers[type] = typeof value === "function" ? value : null;
        },
      });
    }
    for (const [name, value] of [["CONNECTING", 0], ["OPEN", 1], ["CLOSED", 2]]) {
      Object.defineProperty(EventSource, name, { value, enumerable: true });
      Object.defineProperty(EventSource.prototype, name, { value, enumerable: true });
    }
    // `instanceof`, Object.prototype.toString and feature checks see an EventSource.
    Object.setPrototypeOf(EventSource.prototype, Native.prototype);
    window.EventSource = EventSource;
  }

  const nativeBeacon =
    typeof Navigator === "function" && typeof Navigator.prototype.sendBeacon === "function"
      ? Navigator.prototype.sendBeacon
      : null;
  if (nativeBeacon) {
    quietly(() => {
      Navigator.prototype.sendBeacon = function sendBeacon(url, body) {
        const target = quietly(withTicket, url, false);
        return nativeBeacon.call(this, target === undefined ? url : target, body);
      };
    });
  }

  // ----------------------------------------------------------- links and forms

  /** Is `target` (possibly empty) this browsing context? */
  function isSelfTarget(target) {
    let t = target;
    if (t == null) {
      const base = document.querySelector("base[target]");
      t = base ? getAttr(base, "target") : "";
    }
    t = String(t || "").trim().toLowerCase();
    if (t === "" || t === "_self") return true;
    return (t === "_top" || t === "_parent") && window.top === window;
  }

  const withoutHash = (href) => (href.includes("#") ? href.slice(0, href.indexOf("#")) : href);

  /** A fragment navigation within this document (no request, nothing to carry)? */
  function isFragmentNavigation(href) {
    return href.includes("#") && withoutHash(href) === withoutHash(location.href);
  }

  /** The link a click activates, or null (a button or control inside it wins). */
  function activatedLink(event) {
    const path = typeof event.composedPath === "function" ? event.composedPath() : [event.target];
    for (const node of path) {
      if (!(node instanceof Element)) continue;
      if (node instanceof HTMLAnchorElement || node instanceof HTMLAreaElement) {
        return hasAttr(node, "href") ? node : null;
      }
      if (/^(BUTTON|INPUT|SELECT|TEXTAREA|LABEL|SUMMARY)$/.test(node.tagName.toUpperCase())) return null;
    }
    return null;
  }

  /**
   * Has this tab's session ended while the built-in notice is in charge? Then a
   * navigation within the app would silently start a new session and drop whatever
   * the user typed into this page: it is stopped instead (see `stopForEnded`).
   * "Start again" and end({redirect}) leave on purpose and pass.
   */
  function endedHere() {
    return state === "ended" && !leaving && !repairing && !pageOwnsEnd && !suppressNotice;
  }

  /** Stops a navigation of an ended tab: the notice, focused, with "Start again" (to `to`). */
  function stopForEnded(to) {
    notice.show(true, { kept: true, to: to || null });
  }

  /** Puts a ticket on a same-origin link for the navigation the click is about to start. */
  function onLinkClick(event) {
    if (event.defaultPrevented || event.button !== 0) return;
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    const link = activatedLink(event);
    if (!link || hasAttr(link, "download") || !isSelfTarget(getAttr(link, "target"))) return;
    const url = resolve(link.href);
    if (!url || isFragmentNavigation(url.href)) return;
    if (endedHere()) {
      if (sameOrigin(url)) {
        event.preventDefault();
        stopForEnded(stripReserved(url.href));
      }
      return;
    }
    if (!TAB) return;
    const href = ticketed(url);
    if (!href) return;
    const original = getAttr(link, "href");
    link.setAttribute("href", href);
    // The browser has read the URL once dispatch is over; put the page's value back.
    setTimeout(() => quietly(() => {
      if (getAttr(link, "href") === href) link.setAttribute("href", original);
    }), 0);
  }

  /**
   * Where submitting `form` (by `submitter`, or by form.submit() when null) goes, if
   * it navigates this tab: `{method, url}`, else null (a dialog form, another
   * target).
   */
  function formNavigation(form, submitter) {
    if (!(form instanceof HTMLFormElement)) return null;
    const by = submitter instanceof Element ? submitter : null;
    // Attributes, not properties: a control named "action" or "method" shadows those.
    const pick = (own, inherited) => (by && hasAttr(by, own) ? getAttr(by, own) : getAttr(form, inherited));
    const method = String(pick("formmethod", "method") || "get").trim().toLowerCase();
    if (method === "dialog") return null;
    if (!isSelfTarget(pick("formtarget", "target"))) return null;
    const action = pick("formaction", "action");
    const url = resolve(action ? action : location.href); // empty action: the document's URL
    return url ? { method, url, by } : null;
  }

  /**
   * Prepares `form` (submitted by `submitter`, or by form.submit() when null) to
   * carry a ticket: GET gets a hidden `__sg_t` input, POST gets it in the action
   * URL's query. Returns the function that undoes it, or null.
   */
  function prepareForm(form, submitter) {
    if (!TAB) return null;
    const target = formNavigation(form, submitter);
    if (!target || !sameOrigin(target.url)) return null;
    const { method, url, by } = target;
    if (method !== "post") {
      // GET replaces the action's query with the fields: the ticket must be a field.
      if (Element.prototype.querySelector.call(form, '[name="' + TICKET_PARAM + '"]')) return null;
      const ticket = takeTicket();
      if (!ticket) return null;
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = TICKET_PARAM;
      input.value = ticket;
      Node.prototype.appendChild.call(form, input);
      return () => input.remove();
    }
    const href = ticketed(url);
    if (!href) return null;
    const holder = by && hasAttr(by, "formaction") ? by : form;
    const attribute = holder === form ? "action" : "formaction";
    const original = getAttr(holder, attribute);
    holder.setAttribute(attribute, href);
    return () => {
      if (getAttr(holder, attribute) !== href) return;
      if (original === null) holder.removeAttribute(attribute);
      else holder.setAttribute(attribute, original);
    };
  }

  /** An ended tab's form that would navigate within the app: stopped (true). */
  function stopsForm(form, submitter) {
    if (!endedHere()) return false;
    const target = formNavigation(form, submitter);
    if (!target || !sameOrigin(target.url)) return false;
    stopForEnded(null);
    return true;
  }

  function onSubmit(event) {
    if (event.defaultPrevented) return;
    if (stopsForm(event.target, event.submitter || null)) {
      event.preventDefault();
      return;
    }
    const undo = prepareForm(event.target, event.submitter || null);
    if (undo) setTimeout(() => quietly(undo), 0);
  }

  /**
   * Runs `handler` for `type` events after the page's own listeners had their say:
   * a capture listener on `root` (document, or an open shadow root) adds a one-shot
   * bubble listener on `last` (window, or the shadow root itself), which then runs
   * after every listener registered there so far. So a page that cancels the click
   * (a client-side router) or submits the form itself never sees a ticket. If the
   * page stops propagation, nothing is added and the navigation bootstraps (or the
   * Navigation API path catches it).
   */
  function afterPage(type, handler, root = document, last = window) {
    let pending = null;
    root.addEventListener(
      type,
      (event) => {
        if (pending) last.removeEventListener(type, pending);
        const once = (seen) => {
          last.removeEventListener(type, once);
          if (pending === once) pending = null;
          if (seen === event) quietly(handler, event);
        };
        pending = once;
        last.addEventListener(type, once);
      },
      true,
    );
  }

  afterPage("click", onLinkClick);
  afterPage("submit", onSubmit);

  // `submit` does not leave a shadow root (clicks do), so every open shadow root
  // gets its own listener: those made by script (attachShadow, patched here) and
  // those the parser made from <template shadowrootmode="open"> (found at
  // DOMContentLoaded). Forms in closed shadow roots are out of reach.
  const watchedRoots = new WeakSet();

  function watchShadowRoot(root) {
    if (!root || root.mode !== "open" || watchedRoots.has(root)) return;
    watchedRoots.add(root);
    afterPage("submit", onSubmit, root, root);
  }

  /** Watches the open shadow roots under `scope` (document or a shadow root), deeply. */
  function watchShadowRoots(scope) {
    for (const el of scope.querySelectorAll("*")) {
      const root = el.shadowRoot;
      if (root && !watchedRoots.has(root)) {
        watchShadowRoot(root);
        watchShadowRoots(root);
      }
    }
  }

  if (typeof Element === "function" && typeof Element.prototype.attachShadow === "function") {
    quietly(() => {
      const nativeAttach = Element.prototype.attachShadow;
      Element.prototype.attachShadow = function attachShadow() {
        const root = nativeAttach.apply(this, arguments);
        quietly(watchShadowRoot, root);
        return root;
      };
    });
  }

  // form.submit() fires no submit event. requestSubmit() does, so it is covered above.
  if (typeof HTMLFormElement === "function") {
    quietly(() => {
      const nativeSubmit = HTMLFormElement.prototype.submit;
      HTMLFormElement.prototype.submit = function submit() {
        if (quietly(stopsForm, this, null)) return undefined;
        const undo = quietly(prepareForm, this, null);
        try {
          return nativeSubmit.call(this);
        } finally {
          if (undo) setTimeout(() => quietly(undo), 0);
        }
      };
    });
  }

  // --------------------------------------------- script navigations (Navigation API)

  let pageListensToNavigate = false; // a router may intercept: then we stay out

  function onNavigate(event) {
    if (repairing || !event.cancelable || event.hashChange || event.downloadRequest != null) return;
    const destination = event.destination;
    if (!destination || destination.sameDocument) return; // pushState, replaceState, #hash
    const type = event.navigationType;
    if (type !== "push" && type !== "replace" && type !== "reload") return;
    const url = resolve(destination.url);
    if (!url) return;
    if (pageListensToNavigate && event.canIntercept) return;
    if (endedHere()) {
      // Also what the click and submit paths did not see (stopped propagation).
      if (sameOrigin(url)) {
        event.preventDefault();
        stopForEnded(event.formData || type === "reload" ? null : stripReserved(url.href));
      }
      return;
    }
    if (!TAB || state === "ended" || event.formData) return;
    const href = ticketed(url);
    if (!href) return;
    event.preventDefault();
    // Re-issue once this dispatch is over (a navigation started inside it could be
    // aborted with the cancelled one). It carries `__sg_t`, so we let it pass.
    setTimeout(() => quietly(() => {
      if (type === "push") location.assign(href);
      else location.replace(href);
    }), 0);
  }

  quietly(() => {
    const nav = window.navigation;
    if (!nav || typeof nav.addEventListener !== "function" || typeof window.NavigateEvent !== "function") return;
    const nativeAdd = nav.addEventListener;
    nativeAdd.call(nav, "navigate", (event) => quietly(onNavigate, event));
    // Notice the page's own navigate listeners (routers that call event.intercept()).
    Object.defineProperty(nav, "addEventListener", {
      configurable: true,
      writable: true,
      value: function addEventListener(type) {
        if (String(type) === "navigate") pageListensToNavigate = true;
        return nativeAdd.apply(this, arguments);
      },
    });
    const handlerProperty = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(nav), "onnavigate");
    if (handlerProperty && handlerProperty.get && handlerProperty.set) {
      Object.defineProperty(nav, "onnavigate", {
        configurable: true,
        enumerable: true,
        get() {
          return handlerProperty.get.call(this);
        },
        set(value) {
          if (value) pageListensToNavigate = true;
          handlerProperty.set.call(this, value);
        },
      });
    }
  });

  // ------------------------------------------------- Web Locks, BroadcastChannel

  /** Requests a Web Lock and holds it; returns a release function (or null). */
  function holdLock(name, onGranted) {
    const locks = navigator.locks;
    if (!locks || typeof locks.request !== "function") return null;
    let release = () => {};
    const held = new Promise((resolve) => {
      release = resolve;
    });
    const controller = typeof AbortController === "function" ? new AbortController() : null;
    try {
      const options = controller ? { signal: controller.signal } : {};
      locks.request(name, options, () => {
        if (onGranted) quietly(onGranted);
        return held;
      }).catch(() => {});
    } catch (_) {
      return null;
    }
    return () => {
      if (controller) controller.abort();
      release();
    };
  }

  let releaseTab = null;
  let releaseLeader = null;
  const locksAvailable = !!(navigator.locks && typeof navigator.locks.request === "function");

  function takeLocks() {
    if (TAB && tabId && !releaseTab) releaseTab = holdLock("sessiongate.tab." + tabId);
    if (!TAB && locksAvailable && !releaseLeader) {
      leader = false;
      releaseLeader = holdLock("sessiongate.leader", () => {
        leader = true;
        // The load-time heartbeat is out already: just take over the interval.
        if (sentSeq === 0) beat();
        else schedule(true);
      });
    }
  }

  // Released on pagehide: a page in the back/forward cache must not look like a
  // live tab to the bootstrap page that may follow in this same tab.
  function releaseLocks() {
    if (releaseTab) releaseTab();
    if (releaseLeader) releaseLeader();
    releaseTab = releaseLeader = null;
    if (!TAB && locksAvailable) leader = false;
  }

  let channel = null;
  quietly(() => {
    if (typeof BroadcastChannel !== "function") return;
    channel = new BroadcastChannel(CHANNEL);
    channel.onmessage = (event) => quietly(onMessage, event.data);
  });

  function onMessage(message) {
    if (hidden || !message || typeof message !== "object") return;
    if (TAB && isString(message.probe) && message.probe === tabId) {
      channel.postMessage({ alive: tabId });
    }
    // Replies another tab of the same session got (browser mode; `share` tabs).
    if (message.reply && typeof message.reply === "object" && isString(message.handle) && message.handle === handle) {
      apply(message.reply, false);
    }
  }

  /** Shares a reply with the other tabs of this session, without tickets or token. */
  function broadcast(reply) {
    if (!channel || !handle) return;
    const shared = {};
    for (const name of ["state", "handle", "now", "warn_at", "deadline", "abandon_at", "heartbeat"]) {
      if (reply[name] !== undefined) shared[name] = reply[name];
    }
    quietly(() => channel.postMessage({ reply: shared, handle }));
  }

  // ---------------------------------------------------------------- lifecycle

  function onActivity(event) {
    if (countdown.owns(event.target) || notice.owns(event.target)) return; // our own UI
    activityPending = true;
    if (!lifecycle) return;
    if (state === "warning" || now() - lastActivitySent >= ACTIVITY_GAP) beat();
  }

  for (const type of ["pointerdown", "keydown", "wheel", "touchstart", "input"]) {
    window.addEventListener(type, (event) => quietly(onActivity, event), { capture: true, passive: true });
  }

  const resync = () => quietly(beat);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") resync();
  });
  document.addEventListener("resume", resync);
  window.addEventListener("online", resync);

  window.addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    hidden = false;
    quietly(takeLocks);
    resync();
  });

  window.addEventListener("pagehide", () => quietly(() => {
    hidden = true;
    persist();
    sendBye();
    releaseLocks();
  }));

  /** Puts the tab's values back if the page cleared sessionStorage meanwhile. */
  function persist() {
    if (!TAB) return;
    if (memoryToken && !load(KEY.token)) save(KEY.token, memoryToken);
    if (handle && !load(KEY.handle)) save(KEY.handle, handle);
    if (tabId && !load(KEY.tab)) save(KEY.tab, tabId);
  }

  /** Tells the gateway this page is gone (never ends the session by itself). */
  function sendBye() {
    if (!lifecycle || state === "ended" || !hasSession()) return;
    const body = JSON.stringify({ page: pageId });
    if (TAB) {
      const ticket = takeTicket();
      if (ticket && nativeBeacon) {
        const blob = new Blob([body], { type: "application/json" });
        const url = PREFIX + "/bye?" + TICKET_PARAM + "=" + encodeURIComponent(ticket);
        if (quietly(() => nativeBeacon.call(navigator, url, blob))) return;
      }
      if (!token()) return;
    }
    // No ticket (or browser mode, where a beacon cannot send X-Sessiongate-Agent):
    // a keepalive fetch survives the page and can carry the headers.
    if (!nativeFetch) return;
    quietly(() => {
      nativeFetch
        .call(window, PREFIX + "/bye", {
          method: "POST",
          keepalive: true,
          credentials: "same-origin",
          headers: reservedHeaders(token()),
          body,
        })
        .catch(() => {});
    });
  }

  /** Removes `__sg*` parameters from the address bar (keeps the rest and the hash). */
  function cleanAddressBar() {
    const clean = stripReserved(location.href);
    if (clean === location.href) return;
    quietly(() => history.replaceState(history.state, "", clean));
  }

  /**
   * The page was served for another session than the one this tab holds (and it
   * did not come with a token): run the bootstrap again. Guarded to once per 10 s,
   * and never without working storage (the guard could not hold: a loop).
   */
  function repairIfOutOfStep() {
    if (!TAB || PAGE_TOKEN || !PAGE_HANDLE || !storage) return false;
    if (load(KEY.handle) === PAGE_HANDLE && token()) return false;
    const last = Number(load(KEY.repair)) || 0;
    const since = now() - last;
    if (since >= 0 && since < REPAIR_GAP) return false;
    save(KEY.repair, String(now()));
    if (load(KEY.repair) === null) return false;
    repairing = true; // also keeps the Navigation API path from adding a ticket
    quietly(() => location.replace(stripReserved(location.href)));
    return true;
  }

  /** In a same-origin frame whose top page runs the agent for this session, the top shows the UI. */
  function uiBelongsToTop() {
    try {
      if (window.top === window) return false;
      const top = window.top.sessiongate;
      return !!top && handle != null && top.id === handle;
    } catch (_) {
      return false; // cross-origin top
    }
  }

  // ------------------------------------------------------------------ the UI

  const STYLE = `
:host { all: initial; }
.box {
  box-sizing: border-box; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: #1b1b1f; background: #fff; border: 1px solid #cfcfd6; border-radius: 10px;
  box-shadow: 0 12px 40px rgba(0, 0, 0, .3); padding: 20px 22px;
  max-width: min(26rem, calc(100vw - 2rem));
}
dialog.box { margin: auto; }
dialog.box::backdrop { background: rgba(15, 15, 20, .45); }
dialog.box.fallback { position: fixed; inset: 0; height: fit-content; z-index: 2147483647; }
h2 { margin: 0 0 8px; font-size: 17px; font-weight: 600; }
p { margin: 0 0 16px; }
.status { color: #a1261c; }
.status:empty { display: none; }
.actions { display: flex; gap: 8px; justify-content: flex-end; }
button {
  font: inherit; padding: 7px 16px; border-radius: 6px; border: 1px solid #9a9aa5;
  background: #f3f3f6; color: inherit; cursor: pointer;
}
button.primary { background: #1f5fd1; border-color: #1f5fd1; color: #fff; }
button[aria-disabled="true"] { opacity: .6; cursor: progress; }
button:focus-visible, a:focus-visible { outline: 3px solid #f2a60c; outline-offset: 2px; }
.notice {
  display: flex; flex-wrap: wrap; gap: 8px 20px; align-items: center; justify-content: space-between;
  max-width: none; margin: 0; padding: 12px 20px; border-width: 0 0 1px; border-radius: 0;
  box-shadow: none; background: #fff4e0; border-color: #d9a441;
}
.notice p { margin: 0; }
.notice .kept:empty { display: none; }
.notice a { color: #1f5fd1; font-weight: 600; white-space: nowrap; }
@media (prefers-color-scheme: dark) {
  .box { background: #23232a; color: #ececf1; border-color: #44444f; }
  .notice { background: #3b3020; border-color: #8a6a2c; }
  button { background: #33333c; border-color: #5a5a66; }
  .notice a { color: #8fb3ff; }
}
`;

  /** A host element with a closed shadow root carrying our styles. */
  function makeHost() {
    const host = document.createElement("sessiongate-ui");
    const root = host.attachShadow({ mode: "closed" });
    let styled = false;
    // A constructed sheet is not subject to the page's style-src; a <style> is.
    try {
      if ("adoptedStyleSheets" in root && typeof CSSStyleSheet === "function") {
        const sheet = new CSSStyleSheet();
        sheet.replaceSync(STYLE);
        root.adoptedStyleSheets = [sheet];
        styled = true;
      }
    } catch (_) {
      styled = false;
    }
    if (!styled) {
      const style = document.createElement("style");
      if (NONCE) style.nonce = NONCE;
      style.textContent = STYLE;
      root.appendChild(style);
    }
    return { host, root };
  }

  function element(tag, attributes, text) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) el.setAttribute(name, value);
    if (text != null) el.textContent = text;
    return el;
  }

  /** The focused element, looking into open shadow roots. */
  function focusedElement() {
    let el = document.activeElement;
    while (el && el.shadowRoot && el.shadowRoot.activeElement) el = el.shadowRoot.activeElement;
    return el;
  }

  const countdown = (() => {
    let ui = null; // {host, root, dialog, title, text, seconds, status, stay, end}
    let shown = false;
    let language = "en"; // the tag the seconds are formatted in
    let closing = false;
    let busy = false;
    let ticker = 0;
    let previous = null;

    function build() {
      const { host, root } = makeHost();
      const dialog = element("dialog", {
        class: "box",
        role: "alertdialog",
        "aria-modal": "true",
        "aria-labelledby": "sg-title",
        "aria-describedby": "sg-text",
      });
      const title = element("h2", { id: "sg-title" });
      const text = element("p", { id: "sg-text" });
      const status = element("p", { class: "status", role: "status" });
      const stay = element("button", { type: "button", class: "primary" });
      const end = element("button", { type: "button" });
      const actions = element("div", { class: "actions" });
      actions.append(stay, end);
      dialog.append(title, text, status, actions);
      root.appendChild(dialog);

      stay.addEventListener("click", () => quietly(onStay));
      end.addEventListener("click", () => quietly(onEnd));
      dialog.addEventListener("keydown", (event) => {
        if (event.key === "Escape") {
          event.preventDefault();
          quietly(onStay);
        } else if (event.key === "Tab") {
          // Two buttons: Tab and Shift+Tab both go to the other one.
          event.preventDefault();
          (root.activeElement === stay ? end : stay).focus();
        }
        event.stopPropagation(); // keep the page's shortcuts out of the dialog
      });
      dialog.addEventListener("cancel", (event) => {
        event.preventDefault(); // Escape through the close watcher: still "Stay"
        quietly(onStay);
      });
      dialog.addEventListener("close", () => {
        if (!closing && shown) {
          quietly(() => show()); // closed by the browser: keep it up
          quietly(onStay);
        }
      });
      return { host, root, dialog, title, text, seconds: [], status, stay, end };
    }

    /** Writes the texts in the language of the moment (see `uiLanguage`). */
    function label() {
      const { tag, pick } = texts();
      language = tag;
      ui.title.textContent = pick("title");
      ui.stay.textContent = pick("stay");
      ui.end.textContent = pick("end");
      // {stay} is the Stay button's text; each {seconds} becomes a <strong> that the
      // ticker keeps up to date.
      const parts = pick("message").split("{stay}").join(pick("stay")).split("{seconds}");
      ui.seconds = parts.slice(1).map(() => element("strong"));
      ui.text.replaceChildren();
      parts.forEach((part, i) => {
        if (i > 0) ui.text.append(ui.seconds[i - 1]);
        if (part) ui.text.append(part);
      });
    }

    function setBusy(value) {
      busy = value;
      for (const button of [ui.stay, ui.end]) {
        if (value) button.setAttribute("aria-disabled", "true");
        else button.removeAttribute("aria-disabled");
      }
    }

    function onStay() {
      if (busy) return;
      setBusy(true);
      ui.status.textContent = "";
      extend()
        .catch(() => {
          if (state === "warning") ui.status.textContent = texts().pick("offline");
        })
        .finally(() => setBusy(false));
    }

    function onEnd() {
      if (busy) return;
      setBusy(true);
      ui.status.textContent = "";
      end({})
        .catch(() => {
          if (state === "warning") ui.status.textContent = texts().pick("offline");
        })
        .finally(() => setBusy(false));
    }

    function update() {
      if (!shown) return;
      const left = deadline == null ? null : Math.max(0, Math.ceil((deadline - serverNow()) / 1000));
      const value = left == null ? "…" : formatSeconds(left, language);
      for (const strong of ui.seconds) strong.textContent = value;
    }

    function show() {
      if (!document.documentElement) return;
      if (!ui) ui = build();
      if (!ui.host.isConnected) document.documentElement.appendChild(ui.host);
      if (!shown) {
        previous = focusedElement();
        label();
      }
      shown = true;
      if (!ui.dialog.open) {
        try {
          ui.dialog.showModal(); // top layer: above the page, even above its own modals
        } catch (_) {
          ui.dialog.classList.add("fallback");
          ui.dialog.setAttribute("open", "");
        }
      }
      ui.stay.focus();
      update();
      clearInterval(ticker);
      ticker = setInterval(() => quietly(update), 1000);
    }

    /** Hides the dialog; returns whether it had the focus. */
    function hide() {
      if (!shown) return false;
      shown = false;
      clearInterval(ticker);
      ticker = 0;
      const hadFocus = ui.root.activeElement != null;
      closing = true;
      quietly(() => ui.dialog.close());
      ui.dialog.removeAttribute("open");
      closing = false;
      ui.status.textContent = "";
      quietly(() => ui.host.remove());
      if (hadFocus && previous && previous.isConnected && typeof previous.focus === "function") {
        quietly(() => previous.focus({ preventScroll: true }));
      }
      previous = null;
      return hadFocus;
    }

    return { show, hide, update, owns: (target) => !!ui && target === ui.host };
  })();

  /**
   * The notice that the session has ended: a banner at the top of the page, in the
   * flow of the document, so it pushes the page's content down instead of covering
   * it, with a "Start again" link. `options.kept`: it stopped a form or a navigation,
   * so it also says that what was typed is still in the page; `options.to`: where
   * "Start again" goes (default: this page, reloaded).
   */
  const notice = (() => {
    let ui = null; // {host, text, kept, link}
    let destination = null;

    function build() {
      const { host, root } = makeHost();
      host.style.display = "block"; // a block in the flow, whatever the page's CSS says
      const box = element("div", { class: "box notice", role: "alert" });
      const words = element("div", { class: "words" });
      const text = element("p");
      const kept = element("p", { class: "kept" });
      const link = element("a", { href: stripReserved(location.href) });
      link.addEventListener("click", (event) => {
        // A new tab or window (modifier keys, middle click) follows the href itself.
        if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
        event.preventDefault();
        quietly(restart);
      });
      words.append(text, kept);
      box.append(words, link);
      root.appendChild(box);
      return { host, text, kept, link };
    }

    /** "Start again": leave on purpose (the ended-tab guard lets it pass). */
    function restart() {
      const target = destination || stripReserved(location.href);
      leaving = true;
      if (target === location.href) location.reload();
      else if (destination) location.assign(target);
      else location.replace(target);
    }

    function show(takeFocus, options) {
      const parent = document.body || document.documentElement;
      if (!parent) return;
      if (!ui) ui = build();
      const { pick } = texts();
      ui.text.textContent = pick("ended");
      if (options && options.kept) ui.kept.textContent = pick("kept");
      if (options && options.to) destination = options.to;
      ui.link.textContent = pick("restart");
      ui.link.setAttribute("href", destination || stripReserved(location.href));
      if (!ui.host.isConnected) parent.insertBefore(ui.host, parent.firstChild);
      if (takeFocus) quietly(() => ui.link.focus());
    }

    return { show, owns: (target) => !!ui && target === ui.host };
  })();

  // ---------------------------------------------------------------- public API

  function snapshot() {
    return { id: handle, state, deadline: api.deadline };
  }

  /** "Stay": counts as activity; resolves once the reply is applied. */
  function extend() {
    if (!nativeFetch || state === "ended" || !hasSession()) {
      return Promise.reject(new Error("sessiongate: no session to extend"));
    }
    const auth = token();
    return post("extend", { page: pageId }, auth).then((result) => {
      if (result.status === 200 && result.json) {
        lastActivitySent = now();
        if (result.fresh) apply(result.json, true);
        return snapshot();
      }
      if (result.status === 401) {
        toEnded();
        throw new Error("sessiongate: the session has ended");
      }
      throw new Error("sessiongate: extend failed (" + result.status + ")");
    });
  }

  /** Ends the session ("End", Application.Exit); then goes to `redirect` if given. */
  function end(options) {
    const raw = options && options.redirect;
    const target = raw != null && raw !== "" ? resolve(raw) : null;
    const redirect = target && (target.protocol === "http:" || target.protocol === "https:") ? target.href : null;
    if (!nativeFetch || !hasSession()) return Promise.reject(new Error("sessiongate: no session to end"));
    const finish = () => {
      if (redirect) suppressNotice = true;
      if (state !== "ended") {
        broadcast({ state: "ended" });
        toEnded();
      }
      if (redirect) {
        leaving = true;
        location.assign(redirect);
      }
      return snapshot();
    };
    if (state === "ended") return Promise.resolve(finish());
    return post("end", { page: pageId }).then((result) => {
      if (result.status === 200 || result.status === 401) return finish();
      throw new Error("sessiongate: end failed (" + result.status + ")");
    });
  }

  const api = Object.freeze({
    get id() {
      return handle;
    },
    get state() {
      return state;
    },
    get deadline() {
      return state === "active" || state === "warning" ? deadline : null;
    },
    extend,
    end,
    on(type, callback) {
      if (listeners[type] && typeof callback === "function") listeners[type].add(callback);
    },
    off(type, callback) {
      if (listeners[type]) listeners[type].delete(callback);
    },
  });

  quietly(() => Object.defineProperty(window, "sessiongate", { value: api, enumerable: true, configurable: true }));

  // --------------------------------------------------------------------- start

  cleanAddressBar();
  if (!repairIfOutOfStep()) {
    quietly(takeLocks);
    if (state === "ended") {
      lifecycle = false;
    } else {
      adoptBootstrapTickets();
      // A prerendered page must not signal anything until the user sees it.
      if (document.prerendering) {
        document.addEventListener("prerenderingchange", () => quietly(startLifecycle), { once: true });
      } else {
        startLifecycle();
      }
    }
  }

  // Page scripts can register on() handlers until DOMContentLoaded; only then is
  // the page told about states (and does the built-in UI appear).
  function ready() {
    domReady = true;
    quietly(watchShadowRoots, document);
    if (!repairing) quietly(announce);
  }
  if (domReady) setTimeout(ready, 0);
  else document.addEventListener("DOMContentLoaded", ready, { once: true });
})();
