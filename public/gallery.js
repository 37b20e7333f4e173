// The gallery page (/gallery): every image and clip of the signed-in user.
//
// Plain script, no build step, no inline code (the Content-Security-Policy allows the
// app's own files only). Everything it shows comes from the JSON API of
// chat_app/gallery_routes.py; it never builds HTML from data (textContent only), so a
// prompt cannot inject markup. The page's state lives in its URL (search, filters, the
// open image: ?image=ID), so any view can be linked, reloaded or gone back to.
(function () {
  "use strict";

  // ---------------------------------------------------------------- theme, before paint

  // The chat (Chainlit) keeps its theme in localStorage under this key, on the same
  // origin: the gallery follows it, and its switch changes the chat's too.
  const THEME_KEY = "vite-ui-theme";
  // Until the person picks one, Chainlit shows its configured default_theme, "dark"
  // unless .chainlit/config.toml says otherwise (it does not).
  const DEFAULT_THEME = "dark";

  function storedTheme() {
    try {
      return localStorage.getItem(THEME_KEY) || DEFAULT_THEME;
    } catch (_) {
      return DEFAULT_THEME;
    }
  }

  function effectiveTheme(theme) {
    if (theme === "dark" || theme === "light") return theme;
    return window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }

  function applyTheme(theme) {
    const root = document.documentElement;
    const shown = effectiveTheme(theme);
    root.classList.toggle("dark", shown === "dark");
    root.classList.toggle("light", shown === "light");
  }

  applyTheme(storedTheme());

  // ---------------------------------------------------------------------------- helpers

  const FILTERS = [
    "kind", "model", "backend", "style", "lora", "since", "until", "min_score",
    "width", "height", "min_cost", "max_cost", "kept", "has_video",
    "origin", "batch", "schedule",
  ];
  const SEARCH_DELAY_MS = 300;
  const EXTENSIONS = {
    "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif",
    "video/mp4": "mp4", "video/webm": "webm", "video/quicktime": "mov",
  };

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function icon(paths, className) {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    if (className) svg.setAttribute("class", className);
    for (const d of paths) {
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    }
    return svg;
  }
  const ICON = {
    play: ["M7 4v16l13-8z"],
    star: ["m12 2 3.1 6.3 6.9 1-5 4.9 1.2 6.8L12 17.8 5.8 21l1.2-6.8-5-4.9 6.9-1z"],
    lora: ["M12 2 2 7l10 5 10-5z", "m2 17 10 5 10-5", "m2 12 10 5 10-5"],
    curation: ["M8 21h8M12 17v4M7 4h10v5a5 5 0 0 1-10 0z", "M17 5h3v2a3 3 0 0 1-3 3M7 5H4v2a3 3 0 0 0 3 3"],
    image: ["M3 3h18v18H3z", "m21 15-5-5L5 21"],
  };

  /** An error the page can show: the server's own message when it sent one. */
  class ApiError extends Error {
    constructor(message, status) {
      super(message);
      this.status = status;
    }
  }

  async function messageOf(response) {
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      // chat_app/gallery_routes.py answers {"error": {"message": ...}}; FastAPI's own
      // refusals {"detail": ...}.
      const said = body.error?.message ?? body.detail ?? body.error ?? body.message;
      if (typeof said === "string" && said) return said;
      if (Array.isArray(said) && said.length && said[0].msg) return said[0].msg;
    } catch (_) {
      /* not JSON: the text itself, if short */
    }
    if (response.status === 401) return "You are not signed in (or your login has expired).";
    if (response.status === 404) return "Not found: it may have been deleted.";
    if (text && text.length < 300 && !text.trim().startsWith("<")) return text.trim();
    return `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".";
  }

  /** fetch, with the headers every state-changing request needs (CSRF: X-Atelier). */
  async function request(path, { method = "GET", body, raw = false } = {}) {
    const options = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET") {
      options.headers["Content-Type"] = "application/json";
      options.headers["X-Atelier"] = "1";
      options.body = JSON.stringify(body ?? {});
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch (_) {
      throw new ApiError("The server could not be reached. Is Atelier still running?", 0);
    }
    if (!response.ok) throw new ApiError(await messageOf(response), response.status);
    return raw ? response : response.json();
  }

  function formatTime(iso) {
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return iso || "";
    return when.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    });
  }

  /** Short, for a tile's caption: no year when it is this year's. */
  function formatDay(iso) {
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return "";
    const thisYear = when.getFullYear() === new Date().getFullYear();
    return when.toLocaleDateString(undefined, thisYear ? { month: "short", day: "numeric" } : { year: "numeric", month: "short", day: "numeric" });
  }

  function formatCost(value) {
    if (value === null || value === undefined || value === "") return "not recorded";
    const amount = Number(value);
    if (!Number.isFinite(amount)) return String(value);
    return "$" + amount.toFixed(4); // as the chat shows it (core/money.py)
  }

  function formatSeconds(seconds) {
    const value = Number(seconds);
    return Number.isFinite(value) ? `${value.toFixed(value < 10 ? 1 : 0)} s` : "";
  }

  function fileName(item) {
    const ext = EXTENSIONS[item.mime] || (item.kind === "video" ? "mp4" : "png");
    return `atelier-${String(item.id).slice(0, 8)}.${ext}`;
  }

  function kindWord(item) {
    return item.kind === "video" ? "clip" : "image";
  }

  // ------------------------------------------------------------------------------ state

  const state = {
    likeness: false,
    likenessHelp: "",
    mode: "words", // "words" | "likeness"
    like: null, // "more like this": an image id
    q: "",
    filters: {},
    items: [],
    byId: new Map(),
    nextCursor: null,
    loading: false,
    generation: 0,
    selecting: false,
    selected: new Set(),
    detailId: null,
    detail: null,
  };

  // --------------------------------------------------------------------- URL <-> state

  function readUrl() {
    const params = new URLSearchParams(location.search);
    state.q = params.get("q") || "";
    state.mode = params.get("mode") === "likeness" ? "likeness" : "words";
    state.like = params.get("like") || null;
    state.filters = {};
    for (const name of FILTERS) {
      const value = params.get(name);
      if (value) state.filters[name] = value;
    }
    return params.get("image");
  }

  function listParams() {
    const params = new URLSearchParams();
    if (state.q) params.set("q", state.q);
    for (const [name, value] of Object.entries(state.filters)) params.set(name, value);
    return params;
  }

  function pageUrl(imageId) {
    const params = listParams();
    if (state.mode === "likeness") params.set("mode", "likeness");
    if (state.like) params.set("like", state.like);
    if (imageId) params.set("image", imageId);
    const query = params.toString();
    return location.pathname + (query ? "?" + query : "");
  }

  function writeUrl({ push = false } = {}) {
    const url = pageUrl(state.detailId);
    if (url === location.pathname + location.search) return;
    const data = { detail: Boolean(state.detailId), pushed: push || history.state?.pushed };
    if (push) history.pushState(data, "", url);
    else history.replaceState(data, "", url);
  }

  // ------------------------------------------------------------------ header controls

  function syncControls() {
    $("search").value = state.q;
    $("search").placeholder =
      state.mode === "likeness" ? "Describe it: foxes at night, a red door…" : "Search prompts…";
    for (const button of $("mode-group").querySelectorAll("button")) {
      button.setAttribute("aria-checked", String(button.dataset.mode === state.mode));
    }
    const form = $("filters-form");
    for (const name of FILTERS) {
      const field = form.elements[name];
      if (!field) continue;
      if (field.type === "checkbox") field.checked = state.filters[name] === "1";
      else field.value = state.filters[name] || "";
    }
    // One batch's or schedule's images (?batch=ID): shown only while it applies.
    $("batch-filter").hidden = !state.filters.batch;
    $("schedule-filter").hidden = !state.filters.schedule;
    const count = Object.keys(state.filters).length;
    $("filter-count").hidden = count === 0;
    $("filter-count").textContent = String(count);
    const chip = $("like-chip");
    chip.hidden = !state.like;
    if (state.like) {
      const seen = state.byId.get(state.like);
      const img = $("like-chip-img");
      if (seen && seen.thumb_url) img.src = seen.thumb_url;
      else img.removeAttribute("src");
    }
  }

  function readFilters() {
    const form = $("filters-form");
    const filters = {};
    for (const name of FILTERS) {
      const field = form.elements[name];
      if (!field) continue;
      if (field.type === "checkbox") {
        if (field.checked) filters[name] = "1";
      } else if (field.value.trim()) {
        filters[name] = field.value.trim();
      }
    }
    return filters;
  }

  let searchTimer = 0;
  function onSearchInput() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, SEARCH_DELAY_MS);
  }

  function runSearch() {
    clearTimeout(searchTimer);
    const q = $("search").value.trim();
    if (q === state.q && !state.like) return;
    state.q = q;
    state.like = null;
    writeUrl();
    reload();
  }

  let filterTimer = 0;
  function onFiltersChanged() {
    clearTimeout(filterTimer);
    filterTimer = setTimeout(() => {
      state.filters = readFilters();
      syncControls();
      writeUrl();
      reload();
    }, 250);
  }

  function setMode(mode) {
    if (mode === state.mode) return;
    state.mode = mode;
    state.like = null;
    syncControls();
    writeUrl();
    if (state.q) reload();
    $("search").focus();
  }

  function clearAll() {
    state.q = "";
    state.like = null;
    state.filters = {};
    syncControls();
    writeUrl();
    reload();
  }

  // ------------------------------------------------------------------------ the grid

  function listUrl(cursor) {
    const params = listParams();
    if (state.like) {
      params.delete("q");
      params.set("like", state.like);
      return "/api/gallery/similar?" + params;
    }
    if (state.mode === "likeness" && state.q && state.likeness) return "/api/gallery/similar?" + params;
    if (cursor) params.set("cursor", cursor);
    return "/api/gallery/items?" + params;
  }

  function reload() {
    state.generation += 1;
    state.items = [];
    state.byId = new Map();
    state.nextCursor = null;
    state.loading = false;
    $("grid").replaceChildren();
    $("empty").hidden = true;
    $("error").hidden = true;
    window.scrollTo({ top: 0 });
    return loadMore(true);
  }

  async function loadMore(first = false) {
    if (state.loading || (!first && !state.nextCursor)) return;
    const generation = state.generation;
    state.loading = true;
    $("loading").hidden = false;
    try {
      const page = await request(listUrl(first ? null : state.nextCursor));
      if (generation !== state.generation) return; // a newer search replaced this one
      const fresh = (page.items || []).filter((item) => !state.byId.has(item.id));
      for (const item of fresh) {
        state.items.push(item);
        state.byId.set(item.id, item);
      }
      state.nextCursor = page.next_cursor || null;
      $("grid").append(...fresh.map(tile));
      learnValues(fresh);
      showStatus();
      syncControls();
    } catch (error) {
      if (generation !== state.generation) return;
      showError(error);
    } finally {
      if (generation === state.generation) {
        state.loading = false;
        $("loading").hidden = true;
      }
    }
    if (generation === state.generation) fillViewport();
  }

  /** A short first page leaves the sentinel in view: the observer would not fire again. */
  function fillViewport() {
    if (!state.nextCursor || state.loading) return;
    const box = $("sentinel").getBoundingClientRect();
    if (box.top < window.innerHeight + 800) loadMore();
  }

  function showStatus() {
    const count = state.items.length;
    const empty = count === 0;
    $("empty").hidden = !empty;
    if (empty) {
      const narrowed = Boolean(state.q || state.like || Object.keys(state.filters).length);
      $("empty-title").textContent = narrowed ? "Nothing matches" : "Nothing here yet";
      $("empty-text").textContent = narrowed
        ? "No image or clip fits this search and these filters."
        : "Every image and clip you make in the chat shows up here, newest first.";
      $("empty-clear").hidden = !narrowed;
      $("empty-chat").hidden = narrowed;
    }
    let text = "";
    if (!empty) {
      const more = state.nextCursor ? "+" : "";
      const things = `${count}${more} ${count === 1 && !more ? "item" : "items"}`;
      if (state.like) text = `${things}, most alike first`;
      else if (state.mode === "likeness" && state.q && state.likeness) text = `${things} that look like “${state.q}”, closest first`;
      else if (state.q) text = `${things} whose prompt says “${state.q}”, newest first`;
      else text = `${things}, newest first`;
    }
    $("status").textContent = text;
  }

  function showError(error) {
    const box = $("error");
    box.hidden = false;
    const text = $("error-text");
    text.replaceChildren(document.createTextNode(error.message + " "));
    if (error.status === 401) {
      const login = el("a", "", "Sign in");
      login.href = "/login";
      text.appendChild(login);
    }
    $("status").textContent = "";
  }

  function tile(item) {
    const li = el("li", "g-tile");
    li.dataset.id = item.id;
    li.classList.toggle("g-selected", state.selected.has(item.id));
    const link = el("a", "g-tile-link");
    link.href = pageUrl(item.id);
    link.title = item.prompt || "";
    link.setAttribute("aria-label", `${kindWord(item)}: ${item.prompt || "no prompt"}`);
    const img = el("img", "g-thumb");
    img.loading = "lazy";
    img.decoding = "async";
    img.alt = item.prompt || "";
    img.width = 256;
    img.height = 256;
    img.addEventListener("error", () => li.classList.add("g-broken"), { once: true });
    const src = item.thumb_url || (item.kind === "image" ? item.media_url : "");
    if (src) img.src = src;
    else li.classList.add("g-broken");
    link.appendChild(img);
    link.addEventListener("click", (event) => {
      if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      if (state.selecting) toggleSelected(item.id);
      else openDetail(item.id, { push: true });
    });
    li.appendChild(link);

    const badges = el("div", "g-badges");
    if (item.kind === "video") {
      const badge = el("span", "g-badge g-badge-video");
      badge.title = "Video clip";
      badge.append(icon(ICON.play), el("span", "", formatSeconds(item.seconds) || "clip"));
      badges.appendChild(badge);
    }
    if (typeof item.similarity === "number") {
      const badge = el("span", "g-badge", item.similarity.toFixed(2));
      badge.title = "Likeness (cosine similarity)";
      badges.appendChild(badge);
    }
    li.appendChild(badges);

    const star = el("span", "g-star");
    star.title = "Kept (starred)";
    star.appendChild(icon(ICON.star));
    star.hidden = !item.kept;
    li.appendChild(star);

    const check = el("label", "g-pick");
    const box = el("input");
    box.type = "checkbox";
    box.checked = state.selected.has(item.id);
    box.setAttribute("aria-label", `Select ${kindWord(item)}`);
    box.addEventListener("change", () => toggleSelected(item.id, box.checked));
    check.appendChild(box);
    li.appendChild(check);

    const caption = el("div", "g-caption");
    caption.append(el("span", "g-caption-prompt", item.prompt || "(no prompt)"));
    caption.append(el("span", "g-caption-meta", [item.model || item.backend, formatDay(item.created_at)].filter(Boolean).join(" · ")));
    li.appendChild(caption);
    return li;
  }

  function tileOf(id) {
    return $("grid").querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  function replaceItem(item) {
    const index = state.items.findIndex((known) => known.id === item.id);
    if (index < 0) return;
    const merged = { ...state.items[index], ...item };
    state.items[index] = merged;
    state.byId.set(item.id, merged);
    const old = tileOf(item.id);
    if (old) old.replaceWith(tile(merged));
  }

  function removeItem(id) {
    state.items = state.items.filter((item) => item.id !== id);
    state.byId.delete(id);
    state.selected.delete(id);
    tileOf(id)?.remove();
    showSelection();
    showStatus();
  }

  const seenValues = { models: new Set(), backends: new Set(), styles: new Set(), loras: new Set() };
  function learnValues(items, detail) {
    const add = (list, value) => {
      if (!value || seenValues[list].has(value)) return;
      seenValues[list].add(value);
      const option = el("option");
      option.value = value;
      $(list).appendChild(option);
    };
    for (const item of items) {
      add("models", item.model);
      add("backends", item.backend);
    }
    if (detail) {
      add("styles", detail.style);
      for (const name of detail.loras || []) add("loras", name);
    }
  }

  // ------------------------------------------------------------------------- selection

  function setSelecting(on) {
    state.selecting = on;
    document.body.classList.toggle("g-selecting", on);
    $("select-toggle").setAttribute("aria-pressed", String(on));
    if (!on) {
      state.selected.clear();
      for (const li of $("grid").querySelectorAll(".g-selected")) li.classList.remove("g-selected");
      for (const box of $("grid").querySelectorAll(".g-pick input")) box.checked = false;
    }
    showSelection();
  }

  function toggleSelected(id, on) {
    const selected = on ?? !state.selected.has(id);
    if (selected) state.selected.add(id);
    else state.selected.delete(id);
    if (selected && !state.selecting) setSelecting(true);
    const li = tileOf(id);
    if (li) {
      li.classList.toggle("g-selected", selected);
      li.querySelector(".g-pick input").checked = selected;
    }
    showSelection();
  }

  function showSelection() {
    const count = state.selected.size;
    $("selection-bar").hidden = !state.selecting;
    $("selection-count").textContent = `${count} selected`;
    $("selection-download").disabled = count === 0;
  }

  async function downloadSelection() {
    const ids = state.items.map((item) => item.id).filter((id) => state.selected.has(id));
    if (!ids.length) return;
    const button = $("selection-download");
    button.disabled = true;
    button.classList.add("g-busy");
    try {
      const response = await request("/api/gallery/download", { method: "POST", body: { ids }, raw: true });
      const blob = await response.blob();
      const named = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
      saveBlob(blob, named ? named[1] : "atelier-gallery.zip");
    } catch (error) {
      toast(error.message, true);
    } finally {
      button.disabled = state.selected.size === 0;
      button.classList.remove("g-busy");
    }
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const link = el("a");
    link.href = url;
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  let toastTimer = 0;
  function toast(text, isError) {
    let box = $("toast");
    if (!box) {
      box = el("div", "g-toast");
      box.id = "toast";
      box.setAttribute("role", "status");
      document.body.appendChild(box);
    }
    box.textContent = text;
    box.classList.toggle("g-toast-error", Boolean(isError));
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => (box.hidden = true), 5000);
  }

  // -------------------------------------------------------------------- the detail view

  let detailGeneration = 0;

  async function openDetail(id, { push = false } = {}) {
    const dialog = $("detail");
    const generation = ++detailGeneration;
    state.detailId = id;
    state.detail = null;
    writeUrl({ push });
    if (!dialog.open) {
      dialog.showModal();
      dialog.focus(); // keys go to the dialog (arrows, Esc), not to the page behind
      document.body.classList.add("g-modal-open");
    }
    $("detail-error").hidden = true;
    $("delete-confirm").hidden = true;
    $("detail").classList.add("g-detail-loading");
    const known = state.byId.get(id);
    if (known) showDetail(known, false);
    else {
      $("detail-media").replaceChildren(el("div", "g-media-placeholder"));
      $("detail-record").replaceChildren();
    }
    $("lineage").replaceChildren(el("p", "g-muted", "Loading the family…"));
    updateNav();
    const path = `/api/gallery/items/${encodeURIComponent(id)}`;
    const [detail, lineage] = await Promise.allSettled([request(path), request(path + "/lineage")]);
    if (generation !== detailGeneration || !dialog.open) return;
    $("detail").classList.remove("g-detail-loading");
    if (detail.status === "fulfilled") {
      state.detail = detail.value;
      showDetail(detail.value, true);
      learnValues([], detail.value);
    } else {
      showDetailError(detail.reason);
    }
    if (lineage.status === "fulfilled") showLineage(lineage.value);
    else $("lineage").replaceChildren(el("p", "g-muted", lineage.reason.message));
  }

  function showDetailError(error) {
    const box = $("detail-error");
    box.hidden = false;
    box.textContent = error.message;
    $("detail-actions").hidden = true;
    if (!state.byId.has(state.detailId)) {
      $("detail-media").replaceChildren(el("div", "g-media-placeholder"));
      $("detail-title").textContent = "Not available";
    }
  }

  /** `back`: leave by going back in history when opening the detail added an entry
   *  (so Back after Esc does not reopen it); false when the caller writes the URL next. */
  function closeDetail({ back = true } = {}) {
    const dialog = $("detail");
    detailGeneration += 1;
    const wasPushed = back && history.state?.detail && history.state?.pushed;
    state.detailId = null;
    state.detail = null;
    if (dialog.open) dialog.close();
    document.body.classList.remove("g-modal-open");
    $("detail-media").replaceChildren(); // stops a playing clip
    if (wasPushed) history.back();
    else if (back) writeUrl();
  }

  function showDetail(item, full) {
    $("detail-actions").hidden = false;
    $("detail-title").textContent = item.kind === "video" ? "Clip" : "Image";
    showMedia(item);
    const open = $("act-open");
    open.href = item.conversation_url || `/thread/${item.thread_id}`;
    const download = $("act-download");
    download.href = item.media_url;
    download.download = fileName(item);
    $("act-like").hidden = !state.likeness || item.kind !== "image";
    $("act-reuse").hidden = item.kind !== "image";
    showStar(item.kept);
    $("delete-question").textContent =
      `Delete this ${kindWord(item)} and its file? Whatever was made from it keeps its own record.`;
    $("detail-record").replaceChildren(...record(item, full));
  }

  function showStar(kept) {
    const star = $("act-star");
    star.setAttribute("aria-pressed", String(Boolean(kept)));
    star.classList.toggle("g-kept", Boolean(kept));
    star.querySelector("span").textContent = kept ? "Starred" : "Star";
    star.title = kept ? "Kept: click to unstar" : "Keep this (star it)";
  }

  function showMedia(item) {
    const box = $("detail-media");
    const current = box.firstElementChild;
    if (current && current.dataset.id === item.id && current.dataset.src === item.media_url) return;
    let media;
    if (item.kind === "video") {
      media = el("video", "g-media");
      media.controls = true;
      media.loop = true;
      media.playsInline = true;
      media.preload = "metadata";
      if (item.thumb_url) media.poster = item.thumb_url;
      media.src = item.media_url;
    } else {
      media = el("img", "g-media");
      media.alt = item.prompt || "";
      // The thumbnail at once (cached from the grid), the full file when it has loaded.
      if (item.thumb_url) media.src = item.thumb_url;
      const full = new Image();
      full.addEventListener("load", () => {
        if (media.isConnected) media.src = item.media_url;
      });
      full.src = item.media_url;
    }
    media.dataset.id = item.id;
    media.dataset.src = item.media_url;
    box.replaceChildren(media);
  }

  function row(list, term, value) {
    if (value === null || value === undefined || value === "") return;
    const dt = el("dt", "", term);
    const dd = el("dd");
    if (value instanceof Node) dd.appendChild(value);
    else dd.textContent = String(value);
    list.append(dt, dd);
  }

  function itemLink(id, label) {
    const link = el("a", "g-link", label || String(id).slice(0, 8));
    link.href = pageUrl(id);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      openDetail(id);
    });
    return link;
  }

  function record(item, full) {
    const parts = [];
    const prompt = el("div", "g-prompt");
    const typed = full ? item.prompt_typed : item.prompt;
    prompt.append(el("div", "g-label", full && item.prompt_sent && item.prompt_sent !== typed ? "Prompt as typed" : "Prompt"));
    prompt.append(el("p", "g-prompt-text", typed || item.prompt_sent || "(none)"));
    if (full && item.prompt_sent && typed && item.prompt_sent !== typed) {
      prompt.append(el("div", "g-label", "As sent to the model"));
      prompt.append(el("p", "g-prompt-text g-sent", item.prompt_sent));
    }
    parts.push(prompt);

    const list = el("dl", "g-facts");
    row(list, "Model", item.model);
    row(list, "Backend", item.backend);
    row(list, "Size", `${item.width}×${item.height}` + (item.seconds ? ` · ${formatSeconds(item.seconds)}` : ""));
    if (full) row(list, "Seed", item.seed ?? "none");
    row(list, "Cost", formatCost(item.cost_usd));
    row(list, "Made", formatTime(item.created_at));
    if (full) {
      if (item.duration_ms) row(list, "Took", `${(item.duration_ms / 1000).toFixed(1)} s`);
      row(list, "Style", item.style);
      if (item.loras && item.loras.length) row(list, "LoRA", item.loras.join(", "));
      if (item.parent_id) row(list, "Made from", itemLink(item.parent_id));
      if (item.source_image_id) row(list, "Animated from", itemLink(item.source_image_id));
      const open = el("a", "g-link", item.thread_name || "Untitled conversation");
      open.href = item.conversation_url || `/thread/${item.thread_id}`;
      row(list, "Conversation", open);
    }
    row(list, "Id", item.id);
    parts.push(list);

    if (full && item.scores && item.scores.length) parts.push(scoresTable(item.scores));
    if (full && item.curations && item.curations.length) parts.push(curationList(item.curations));
    if (full && item.parameters && Object.keys(item.parameters).length) {
      const details = el("details", "g-params");
      details.append(el("summary", "", "Parameters"));
      details.append(el("pre", "", JSON.stringify(item.parameters, null, 2)));
      parts.push(details);
    }
    return parts;
  }

  function scoresTable(scores) {
    const section = el("div", "g-scores");
    section.append(el("div", "g-label", "Scores and verdicts"));
    const table = el("table");
    const head = el("tr");
    for (const name of ["Criterion", "Score", "", "Why"]) head.append(el("th", "", name));
    const thead = el("thead");
    thead.append(head);
    table.append(thead);
    const body = el("tbody");
    for (const score of scores) {
      const tr = el("tr");
      tr.append(el("td", "", score.criterion));
      const value = score.score ?? score.value;
      tr.append(el("td", "g-num", typeof value === "number" ? value.toFixed(2) : value ?? ""));
      const verdict = score.passed === true ? "pass" : score.passed === false ? "fail" : "";
      tr.append(el("td", "g-verdict g-" + verdict, verdict));
      tr.append(el("td", "g-why", score.reason || ""));
      body.append(tr);
    }
    table.append(body);
    section.append(table);
    return section;
  }

  function curationList(curations) {
    const section = el("div", "g-scores");
    section.append(el("div", "g-label", "Curation"));
    const list = el("ul", "g-curations");
    for (const c of curations) {
      const li = el("li");
      const rank = c.rank ? `#${c.rank}` : "";
      const combined = typeof c.combined === "number" ? ` · ${c.combined.toFixed(2)}` : "";
      li.append(el("strong", "", `${rank}${combined} ${c.verdict || ""}`.trim()));
      if (c.reason) li.append(el("span", "", " — " + c.reason));
      if (c.prompt) li.append(el("div", "g-muted", `Brief: ${c.prompt}`));
      list.append(li);
    }
    section.append(list);
    return section;
  }

  async function toggleStar() {
    const item = state.detail || state.byId.get(state.detailId);
    if (!item) return;
    const button = $("act-star");
    button.disabled = true;
    try {
      const updated = await request(`/api/gallery/items/${encodeURIComponent(item.id)}/star`, {
        method: "POST",
        body: { kept: !item.kept },
      });
      if (state.detail && state.detail.id === updated.id) state.detail = { ...state.detail, ...updated };
      replaceItem(updated);
      if (state.detailId === updated.id) showStar(updated.kept);
      if (state.filters.kept === "1" && !updated.kept) removeItem(updated.id);
    } catch (error) {
      toast(error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  async function deleteCurrent() {
    const id = state.detailId;
    if (!id) return;
    $("delete-yes").disabled = true;
    try {
      await request(`/api/gallery/items/${encodeURIComponent(id)}`, { method: "DELETE" });
      const index = state.items.findIndex((item) => item.id === id);
      removeItem(id);
      const next = state.items[index] || state.items[index - 1];
      toast("Deleted.");
      if (next) openDetail(next.id);
      else closeDetail();
    } catch (error) {
      toast(error.message, true);
    } finally {
      $("delete-yes").disabled = false;
      $("delete-confirm").hidden = true;
    }
  }

  async function reuse() {
    const id = state.detailId;
    if (!id) return;
    const button = $("act-reuse");
    button.disabled = true;
    button.classList.add("g-busy");
    try {
      const made = await request(`/api/gallery/items/${encodeURIComponent(id)}/new-conversation`, { method: "POST" });
      location.href = made.url || `/thread/${made.thread_id}`;
    } catch (error) {
      toast(error.message, true);
      button.disabled = false;
      button.classList.remove("g-busy");
    }
  }

  function moreLikeThis(id) {
    state.like = id;
    state.q = "";
    closeDetail({ back: false });
    syncControls();
    writeUrl();
    reload();
  }

  function step(delta) {
    const index = state.items.findIndex((item) => item.id === state.detailId);
    if (index < 0) return;
    const target = state.items[index + delta];
    if (target) {
      openDetail(target.id);
      tileOf(target.id)?.scrollIntoView({ block: "nearest" });
    } else if (delta > 0 && state.nextCursor) {
      loadMore().then(() => {
        const later = state.items[index + delta];
        if (later && state.detailId === state.items[index].id) openDetail(later.id);
      });
    }
  }

  function updateNav() {
    const index = state.items.findIndex((item) => item.id === state.detailId);
    $("detail-prev").disabled = index <= 0;
    $("detail-next").disabled = index < 0 || (index >= state.items.length - 1 && !state.nextCursor);
  }

  // ------------------------------------------------------------------------- lineage

  /** Generations from the focus: parents to the left (negative), children to the right.
   *  (Left to right reads as time, and fits the wide, low space under the picture.) */
  function levels(lineage) {
    const level = new Map([[lineage.focus, 0]]);
    const queue = [lineage.focus];
    while (queue.length) {
      const id = queue.shift();
      for (const edge of lineage.edges) {
        let other = null;
        let at = 0;
        if (edge.parent === id) [other, at] = [edge.child, level.get(id) + 1];
        else if (edge.child === id) [other, at] = [edge.parent, level.get(id) - 1];
        if (other !== null && !level.has(other)) {
          level.set(other, at);
          queue.push(other);
        }
      }
    }
    for (const node of lineage.nodes) if (!level.has(node.id)) level.set(node.id, 0);
    return level;
  }

  function showLineage(lineage) {
    const box = $("lineage");
    const nodes = lineage.nodes || [];
    if (nodes.length <= 1) {
      box.replaceChildren(el("p", "g-muted", "No parents and nothing made from it yet."));
      return;
    }
    const level = levels(lineage);
    const rows = new Map();
    for (const node of nodes) {
      const at = level.get(node.id);
      if (!rows.has(at)) rows.set(at, []);
      rows.get(at).push(node);
    }
    const relation = new Map(); // child id -> the relation to its parent
    for (const edge of lineage.edges || []) if (!relation.has(edge.child)) relation.set(edge.child, edge.relation);
    const tree = el("div", "g-tree");
    const lines = document.createElementNS(SVG, "svg");
    lines.setAttribute("class", "g-tree-lines");
    lines.setAttribute("aria-hidden", "true");
    tree.appendChild(lines);
    const cards = new Map();
    for (const at of [...rows.keys()].sort((a, b) => a - b)) {
      const rowBox = el("div", "g-tree-row");
      rowBox.dataset.level = String(at);
      const members = rows.get(at).sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
      for (const node of members) {
        const card = lineageCard(node, relation.get(node.id));
        cards.set(node.id, card);
        rowBox.appendChild(card);
      }
      tree.appendChild(rowBox);
    }
    box.replaceChildren(tree);
    const draw = () => drawLines(tree, lines, cards, lineage.edges || []);
    requestAnimationFrame(draw);
    for (const img of tree.querySelectorAll("img")) img.addEventListener("load", draw, { once: true });
    if (box.resizeObserver) box.resizeObserver.disconnect();
    box.resizeObserver = new ResizeObserver(draw);
    box.resizeObserver.observe(tree);
    const focus = cards.get(lineage.focus);
    if (focus) {
      // Only the lineage box scrolls (scrollIntoView would move the picture too).
      requestAnimationFrame(() => {
        box.scrollLeft = Math.max(0, focus.offsetLeft - box.clientWidth / 2 + focus.offsetWidth / 2);
      });
    }
  }

  function lineageCard(node, relationToParent) {
    const openable = node.kind === "image" || node.kind === "video";
    const card = el(openable || node.kind === "lora" ? "button" : "div", "g-node g-node-" + node.kind);
    if (card.tagName === "BUTTON") card.type = "button";
    card.dataset.id = node.id;
    if (node.focus) {
      card.classList.add("g-node-focus");
      card.setAttribute("aria-current", "true");
    }
    const picture = el("div", "g-node-pic");
    if (node.thumb_url) {
      const img = el("img");
      img.src = node.thumb_url;
      img.alt = "";
      img.loading = "lazy";
      picture.appendChild(img);
    } else {
      picture.appendChild(icon(ICON[node.kind] || ICON.image));
    }
    if (node.kind === "video") picture.appendChild(el("span", "g-node-play")).appendChild(icon(ICON.play));
    card.appendChild(picture);
    const operation = node.operation || relationToParent || node.kind;
    card.append(el("span", "g-node-op", operation));
    const label = node.label || "";
    // A picture speaks for itself (its prompt is in the tooltip); a LoRA or a curation
    // has only its name.
    if (label && !openable) card.append(el("span", "g-node-label", label));
    card.title = [operation, label, node.created_at ? formatTime(node.created_at) : ""].filter(Boolean).join("\n");
    if (openable && !node.focus) {
      card.setAttribute("aria-label", `Open the ${node.kind} (${operation}): ${label}`);
      card.addEventListener("click", () => openDetail(node.id));
    } else if (node.kind === "lora") {
      card.title += "\nShow what was made with this LoRA";
      card.addEventListener("click", () => {
        state.filters = { ...state.filters, lora: node.label };
        state.q = "";
        state.like = null;
        closeDetail({ back: false });
        syncControls();
        writeUrl();
        reload();
      });
    } else if (node.focus) {
      card.disabled = true;
    }
    return card;
  }

  function drawLines(tree, svg, cards, edges) {
    const origin = tree.getBoundingClientRect();
    svg.setAttribute("width", String(tree.scrollWidth));
    svg.setAttribute("height", String(tree.scrollHeight));
    const paths = [];
    for (const edge of edges) {
      const from = cards.get(edge.parent);
      const to = cards.get(edge.child);
      if (!from || !to) continue;
      const a = from.getBoundingClientRect();
      const b = to.getBoundingClientRect();
      const x1 = a.right - origin.left;
      const y1 = a.top + a.height / 2 - origin.top;
      const x2 = b.left - origin.left;
      const y2 = b.top + b.height / 2 - origin.top;
      const path = document.createElementNS(SVG, "path");
      const bend = Math.max(12, Math.abs(x2 - x1) / 2);
      path.setAttribute("d", `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`);
      const onFocusPath = from.classList.contains("g-node-focus") || to.classList.contains("g-node-focus");
      if (onFocusPath) path.setAttribute("class", "g-edge-focus");
      const title = document.createElementNS(SVG, "title");
      title.textContent = edge.relation || "";
      path.appendChild(title);
      paths.push(path);
    }
    svg.replaceChildren(...paths);
  }

  // ---------------------------------------------------------------------- start-up

  async function loadCapabilities() {
    try {
      const caps = await request("/api/gallery/capabilities");
      state.likeness = Boolean(caps.likeness);
      state.likenessHelp = caps.likeness_help || "";
    } catch (_) {
      state.likeness = false; // the grid's own request shows what is wrong
    }
    $("mode-group").hidden = !state.likeness;
    const help = $("likeness-help");
    help.hidden = state.likeness || !state.likenessHelp;
    help.replaceChildren(el("strong", "", "Search by likeness is off. "), document.createTextNode(state.likenessHelp));
    if (!state.likeness) {
      state.mode = "words";
      state.like = null;
    }
  }

  function wire() {
    $("search-form").addEventListener("submit", (event) => {
      event.preventDefault();
      runSearch();
    });
    $("search").addEventListener("input", onSearchInput);
    $("search").addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        event.preventDefault();
        runSearch();
      }
    });
    for (const button of $("mode-group").querySelectorAll("button")) {
      button.addEventListener("click", () => setMode(button.dataset.mode));
    }
    $("filters-toggle").addEventListener("click", () => {
      const open = $("filters").hidden;
      $("filters").hidden = !open;
      $("filters-toggle").setAttribute("aria-expanded", String(open));
    });
    $("filters-form").addEventListener("input", onFiltersChanged);
    $("filters-form").addEventListener("change", onFiltersChanged);
    $("filters-form").addEventListener("submit", (event) => event.preventDefault());
    $("filters-clear").addEventListener("click", () => {
      state.filters = {};
      syncControls();
      writeUrl();
      reload();
    });
    $("empty-clear").addEventListener("click", clearAll);
    $("error-retry").addEventListener("click", () => reload());
    $("like-chip-clear").addEventListener("click", () => {
      state.like = null;
      syncControls();
      writeUrl();
      reload();
    });

    $("select-toggle").addEventListener("click", () => setSelecting(!state.selecting));
    $("selection-clear").addEventListener("click", () => setSelecting(false));
    $("selection-all").addEventListener("click", () => {
      for (const item of state.items) toggleSelected(item.id, true);
    });
    $("selection-download").addEventListener("click", downloadSelection);

    $("theme-toggle").addEventListener("click", () => {
      const next = effectiveTheme(storedTheme()) === "dark" ? "light" : "dark";
      try {
        localStorage.setItem(THEME_KEY, next);
      } catch (_) {
        /* private mode: this page only */
      }
      applyTheme(next);
    });
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => applyTheme(storedTheme()));

    const dialog = $("detail");
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault(); // Esc: closed our way, so the URL follows
      closeDetail();
    });
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) closeDetail(); // the backdrop
    });
    // On the document: the focus may be on the page's body while the dialog is open.
    document.addEventListener("keydown", (event) => {
      if (!dialog.open || event.altKey || event.ctrlKey || event.metaKey) return;
      const target = event.target;
      if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLVideoElement) return;
      if (event.key === "ArrowRight" || event.key === "ArrowDown") {
        event.preventDefault();
        step(1);
      } else if (event.key === "ArrowLeft" || event.key === "ArrowUp") {
        event.preventDefault();
        step(-1);
      }
    });
    $("detail-close").addEventListener("click", () => closeDetail());
    $("detail-prev").addEventListener("click", () => step(-1));
    $("detail-next").addEventListener("click", () => step(1));
    $("act-star").addEventListener("click", toggleStar);
    $("act-reuse").addEventListener("click", reuse);
    $("act-like").addEventListener("click", () => state.detailId && moreLikeThis(state.detailId));
    $("act-delete").addEventListener("click", () => {
      $("delete-confirm").hidden = false;
      $("delete-no").focus();
    });
    $("delete-no").addEventListener("click", () => ($("delete-confirm").hidden = true));
    $("delete-yes").addEventListener("click", deleteCurrent);

    window.addEventListener("popstate", () => {
      const before = pageUrl(null);
      const image = readUrl();
      syncControls();
      if (pageUrl(null) !== before) reload();
      if (image && image !== state.detailId) openDetail(image);
      else if (!image && state.detailId) {
        state.detailId = null;
        const detail = $("detail");
        if (detail.open) detail.close();
        document.body.classList.remove("g-modal-open");
        $("detail-media").replaceChildren();
      }
    });

    new IntersectionObserver(
      (entries) => {
        if (entries.some((entry) => entry.isIntersecting)) loadMore();
      },
      { rootMargin: "800px 0px" },
    ).observe($("sentinel"));
  }

  async function start() {
    const image = readUrl();
    wire();
    await loadCapabilities();
    syncControls();
    if (Object.keys(state.filters).length) {
      $("filters").hidden = false;
      $("filters-toggle").setAttribute("aria-expanded", "true");
    }
    const first = reload();
    if (image) openDetail(image);
    await first;
    if (state.detailId) updateNav();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
