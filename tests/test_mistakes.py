"""The gallery of report.html (python -m pipeline cv): the most confident mistakes of one experiment,
the disagreements of several, the images as the model saw them, and Grad-CAM overlays made by each
row's own fold model. Runs on the session's finished tiny experiment (3 folds, 32 px)."""
from __future__ import annotations

import base64
import io
import re
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, copy_finished, run_cli, run_main
from PIL import Image

from pipeline.data.cache import decode
from pipeline.experiment.images import open_trained, seen_images
from pipeline.report import mistakes

IMG = re.compile(r'<img class="(thumb|cam)" alt="([^"]*)" src="data:image/png;base64,([^"]+)"')


def experiment(finished, tmp_path, cache: bool = True):
    """A copy of the finished experiment (its folder, data and, with ``cache``, its image cache)."""
    data, work = copy_finished(finished, tmp_path)
    if cache:
        shutil.copytree(finished / "cache", work / "cache")
    return data, work, work / "oof" / "tiny"


def section(report) -> str:
    page = report.read_text()
    assert page.count('<section id="mistakes">') == 1
    return page[page.index('<section id="mistakes">'):page.index("</section>") + len("</section>")]


def cards(html: str, group: str) -> list[str]:
    """The data-id of each card in the cards container ``group``, in order."""
    block = html[html.index(f'id="{group}"'):]
    block = block[:block.index("<h3>")] if "<h3>" in block else block
    return re.findall(r'<div class="card" data-id="([^"]+)"', block)


def pngs(html: str) -> list[tuple[str, str, np.ndarray]]:
    """(class, alt, pixels) of every embedded image: each must decode as a PNG."""
    out = []
    for cls, alt, data in IMG.findall(html):
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        out.append((cls, alt, np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))))
    return out


# ---------------------------------------------------------------- which rows are shown

def frame(preds: dict, target) -> pd.DataFrame:
    n = len(target)
    out = pd.DataFrame({"id": [f"r{i}" for i in range(n)], "fold": np.arange(n) % 3, "target": target,
                        "group": pd.array([f"p{i // 2}" for i in range(n)], dtype="string")})
    for k, pred in enumerate(preds.values()):
        out[f"pred:{k}"] = pred
    return out


def test_the_most_confident_false_positives_and_negatives_in_order():
    target = [0, 0, 0, 0, 1, 1, 1, 1, 0, 1]
    pred = [0.9, 0.1, 0.95, 0.9, 0.2, 0.8, 0.05, 0.3, 0.5, 0.2]
    fp, fn = mistakes.confident_mistakes(frame({"a": pred}, target), 0, top=3)
    assert fp["id"].tolist() == ["r2", "r0", "r3"]  # highest pred of target 0; the tie r0/r3 by id
    assert fn["id"].tolist() == ["r6", "r4", "r9"]  # lowest pred of target 1
    fp, fn = mistakes.confident_mistakes(frame({"a": pred}, target), 0, top=12)
    assert len(fp) == 5 and len(fn) == 5  # no more than there are


def test_a_comparison_shows_where_the_ranks_disagree_most_whatever_the_scale():
    rng = np.random.default_rng(0)
    a = rng.random(40)
    b = a.copy()
    b[[7, 21]] = b[[21, 7]]  # b swaps the ranks of two rows...
    b[3] = 1 - b[3]          # ...and turns one round
    c = a ** 3 / 10          # the same order as a on another scale: no disagreement of its own
    picks = mistakes.disagreements(frame({"a": a, "b": b, "c": c}, rng.integers(0, 2, 40)), 3, top=3)
    spread = {i: abs(pd.Series(a).rank(pct=True)[i] - pd.Series(b).rank(pct=True)[i]) for i in (3, 7, 21)}
    assert set(picks["id"]) == {"r3", "r7", "r21"}
    assert picks["id"].tolist() == [f"r{i}" for i in sorted(spread, key=lambda i: (-spread[i], f"r{i}"))]
    assert np.allclose(picks["spread"], sorted(spread.values(), reverse=True))


def test_a_card_tells_the_row_its_diagnosis_and_meta_columns(finished, tmp_path):
    _, _, exp = experiment(finished, tmp_path)
    trained = open_trained(exp)
    trained.cfg.data.diagnosis_col = "diagnosis"  # the sample has one; the tiny config leaves it out
    trained.record["diagnosis"] = "nevus"
    row_id = trained.record.index[0]
    row = pd.Series({"id": row_id, "group": "IP_1", "fold": 2, "target": 0, "pred:0": 0.875})
    facts = dict(mistakes.facts(row, ["tiny"], "patient_id", [trained]))
    recorded = trained.record.loc[row_id]
    assert facts == {"id": row_id, "patient_id": "IP_1", "fold": 2, "target": 0, "pred": "0.8750",
                     "diagnosis": "nevus", "sex": recorded["sex"], "anatom_site_general_challenge":
                     recorded["anatom_site_general_challenge"], "age_approx": recorded["age_approx"]}


