// Operator views: who can open a door at an instant; what a user can open, and when.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);

  function el(tag, value, cls) {
    const node = document.createElement(tag);
    if (value !== undefined && value !== null) node.textContent = value;
    if (cls) node.className = cls;
    return node;
  }

  // A datetime-local value is the browser's wall clock; the API wants an instant with an offset.
  function atParam(input) {
    if (!input.value) return "";
    const when = new Date(input.value);
    return isNaN(when) ? "" : when.toISOString();
  }

  async function getJson(url) {
    const response = await adminFetch(url);
    const body = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  async function fillLists() {
    try {
      const doors = await getJson("/api/doors");
      $("door-ids").replaceChildren(...doors.map((d) => { const o = el("option"); o.value = d.id; o.label = d.name; return o; }));
      const users = await getJson("/api/users?limit=1000");
      $("user-ids").replaceChildren(...users.users.map((u) => { const o = el("option"); o.value = u.id; o.label = u.name; return o; }));
    } catch (err) {
      $("who-error").textContent = err.message;
    }
  }

  function decisionCell(holder) {
    const cell = el("td");
    const verdict = holder.granted
      ? `granted${holder.rule ? " by " + holder.rule : ""}`
      : `denied: ${holder.reason}`;
    cell.append(el("div", verdict, holder.granted ? "granted" : "denied"));
    if (!holder.granted) cell.append(el("div", holder.explanation, "why"));
    return cell;
  }

  async function whoCan(event) {
    event.preventDefault();
    $("who-error").textContent = "";
    const door = $("who-door").value.trim();
    const params = new URLSearchParams();
    const at = atParam($("who-at"));
    if (at) params.set("at", at);
    if ($("who-denied").checked) params.set("denied", "1");
    try {
      const body = await getJson(`/api/doors/${encodeURIComponent(door)}/who-can?${params}`);
      const holders = [...body.granted, ...(body.denied || [])];
      $("who-summary").textContent =
        `"${body.door_name}" (${body.door}) at ${body.local}, mode ${body.mode}: ` +
        `${body.granted.length} credential(s) open it.`;
      const rows = holders.map((h) => {
        const row = el("tr");
        row.append(el("td", h.user), el("td", h.user_name || "?"), el("td", h.credential), el("td", h.kind), decisionCell(h));
        return row;
      });
      $("who-rows").replaceChildren(...rows);
      $("who-table").hidden = rows.length === 0;
    } catch (err) {
      $("who-error").textContent = err.message;
      $("who-table").hidden = true;
      $("who-summary").textContent = "";
    }
  }

  async function canOpen(event) {
    event.preventDefault();
    $("user-error").textContent = "";
    const user = $("user-id").value.trim();
    const params = new URLSearchParams();
    const at = atParam($("user-at"));
    if (at) params.set("at", at);
    try {
      const body = await getJson(`/api/users/${encodeURIComponent(user)}/can-open?${params}`);
      const opened = body.doors.filter((d) => d.granted).length;
      $("user-summary").textContent =
        `"${body.user.name}" (${body.user.id}, ${body.user.status}) at ${body.local}: ` +
        `opens ${opened} of ${body.doors.length} door(s).`;
      const rows = body.doors.map((d) => {
        const row = el("tr");
        const credentials = el("td");
        for (const c of d.credentials) {
          const line = el("div");
          line.append(el("span", `${c.credential} (${c.kind}): `), el("span", c.granted ? "granted" : c.reason, c.granted ? "granted" : "denied"));
          credentials.append(line);
        }
        if (!d.credentials.length) credentials.textContent = "no credential";
        const rules = el("td");
        for (const r of d.rules) rules.append(el("div", `${r.rule}: ${r.when}`));
        if (!d.rules.length) rules.textContent = "no rule";
        row.append(
          el("td", `${d.door_name} (${d.door}), mode ${d.mode}`),
          el("td", d.granted ? "yes" : "no", d.granted ? "granted" : "denied"),
          credentials,
          rules,
        );
        return row;
      });
      $("user-rows").replaceChildren(...rows);
      $("user-table").hidden = rows.length === 0;
    } catch (err) {
      $("user-error").textContent = err.message;
      $("user-table").hidden = true;
      $("user-summary").textContent = "";
    }
  }

  $("who-form").addEventListener("submit", whoCan);
  $("user-form").addEventListener("submit", canOpen);
  fillLists();
})();
