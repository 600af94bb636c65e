// The atlas's only script: sorting and filtering the cluster table, opening the tree at #node-<id>.
// No network, no libraries; every value it reads is already in the page.
(function () {
  "use strict";
  var table = document.getElementById("cluster-table");
  if (table) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, col) {
      th.addEventListener("click", function () {
        var numeric = th.getAttribute("data-type") === "num";
        var ascending = !th.classList.contains("asc");
        Array.prototype.forEach.call(headers, function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(ascending ? "asc" : "desc");
        var key = function (row) {
          var cell = row.cells[col];
          var raw = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent;
          if (!numeric) return raw.toLowerCase();
          var x = parseFloat(raw);
          return isNaN(x) ? -Infinity : x;
        };
        rows.sort(function (a, b) {
          var ka = key(a), kb = key(b);
          return (ka < kb ? -1 : ka > kb ? 1 : 0) * (ascending ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    var search = document.getElementById("cluster-search");
    var minimums = ["stability", "confidence"].map(function (name) {
      return [name, document.getElementById("min-" + name)];
    });
    var hideFlagged = document.getElementById("hide-flagged");
    var aboveNull = document.getElementById("above-null");
    var count = document.getElementById("shown-count");
    var atLeast = function (row, name, input) {
      var limit = parseFloat(input.value);
      if (isNaN(limit) || limit <= 0) return true;
      var x = parseFloat(row.getAttribute("data-" + name));
      return !isNaN(x) && x >= limit;
    };
    var filter = function () {
      var words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      rows.forEach(function (row) {
        var text = row.textContent.toLowerCase();
        var ok = words.every(function (w) { return text.indexOf(w) >= 0; }) &&
          minimums.every(function (m) { return atLeast(row, m[0], m[1]); }) &&
          !(hideFlagged.checked && row.getAttribute("data-flagged") === "1") &&
          !(aboveNull.checked && row.getAttribute("data-above-null") !== "1");
        row.style.display = ok ? "" : "none";
        if (ok) shown += 1;
      });
      count.textContent = shown + " of " + rows.length + " clusters shown";
    };
    [search, hideFlagged, aboveNull].concat(minimums.map(function (m) { return m[1]; })).forEach(function (input) {
      input.addEventListener("input", filter);
      input.addEventListener("change", filter);
    });
  }
  var openTarget = function () {
    var id = decodeURIComponent(window.location.hash.slice(1));
    var node = id && document.getElementById(id);
    for (; node; node = node.parentElement) {
      if (node.tagName === "DETAILS") node.open = true;
    }
  };
  window.addEventListener("hashchange", openTarget);
  openTarget();
  var setAll = function (open) {
    return function () { document.querySelectorAll("details").forEach(function (d) { d.open = open; }); };
  };
  var expand = document.getElementById("expand-all"), collapse = document.getElementById("collapse-all");
  if (expand) expand.addEventListener("click", setAll(true));
  if (collapse) collapse.addEventListener("click", setAll(false));
})();
