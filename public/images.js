// images: the buttons on every image of the chat (loaded by public/atelier.js).
//
// The server sends each image's buttons as Chainlit actions of its message, with ids
// "atl-<word>-<image id>-<tail>" (chat_app/image_buttons.py); images.css hides Chainlit's
// row of them. Here each image (found by its name, "<id>.png") gets the same buttons laid
// over it, and a click presses Chainlit's own hidden button: Chainlit posts the action,
// and the server checks the image is the user's and runs the same tool as a typed
// command. Nothing here talks to the server itself, except the download link, which is
// the image's own (owner-checked) /media address. Details are the details button's label.
(function () {
  "use strict";

  const IMAGE_NAME =
    /^(?:before-|keyframe-)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.([a-z0-9]+)$/;
  const BAR = ["vary", "edit", "bigger", "animate"]; // along the bottom, in this order
  const SVG = "http://www.w3.org/2000/svg";

  // Chainlit's hidden buttons on the page: image id -> {word -> button} (the first of each).
  function hiddenButtons() {
    const found = new Map();
    for (const button of document.querySelectorAll('button[id^="atl-"]')) {
      const parts = /^atl-([a-z]+)-(.{36})-/.exec(button.id);
      if (!parts) continue;
      const [, word, imageId] = parts;
      if (!found.has(imageId)) found.set(imageId, {});
      const mine = found.get(imageId);
      if (!(word in mine)) mine[word] = button;
    }
    return found;
  }

  // A Lucide-style line icon from its path data; other scripts (gallery-link.js, loaded
  // after this one) draw theirs with it too, as `window.atelierIcon`.
  function icon(paths) {
    const svg = document.createElementNS(SVG, "svg");
    for (const [name, value] of Object.entries({
      viewBox: "0 0 24 24",
      fill: "none",
      stroke: "currentColor",
      "stroke-width": "2",
      "stroke-linecap": "round",
      "stroke-linejoin": "round",
      "aria-hidden": "true",
    })) {
      svg.setAttribute(name, value);
    }
    for (const d of paths) {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    }
    return svg;
  }
  window.atelierIcon = icon;

  // Lucide's "download" and "x", drawn here: no server button stands behind these two.
  const DOWNLOAD = ["M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4", "M7 10l5 5 5-5", "M12 15V3"];
  const CLOSE = ["M18 6 6 18", "M6 6l12 12"];

  function labelOf(button) {
    return (button.textContent || "").trim();
  }

  // A button on the image that presses Chainlit's hidden one for `word`.
  function proxy(tile, word, extraClass) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "atl-btn " + extraClass;
    button.dataset.word = word;
    const label = document.createElement("span");
    label.className = "atl-label";
    button.appendChild(label);
    button.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      const target = tile.buttons && tile.buttons[word];
      if (!target || target.disabled) return;
      target.click();
      const close = tile.root.closest('[role="dialog"]');
      if (close) close.querySelector('button[aria-label="Close lightbox"]')?.click();
    });
    return button;
  }

  function setIcon(button, source) {
    const current = button.querySelector("svg");
    const svg = source ? source.querySelector("svg") : null;
    if (!svg || (current && current.dataset.from === svg.outerHTML)) return;
    const copy = svg.cloneNode(true);
    copy.dataset.from = svg.outerHTML;
    copy.removeAttribute("class");
    if (current) current.replaceWith(copy);
    else button.prepend(copy);
  }

  function build(frame, img, imageId, extension) {
    const root = document.createElement("div");
    root.className = "atl-tile";
    root.dataset.image = imageId;
    const tile = { root, imageId, buttons: {} };

    const top = document.createElement("div");
    top.className = "atl-top";
    const keep = proxy(tile, "keep", "atl-keep");
    const info = document.createElement("button");
    info.type = "button";
    info.className = "atl-btn atl-info";
    info.setAttribute("aria-label", "Details");
    info.title = "Details: prompt, seed, model, cost";
    info.setAttribute("aria-expanded", "false");
    const download = document.createElement("a");
    download.className = "atl-btn atl-download";
    download.setAttribute("aria-label", "Download");
    download.title = "Download the original (with its parameters)";
    download.appendChild(icon(DOWNLOAD));
    download.addEventListener("click", (event) => event.stopPropagation());
    top.append(keep, info, download);

    const bar = document.createElement("div");
    bar.className = "atl-bar";
    for (const word of BAR) bar.appendChild(proxy(tile, word, "atl-" + word));

    const details = document.createElement("div");
    details.className = "atl-details";
    details.hidden = true;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "atl-close";
    close.setAttribute("aria-label", "Close details");
    close.appendChild(icon(CLOSE));
    const list = document.createElement("dl");
    details.append(close, list);
    details.addEventListener("click", (event) => event.stopPropagation());

    const toggle = (open) => {
      details.hidden = !open;
      root.classList.toggle("atl-open", open);
      info.setAttribute("aria-expanded", String(open));
    };
    info.addEventListener("click", (event) => {
      event.stopPropagation();
      toggle(details.hidden);
    });
    close.addEventListener("click", () => toggle(false));
    root.addEventListener("keydown", (event) => {
      if (event.key === "Escape") toggle(false);
    });

    root.append(top, bar, details);
    frame.appendChild(root);
    tile.keep = keep;
    tile.info = info;
    tile.download = download;
    tile.bar = bar;
    tile.list = list;
    tile.extension = extension;
    root.atlTile = tile;
    return tile;
  }

  function showDetails(tile, text) {
    if (tile.detailsText === text) return;
    tile.detailsText = text;
    const rows = [];
    for (const line of text.split("\n")) {
      const at = line.indexOf(": ");
      if (at < 1) continue;
      const term = document.createElement("dt");
      term.textContent = line.slice(0, at);
      const value = document.createElement("dd");
      value.textContent = line.slice(at + 2);
      rows.push(term, value);
    }
    tile.list.replaceChildren(...rows);
  }

  function update(tile, img, buttons) {
    tile.buttons = buttons;
    const disabled = (word) => !buttons[word] || buttons[word].disabled;
    for (const button of tile.bar.querySelectorAll(".atl-btn")) {
      const source = buttons[button.dataset.word];
      button.hidden = !source;
      if (!source) continue;
      const label = labelOf(source);
      if (button.querySelector(".atl-label").textContent !== label) {
        button.querySelector(".atl-label").textContent = label;
        button.setAttribute("aria-label", label);
        button.title = label;
      }
      if (button.disabled !== disabled(button.dataset.word)) {
        button.disabled = disabled(button.dataset.word);
      }
      setIcon(button, source);
    }
    const kept = Boolean(buttons.kept);
    const keep = tile.keep;
    keep.dataset.word = kept ? "kept" : "keep";
    keep.hidden = !kept && !buttons.keep;
    keep.classList.toggle("atl-kept", kept);
    keep.setAttribute("aria-pressed", String(kept));
    const keepLabel = kept ? "Kept" : "Keep";
    if (keep.getAttribute("aria-label") !== keepLabel) {
      keep.setAttribute("aria-label", keepLabel);
      keep.title = kept ? "Kept (starred)" : "Keep: star this image";
    }
    const keepOff = kept || disabled("keep");
    if (keep.disabled !== keepOff) keep.disabled = keepOff;
    tile.root.classList.toggle("atl-has-kept", kept);
    setIcon(keep, buttons.kept || buttons.keep);

    tile.info.hidden = !buttons.details;
    setIcon(tile.info, buttons.details);
    if (buttons.details) showDetails(tile, labelOf(buttons.details));

    // The original file, by the address that asks for the login (a signed link expires).
    const path = new URL(img.currentSrc || img.src, location.href).pathname;
    if (tile.download.getAttribute("href") !== path) tile.download.setAttribute("href", path);
    const name = `atelier-${tile.imageId.slice(0, 8)}.${tile.extension}`;
    if (tile.download.getAttribute("download") !== name) {
      tile.download.setAttribute("download", name);
    }
  }

  function decorate() {
    const buttons = hiddenButtons();
    for (const img of document.querySelectorAll("img[alt]")) {
      const name = IMAGE_NAME.exec(img.getAttribute("alt") || "");
      const src = img.getAttribute("src") || "";
      if (!name || !src.startsWith("/media/")) continue;
      const frame = img.parentElement;
      if (!frame) continue;
      let root = frame.querySelector(":scope > .atl-tile");
      if (root && root.dataset.image !== name[1]) {
        root.remove();
        root = null;
      }
      const tile = root ? root.atlTile : build(frame, img, name[1], name[2]);
      update(tile, img, buttons.get(name[1]) || {});
    }
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      decorate();
    });
  }

  function start() {
    new MutationObserver(schedule).observe(document.body, {
      childList: true,
      subtree: true,
      attributes: true,
      attributeFilter: ["disabled", "src", "alt"],
    });
    schedule();
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
