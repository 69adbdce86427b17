// Renders the formulas that pymdownx.arithmatex (generic mode) marks: inline math as
// <span class="arithmatex">\( ... \)</span>, display math as <div class="arithmatex">\[ ... \]</div>
// (or a bare \begin{...} environment). KaTeX itself is served by this site (assets/katex/,
// copied from the npm package by `make docs`), so formulas render without a network.
(function () {
  function render(root) {
    if (typeof katex === "undefined") {
      console.error("KaTeX did not load: formulas stay as TeX source");
      return;
    }
    root.querySelectorAll(".arithmatex").forEach(function (el) {
      if (el.querySelector(".katex")) return; // already rendered
      var tex = el.textContent.trim();
      var display = el.tagName !== "SPAN";
      if (tex.startsWith("\\(") && tex.endsWith("\\)")) {
        tex = tex.slice(2, -2);
        display = false;
      } else if (tex.startsWith("\\[") && tex.endsWith("\\]")) {
        tex = tex.slice(2, -2);
        display = true;
      }
      try {
        katex.render(tex, el, { displayMode: display, throwOnError: true, strict: "ignore" });
      } catch (err) {
        console.error("KaTeX could not render " + JSON.stringify(tex) + ": " + err.message);
      }
    });
  }

  // mkdocs-material publishes each (instantly) loaded page on document$.
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { render(document.body); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document.body); });
  }
})();
