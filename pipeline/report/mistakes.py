"""The gallery of report.html: the mistakes of one experiment, or where several disagree, shown as
the images the model saw, with where it looked.

One experiment: the ``top`` most confident false positives (target 0, highest prediction first) and
false negatives (target 1, lowest prediction first). Several: the ``top`` rows whose pooled
percentile ranks of pred differ most between the experiments (ranks, not pred: experiments differ
in scale), with each experiment's prediction and rank. Ties are broken by id.

Each card holds the image at the trained size, as its model saw it (pipeline/experiment/images.py:
the decoded cache, else the image file), the id, patient, fold, target, prediction, diagnosis and
the raw meta columns as data.csv recorded them; and beside the image, with ``overlays``, each
experiment's Grad-CAM overlay, made by the model of the fold that predicted the row out of fold
(``overlays`` is given by the command line: pipeline/train/cam.py, where torch is; this layer imports
without it). Images go into the page as base64 PNGs. A missing image, or an experiment without
checkpoints, is said on its cards and in one console line, and the rest of the gallery is made.
"""
from __future__ import annotations

import base64
import html
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.errors import first_few
from pipeline.experiment.images import Seen, Trained, meta_columns, open_trained, seen_images

# (experiment folder, rows (id, fold), {id: pixels}) -> ({id: overlay pixels, or why there is none}, about)
Overlays = Callable[[Path, pd.DataFrame, dict], tuple[dict, str]]

STYLE = """#mistakes .cards{display:flex;flex-wrap:wrap;gap:10px;margin:0.5em 0 1.5em}
#mistakes .card{border:1px solid #ccc;padding:6px;width:300px;font-size:12px}
#mistakes .views{display:flex;flex-wrap:wrap;gap:4px}#mistakes figure{margin:0;text-align:center}
#mistakes img{width:136px;height:136px;image-rendering:pixelated;margin:0}
#mistakes table{margin:4px 0 0;font-size:12px}#mistakes td,#mistakes th{padding:1px 4px;white-space:normal}
#mistakes .missing{color:#a33;margin:2px 0}"""


# ---------------------------------------------------------------- which rows

