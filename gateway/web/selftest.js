// The self-test page: pulse a door's relay, watch its lock and contact, see the decisions there.
(function () {
  "use strict";
  const MAX_DECISIONS = 20;
  const $ = (id) => document.getElementById(id);
  const text = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  let doors = [];
  let decisions = [];  // newest first, every door's; the list shows the chosen door's

  function setState(id, label, cls) { $(id).textContent = label; $(id).className = cls; }

  function showDoor() {
    const d = doors.find((x) => x.id === $("door").value);
    if (!d) return;
    setState("lock-state", d.unlocked === null ? "unknown" : d.unlocked ? "unlocked" : "locked",
      d.unlocked ? "on" : "off");
    setState("contact-state", d.open === null ? "unknown" : d.open ? "open" : "closed", d.open ? "warn" : "off");
    setState("mode-state", d.mode, "");
    setState("relay-state", d.relay_energised ? "energised" : "off", "");
    setState("alarm-state", d.alarms.length ? d.alarms.join(", ") : "none", d.alarms.length ? "bad" : "off");
  }

  function showDecisions() {
    const door = $("door").value;
    const rows = decisions.filter((e) => e.data.door === door);
    $("decisions").innerHTML = rows.length ? rows.map((e) => {
      const granted = e.type === "access.granted";
      return `<li class="${granted ? "granted" : "denied"}">${text(new Date(e.at).toLocaleTimeString())}
        <b>${granted ? "granted" : "denied"}</b> (${text(e.data.reason)})${e.explanation ? `<br><small>${text(e.explanation)}</small>` : ""}</li>`;
    }).join("") : "";
  }

  function setDoors(list) {
    doors = list;
    const select = $("door");
    if (!select.options.length) {
      select.innerHTML = doors.map((d) => `<option value="${text(d.id)}">${text(d.name)} (${text(d.id)})</option>`).join("");
      const wanted = new URLSearchParams(location.search).get("door");
      if (wanted && doors.some((d) => d.id === wanted)) select.value = wanted;
    }
    showDoor();
  }

  function connect() {
    const source = new EventSource("/api/stream");
    source.addEventListener("open", () => { $("live").textContent = "live"; $("live").className = "on"; });
    source.addEventListener("error", () => {
      $("live").textContent = "reconnecting…"; $("live").className = "warn";
      adminFetch("/api/admin/session").catch(() => {});  // to the login page if the session ended
    });
    source.addEventListener("snapshot", (ev) => {
      const s = JSON.parse(ev.data);
      $("simulator").hidden = !["simulated", "virtual"].includes(s.backend);
      setDoors(s.doors);
    });
    source.addEventListener("doors", (ev) => setDoors(JSON.parse(ev.data)));
    source.addEventListener("event", (ev) => {
      const e = JSON.parse(ev.data);
      if (e.type !== "access.granted" && e.type !== "access.denied") return;
      decisions = [e, ...decisions].slice(0, MAX_DECISIONS * 4);
      showDecisions();
    });
  }

  $("door").addEventListener("change", () => { showDoor(); showDecisions(); $("pulse-result").textContent = ""; });
  $("pulse").addEventListener("click", async () => {
    const door = $("door").value;
    $("pulse").disabled = true;
    $("pulse-result").textContent = "pulsing…"; $("pulse-result").className = "";
    try {
      const r = await adminFetch(`/api/doors/${encodeURIComponent(door)}/pulse`, {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({seconds: Number($("seconds").value)})});
      const body = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
      if (body.error) { $("pulse-result").textContent = body.error; $("pulse-result").className = "bad"; return; }
      $("pulse-result").textContent = body.confirmed
        ? "the board confirmed the relay" : "the board did not confirm the relay (not wired here, lockdown, or no answer)";
      $("pulse-result").className = body.confirmed ? "on" : "bad";
    } catch (err) {
      $("pulse-result").textContent = String(err); $("pulse-result").className = "bad";
    } finally {
      $("pulse").disabled = false;
    }
  });
  $("present-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await adminFetch(`/api/simulator/doors/${encodeURIComponent($("door").value)}/present`, {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({credential: $("present-credential").value})});
    const body = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
    $("present-result").innerHTML = body.error ? `<span class="denied">${text(body.error)}</span>`
      : `<span class="${body.decision.granted ? "granted" : "denied"}">${text(body.explanation)}</span>`;
  });
  $("logout").addEventListener("click", (ev) => { ev.preventDefault(); adminLogout(); });
  connect();
})();
