// Atelier's additions to Chainlit's UI. Chainlit takes one custom_js: this loads one
// script per feature (same origin, so the Content-Security-Policy's script-src 'self'
// allows them), in order.
(function () {
  for (const name of ["branding", "images", "gallery-link"]) {
    const script = document.createElement("script");
    script.src = `/public/${name}.js`;
    script.async = false;
    document.head.appendChild(script);
  }
})();
