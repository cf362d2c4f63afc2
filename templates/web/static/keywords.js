// Checks the keywords as they are typed and shows each keyword's matches over the last
// announcement days. The form works without this script: the server checks on submit.
(function () {
  "use strict";
  var field = document.getElementById("keywords");
  var status = document.getElementById("keywords-status");
  if (!field || !status || !field.dataset.checkUrl) { return; }
  var timer = null;
  var latest = 0;

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }  // textContent: never parsed as HTML
    return node;
  }

  function show(result) {
    status.replaceChildren();
    var panel = element("div", "panel");
    if (!result.valid) {
      field.setAttribute("aria-invalid", "true");
      panel.appendChild(element("p", "field-error", result.errors.join("\n")));
    } else {
      field.removeAttribute("aria-invalid");
      panel.appendChild(element("p", "ok", field.dataset.msgOk));
      panel.appendChild(element("p", "label", result.title));
      var list = element("ul");
      result.counts.forEach(function (item) {
        var entry = element("li");
        entry.appendChild(element("code", "", item.keyword));
        entry.appendChild(document.createTextNode(": " + item.label));
        list.appendChild(entry);
      });
      if (result.days) { panel.appendChild(list); }
    }
    status.appendChild(panel);
  }

  function check() {
    var ticket = ++latest;
    if (!field.value.trim()) { status.replaceChildren(); return; }
    var url = field.dataset.checkUrl + "&keywords=" + encodeURIComponent(field.value);
    fetch(url, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (result) { if (result && ticket === latest) { show(result); } })
      .catch(function () { /* the server checks again on submit */ });
  }

  field.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 400);
  });

  // On the subscribe page, suggest the browser's own time zone if it is in the list.
  var zone = document.getElementById("timezone");
  var email = document.getElementById("email");
  if (zone && email && !email.value && window.Intl) {
    var guess = Intl.DateTimeFormat().resolvedOptions().timeZone;
    for (var i = 0; i < zone.options.length; i++) {
      if (zone.options[i].value === guess) { zone.selectedIndex = i; break; }
    }
  }
})();