def confident_mistakes(frame: pd.DataFrame, k: int = 0, top: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Experiment ``k``'s ``top`` most confident false positives (target 0, highest pred first) and
    false negatives (target 1, lowest pred first), rows of ``frame`` (cv.analyse's)."""
    pred = frame.assign(_pred=frame[f"pred:{k}"])
    fp = pred[pred["target"] == 0].sort_values(["_pred", "id"], ascending=[False, True], kind="stable")
    fn = pred[pred["target"] == 1].sort_values(["_pred", "id"], ascending=[True, True], kind="stable")
    return fp.head(top).drop(columns="_pred"), fn.head(top).drop(columns="_pred")


def disagreements(frame: pd.DataFrame, n: int, top: int = 12) -> pd.DataFrame:
    """The ``top`` rows on which the ``n`` experiments disagree most: the largest spread (max - min)
    of their pooled percentile ranks of pred, with a ``rank:k`` column each and ``spread``."""
    ranks = {f"rank:{k}": frame[f"pred:{k}"].rank(pct=True).to_numpy() for k in range(n)}
    table = np.column_stack(list(ranks.values()))
    out = frame.assign(**ranks, spread=table.max(axis=1) - table.min(axis=1))
    return out.sort_values(["spread", "id"], ascending=[False, True], kind="stable").head(top)


# ---------------------------------------------------------------- the images

def png_base64(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def say_missing(exp_dir: Path, trained: Trained, seen: dict[str, Seen]) -> None:
    """One console line for the gallery's images of ``exp_dir`` that were not found."""
    if trained.problem:
        print(f"warning: {trained.problem}: its gallery cards have no image", file=sys.stderr)
        return
    missing = {i: s.note for i, s in seen.items() if s.pixels is None}
    if missing:
        first, why = next(iter(missing.items()))
        print(f"warning: {exp_dir}: gallery image(s) not found: {first_few(list(missing))} ({first}: "
              f"{why.removeprefix('image not found: ')}); their cards say so", file=sys.stderr)


def experiment_overlays(exp_dir: Path, rows: pd.DataFrame, seen: dict[str, Seen],
                        make: Overlays | None) -> tuple[dict, str]:
    """``make``'s overlays of the rows whose image was found, or why there are none: off (``make`` is
    None), no image, or no fold<k>/best.pt left for the rows' folds (said in one line)."""
    if make is None:
        return {}, "Grad-CAM overlays: off (--no-cam)"
    pixels = {i: s.pixels for i, s in seen.items() if s.pixels is not None}
    if not pixels:
        return {}, f"{Path(exp_dir).name}: no overlays (no image found)"
    if not any((Path(exp_dir) / f"fold{int(f)}" / "best.pt").is_file() for f in rows["fold"].unique()):
        why = "no checkpoints left: no overlays"
        print(f"note: {exp_dir}: {why}")
        return {i: why for i in rows["id"]}, f"{Path(exp_dir).name}: {why}"
    return make(Path(exp_dir), rows[rows["id"].isin(list(pixels))][["id", "fold"]].reset_index(drop=True), pixels)


# ---------------------------------------------------------------- the page

def _figure(pixels: np.ndarray | None, cls: str, alt: str, caption: str, why: str = "") -> str:
    if pixels is None:
        return f"<p class=\"missing\">{html.escape(why)}</p>" if why else ""
    return (f"<figure><img class=\"{cls}\" alt=\"{html.escape(alt)}\" src=\"data:image/png;base64,"
            f"{png_base64(pixels)}\"><figcaption>{html.escape(caption)}</figcaption></figure>")


def facts(row: pd.Series, names: list[str], group_col: str | None, trained: list[Trained]) -> list[tuple[str, str]]:
    """What a card says of its row: id, patient, fold, target, each prediction (and rank), then the
    diagnosis and the meta columns from the first data.csv that has the row."""
    out = [("id", row["id"]), (group_col or "patient", "" if pd.isna(row["group"]) else row["group"]),
           ("fold", int(row["fold"])), ("target", int(row["target"]))]
    for k, name in enumerate(names):
        label = "pred" if len(names) == 1 else f"pred {name}"
        rank = f" (rank {row[f'rank:{k}']:.2f})" if f"rank:{k}" in row else ""
        out.append((label, f"{row[f'pred:{k}']:.4f}{rank}"))
    t = next((t for t in trained if t.cfg is not None and row["id"] in t.record.index), None)
    if t is not None:
        d = t.cfg.data
        recorded = t.record.loc[row["id"]]
        cols = ([d.diagnosis_col] if d.diagnosis_col else []) + meta_columns(t.cfg)
        out += [(c, "" if pd.isna(recorded[c]) else recorded[c]) for c in cols if c in recorded.index]
    return out


def card(row: pd.Series, names: list[str], group_col: str | None, trained: list[Trained],
         seen: list[dict], cams: list[dict]) -> str:
    """One row's card: its image (the first experiment's that was found), each experiment's overlay,
    what is missing, and its facts."""
    i = row["id"]
    found = next((s[i] for s in seen if s[i].pixels is not None), seen[0][i])
    views = [_figure(found.pixels, "thumb", i, "as the model saw it", found.note)]
    for k, name in enumerate(names):
        overlay = cams[k].get(i)
        if isinstance(overlay, np.ndarray):
            views.append(_figure(overlay, "cam", f"Grad-CAM of {i} ({name})", f"Grad-CAM {name}"))
        elif overlay:
            views.append(f"<p class=\"missing\">{html.escape(f'{name}: {overlay}' if len(names) > 1 else overlay)}</p>")
    note = f"<p class=\"missing\">{html.escape(found.note)}</p>" if found.pixels is not None and found.note else ""
    rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
                   for key, value in facts(row, names, group_col, trained))
    return (f"<div class=\"card\" data-id=\"{html.escape(i)}\"><div class=\"views\">{''.join(views)}</div>{note}"
            f"<table>{rows}</table></div>")


def gallery(a, top: int = 12, overlays: Overlays | None = None) -> str:
    """The gallery section of report.html (``id="mistakes"``) for ``a`` (cv.analyse's result):
    confident mistakes of one experiment, disagreements of several; one console line per missing
    thing (images of an experiment, its checkpoints) and the overlays' own lines."""
    frame, names = a.frame, a.names
    if len(names) == 1:
        fp, fn = confident_mistakes(frame, 0, top)
        groups = [("false-positives", f"False positives: the {len(fp)} most confident (target 0, highest pred)", fp),
                  ("false-negatives", f"False negatives: the {len(fn)} most confident (target 1, lowest pred)", fn)]
    else:
        dis = disagreements(frame, len(names), top)
        groups = [("disagreements", f"The {len(dis)} images the experiments disagree on most (largest spread "
                                    f"of their pooled percentile ranks)", dis)]
    shown = pd.concat([g for _, _, g in groups]).drop_duplicates("id")
    trained = [open_trained(d) for d in a.dirs]
    seen = [seen_images(t, shown["id"]) for t in trained]
    for d, t, s in zip(a.given, trained, seen):
        say_missing(d, t, s)
    made = [experiment_overlays(d, shown[["id", "fold"]], s, overlays) for d, s in zip(a.given, seen)]
    cams, about = [m[0] for m in made], list(dict.fromkeys(m[1] for m in made))
    parts = [f"<section id=\"mistakes\"><style>{STYLE}</style><h2>The mistakes, shown</h2>",
             f"<p class=\"small\">{html.escape(intro(names, top))}</p>"]
    parts += [f"<p class=\"small\">{html.escape(line)}</p>" for line in about]
    for gid, heading, rows in groups:
        cards = [card(r, names, frame.attrs.get("group_col"), trained, seen, cams) for _, r in rows.iterrows()]
        parts += [f"<h3>{html.escape(heading)}</h3>", f"<div class=\"cards\" id=\"{gid}\">{''.join(cards)}</div>"]
    return "\n".join(parts + ["</section>"])


def intro(names: list[str], top: int) -> str:
    what = (f"the {top} most confident false positives and false negatives of the out-of-fold predictions"
            if len(names) == 1 else f"the {top} images on which the experiments' out-of-fold predictions disagree most")
    return (f"Shown: {what}. Each image is as the model saw it: from the decoded-image cache at the trained size "
            f"(else the image file, decoded the same way). An overlay shows where a model looked: Grad-CAM of the "
            f"binary logit, made with the model of the fold that predicted the row out of fold (fold<k>/best.pt).")
