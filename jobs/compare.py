"""`vjp compare`: the seed report's human study as a tool (blind A/B of two folders of videos).

    vjp compare serve --a DIR_A --b DIR_B --prompts PROMPTS.jsonl --out STUDY \\
        [--label-a ours --label-b cogvideox] [--host 127.0.0.1] [--port 8765] [--token T]
    vjp compare tally STUDY [--eval EVAL]

serve creates STUDY/study.json on the first run (pairs by key: DIR_A/<key>.mp4 beside DIR_B/<key>.mp4,
the prompt from PROMPTS, e.g. `vjp eval`'s EVAL/prompts.jsonl; left/right drawn per pair and sealed
there) and serves the page; votes go to STUDY/votes.jsonl. tally prints and writes STUDY/tally.json
(win shares per question with Wilson intervals, per-rater counts, agreement); with --eval it also
puts the tally into that evaluation's report.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("serve", help="serve the blind A/B page (creates the study on the first run)")
    s.add_argument("--a", default=None, help="folder A (e.g. EVAL/generated)")
    s.add_argument("--b", default=None, help="folder B (e.g. a baseline's videos, named <key>.mp4)")
    s.add_argument("--prompts", default=None, help="JSONL with key and prompt per line")
    s.add_argument("--out", required=True, help="study folder (STUDY)")
    s.add_argument("--label-a", default="A", help="name of A in the tally (never shown to raters)")
    s.add_argument("--label-b", default="B")
    s.add_argument("--host", default="127.0.0.1", help="bind address (any other than loopback needs a token)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--token", default=None, help="per-study token for remote raters (generated if needed)")
    t = sub.add_parser("tally", help="win shares with Wilson intervals, per-rater counts, agreement")
    t.add_argument("study", help="study folder (STUDY)")
    t.add_argument("--eval", default=None, help="an EVAL folder: its report shows the tally")
    t.add_argument("--level", type=float, default=0.95, help="confidence level")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    from training.eval.study import StudyError, open_study, tally

    try:
        if args.action == "tally":
            result = tally(args.study, args.level)
            if args.eval:
                from training.eval.report import HUMAN, METRICS, write_report

                shutil.copy(os.path.join(args.study, "tally.json"), os.path.join(args.eval, HUMAN))
                if os.path.exists(os.path.join(args.eval, METRICS)):
                    write_report(args.eval)
            print(json.dumps(result, indent=2, ensure_ascii=False, sort_keys=True))
            return 0
        study = open_study(args.out, args.a, args.b, args.prompts, (args.label_a, args.label_b))
    except (StudyError, FileNotFoundError) as e:
        print(f"vjp compare: {e}", file=sys.stderr)
        return 2
    from training.eval.study_app import create_app

    token = args.token
    if token is None and not _loopback(args.host):
        token = secrets.token_urlsafe(16)
    app = create_app(args.out, token)
    url = f"http://{args.host}:{args.port}/" + (f"?token={token}" if token else "")
    skipped = f", {len(study['skipped'])} keys skipped" if study["skipped"] else ""
    print(f"vjp compare: {len(study['pairs'])} pairs{skipped}; raters open {url}", file=sys.stderr)
    app.run(host=args.host, port=args.port, threaded=True)
    return 0
