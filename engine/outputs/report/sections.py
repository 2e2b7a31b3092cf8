"""The sections of report.html, each from a `RunFiles` (see rundata); markup only, report.js adds behaviour."""

from __future__ import annotations

import numpy as np

from emoengine.engine.outputs.report.page import clock, esc, figure, href, image_link, legend, num, table
from emoengine.engine.outputs.report.rundata import REPORT_NAME, SUMMARY_NAME, RunFiles, face_stats

RANDOM_BANNER = ("RANDOM WEIGHTS: this run used untrained EmoNet weights. Every expression, valence and arousal "
                 "below is meaningless; the page shows the machinery, not emotions.")


def banner(summary: dict) -> str:
    return f'<div class="banner-random" role="alert">{RANDOM_BANNER}</div>' if summary.get("random_weights") else ""


def player(run: RunFiles, duration: float) -> str:
    """The annotated video and every tap's feature-map video; report.js keeps them in sync."""
    tiles = []
    videos = [(run.annotated_video, "annotated video")] + [(t.video, f"{t.name} feature map") for t in run.taps]
    for path, caption in videos:
        if path:
            media = f'<video class="synced" src="{href(path)}" muted playsinline preload="auto"></video>'
            button = '<button type="button" class="enlarge" title="enlarge / shrink">⤢</button>'
            tiles.append(figure(media, f"{esc(caption)} {button}"))
    if not tiles:
        return ""
    return f"""<section id="player"><h2>Video</h2>
<div class="tiles">{"".join(tiles)}</div>
<div class="controls">
<button type="button" id="play">▶ play</button>
<button type="button" id="frame-back" title="one frame back (←)">◀ frame</button>
<button type="button" id="frame-fwd" title="one frame on (→)">frame ▶</button>
<input id="seek" type="range" min="0" max="{duration:.4f}" step="any" value="0" aria-label="seek">
<span id="clock">0:00.00 / {clock(duration)}</span>
</div>
<p class="hint">Space plays and pauses every video; ← and → step one frame; click or drag the timeline to seek;
⤢ enlarges a video.</p></section>"""


def timeline(run: RunFiles, data: dict, va_range: int) -> str:
    if not data["faces"]:
        return '<section id="timeline-section"><h2>Timeline</h2><p class="note">No face was found.</p></section>'
    tracks = "".join(
        f'<div class="track"><div class="track-label">face {face["id"]} <span class="readout"></span></div>'
        f'<canvas class="lane" data-face="{k}"></canvas></div>' for k, face in enumerate(data["faces"]))
    bucket = data["bucket_frames"]
    if bucket == 1:
        note = "Every frame is drawn."
    else:
        note = (f"Decimated to keep this page small: each point is the mean of {bucket} consecutive frames "
                f"({data['bucket_s']:.2f} s) of one face, and the shaded bands are valence's and arousal's "
                "minimum–maximum within those frames. predictions.csv has every frame.")
    if data["faces_total"] > len(data["faces"]):
        note += (f" Shown: the {len(data['faces'])} faces seen in the most frames, of {data['faces_total']}; "
                 "the table below lists all.")
    return f"""<section id="timeline-section"><h2>Timeline</h2>
{legend(run.predictions.classes)}
<p class="lanes-key">Top of each lane: expression probabilities (0 to 1). Bottom: valence and arousal
(−{va_range} to {va_range}).</p>
<div id="timeline">{tracks}<canvas id="axis"></canvas><div id="playhead"></div></div>
<p class="note">{esc(note)}</p></section>"""


def faces_table(run: RunFiles) -> str:
    stats = face_stats(run.predictions)
    if not stats:
        return ""
    rows = [[str(s["face"]), str(s["frames"]), f"{clock(s['first_s'])}–{clock(s['last_s'])}",
             f"{esc(s['dominant'])} ({100 * s['share']:.0f} %)",
             *(f"{num(m, signed=True)} [{num(lo, signed=True)}, {num(hi, signed=True)}]"
               for m, lo, hi in (s["valence"], s["arousal"]))] for s in stats]
    header = ["face", "frames", "seen", "dominant expression (share of its frames)", "valence mean [min, max]",
              "arousal mean [min, max]"]
    return f'<section id="faces"><h2>Faces</h2>{table(header, rows, "faces")}</section>'


