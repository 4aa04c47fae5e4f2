/*
 * tidings inbox widget: a notification bell with an unread badge and a
 * dropdown inbox, live over Server-Sent Events. No framework, no build step,
 * no dependencies; any browser with fetch, EventSource and ES2017.
 *
 *   <div id="inbox"></div>
 *   <script src="https://notify.example.com/v1/inbox/widget.js"></script>
 *   <script>
 *     const inbox = TidingsInbox.mount(document.getElementById("inbox"), {
 *       baseUrl: "https://notify.example.com", // the gateway's HTTP address
 *       token: userToken,                       // or a function returning one
 *     });
 *   </script>
 *
 * The badge counts UNREAD items (not "unseen"): it drops when the user reads
 * an item here or on any other device, not merely when the list is opened.
 * Opening the list still marks everything seen (POST .../seen), for clients
 * that show unseen counts.
 *
 * Every piece of notification text reaches the page through textContent or a
 * checked attribute, never parsed as HTML; action and avatar URLs must be
 * http(s).
 * Docs: docs/inbox.md. The API: docs/api.md (the inbox section).
 */
(function (global) {
  "use strict";

  var STYLE_ID = "tidings-inbox-style";
  var CSS = [
    ".tdg-inbox{position:relative;display:inline-block;font:14px/1.4 system-ui,sans-serif;color:var(--tdg-text,#1f2328)}",
    ".tdg-bell{position:relative;background:none;border:0;padding:6px;cursor:pointer;color:inherit;border-radius:6px}",
    ".tdg-bell:focus-visible{outline:2px solid var(--tdg-accent,#0969da)}",
    ".tdg-bell svg{width:22px;height:22px;display:block}",
    ".tdg-badge{position:absolute;top:0;right:0;min-width:16px;height:16px;padding:0 4px;box-sizing:border-box;border-radius:8px;background:var(--tdg-badge,#cf222e);color:#fff;font-size:11px;line-height:16px;text-align:center}",
    ".tdg-badge[hidden]{display:none}",
    ".tdg-panel{position:absolute;right:0;top:100%;z-index:1000;width:340px;max-height:440px;display:flex;flex-direction:column;background:var(--tdg-bg,#fff);border:1px solid #d0d7de;border-radius:8px;box-shadow:0 8px 24px rgba(0,0,0,.12)}",
    ".tdg-panel[hidden]{display:none}",
    ".tdg-head{display:flex;align-items:center;justify-content:space-between;padding:8px 12px;border-bottom:1px solid #d0d7de;font-weight:600}",
    ".tdg-head button,.tdg-more{background:none;border:0;color:var(--tdg-accent,#0969da);cursor:pointer;font:inherit;font-weight:400;padding:2px 4px}",
    ".tdg-list{list-style:none;margin:0;padding:0;overflow-y:auto}",
    ".tdg-item{display:flex;gap:10px;padding:10px 12px;border-bottom:1px solid #eaeef2;cursor:pointer;align-items:flex-start}",
    ".tdg-item:hover{background:#f6f8fa}",
    ".tdg-item.tdg-unread{background:var(--tdg-unread-bg,#ddf4ff)}",
    ".tdg-item.tdg-unread .tdg-title{font-weight:600}",
    ".tdg-avatar{width:32px;height:32px;border-radius:50%;flex:none;object-fit:cover;background:#eaeef2}",
    ".tdg-text{flex:1;min-width:0}",
    ".tdg-title,.tdg-body{overflow-wrap:anywhere}",
    ".tdg-body{color:#57606a}",
    ".tdg-time{color:#6e7781;font-size:12px}",
    ".tdg-archive{background:none;border:0;color:#6e7781;cursor:pointer;font-size:16px;line-height:1;padding:0 2px}",
    ".tdg-empty,.tdg-error{padding:16px 12px;color:#6e7781;text-align:center}",
    ".tdg-error{color:#cf222e}",
  ].join("\n");

  // Most items held in the list: live arrivals are prepended, so a page left
  // open for days would otherwise grow without end.
  var MAX_ITEMS = 200;

  function injectStyle(nonce) {
    if (document.getElementById(STYLE_ID)) return;
    var style = document.createElement("style");
    style.id = STYLE_ID;
    if (nonce) style.setAttribute("nonce", nonce);
    style.textContent = CSS;
    (document.head || document.documentElement).appendChild(style);
  }

  /** The URL as an absolute http(s) URL string, or null (javascript:, data:, garbage). */
  function safeUrl(url) {
    if (typeof url !== "string" || url === "") return null;
    try {
      var parsed = new URL(url, global.location.href);
      return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** A constant bell icon, built node by node (no markup strings). */
  function bellIcon() {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("fill", "currentColor");
    path.setAttribute(
      "d",
      "M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22zm7-6V11a7 7 0 0 0-5.5-6.84V3a1.5 1.5 0 0 0-3 0v1.16A7 7 0 0 0 5 11v5l-2 2v1h18v-1z"
    );
    svg.appendChild(path);
    return svg;
  }

  function relativeTime(ms, locale) {
    var seconds = Math.round((ms - Date.now()) / 1000);
    var units = [
      ["year", 31536000],
      ["month", 2592000],
      ["day", 86400],
      ["hour", 3600],
      ["minute", 60],
    ];
    try {
      var format = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
      for (var i = 0; i < units.length; i++) {
        if (Math.abs(seconds) >= units[i][1]) {
          return format.format(Math.round(seconds / units[i][1]), units[i][0]);
        }
      }
      return format.format(0, "second");
    } catch (e) {
      return new Date(ms).toLocaleString();
    }
  }

  /**
   * Mounts the inbox in `element`. Options:
   *   baseUrl   the gateway's HTTP origin (default: where this script came from)
   *   token     the user's bearer token, or a function returning it (or a
   *             promise of it), asked before every call and reconnect: hand
   *             in a function when tokens expire
   *   pageSize  items per page (1..100, default 20)
   *   locale    for times (default: the browser's)
   *   styles    false: inject no <style> (bring your own, classes tdg-*)
   *   nonce     the CSP nonce for the injected <style>
   *   onError   called with an Error when a call fails
   * Returns {refresh(), markAllRead(), unmount(), counts()}.
   * The element also gets events: tidings:counts, tidings:notification,
   * tidings:state (detail: the server's event data), and data-unread /
   * data-live attributes.
   */
  function mount(element, options) {
    if (!element || !element.appendChild) throw new TypeError("TidingsInbox.mount: an element is required");
    options = options || {};
    var baseUrl = String(options.baseUrl || scriptOrigin || global.location.origin).replace(/\/+$/, "");
    var pageSize = Math.min(100, Math.max(1, options.pageSize | 0 || 20));
    var locale = options.locale;
    var onError = typeof options.onError === "function" ? options.onError : function () {};
    if (options.styles !== false) injectStyle(options.nonce);

    var state = {
      counts: { unread: 0, unseen: 0, total: 0 },
      items: [], // newest first
      nextCursor: null,
      loaded: false,
      open: false,
      source: null,
      reconnectTimer: null,
      retryDelay: 1000,
      everOpened: false,
      countsOnConnection: 0,
      unmounted: false,
    };

    // --- the DOM ---------------------------------------------------------
    var root = el("div", "tdg-inbox");
    var bell = el("button", "tdg-bell");
    bell.type = "button";
    bell.setAttribute("aria-haspopup", "true");
    bell.setAttribute("aria-expanded", "false");
    bell.appendChild(bellIcon());
    var badge = el("span", "tdg-badge");
    badge.hidden = true;
    bell.appendChild(badge);
    var panel = el("div", "tdg-panel");
    panel.hidden = true;
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", "Notifications");
    var head = el("div", "tdg-head");
    head.appendChild(el("span", null, "Notifications"));
    var readAll = el("button", "tdg-read-all", "Mark all read");
    readAll.type = "button";
    head.appendChild(readAll);
    var list = el("ul", "tdg-list");
    var status = el("div", "tdg-empty");
    var more = el("button", "tdg-more", "Load more");
    more.type = "button";
    more.hidden = true;
    panel.appendChild(head);
    panel.appendChild(list);
    panel.appendChild(status);
    panel.appendChild(more);
    root.appendChild(bell);
    root.appendChild(panel);
    element.appendChild(root);
    element.setAttribute("data-live", "connecting");

    function emit(name, detail) {
      element.dispatchEvent(new CustomEvent("tidings:" + name, { detail: detail }));
    }

    // --- the HTTP API ----------------------------------------------------
    function token() {
      return Promise.resolve(typeof options.token === "function" ? options.token() : options.token);
    }

    function call(method, path) {
      return token().then(function (t) {
        return fetch(baseUrl + path, {
          method: method,
          headers: { authorization: "Bearer " + t, accept: "application/json" },
          mode: "cors",
          credentials: "omit",
        }).then(function (response) {
          return response.text().then(function (text) {
            var body = null;
            try {
              body = text ? JSON.parse(text) : null;
            } catch (e) {
              body = null;
            }
            if (!response.ok) {
              var error = new Error((body && body.error) || method + " " + path + ": HTTP " + response.status);
              error.status = response.status;
              error.body = body;
              throw error;
            }
            return body;
          });
        });
      });
    }

    function failed(error) {
      status.className = "tdg-error";
      status.textContent = "Could not reach notifications.";
      status.hidden = false;
      onError(error);
    }

    // --- rendering -------------------------------------------------------
    function setCounts(counts) {
      if (!counts || typeof counts.unread !== "number") return;
      state.counts = counts;
      var unread = counts.unread;
      badge.textContent = unread > 99 ? "99+" : String(unread);
      badge.hidden = unread === 0;
      bell.setAttribute("aria-label", unread === 0 ? "Notifications" : "Notifications, " + unread + " unread");
      element.setAttribute("data-unread", String(unread));
      readAll.disabled = unread === 0;
      emit("counts", counts);
    }

    function renderItem(item) {
      var li = el("li", "tdg-item" + (item.read ? "" : " tdg-unread"));
      li.setAttribute("data-id", item.id);
      li.setAttribute("role", "button");
      li.tabIndex = 0;
      var avatar = safeUrl(item.avatar_url);
      if (avatar) {
        var img = el("img", "tdg-avatar");
        img.alt = "";
        img.referrerPolicy = "no-referrer";
        img.src = avatar;
        li.appendChild(img);
      }
      var text = el("div", "tdg-text");
      if (item.title) text.appendChild(el("div", "tdg-title", item.title));
      if (item.body) text.appendChild(el("div", "tdg-body", item.body));
      var time = el("div", "tdg-time", relativeTime(item.created_at_ms, locale));
      time.title = new Date(item.created_at_ms).toLocaleString(locale);
      text.appendChild(time);
      li.appendChild(text);
      var archive = el("button", "tdg-archive", "\u00d7");
      archive.type = "button";
      archive.title = "Archive";
      archive.setAttribute("aria-label", "Archive");
      li.appendChild(archive);
      return li;
    }

    // The rows on the page, by item id: a redraw keeps the row of an item
    // whose content did not change (focus, hover and references stay), and
    // only toggles its read state.
    var rows = new Map();

    function contentOf(item) {
      return JSON.stringify([item.created_at_ms, item.title, item.body, item.action_url, item.avatar_url]);
    }

    function render() {
      var wanted = [];
      var ids = new Set();
      for (var i = 0; i < state.items.length; i++) {
        var item = state.items[i];
        var content = contentOf(item);
        var row = rows.get(item.id);
        if (!row || row.content !== content) {
          if (row) row.li.remove();
          row = { li: renderItem(item), content: content };
          rows.set(item.id, row);
        }
        row.li.classList.toggle("tdg-unread", !item.read);
        var time = row.li.querySelector(".tdg-time");
        if (time) time.textContent = relativeTime(item.created_at_ms, locale);
        ids.add(item.id);
        wanted.push(row.li);
      }
      rows.forEach(function (row, id) {
        if (!ids.has(id)) {
          row.li.remove();
          rows.delete(id);
        }
      });
      for (var j = 0; j < wanted.length; j++) {
        if (list.children[j] !== wanted[j]) list.insertBefore(wanted[j], list.children[j] || null);
      }
      status.className = "tdg-empty";
      status.textContent = state.loaded ? "Nothing here yet." : "Loading\u2026";
      status.hidden = state.items.length > 0;
      more.hidden = !state.nextCursor;
      readAll.disabled = state.counts.unread === 0;
    }

    function find(id) {
      for (var i = 0; i < state.items.length; i++) if (state.items[i].id === id) return i;
      return -1;
    }

    /** Replaces (or drops, with null) the local copy of item `id`, then redraws. */
    function update(id, item) {
      var at = find(id);
      if (at < 0) return;
      if (item && !item.archived) state.items[at] = item;
      else state.items.splice(at, 1);
      render();
    }

    // --- actions ---------------------------------------------------------
    function load(cursor) {
      var query = "?filter=inbox&limit=" + pageSize + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
      return call("GET", "/v1/me/notifications" + query).then(function (page) {
        var items = (page && page.items) || [];
        if (cursor) {
          for (var i = 0; i < items.length; i++) if (find(items[i].id) < 0) state.items.push(items[i]);
        } else {
          // Keep items that arrived live while this page was on its way.
          var newest = items.length ? items[0].created_at_ms : 0;
          var ids = {};
          for (var j = 0; j < items.length; j++) ids[items[j].id] = true;
          var arrived = state.items.filter(function (x) {
            return !ids[x.id] && x.created_at_ms >= newest;
          });
          state.items = arrived.concat(items);
        }
        state.nextCursor = (page && page.next_cursor) || null;
        state.loaded = true;
        render();
      }, failed);
    }

    function refresh() {
      return Promise.all([load(null), call("GET", "/v1/me/notifications/count").then(setCounts, failed)]);
    }

    function mark(id, action) {
      return call("POST", "/v1/me/notifications/" + encodeURIComponent(id) + "/" + action).then(function (answer) {
        if (answer) {
          update(id, answer.item);
          setCounts(answer.counts);
        }
      });
    }

    function markAllRead() {
      return call("POST", "/v1/me/notifications/read-all").then(function (answer) {
        for (var i = 0; i < state.items.length; i++) state.items[i].read = true;
        if (answer) setCounts(answer.counts);
        render();
      }, failed);
    }

    function open(show) {
      state.open = show;
      panel.hidden = !show;
      bell.setAttribute("aria-expanded", String(show));
      if (show && state.counts.unseen > 0) {
        call("POST", "/v1/me/notifications/seen").then(function (answer) {
          if (answer) setCounts(answer.counts);
        }, failed);
      }
    }

    function onListClick(event) {
      var li = event.target.closest && event.target.closest(".tdg-item");
      if (!li || !list.contains(li)) return;
      var id = li.getAttribute("data-id");
      var item = state.items[find(id)];
      if (!item) return;
      if (event.target.closest(".tdg-archive")) {
        event.stopPropagation();
        mark(id, "archive").catch(failed);
        return;
      }
      var target = safeUrl(item.action_url);
      var marked = item.read ? Promise.resolve() : mark(id, "read");
      if (target) {
        // Follow the link once the read is recorded (leaving the page would
        // cancel the call); a failed read does not block it.
        marked.then(go, go);
      } else {
        marked.catch(failed);
      }
      function go() {
        global.location.assign(target);
      }
    }

    function onListKey(event) {
      if ((event.key === "Enter" || event.key === " ") && event.target.classList.contains("tdg-item")) {
        event.preventDefault();
        event.target.click();
      }
    }

    function onBell(event) {
      event.stopPropagation();
      open(!state.open);
    }

    function onDocumentClick(event) {
      if (state.open && !root.contains(event.target)) open(false);
    }

    function onDocumentKey(event) {
      if (state.open && event.key === "Escape") {
        open(false);
        bell.focus();
      }
    }

    function onMore() {
      if (state.nextCursor) load(state.nextCursor);
    }

    bell.addEventListener("click", onBell);
    readAll.addEventListener("click", markAllRead);
    more.addEventListener("click", onMore);
    list.addEventListener("click", onListClick);
    list.addEventListener("keydown", onListKey);
    document.addEventListener("click", onDocumentClick);
    document.addEventListener("keydown", onDocumentKey);

    // --- live ------------------------------------------------------------
    function parse(event) {
      try {
        return JSON.parse(event.data);
      } catch (e) {
        return null;
      }
    }

    function onCounts(event) {
      setCounts(parse(event));
      state.countsOnConnection += 1;
      // Counts again on the same connection: the gateway resynced a stream
      // that fell behind; it resends missed items, not missed changes.
      if (state.countsOnConnection > 1) load(null);
      render();
    }

    function onNotification(event) {
      var data = parse(event);
      if (!data || !data.item) return;
      if (find(data.item.id) < 0 && !data.item.archived) {
        state.items.unshift(data.item);
        if (state.items.length > MAX_ITEMS) state.items.length = MAX_ITEMS;
      }
      setCounts(data.counts);
      render();
      emit("notification", data);
    }

    function onState(event) {
      var data = parse(event);
      if (!data) return;
      var at = data.id ? find(data.id) : -1;
      switch (data.kind) {
        case "read":
        case "unread":
          if (at >= 0) state.items[at].read = data.kind === "read";
          break;
        case "archived":
          if (at >= 0) state.items.splice(at, 1);
          break;
        case "unarchived":
          // Not held here (archived items are not in the inbox list): reload.
          load(null);
          break;
        case "read_all":
          for (var i = 0; i < state.items.length; i++) state.items[i].read = true;
          break;
      }
      setCounts(data.counts);
      render();
      emit("state", data);
    }

    function connect() {
      if (state.unmounted) return;
      token().then(function (t) {
        if (state.unmounted) return;
        var source = new EventSource(baseUrl + "/v1/me/notifications/stream?access_token=" + encodeURIComponent(t));
        state.source = source;
        source.addEventListener("counts", onCounts);
        source.addEventListener("notification", onNotification);
        source.addEventListener("state", onState);
        source.onopen = function () {
          element.setAttribute("data-live", "open");
          state.retryDelay = 1000;
          state.countsOnConnection = 0;
          // A reconnect: EventSource resent Last-Event-ID and the server
          // replays missed items, but not missed read/archive changes.
          if (state.everOpened) load(null);
          state.everOpened = true;
        };
        source.onerror = function () {
          if (source.readyState === EventSource.CLOSED) {
            // Refused (an expired token answers 401): EventSource gives up, so
            // reconnect with a fresh token after a growing pause.
            element.setAttribute("data-live", "closed");
            source.close();
            state.reconnectTimer = setTimeout(connect, state.retryDelay);
            state.retryDelay = Math.min(state.retryDelay * 2, 60000);
          } else {
            element.setAttribute("data-live", "connecting"); // EventSource retries by itself
          }
        };
      }, failed);
    }

    render();
    load(null);
    connect();

    return {
      refresh: refresh,
      markAllRead: markAllRead,
      counts: function () {
        return state.counts;
      },
      unmount: function () {
        state.unmounted = true;
        clearTimeout(state.reconnectTimer);
        if (state.source) state.source.close();
        document.removeEventListener("click", onDocumentClick);
        document.removeEventListener("keydown", onDocumentKey);
        root.remove();
        element.removeAttribute("data-live");
        element.removeAttribute("data-unread");
      },
    };
  }

  // Where this script was loaded from: the gateway, the default baseUrl.
  var scriptOrigin = null;
  try {
    if (document.currentScript && document.currentScript.src) scriptOrigin = new URL(document.currentScript.src).origin;
  } catch (e) {
    scriptOrigin = null;
  }

  global.TidingsInbox = { mount: mount, version: 1 };
})(window);
