"""`vjp compare`: the blind A/B study page driven over HTTP on loopback, the votes' JSONL and the tally."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobs.cli import main
from training.eval.study import VOTES, open_study, read_votes, tally
from training.eval.study_app import create_app, start_server

N_PAIRS = 50


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    rows = []
    for i in range(N_PAIRS):
        key = f"k{i:03d}"
        (a / f"{key}.mp4").write_bytes(b"A-video-" + key.encode())  # the server never decodes them
        (b / f"{key}.mp4").write_bytes(b"B-video-" + key.encode())
        rows.append({"key": key, "prompt": f"夕暮れの海辺 {i}"})
    rows.append({"key": "only_in_prompts", "prompt": "森"})
    (a / "secret.txt").write_text("not a video")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return {"a": a, "b": b, "prompts": prompts, "study": tmp_path / "STUDY"}


def _serve(folders: dict[str, Path], token: str | None = None) -> tuple[Any, str]:
    open_study(
        str(folders["study"]), str(folders["a"]), str(folders["b"]), str(folders["prompts"]), ("ours", "base")
    )
    server, _ = start_server(create_app(str(folders["study"]), token))
    return server, f"http://127.0.0.1:{server.server_port}"


def test_the_page_serves_blind_pairs_records_votes_once_and_resumes(folders: dict[str, Path]) -> None:
    server, url = _serve(folders)
    try:
        with httpx.Client(base_url=url) as c:
            page = c.get("/")
            assert page.status_code == 200 and "プロンプトにより合っているのはどちらですか" in page.text
            assert "映像の品質が高いのはどちらですか" in page.text and 'e.key === "Enter"' in page.text
            study = json.loads((folders["study"] / "study.json").read_text())
            assert len(study["pairs"]) == N_PAIRS and study["skipped"] == ["only_in_prompts: no video in A"]
            sides = Counter(p["left"] for p in study["pairs"])
            assert sides["a"] > 5 and sides["b"] > 5  # left/right drawn per pair
            first = c.get("/api/next", params={"rater": "r1"}).json()
            assert first["progress"] == {"done": 0, "total": N_PAIRS} and first["prompt"].startswith("夕暮れ")
            blob = json.dumps(first)
            assert "ours" not in blob and "base" not in blob and str(folders["a"]) not in blob  # blind
            pair = next(p for p in study["pairs"] if p["id"] == first["pair"])
            left = c.get(first["left"]).content
            assert left == (b"A-video-" if pair["left"] == "a" else b"B-video-") + pair["key"].encode()
            vote = {"rater": "r1", "pair": first["pair"], "alignment": "left", "quality": "right"}
            r1, r2 = c.post("/api/vote", json=vote), c.post("/api/vote", json={**vote, "quality": "left"})
            assert r1.json()["duplicate"] is False and r2.json()["duplicate"] is True  # a double submit
            votes = read_votes(str(folders["study"]))
            assert len((folders["study"] / VOTES).read_text().splitlines()) == 1 and len(votes) == 1
            v = votes[0]
            right = "b" if pair["left"] == "a" else "a"
            assert v["alignment"]["winner"] == pair["left"] and v["quality"]["winner"] == right
            assert v["prompt"] == pair["prompt"] and v["alignment"]["chosen"] == pair[pair["left"]]
            assert v["quality"]["chosen"] == pair[right] and v["quality"]["rejected"] == pair[pair["left"]]
            # Resume: the next pair is another one, and the count carries on.
            again = c.get("/api/next", params={"rater": "r1"}).json()
            assert again["pair"] != first["pair"] and again["progress"]["done"] == 1
            other = c.get("/api/next", params={"rater": "r2"}).json()
            assert other["progress"]["done"] == 0  # progress is per rater
            # Bad input: clear errors, nothing outside the two folders.
            assert c.get("/video/p9999/left").status_code == 404
            assert c.get(f"/video/{first['pair']}/middle").status_code == 404
            for trick in (
                "/video/../study.json",
                "/video/%2e%2e/%2e%2e/secret.txt",
                "/study.json",
                "/votes.jsonl",
            ):
                r = c.get(trick)
                assert r.status_code == 404 and b"not a video" not in r.content and b"pairs" not in r.content
            bad = c.post("/api/vote", json={**vote, "pair": "../../etc/passwd"})
            assert bad.status_code == 400 and "unknown pair" in bad.json()["error"]
            assert c.post("/api/vote", json={**vote, "alignment": "both"}).status_code == 400
            assert c.get("/api/next", params={"rater": "a b/c"}).status_code == 400
    finally:
        server.shutdown()


def test_a_token_is_required_when_set(folders: dict[str, Path]) -> None:
    server, url = _serve(folders, token="s3cret")
    try:
        with httpx.Client(base_url=url) as c:
            assert c.get("/api/next", params={"rater": "r1"}).status_code == 403
            assert c.get("/api/next", params={"rater": "r1", "token": "nope"}).status_code == 403
            ok = c.get("/api/next", params={"rater": "r1"}, headers={"X-Study-Token": "s3cret"})
            assert ok.status_code == 200 and c.get("/?token=s3cret").status_code == 200
    finally:
        server.shutdown()


def test_twenty_raters_voting_in_parallel_lose_and_double_count_nothing(folders: dict[str, Path]) -> None:
    """20 raters x 50 votes on loopback at once, every vote submitted twice: 1,000 lines, and the
    tally matches the votes cast (left for alignment, right for quality, mapped through the seal)."""
    server, url = _serve(folders)
    errors: list[str] = []

    def rater(i: int) -> None:
        name = f"rater{i:02d}"
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                while True:
                    nxt = c.get("/api/next", params={"rater": name}).json()
                    if nxt["done"]:
                        return
                    vote = {"rater": name, "pair": nxt["pair"], "alignment": "left", "quality": "right"}
                    for _ in range(2):
                        if c.post("/api/vote", json=vote).status_code != 200:
                            errors.append(f"{name}: vote refused")
        except Exception as e:  # surfaced by the assert below
            errors.append(f"{name}: {type(e).__name__}: {e}")

    try:
        threads = [threading.Thread(target=rater, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        server.shutdown()
    assert errors == []
    lines = (folders["study"] / VOTES).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 * N_PAIRS
    votes = [json.loads(line) for line in lines]  # every line whole JSON
    assert len({(v["rater"], v["pair"]) for v in votes}) == 20 * N_PAIRS
    study = json.loads((folders["study"] / "study.json").read_text())
    left_is_a = sum(p["left"] == "a" for p in study["pairs"])
    t = tally(str(folders["study"]))
    assert t["votes"] == 1000 and t["raters"] == 20 and set(t["per_rater"].values()) == {N_PAIRS}
    assert t["questions"]["alignment"]["a"] == 20 * left_is_a  # left was A on left_is_a pairs
    assert t["questions"]["quality"]["a"] == 20 * (N_PAIRS - left_is_a)
    assert t["questions"]["alignment"]["agreement"] == 1.0  # every rater chose the same side
    share = t["questions"]["alignment"]["share_a"]
    assert share["low"] < share["value"] == left_is_a / N_PAIRS < share["high"]
    assert t["labels"] == {"a": "ours", "b": "base"}


def test_tally_cli_matches_the_seed_study_numbers_and_goes_into_the_eval_report(
    folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's alignment result (423 of 441 won) as votes: share and Wilson interval."""
    from training.eval.report import _human_rows
    from training.eval.study import VoteLog

    study = open_study(str(folders["study"]), str(folders["a"]), str(folders["b"]), str(folders["prompts"]))
    log = VoteLog(str(folders["study"]), study)
    n = 0
    for r in range(9):  # 9 raters x 49 pairs = 441 votes
        for p in study["pairs"][:49]:
            a_side = p["left"] == "a"
            a_wins = n < 423
            pick = "left" if a_wins == a_side else "right"
            log.add(f"r{r}", p["id"], {"alignment": pick, "quality": "left"})
            n += 1
    ev = tmp_path / "EVAL"
    ev.mkdir()
    assert main(["compare", "tally", str(folders["study"]), "--eval", str(ev)]) == 0
    out = json.loads(capsys.readouterr().out)
    a = out["questions"]["alignment"]
    assert (a["a"], a["b"]) == (423, 18) and out["votes"] == 441
    assert a["share_a"]["value"] == pytest.approx(423 / 441)
    assert 0.93 < a["share_a"]["low"] < 0.96 < a["share_a"]["high"] < 0.98
    rows = _human_rows(str(ev))
    assert any("alignment" in k and "423 vs 18" in v for k, v in rows)
    assert main(["compare", "tally", str(tmp_path / "none")]) == 2
    assert main(["compare", "serve", "--out", str(tmp_path / "new")]) == 2  # no study, no folders


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_headless_chromium_votes_with_real_clicks_and_key_presses(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """The page in a real browser, driven over the DevTools protocol: a click into the rater field,
    typed text, a click on start, then per pair the keys 1 (Q1 left), 4 (Q2 right) and Enter."""
    import asyncio
    import socket
    import subprocess

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    server, url = _serve(folders)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}",
         f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    async def drive() -> list[str]:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        pages = [t for t in await r.json() if t["type"] == "page"]
                    if pages:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            ws = await http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
            counter = iter(range(1, 10**6))

            async def cdp(method: str, **params: Any) -> dict[str, Any]:
                i = next(counter)
                await ws.send_json({"id": i, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json(timeout=60)
                    if msg.get("id") == i:
                        assert "error" not in msg, msg
                        return msg.get("result", {})

            async def js(expr: str) -> Any:
                res = await cdp("Runtime.evaluate", expression=expr, returnByValue=True)
                return res["result"].get("value")

            async def click(selector: str) -> None:
                box = f"document.querySelector('{selector}').getBoundingClientRect()"
                centre = "[r.x + r.width / 2, r.y + r.height / 2]"
                x, y = await js(f"(() => {{const r = {box}; return {centre};}})()")
                for kind in ("mousePressed", "mouseReleased"):
                    await cdp("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

            async def key(k: str, code: str, vk: int, text: str) -> None:
                ev = {"key": k, "code": code, "windowsVirtualKeyCode": vk}
                await cdp("Input.dispatchKeyEvent", type="keyDown", text=text, **ev)
                await cdp("Input.dispatchKeyEvent", type="keyUp", **ev)

            async def wait_for(expr: str) -> Any:
                for _ in range(200):
                    value = await js(expr)
                    if value:
                        return value
                    await asyncio.sleep(0.1)
                raise AssertionError(f"timed out waiting for {expr}")

            await cdp("Page.enable")
            await cdp("Page.navigate", url=url + "/")
            await wait_for("document.readyState === 'complete' && !!document.getElementById('rater')")
            await click("#rater")
            await cdp("Input.insertText", text="chrome1")
            await click("#start")
            seen = []
            for n in range(3):
                progress = await wait_for(
                    f"!document.getElementById('study').hidden && "
                    f"document.getElementById('progress').textContent.startsWith('{n + 1} /') && "
                    "document.getElementById('progress').textContent"
                )
                seen.append(await js("document.getElementById('prompt').textContent"))
                assert progress == f"{n + 1} / {N_PAIRS}"
                await key("1", "Digit1", 49, "1")
                await key("4", "Digit4", 52, "4")
                await key("Enter", "Enter", 13, "\r")
            await wait_for("document.getElementById('progress').textContent.startsWith('4 /')")
            await ws.close()
            return seen

    try:
        prompts = asyncio.run(asyncio.wait_for(drive(), timeout=180))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.shutdown()
    votes = read_votes(str(folders["study"]))
    assert [v["prompt"] for v in votes] == prompts and {v["rater"] for v in votes} == {"chrome1"}
    for v in votes:  # key 1 = left for alignment, key 4 = right for quality, through the seal
        right = "b" if v["left"] == "a" else "a"
        assert v["alignment"]["winner"] == v["left"] and v["quality"]["winner"] == right
    t = tally(str(folders["study"]))
    assert t["votes"] == 3 and t["questions"]["alignment"]["a"] == sum(v["left"] == "a" for v in votes)


def test_a_study_refuses_a_prompts_file_with_an_unreadable_row(folders: dict[str, Path]) -> None:
    from training.eval.study import StudyError

    with folders["prompts"].open("a", encoding="utf-8") as f:
        f.write('["not", "an object"]\n')
    with pytest.raises(StudyError, match=r"prompts\.jsonl:52: unreadable row .*not a JSON object"):
        open_study(str(folders["study"]), str(folders["a"]), str(folders["b"]), str(folders["prompts"]))
    assert not (folders["study"] / "study.json").exists()
