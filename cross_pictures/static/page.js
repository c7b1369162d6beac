// The try-it page: send the chosen image to POST /infer and draw the top-k as bars.
"use strict";

(() => {
  const form = document.getElementById("form");
  const input = document.getElementById("image");
  const topK = document.getElementById("top_k");
  const drop = document.getElementById("drop");
  const figure = document.getElementById("figure");
  const preview = document.getElementById("preview");
  const caption = document.getElementById("caption");
  const result = document.getElementById("result");
  const button = document.getElementById("classify");
  const curl = document.getElementById("curl");

  // A headline per status; the server's `detail` says exactly what was wrong.
  const TITLES = {
    400: "This image cannot be read.",
    413: "The image is too large.",
    415: "That file is not an image this service can read.",
    422: "The request was not understood.",
    503: "The service is busy or starting up. Try again in a moment.",
    504: "The model took too long. Try again in a moment.",
  };

  let previewUrl = null;
  let pending = null; // the AbortController of the request in flight

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function percent(confidence) {
    const value = confidence * 100;
    return value > 0 && value < 0.1 ? "<0.1%" : `${value.toFixed(1)}%`;
  }

  function showPreview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.alt = `Preview of ${file.name}`;
    preview.src = previewUrl;
    caption.textContent = file.name;
    figure.hidden = false;
  }

  // Browsers cannot draw every format the server reads (HEIC, TIFF), nor a non-image.
  preview.addEventListener("error", () => {
    figure.hidden = true;
  });

  function showStatus(text) {
    result.replaceChildren(element("p", "status", text));
  }

  function showError(title, detail, requestId) {
    const box = element("div", "error");
    box.id = "error";
    box.append(element("p", "error-title", title));
    if (detail) box.append(element("p", "error-detail", detail));
    if (requestId) box.append(element("p", "meta", `Reference: ${requestId}`));
    result.replaceChildren(box);
  }

  function showPredictions(data, name) {
    const list = element("ol", "bars");
    list.id = "predictions";
    for (const { label, confidence } of data.predictions) {
      const item = element("li");
      const text = element("div", "bar-text");
      text.append(element("span", "bar-label", label), element("span", "bar-pct", percent(confidence)));
      const track = element("div", "track");
      const fill = element("div", "fill");
      fill.style.width = `${Math.min(100, Math.max(0, confidence * 100))}%`;
      track.append(fill);
      track.setAttribute("aria-hidden", "true");
      item.append(text, track);
      list.append(item);
    }
    const meta = element("p", "meta", `Model time: ${data.inference_time_ms.toFixed(1)} ms`);
    meta.id = "model-time";
    result.replaceChildren(element("h2", "", `Top ${data.predictions.length} for ${name}`), list, meta);
  }

  function setBusy(busy) {
    result.setAttribute("aria-busy", String(busy));
    button.disabled = busy;
  }

  async function classify() {
    const file = input.files && input.files[0];
    if (!file) {
      showError("No image chosen.", "Choose an image file first, or drop one on the box.");
      return;
    }
    if (pending) pending.abort();
    const controller = new AbortController();
    pending = controller;
    const body = new FormData();
    body.append("image", file, file.name);
    setBusy(true);
    showStatus(`Classifying ${file.name}…`);
    try {
      const response = await fetch(`infer?top_k=${encodeURIComponent(topK.value)}`, {
        method: "POST",
        body,
        headers: { Accept: "application/json" },
        signal: controller.signal,
      });
      const data = await response.json().catch(() => null);
      if (controller !== pending) return;
      if (response.ok && data && Array.isArray(data.predictions)) {
        showPredictions(data, file.name);
      } else {
        const title = TITLES[response.status] || `The server answered ${response.status}.`;
        const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
        showError(title, detail, data && data.request_id);
      }
    } catch (error) {
      if (controller !== pending) return; // replaced by a newer request
      showError("Could not reach the server.", String(error && error.message ? error.message : error));
    } finally {
      if (controller === pending) {
        pending = null;
        setBusy(false);
      }
    }
  }

  function choose(file) {
    showPreview(file);
    classify();
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    classify();
  });

  input.addEventListener("change", () => {
    if (input.files && input.files[0]) choose(input.files[0]);
  });

  topK.addEventListener("change", () => {
    if (input.files && input.files[0]) classify();
  });

  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files; // so "Classify" and the form see the dropped file
    choose(files[0]);
  });
  curl.textContent = `curl -F image=@photo.jpg ${new URL("infer", location.href)}`;

  // A file dropped beside the box would otherwise replace the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
})();