# ---------------------------------------------------------------- the images the model saw

def test_pixels_come_from_the_cache_by_content_else_from_the_file(finished, tmp_path):
    data, work, exp = experiment(finished, tmp_path)
    ids = open_trained(exp).record.index[:3].tolist()
    cache = np.load(next((work / "cache").glob("train_32px_*.npy")))
    order = pd.read_csv(exp / "data.csv", dtype=str)["image_name"].tolist()  # no row skipped: cache rows
    # the file replaced after training: the cache still holds what the model saw
    Image.new("RGB", (48, 48), (255, 0, 0)).save(data / "train" / f"{ids[0]}.jpg")
    seen = seen_images(open_trained(exp), ids)
    for i in ids:
        assert np.array_equal(seen[i].pixels, cache[order.index(i)]) and seen[i].note == ""
    shutil.rmtree(work / "cache")  # no cache: the files, decoded as the cache decodes them
    seen = seen_images(open_trained(exp), ids)
    assert np.array_equal(seen[ids[1]].pixels, cache[order.index(ids[1])]) and seen[ids[1]].note == ""
    assert np.array_equal(seen[ids[0]].pixels, decode(data / "train" / f"{ids[0]}.jpg", 32))
    assert seen[ids[0]].note.endswith("changed since training: shown as it is now")
    (data / "train" / f"{ids[2]}.jpg").unlink()
    assert seen_images(open_trained(exp), ids)[ids[2]].note.startswith("image not found: not in the cache, and no file")


# ---------------------------------------------------------------- the report, through the command

def test_the_cli_report_holds_the_gallery_with_overlays_from_the_fold_models(finished, tmp_path):
    _, work, exp = experiment(finished, tmp_path)
    proc = run_cli("-m", "pipeline", "cv", str(exp), "--top", "3", "--bootstrap", "0", "--out", str(tmp_path / "r"),
                   cwd=work)
    seconds = re.search(r"Grad-CAM of \S+: 6 overlay\(s\) in (\d+\.\d) s \(tf_efficientnet_lite0, layer (\S+) "
                        r"\((\d)x(\d)\)\)", proc.stdout)
    assert seconds, proc.stdout
    assert int(seconds.group(3)) >= 2  # at 32 px the last stage is 1x1: an earlier, larger map is hooked
    html = section(tmp_path / "r" / "report.html")
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": str})
    fp, fn = mistakes.confident_mistakes(oof.rename(columns={"image_name": "id", "pred": "pred:0"}), 0, 3)
    assert cards(html, "false-positives") == fp["id"].tolist() and cards(html, "false-negatives") == fn["id"].tolist()
    images = pngs(html)
    assert [c for c, _, _ in images] == ["thumb", "cam"] * 6
    assert all(px.shape == (32, 32, 3) for _, _, px in images)  # the trained size
    for i in fp["id"]:  # each card says what the row is
        card = html[html.index(f'data-id="{i}"'):]
        pred = oof.set_index("image_name").loc[i]
        assert f"<th>pred</th><td>{pred['pred']:.4f}</td>" in card[:card.index("</table>")]
        assert f"<th>fold</th><td>{pred['fold']}</td>" in card and "<th>age_approx</th>" in card


def test_each_overlay_is_made_by_the_model_of_the_rows_fold(finished, tmp_path, monkeypatch, request):
    import torch
    from pipeline.train import cam
    request.addfinalizer(lambda n=torch.get_num_threads(): torch.set_num_threads(n))
    torch.set_num_threads(2)  # the overlays run on one thread whatever the process uses
    _, work, exp = experiment(finished, tmp_path)
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": str}).rename(columns={"image_name": "id"})
    rows = oof.groupby("fold").head(2)[["id", "fold"]].reset_index(drop=True)  # two rows of each fold
    pixels = {i: s.pixels for i, s in seen_images(open_trained(exp), rows["id"]).items()}
    folder_of, used, targets, threads = {}, {}, [], set()
    real_model, real_overlay, real_target = cam.predicting_model, cam.overlay, cam.ClassifierOutputTarget

    def load(cfg, n_meta, fold_dir, *args, **kwargs):
        model, rt = real_model(cfg, n_meta, fold_dir, *args, **kwargs)
        folder_of[id(model)] = fold_dir
        return model, rt

    def overlay(model, rt, layer, px, meta):
        used[next(i for i in pixels if pixels[i] is px)] = folder_of[id(model)]
        threads.add(torch.get_num_threads())
        return real_overlay(model, rt, layer, px, meta)

    monkeypatch.setattr(cam, "predicting_model", load)
    monkeypatch.setattr(cam, "overlay", overlay)
    monkeypatch.setattr(cam, "ClassifierOutputTarget", lambda k: targets.append(k) or real_target(k))
    made, about = cam.overlays(exp, rows, pixels)
    assert sorted(p.name for p in folder_of.values()) == ["fold0", "fold1", "fold2"]  # each fold model once
    assert used == {i: exp / f"fold{f}" for i, f in zip(rows["id"], rows["fold"])}
    assert targets == [0] * len(rows) and threads == {1}  # the binary logit, on one CPU thread
    trained = open_trained(exp)
    meta = cam.meta_rows(exp, trained)
    for k, part in rows.groupby("fold"):  # the same overlays, made by hand with the fold's best.pt
        model, rt = real_model(trained.cfg, len(meta[part["id"].iloc[0]]), exp / f"fold{k}", progress=False)
        layer = cam.target_layer(model.backbone, 32)[1]
        assert all(np.array_equal(made[i], real_overlay(model, rt, layer, pixels[i], meta[i])) for i in part["id"])
    assert "each by its row's fold model" in about


