// gallery-link: the ways from the chat to the gallery (loaded by public/atelier.js).
//
// - "Gallery" in the chat's header, before the theme switch. Chainlit draws the header
//   with React and has no slot for a same-tab link (its header_links open a new tab and
//   show an <img> icon that cannot follow the theme), so the link is put into the
//   header's right-hand group, `#header > div:last-child`, and put back whenever React
//   redraws the header without it.
// - On each image of the chat, beside its star, details and download buttons
//   (public/images.js draws those in `.atl-top`): "Open in gallery", to
//   /gallery?image=<id>, where the image's record and lineage are shown.
// Both are plain links to the app's own page: nothing is fetched here.
(function () {
  "use strict";

  // Lucide's "images".
  const IMAGES = [
    "M18 22H4a2 2 0 0 1-2-2V6",
    "m22 13-1.296-1.296a2.41 2.41 0 0 0-3.408 0L11 18",
    "M14 8a2 2 0 1 1-4 0a2 2 0 1 1 4 0",
    "M12 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2h-8a2 2 0 0 1-2-2V4a2 2 0 0 1 2-2z",
  ];

  function icon() {
    return window.atelierIcon(IMAGES); // public/images.js, loaded before this script
  }

  function headerLink() {
    const group = document.querySelector("#header > div:last-child");
    if (!group || group.querySelector(":scope > #atelier-gallery-link")) return;
    const link = document.createElement("a");
    link.id = "atelier-gallery-link";
    link.className = "atl-header-link";
    link.href = "/gallery";
    link.title = "Every image and clip you made, searchable";
    const label = document.createElement("span");
    label.textContent = "Gallery";
    link.append(icon(), label);
    group.prepend(link);
  }

  function imageLinks() {
    for (const top of document.querySelectorAll(".atl-tile > .atl-top")) {
      const imageId = top.parentElement.dataset.image;
      if (!imageId) continue;
      let link = top.querySelector(":scope > .atl-gallery");
      if (!link) {
        link = document.createElement("a");
        link.className = "atl-btn atl-gallery";
        link.setAttribute("aria-label", "Open in gallery");
        link.title = "Open in the gallery: its full record and lineage";
        link.appendChild(icon());
        link.addEventListener("click", (event) => event.stopPropagation());
        top.appendChild(link);
      }
      const href = `/gallery?image=${encodeURIComponent(imageId)}`;
      if (link.getAttribute("href") !== href) link.setAttribute("href", href);
    }
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      headerLink();
      imageLinks();
    });
  }

  function start() {
    new MutationObserver(schedule).observe(document.body, { childList: true, subtree: true });
    schedule();
  }

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
