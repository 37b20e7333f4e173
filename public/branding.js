// Atelier's login page on top of Chainlit's (loaded by public/atelier.js; no inline code,
// the Content-Security-Policy allows scripts from 'self' only).
//
// - The form asks for a username. Its label and placeholder are Chainlit translations
//   (.chainlit/translations, auth.login.form.email); the field keeps Chainlit's id
//   `email`, and the browser is told here that it holds a username, so password managers
//   fill the right thing and phones do not capitalise it.
// - A wrong password is said once, in the form: "Wrong username or password." is the
//   translation of the page's error, the 401's status text ("unauthorized" in
//   auth.login.errors). Chainlit's API client also toasts the server's raw answer
//   ("Unauthorized: credentialssignin"): that toast is hidden while the form shows its
//   error, and reworded where the form shows none (over HTTP/2 a response has no status
//   text, so the form has nothing to look up). Every other toast stays, the 429's "Too
//   many failed logins ... Try again in 15 minutes." (chat_app/login_middleware.py)
//   included.
(function () {
  "use strict";

  const RAW_WRONG_PASSWORD = /credentialssignin/i;
  const WRONG_PASSWORD = "Wrong username or password.";

  function onLoginPage() {
    return /\/login\/?$/.test(window.location.pathname);
  }

  function describeFields() {
    const username = document.getElementById("email");
    if (username && username.getAttribute("autocomplete") !== "username") {
      username.setAttribute("autocomplete", "username");
      username.setAttribute("autocapitalize", "none");
      username.setAttribute("spellcheck", "false");
    }
    const password = document.getElementById("password");
    if (password && !password.hasAttribute("autocomplete")) {
      password.setAttribute("autocomplete", "current-password");
    }
  }

  function fixRawToasts() {
    // A data attribute, not a class or a style: React does not own it, so a re-render
    // of the toast keeps it hidden.
    const formSaysIt = document.querySelector("form [role='alert']") !== null;
    for (const toast of document.querySelectorAll("[data-sonner-toast]")) {
      const reworded = toast.hasAttribute("data-atelier-reworded");
      if (!reworded && !RAW_WRONG_PASSWORD.test(toast.textContent || "")) continue;
      if (formSaysIt) {
        toast.setAttribute("data-atelier-hidden", "");
      } else if (!reworded) {
        // The toast can come before the form's error: reworded now, hidden once the
        // form says it too. Only the title's text changes; React keeps its nodes.
        toast.setAttribute("data-atelier-reworded", "");
        const title = toast.querySelector("[data-title]");
        if (title) title.textContent = WRONG_PASSWORD;
        else toast.setAttribute("data-atelier-hidden", "");
      }
    }
  }

  function update() {
    if (!onLoginPage()) return;
    describeFields();
    fixRawToasts();
  }

  new MutationObserver(update).observe(document.documentElement, {
    childList: true,
    subtree: true,
  });
  update();
})();
