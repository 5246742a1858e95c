"""The benchmark scripts' own bookkeeping: a per-site table written by ``ablation_phycharm.py``
can stand in for its reference run (the baselines it compares against), and
``validation_rule.py`` decides from paired rows as its rule says."""

from __future__ import annotations

import csv
import os

import conftest
import numpy as np
import pytest


def _load(name):
    return conftest.load_module("benchmarks", name)


def _reference(rng, ablation):
    sites = ("siteA", "siteB", "overall")
    methods = ablation.BASELINES + ("rescan", "phycharm")
    return {(m, s): {k: float(rng.uniform(0.5, 30.0)) for k, _, _ in ablation.METRICS}
            for m in methods for s in sites}


def test_table_round_trips_the_best_baselines(tmp_path):
    ablation = _load("ablation_phycharm")
    reference = _reference(np.random.default_rng(0), ablation)
    sites = ["siteA", "siteB", "overall"]
    path = tmp_path / "t.md"
    path.write_text("\n".join(ablation.table(reference, [("v", reference)], sites)) + "\n")
    stand_in = ablation.read_table(str(path))
    for site in sites:
        for key, _, higher in ablation.METRICS:
            vals = [reference[(m, site)][key] for m in ablation.BASELINES]
            best = max(vals) if higher else min(vals)
            got = [v[key] for (m, s), v in stand_in.items()
                   if s == site and m != "rescan" and key in v]
            assert got == [pytest.approx(best, abs=5e-4)]      # written with 3 decimals
            assert stand_in[("rescan", site)][key] == pytest.approx(
                reference[("rescan", site)][key], abs=5e-4)
    # the stand-in gives the same table, so the same cells are bold
    again = ablation.table(stand_in, [("v", reference)], sites)
    assert again == ablation.table(reference, [("v", reference)], sites)


def test_summary_counts_the_bold_cells_and_the_seeds_agreement():
    """The cell counts equal the bold cells of the table (the overall row excluded), and the
    agreement of two variants equals a cell-by-cell comparison of their bold marks."""
    ablation = _load("ablation_phycharm")
    rng = np.random.default_rng(1)
    reference = _reference(rng, ablation)
    variants = [(name, {("phycharm", s): {k: float(rng.uniform(0.5, 30.0))
                                         for k, _, _ in ablation.METRICS}
                        for s in ("siteA", "siteB", "overall")}) for name in ("s0", "s1")]
    sites = ["siteA", "siteB", "overall"]
    rows = [line.split("|") for line in ablation.table(reference, variants, sites)[2:]]
    bold = {name: {(r[1].strip(), i) for r in rows if r[2].strip() == name
                   and r[1].strip() != "overall" for i, c in enumerate(r[3:-1]) if "**" in c}
            for name, _ in variants}
    lines = ablation.summary(reference, variants, sites, agree=("s0", "s1"))
    assert lines[0].endswith(f"s0 {len(bold['s0'])}, s1 {len(bold['s1'])}")
    every, some = bold["s0"] & bold["s1"], bold["s0"] | bold["s1"]
    n = 2 * len(ablation.METRICS)
    assert f": {len(every)}; by some: {len(some - every)}; by none: {n - len(some)}." in lines[1]
    assert 0 < len(some) < n          # random values: the check is not vacuous
    with pytest.raises(SystemExit, match="s2"):
        ablation.summary(reference, variants, sites, agree=("s0", "s2"))


def test_read_table_refuses_another_file(tmp_path):
    ablation = _load("ablation_phycharm")
    path = tmp_path / "notes.md"
    path.write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    with pytest.raises(ValueError, match="no 'best baseline' rows"):
        ablation.read_table(str(path))