def test_meta_rows_are_the_features_the_model_was_trained_on(finished, tmp_path):
    from pipeline.data.prepare import prepare
    from pipeline.train import cam
    _, work, exp = experiment(finished, tmp_path)
    trained = open_trained(exp)
    data = prepare(trained.cfg)  # what training read: the table, its meta features
    meta = cam.meta_rows(exp, trained)
    ids = data.df["image_name"]
    assert np.array_equal(np.stack([meta[i] for i in ids]), data.meta)


def test_the_wrapped_model_is_the_model_with_its_meta_row_fixed(finished, tmp_path):
    import torch
    from pipeline.train import cam
    from pipeline.train.checkpoints import predicting_model
    _, _, exp = experiment(finished, tmp_path)
    trained = open_trained(exp)
    meta = next(iter(cam.meta_rows(exp, trained).values()))
    model, _ = predicting_model(trained.cfg, len(meta), exp / "fold0", progress=False)
    x, m = torch.randn(2, 3, 32, 32), torch.as_tensor(meta)
    with torch.no_grad():
        assert torch.equal(cam.FixedMeta(model, m)(x), model(x, m.expand(2, -1)))


def test_no_cam_makes_no_overlay(finished, tmp_path):
    _, work, exp = experiment(finished, tmp_path)
    proc = run_main("-m", "pipeline", "cv", exp, "--top", "2", "--no-cam", "--bootstrap", "0", "--out", tmp_path / "r",
                    cwd=work)
    html = section(tmp_path / "r" / "report.html")
    assert [c for c, _, _ in pngs(html)] == ["thumb"] * 4 and 'class="cam"' not in html
    assert "Grad-CAM overlays: off (--no-cam)" in html and "Grad-CAM of" not in proc.stdout


def test_a_missing_image_and_no_checkpoints_are_one_line_each_and_the_report_is_made(finished, tmp_path):
    data, work, exp = experiment(finished, tmp_path, cache=False)
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": str})
    worst = oof[oof["target"] == 0].sort_values("pred", ascending=False)["image_name"].iloc[0]
    (data / "train" / f"{worst}.jpg").unlink()
    for best in exp.glob("fold*/best.pt"):
        best.unlink()  # retired: no weights left
    proc = run_main("-m", "pipeline", "cv", exp, "--top", "2", "--bootstrap", "0", "--out", tmp_path / "r", cwd=work)
    missing = [x for x in proc.stderr.splitlines() if "gallery" in x]
    assert missing == [f"warning: {exp}: gallery image(s) not found: {worst} (1 in all) ({worst}: not in the "
                       f"cache, and no file {data / 'train' / worst}.jpg); their cards say so"]
    assert [x for x in proc.stdout.splitlines() if "overlay" in x] == [f"note: {exp}: no checkpoints left: no overlays"]
    html = section(tmp_path / "r" / "report.html")
    card = html[html.index(f'data-id="{worst}"'):]
    assert card.index("image not found") < card.index("</div></div>")
    assert [c for c, _, _ in pngs(html)] == ["thumb"] * 3 and "no checkpoints left: no overlays" in html


def test_an_experiment_without_data_csv_gets_cards_without_images(finished, tmp_path):
    _, work, exp = experiment(finished, tmp_path)
    (exp / "data.csv").unlink()
    proc = run_main("-m", "pipeline", "cv", exp, "--top", "1", "--bootstrap", "0", "--out", tmp_path / "r", cwd=work)
    assert [x for x in proc.stderr.splitlines() if "gallery" in x] == [
        f"warning: {exp}: no data.csv (the record of its training images): its gallery cards have no image"]
    html = section(tmp_path / "r" / "report.html")
    assert len(cards(html, "false-positives")) == 1 and not pngs(html)


