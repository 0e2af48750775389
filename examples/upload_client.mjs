// Upload files to the service and follow the ingestion job until it ends (browser, or Node 20+ for the CLI below).
//   node examples/upload_client.mjs http://127.0.0.1:8000 report.pdf minutes.docx
// `files` are File objects: from an <input type="file" multiple> in a page (`input.files`).

export async function upload(url, files, onProgress = () => {}) {
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const response = await fetch(`${url}/api/v1/documents/upload`, { method: "POST", body: form });
  if (response.status !== 202) {
    const { error } = await response.json();
    throw new Error(`HTTP ${response.status} ${error.type}: ${error.message}`);
  }
  let job = await response.json();
  // fetch rather than EventSource: EventSource cannot send an API key header.
  const events = await fetch(`${url}/api/v1/jobs/${job.id}/events`);
  const reader = events.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return job;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue; // pings and separators
      const data = line.slice(5).trim();
      if (data === "[DONE]") return job; // not JSON
      job = JSON.parse(data);
      onProgress(job); // job.files[n].chunks_done / chunks_total per file, job.errors
    }
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { readFile } = await import("node:fs/promises");
  const { basename } = await import("node:path");
  const [url, ...paths] = process.argv.slice(2);
  const files = await Promise.all(paths.map(async (path) => new File([await readFile(path)], basename(path))));
  const job = await upload(url, files, (j) => console.error(`${j.state}: ${j.chunks_done}/${j.chunks_total ?? "?"} chunks`));
  for (const file of job.files) console.log(`${file.name}: ${file.state}, ${file.chunks_done} chunks`);
  for (const error of job.errors) console.log(`${error.file} failed: ${error.message}`);
  process.exitCode = job.errors.length ? 1 : 0;
}
