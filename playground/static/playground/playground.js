// The chat page: send a prompt, read the server-sent events of the answer(s) as they stream in.
// Plain JS, no dependencies. Every piece of text goes into the page through textContent, never
// as HTML, so nothing a user or a model writes can become markup.
(function () {
  "use strict";

  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }

  const root = document.getElementById("pg-session");
  if (!root) return;
  const form = document.getElementById("pg-prompt");
  const textarea = form.querySelector("textarea[name=content]");
  const sendButton = document.getElementById("pg-send");
  const stopButton = document.getElementById("pg-stop");
  const promptError = document.getElementById("pg-prompt-error");
  const csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  let controller = null;

  function column(side) {
    return root.querySelector(`.pg-column[data-side="${side}"] .pg-messages`);
  }

  function bubble(side, role, text) {
    const div = document.createElement("div");
    div.className = `pg-msg pg-${role}`;
    const body = document.createElement("div");
    body.className = "pg-body";
    body.textContent = text;
    div.appendChild(body);
    column(side).appendChild(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function addLine(parent, className, text) {
    const div = document.createElement("div");
    div.className = className;
    div.textContent = text;
    parent.appendChild(div);
    return div;
  }

  function showError(parent, data) {
    const box = addLine(parent, "pg-error", "");
    const code = document.createElement("code");
    code.textContent = data.code || "error";
    box.appendChild(code);
    box.appendChild(document.createTextNode(` ${data.message || ""}`));
    if (data.suggestion) addLine(box, "pg-hint", data.suggestion);
    box.setAttribute("role", "alert");
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
    textarea.disabled = busy;
  }

  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    return { name, data: data.length ? JSON.parse(data.join("\n")) : {} };
  }

  async function send(text) {
    promptError.hidden = true;
    const sides = Array.from(root.querySelectorAll(".pg-column")).map((c) => c.dataset.side);
    const answers = {};
    for (const side of sides) {
      bubble(side, "user", text);
      answers[side] = bubble(side, "assistant", "");
      answers[side].classList.add("pg-streaming");
    }
    controller = new AbortController();
    setBusy(true);
    try {
      const response = await fetch(root.dataset.sendUrl, {
        method: "POST",
        headers: { "X-CSRFToken": csrfToken, "Content-Type": "application/x-www-form-urlencoded" },
        body: new URLSearchParams({ content: text }),
        credentials: "same-origin",
        signal: controller.signal,
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        let error = { code: `http_${response.status}`, message: response.statusText };
        if (type.startsWith("application/json")) error = (await response.json()).error || error;
        else if (response.redirected) error = { code: "login_required", message: "Log in again, then resend." };
        for (const side of sides) answers[side].remove();
        for (const side of sides) column(side).lastElementChild.remove();
        promptError.hidden = false;
        promptError.textContent = "";
        showError(promptError, error);
        textarea.value = text;
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          const answer = answers[event.data.side];
          if (event.name === "turn" && event.data.title) {
            document.getElementById("pg-title").textContent = event.data.title;
          } else if (event.name === "token" && answer) {
            answer.querySelector(".pg-body").textContent += event.data.text;
          } else if (event.name === "done" && answer) {
            answer.classList.remove("pg-streaming");
            const tokens = event.data.usage && event.data.usage.completion_tokens;
            const meta = [event.data.model, event.data.finish_reason].filter(Boolean).join(" · ");
            addLine(answer, "pg-meta", tokens ? `${meta} · ${event.data.usage.prompt_tokens}+${tokens} tokens` : meta);
          } else if (event.name === "error" && answer) {
            answer.classList.remove("pg-streaming");
            showError(answer, event.data);
          }
        }
      }
    } catch (err) {
      for (const side of sides) {
        if (answers[side].classList.contains("pg-streaming")) {
          answers[side].classList.remove("pg-streaming");
          const why = err.name === "AbortError" ? "interrupted" : `connection lost: ${err.message}`;
          addLine(answers[side], "pg-meta", why);
        }
      }
    } finally {
      controller = null;
      setBusy(false);
      textarea.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textarea.value;
    if (!text.trim() || controller) return;
    textarea.value = "";
    send(text);
  });
  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stopButton.addEventListener("click", () => {
    if (controller) controller.abort();
  });
})();
