// The account page: two-factor authentication (TOTP) on or off, and setting it up.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const json = {"Content-Type": "application/json"};

  async function answer(response) {
    return response.json().catch(() => ({error: `HTTP ${response.status}`}));
  }

  function show(state) {
    $("status").textContent = state.enabled ? "on" : "off";
    $("status").className = state.enabled ? "on" : "off";
    $("who").textContent = state.username ? `(admin ${state.username})` : "";
    $("required").hidden = !state.restricted;
    $("links").hidden = state.restricted;  // every other page is closed to this session
    $("start").hidden = state.enabled || !state.username;
    // Turning it off is refused while the site requires it: offer it only where it works.
    $("disable").hidden = !state.enabled || state.required || !state.username;
    if (state.enabled) $("enrol").hidden = true;
    if (!state.username) $("error").textContent = "Log in as the admin to change two-factor authentication.";
  }

  async function refresh() {
    const response = await adminFetch("/api/admin/totp");
    if (response.ok) show(await answer(response));
  }

  $("start").addEventListener("click", async () => {
    $("error").textContent = "";
    const response = await adminFetch("/api/admin/totp", {method: "POST"});
    const body = await answer(response);
    if (!response.ok) { $("error").textContent = body.error; return; }
    $("secret").textContent = body.secret_grouped;
    $("uri").href = body.uri;
    $("enrol").hidden = false;
    $("start").hidden = true;
    $("confirm_code").focus();
  });

  async function send(form, method, url) {
    $(`${form}_error`).textContent = "";
    const response = await adminFetch(url, {method, headers: json,
      body: JSON.stringify({code: $(`${form}_code`).value.replace(/\s/g, "")})});
    const body = await answer(response);
    $(`${form}_code`).value = "";
    if (!response.ok) { $(`${form}_error`).textContent = body.error; return; }
    show(body);
  }

  $("confirm").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send("confirm", "POST", "/api/admin/totp/confirm");
  });
  $("disable").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send("disable", "DELETE", "/api/admin/totp");
  });
  $("logout").addEventListener("click", (ev) => { ev.preventDefault(); adminLogout(); });
  refresh();
})();
