// The seqrec console: calls the gateway's own JSON API (relative URLs, so it works behind a path prefix) with
// the API key typed into the page, kept in this tab's sessionStorage only. No external script, font or image.
"use strict";

const KEY_STORE = "seqrec.apiKey";
const QUERIES = ["user_to_item", "contextual", "sequential", "item_to_item"];
const $ = (id) => document.getElementById(id);
let lastHistory = [];

function element(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "className") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "muted";
}

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) headers["X-API-Key"] = key;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const error = payload && payload.error ? payload.error : {};
    const where = error.field ? ` (${error.field})` : "";
    throw new ApiError(`${response.status} ${error.code || ""}${where}: ${error.message || payload}`);
  }
  return payload;
}

function chips(meta) {
  return Object.entries(meta || {}).map(([k, v]) => element("span", { className: "chip" }, `${k}: ${v}`));
}

function itemLine(item, extra = []) {
  const name = item.display_name || item.item_id;
  return element("li", { "data-item": item.item_id }, ...extra, element("span", { className: "name" }, name), " ",
    element("span", { className: "id" }, item.item_id), element("br"), ...chips(item.meta));
}

function showHistory(items) {
  const list = $("history");
  list.replaceChildren(...items.map((item) => itemLine(item, [element("span", { className: "score" },
    new Date(item.timestamp_ms).toISOString().slice(0, 16).replace("T", " "))])));
  $("history-count").textContent = items.length ? `(${items.length} most recent)` : "(none stored)";
}

function showAnswer(query, answer, note) {
  const panel = document.querySelector(`.answer[data-query="${query}"]`);
  panel.querySelector(".note").replaceChildren(note || "");
  if (answer instanceof Error) {
    panel.querySelector("ol").replaceChildren(element("li", { className: "error" }, answer.message));
    return;
  }
  if (answer.fallback) {
    panel.querySelector(".note").append(" ", element("span", { className: "fallback" }, `fallback: ${answer.fallback}`));
  }
  panel.querySelector("ol").replaceChildren(...answer.items.map((item) => itemLine(item,
    [element("span", { className: "score" }, item.score.toFixed(4))])));
}

function commonFields() {
  const body = { top_k: Number($("top-k").value) || 10 };
  const filters = $("filters").value.trim();
  if (filters) body.filters = JSON.parse(filters);  // a SyntaxError is reported by the caller
  return body;
}

async function loadHistory(userId) {
  if (!userId) { lastHistory = []; showHistory([]); return; }
  const answer = await api(`v1/history?user_id=${encodeURIComponent(userId)}&limit=50`);
  lastHistory = answer.items;
  showHistory(answer.items);
}

async function recommend() {
  let common;
  try { common = commonFields(); } catch (error) { status(`filters: not valid JSON (${error.message})`, true); return; }
  const userId = $("user-id").value.trim();
  const session = $("session").value.split(",").map((s) => s.trim()).filter(Boolean);
  status("asking the ranker…");
  try { await loadHistory(userId); } catch (error) { status(error.message, true); return; }
  const recent = lastHistory.map((item) => item.item_id);
  const seed = $("item-id").value.trim() || session[session.length - 1] || recent[recent.length - 1] || "";
  const sequence = session.length ? session : recent.slice(-5);
  const plans = {
    user_to_item: userId ? [{ user_id: userId }, "from the stored history"] : [null, "needs a user"],
    contextual: userId && seed ? [{ user_id: userId, item_id: seed }, `history, then ${seed}`] : [null, "needs a user and an item"],
    sequential: sequence.length ? [{ session_items: sequence }, `session: ${sequence.join(", ")}`] : [null, "needs a session or a history"],
    item_to_item: seed ? [{ item_id: seed }, `more like ${seed}`] : [null, "needs an item"],
  };
  await Promise.all(QUERIES.map(async (query) => {
    const [fields, note] = plans[query];
    if (!fields) { showAnswer(query, { items: [] }, note); return; }
    try {
      showAnswer(query, await api("v1/recommend", { method: "POST", body: { query_type: query, ...common, ...fields } }), note);
    } catch (error) {
      showAnswer(query, error, note);
    }
  }));
  status(`answered at ${new Date().toLocaleTimeString()}`);
}

async function sendEvent() {
  const userId = $("user-id").value.trim();
  const itemId = $("event-item").value.trim();
  if (!userId || !itemId) { status("an event needs a user and an item", true); return; }
  try {
    await api("v1/events", { method: "POST", body: { events: [{ user_id: userId, item_id: itemId }] } });
  } catch (error) { status(error.message, true); return; }
  $("event-item").value = "";
  await recommend();
  status(`event ${userId} → ${itemId} stored; answers refreshed`);
}

function showModel(info) {
  $("model-version").textContent = `model ${info.bundle_version}`;
  const facts = [["version", info.bundle_version], ["items", info.num_items], ["users", info.num_users],
    ["hybrid (text)", info.hybrid ? `yes, ${info.text_model}` : "no"], ["filters on", (info.metadata_columns || []).join(", ") || "none"],
    ["runtime", info.runtime], ["default top_k", info.default_top_k]];
  $("model-facts").replaceChildren(...facts.flatMap(([k, v]) => [element("dt", {}, k), element("dd", {}, v)]));
  const metrics = Object.entries((info.metrics || {}).values || {}).sort();
  $("model-metrics").replaceChildren(...metrics.map(([k, v]) => element("tr", {}, element("td", {}, k),
    element("td", { className: "n" }, Number(v).toFixed(4)))));
  const users = info.example_user_ids || [];
  $("example-users").replaceChildren(...users.map((u) => element("option", { value: u })));
  $("user-picker").replaceChildren(element("option", { value: "" }, "example users…"),
    ...users.map((u) => element("option", { value: u }, u)));
}

async function connect() {
  try {
    showModel(await api("v1/model"));
    status("connected");
  } catch (error) {
    status(error.message.startsWith("401") ? "this gateway needs an API key: type it above" : error.message, true);
  }
}

async function showReport() {
  try {
    const frame = $("report");
    frame.srcdoc = await api("v1/model/report");
    frame.hidden = false;
  } catch (error) { status(error.message, true); }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    connect();
  });
  $("user-picker").addEventListener("change", () => {
    if ($("user-picker").value) { $("user-id").value = $("user-picker").value; recommend(); }
  });
  $("recommend").addEventListener("click", recommend);
  $("send-event").addEventListener("click", sendEvent);
  $("show-report").addEventListener("click", showReport);
  connect();
});
