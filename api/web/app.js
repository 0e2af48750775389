// The web chat page: plain ES module, no build step, no network beyond this service.
// Every text from the server is set with textContent, never innerHTML: documents and answers are untrusted.

const $ = (selector) => document.querySelector(selector);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

// A site that embeds the page can hand it a user token in the address: https://rag.example.com/#token=eyJ...
// It is kept like a pasted key and removed from the address bar (and so from the history).
const handedToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (handedToken) {
  localStorage.setItem("rag.apiKey", handedToken);
  history.replaceState(null, "", location.pathname + location.search);
}

// The claims of a user token (JWT), or null for an API key. Read, never verified: the server verifies.
function tokenClaims(credential) {
  const parts = (credential ?? "").split(".");
  if (parts.length !== 3 || !parts[0].startsWith("eyJ")) return null;
  try {
    return JSON.parse(atob(parts[1].replace(/-/g, "+").replace(/_/g, "/")));
  } catch {
    return null;
  }
}

const store = {
  get userId() {
    // With a user token the page acts as the token's user: the server refuses any other userId.
    const claims = tokenClaims(localStorage.getItem("rag.apiKey"));
    if (claims?.sub) return claims.sub;
    let id = localStorage.getItem("rag.userId");
    if (!id) {
      id = `web-${crypto.randomUUID()}`;
      localStorage.setItem("rag.userId", id);
    }
    return id;
  },
  get chatId() { return localStorage.getItem("rag.chatId"); },
  set chatId(id) { localStorage.setItem("rag.chatId", id); },
};

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

// fetch that sends the API key when one is stored, asks for one when the service answers 401, and turns every
// failure into one readable message.
async function request(path, options = {}, retried = false) {
  const headers = new Headers(options.headers ?? {});
  const key = localStorage.getItem("rag.apiKey");
  if (key) headers.set("X-API-Key", key);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "Cannot reach the server. Is it running?");
  }
  if (response.status === 401 && !retried) {
    // Several requests can fail at once: ask only if nobody has entered a new key since this one was sent.
    const current = localStorage.getItem("rag.apiKey");
    const entered = current && current !== key ? current : window.prompt("This service needs an API key or a user token:");
    if (entered) {
      localStorage.setItem("rag.apiKey", entered.trim());
      return request(path, options, true);
    }
  }
  if (!response.ok) {
    let type = "http_error";
    let message = `The server answered ${response.status}.`;
    try {
      const body = await response.json();
      type = body.error?.type ?? type;
      message = body.error?.message ?? message;
    } catch { /* not JSON: keep the generic message */ }
    throw new ApiError(response.status, type, message);
  }
  return response;
}

const getJSON = async (path, options) => (await request(path, options)).json();
const postJSON = (path, body, options = {}) =>
  request(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), ...options });

// Reads the service's SSE stream: JSON objects on `data:` lines, `data: [DONE]` at the end. Lines can be split
// across network chunks, so text is buffered until a whole line is there.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return true;
      onEvent(JSON.parse(data));
    }
  }
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// --- rendering -----------------------------------------------------------------------------------

function sourceItem(source) {
  const item = el("li");
  const details = el("details");
  const summary = el("summary");
  const title = source.metadata?.title ?? source.metadata?.source ?? source.document_id;
  summary.append(el("span", "", `${title} `), el("span", "score", `score ${source.score.toFixed(3)}`));
  details.append(summary, el("div", "snippet", source.text));
  if (source.metadata && Object.keys(source.metadata).length) {
    details.append(el("pre", "metadata", JSON.stringify(source.metadata, null, 2)));
  }
  item.append(details);
  return item;
}

