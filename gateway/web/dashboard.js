// The dashboard: one snapshot, then live updates from the gateway's event stream.
(function () {
  "use strict";
  const MAX_EVENTS = 30;
  const $ = (id) => document.getElementById(id);
  const text = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  let events = [];

  function age(seconds) {
    const s = Math.round(seconds);
    if (s < 120) return `${s} s`;
    if (s < 7200) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.round(s / 3600)} h`;
    return `${Math.round(s / 86400)} days`;
  }

  function showHealth(h) {
    $("site").textContent = h.site;
    $("cache").textContent = `cache v${h.cache.version} · ${h.cache.counts.users} users`;
    const c = h.cloud;
    $("cloud").innerHTML = !c.enabled ? `<span class="off">not configured (local only)</span>`
      : c.online ? `<span class="ok">online</span>`
      : `<span class="bad">offline for ${text(age(c.offline_s))}</span>`;
    $("sync").innerHTML = h.cache.needs_resync
      ? `<span class="warn">v${text(h.cache.version)}, waiting for a full snapshot${h.cache.reset_reason ? ` (${text(h.cache.reset_reason)})` : ""}</span>`
      : `v${text(h.cache.version)} · ${text(h.cache.counts.users)} users · ${text(h.cache.counts.doors)} doors`;
    const dropped = Object.entries(h.outbox.dropped).filter(([, n]) => n > 0);
    $("outbox").innerHTML = `${text(h.outbox.rows)} events waiting` + (dropped.length
      ? ` · <span class="bad">dropped ${text(dropped.map(([p, n]) => `${n} ${p}`).join(", "))}</span>` : "");
    const o = h.officernd;
    $("officernd").innerHTML = !o.activated ? `<span class="off">not activated</span>`
      : `<span class="${o.state === "error" ? "bad" : o.state === "ok" ? "ok" : "warn"}">${text(o.state ?? "not running")}</span>`;
    $("boards").innerHTML = h.boards.length ? h.boards.map((b) => `<tr><td>${text(b.address)}</td>
      <td class="${b.online ? "ok" : "bad"}">${b.online ? "online" : "offline"}</td>
      <td>${text(new Date(b.since).toLocaleString())}</td></tr>`).join("")
      : `<tr><td colspan="3"><small>no boards reported</small></td></tr>`;
  }

  function showDoors(doors) {
    $("doors").innerHTML = doors.map((d) => `<tr><td>${text(d.name)}</td><td>${text(d.mode)}</td>
      <td class="${d.unlocked ? "on" : "off"}">${d.unlocked === null ? "unknown" : d.unlocked ? "unlocked" : "locked"}</td>
      <td>${d.open === null ? "–" : d.open ? "open" : "closed"}</td><td class="bad">${text(d.alarms.join(", "))}</td>
      <td>${text(d.min_assurance)}</td></tr>`).join("");
    const select = $("door");
    if (!select.options.length) {
      select.innerHTML = doors.map((d) => `<option value="${text(d.id)}">${text(d.name)}</option>`).join("");
    }
  }

  function showEvents() {
    $("events").innerHTML = events.map((e) => `<tr><td>${text(e.seq)}</td><td>${text(new Date(e.at).toLocaleTimeString())}</td>
      <td class="${e.type === "access.granted" ? "granted" : e.type === "access.denied" ? "denied" : ""}">${text(e.type)}</td>
      <td>${e.explanation ? text(e.explanation) : text(Object.entries(e.data).filter(([, v]) => v !== null).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" "))}</td></tr>`).join("");
  }

  async function loadEvents() {
    const r = await adminFetch(`/api/events?limit=${MAX_EVENTS}`);
    if (r.ok) { events = await r.json(); showEvents(); }
  }

  function connect() {
    const source = new EventSource("/api/stream");
    source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "ok"; });
    source.addEventListener("error", () => {
      // EventSource reconnects by itself; a refused stream (e.g. logged out) is checked here.
      $("live").textContent = "reconnecting…"; $("live").className = "warn";
      adminFetch("/api/admin/session").catch(() => {});
    });
    source.addEventListener("snapshot", (ev) => {
      const s = JSON.parse(ev.data);
      showDoors(s.doors); showHealth(s.health);
      loadEvents().catch(() => {});  // what happened while disconnected
    });
    source.addEventListener("doors", (ev) => showDoors(JSON.parse(ev.data)));
    source.addEventListener("health", (ev) => showHealth(JSON.parse(ev.data)));
    source.addEventListener("event", (ev) => {
      const e = JSON.parse(ev.data);
      if (events.some((x) => x.seq === e.seq)) return;
      events = [e, ...events].slice(0, MAX_EVENTS);
      showEvents();
    });
  }

  $("present").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await adminFetch(`/api/simulator/doors/${encodeURIComponent($("door").value)}/present`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({credential: $("credential").value})});
    const body = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
    $("result").innerHTML = body.error ? `<span class="denied">${text(body.error)}</span>`
      : `<span class="${body.decision.granted ? "granted" : "denied"}">${text(body.explanation)}</span>`;
  });
  // The CSV export is a plain form (a download): this only proposes a range and checks it.
  const day = (d) => `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  const today = new Date();
  if (!$("export-from").value) $("export-from").value = day(new Date(today.getFullYear(), today.getMonth(), 1));
  if (!$("export-to").value) $("export-to").value = day(new Date(today.getFullYear(), today.getMonth(), today.getDate() + 1));
  const checkRange = () => $("export-to").setCustomValidity(
    $("export-from").value && $("export-to").value && $("export-to").value <= $("export-from").value
      ? "'To' must be after 'From' (the 'To' day is not included)" : "");
  $("export-from").addEventListener("input", checkRange);
  $("export-to").addEventListener("input", checkRange);
  $("logout").addEventListener("click", (ev) => { ev.preventDefault(); adminLogout(); });
  connect();
})();
