// The Webhooks dashboard: a client of the documented JSON API under /v1/.
//
// The API key lives in sessionStorage (this tab only) and travels only in the
// Authorization header; nothing here puts it in a URL, a cookie or the console.
// Every value from the API is inserted with textContent, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "docextract.dashboard.apiKey";
  // The event catalog, from the API's own OpenAPI document (its webhooks section): the types and
  // what each means are never copied into this page. Filled in by loadCatalog before anything renders.
  const EVENT_TYPES = [];
  const EVENT_HINTS = {};
  // The operator's event types (x-operator-webhooks): offered only when the key is the operator org's.
  const OPERATOR_TYPES = [];
  const KIND_LABELS = {
    scheduled: "Scheduled",
    replay_requested: "Replay requested",
    attempt_started: "Attempt started",
    attempt_finished: "Attempt finished",
    attempt_abandoned: "Attempt abandoned (worker lost; outcome unknown)",
    late_result: "Late result (arrived after the lease; ignored)",
  };
  const OPEN_STATES = new Set(["pending", "in_flight", "retrying"]);
  const RECENT_ATTEMPTS = 100;
  const AUTO_REFRESH_MS = 3000;
  const DELIVERY_POLL_MS = 2000;

  const $ = (id) => document.getElementById(id);

  const state = {
    endpoints: [],
    view: "signin",
    logs: { endpoint: null, cursors: [null], next: null, timer: null, loading: false, queued: null },
    delivery: { id: null, data: null, event: null, timer: null, from: "logs" },
    operator: false,
  };

  // DOM -------------------------------------------------------------------------------

  function h(tag, props = {}, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  function say(message) {
    // Re-setting the same text would not be announced again; clear first.
    const status = $("status");
    status.textContent = "";
    window.setTimeout(() => { status.textContent = message; }, 30);
  }

  // source names who raised the alert, so a later success of the same thing can clear it.
  function showAlert(message, source = "") {
    const alert = $("alert");
    alert.dataset.source = source;
    if (alert.textContent === message) return; // an automatic refresh failing again is not news
    alert.textContent = message;
    alert.hidden = !message;
    if (message) alert.scrollIntoView({ block: "nearest" });
  }

  function clearAlertFrom(source) {
    if ($("alert").dataset.source === source) showAlert("");
  }

  function showFieldError(id, message) {
    const el = $(id);
    el.textContent = message || "";
    el.hidden = !message;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return iso;
    return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function timeCell(iso) {
    return h("td", {}, iso ? h("time", { datetime: iso, text: fmtTime(iso) }) : "—");
  }

  function fmtMs(ms) {
    return ms === null || ms === undefined ? "—" : `${Number(ms).toFixed(1)} ms`;
  }

  function badge(kind, text) {
    return h("span", { class: `badge badge-${kind}`, text });
  }

  const OUTCOME_TEXT = { succeeded: "Succeeded", failed: "Failed", unknown: "Unknown" };
  const STATE_TEXT = {
    pending: "Pending", in_flight: "Sending", retrying: "Retrying", delivered: "Delivered", failed: "Failed",
  };
  const STATE_BADGE = {
    pending: "neutral", in_flight: "neutral", retrying: "unknown", delivered: "succeeded", failed: "failed",
  };

  // API ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body, key = sessionStorage.getItem(KEY_STORE)) {
    const headers = { Accept: "application/json" };
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
      });
    } catch (err) {
      throw new ApiError(0, "network", `Could not reach the webhooks API (${err.message}). Check that the server `
        + "is running and try again.");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data && data.error;
      const message = error && error.message
        ? error.message
        : `The server answered HTTP ${response.status} ${response.statusText} without an explanation.`;
      throw new ApiError(response.status, (error && error.code) || "http_error", message);
    }
    return data;
  }

  // Runs an action and turns any failure into a readable message where the user is looking.
  async function attempt(action, showError = showAlert) {
    try {
      return await action();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401 && state.view !== "signin") {
        signOut(`You have been signed out: ${err.message}`);
        return undefined;
      }
      const message = err instanceof ApiError ? err.message : `Something went wrong in this page: ${err.message}`;
      showError(message);
      return undefined;
    }
  }

  // Views ----------------------------------------------------------------------------

  function stopTimers() {
    window.clearInterval(state.logs.timer);
    state.logs.timer = null;
    window.clearTimeout(state.delivery.timer);
    state.delivery.timer = null;
  }

  function show(view) {
    stopTimers();
    state.view = view;
    for (const name of ["signin", "endpoints", "logs", "delivery"]) $(`view-${name}`).hidden = name !== view;
    showAlert("");
    $("status").textContent = ""; // a message belongs to the view it was said in
    const heading = document.querySelector(`#view-${view} h1`);
    heading.focus();
  }

  // Sign in ----------------------------------------------------------------------------

  function keyHint(key) {
    return `Signed in with key …${key.slice(-4)}`;
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    showFieldError("signin-error", "");
    if (!key) {
      showFieldError("signin-error", "Enter an API key to sign in.");
      input.focus();
      return;
    }
    const list = await attempt(() => api("GET", "/v1/webhooks", undefined, key), (message) => {
      showFieldError("signin-error", message);
      input.focus();
    });
    if (list === undefined) return;
    sessionStorage.setItem(KEY_STORE, key);
    input.value = "";
    enterDashboard(list.data, list.operator);
    say(`Signed in. ${list.data.length} endpoint${list.data.length === 1 ? "" : "s"}.`);
  }

  function enterDashboard(endpoints, operator) {
    state.operator = operator === true;
    const typeFilter = $("filter-event-type");
    for (const type of OPERATOR_TYPES) {
      const option = [...typeFilter.options].find((o) => o.value === type);
      if (state.operator && !option) typeFilter.append(h("option", { value: type, text: type }));
      if (!state.operator && option) option.remove();
    }
    $("add-events").replaceChildren(eventsFieldset("add", ["*"]));
    $("session-key").textContent = keyHint(sessionStorage.getItem(KEY_STORE));
    $("session").hidden = false;
    state.endpoints = endpoints;
    show("endpoints");
    renderEndpoints();
  }

  function signOut(message) {
    stopTimers();
    sessionStorage.removeItem(KEY_STORE);
    state.endpoints = [];
    $("endpoint-list").replaceChildren();
    $("session").hidden = true;
    show("signin");
    showFieldError("signin-error", message || "");
    if (!message) say("Signed out.");
  }

  // Endpoints --------------------------------------------------------------------------

  function eventsFieldset(prefix, selected) {
    const all = selected.includes("*");
    const allBox = h("input", { type: "checkbox", id: `${prefix}-all`, value: "*", checked: all });
    const types = state.operator ? [...EVENT_TYPES, ...OPERATOR_TYPES] : EVENT_TYPES;
    const boxes = types.map((type) => h("input", {
      type: "checkbox", id: `${prefix}-${type}`, value: type, checked: all || selected.includes(type), disabled: all,
    }));
    // All events covers every type, including ones added later; unticking it starts an explicit choice.
    allBox.addEventListener("change", () => {
      for (const box of boxes) {
        box.disabled = allBox.checked;
        box.checked = allBox.checked;
      }
    });
    return h("fieldset", { class: "events" },
      h("legend", { text: "Events to receive" }),
      h("div", { class: "check" }, allBox,
        h("label", { for: allBox.id }, "All events ", h("span", { class: "hint", text: "(including types added later)" }))),
      types.map((type, i) => h("div", { class: "check" }, boxes[i],
        h("label", { for: boxes[i].id }, h("code", { text: type }), " ", h("span", { class: "hint", text: EVENT_HINTS[type] })))));
  }

  function chosenEvents(container) {
    const boxes = [...container.querySelectorAll("input[type=checkbox]")];
    if (boxes.find((box) => box.value === "*").checked) return ["*"];
    return boxes.filter((box) => box.checked && box.value !== "*").map((box) => box.value);
  }

  function eventsText(events) {
    return events.includes("*") ? "All events" : events.join(", ");
  }

  // A null limit is the deployment's default, which only the server knows.
  function maxInFlightText(endpoint) {
    return endpoint.max_in_flight === null ? "Default" : `${endpoint.max_in_flight} requests at once`;
  }

  function rateLimitText(endpoint) {
    return endpoint.rate_limit === null ? "Default" : `${endpoint.rate_limit} per second`;
  }

  function orderingText(endpoint) {
    return endpoint.ordering === "fifo" ? "In order (one at a time per ordering key)" : "As they come, in parallel";
  }

  // Header values and credentials are sealed and never returned: only the names and the type are known here.
  function headersText(endpoint) {
    return endpoint.header_names.length ? endpoint.header_names.join(", ") : "None";
  }

  const AUTH_NAMES = { basic: "HTTP Basic", bearer: "Bearer token", mtls: "Mutual TLS (client certificate)" };

  function authText(endpoint) {
    return endpoint.auth === null ? "None" : AUTH_NAMES[endpoint.auth.type] || endpoint.auth.type;
  }

  // Empty is null (the default). Anything that is not a finite number is sent as typed, so the server
  // refuses it with the message the API and the CLI share (JSON would turn NaN or Infinity into null).
  function limitValue(input) {
    const text = input.value.trim();
    if (!text) return null;
    const number = Number(text);
    return Number.isFinite(number) ? number : text;
  }

  function renderEndpoints() {
    const list = $("endpoint-list");
    list.replaceChildren(...state.endpoints.map(endpointCard));
    $("endpoint-empty").hidden = state.endpoints.length > 0;
    for (const endpoint of state.endpoints) loadSuccessRate(endpoint);
  }

  function endpointCard(endpoint) {
    const headingId = `ep-${endpoint.id}-url`;
    const result = h("div", { class: "result", role: "status", "aria-live": "polite", id: `ep-${endpoint.id}-result` });
    const rate = h("dd", { id: `ep-${endpoint.id}-rate`, text: "Loading…" });
    const status = endpoint.enabled
      ? h("dd", {}, badge("succeeded", "Enabled"))
      : h("dd", {}, badge("failed", "Disabled"), " ",
        h("span", { class: "hint", text: "Disabled by a user of this org: its events are logged as failed and not "
          + "sent. Enable it to resume, then replay what it missed from the logs." }));
    const button = (text, onclick, cls = "quiet") => h("button", {
      type: "button", class: cls, "aria-describedby": headingId, onclick,
    }, text);
    return h("li", { class: "card", "data-endpoint-id": endpoint.id, "aria-labelledby": headingId },
      h("h3", { id: headingId, class: "mono", text: endpoint.url }),
      endpoint.description ? h("p", { text: endpoint.description }) : null,
      h("dl", { class: "summary" },
        h("dt", { text: "Id" }), h("dd", { class: "mono", text: endpoint.id }),
        h("dt", { text: "Events" }), h("dd", { text: eventsText(endpoint.events) }),
        h("dt", { text: "Status" }), status,
        h("dt", { text: "Max in flight" }), h("dd", { text: maxInFlightText(endpoint) }),
        h("dt", { text: "Rate limit" }), h("dd", { text: rateLimitText(endpoint) }),
        h("dt", { text: "Delivery order" }), h("dd", { text: orderingText(endpoint) }),
        h("dt", { text: "Custom headers" }), h("dd", { class: "mono", text: headersText(endpoint) }),
        h("dt", { text: "Authentication" }), h("dd", { text: authText(endpoint) }),
        h("dt", { text: "Recent success rate" }), rate),
      h("div", { class: "actions" },
        button("Send test event", () => sendTest(endpoint, result), "primary"),
        button("View logs", () => openLogs(endpoint)),
        button("Edit", () => openEdit(endpoint)),
        button(endpoint.enabled ? "Disable" : "Enable", () => setEnabled(endpoint, !endpoint.enabled)),
        button("Rotate secret", () => rotateSecret(endpoint)),
        button("Delete", () => deleteEndpoint(endpoint), "danger")),
      result);
  }

  async function loadSuccessRate(endpoint) {
    const cell = () => document.getElementById(`ep-${endpoint.id}-rate`);
    const page = await attempt(
      () => api("GET", `/v1/webhooks/${encodeURIComponent(endpoint.id)}/logs?limit=${RECENT_ATTEMPTS}`),
      (message) => { if (cell()) cell().textContent = `Could not compute: ${message}`; });
    if (page === undefined || !cell()) return;
    const total = page.data.length;
    if (total === 0) {
      cell().textContent = "No attempts yet";
      return;
    }
    const ok = page.data.filter((a) => a.outcome === "succeeded").length;
    const scope = page.next_cursor ? `of the last ${total} attempts` : `of ${total} attempt${total === 1 ? "" : "s"}`;
    cell().textContent = `${Math.round((100 * ok) / total)}% (${ok} ${scope} succeeded)`;
  }

  async function refreshEndpoints() {
    const list = await attempt(() => api("GET", "/v1/webhooks"));
    if (list === undefined) return false;
    state.endpoints = list.data;
    renderEndpoints();
    return true;
  }

  function focusCard(endpointId, buttonText) {
    const card = document.querySelector(`li[data-endpoint-id="${CSS.escape(endpointId)}"]`);
    const button = card && [...card.querySelectorAll("button")].find((b) => b.textContent === buttonText);
    if (button) button.focus();
  }

  async function addEndpoint(event) {
    event.preventDefault();
    showFieldError("add-error", "");
    const url = $("add-url").value.trim();
    const events = chosenEvents($("add-events"));
    if (!url) {
      showFieldError("add-error", "Enter the URL of your webhook receiver.");
      $("add-url").focus();
      return;
    }
    if (events.length === 0) {
      showFieldError("add-error", "Select at least one event, or All events.");
      return;
    }
    const body = { url, events, description: $("add-description").value.trim() };
    const created = await attempt(() => api("POST", "/v1/webhooks", body), (m) => showFieldError("add-error", m));
    if (created === undefined) return;
    $("add-form").reset();
    $("add-events").replaceChildren(eventsFieldset("add", ["*"]));
    await refreshEndpoints();
    say(`Endpoint ${created.url} added.`);
    showSecret(created, "Endpoint added: copy its signing secret");
  }

  function showSecret(endpoint, title) {
    const dialog = $("secret-dialog");
    $("secret-title").textContent = title;
    $("secret-endpoint").textContent = endpoint.url;
    $("secret-value").value = endpoint.secret;
    $("secret-copy-status").textContent = "";
    dialog.dataset.endpointId = endpoint.id;
    dialog.showModal();
    $("secret-copy").focus();
  }

  async function copySecret() {
    const input = $("secret-value");
    const status = $("secret-copy-status");
    try {
      await navigator.clipboard.writeText(input.value);
      status.textContent = "Copied to the clipboard.";
    } catch {
      input.focus();
      input.select();
      const copied = document.execCommand && document.execCommand("copy");
      status.textContent = copied
        ? "Copied to the clipboard."
        : "This browser did not allow copying: the secret is selected, press Ctrl+C (⌘C) to copy it.";
    }
  }

  // However the dialog closes (the button or Escape), the secret leaves the page: it is shown once.
  function secretClosed() {
    const dialog = $("secret-dialog");
    $("secret-value").value = "";
    if (dialog.dataset.endpointId) focusCard(dialog.dataset.endpointId, "Send test event");
  }

  async function sendTest(endpoint, result) {
    result.replaceChildren(h("p", { text: "Sending a webhook.test event…" }));
    const outcome = await attempt(
      () => api("POST", "/v1/webhooks/test", { webhook_id: endpoint.id }),
      (message) => result.replaceChildren(h("p", { class: "error" }, "Test event not sent: ", message)));
    if (outcome === undefined) return;
    const status = outcome.http_status === null ? "no HTTP response" : `HTTP ${outcome.http_status}`;
    const lines = [
      h("p", {},
        outcome.delivered ? badge("succeeded", "Delivered") : badge("failed", "Not delivered"),
        ` Test event: ${status} in ${fmtMs(outcome.response_time_ms)}.`),
    ];
    if (outcome.error_message) lines.push(h("p", { class: "error" }, `Error: ${outcome.error_message}`));
    lines.push(h("p", { class: "hint mono", text: `${outcome.event_id} · ${outcome.delivery_id}` }));
    result.replaceChildren(...lines);
    loadSuccessRate(endpoint);
  }

  function openEdit(endpoint) {
    const dialog = $("edit-dialog");
    dialog.dataset.endpointId = endpoint.id;
    $("edit-url").value = endpoint.url;
    $("edit-description").value = endpoint.description;
    $("edit-events").replaceChildren(eventsFieldset("edit", endpoint.events));
    $("edit-max-in-flight").value = endpoint.max_in_flight === null ? "" : String(endpoint.max_in_flight);
    $("edit-rate-limit").value = endpoint.rate_limit === null ? "" : String(endpoint.rate_limit);
    $("edit-fifo").checked = endpoint.ordering === "fifo";
    showFieldError("edit-error", "");
    dialog.showModal();
    $("edit-url").focus();
  }

  async function saveEdit(event) {
    event.preventDefault();
    const dialog = $("edit-dialog");
    const id = dialog.dataset.endpointId;
    const events = chosenEvents($("edit-events"));
    if (events.length === 0) {
      showFieldError("edit-error", "Select at least one event, or All events.");
      return;
    }
    const body = {
      url: $("edit-url").value.trim(), description: $("edit-description").value.trim(), events,
      max_in_flight: limitValue($("edit-max-in-flight")), rate_limit: limitValue($("edit-rate-limit")),
      ordering: $("edit-fifo").checked ? "fifo" : "none",
    };
    const saved = await attempt(() => api("PATCH", `/v1/webhooks/${encodeURIComponent(id)}`, body),
      (m) => showFieldError("edit-error", m));
    if (saved === undefined) return;
    dialog.close();
    await refreshEndpoints();
    say(`Saved ${saved.url}: ${eventsText(saved.events)}; max in flight ${maxInFlightText(saved).toLowerCase()}, `
      + `rate limit ${rateLimitText(saved).toLowerCase()}.`);
    focusCard(id, "Edit");
  }

  async function setEnabled(endpoint, enabled) {
    const saved = await attempt(() => api("PATCH", `/v1/webhooks/${encodeURIComponent(endpoint.id)}`, { enabled }));
    if (saved === undefined) return;
    await refreshEndpoints();
    say(`${saved.url} is now ${saved.enabled ? "enabled" : "disabled"}.`);
    focusCard(endpoint.id, saved.enabled ? "Disable" : "Enable");
  }

  function confirmAction(title, message, confirmText) {
    const dialog = $("confirm-dialog");
    $("confirm-title").textContent = title;
    $("confirm-message").textContent = message;
    $("confirm-ok").textContent = confirmText;
    dialog.returnValue = "";
    dialog.showModal();
    $("confirm-cancel").focus();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
    });
  }

  async function rotateSecret(endpoint) {
    const ok = await confirmAction("Rotate the signing secret?",
      `Deliveries to ${endpoint.url} are signed with a new secret from now on; the current one stops working at once. `
      + "Update your receiver right after.", "Rotate secret");
    if (!ok) {
      focusCard(endpoint.id, "Rotate secret");
      return;
    }
    const rotated = await attempt(
      () => api("POST", `/v1/webhooks/${encodeURIComponent(endpoint.id)}/rotate-secret`));
    if (rotated === undefined) return;
    say(`The secret of ${rotated.url} has been rotated.`);
    showSecret(rotated, "New signing secret");
  }

  async function deleteEndpoint(endpoint) {
    const ok = await confirmAction("Delete this endpoint?",
      `No more events will be sent to ${endpoint.url}. Its delivery logs are kept.`, "Delete endpoint");
    if (!ok) {
      focusCard(endpoint.id, "Delete");
      return;
    }
    const done = await attempt(() => api("DELETE", `/v1/webhooks/${encodeURIComponent(endpoint.id)}`));
    if (done === undefined) return;
    await refreshEndpoints();
    say(`Endpoint ${endpoint.url} deleted.`);
    $("endpoints-title").focus();
  }

  // Logs -------------------------------------------------------------------------------

  function openLogs(endpoint) {
    state.logs.endpoint = endpoint;
    state.logs.cursors = [null];
    state.logs.next = null;
    $("logs-endpoint").textContent = endpoint.url;
    $("logs-pacing").textContent = "Loading…";
    $("logs-rows").replaceChildren();
    show("logs");
    startAutoRefresh();
    loadLogs(true);
  }

  function startAutoRefresh() {
    window.clearInterval(state.logs.timer);
    state.logs.timer = $("auto-refresh").checked ? window.setInterval(() => loadLogs(false), AUTO_REFRESH_MS) : null;
  }

  async function loadLogs(announce) {
    const logs = state.logs;
    if (!logs.endpoint) return;
    if (logs.loading) {
      // A filter changed while a page was on its way: load again when it lands, with the new filters.
      logs.queued = logs.queued === true || announce;
      return;
    }
    logs.loading = true;
    const params = new URLSearchParams();
    for (const name of ["event_type", "outcome"]) {
      const value = $(`filter-${name.replace("_", "-")}`).value;
      if (value) params.set(name, value);
    }
    params.set("limit", $("filter-limit").value);
    const cursor = logs.cursors[logs.cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    const endpointId = logs.endpoint.id;
    loadPacing(endpointId);
    try {
      const page = await attempt(() => api("GET", `/v1/webhooks/${encodeURIComponent(endpointId)}/logs?${params}`),
        (message) => showAlert(`The logs could not be loaded: ${message}`, "logs"));
      if (page === undefined || state.view !== "logs" || logs.endpoint.id !== endpointId) return;
      clearAlertFrom("logs");
      logs.next = page.next_cursor;
      renderLogs(page.data);
      if (announce) {
        const n = page.data.length;
        say(`${n === 0 ? "No" : n} attempt${n === 1 ? "" : "s"} on page ${logs.cursors.length}.`);
      }
    } finally {
      logs.loading = false;
      const queued = logs.queued;
      logs.queued = null;
      if (queued !== null) loadLogs(queued);
    }
  }

  // The endpoint's live limits state, refreshed with its logs: other deliverers change it at any moment.
  async function loadPacing(endpointId) {
    const endpoint = await attempt(() => api("GET", `/v1/webhooks/${encodeURIComponent(endpointId)}`),
      (message) => { $("logs-pacing").textContent = `Could not be loaded: ${message}`; });
    if (endpoint === undefined || state.view !== "logs" || state.logs.endpoint.id !== endpointId) return;
    $("logs-pacing").textContent = pacingText(endpoint.pacing);
  }

  function pacingText(pacing) {
    const open = pacing.allowance === 0 && pacing.in_flight === 0
      ? "nothing sent yet"
      : `${pacing.in_flight} of ${pacing.allowance} requests open (the allowance grows with successes and `
        + "halves when the endpoint is overloaded)";
    return pacing.paused_until
      ? `${open}; paused until ${fmtTime(pacing.paused_until)}, as the endpoint asked with Retry-After`
      : open;
  }

  function attemptText(row) {
    return row.series > 1 ? `${row.attempt} (replay ${row.series - 1})` : String(row.attempt);
  }

  function renderLogs(rows) {
    const tbody = $("logs-rows");
    const focused = tbody.contains(document.activeElement) ? document.activeElement.dataset.focusKey : null;
    if (rows.length === 0) {
      tbody.replaceChildren(h("tr", {}, h("td", { colspan: 8, class: "empty", text: "No attempts match these filters yet." })));
    } else {
      tbody.replaceChildren(...rows.map(logRow));
    }
    const page = state.logs.cursors.length;
    $("logs-page").textContent = `Page ${page}`;
    $("logs-newer").disabled = page === 1;
    $("logs-older").disabled = !state.logs.next;
    if (focused) {
      const again = tbody.querySelector(`[data-focus-key="${CSS.escape(focused)}"]`);
      if (again) again.focus();
    }
  }

  function logRow(row) {
    const outcome = h("td", {}, badge(row.outcome, OUTCOME_TEXT[row.outcome] || row.outcome));
    if (row.kind !== "attempt_finished") outcome.append(" ", h("span", { class: "hint", text: KIND_LABELS[row.kind] }));
    const error = h("td", { class: "error-cell" }, row.error_message || "—");
    if (row.next_attempt_at) error.append(h("br"), h("span", { class: "hint", text: `Next try ${fmtTime(row.next_attempt_at)}` }));
    const label = `${row.event_type} attempt ${attemptText(row)} at ${fmtTime(row.timestamp)}`;
    return h("tr", { "data-delivery-id": row.delivery_id, "data-outcome": row.outcome },
      timeCell(row.timestamp),
      h("td", {}, h("code", { text: row.event_type })),
      h("td", { text: row.http_status === null ? "—" : String(row.http_status) }),
      h("td", { class: "num", text: fmtMs(row.response_time_ms) }),
      h("td", { text: attemptText(row) }),
      outcome,
      error,
      h("td", { class: "row-actions" },
        h("button", { type: "button", class: "quiet", "aria-label": `Details of ${label}`, "data-focus-key": `${row.id}:details`,
          onclick: () => openDelivery(row.delivery_id, "logs") }, "Details"),
        h("button", { type: "button", class: "quiet", "aria-label": `Replay ${label}`, "data-focus-key": `${row.id}:replay`,
          onclick: () => replayFromLogs(row) }, "Replay")));
  }

  async function replayFromLogs(row) {
    const replayed = await attempt(() => api("POST", `/v1/deliveries/${encodeURIComponent(row.delivery_id)}/replay`));
    if (replayed === undefined) return;
    say(`Replay requested: ${row.event_type} ${row.event_id} starts attempt series ${replayed.series}; `
      + "its attempts appear at the top as they happen.");
    state.logs.cursors = [null];
    await loadLogs(false);
  }

  // Delivery ---------------------------------------------------------------------------

  async function openDelivery(deliveryId, from) {
    state.delivery = { id: deliveryId, data: null, event: null, timer: null, from };
    $("delivery-title").textContent = `Delivery ${deliveryId}`;
    $("delivery-summary").replaceChildren();
    $("history-rows").replaceChildren();
    $("delivery-payload").textContent = "Loading…";
    show("delivery");
    await loadDelivery(false);
  }

  async function loadDelivery(announceChange) {
    const current = state.delivery;
    window.clearTimeout(current.timer);
    const data = await attempt(() => api("GET", `/v1/deliveries/${encodeURIComponent(current.id)}`),
      (message) => showAlert(`The delivery could not be loaded: ${message}`, "delivery"));
    if (data === undefined || state.view !== "delivery" || state.delivery !== current) return;
    clearAlertFrom("delivery");
    const before = current.data;
    current.data = data;
    renderDelivery(data);
    if (announceChange && before && (before.state !== data.state || before.series !== data.series)) {
      say(`The delivery is now ${STATE_TEXT[data.state].toLowerCase()} (series ${data.series}, attempt ${data.attempts}).`);
    }
    if (!current.event) {
      const event = await attempt(() => api("GET", `/v1/events/${encodeURIComponent(data.event_id)}`),
        (m) => { $("delivery-payload").textContent = `The payload could not be loaded: ${m}`; });
      if (event !== undefined && state.delivery === current) {
        current.event = event;
        $("delivery-payload").textContent = JSON.stringify({ event: event.type, data: event.data }, null, 2);
      }
    }
    if (OPEN_STATES.has(data.state) && state.view === "delivery" && state.delivery === current) {
      current.timer = window.setTimeout(() => loadDelivery(true), DELIVERY_POLL_MS);
    }
  }

  function renderDelivery(d) {
    const endpoint = state.endpoints.find((e) => e.id === d.endpoint_id);
    const items = [
      ["State", h("span", {}, badge(STATE_BADGE[d.state], STATE_TEXT[d.state] || d.state))],
      ["Event", h("span", {}, h("code", { text: d.event_type }), " ", h("span", { class: "mono", text: d.event_id }))],
      ["Endpoint", h("span", { class: "mono", text: endpoint ? endpoint.url : d.endpoint_id })],
      ["Attempt series", String(d.series)],
      ["Attempts in this series", String(d.attempts)],
      ["Event created", h("time", { datetime: d.event_created_at, text: fmtTime(d.event_created_at) })],
    ];
    if (d.next_attempt_at) items.push(["Next attempt", fmtTime(d.next_attempt_at)]);
    $("delivery-summary").replaceChildren(...items.flatMap(([term, value]) => [h("dt", { text: term }), h("dd", {}, value)]));
    const replay = $("delivery-replay");
    const open = OPEN_STATES.has(d.state);
    replay.disabled = open;
    $("delivery-replay-hint").textContent = open
      ? `Replay is possible once this delivery has been delivered or has failed; it is ${STATE_TEXT[d.state].toLowerCase()}.`
      : "Replay sends the same event (same event id) again as a new attempt series; earlier attempts stay in the history.";
    $("history-rows").replaceChildren(...d.history.map((entry) => h("tr", { "data-kind": entry.kind },
      timeCell(entry.recorded_at),
      h("td", { text: KIND_LABELS[entry.kind] || entry.kind }),
      h("td", { text: String(entry.series) }),
      h("td", { text: entry.attempt ? String(entry.attempt) : "—" }),
      h("td", {}, entry.outcome ? badge(entry.outcome, OUTCOME_TEXT[entry.outcome] || entry.outcome) : "—"),
      h("td", { text: entry.http_status === null ? "—" : String(entry.http_status) }),
      h("td", { class: "num", text: fmtMs(entry.response_time_ms) }),
      h("td", { class: "error-cell" }, entry.error_message || "—",
        entry.response_excerpt ? h("span", { class: "hint excerpt", text: ` Response: ${entry.response_excerpt}` }) : null),
      h("td", { class: "mono", text: entry.actor || entry.worker_id || "—" }))));
  }

  async function replayDelivery() {
    const current = state.delivery;
    const replayed = await attempt(() => api("POST", `/v1/deliveries/${encodeURIComponent(current.id)}/replay`));
    if (replayed === undefined || state.delivery !== current) return;
    current.data = replayed;
    renderDelivery(replayed);
    say(`Replay requested: attempt series ${replayed.series} has started and appears in the history as it happens.`);
    window.clearTimeout(current.timer);
    current.timer = window.setTimeout(() => loadDelivery(true), DELIVERY_POLL_MS);
  }

  function back(target) {
    if (target === "logs" && state.logs.endpoint) {
      const endpoint = state.endpoints.find((e) => e.id === state.logs.endpoint.id) || state.logs.endpoint;
      show("logs");
      state.logs.endpoint = endpoint;
      startAutoRefresh();
      loadLogs(false);
      return;
    }
    show("endpoints");
    refreshEndpoints();
  }

  // Wiring -----------------------------------------------------------------------------

  async function loadCatalog() {
    const doc = await attempt(() => api("GET", "/v1/openapi.json", undefined, null),
      (message) => showFieldError("signin-error", `The list of event types could not be loaded: ${message}`));
    if (doc === undefined) return false;
    for (const [type, hook] of Object.entries(doc.webhooks)) {
      EVENT_TYPES.push(type);
      EVENT_HINTS[type] = hook.post.summary;
    }
    for (const [type, hook] of Object.entries(doc["x-operator-webhooks"] || {})) {
      OPERATOR_TYPES.push(type);
      EVENT_HINTS[type] = hook.post.summary;
    }
    return true;
  }

  async function init() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => signOut());
    $("endpoints-refresh").addEventListener("click", async () => {
      if (await refreshEndpoints()) say("Endpoints refreshed.");
    });
    $("add-form").addEventListener("submit", addEndpoint);
    $("secret-copy").addEventListener("click", copySecret);
    $("secret-done").addEventListener("click", () => $("secret-dialog").close());
    $("secret-dialog").addEventListener("close", secretClosed);
    $("edit-form").addEventListener("submit", saveEdit);
    $("edit-cancel").addEventListener("click", () => $("edit-dialog").close());
    $("confirm-cancel").addEventListener("click", () => $("confirm-dialog").close("cancel"));
    $("confirm-ok").addEventListener("click", () => $("confirm-dialog").close("confirm"));

    $("logs-filters").addEventListener("submit", (event) => {
      event.preventDefault();
      loadLogs(true);
    });
    for (const id of ["filter-event-type", "filter-outcome", "filter-limit"]) {
      $(id).addEventListener("change", () => {
        state.logs.cursors = [null];
        loadLogs(true);
      });
    }
    $("auto-refresh").addEventListener("change", () => {
      startAutoRefresh();
      say($("auto-refresh").checked ? "The logs now refresh every 3 seconds." : "Automatic refresh is off.");
    });
    $("logs-older").addEventListener("click", () => {
      if (!state.logs.next) return;
      state.logs.cursors.push(state.logs.next);
      loadLogs(true);
    });
    $("logs-newer").addEventListener("click", () => {
      if (state.logs.cursors.length > 1) state.logs.cursors.pop();
      loadLogs(true);
    });
    $("delivery-replay").addEventListener("click", replayDelivery);
    $("delivery-refresh").addEventListener("click", () => loadDelivery(true));
    for (const button of document.querySelectorAll("[data-back]")) {
      button.addEventListener("click", () => back(button.dataset.back));
    }

    // The listeners above hear whatever is done while the catalog loads; nothing that lists the
    // event types is drawn before it has.
    if (!await loadCatalog()) {
      show("signin");
      return;
    }
    $("add-events").replaceChildren(eventsFieldset("add", ["*"]));
    const typeFilter = $("filter-event-type");
    for (const type of EVENT_TYPES) typeFilter.append(h("option", { value: type, text: type }));

    const key = sessionStorage.getItem(KEY_STORE);
    if (!key) {
      show("signin");
      return;
    }
    attempt(() => api("GET", "/v1/webhooks"), (message) => signOut(message)).then((list) => {
      if (list !== undefined) enterDashboard(list.data, list.operator);
    });
  }

  init();
})();
