"""Small Sphinx fixes for the reader's site (a local extension, see ``_config.yml``).

* Some jupyter-book 1.x extensions (sphinx-thebe, sphinx-togglebutton) register their inline
  scripts twice under Sphinx 7.4; the second ``const THEBE_JS_URL = …`` is a JavaScript
  ``SyntaxError`` on every page. Keep the first copy of each identical script.
* Docstrings name lorakit objects by their short or re-exported name (``:class:`LoRALinear```,
  ``lorakit.fit``, a type hint ``LoRALinear`` in another module): resolve such a name to the one documented
  ``lorakit.<module>.<name>`` it can mean, so the API page cross-links instead of warning.
* Pages with widgets get a small inline script before require.js: a RequireJS path map so the widget
  manager finds its vendored fonts under ``widgets/`` (else every widget page logs 404s offline),
  and a ``MathJax.Hub.Queue`` stand-in, because the widget manager calls that MathJax 2 API while
  the site runs MathJax 3 (else a ``TypeError`` when a widget with a label renders).
* ``%%R`` cells are R, not Python: highlight them as R (the IPython lexer fails on them and warns).
* pydata-sphinx-theme logs ``Got invalid theme mode`` on a first visit unless ``default_mode`` is
  set: follow the reader's system setting (``auto``).
"""

from __future__ import annotations

from typing import Any


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict[str, Any],
                    doctree: Any) -> None:
    context.setdefault("default_mode", "auto")
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for script in scripts:
        attributes = getattr(script, "attributes", {}) or {}
        filename = getattr(script, "filename", script) or ""  # inline scripts: None or ""
        key = (str(filename), str(attributes.get("body", "")))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    scripts[:] = unique  # in place: Sphinx adds page scripts to this same list


def _resolve_lorakit_short_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    name = target.rsplit(".", 1)[-1]
    domain = env.get_domain("py")
    if target.startswith("lorakit.") and target.count(".") > 1:
        return None  # a full path (lorakit.<module>.<name>) that Sphinx already looked for
    matches = [full for full, entry in domain.objects.items()
               if full.startswith("lorakit.") and full.rsplit(".", 1)[-1] == name
               and entry.objtype in ("class", "function", "exception", "data")]
    if len(matches) > 1:  # documented where it is defined and where a package re-exports it
        matches = [full for full in matches if _defined_at(full)] or matches
    if len(matches) != 1:
        return _undocumented_alias(name, contnode)
    return domain.resolve_xref(env, node.get("refdoc", ""), app.builder, node.get("reftype", "class"),
                               matches[0], node, contnode)


def _defined_at(full: str) -> bool:
    """Whether ``full`` (``lorakit.<module>.<name>``) is where that object is defined."""
    import importlib

    module, _, name = full.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return getattr(obj, "__module__", None) == module


def _undocumented_alias(name: str, contnode: Any) -> Any:
    """A private type alias of a lorakit module (``InitA = Literal[...]``): show it as plain text."""
    import importlib
    import pkgutil

    import lorakit

    for info in pkgutil.walk_packages(lorakit.__path__, "lorakit."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):
            continue  # private modules, and __main__ (it would parse Sphinx's command line)
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 — a module that cannot import is autodoc's warning, not ours
            continue
        obj = vars(module).get(name)
        if obj is not None and name not in getattr(module, "__all__", ()) and _is_typing_alias(obj):
            return contnode
    return None


def _is_typing_alias(obj: Any) -> bool:
    return type(obj).__module__ == "typing"


WIDGET_PAGE_JS = """
var require = {paths: (function () {
  var w = document.documentElement.dataset.content_root + "widgets";
  return {"@jupyter-widgets/base": w + "/base", "@jupyter-widgets/controls": w + "/controls",
          "@jupyter-widgets/html-manager/dist": w};
})()};
(function () {
  var hub = {Queue: function (job) {
    var mj = window.MathJax, element = job && job[2];
    if (mj && mj.typesetPromise && element) { mj.typesetPromise([element]); }
  }};
  var withHub = function (value) {
    if (value && typeof value === "object" && !value.Hub) {
      Object.defineProperty(value, "Hub", {value: hub, enumerable: false, configurable: true});
    }
    return value;
  };
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {configurable: true, enumerable: true,
    get: function () { return current; }, set: function (value) { current = withHub(value); }});
})();
"""


def _widget_page_support(app: Any, pagename: str, templatename: str, context: dict[str, Any],
                         doctree: Any) -> None:
    scripts = context.get("script_files") or []
    if any(str(getattr(s, "filename", "") or "").endswith("embed-amd.js") for s in scripts):
        app.add_js_file(None, body=WIDGET_PAGE_JS, priority=499)  # before require.js (500)


def _highlight_r_cells(app: Any, doctree: Any) -> None:
    from docutils import nodes

    for block in doctree.findall(nodes.literal_block):
        if block.astext().lstrip().startswith("%%R"):
            block["language"] = "r"


def setup(app: Any) -> dict[str, Any]:
    app.connect("doctree-read", _highlight_r_cells)
    app.connect("missing-reference", _resolve_lorakit_short_names)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    app.connect("html-page-context", _widget_page_support, priority=901)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
