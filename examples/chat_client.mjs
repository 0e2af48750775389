// Stream an answer from the service with fetch (Node 18+ or a browser module) and print it as it arrives.
//
//   node examples/chat_client.mjs "What do my documents say about X?" [http://127.0.0.1:8000]
//
// The network may split a line anywhere, so bytes are buffered until a full line is there. `data: [DONE]` ends
// the stream and is not JSON; lines starting with ":" are keep-alive pings.

export async function chat(url, question, onToken = (t) => process.stdout.write(t)) {
  const response = await fetch(`${url}/api/v1/chat`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: question }] }),
  });
  if (!response.ok) {
    const { error } = await response.json();
    throw new Error(`HTTP ${response.status} ${error.type}: ${error.message}`);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let answer = "";
  let sources = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return { answer, sources };
      const event = JSON.parse(data);
      if (event.error) throw new Error(`stream failed: ${event.error.message}`);
      if (event.sources) sources = event.sources;
      if (event.content) {
        answer += event.content;
        onToken(event.content);
      }
    }
  }
  throw new Error("the stream ended without [DONE]");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [question, url = "http://127.0.0.1:8000"] = process.argv.slice(2);
  const { sources } = await chat(url, question);
  console.log(`\n[sources: ${sources.map((s) => s.metadata.title ?? s.document_id).join(", ") || "none"}]`);
}
