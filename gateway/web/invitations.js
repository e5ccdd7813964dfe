// The invitations page: create a guest invitation (its code shown once), list and delete them.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const DAYS = [["mon", "Mon"], ["tue", "Tue"], ["wed", "Wed"], ["thu", "Thu"], ["fri", "Fri"], ["sat", "Sat"], ["sun", "Sun"]];
  let doorNames = {};

  function text(tag, value, cls) {
    const el = document.createElement(tag);
    el.textContent = value;
    if (cls) el.className = cls;
    return el;
  }

  function checkbox(name, value, caption, checked) {
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.name = name;
    box.value = value;
    box.checked = checked;
    label.append(box, document.createTextNode(caption));
    return label;
  }

  function checked(name) {
    return [...document.querySelectorAll(`input[name="${name}"]:checked`)].map((b) => b.value);
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  // A datetime-local value ("2026-12-01T09:00") as ISO-8601 with this browser's UTC offset.
  function withOffset(value) {
    if (!value) return null;
    const at = new Date(value);
    if (Number.isNaN(at.getTime())) return value;
    const minutes = -at.getTimezoneOffset();
    const sign = minutes >= 0 ? "+" : "-";
    const abs = Math.abs(minutes);
    return `${value.length === 16 ? value + ":00" : value}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
  }

  function localInput(date) {
    return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
  }

  function shown(iso) {
    return new Date(iso).toLocaleString([], {dateStyle: "medium", timeStyle: "short"});
  }

  async function loadDoors() {
    const box = $("f-doors");
    try {
      const response = await adminFetch("/api/doors");
      if (!response.ok) throw new Error((await response.json()).error || response.statusText);
      const doors = await response.json();
      doorNames = Object.fromEntries(doors.map((d) => [d.id, d.name]));
      for (const door of doors) box.append(checkbox("door", door.id, `${door.name} (${door.id})`, false));
      if (!doors.length) box.append(text("small", "this site has no doors"));
    } catch (err) {
      $("err-doors").textContent = "cannot load the doors: " + err.message;
    }
  }

  function clearErrors() {
    for (const el of document.querySelectorAll("#create-form .error")) el.textContent = "";
  }

  function body() {
    const out = {
      name: $("f-name").value.trim(),
      doors: checked("door"),
      valid_from: withOffset($("f-valid_from").value),
      valid_until: withOffset($("f-valid_until").value),
      max_devices: Number($("f-max_devices").value),
    };
    const days = checked("day");
    if (days.length !== DAYS.length) out.days = days; // all seven: every day (left out)
    const start = $("f-slot-start").value;
    const end = $("f-slot-end").value;
    if (start || end) out.time_slot = {start, end};
    return out;
  }

  async function create(event) {
    event.preventDefault();
    clearErrors();
    $("code-box").hidden = true;
    $("create").disabled = true;
    try {
      const response = await adminFetch("/api/invitations", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body()),
      });
      const answer = await response.json();
      if (!response.ok) {
        const field = (answer.field || "").split(/[.[]/)[0];
        ($("err-" + field) || $("err-form")).textContent = answer.error;
        return;
      }
      $("code").textContent = answer.code;
      $("code-guest").textContent = answer.name;
      $("copied").textContent = "";
      $("code-box").hidden = false;
      $("code-box").scrollIntoView({block: "center"});
      $("create-form").reset();
      defaults();
      await loadList();
    } catch (err) {
      $("err-form").textContent = "not created: " + err.message;
    } finally {
      $("create").disabled = false;
    }
  }

  async function copyCode() {
    const code = $("code").textContent;
    try {
      await navigator.clipboard.writeText(code);
      $("copied").textContent = "copied";
    } catch (err) {
      // No clipboard (plain HTTP off loopback): select it for a manual copy.
      const range = document.createRange();
      range.selectNodeContents($("code"));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      $("copied").textContent = "selected: press Ctrl+C";
    }
  }

  function doorsText(invitation) {
    const names = invitation.doors.map((d) => doorNames[d] || d);
    for (const tag of invitation.door_tags) names.push(`doors tagged ${tag}`);
    return names.join(", ");
  }

  function whenText(invitation) {
    let out = `${shown(invitation.valid_from)} – ${shown(invitation.valid_until)}`;
    if (invitation.days) out += ` · ${invitation.days.join(", ")}`;
    if (invitation.time_slot) out += ` · ${invitation.time_slot.start}–${invitation.time_slot.end}`;
    return out;
  }

  async function remove(invitation) {
    if (!confirm(`Delete the invitation of ${invitation.name}? Its phones stop opening doors at once.`)) return;
    try {
      const response = await adminFetch(`/api/invitations/${encodeURIComponent(invitation.id)}`, {method: "DELETE"});
      if (!response.ok && response.status !== 404) {
        throw new Error((await response.json()).error || response.statusText);
      }
    } catch (err) {
      $("list-error").textContent = "not deleted: " + err.message;
      return;
    }
    await loadList();
  }

  async function loadList() {
    let listed;
    try {
      const response = await adminFetch("/api/invitations");
      if (!response.ok) throw new Error((await response.json()).error || response.statusText);
      listed = (await response.json()).invitations;
      $("list-error").textContent = "";
    } catch (err) {
      $("list-error").textContent = "cannot load the invitations: " + err.message;
      return;
    }
    const rows = $("list");
    rows.replaceChildren();
    const now = Date.now();
    for (const invitation of listed) {
      const row = document.createElement("tr");
      if (new Date(invitation.valid_until).getTime() <= now) row.className = "ended";
      const used = `${invitation.devices_used} / ${invitation.max_devices}`;
      const del = text("button", "Delete");
      del.type = "button";
      del.addEventListener("click", () => remove(invitation));
      const cell = document.createElement("td");
      cell.append(del);
      row.append(
        text("td", invitation.name),
        text("td", doorsText(invitation)),
        text("td", whenText(invitation)),
        text("td", used, invitation.devices_used >= invitation.max_devices ? "full" : ""),
        cell,
      );
      rows.append(row);
    }
    if (!listed.length) {
      const row = document.createElement("tr");
      const cell = text("td", "No invitations yet.");
      cell.colSpan = 5;
      row.append(cell);
      rows.append(row);
    }
  }

  function defaults() {
    const start = new Date();
    start.setSeconds(0, 0);
    $("f-valid_from").value = localInput(start);
    $("f-valid_until").value = localInput(new Date(start.getTime() + 24 * 3600 * 1000));
    for (const box of document.querySelectorAll('input[name="day"]')) box.checked = true;
  }

  for (const [value, caption] of DAYS) $("f-days").append(checkbox("day", value, caption, true));
  $("tz").textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local";
  $("create-form").addEventListener("submit", create);
  $("copy").addEventListener("click", copyCode);
  defaults();
  loadDoors().then(loadList);
})();
