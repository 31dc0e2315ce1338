/* django-pdr admin helpers: no dependencies, no external requests.
 * 1. Database form: show the fields the chosen kind needs (a file path for SQLite,
 *    host/port/user/password for servers).
 * 2. Table pickers: when a database is chosen, fill the table list from the
 *    admin's JSON endpoint; picking a table fills the schema/table inputs. */
(function () {
  "use strict";
  var SERVER_ROWS = ["host", "port", "username", "password", "clear_password"];

  function row(name) {
    return document.querySelector(".form-row.field-" + name) ||
           document.querySelector(".field-" + name);
  }

  function followKind(select) {
    var sqlite = select.value === "sqlite";
    SERVER_ROWS.forEach(function (name) {
      var r = row(name);
      if (r) { r.style.display = sqlite ? "none" : ""; }
    });
    var label = document.querySelector("label[for=id_database]");
    if (label) {
      label.textContent = sqlite ? "SQLite file path:" : (select.value ? "Database name:" : "Database name or SQLite file path:");
    }
    var input = document.getElementById("id_database");
    if (input) { input.placeholder = sqlite ? "/var/lib/app/data.sqlite3" : "app"; }
  }

  function fillPicker(picker, databaseId) {
    var url = picker.getAttribute("data-url");
    picker.innerHTML = "";
    function option(value, text) {
      var o = document.createElement("option");
      o.value = value; o.textContent = text; picker.appendChild(o); return o;
    }
    if (!databaseId || !url) { option("", "choose a database first"); return; }
    option("", "loading tables…");
    fetch(url + "?database=" + encodeURIComponent(databaseId), {credentials: "same-origin"})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        picker.innerHTML = "";
        if (data.error) { option("", data.error); return; }
        option("", "---------");
        data.tables.forEach(function (t) { option(t.value, t.label); });
      })
      .catch(function () { picker.innerHTML = ""; option("", "could not list the tables"); });
  }

  function pickTable(picker) {
    var prefix = picker.getAttribute("data-pdr-table-picker") === "destination" ? "destination_" : "";
    if (!picker.value) { return; }
    var ref = JSON.parse(picker.value);
    var schema = document.getElementById("id_" + prefix + "schema");
    var table = document.getElementById("id_" + prefix + "table");
    if (schema) { schema.value = ref[0]; }
    if (table) { table.value = ref[1]; }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var kind = document.querySelector("select[data-pdr-kind]");
    if (kind) {
      followKind(kind);
      kind.addEventListener("change", function () { followKind(kind); });
    }
    var database = document.querySelector("select[data-pdr-database]");
    var picker = document.querySelector("select[data-pdr-table-picker]");
    if (database && picker) {
      database.addEventListener("change", function () { fillPicker(picker, database.value); });
    }
    if (picker) {
      picker.addEventListener("change", function () { pickTable(picker); });
    }
  });
})();
