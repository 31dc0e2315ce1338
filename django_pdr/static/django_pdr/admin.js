/* django-pdr admin helpers: no dependencies, no external requests.
 * 1. Database form: show the fields the chosen kind needs (a file path for SQLite,
 *    host/port/user/password for servers).
 * 2. Table pickers: when a database is chosen, fill the table list from the
 *    admin's JSON endpoint; picking a table fills the schema/table inputs.
 * 3. ACE editors (django-ace): each fills the width its form row leaves beside the
 *    label, and follows it when the window (or a collapsed fieldset) changes size.
 *    The widget keeps a pixel width (django-ace's "100%" collapses to the gutter
 *    in the admin's flex rows); ACE draws again after each change (editor.resize). */
(function () {
  "use strict";
  var SERVER_ROWS = ["host", "port", "username", "password", "clear_password"];

  function row(name) {
    return document.querySelector(".form-row.field-" + name) ||
           document.querySelector(".field-" + name);
  }

  function followKind(select) {
    var kinds = {};
    try { kinds = JSON.parse(select.getAttribute("data-pdr-kinds") || "{}"); } catch (e) { kinds = {}; }
    var chosen = kinds[select.value];
    var sqlite = chosen ? chosen.file : select.value === "sqlite";
    SERVER_ROWS.forEach(function (name) {
      var r = row(name);
      if (r) { r.style.display = sqlite ? "none" : ""; }
    });
    var file = row("create_file");
    if (file) { file.style.display = sqlite ? "" : "none"; }
    var label = document.querySelector("label[for=id_database]");
    if (label) {
      label.textContent = chosen ? chosen.label + ":" : (select.value ? "Database name:" : "Database name or SQLite file path:");
    }
    var input = document.getElementById("id_database");
    if (input) { input.placeholder = chosen ? chosen.placeholder : "app"; }
  }

  function fillPicker(picker, databaseId) {
    var url = picker.getAttribute("data-url");
    picker.innerHTML = "";
    function option(value, text) {
      var o = document.createElement("option");
      o.value = value; o.textContent = text; picker.appendChild(o); return o;
    }
    if (!databaseId || !url) { option("", "Choose a database first"); return; }
    option("", "Loading tables…");
    fetch(url + "?database=" + encodeURIComponent(databaseId), {credentials: "same-origin"})
      .then(function (response) { return response.json(); })
      .then(function (data) {
        picker.innerHTML = "";
        if (data.error) { option("", data.error); return; }
        option("", "---------");
        data.tables.forEach(function (t) { option(t.value, t.label); });
      })
      .catch(function () { picker.innerHTML = ""; option("", "Could not list the tables"); });
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

  function fitEditor(widget) {
    var box = widget.parentNode;  // div.django-ace-editor: the room beside the label (CSS)
    if (!box || !box.clientWidth) { return; }  // hidden (e.g. a closed fieldset): fitted when shown
    var width = box.clientWidth;
    if (widget.style.width !== width + "px") { widget.style.width = width + "px"; }
    var toolbar = box.querySelector(".django-ace-toolbar");
    if (toolbar) { toolbar.style.width = width + "px"; }
    if (widget.editor) { widget.editor.resize(); }
  }

  function fitEditors() {
    var widgets = document.querySelectorAll(".django-ace-editor > .django-ace-widget");
    Array.prototype.forEach.call(widgets, fitEditor);
  }

  function watchEditors() {
    var boxes = document.querySelectorAll(".django-ace-editor");
    if (!boxes.length) { return; }
    fitEditors();
    window.addEventListener("resize", fitEditors);
    document.addEventListener("toggle", fitEditors, true);  // <details> fieldsets opening
    if (window.ResizeObserver) {
      var observer = new ResizeObserver(fitEditors);
      Array.prototype.forEach.call(boxes, function (box) { observer.observe(box); });
    }
  }

  // django-ace creates the editors on "load": fit them once they exist
  window.addEventListener("load", function () { window.setTimeout(watchEditors, 0); });

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