def _write_rows(path, setting, rows):
    fields = ["subject", "site", "setting", "ssim", "psnr", "dice_csf", "dice_gm", "dice_wm",
              "dv_csf", "dv_gm", "dv_wm"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for (subject, site), values in rows.items():
            writer.writerow({"subject": subject, "site": site, "setting": setting, **values})


@pytest.mark.parametrize("psnr_shift, dv_shift, dice_shift, verdict", [
    (-0.2, 0.1, 0.01, "passes"),    # inside both tolerances, GM Dice up
    (-0.5, 0.0, 0.01, "fails"),     # PSNR falls by more than 0.3 dB
    (0.0, 0.5, 0.01, "fails"),      # mean |dV| rises by more than 0.2 points
    (0.5, -1.0, -0.001, "fails"),   # everything better but GM Dice
])
def test_validation_rule_decides_as_declared(tmp_path, capsys, psnr_shift, dv_shift, dice_shift,
                                             verdict):
    rule = _load("validation_rule")
    rng = np.random.default_rng(1)
    base = {(f"sub-{i:02d}", site): {"ssim": rng.uniform(0.9, 1), "psnr": rng.uniform(20, 30),
                                     "dice_csf": rng.uniform(0.8, 0.95),
                                     "dice_gm": rng.uniform(0.8, 0.95),
                                     "dice_wm": rng.uniform(0.8, 0.95),
                                     "dv_csf": rng.uniform(-9, 9), "dv_gm": rng.uniform(2, 9),
                                     "dv_wm": rng.uniform(-9, 9)}
            for i in range(4) for site in ("a", "b")}
    # |dv_gm| moves by exactly dv_shift * 3 points, so the mean over tissues moves by dv_shift
    cand = {k: {**v, "psnr": v["psnr"] + psnr_shift, "dice_gm": v["dice_gm"] + dice_shift,
                "dv_gm": v["dv_gm"] + 3 * dv_shift} for k, v in base.items()}
    _write_rows(tmp_path / "b.csv", "s0", base)
    _write_rows(tmp_path / "c.csv", "new", cand)
    rule.main(["--baseline", f"{tmp_path / 'b.csv'}:s0", "--candidate", f"{tmp_path / 'c.csv'}:new"])
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"rule: {verdict}"
    assert out.startswith("8 images")


def test_validation_rule_refuses_unpaired_images(tmp_path):
    rule = _load("validation_rule")
    row = {"ssim": 0.9, "psnr": 25, "dice_csf": 0.9, "dice_gm": 0.9, "dice_wm": 0.9,
           "dv_csf": 1, "dv_gm": 1, "dv_wm": 1}
    _write_rows(tmp_path / "b.csv", "s0", {("sub-01", "a"): row, ("sub-02", "a"): row})
    _write_rows(tmp_path / "c.csv", "new", {("sub-01", "a"): row, ("sub-03", "a"): row})
    with pytest.raises(ValueError, match="different images"):
        rule.paired([f"{tmp_path / 'b.csv'}:s0"], [f"{tmp_path / 'c.csv'}:new"])
    with pytest.raises(ValueError, match="no rows of setting"):
        rule.read(f"{tmp_path / 'b.csv'}:other")


def _write_benchmark_csv(folder, rows, metrics):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "benchmark.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "site"] + [f"{k}_mean" for k, _, _ in metrics])
        writer.writeheader()
        for (method, site), values in rows.items():
            writer.writerow({"method": method, "site": site,
                             **{f"{k}_mean": v for k, v in values.items()}})


def test_added_baseline_can_only_take_cells_away(tmp_path):
    """``--add``: a cell PhyCHarm wins against a table's baselines is lost when the added
    baseline is better there, and kept where it is worse."""
    ablation = _load("ablation_phycharm")
    keys = [k for k, _, _ in ablation.METRICS]
    higher = {k: h for k, _, h in ablation.METRICS}
    base = {(m, s): {k: (0.5 if higher[k] else 10.0) for k in keys}
            for m in ablation.BASELINES + ("rescan",) for s in ("siteA", "overall")}
    table = tmp_path / "t.md"
    table.write_text("\n".join(ablation.table(base, [], ["siteA", "overall"])) + "\n")
    better = {k: (0.6 if higher[k] else 9.0) for k in keys}         # beats every baseline
    _write_benchmark_csv(tmp_path / "cand", {("phycharm", s): better for s in ("siteA", "overall")},
                         ablation.METRICS)
    strong = {k: (0.7 if higher[k] else 8.0) for k in keys[:2]}      # better than PhyCHarm
    strong.update({k: (0.55 if higher[k] else 9.5) for k in keys[2:]})  # worse than PhyCHarm
    _write_benchmark_csv(tmp_path / "wide", {("unet", s): strong for s in ("siteA", "overall")},
                         ablation.METRICS)
    out = tmp_path / "out.md"
    ablation.main(["--reference", str(table), "--collect", "--out", str(out),
                   "--variant", f"cand={tmp_path / 'cand'}:", "--add", f"unet_wide={tmp_path / 'wide'}:unet"])
    row = next(line for line in out.read_text().splitlines() if line.startswith("| siteA | cand |"))
    cells = [c.strip() for c in row.strip("|").split("|")][2:]
    assert [c.startswith("**") for c in cells] == [False, False] + [True] * (len(keys) - 2)
    best = next(line for line in out.read_text().splitlines() if line.startswith("| siteA | best"))
    assert best.count("(unet_wide)") == len(keys)   # better than the table's best everywhere


def test_metric_table_joins_runs_and_bolds_the_best_method(tmp_path):
    table = _load("metric_table")
    rows = {"a": [("none", "siteA", 0.30), ("histmatch", "siteA", 0.10), ("rescan", "siteA", 0.0),
                  ("none", "overall", 0.30), ("histmatch", "overall", 0.12)],
            "b": [("phycharm", "siteA", 0.05), ("phycharm", "overall", 0.20)]}
    for run, values in rows.items():
        os.makedirs(tmp_path / run)
        with open(tmp_path / run / "benchmark.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["method", "site", "lesion_contrast_err_mean",
                                   "lesion_contrast_err_sd"])
            w.writeheader()
            for m, s, v in values:
                w.writerow({"method": m, "site": s, "lesion_contrast_err_mean": v,
                            "lesion_contrast_err_sd": 0.01})
    summary = table.read_summary([str(tmp_path / "a"), str(tmp_path / "b")])
    lines = table.table(summary, "lesion_contrast_err")
    site_a = next(x for x in lines if x.startswith("| siteA"))
    overall = next(x for x in lines if x.startswith("| overall"))
    # lower is better; the re-scan (a ceiling) at 0 is never the best
    assert site_a == "| siteA | 0.300 | 0.100 | 0.000 | **0.050** |"
    assert "**0.120**" in overall and "–" in overall          # no rescan row there
    import shutil
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    with pytest.raises(SystemExit, match="both"):
        table.read_summary([str(tmp_path / r) for r in "abc"])
    with pytest.raises(SystemExit, match="unknown metric"):
        table.table(summary, "lesion_volume")


