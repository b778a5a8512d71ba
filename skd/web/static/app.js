// The annotation page: judge the current card with the keyboard; judgements are queued in localStorage and
// sent until the server has stored them (it answers 503 while a long job holds the corpus), so nothing typed
// is lost by a busy corpus, a closed tab or a restarted server. Each judgement carries an id: sent twice, it is
// stored once.
"use strict";
(function () {
  const cards = document.getElementById("cards");
  if (!cards) return;
  const token = document.querySelector('meta[name="skd-token"]').content;
  const annotator = cards.dataset.annotator, sample = cards.dataset.sample;
  // one queue per corpus: another corpus served later on the same address must not receive this one's
  const KEY = "skd-queue:" + location.host + ":" + document.querySelector('meta[name="skd-corpus"]').content;
  const progress = document.getElementById("progress"), bar = document.getElementById("bar");
  const queueNote = document.getElementById("queue");
  let done = Number(progress.dataset.done), history = [], flushing = false, lastTyped = 0;
  const all = Array.from(cards.querySelectorAll(".card"));
  let pos = 0;

  const load = () => JSON.parse(localStorage.getItem(KEY) || "[]");
  const save = (q) => localStorage.setItem(KEY, JSON.stringify(q));
  function show() {
    all.forEach((c, k) => c.classList.toggle("current", k === pos));
    document.getElementById("finished").hidden = pos < all.length;
    progress.textContent = `${done} of ${progress.dataset.size} judged.`;
    bar.value = done;
  }
  async function flush() {
    if (flushing) return;  // one request at a time: a batch is never overtaken by a later one
    flushing = true;
    try { await send(); } finally { flushing = false; }
  }
  async function send() {
    const q = load();
    if (!q.length) { queueNote.textContent = ""; return; }
    const byPerson = {};
    q.forEach((j) => (byPerson[j.annotator + "\u0000" + j.sample] ||= []).push(j));
    for (const [key, js] of Object.entries(byPerson)) {
      const [who, smp] = key.split("\u0000");
      try {
        const r = await fetch("/api/judgements", {method: "POST", headers: {"Content-Type": "application/json",
          "X-SKD-Token": token}, body: JSON.stringify({annotator: who, sample: smp,
          judgements: js.map((j) => ({item_id: j.item_id, label: j.label, client_id: j.client_id,
                                      typed_at: j.typed_at}))})});
        if (r.ok || r.status === 422) {  // stored, or malformed (said once): either way not resent
          const sent = new Set(js.map((j) => j.client_id));
          save(load().filter((j) => !sent.has(j.client_id)));
          const data = await r.json();
          if (!r.ok) queueNote.textContent = "refused: " + JSON.stringify(data.detail || "").slice(0, 200);
          else redraw(data);
        } else {
          queueNote.textContent = `${load().length} judgement(s) waiting: ${(await r.json()).error || r.status}`;
        }
      } catch (e) {
        queueNote.textContent = `${load().length} judgement(s) waiting: server not reachable`;
      }
    }
    if (!load().length) queueNote.textContent = "";
  }
  // the annotator and agreement tables as the server now has them; text only (names are anyone's input)
  const count = (v) => Number(v).toLocaleString("en-US");
  const ratio = (v) => (v === null || v === undefined ? "\u2013" : String(Number(Number(v).toPrecision(4))));
  function fill(id, rows, cells) {
    const t = document.getElementById(id);
    if (!t || !rows) return;
    Array.from(t.rows).slice(1).forEach((row) => row.remove());
    rows.forEach((row) => { const tr = t.insertRow(); cells(row).forEach((v) => { tr.insertCell().textContent = v; }); });
  }
  function redraw(data) {
    fill("annotators", data.people, (p) => [p.annotator, count(p.judged), count(p.accepted), count(p.rejected),
                                            count(p.skipped), p.last]);
    fill("agreement", data.agreement, (g) => [g.a + " \u00b7 " + g.b, count(g.items), ratio(g.agreement),
                                              ratio(g.kappa)]);
  }
  function judge(label) {
    if (pos >= all.length) return;
    const item = all[pos].dataset.item;
    const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
    lastTyped = Math.max(Date.now(), lastTyped + 1);  // strictly increasing: the later judgement wins
    save(load().concat([{annotator, sample, item_id: item, label, client_id: id, typed_at: lastTyped}]));
    history.push([pos, id]); pos += 1; done += 1; show(); flush();
  }
  function undo() {
    if (!history.length) return;
    const [back, id] = history.pop();
    save(load().filter((j) => j.client_id !== id));  // not sent yet: dropped; sent: judging again replaces it
    pos = back; done -= 1; show();
  }
  document.addEventListener("keydown", (e) => {
    if (e.target.closest("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
    const act = {a: () => judge(1), r: () => judge(0), s: () => judge(null), u: undo}[e.key];
    if (act) { e.preventDefault(); act(); }
  });
  show(); flush(); setInterval(flush, 2000);
})();
