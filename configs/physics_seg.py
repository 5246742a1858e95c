r"""Physics-aware tissue segmentation (Borges et al., SASHIMI 2019, arXiv:2001.10767).

Usage:
  python -m phyjax.main --config=configs/physics_seg.py --workdir=runs/physics_seg
  python -m phyjax.main --config=configs/physics_seg.py:debug --workdir=/tmp/physics_seg-debug
Segment a user's T1w (its protocol read from its sidecar) with the trained physics U-Net:
  python -m phyjax.main --config=configs/physics_seg.py --workdir=runs/physics_seg \
      --config.mode=segment --config.segment.input=t1w.nii.gz \
      --config.segment.mask=brain_mask.nii.gz [--config.segment.output=derivatives/physics_seg]
  (or --config.segment.bids_root=/path/to/bids for every T1w of a BIDS folder)

"The experiments" in the comments below: docs/physics_seg_experiments.md, every table
and the command that gives it.

Trains the U-Net with the physics branch and the same U-Net without it on images simulated over
the MPRAGE (readout-train form: TI 0.6-1.2 s, shot TR 1.9-3.0 s, readout flip 6-12 deg, readout
TR 6-10 ms, 128-256 readouts per shot) and SPGR (TR 15-100 ms, TE 4-10 ms, flip 15-75 deg)
ranges with scanner effects (training draws over the ranges widened by data.range_margin),
labelled by the R1 gold standard; evaluates Dice and the GM/WM
volume CoV across protocols on held-out anatomies for both and for the fixed HMRF segmenter
(the MPRAGE TI sweep at eval.mprage_fixed's readout train); bridges two MPRAGE sites of unknown
TI.  Runtime on one CPU core (pinned, the other core busy): default ~12-14 min,
debug ~1.5 min (80 s).
Every field can be overridden with --config.<path>=<value>; an unknown key is an error.
"""

from ml_collections import ConfigDict


