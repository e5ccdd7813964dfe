// The setup wizard: claim, clock check, and links to door mapping and the self-test.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  async function refresh() {
    const [state, session] = await Promise.all(
      ["/api/setup", "/api/admin/session"].map((u) => adminFetch(u).then((r) => r.json())));
    $("admin-state").textContent = session.username
      ? `Logged in as ${session.username}.` : "Using the gateway from the gateway itself.";
    const p = state.provisioning;
    $("claim-state").textContent = p.state === "claimed"
      ? `Claimed as ${p.gateway_id}${state.cloud_link ? "; the cloud link is running." : "; restart to start syncing."}`
      : `Not claimed yet. Device fingerprint: ${p.device_fingerprint || "made at the first claim"}.`;
    const gateway = new Date(state.now);
    const skew = Math.round((Date.now() - gateway.getTime()) / 1000);
    $("clock").textContent = gateway.toISOString();
    $("browser-clock").textContent = new Date().toISOString();
    $("skew").textContent = Math.abs(skew) > 60
      ? `The gateway's clock is ${Math.abs(skew)} s ${skew > 0 ? "behind" : "ahead of"} this browser: check its network time (NTP) before relying on schedules.`
      : "The clocks agree.";
    $("skew").className = Math.abs(skew) > 60 ? "warn" : "";
    $("site-tz").textContent = state.site.timezone;
    $("door-count").textContent = `${state.doors} doors in the site data, ${state.backend} hardware`;
  }
  $("claim-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const id of ["claim-url-error", "claim-code-error"]) $(id).textContent = "";
    const r = await adminFetch("/api/provisioning/claim", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({cloud_url: $("claim-url").value, claim_code: $("claim-code").value})});
    const body = await r.json();
    if (!r.ok) {
      $(body.field === "cloud_url" ? "claim-url-error" : "claim-code-error").textContent = body.error;
      return;
    }
    $("claim-state").textContent = `Claimed as ${body.gateway_id}; the gateway restarts to start syncing.`;
    setTimeout(refresh, 4000);
  });
  refresh();
})();
