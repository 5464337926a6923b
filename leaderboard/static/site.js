// robench leaderboard: sort any column, filter by architecture, training and activation, search by text,
// switch between the per-checkpoint and the per-activation view.
// Plain JavaScript, no libraries, works from file://.
(function () {
  "use strict";
  function cellValue(row, i, type) {
    var cell = row.cells[i];
    var v = cell.getAttribute("data-value");
    if (type === "number") {
      var x = parseFloat(v === null ? cell.textContent : v);
      return isNaN(x) ? null : x;
    }
    return cell.textContent.trim().toLowerCase();
  }
  function sortBy(table, th) {
    var i = Array.prototype.indexOf.call(th.parentNode.children, th);
    var type = th.getAttribute("data-type") || "text";
    // numbers start high-to-low (accuracies), text a-z; a second click reverses
    var first = type === "number" && th.textContent.trim() !== "Rank" ? "descending" : "ascending";
    var dir = th.getAttribute("aria-sort") === first ? (first === "ascending" ? "descending" : "ascending") : first;
    table.querySelectorAll("thead th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, i, type), y = cellValue(b, i, type);
      if (x === null && y === null) return 0;
      if (x === null) return 1;  // not measured: always last
      if (y === null) return -1;
      var c = x < y ? -1 : x > y ? 1 : 0;
      return dir === "ascending" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function applyFilters() {
    var want = {};
    document.querySelectorAll("#filters select").forEach(function (s) { want[s.getAttribute("data-field")] = s.value; });
    var text = (document.getElementById("search").value || "").trim().toLowerCase();
    document.querySelectorAll("table.leaderboard").forEach(function (table) {
      var shown = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var ok = Object.keys(want).every(function (f) { return !want[f] || r.getAttribute("data-" + f) === want[f]; });
        ok = ok && (!text || r.getAttribute("data-search").indexOf(text) >= 0);
        r.hidden = !ok;
        shown += ok ? 1 : 0;
      });
      var count = table.parentNode.querySelector(".count");
      var total = count.getAttribute("data-total");
      var unit = count.getAttribute("data-unit") || "models";
      count.textContent = shown + (shown == total ? "" : " of " + total) + " " + unit;
    });
  }
  document.querySelectorAll("table.leaderboard thead th").forEach(function (th) {
    th.addEventListener("click", function () { sortBy(th.closest("table"), th); });
  });
  document.querySelectorAll("#filters select").forEach(function (s) { s.addEventListener("change", applyFilters); });
  var filters = document.getElementById("filters");
  if (filters) filters.addEventListener("submit", function (e) { e.preventDefault(); });
  var search = document.getElementById("search");
  if (search) search.addEventListener("input", applyFilters);
  // two views of the same results: per checkpoint (the default) and per activation; without script both show
  function showView(name) {
    document.querySelectorAll("#views button").forEach(function (b) {
      var on = b.getAttribute("data-view") === name;
      b.setAttribute("aria-pressed", on ? "true" : "false");
      var view = document.getElementById("view-" + b.getAttribute("data-view"));
      if (view) view.hidden = !on;
    });
  }
  document.querySelectorAll("#views button").forEach(function (b) {
    b.addEventListener("click", function () { showView(b.getAttribute("data-view")); });
  });
  if (document.getElementById("views")) showView(location.hash === "#view-activations" ? "activations" : "checkpoints");
})();
