r"""Benchmark: site differences, then every harmonization method on held-out subjects.

Usage:
  python -m phyjax.main --config=configs/benchmark.py --workdir=runs/benchmark
  python -m phyjax.main --config=configs/benchmark.py:debug --workdir=/tmp/benchmark-debug
A user's BIDS folder (with traveling subjects: the paired benchmark; without: the unpaired one,
phyjax/experiments/unpaired.py; --config.data.mask_label / site_field for other ROIs and sites):
  python -m phyjax.main --config=configs/benchmark.py --workdir=runs/mine \
      --config.data.bids_root=/path/to/bids --config.data.target_site=<site label>
A subset of methods:  --config.methods="('none','nyul','combat')"

Writes benchmark.md, benchmark.csv (method x site/overall, mean and 95 % CI over held-out
subjects), per-subject CSVs, site-difference CSVs and figures into --workdir (see
phyjax/experiments/benchmark.py).  Data, model and training sections are PhyCHarm's
(configs/phycharm.py), so PhyCHarm and the supervised U-Net get the same data and training budget.

Expected runtime: about an hour on 2 CPU cores.  Measured on one core while another engineer
used the other (runs/benchmark_v6, 5-slice context): PhyCHarm paired ~12 min and unpaired ~22
min, U-Net ~12 min, ComBat ~6 min, evaluation (~250 DIPY segmentations, radiomics) ~29 min;
debug ~9 min on one core (2026-12: 524 s, 4.3 min of it the two PhyCHarm
trainings, most of each XLA compilation).  ``:large`` (800 steps, 1.5x the channels, an
ensemble of two networks): per network PhyCHarm paired 50.8 min and the U-Net 28.2 min of
training on one core each, both cores busy (docs/phycharm_ablation.md, items 26 and 28), twice
that for the two members; whole runs split by method (item 38, one core each, both busy):
PhyCHarm 97 min (2 x ~40 min of training), the U-Net ensemble 45 min.
Every field below can be overridden with --config.<path>=<value>; an unknown key is an error.
"""

from ml_collections import ConfigDict

from phyjax.config_files import load_config

METHODS = ("none", "zscore", "histmatch", "nyul", "whitestripe", "combat", "unet", "phycharm",
           "phycharm_unpaired", "rescan")   # rescan: the ceiling (not a method; default data)


def _phycharm_config(arg):
    return load_config("phycharm", arg)


def get_config(arg: str | None = None) -> ConfigDict:
    """Default benchmark; ``arg="debug"`` is the tiny variant used by the tests (~9 min on one
    core); ``arg="large"`` PhyCHarm's larger variant (configs/phycharm.py), which the U-Net
    shares (same channels, steps and ensemble size)."""
    base = _phycharm_config(arg)   # raises ValueError for an unknown variant
    config = ConfigDict()
    config.method = "benchmark"
    config.seed = base.seed
    config.methods = METHODS
    config.data = ConfigDict(base.data.to_dict())     # PhyCHarm's data section
    config.model = ConfigDict(base.model.to_dict())   # PhyCHarm's networks
    config.train = ConfigDict(base.train.to_dict())   # shared by PhyCHarm and the U-Net
    config.target = ConfigDict(base.target.to_dict())  # the target as a protocol (optional)

    ev = config.eval = ConfigDict()
    ev.batch_size = base.eval.batch_size  # slices per inference call
    ev.example_subject = ""               # held-out subject in examples.png ("" = first)
    ev.covariates = ()                    # participants.tsv columns whose effect must be kept
                                          # (unpaired benchmark: biology preservation and
                                          # their prediction across sites)
    ev.rim_mm = 4.0                       # unpaired downstream task: ROI rim width (mm)

    seg = config.segmentation = ConfigDict()   # one fixed segmenter for every image
    seg.method = "atropos"     # "atropos" (ANTs) | "hmrf" (DIPY; the benchmark's up to 2026-11)
    seg.mrf_smoothing = 0.1    # atropos: MRF smoothing, radius (voxels), EM iterations: the
    seg.mrf_radius = 1         # settings of ANTs' antsAtroposN4.sh
    seg.iterations = 5
    seg.beta = 0.1             # hmrf: MRF beta, iterations, tolerance
    seg.max_iter = 100         # converges (tolerance) in ~60 on the default data
    seg.tolerance = 1e-5

    rad = config.radiomics = ConfigDict()
    rad.bin_width = 0.05     # on images normalized to their 99th in-brain percentile
    rad.n_bins = 48          # static grey-level axis (doubled automatically if needed) ...
    rad.max_bins = 96        # ... up to this; wider ROIs get their top levels merged
    rad.classes = ("firstorder", "glcm", "glrlm")
    rad.batch_size = 4       # images per jit-compiled extraction call

    clf = config.classifier = ConfigDict()     # site classifier (logistic regression)
    clf.c = 1.0
    clf.n_splits = 5         # folds grouped by subject (before harmonization)
    clf.n_permutations = 100
    clf.seed = 0

    nyul = config.nyul = ConfigDict()
    nyul.min_percentile = 1.0
    nyul.max_percentile = 99.0
    nyul.step = 10.0         # deciles

    ws = config.whitestripe = ConfigDict()
    ws.width = 0.05

    cb = config.combat = ConfigDict()
    cb.eb = True
    cb.parametric = True
    cb.mean_only = False

    unet = config.unet = ConfigDict()          # supervised U-Net without physics
    unet.features = config.model.get_ref("features")
    unet.cond_features = config.model.get_ref("cond_features")
    unet.condition = "none"  # or "protocol" (encoded acquisition parameters through FiLM)
    unet.residual = True     # predict a correction of the centre slice
    unet.w_hist = 0.0        # PhyCHarm's intensity-distribution term (0: the plain baseline)
    unet.tta = config.model.get_ref("tta")  # the same test-time augmentation as PhyCHarm
    unet.ensemble = config.model.get_ref("ensemble")  # and as many networks averaged
    unet.views = config.model.get_ref("views")  # and the same slicing planes
    unet.calibrate = config.model.get_ref("calibrate")  # and the same output calibration: with
    unet.calibrate_knots = config.model.get_ref("calibrate_knots")  # "sites", per-site maps
    unet.calibrate_map = config.model.get_ref("calibrate_map")
    unet.calibrate_slice_step = config.model.get_ref("calibrate_slice_step")
    unet.calibrate_heads = config.model.get_ref("calibrate_heads")
    unet.calibrate_denoise = config.model.get_ref("calibrate_denoise")
    unet.calibrate_denoise_min_gain = config.model.get_ref("calibrate_denoise_min_gain")
    # learned on the same training pairs (docs/phycharm_ablation.md, item 41). These unet.*
    # fields are references: setting one (e.g. --config.unet.calibrate=none) sets PhyCHarm's
    # too, so compare settings across the two networks in runs split by method.

    rep = config.report = ConfigDict()
    rep.features = ("firstorder_Median", "firstorder_Entropy", "glcm_Contrast",
                    "glrlm_RunLengthNonUniformityNormalized")

    if arg == "debug":
        config.data.n_subjects = 4
        config.data.n_test = 2     # 2 held-out subjects: CIs and a leave-one-out classifier
        seg.max_iter = 10
        clf.n_permutations = 20
    config.lock()
    return config