function addMessage(role, text = "") {
  const item = el("li", `message ${role}`);
  const body = el("div", "text", text);
  item.append(body);
  $("#messages").append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function assistantMessage() {
  const item = addMessage("assistant");
  item.dataset.state = "streaming";
  const reasoning = el("details", "reasoning");
  reasoning.append(el("summary", "", "Reasoning"), el("div", "body"));
  reasoning.hidden = true;
  const sources = el("details", "sources");
  sources.append(el("summary"), el("ol"));
  sources.hidden = true;
  item.prepend(reasoning);
  item.append(sources);
  return {
    item,
    appendText(text) { item.querySelector(".text").textContent += text; },
    appendReasoning(text) { reasoning.hidden = false; reasoning.querySelector(".body").textContent += text; },
    setSources(list) {
      sources.hidden = list.length === 0;
      sources.querySelector("summary").textContent = `Sources (${list.length})`;
      sources.querySelector("ol").replaceChildren(...list.map(sourceItem));
    },
    finish(state, note) {
      item.dataset.state = state;
      if (note) item.append(el("div", state === "failed" ? "failure" : "meta", note));
    },
  };
}

// --- chats -----------------------------------------------------------------------------------------

async function loadChats() {
  try {
    const { chats } = await getJSON(`api/v1/chats?userId=${encodeURIComponent(store.userId)}`);
    $("#chat-list").replaceChildren(...chats.map((chat) => {
      const item = el("li");
      const button = el("button", "", chat.title || "Untitled chat");
      button.setAttribute("aria-current", String(chat.chatId === store.chatId));
      button.addEventListener("click", () => openChat(chat.chatId));
      item.append(button);
      return item;
    }));
  } catch (err) {
    showError(err.message);
  }
}

async function openChat(chatId) {
  store.chatId = chatId;
  $("#messages").replaceChildren();
  try {
    const chat = await getJSON(`api/v1/chats/${encodeURIComponent(chatId)}?userId=${encodeURIComponent(store.userId)}`);
    for (const message of chat.messages) addMessage(message.role, message.content);
  } catch (err) {
    if (err.status !== 404) showError(err.message); // 404: a new chat with nothing stored yet
  }
  loadChats();
}

function newChat() {
  store.chatId = crypto.randomUUID();
  $("#messages").replaceChildren();
  showError("");
  loadChats();
}

// --- asking ----------------------------------------------------------------------------------------

let controller = null;

async function ask(question) {
  showError("");
  addMessage("user", question);
  const answer = assistantMessage();
  controller = new AbortController();
  $("#send").disabled = true;
  $("#stop").disabled = false;
  try {
    const response = await postJSON(
      "api/v1/chat",
      { messages: [{ role: "user", content: question }], stream: true, userId: store.userId, chatId: store.chatId },
      { signal: controller.signal },
    );
    let failure = null;
    const complete = await readEvents(response, (event) => {
      if (event.sources) answer.setSources(event.sources);
      if (event.reasoning) answer.appendReasoning(event.reasoning);
      if (event.error) failure = event.error.message;
      if (event.content) answer.appendText(event.content);
      answer.item.scrollIntoView({ block: "end" });
    });
    if (failure) answer.finish("failed", `The answer failed: ${failure}`);
    else if (!complete) answer.finish("failed", "The connection closed before the answer was complete.");
    else answer.finish("done");
  } catch (err) {
    if (err.name === "AbortError") answer.finish("stopped", "Stopped.");
    else {
      answer.finish("failed", err.message);
      showError(err.message);
    }
  } finally {
    controller = null;
    $("#send").disabled = false;
    $("#stop").disabled = true;
    loadChats();
  }
}

// --- documents -------------------------------------------------------------------------------------

async function addDocuments(documents, metadatas) {
  const result = $("#add-result");
  result.textContent = "Adding…";
  try {
    const body = await (await postJSON("api/v1/documents/add", { documents, metadatas })).json();
    const chunks = body.documents.reduce((sum, doc) => sum + doc.chunks, 0);
    result.textContent = `Added ${body.documents.length} document(s), ${chunks} chunk(s).`;
    refreshStatus();
    return true;
  } catch (err) {
    result.textContent = `Could not add: ${err.message}`;
    return false;
  }
}

async function search(query) {
  const list = $("#search-results");
  list.replaceChildren(el("li", "note", "Searching…"));
  try {
    const { results } = await getJSON(`api/v1/documents/search?query=${encodeURIComponent(query)}&top_k=5`);
    list.replaceChildren(...(results.length ? results.map(sourceItem) : [el("li", "note", "No matching passages.")]));
  } catch (err) {
    list.replaceChildren(el("li", "failure", err.message));
  }
}

async function refreshStatus() {
  const status = $("#status");
  try {
    const health = await getJSON("api/v1/health");
    status.textContent = `${health.llm.provider} · ${health.llm.model} · ${health.store.documents} documents`;
    status.classList.remove("down");
  } catch (err) {
    status.textContent = err.message;
    status.classList.add("down");
  }
}

// --- wiring ----------------------------------------------------------------------------------------

$("#ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const question = $("#question").value.trim();
  if (!question || controller) return;
  $("#question").value = "";
  ask(question);
});
$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#ask").requestSubmit();
  }
});
$("#stop").addEventListener("click", () => controller?.abort());
$("#new-chat").addEventListener("click", newChat);
$("#toggle-docs").addEventListener("click", () => {
  const open = $("#docs").classList.toggle("open");
  $("#toggle-docs").setAttribute("aria-expanded", String(open));
});
$("#add-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("#doc-text").value.trim();
  if (!text) return;
  const title = $("#doc-title").value.trim();
  if (await addDocuments([text], [title ? { title } : {}])) {
    $("#doc-text").value = "";
    $("#doc-title").value = "";
  }
});
$("#doc-files").addEventListener("change", async (event) => {
  const files = [...event.target.files];
  if (!files.length) return;
  const texts = await Promise.all(files.map((file) => file.text()));
  await addDocuments(texts, files.map((file) => ({ title: file.name, source: file.name })));
  event.target.value = "";
});
$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search($("#search-query").value.trim());
});

refreshStatus();
if (store.chatId) openChat(store.chatId);
else newChat();