def test_the_hooked_layer_is_the_last_feature_map_of_2x2_or_more():
    import timm
    from pipeline.train import cam
    lite0 = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    assert [cam.target_layer(lite0, size)[::2] for size in (192, 64)] == [("bn2", (6, 6)), ("bn2", (2, 2))]
    name, _, grid = cam.target_layer(lite0, 32)  # the last stage is 1x1 here: the map before it
    assert grid == (2, 2) and name.startswith("blocks.")


def test_a_backbone_without_a_feature_map_cannot_be_hooked(finished, tmp_path, monkeypatch):
    import timm
    from pipeline.train import cam
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=0)
    with pytest.raises(cam.CannotHook, match="not a feature map"):
        cam.target_layer(vit, 32)

    def cannot(backbone, size):
        raise cam.CannotHook("test")

    _, work, exp = experiment(finished, tmp_path)
    monkeypatch.setattr(cam, "target_layer", cannot)
    proc = run_main("-m", "pipeline", "cv", exp, "--top", "1", "--bootstrap", "0", "--out", tmp_path / "r", cwd=work)
    assert [x for x in proc.stdout.splitlines() if "Grad-CAM" in x] == [
        f"warning: {exp}: Grad-CAM cannot hook the backbone tf_efficientnet_lite0 (test): no overlays"]
    html = section(tmp_path / "r" / "report.html")
    assert [c for c, _, _ in pngs(html)] == ["thumb"] * 2 and "the backbone cannot be hooked" in html


def test_without_the_grad_cam_package_one_line_and_no_overlays(monkeypatch, capsys):
    from pipeline import cli
    monkeypatch.setitem(sys.modules, "pipeline.train.cam", None)
    assert cli.cam_overlays(ROOT, pd.DataFrame({"id": [], "fold": []}), {})[0] == {}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: no Grad-CAM overlays: ")


def test_a_comparison_shows_the_disagreements_with_each_experiments_prediction_and_overlay(finished, tmp_path):
    _, work, exp = experiment(finished, tmp_path)
    other = work / "oof" / "noisy"
    shutil.copytree(exp, other)
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": str})
    rng = np.random.default_rng(0)
    oof.assign(pred=np.clip(oof["pred"] + rng.normal(0, 0.2, len(oof)), 0, 1)).to_csv(other / "oof.csv", index=False)
    run_main("-m", "pipeline", "cv", exp, other, "--top", "2", "--bootstrap", "0", "--out", tmp_path / "r", cwd=work)
    html = section(tmp_path / "r" / "report.html")
    frame = oof.rename(columns={"image_name": "id", "pred": "pred:0"}).assign(
        **{"pred:1": pd.read_csv(other / "oof.csv")["pred"]})
    picks = mistakes.disagreements(frame, 2, top=2)
    assert cards(html, "disagreements") == picks["id"].tolist()
    assert [(c, alt) for c, alt, _ in pngs(html)] == [
        x for i in picks["id"] for x in [("thumb", i), ("cam", f"Grad-CAM of {i} (tiny)"),
                                         ("cam", f"Grad-CAM of {i} (noisy)")]]
    first = html[html.index(f'data-id="{picks["id"].iloc[0]}"'):]
    first = first[:first.index("</table>")]
    assert "<th>pred tiny</th>" in first and "<th>pred noisy</th>" in first and first.count(" (rank ") == 2


def test_a_fold_without_its_best_pt_is_one_line_and_the_other_folds_have_overlays(finished, tmp_path, capsys):
    from pipeline.train import cam
    _, _, exp = experiment(finished, tmp_path)
    (exp / "fold1" / "best.pt").unlink()
    oof = pd.read_csv(exp / "oof.csv", dtype={"image_name": str}).rename(columns={"image_name": "id"})
    rows = oof.groupby("fold").head(1)[["id", "fold"]].reset_index(drop=True)
    made, _ = cam.overlays(exp, rows, {i: s.pixels for i, s in seen_images(open_trained(exp), rows["id"]).items()})
    lines = capsys.readouterr().out.splitlines()
    assert [x for x in lines if "fold 1" in x] == [x for x in lines if x.startswith("warning")]
    assert len([x for x in lines if x.startswith("warning")]) == 1
    assert {f: isinstance(made[i], np.ndarray) for i, f in zip(rows["id"], rows["fold"])} == {0: True, 1: False, 2: True}
    assert made[rows["id"][1]] == "no overlay: no usable fold1/best.pt"


def test_top_below_one_is_refused(capsys):
    from pipeline import cli
    with pytest.raises(SystemExit) as e:
        cli.cv_main(["oof/none", "--top", "0"])
    assert e.value.code == 2 and "--top must be >= 1" in capsys.readouterr().err
