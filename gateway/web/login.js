// The login page: creates the admin with the setup code, or logs in; then back where we came from.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const next = () => {
    // Only a page of this gateway: resolve it as the browser will, then compare the origin.
    const target = new URL(new URLSearchParams(location.search).get("next") || "/", location.origin);
    return target.origin === location.origin ? target.pathname + target.search + target.hash : "/";
  };
  async function submit(form, url, fields) {
    const body = {};
    for (const [key, id] of Object.entries(fields)) body[key] = $(id).value;
    if (form === "login" && !$("login_code_label").hidden) body.code = $("login_code").value.replace(/\s/g, "");
    const response = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const answer = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (!response.ok) {
      $(`${form}_error`).textContent = answer.error;
      if (answer.need === "totp") {
        // The password was right; the account also takes the authenticator's code.
        $("login_code_label").hidden = false;
        $("login_code").required = true;
      }
      if (form === "login") $("login_code").value = "";
      const field = answer.field && ($(`${form}_${answer.field}`) || $(answer.field));
      if (field) field.focus();
      return;
    }
    sessionStorage.setItem("luckey_csrf", answer.csrf_token);
    location.href = next();
  }
  $("setup").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit("setup", "/api/admin/setup",
      {setup_code: "setup_code", username: "setup_username", password: "setup_password"});
  });
  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submit("login", "/api/admin/login", {username: "login_username", password: "login_password"});
  });
  fetch("/api/admin/state").then((r) => r.json()).then((state) => {
    $(state.setup_required ? "setup" : "login").hidden = false;
  });
})();
