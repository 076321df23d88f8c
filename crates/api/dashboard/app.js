// Agora node dashboard. Plain JavaScript, no dependencies, no build step.
//
// It listens to the node's live feed (GET /v1/events, server-sent events) and renders each
// snapshot. The API token comes from this page's URL (`?token=`, put there by `agora dashboard`),
// is kept in sessionStorage for the tab, and is sent as `Authorization: Bearer` on POSTs only.
// Everything from the node is written with textContent: nothing it sends is parsed as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "agora-api-token";
  const params = new URLSearchParams(window.location.search);
  let token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  } else {
    token = sessionStorage.getItem(TOKEN_KEY);
  }

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function setText(id, value) {
    const e = $(id);
    const text = value === null || value === undefined || value === "" ? "–" : String(value);
    if (e && e.textContent !== text) e.textContent = text;
  }

  function short(id) {
    const s = String(id || "");
    return s.length > 16 ? s.slice(0, 8) + "…" + s.slice(-6) : s;
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US");
  }

  function fmtDuration(secs) {
    if (secs === null || secs === undefined) return "–";
    const s = Math.floor(secs % 60), m = Math.floor(secs / 60) % 60;
    const h = Math.floor(secs / 3600) % 24, d = Math.floor(secs / 86400);
    if (d > 0) return `${d} d ${h} h ${m} min`;
    if (h > 0) return `${h} h ${m} min ${s} s`;
    if (m > 0) return `${m} min ${s} s`;
    return `${s} s`;
  }

  function fmtTime(ms) {
    if (!ms) return "–";
    return new Date(ms).toLocaleTimeString();
  }

  function fmtBytes(b) {
    if (b === null || b === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0, v = Number(b);
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  // Keeps `tbody`'s rows in step with `items` by key, so that rows (and focus inside them)
  // survive updates. `build(item)` makes a row, `update(tr, item)` refreshes its cells.
  function syncRows(tbody, items, key, build, update) {
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) existing.set(tr.dataset.key, tr);
    const wanted = new Set();
    items.forEach((item, i) => {
      const k = String(key(item));
      wanted.add(k);
      let tr = existing.get(k);
      if (!tr) {
        tr = build(item);
        tr.dataset.key = k;
      }
      update(tr, item);
      if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] || null);
    });
    for (const [k, tr] of existing) if (!wanted.has(k)) tr.remove();
  }

  function cell(tr, cls, text, title) {
    let td = tr.querySelector(":scope > td." + cls.split(" ")[0]);
    if (!td) {
      td = el("td", { class: cls });
      tr.append(td);
    }
    const t = text === null || text === undefined || text === "" ? "–" : String(text);
    if (td.textContent !== t) td.textContent = t;
    if (title !== undefined && td.title !== title) td.title = title;
    return td;
  }

  // ---- node -----------------------------------------------------------------------------------
  function renderNode(st) {
    if (!st) return;
    setText("peer-id", st.peer_id);
    setText("head-peer-id", short(st.peer_id));
    setText("version", st.version);
    setText("uptime", fmtDuration(st.uptime_secs));
    $("uptime").dataset.seconds = st.uptime_secs;
    setText("connected-peers", st.connected_peers);
    setText("routing-table", st.routing_table_size);
    setText("price", fmtInt(st.price));
    const ul = $("listen-addresses");
    const addrs = (st.listen_addresses || []).map(String);
    if (ul.dataset.addrs !== addrs.join(" ")) {
      ul.replaceChildren(...addrs.map((a) => el("li", {}, a)));
      ul.dataset.addrs = addrs.join(" ");
    }
  }

  // ---- peers ----------------------------------------------------------------------------------
  function renderPeers(peers) {
    const list = peers || [];
    setText("peers-count", `(${list.length})`);
    $("peers-empty").hidden = list.length > 0;
    syncRows($("peers-body"), list, (p) => p.peer_id,
      (p) => el("tr", { "data-peer-id": p.peer_id }),
      (tr, p) => {
        cell(tr, "peer mono", short(p.peer_id), p.peer_id);
        cell(tr, "rtt num", p.rtt_ms === null || p.rtt_ms === undefined ? "–" : `${Number(p.rtt_ms).toFixed(1)} ms`);
        cell(tr, "reputation num", p.reputation);
        cell(tr, "route", p.relayed ? "relayed" : "direct");
        cell(tr, "agent", p.agent);
        cell(tr, "address mono", (p.addresses || [])[0]);
      });
  }

  // ---- wallet ---------------------------------------------------------------------------------
  function eventAmount(e) {
    return e.amount === undefined ? "" : fmtInt(e.amount);
  }

  function eventDetails(e) {
    const skip = new Set(["event", "amount"]);
    return Object.entries(e)
      .filter(([k]) => !skip.has(k))
      .map(([k, v]) => `${k.replace(/_/g, " ")} ${typeof v === "object" ? JSON.stringify(v) : short(v)}`)
      .join(", ");
  }

  function renderWallet(w, history) {
    $("wallet-disabled").hidden = !!w;
    $("wallet-body").hidden = !w;
    if (!w) return;
    setText("wallet-balance", fmtInt(w.balance));
    $("wallet-balance").dataset.value = w.balance;
    setText("wallet-stake", fmtInt(w.stake));
    setText("wallet-unbonding", fmtInt(w.unbonding));
    setText("wallet-escrow", `${fmtInt(w.escrowed)} in ${w.escrows} escrow${w.escrows === 1 ? "" : "s"}`);
    const roles = [];
    if (w.validator) roles.push("validator");
    if (w.can_bid) roles.push("worker (may bid)");
    if (w.banned) roles.push("banned");
    setText("wallet-role", roles.join(", ") || "none");
    setText("wallet-nonce", w.nonce);
    const items = (history || []).map((h, i) => ({ ...h, i }));
    syncRows($("wallet-history"), items, (h) => `${h.height}/${JSON.stringify(h.event)}`,
      (h) => el("tr", { "data-height": h.height }),
      (tr, h) => {
        cell(tr, "height num", h.height);
        cell(tr, "kind", String(h.event.event || "").replace(/_/g, " "));
        cell(tr, "amount num", eventAmount(h.event));
        cell(tr, "details", eventDetails(h.event));
      });
  }

  let pendingSend = null;

  function showSendResult(text, ok) {
    const p = $("send-result");
    p.textContent = text;
    p.dataset.ok = ok ? "true" : "false";
  }

  function reviewSend(ev) {
    ev.preventDefault();
    const to = $("send-to").value.trim();
    const amountText = $("send-amount").value.trim();
    if (!to) { showSendResult("Enter the receiver's peer id (what `agora id` prints).", false); $("send-to").focus(); return; }
    if (!/^[0-9]+$/.test(amountText) || Number(amountText) <= 0 || !Number.isSafeInteger(Number(amountText))) {
      showSendResult("The amount must be a whole number above 0.", false);
      $("send-amount").focus();
      return;
    }
    if (!token) {
      showSendResult("This page has no API token: open the link `agora dashboard` prints.", false);
      return;
    }
    pendingSend = { to, amount: Number(amountText) };
    $("send-confirm-text").textContent = `Send ${fmtInt(pendingSend.amount)} tokens to ${to}? This cannot be undone.`;
    $("send-confirm").hidden = false;
    $("send-confirm-button").focus();
  }

  function cancelSend() {
    pendingSend = null;
    $("send-confirm").hidden = true;
    $("send-review").focus();
  }

  async function confirmSend() {
    if (!pendingSend) return;
    const body = JSON.stringify(pendingSend);
    pendingSend = null;
    $("send-confirm").hidden = true;
    showSendResult("Sending…", true);
    try {
      const r = await fetch("/v1/wallet/transfer", {
        method: "POST",
        headers: { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" },
        body,
      });
      const j = await r.json().catch(() => ({}));
      if (!r.ok) {
        showSendResult(`Refused (${r.status}): ${j.error || "no details"}`, false);
      } else if (j.applied === false) {
        showSendResult(`The ledger refused it: ${j.error || "no details"}`, false);
      } else {
        showSendResult(`Sent: transaction ${short(j.tx_id)} at height ${j.height}.`, true);
        $("send-form").reset();
      }
    } catch (e) {
      showSendResult(`Cannot reach the node: ${e}`, false);
    }
    $("send-review").focus();
  }

  // ---- jobs -----------------------------------------------------------------------------------
  const statesSeen = new Map();
  let openJob = null;

  function renderJobs(jobs, total) {
    const list = jobs || [];
    setText("jobs-count", total > list.length ? `(${list.length} of ${total})` : `(${list.length})`);
    $("jobs-empty").hidden = list.length > 0;
    syncRows($("jobs-body"), list, (j) => j.id,
      (j) => {
        const tr = el("tr", { "data-job-id": j.id });
        const btn = el("button", { type: "button", class: "link mono", title: `Show job ${j.id}` }, short(j.id));
        btn.addEventListener("click", () => showJob(j.id));
        tr.append(el("td", { class: "job" }, btn));
        return tr;
      },
      (tr, j) => {
        const seen = statesSeen.get(j.id) || [];
        if (seen[seen.length - 1] !== j.state) seen.push(j.state);
        statesSeen.set(j.id, seen);
        tr.dataset.state = j.state;
        tr.dataset.statesSeen = seen.join(" ");
        const st = cell(tr, "state", j.state.replace(/_/g, " "));
        st.dataset.state = j.state;
        cell(tr, "reason", j.reason);
        cell(tr, "bids num", j.bids);
        cell(tr, "leases num", `${j.leases_active} active / ${j.leases}`);
        cell(tr, "results num", `${j.results} of ${j.redundancy}`);
        cell(tr, "verdict", j.verdict);
        cell(tr, "created", fmtTime(j.created_ms));
        if (openJob === j.id && $("job-detail").dataset.state !== j.state) showJob(j.id, false);
      });
  }

  function table(headers, rows) {
    return el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c === null || c === undefined ? "–" : c)))))));
  }

  function outcomeText(o) {
    if (!o) return "–";
    if (o.Completed) return `completed, exit ${o.Completed.exit_code}, fuel ${fmtInt(o.Completed.fuel_used)}`;
    if (o.Failed) return `failed (${o.Failed.kind}): ${o.Failed.detail}`;
    return JSON.stringify(o);
  }

  function pre(label, text) {
    return el("div", { class: "stream" }, el("h4", {}, label), el("pre", {}, text));
  }

  async function showJob(id, focus = true) {
    openJob = id;
    const box = $("job-detail");
    const body = $("job-detail-body");
    box.hidden = false;
    box.dataset.jobId = id;
    $("job-detail-title").textContent = `Job ${id}`;
    let r;
    try {
      const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}`);
      r = await resp.json();
      if (!resp.ok) throw new Error(r.error || resp.status);
    } catch (e) {
      body.replaceChildren(el("p", { class: "error" }, `Cannot load the job: ${e.message || e}`));
      return;
    }
    if (openJob !== id) return;
    box.dataset.state = r.state;
    const spec = r.spec || (r.job && r.job.payload) || {};
    const limits = spec.limits || {};
    const parts = [
      el("dl", { class: "facts" },
        el("div", {}, el("dt", {}, "State"), el("dd", { class: "state" }, r.state)),
        el("div", {}, el("dt", {}, "Why"), el("dd", { class: "reason" }, r.reason || "–")),
        el("div", {}, el("dt", {}, "Verdict"), el("dd", { class: "verdict" }, outcomeText(r.outcome))),
        el("div", {}, el("dt", {}, "Runtime"), el("dd", { class: "runtime" }, spec.runtime === "onnx" ? `onnx, replicas compared by ${spec.verify}` : "wasm, outputs compared bit for bit")),
        el("div", {}, el("dt", {}, "Redundancy"), el("dd", { class: "redundancy" }, spec.redundancy)),
        el("div", {}, el("dt", {}, "Max price"), el("dd", {}, fmtInt(spec.max_price))),
        el("div", {}, el("dt", {}, "Limits"), el("dd", {}, `fuel ${fmtInt(limits.fuel)}, memory ${fmtBytes(limits.memory_bytes)}, ${fmtInt(limits.wall_time_ms)} ms`)),
        el("div", {}, el("dt", {}, "Exit code"), el("dd", { class: "exit-code" }, r.exit_code ?? "–")),
        el("div", {}, el("dt", {}, "Module"), el("dd", { class: "mono wrap" }, spec.module)),
        el("div", {}, el("dt", {}, "Announced"), el("dd", {}, `${r.announce_attempts} time(s)`)),
      ),
      el("h4", {}, "Bids"),
      table(["Worker", "Price", "Free slots", "RTT", "At"],
        (r.bids || []).map((b) => [short(b.worker), fmtInt(b.price), `${b.free_slots}/${b.total_slots}`, b.rtt_ms === null ? "–" : `${b.rtt_ms} ms`, fmtTime(b.received_ms)])),
      el("h4", {}, "Leases"),
      table(["Worker", "Price", "Status", "Offered", "Ended"],
        (r.leases || []).map((l) => [short(l.worker), fmtInt(l.price), String(l.status), fmtTime(l.offered_ms), fmtTime(l.ended_ms)])),
      el("h4", {}, "Results"),
      table(["Worker", "Outcome", "Agreed", "At"],
        (r.results || []).map((x) => [short(x.worker), outcomeText(x.outcome), x.agreed === null || x.agreed === undefined ? "pending" : (x.agreed ? "yes" : "no"), fmtTime(x.received_ms)])),
    ];
    if (r.outcome && r.outcome.Failed && r.outcome.Failed.detail) {
      parts.push(pre("Failure", r.outcome.Failed.detail));
    }
    // Standard error: the agreed workers' first bytes, then any other worker's that differs
    // (it is reported, not compared between replicas).
    const stderrs = new Set();
    if (r.stderr) {
      stderrs.add(String(r.stderr));
      parts.push(pre("Standard error", String(r.stderr)));
    }
    for (const x of r.results || []) {
      if (x.stderr && !stderrs.has(String(x.stderr))) {
        stderrs.add(String(x.stderr));
        parts.push(pre(`Standard error (${short(x.worker)})`, String(x.stderr)));
      }
    }
    let output = null;
    if (r.state === "verified") {
      output = pre("Standard output (the verified output)", "loading…");
      parts.push(output, el("p", {}, el("a", { href: `/v1/jobs/${encodeURIComponent(id)}/output`, download: `${id}.out` }, "Download the verified output")));
    }
    parts.push(el("h4", {}, "Timeline"),
      table(["At", "Event"], (r.timeline || []).map((t) => [fmtTime(t.at_ms), t.event])));
    body.replaceChildren(...parts);
    if (focus) box.focus();
    if (output) showOutput(id, output.querySelector("pre"));
  }

  // The first 16 KiB of a verified job's output, as text.
  async function showOutput(id, target) {
    const LIMIT = 16 * 1024;
    try {
      const resp = await fetch(`/v1/jobs/${encodeURIComponent(id)}/output`);
      if (!resp.ok) throw new Error(`the node answered ${resp.status}`);
      const bytes = new Uint8Array(await resp.arrayBuffer());
      const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes.slice(0, LIMIT));
      target.textContent = bytes.length > LIMIT ? `${text}\n… (${fmtBytes(bytes.length)} in all)` : (text || "(empty)");
      target.classList.add("output");
    } catch (e) {
      target.textContent = `cannot load the output: ${e.message || e}`;
    }
  }

  function closeJob() {
    const id = openJob;
    openJob = null;
    $("job-detail").hidden = true;
    const btn = id && document.querySelector(`tr[data-job-id="${CSS.escape(id)}"] button`);
    if (btn) btn.focus();
  }

  // ---- ledger ---------------------------------------------------------------------------------
  function renderLedger(l, blocks) {
    $("ledger-disabled").hidden = !!l;
    $("ledger-body").hidden = !l;
    if (!l) return;
    setText("chain-id", l.chain_id);
    setText("ledger-height", l.height);
    setText("ledger-last-block", fmtTime(l.last_block_ms));
    setText("ledger-mempool", `${l.mempool} transaction(s)`);
    setText("ledger-open-escrows", l.open_escrows);
    setText("ledger-settled", l.settled_jobs);
    setText("ledger-consensus-peers", l.consensus_peers);
    const s = l.supply || {};
    setText("ledger-supply", `${fmtInt(s.circulating)} (${s.conserved ? "conserved" : "NOT conserved"}; paid ${fmtInt(s.paid)}, slashed ${fmtInt(s.slashed)})`);
    syncRows($("validators"), l.validators || [], (v) => v.id,
      (v) => el("tr", { "data-validator": v.id }),
      (tr, v) => {
        cell(tr, "id mono", short(v.id), v.id);
        cell(tr, "power num", fmtInt(v.power));
        cell(tr, "details", v.id === ($("peer-id").textContent) ? "this node" : "");
      });
    syncRows($("blocks"), blocks || [], (b) => b.height,
      (b) => el("tr", { "data-height": b.height }),
      (tr, b) => {
        cell(tr, "height num", b.height);
        cell(tr, "txs num", b.txs);
        cell(tr, "failed num", b.failed_txs);
        cell(tr, "events num", b.events);
        cell(tr, "root mono", short(b.state_root), b.state_root);
      });
  }

  // ---- host and training ----------------------------------------------------------------------
  function renderHost(h) {
    if (!h) return;
    setText("host-cpus", h.cpus);
    setText("host-slots", h.executor_slots);
    setText("host-load", h.load_avg ? h.load_avg.map((x) => x.toFixed(2)).join(", ") : "–");
    setText("host-mem", h.mem_total_bytes ? `${fmtBytes(h.mem_available_bytes)} of ${fmtBytes(h.mem_total_bytes)}` : "–");
  }

  function renderTraining(t) {
    const rounds = Array.isArray(t) ? t : [];
    const show = rounds.length > 0;
    $("training").hidden = !show;
    $("nav-training").hidden = !show;
    if (!show) return;
    syncRows($("training-body"), rounds, (r) => r.round,
      (r) => el("tr", { "data-round": r.round }),
      (tr, r) => {
        cell(tr, "round num", r.round);
        cell(tr, "accuracy num", r.accuracy === null || r.accuracy === undefined ? "–" : Number(r.accuracy).toFixed(4));
        cell(tr, "loss num", r.loss === null || r.loss === undefined ? "–" : Number(r.loss).toFixed(4));
      });
  }

  // ---- live feed ------------------------------------------------------------------------------
  function render(s) {
    renderNode(s.status);
    renderPeers(s.peers);
    renderWallet(s.wallet, s.history);
    renderJobs(s.jobs, s.jobs_total);
    renderLedger(s.ledger, s.blocks);
    renderHost(s.host);
    renderTraining(s.training);
    document.body.dataset.snapshotAt = s.at_ms;
  }

  function setLive(state, text) {
    const p = $("live");
    p.dataset.live = state;
    if (p.textContent !== text) p.textContent = text;
  }

  function connect() {
    const es = new EventSource("/v1/events");
    es.addEventListener("snapshot", (e) => {
      try {
        render(JSON.parse(e.data));
        setLive("live", "live");
      } catch (err) {
        setLive("error", `cannot show an update: ${err}`);
      }
    });
    es.addEventListener("error", () => {
      setLive("offline", "disconnected; retrying…");
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("send-form").addEventListener("submit", reviewSend);
    $("send-confirm-button").addEventListener("click", confirmSend);
    $("send-cancel").addEventListener("click", cancelSend);
    $("job-detail-close").addEventListener("click", closeJob);
    document.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      if (!$("send-confirm").hidden) cancelSend();
      else if (!$("job-detail").hidden) closeJob();
    });
    connect();
  });
})();
