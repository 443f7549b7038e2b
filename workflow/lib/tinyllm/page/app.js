// The page of `tinyllm serve`: streams a completion from /v1/completions and shows it as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
let controller = null;

function headers() {
  const key = sessionStorage.getItem("tinyllm-api-key");
  const h = { "Content-Type": "application/json" };
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

async function errorText(response) {
  if (response.status === 401) $("key-label").hidden = false;
  try {
    return (await response.json()).error.message;
  } catch {
    return response.status + " " + response.statusText;
  }
}

async function showModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    $("model").textContent = await errorText(response);
    return;
  }
  const m = (await response.json()).data[0];
  $("model").textContent = `${m.id}: ${(m.parameters / 1e6).toFixed(1)}M parameters, ` +
    `context ${m.max_seq_len} tokens, ${m.weights} weights`;
}

function knobs() {
  const topK = $("top-k").value.trim();
  return {
    prompt: $("prompt").value,
    temperature: Number($("temperature").value),
    top_k: topK === "" ? null : Number(topK),
    max_tokens: Number($("max-tokens").value),
    stream: true,
  };
}

// Server-sent events: "data: {json}" blocks separated by a blank line, "data: [DONE]" at the end.
function* events(buffer) {
  let end;
  while ((end = buffer.text.indexOf("\n\n")) >= 0) {
    const block = buffer.text.slice(0, end);
    buffer.text = buffer.text.slice(end + 2);
    for (const line of block.split("\n")) {
      if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

async function write(event) {
  event.preventDefault();
  const body = knobs();
  const story = $("story");
  story.replaceChildren(Object.assign(document.createElement("span"), { className: "prompt", textContent: body.prompt }));
  const written = story.appendChild(document.createElement("span"));
  written.id = "written";
  controller = new AbortController();
  $("write").disabled = true;
  $("stop").disabled = false;
  const start = performance.now();
  let tokens = 0, first = null, finish = null;
  const rate = () => (tokens / ((performance.now() - (first ?? start)) / 1000 || 1)).toFixed(1);
  setStatus("writing", "waiting for the model…");
  try {
    const response = await fetch("/v1/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const buffer = { text: "" };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer.text += decoder.decode(value, { stream: true });
      for (const data of events(buffer)) {
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const choice = chunk.choices[0];
        first ??= performance.now();
        if (!(choice.finish_reason && choice.text === "")) tokens += 1; // a bare end carries no token
        written.textContent += choice.text;
        if (choice.finish_reason) finish = choice.finish_reason;
        setStatus("writing", `writing… ${tokens} tokens, ${rate()} tokens/s`);
      }
    }
    const why = finish === "stop" ? "the story ended" : "reached the length";
    $("status").dataset.finish = finish;
    setStatus("done", `${why}: ${tokens} tokens, ${rate()} tokens/s, first token after ` +
      `${((first - start) / 1000).toFixed(2)} s`);
  } catch (err) {
    if (err.name === "AbortError") setStatus("done", `stopped: ${tokens} tokens, ${rate()} tokens/s`);
    else setStatus("error", String(err.message || err));
  } finally {
    $("write").disabled = false;
    $("stop").disabled = true;
  }
}

$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
});
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("tinyllm-api-key", $("api-key").value);
  showModel();
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("form").addEventListener("submit", write);
showModel();