def gallery(run: RunFiles) -> str:
    """Image inputs: each annotated still with the predictions of its faces."""
    pred = run.predictions
    order = np.argsort(pred.frame, kind="stable")
    frames, starts = np.unique(pred.frame[order], return_index=True)
    groups = dict(zip(frames.tolist(), np.split(order, starts[1:]), strict=True)) if len(order) else {}
    items = []
    for frame in sorted(set(run.image_files) | set(run.stills) | set(groups)):
        name = run.image_files.get(frame) or str(run.summary.get("input", ""))
        rows = [[str(pred.face_id[r]), esc(pred.classes[int(np.argmax(pred.probs[r]))]),
                 num(float(np.max(pred.probs[r]))), num(pred.valence[r], signed=True),
                 num(pred.arousal[r], signed=True)] for r in groups.get(frame, [])]
        faces = table(["face", "expression", "p", "valence", "arousal"], rows, "mini") if rows else "no face"
        still = run.stills.get(frame)
        media = image_link(still, name, lazy=True) if still else '<div class="no-image">no annotated image</div>'
        items.append(figure(media, f"<b>{esc(name)}</b>{faces}", cls="still"))
    return f'<section id="gallery"><h2>Images</h2><div class="gallery">{"".join(items)}</div></section>'


def mean_maps(run: RunFiles) -> str:
    maps = [figure(image_link(t.mean, t.name), f"{esc(t.name)}: mean over the frames with a face", cls="mean")
            for t in run.taps if t.mean]
    return f'<section id="means"><h2>Mean feature maps</h2><div class="means">{"".join(maps)}</div></section>' \
        if maps else ""


def _fact_rows(s: dict) -> list[tuple[str, str]]:
    opts = s.get("options") or {}
    rows = [("input", f"{s.get('input', '–')} ({s.get('input_kind', '?')})"),
            ("frames", f"{s.get('frames', '–')} ({s.get('frames_with_face', '–')} with a face), "
                       f"{s.get('faces', '–')} face detections"),
            ("frame rate of the input", f"{num(s.get('fps'))} frames/s"),
            ("backend · detector", f"{s.get('backend', '–')} · {s.get('detector', '–')}"),
            ("weights", s.get("weights") or "– (not recorded by the run that wrote this folder)"),
            ("weights sha256", s.get("weights_sha256") or "–"),
            ("random weights", "YES" if s.get("random_weights") else "no"),
            ("classes", ", ".join(s.get("classes") or ())),
            ("speed", f"{num(s.get('frames_per_s'))} frames/s, {num(s.get('faces_per_s'))} faces/s, "
                      f"{num(s.get('wall_s'), 1)} s wall"),
            ("options", ", ".join(f"{k} {v}" for k, v in opts.items() if v is not None))]
    if s.get("bad_frames"):
        rows.append(("damaged frames skipped", str(s["bad_frames"])))
    if s.get("skipped_inputs"):
        rows.append(("unreadable images skipped", ", ".join(map(str, s["skipped_inputs"]))))
    if s.get("ended_by_user"):
        rows.append(("ended", "by the user (Ctrl-C on a live input)"))
    return rows


def facts(summary: dict) -> str:
    facts_table = table(["", ""], [[esc(k), esc(v)] for k, v in _fact_rows(summary)], "facts")
    waits = summary.get("queue_wait_s") or {}
    stages = [[esc(name), num(busy), num((waits.get(name) or {}).get("in")), num((waits.get(name) or {}).get("out"))]
              for name, busy in (summary.get("stages") or {}).items()]
    stage_table = table(["stage", "busy s", "waited for input s", "waited for output s"], stages, "stages")
    return f'<section id="facts"><h2>Run</h2>{facts_table}<h3>Stages</h3>{stage_table}</section>'


def files_list(run: RunFiles) -> str:
    """Links to the run's files (summary.json is written just after the report, at commit)."""
    items = []
    for name in run.summary.get("files") or ():
        path = run.folder / name
        if name == SUMMARY_NAME:
            items.append(f'<li><a href="{href(name)}">{esc(name)}</a></li>')
        elif path.is_file() and name != REPORT_NAME:
            items.append(f'<li><a href="{href(name)}">{esc(name)}</a> ({path.stat().st_size / 1024:.0f} KiB)</li>')
        elif path.is_dir():
            items.append(f"<li>{esc(name)}/ ({sum(1 for _ in path.iterdir())} files)</li>")
    return f'<section id="files"><h2>Files</h2><ul>{"".join(items)}</ul></section>'