def get_config(arg: str | None = None) -> ConfigDict:
    """Default config; ``arg="debug"`` shrinks everything for tests."""
    if arg not in (None, "", "debug"):
        raise ValueError(f"Unknown config variant {arg!r}; expected '' or 'debug'.")
    config = ConfigDict()
    config.method = "physics_seg"
    config.mode = "train_eval"   # or "segment"
    config.seed = 0
    config.progress = True

    data = config.data = ConfigDict()
    data.n_train = 8             # anatomies (phyjax.data.simulated.anatomies) for training
    data.n_test = 4              # held-out anatomies (split by anatomy)
    data.voxel_size = 3          # mm (integer; nilearn resamples the MNI template)
    data.deform_mm = 4.0
    data.tissue_jitter = 0.05    # each anatomy's tissue values: x (1 + sd x normal), clipped 0.7-1.3
    data.value_jitter = 0.0      # > 0: every simulated training volume draws its own tissue
                                 # values around its anatomy's the same way, its gold standard
                                 # from its own R1 (phyjax.segment.simulate.SliceBank)
    data.t1_texture = 0.03
    data.min_mask_fraction = 0.15
    data.families = ("mprage", "spgr")
    data.n_per_family = 36       # simulated protocols per training anatomy and family
    data.range_margin = 0.15     # training draws from the ranges below widened to
                                 # (lo / (1 + m), hi * (1 + m)) (flip <= 90 deg); evaluation and
                                 # segment mode's range check keep the ranges as given
                                 # (phyjax.segment.simulate.widen).  0.15 lowered the physics
                                 # U-Net's MPRAGE CoV in 11 of 12 seed x tissue cells against 0,
                                 # SPGR's in 6 of 12 (6 seeds; the experiments,
                                 # benchmarks/results/physics_seg_margin.md)
    data.reconstruction = "magnitude"  # what scanners write (segment mode needs it) or "signed"
                                       # (phase-sensitive; the experiments; at TI 0.6-0.7 s
                                       # magnitude WM and GM differ by ~0.01 M0; ibid.)
    # Parameter ranges (s, degrees, T): a pair is drawn uniformly, a number is fixed.
    # MPRAGE with its readout train (phyjax.physics.signal.mprage_readout, Deichmann et al.
    # 2000; k-space centre in the middle of the train): tr = shot interval between inversions,
    # ti = inversion -> k-space centre (the paper's 0.6-1.2 s), flip_angle = readout flip,
    # tr_readout = readout TR (echo spacing), n_readouts = readouts per shot (integer).  Draws
    # whose train does not fit TI and TR - TI get their tr_readout / n_readouts redrawn.
    # Static equation of Borges et al. instead: tr=2.4, flip_angle=0.0, tr_readout=0.0,
    # n_readouts=0.0 (e.g. --config.data.mprage.flip_angle=0.0 ...).
    data.mprage = ConfigDict({"tr": (1.9, 3.0), "te": 0.003, "ti": (0.6, 1.2),
                              "flip_angle": (6.0, 12.0), "tr_readout": (0.006, 0.010),
                              "n_readouts": (128.0, 256.0), "field_strength": 3.0})
    data.spgr = ConfigDict({"tr": (0.015, 0.100), "te": (0.004, 0.010), "flip_angle": (15.0, 75.0),
                            "field_strength": 3.0})
    # Scanner effects drawn per simulated training image (phyjax.physics.scanner).
    data.effects = ConfigDict({"b1_scale": (0.9, 1.1), "b1_curvature": (0.0, 0.15),
                               "bias_amplitude": (0.0, 0.2), "noise_fraction": (0.01, 0.03),
                               "slice_fwhm": (0.0, 1.0), "gain": (0.5, 2.0)})

    gold = config.gold = ConfigDict()  # R1 normals (s^-1), Borges et al. 2019
    gold.means = (0.240, 0.683, 1.036)   # CSF, GM, WM
    gold.sds = (0.03, 0.080, 0.080)
    gold.priors = (1.0, 1.0, 1.0)

    model = config.model = ConfigDict()
    model.features = (16, 32, 64)
    model.branch_width = 32
    model.context = 1            # neighbouring slices on each side as input channels
    model.conditioning = "add+contrast"  # physics branch into the U-Net: "add" (paper) or
                                 # "film", then options: "+contrast" (default: the branch reads the
                                 # protocol's WM/GM/CSF signal ratios instead of the parameters;
                                 # SPGR's CoV falls below the no-branch U-Net's, the
                                 # experiments), "+both" (parameters and ratios), "+zero"
                                 # (add's projections start at zero); "add" alone is the
                                 # paper's design; see
                                 # phyjax.segment.model.CONDITIONINGS
    model.contrast = "signed"    # contrast features' sign: "signed" (default: with magnitude
                                 # images too, the sign tells the branch which tissues are before
                                 # their inversion null), "magnitude" (|signal|, as the image
                                 # shows it; seed 0: MPRAGE CoV 2.6x / 1.4x higher, the
                                 # experiments) or
                                 # "image" (data.reconstruction's)
    model.condition_encoder = False  # also condition the encoder and bottleneck blocks
    model.b1_input = False       # the branch is also told the transmit field B1+ per voxel
                                 # (phyjax.segment.model.SegmentationUNet.b1_input): trained
                                 # with the slice's B1+ map for train.b1_known of the samples,
                                 # "unknown" for the rest; eval method "physics_b1map" tells it
                                 # each held-out subject's map, "physics" nothing (the experiments)
    model.patch = 0              # > 0: both U-Nets train on patch x patch windows of the
                                 # slices (centred on a random brain voxel) and segment window
                                 # by window (half-window overlap, averaged), so that neither
                                 # sees more of the image than a window; 0: whole slices
                                 # (phyjax.segment.train.tiled).  16 (6 seeds, batch 32): the
                                 # branch's MPRAGE GM CoV significantly below the no-branch
                                 # U-Net's, SPGR level, every CoV but that one higher than on
                                 # whole slices, Dice lower (the experiments)
    model.ndim = 2               # 2: U-Nets on axial slices (with data's slice context);
                                 # 3: 3-D U-Nets on model.patch-voxel cubes of the volume
                                 # (needs model.patch > 0; one input channel), segmenting
                                 # cube by cube (phyjax.segment.train.tiled_volume), as the
                                 # paper's 3-D patch U-Net; meant for a GPU
    model.normalize_params = "family"  # physics-vector standardization: "family" (training
                                       # statistics per family), "global" or "none"

    train = config.train = ConfigDict()
    train.steps = 1200
    train.param_noise = 0.0      # sd of the physics vector's training jitter (standardized units)
    train.b1_known = 0.5         # with model.b1_input: fraction of samples told their B1+ map
    train.consistency = 0.0      # > 0: paired batches (half the slices again under another
                                 # protocol of their family) and this weight x the mean squared
                                 # difference of the two segmentations (protocol consistency,
                                 # phyjax.segment.train.protocol_consistency).  1 and 10 (2
                                 # seeds) lowered the no-branch U-Net's CoV at least as much as
                                 # the branch's; 10 cost 0.05-0.10 Dice (the experiments)
    train.branch_dropout = 0.0   # > 0: each training sample's branch features are zeroed with
                                 # this probability (the U-Net learns to segment with and
                                 # without the protocol), and the physics U-Net segments with
                                 # the mean of its branch-on and branch-off probabilities
                                 # (phyjax.segment.train.Segmenter.averaged).  0.5 (6
                                 # seeds, 72 subjects): MPRAGE WM CoV lower than the
                                 # no-branch U-Net's, MPRAGE GM higher, SPGR level (the experiments)
    train.loss = "ce"            # "ce" (soft cross-entropy), "dice" (paper) or "dice_ce"
    train.batch_size = 8
    train.learning_rate = 2e-3
    train.checkpoint_every = 300
    train.log_every = 25

    ev = config.eval = ConfigDict()
    ev.n_mprage = 7              # TIs evenly spaced over the MPRAGE range
    # The MPRAGE TI sweep (and bridging) holds the other fields here (s, degrees): an
    # ADNI-like readout train, 160 readouts of 7 ms at 9 deg, shot TR 2.4 s (the static
    # runs' TR); fits TI 0.6 s (half train 0.56 s).  Must lie inside data.mprage.
    ev.mprage_fixed = ConfigDict({"tr": 2.4, "te": 0.003, "flip_angle": 9.0,
                                  "tr_readout": 0.007, "n_readouts": 160.0,
                                  "field_strength": 3.0})
    ev.n_spgr = 8                # SPGR protocols drawn over the SPGR range
    ev.methods = ("physics", "no_branch", "hmrf")   # and "physics_b1map" (model.b1_input)
    ev.effects_seed = 1          # scanner effects of each held-out subject (fixed across protocols)
    ev.noise_draws = 1           # noise draws per protocol; CoV uses the volume averaged over them
    ev.noise_fraction = -1.0     # >= 0 overrides every subject's noise level (0: noise-free)
    ev.b1_plus = "subject"       # held-out subjects' B1+: "subject" (each its own draw of
                                 # data.effects) or "nominal" (none: the tissue sees the flip
                                 # the protocol names, as the branch is told; the experiments);
                                 # bridging's two sites keep bridging.effects_*

    seg = config.segmentation = ConfigDict()   # the fixed classical segmenter (DIPY HMRF)
    seg.method = "hmrf"        # phyjax.evaluate.segmentation.make_segmenter
    seg.beta = 0.1
    seg.max_iter = 30
    seg.tolerance = 1e-5

    br = config.bridging = ConfigDict()  # two MPRAGE sites whose TI the method is not told
    br.enabled = True
    br.ti_a = 0.65
    br.ti_b = 1.10
    br.n_grid = 9                # candidate TIs over the MPRAGE range
    br.effects_a = ConfigDict({"b1_scale": 1.05, "b1_curvature": 0.1, "bias_amplitude": 0.15,
                               "noise_fraction": 0.02, "slice_fwhm": 0.0, "gain": 1.0})
    br.effects_b = ConfigDict({"b1_scale": 0.95, "b1_curvature": 0.05, "bias_amplitude": 0.1,
                               "noise_fraction": 0.025, "slice_fwhm": 0.5, "gain": 1.3})

    s = config.segment = ConfigDict()   # mode=segment: a user's T1w
    s.input = ""                 # a T1w NIfTI ...
    s.bids_root = ""             # ... or every T1w of a BIDS folder
    s.mask = ""                  # brain mask(s) (comma-separated, summed); "" = voxels > 0
    s.sidecar = ""               # "" = next to the input
    s.output = ""                # derivatives folder; "" = <workdir>/segment (or
                                 # <bids_root>/derivatives/phyjax-physics-seg)
    s.model = ""                 # a saved segmenter folder; "" = <workdir>/physics_unet/model
    s.sequence = ""              # force the family
    s.tr = -1.0                  # command-line protocol values (s, degrees, T); < 0 = not given
    s.te = -1.0
    s.ti = -1.0
    s.flip_angle = -1.0
    s.field_strength = -1.0
    s.tr_readout = -1.0          # MPRAGE readout TR / echo spacing (s) and readouts per shot:
    s.n_readouts = -1.0          # override the sidecar's (Siemens/GE sidecars lack them)
    s.b1_map = ""                # a transmit-field map (BIDS TB1map) of the input, any grid
                                 # (BIDS: sub-X/[ses-Y/]fmap/*_TB1map.nii* found by itself);
                                 # read by a model trained with model.b1_input=True
    s.b1_units = "auto"          # "ratio" (1 = nominal), "percent" (100) or "auto"
    s.allow_outside_range = False
    s.site_params = ""           # BIDS: site table filling sidecar gaps
    s.mask_label = "brain"

    if arg == "debug":
        data.n_train, data.n_test, data.voxel_size = 2, 1, 6
        data.n_per_family = 2
        model.features = (4, 8)
        model.branch_width = 8
        train.steps, train.batch_size, train.checkpoint_every, train.log_every = 6, 4, 3, 3
        ev.n_mprage, ev.n_spgr = 2, 2
        seg.max_iter = 3
        br.n_grid = 2
    config.lock()
    return config
