// The door mapping page: list the site's doors, edit one door's mapping, save it.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const LABELS = {
    wiring: "Lock wiring (fail_secure: a strike, energised unlocks; fail_safe: a maglock, energised locks)",
    fallback: "When the gateway is silent, the board leaves the lock",
    contact: "Door contact type",
    has_contact: "The door has a contact",
    relock_on_close: "Relock as soon as the door closes",
    held_open_s: "Held-open alarm after (seconds)",
    unlock_s: "Unlock time (seconds; 0: the site data's)",
    rex_unlocks: "The exit button (REX) unlocks",
    rex_grace_s: "No forced-open alarm for this long after REX (seconds)",
    gpio_line: "GPIO line of the relay (gpio backend)",
    gpio_active_low: "GPIO line is active low",
    nfc_reader: "NFC reader of the gateway at this door (nfcpy path; empty: none)",
    ble_proximity: "Phones open at this proximity (touch, near, far, or dBm; empty: no)",
  };
  let state = null;
  let current = null;

  function text(tag, value, cls) {
    const el = document.createElement(tag);
    el.textContent = value;
    if (cls) el.className = cls;
    return el;
  }

  function boardText(door) {
    return door.board ? `${door.board.address} / slot ${door.board.slot}` : "—";
  }

  function renderList() {
    const body = $("door-list");
    body.replaceChildren();
    for (const door of state.doors) {
      const row = document.createElement("tr");
      row.dataset.door = door.id;
      if (current && current.id === door.id) row.className = "selected";
      row.append(
        text("td", door.id),
        text("td", door.name),
        text("td", boardText(door)),
        text("td", door.mapping.wiring),
        text("td", door.saved.length ? door.saved.join(", ") : "—", "saved"),
      );
      row.addEventListener("click", () => select(door.id));
      body.append(row);
    }
    $("restart-state").textContent = state.restart_pending
      ? "Saved settings are waiting for the gateway to restart."
      : "";
  }

  function input(field, value) {
    let el;
    if (field.kind === "enum") {
      el = document.createElement("select");
      for (const choice of field.choices) {
        const option = text("option", choice);
        option.value = choice;
        el.append(option);
      }
      el.value = value;
    } else if (field.kind === "bool") {
      el = document.createElement("input");
      el.type = "checkbox";
      el.checked = Boolean(value);
    } else if (field.kind === "number") {
      el = document.createElement("input");
      el.type = "number";
      el.step = "any";
      if (field.min !== null) el.min = field.min;
      if (field.max !== null) el.max = field.max;
      el.value = value;
    } else {
      el = document.createElement("input");
      el.type = "text";
      el.autocomplete = "off";
      el.value = value;
    }
    el.id = "f-" + field.name;
    el.name = field.name;
    return el;
  }

  function renderForm(door) {
    $("door-title").textContent = `${door.name} (${door.id})`;
    $("site-unlock").textContent = door.unlock_seconds;
    $("site-assurance").textContent = door.min_assurance;
    const box = $("fields");
    box.replaceChildren();
    for (const field of state.fields) {
      const el = input(field, door.mapping[field.name]);
      const label = document.createElement("label");
      const caption = LABELS[field.name] || field.name;
      if (field.kind === "bool") {
        label.className = "check";
        label.append(el, document.createTextNode(caption));
      } else {
        let hint = "";
        if (field.kind === "number") hint = ` (${field.min} to ${field.max})`;
        label.append(document.createTextNode(caption + hint), el);
      }
      if (door.saved.includes(field.name)) label.append(text("span", "set here", "saved"));
      const err = text("div", "", "error");
      err.id = "err-" + field.name;
      box.append(label, err);
    }
    const onBoards = ["board", "virtual"].includes(state.backend);
    $("board-fields").hidden = !onBoards;
    const address = $("f-board-address");
    const slot = $("f-board-slot");
    address.min = state.board_addresses[0];
    address.max = state.board_addresses[1];
    slot.min = 0;
    slot.max = state.doors_per_board - 1;
    address.value = door.board ? door.board.address : "";
    slot.value = door.board ? door.board.slot : "";
    clearErrors();
    $("door-panel").hidden = false;
  }

  function clearErrors() {
    for (const el of document.querySelectorAll("#door-form .error")) el.textContent = "";
  }

  function select(id) {
    current = state.doors.find((d) => d.id === id) || null;
    $("notice").textContent = "";
    if (current) renderForm(current);
    renderList();
  }

  function changes() {
    const body = {};
    for (const field of state.fields) {
      const el = $("f-" + field.name);
      let value;
      if (field.kind === "bool") value = el.checked;
      else if (field.kind === "number") value = el.value.trim() === "" ? null : Number(el.value);
      else value = el.value;
      if (value !== current.mapping[field.name]) body[field.name] = value;
    }
    if (!$("board-fields").hidden) {
      const address = $("f-board-address").value.trim();
      const slot = $("f-board-slot").value.trim();
      const was = current.board;
      if (address !== "" || slot !== "") {
        const board = {address: Number(address), slot: Number(slot)};
        if (!was || was.address !== board.address || was.slot !== board.slot) body.board = board;
      }
    }
    return body;
  }

  function showErrors(answer) {
    const errors = answer.errors || [{field: answer.field, error: answer.error}];
    for (const problem of errors) {
      const el = $("err-" + problem.field) || $("err-form");
      el.textContent = el.textContent ? el.textContent + " " + problem.error : problem.error;
    }
  }

  async function save(event) {
    event.preventDefault();
    if (!current) return;
    clearErrors();
    const notice = $("notice");
    notice.className = "";
    notice.textContent = "";
    const body = changes();
    if (!Object.keys(body).length) {
      notice.textContent = "nothing changed";
      return;
    }
    $("save").disabled = true;
    try {
      const response = await adminFetch(`/api/settings/doors/${encodeURIComponent(current.id)}`, {
        method: "PUT",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (!response.ok) {
        showErrors(answer);
        notice.className = "bad";
        notice.textContent = "not saved: " + answer.error;
        return;
      }
      notice.textContent = "saved; the gateway restarts to apply it";
      setTimeout(() => load(current && current.id), 3000);
    } catch (err) {
      notice.className = "bad";
      notice.textContent = "not saved: " + err.message;
    } finally {
      $("save").disabled = false;
    }
  }

  async function load(keep, attempt = 0) {
    try {
      const response = await adminFetch("/api/settings/doors");
      if (!response.ok) throw new Error((await response.json()).error || response.statusText);
      state = await response.json();
      $("list-error").textContent = "";
    } catch (err) {
      // While the gateway restarts it answers nothing for a moment: try again shortly.
      if (attempt < 5) {
        setTimeout(() => load(keep, attempt + 1), 1500);
        return;
      }
      $("list-error").textContent = "cannot load the doors: " + err.message;
      return;
    }
    if (keep) {
      const saved = $("notice").textContent;
      select(keep);
      $("notice").textContent = saved;
    } else {
      renderList();
    }
  }

  $("door-form").addEventListener("submit", save);
  load(null);
})();
