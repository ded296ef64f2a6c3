// babeldesk chat widget: one tag on any page of a shop's site mounts the chat.
//   <script src="https://desk.example.com/widget.js" async></script>
// It talks to the gateway it was loaded from (POST /v1/support/messages, cross-origin: the
// shop's origin must be in gateway.cors_origins). The conversation's id stays in this tab's
// sessionStorage; the page's language (navigator.language) is the locale hint. Everything
// it shows is text (textContent), never HTML from a reply.
(function () {
  "use strict";
  if (window.__babeldeskWidget) return;
  window.__babeldeskWidget = true;
  var script = document.currentScript;
  var base = script ? new URL(script.src).origin : "";
  var KEY = "babeldesk.session:" + base;

  var css = [
    "#bd-widget{position:fixed;right:20px;bottom:20px;z-index:2147483000;font:14px/1.4 system-ui,sans-serif}",
    "#bd-open{border:0;border-radius:24px;padding:12px 18px;background:#1f6feb;color:#fff;cursor:pointer}",
    "#bd-panel{display:none;flex-direction:column;width:320px;height:420px;background:#fff;border:1px solid #ccd;border-radius:10px;box-shadow:0 6px 24px rgba(0,0,0,.2)}",
    "#bd-panel.bd-on{display:flex}",
    "#bd-log{flex:1;overflow-y:auto;padding:10px}",
    ".bd-msg{margin:6px 0;padding:8px 10px;border-radius:8px;max-width:85%;white-space:pre-wrap}",
    ".bd-user{background:#e7f0ff;margin-left:auto}",
    ".bd-bot{background:#f3f3f3}",
    ".bd-error{background:#fde8e8}",
    "#bd-form{display:flex;border-top:1px solid #ccd}",
    "#bd-input{flex:1;border:0;padding:10px;font:inherit}",
    "#bd-send{border:0;background:#1f6feb;color:#fff;padding:0 14px;cursor:pointer}"
  ].join("\n");

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (text) node.textContent = text;
    return node;
  }

  function mount() {
    var style = el("style", {});
    style.textContent = css;
    document.head.appendChild(style);
    var root = el("div", {id: "bd-widget"});
    var panel = el("div", {id: "bd-panel", role: "dialog", "aria-label": "Chat"});
    var log = el("div", {id: "bd-log", "aria-live": "polite"});
    var form = el("form", {id: "bd-form"});
    var input = el("input", {id: "bd-input", autocomplete: "off", maxlength: "4000",
                             placeholder: "Type your question…"});
    var send = el("button", {id: "bd-send", type: "submit"}, "Send");
    var open = el("button", {id: "bd-open", type: "button"}, "Chat");
    form.appendChild(input);
    form.appendChild(send);
    panel.appendChild(log);
    panel.appendChild(form);
    root.appendChild(panel);
    root.appendChild(open);
    document.body.appendChild(root);

    function add(kind, text, data) {
      var m = el("div", {"class": "bd-msg bd-" + kind}, text);
      for (var k in (data || {})) m.setAttribute("data-" + k, data[k]);
      log.appendChild(m);
      log.scrollTop = log.scrollHeight;
      return m;
    }

    open.addEventListener("click", function () {
      panel.classList.toggle("bd-on");
      if (panel.classList.contains("bd-on")) input.focus();
    });

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var text = input.value.trim();
      if (!text) return;
      input.value = "";
      add("user", text);
      var body = {message: text, locale: navigator.language || ""};
      var sid = sessionStorage.getItem(KEY);
      if (sid) body.session_id = sid;
      send.disabled = true;
      fetch(base + "/v1/support/messages", {
        method: "POST", headers: {"content-type": "application/json"},
        body: JSON.stringify(body)
      }).then(function (res) {
        return res.json().then(function (data) { return {ok: res.ok, data: data}; });
      }).then(function (r) {
        if (!r.ok) {
          var err = (r.data && r.data.error) || {};
          add("error", err.message || "Something went wrong; please try again.");
          return;
        }
        sessionStorage.setItem(KEY, r.data.session_id);
        add("bot", r.data.reply, {source: r.data.source, language: r.data.language});
      }).catch(function () {
        add("error", "The chat is not reachable right now; please try again.");
      }).then(function () { send.disabled = false; });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", mount);
  else mount();
})();
