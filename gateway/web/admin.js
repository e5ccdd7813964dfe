// Shared by the admin pages: fetch with the session's CSRF token; to the login page on 401, to
// the account page when the site requires two-factor authentication this session has not set up.
(function () {
  "use strict";
  let csrf = sessionStorage.getItem("luckey_csrf");
  async function adminFetch(url, init = {}) {
    const headers = new Headers(init.headers || {});
    if (csrf && !["GET", "HEAD"].includes((init.method || "GET").toUpperCase())) {
      headers.set("X-CSRF-Token", csrf);
    }
    const response = await fetch(url, {...init, headers, credentials: "same-origin"});
    if (response.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("log in first");
    }
    if (response.status === 403 && location.pathname !== "/account") {
      // The site requires two-factor authentication and this session has not set it up.
      const body = await response.clone().json().catch(() => ({}));
      if (body.need === "totp_setup") {
        location.href = "/account";
        throw new Error("set up two-factor authentication first");
      }
    }
    return response;
  }
  async function logout() {
    await fetch("/api/admin/logout", {method: "POST", credentials: "same-origin"});
    sessionStorage.removeItem("luckey_csrf");
    location.href = "/login";
  }
  // A page opened in a new tab has no token yet: the session answers with it.
  if (!csrf) {
    fetch("/api/admin/session", {credentials: "same-origin"})
      .then((r) => (r.ok ? r.json() : null))
      .then((s) => { if (s && s.csrf_token) { csrf = s.csrf_token; sessionStorage.setItem("luckey_csrf", csrf); } })
      .catch(() => {});
  }
  window.adminFetch = adminFetch;
  window.adminLogout = logout;
})();
