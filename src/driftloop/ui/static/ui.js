// driftloop dashboard: the live parts only (the pages render without script).
"use strict";
(function () {
  const base = document.body.dataset.base;

  // Now: the serving tile refreshes itself from the server's metrics.
  const serving = document.getElementById("serving");
  if (serving) {
    setInterval(async () => {
      try {
        const answer = await fetch(serving.dataset.live);
        if (answer.ok) {
          const box = document.getElementById("serving");
          box.outerHTML = await answer.text();
        }
      } catch (e) { /* the next tick tries again */ }
    }, 3000);
  }

  // Events: new events appear at the top as they are logged.
  const events = document.getElementById("events");
  if (events) {
    const body = events.querySelector("tbody");
    const live = document.getElementById("live");
    const cell = (text, href) => {
      const td = document.createElement("td");
      if (href) {
        const a = document.createElement("a");
        a.href = href; a.textContent = text; td.appendChild(a);
      } else { td.textContent = text; }
      return td;
    };
    const poll = async () => {
      const query = new URLSearchParams({ after: events.dataset.after });
      if (events.dataset.type) query.set("type", events.dataset.type);
      if (events.dataset.batch) query.set("batch", events.dataset.batch);
      try {
        const answer = await fetch(`${base}/events/rows?${query}`);
        if (!answer.ok) throw new Error(answer.status);
        const found = (await answer.json()).events;
        for (const e of found.reverse()) {  // oldest of the new first, each on top
          const tr = document.createElement("tr");
          tr.dataset.id = e.id; tr.className = "new";
          tr.append(cell(e.id), cell(e.ts), cell(e.type),
            cell(e.batch_id, e.batch_id ? `${base}/data/${e.batch_id}` : null),
            cell(e.version), cell(e.detail));
          tr.lastChild.className = "detail";
          body.prepend(tr);
          events.dataset.after = Math.max(Number(events.dataset.after), e.id);
        }
        live.classList.remove("stale");
      } catch (e) { live.classList.add("stale"); }
    };
    setInterval(poll, 1500);
  }

  // Models: promote and roll back, with a reason, as 'driftloop models' does.
  for (const form of document.querySelectorAll("form[data-action]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = document.getElementById("action-result");
      const body = Object.fromEntries(new FormData(form).entries());
      const headers = { "Content-Type": "application/json" };
      const token = document.getElementById("token").value;
      if (token) headers.Authorization = `Bearer ${token}`;
      result.className = ""; result.textContent = "working...";
      try {
        const answer = await fetch(form.dataset.action, { method: "POST", headers, body: JSON.stringify(body) });
        const found = await answer.json();
        if (!answer.ok) {
          result.className = "error";
          result.textContent = typeof found.detail === "string" ? found.detail : JSON.stringify(found.detail);
          return;
        }
        result.className = "done";
        result.textContent = `champion: v${found.version} (was v${found.champion_version}); ${found.decision} by ${found.actor}: ${found.reason}`;
        setTimeout(() => window.location.reload(), 1200);
      } catch (e) {
        result.className = "error"; result.textContent = String(e);
      }
    });
  }
})();
