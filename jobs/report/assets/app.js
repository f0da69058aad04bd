// The report's gallery: one page of items at a time, each page's data a script (data/page-N.js)
// loaded on demand, so a report of any size opens quickly from file:// or static hosting.
(function () {
  "use strict";
  const meta = window.IWP_META;
  const pages = {};
  const waiting = {};
  let index = null;
  let indexWaiting = null;
  const state = { page: 1, query: "" };

  function load(src) {
    return new Promise(function (resolve, reject) {
      const s = document.createElement("script");
      s.src = src;
      s.onload = resolve;
      s.onerror = function () { reject(new Error("cannot load " + src)); };
      document.head.appendChild(s);
    });
  }

  window.IWP = {
    page: function (data) { pages[data.page] = data.items; },
    index: function (entries) { index = entries; },
  };

  function pageData(n) {
    if (pages[n]) return Promise.resolve(pages[n]);
    if (!waiting[n]) waiting[n] = load("data/page-" + n + ".js").then(function () { return pages[n]; });
    return waiting[n];
  }

  function searchIndex() {
    if (index) return Promise.resolve(index);
    if (!indexWaiting) indexWaiting = load("data/search.js").then(function () { return index; });
    return indexWaiting;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }

  function picture(cls, src, alt) {
    const img = el("img", cls);
    img.src = src;
    img.alt = alt;
    img.loading = "lazy";
    return img;
  }

  function card(item) {
    const c = el("div", "item " + item.status);
    c.dataset.id = item.id;
    const head = el("div", "head");
    head.appendChild(el("code", "id", item.id));
    head.appendChild(el("span", "badge " + item.status, item.status));
    if (item.media) head.appendChild(el("span", "media", item.media + (item.media === "video" && item.frames ? " · " + item.frames + " frames" : "")));
    c.appendChild(head);
    if (item.thumb) c.appendChild(picture("thumb", item.thumb, "frames of " + item.id));
    c.appendChild(el("p", "text", item.text));
    if (item.status === "ok") {
      const f = item.fidelity === null || item.fidelity === undefined ? "" : ", fidelity " + item.fidelity.toFixed(3);
      c.appendChild(el("p", "stats", "tokens kept " + item.kept + " / " + item.total + f));
    } else {
      c.appendChild(el("p", "stats", "failed at " + item.stage));
    }
    if (item.overlay) {  // shrunk to the card; the link opens it full size
      const full = el("a");
      full.href = item.overlay;
      full.title = "open full size";
      full.appendChild(picture("overlay", item.overlay, "kept tokens of " + item.id));
      c.appendChild(full);
    }
    if (item.note) c.appendChild(el("p", "note", item.note));
    return c;
  }

  function show(items, where) {
    const box = document.getElementById("items");
    box.replaceChildren.apply(box, items.map(card));
    document.getElementById("where").textContent = where;
  }

  function browse() {
    const n = Math.min(Math.max(1, state.page), meta.pages);
    state.page = n;
    return pageData(n).then(function (items) {
      const first = (n - 1) * meta.pageSize + 1;
      show(items, "page " + n + " of " + meta.pages + " (items " + first + "-" + (first + items.length - 1) + " of " + meta.items + ")");
    });
  }

  function search() {
    const q = state.query.toLowerCase();
    return searchIndex().then(function (entries) {
      const hits = entries.filter(function (e) { return e[0].toLowerCase().includes(q) || e[1].toLowerCase().includes(q); });
      const count = Math.max(1, Math.ceil(hits.length / meta.pageSize));
      state.page = Math.min(Math.max(1, state.page), count);
      const shown = hits.slice((state.page - 1) * meta.pageSize, state.page * meta.pageSize);
      const needed = Array.from(new Set(shown.map(function (e) { return e[2]; })));
      return Promise.all(needed.map(pageData)).then(function () {
        const items = shown.map(function (e) { return pages[e[2]].find(function (it) { return it.id === e[0]; }); });
        show(items, hits.length + " matching \u201c" + state.query + "\u201d, page " + state.page + " of " + count);
      });
    });
  }

  function render() {
    const hash = new URLSearchParams();
    if (state.query) hash.set("q", state.query);
    hash.set("page", String(state.page));
    history.replaceState(null, "", "#" + hash.toString());
    return (state.query ? search() : browse()).catch(function (err) {
      document.getElementById("where").textContent = String(err.message || err);
    });
  }

  const params = new URLSearchParams(location.hash.slice(1));
  state.query = params.get("q") || "";
  state.page = parseInt(params.get("page") || "1", 10) || 1;
  const input = document.getElementById("search");
  input.value = state.query;
  let timer = null;
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () { state.query = input.value.trim(); state.page = 1; render(); }, 150);
  });
  document.getElementById("prev").addEventListener("click", function () { state.page -= 1; render(); });
  document.getElementById("next").addEventListener("click", function () { state.page += 1; render(); });
  window.IWP.ready = render();
})();
