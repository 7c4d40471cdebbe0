"""`vjp compare serve`'s web page: the blind A/B study in a browser (Flask).

    GET  /                     the page (rater id, prompt, two looping videos, the two questions)
    GET  /api/next?rater=R     the rater's next pair: {pair, prompt, left, right, progress} or {done}
    POST /api/vote             {rater, pair, alignment: left|right, quality: left|right}
    GET  /video/<pair>/<side>  the video shown on that side (a path from study.json, never from the URL)

Bound to 127.0.0.1 by default. With a token (required for any other host) every request must
carry it (`?token=` on the page's URL; the page sends it as X-Study-Token).
"""

from __future__ import annotations

import hmac
import threading
from typing import Any

from training.eval.study import QUESTIONS, SIDES, StudyError, VoteLog, check_rater, open_study

PAGE = """<!doctype html>
<html lang="ja"><head><meta charset="utf-8"><title>動画比較 / video comparison</title>
<style>
body{font-family:"Noto Sans CJK JP","Hiragino Sans",sans-serif;margin:16px;color:#222}
#prompt{font-size:20px;margin:10px 0;padding:8px;background:#f4f4f4}
.videos{display:flex;gap:16px} .videos div{flex:1;text-align:center}
video{width:100%;max-height:60vh;background:#000}
fieldset{margin:10px 0} .keys{color:#666;font-size:12px} #progress{float:right}
button{font-size:16px;padding:6px 18px}
</style></head><body>
<div id="login">評価者ID / rater id: <input id="rater" autocomplete="off">
<button id="start">開始 / start</button></div>
<div id="study" hidden>
<div id="progress"></div>
<div id="prompt" lang="ja"></div>
<div class="videos"><div><b>左 / left</b><video id="left" autoplay loop muted playsinline></video></div>
<div><b>右 / right</b><video id="right" autoplay loop muted playsinline></video></div></div>
<form id="vote">
<fieldset><legend>Q1. プロンプトにより合っているのはどちらですか? (which fits the prompt better?)</legend>
<label><input type="radio" name="alignment" value="left"> 左 / left [1]</label>
<label><input type="radio" name="alignment" value="right"> 右 / right [2]</label></fieldset>
<fieldset><legend>Q2. 映像の品質が高いのはどちらですか? (which looks better?)</legend>
<label><input type="radio" name="quality" value="left"> 左 / left [3]</label>
<label><input type="radio" name="quality" value="right"> 右 / right [4]</label></fieldset>
<button type="submit" id="submit">送信 / submit [Enter]</button>
<span class="keys">keys: 1/2 = Q1 left/right, 3/4 = Q2 left/right, Enter = submit</span>
</form></div>
<div id="done" hidden>ありがとうございました。すべて評価済みです。 (All pairs rated: thank you.)</div>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
const headers = {"Content-Type": "application/json", "X-Study-Token": token};
let rater = localStorage.getItem("vjp-rater") || "", pair = null, sending = false;
document.getElementById("rater").value = rater;
function q(path) { return path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token); }
async function next() {
  const r = await fetch(q("/api/next?rater=" + encodeURIComponent(rater)), {headers});
  const d = await r.json();
  if (!r.ok) { alert(d.error); return; }
  document.getElementById("login").hidden = true;
  if (d.done) {
    document.getElementById("study").hidden = true;
    document.getElementById("done").hidden = false;
    return;
  }
  pair = d.pair;
  document.getElementById("study").hidden = false;
  document.getElementById("prompt").textContent = d.prompt;
  document.getElementById("progress").textContent = (d.progress.done + 1) + " / " + d.progress.total;
  document.getElementById("left").src = q(d.left);
  document.getElementById("right").src = q(d.right);
  document.getElementById("vote").reset();
}
async function submit() {
  const f = new FormData(document.getElementById("vote"));
  const body = {rater, pair, alignment: f.get("alignment"), quality: f.get("quality")};
  if (!body.alignment || !body.quality || sending) return;
  sending = true;
  try {
    const r = await fetch(q("/api/vote"), {method: "POST", headers, body: JSON.stringify(body)});
    if (!r.ok) { alert((await r.json()).error); return; }
    await next();
  } finally { sending = false; }
}
document.getElementById("start").onclick = () => {
  rater = document.getElementById("rater").value.trim();
  localStorage.setItem("vjp-rater", rater);
  next();
};
document.getElementById("vote").onsubmit = (e) => { e.preventDefault(); submit(); };
document.addEventListener("keydown", (e) => {
  if (document.getElementById("study").hidden || e.target.id === "rater") return;
  const pick = {"1": ["alignment", "left"], "2": ["alignment", "right"],
                "3": ["quality", "left"], "4": ["quality", "right"]}[e.key];
  if (pick) { document.querySelector(`input[name=${pick[0]}][value=${pick[1]}]`).checked = true; }
  if (e.key === "Enter") { e.preventDefault(); submit(); }
});
</script></body></html>
"""


def create_app(out: str, token: str | None = None) -> Any:
    """The Flask app of an existing study folder (open_study created it)."""
    from flask import Flask, abort, jsonify, request, send_file

    study = open_study(out)
    log = VoteLog(out, study)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024

    @app.before_request
    def _auth() -> Any:
        if token is None:
            return None
        given = request.headers.get("X-Study-Token") or request.args.get("token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return jsonify(error="missing or wrong study token"), 403
        return None

    @app.errorhandler(StudyError)
    def _bad(e: StudyError) -> Any:
        return jsonify(error=str(e)), 400

    @app.errorhandler(404)
    def _missing(_e: Any) -> Any:
        return jsonify(error="not found"), 404

    @app.get("/")
    def page() -> Any:
        return PAGE, 200, {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}

    @app.get("/api/next")
    def next_pair() -> Any:
        rater = check_rater(request.args.get("rater", ""))
        pair = log.next_pair(rater)
        if pair is None:
            return jsonify(done=True, progress=log.progress(rater))
        return jsonify(
            done=False,
            pair=pair.id,
            prompt=pair.prompt,
            left=f"/video/{pair.id}/left",
            right=f"/video/{pair.id}/right",
            progress=log.progress(rater),
        )

    @app.post("/api/vote")
    def vote() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise StudyError("expected a JSON object")
        answers = {q: body.get(q) for q in QUESTIONS}
        _vote, new = log.add(body.get("rater", ""), body.get("pair", ""), answers)
        return jsonify(ok=True, duplicate=not new, progress=log.progress(body["rater"]))

    @app.get("/video/<pair_id>/<side>")
    def video(pair_id: str, side: str) -> Any:
        pair = log.pairs.get(pair_id)
        if pair is None or side not in SIDES:
            abort(404)
        which = pair.left if side == "left" else ("b" if pair.left == "a" else "a")
        path = pair.a if which == "a" else pair.b
        # conditional: range requests, so browsers can seek and loop.
        return send_file(path, conditional=True, max_age=0)

    return app


def start_server(app: Any, host: str = "127.0.0.1", port: int = 0) -> tuple[Any, threading.Thread]:
    """A threaded werkzeug server in a background thread; server.server_port is the bound port."""
    from werkzeug.serving import make_server

    server = make_server(host, port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