def test_denoised_target_variants_keep_the_scan_and_lower_its_noise():
    mod = conftest.load_module("benchmarks", "denoised_target")
    rng = np.random.default_rng(0)
    clean = np.zeros((24, 24, 12), np.float32)
    clean[4:20, 4:20, 2:10] = 0.5
    clean[8:16, 8:16, 4:8] = 1.0
    noisy = clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)
    mask = np.ones(clean.shape, bool)
    got = mod.denoised(noisy, mask, 0.5)
    assert list(got) == ["as scanned", "Gaussian 0.5 voxel", "non-local means"]
    np.testing.assert_array_equal(got["as scanned"], noisy)
    from scipy import ndimage
    np.testing.assert_allclose(got["Gaussian 0.5 voxel"], ndimage.gaussian_filter(noisy, 0.5))
    flat = (slice(10, 14), slice(10, 14), slice(5, 7))      # inside the bright block
    for name in ("Gaussian 0.5 voxel", "non-local means"):
        assert got[name][flat].std() < 0.8 * noisy[flat].std(), name


def test_cell_robustness_agrees_with_the_mean_cells_and_counts_heads():
    """cell_robustness.py: its mean-won flag is ablation_phycharm.py's cell on the same means;
    its head count is a per-head comparison redone here; a variant better (worse) than every
    baseline in every head wins every (no) bootstrap resample."""
    ablation, robust = _load("ablation_phycharm"), _load("cell_robustness")
    rng = np.random.default_rng(2)
    heads = ("01", "02", "03", "04")
    methods = ablation.BASELINES + ("v",)
    rows = {(m, s): {h: {k: float(rng.uniform(0.5, 30.0)) for k, _, _ in ablation.METRICS}
                     for h in heads} for m in methods for s in ("siteA", "siteB")}
    res = robust.robustness(rows, "v", ablation.BASELINES, ["siteA", "siteB"], n_boot=500)
    means = {("phycharm" if m == "v" else m, s): {k: np.mean([v[h][k] for h in heads])
                                                  for k, _, _ in ablation.METRICS}
             for (m, s), v in rows.items()}
    won = ablation.wins(means, means, ["siteA", "siteB"])
    for (site, key), (mean_won, n_heads, n, p) in res.items():
        higher = dict((k, h) for k, _, h in ablation.METRICS)[key]
        assert mean_won == ((site, key) in won)
        per_head = sum(all((rows[("v", site)][h][key] > rows[(b, site)][h][key]) == higher
                           for b in ablation.BASELINES) for h in heads)
        assert (n_heads, n) == (per_head, len(heads))
        assert 0.0 <= p <= 1.0
    assert len(res) == 2 * len(ablation.METRICS)
    # dominance in every head: P(win) exactly 1 (or 0 when dominated)
    for sign, expected in ((+1, 1.0), (-1, 0.0)):
        for h in heads:
            for k, _, higher in ablation.METRICS:
                best = [rows[(b, "siteA")][h][k] for b in ablation.BASELINES]
                edge = max(best) if (higher == (sign > 0)) else min(best)
                rows[("v", "siteA")][h][k] = edge + (sign if higher else -sign)
        res = robust.robustness(rows, "v", ablation.BASELINES, ["siteA"], n_boot=200)
        assert {r[3] for r in res.values()} == {expected}
        assert {r[1] for r in res.values()} == {4 if expected else 0}


