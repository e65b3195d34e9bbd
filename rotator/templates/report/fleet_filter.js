(function () {
  "use strict";
  // The timeline's filter: hides the instance groups that do not match (text, state, account),
  // and the account and region groups left empty. It reads data attributes and writes only the
  // `hidden` and `open` properties and the count: no page text becomes markup.
  var form = document.getElementById("timeline-filter");
  if (!form) { return; }
  var text = form.elements.namedItem("text");
  var state = form.elements.namedItem("state");
  var account = form.elements.namedItem("account");
  var count = document.getElementById("timeline-count");
  var groups = Array.prototype.slice.call(document.querySelectorAll("details.tl-instance"));
  var outer = Array.prototype.slice.call(
    document.querySelectorAll("details.tl-region, details.tl-account"));
  function matches(group, words, wanted, owner) {
    if (owner && group.dataset.account !== owner) { return false; }
    if (wanted && (" " + group.dataset.states + " ").indexOf(" " + wanted + " ") < 0) {
      return false;
    }
    var search = group.dataset.search;
    return words.every(function (word) { return search.indexOf(word) >= 0; });
  }
  function apply() {
    var words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
    var narrowed = words.length > 0 || state.value !== "";
    var shown = 0;
    groups.forEach(function (group) {
      var keep = matches(group, words, state.value, account.value);
      group.hidden = !keep;
      if (keep) {
        shown += 1;
        if (narrowed) { group.open = true; }
      }
    });
    // Unfiltered, every group shows, an empty one (a region that could not be read) too.
    var filtered = narrowed || account.value !== "";
    outer.forEach(function (group) {
      group.hidden =
        filtered && group.querySelector("details.tl-instance:not([hidden])") === null;
    });
    count.textContent = shown + " of " + groups.length + " instance groups shown";
  }
  form.addEventListener("input", apply);
  form.addEventListener("change", apply);
  form.addEventListener("submit", function (event) { event.preventDefault(); });
  form.hidden = false;
  apply();
})();