def test_seed_noise_recovers_a_known_seed_offset_and_noise(tmp_path, capsys):
    # Arms whose seed 0 - seed 1 GM Dice differences are known: 0.001, 0.003, 0.002 (a shared
    # offset 0.002, sd 0.001, so sigma = 0.001 / sqrt(2)); every image of a seed's CSV carries
    # the same value, so each pooled mean is that value exactly.
    noise = _load("seed_noise")
    diffs = {"a": 0.001, "b": 0.003, "c": 0.002}
    for arm, d in diffs.items():
        for s, dice in ((0, 0.92 + d), (1, 0.92)):
            for half in ("train", "test"):
                with open(tmp_path / f"{arm}_s{s}_validation_{half}.csv", "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["subject", "site", "psnr", "dice_gm", "dv_csf", "dv_gm", "dv_wm"])
                    for k in range(30):
                        w.writerow([k, "x", 29.0 + s, dice, -1.0, 2.0, 3.0 * (1 + s)])
    got = noise.seed_differences(str(tmp_path)).set_index("arm")
    assert sorted(got.index) == ["a", "b", "c"] and set(got.images) == {60}
    for arm, d in diffs.items():
        assert got.loc[arm, "dice_gm"] == pytest.approx(d, abs=1e-12)
        assert got.loc[arm, "psnr"] == pytest.approx(-1.0)
        assert got.loc[arm, "adv_mean"] == pytest.approx((1 + 2 + 3) / 3 - (1 + 2 + 6) / 3)
    noise.main(["--results", str(tmp_path), "--arms", ""])
    out = capsys.readouterr().out
    assert f"offset +0.0020  sigma {0.001 / np.sqrt(2):.4f}" in out
    # an arm without both seeds is left out, and none at all is an error
    os.remove(tmp_path / "c_s1_validation_test.csv")
    assert sorted(noise.seed_differences(str(tmp_path)).arm) == ["a", "b"]
    with pytest.raises(SystemExit, match="no arm"):
        noise.main(["--results", str(tmp_path / "nothing"), "--arms", ""])


def test_volume_shrinkage_recovers_a_known_slope_and_names_the_lever_head(tmp_path):
    # Heads whose CSF fraction f (%) is known; the method's CSF volume is off by
    # e = 3 - 1.5 (f - 20) %, exactly, on every head but the last (the most CSF), which is
    # off by +10 %: the slope and r come out of the first rows, the last one only moves r.
    shrink = _load("volume_shrinkage")
    fracs = [16.0, 17.0, 18.5, 19.0, 21.0, 22.5, 28.0]
    gm_wm = 1000.0
    rows = []
    for k, f in enumerate(fracs):
        csf = gm_wm * f / (100.0 - f)           # CSF / (CSF + GM + WM) = f %
        e = 10.0 if f == max(fracs) else 3.0 - 1.5 * (f - 20.0)
        for method, v in (("rescan", csf), ("x", csf * (1 + e / 100.0))):
            rows.append({"method": method, "site": "s", "subject": f"{k:02d}",
                         "volume_csf": v, "volume_gm": 600.0, "volume_wm": 400.0})
    os.makedirs(tmp_path / "run")
    with open(tmp_path / "run" / "benchmark_per_subject.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rescan = shrink.read(str(tmp_path / "run"), "rescan")
    st = shrink.shrinkage(shrink.read(str(tmp_path / "run"), "x"), rescan, "s", "csf")
    assert st["n"] == len(fracs)
    assert st["r_rest"] == pytest.approx(-1.0, abs=1e-9)      # the exact line without it
    assert -1.0 < st["rho"] < 0.0 and st["r"] > st["r_rest"]    # the lever head weakens both
    x, y = shrink.points(shrink.read(str(tmp_path / "run"), "x"), rescan, "s", "csf")
    np.testing.assert_allclose(x, fracs, rtol=1e-9)
    assert np.polyfit(x[:-1], y[:-1], 1)[0] == pytest.approx(-1.5, rel=1e-9)
    with pytest.raises(SystemExit, match="no rows of method 'y'"):
        shrink.read(str(tmp_path / "run"), "y")


def test_map_forms_fits_each_form_as_its_docstring_says():
    # voxel pairs of three "heads": the target an increasing curve of the output plus noise
    forms_mod = _load("map_forms")
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 16, 4), bool)
    mask[2:14, 2:14] = True
    pairs = []
    for _ in range(3):
        o = np.where(mask, rng.uniform(0.1, 1.0, mask.shape), 0).astype(np.float32)
        t = np.where(mask, o ** 1.5 + rng.normal(0, 0.05, mask.shape), 0).astype(np.float32)
        pairs.append((o, t, mask))
    po = np.concatenate([o[m] for o, _, m in pairs])
    pt = np.concatenate([t[m] for _, t, m in pairs])
    q = np.linspace(0, 1, 64)
    entry = {"output": np.quantile(po, q).tolist(), "target": np.quantile(pt, q).tolist()}
    forms = forms_mod.fit_forms(pairs, entry)
    assert set(forms) == set(forms_mod.FORMS)
    mapped = {f: np.concatenate([forms[f](o, m)[m] for o, _, m in pairs]) for f in forms}
    sse = {f: float(np.sum((mapped[f] - pt) ** 2)) for f in forms}
    # least squares among increasing maps is at most the error of any other increasing map
    assert sse["isotonic"] <= min(sse.values()) + 1e-6 * sse["none"]
    assert sse["affine-ls"] <= sse["affine-moments"] and sse["affine-ls"] < sse["none"]
    # the moments' map gives the pooled output the pooled target's mean and sd
    assert mapped["affine-moments"].mean() == pytest.approx(pt.mean(), rel=1e-5)
    assert mapped["affine-moments"].std() == pytest.approx(pt.std(), rel=1e-4)
    # outside the mask every form is 0
    assert all(not np.any(forms[f](pairs[0][0], mask)[~mask]) for f in forms)
