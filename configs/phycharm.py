r"""PhyCHarm on the embedded default multi-site dataset (CPU-sized).

Usage (README):
  python -m phyjax.main --config=configs/phycharm.py --workdir=runs/phycharm
  python -m phyjax.main --config=configs/phycharm.py:debug --workdir=/tmp/phycharm-debug
Harmonize a user's T1w with the trained checkpoint in --workdir:
  python -m phyjax.main --config=configs/phycharm.py --workdir=runs/phycharm \
      --config.mode=harmonize --config.harmonize.input=t1w.nii.gz \
      --config.harmonize.mask=mask.nii.gz --config.harmonize.sidecar=t1w.json \
      --config.harmonize.output=t1w_harmonized.nii.gz

Expected runtime on 2 idle CPU cores: default 8-14 min, by machine and hour -- 13:57 on a slow
hour (0.66 s per training step) from an empty cache, with item 79's site maps from every fourth
slice (15:02 before them); 7:20-11:40 on faster hours (0.41-0.45 s per step); building the
dataset is ~30 s of it (docs/phycharm_ablation.md, items 51-53, 71, 73, 77-79); debug about
1 min.
Every field below can be overridden with --config.<path>=<value>; an unknown
key is an error.
"""

from ml_collections import ConfigDict


def _site(sequence, tr, te, ti=0.0, flip_angle=0.0, field_strength=3.0, manufacturer="Siemens",
          tr_readout=0.0, n_readouts=0, b1_scale=1.0, b1_curvature=0.0, bias_amplitude=0.0,
          noise_fraction=0.0, slice_fwhm=0.0, gain=1.0):
    # Times in s, flip_angle in degrees (converted to rad at the boundary).  mprage: tr is the
    # time between inversions, tr_readout the excitation TR (echo spacing) of the readout train
    # and n_readouts its pulses per inversion (0 = the static equation).
    return ConfigDict(dict(sequence=sequence, tr=tr, te=te, ti=ti, flip_angle=flip_angle,
                           field_strength=field_strength, manufacturer=manufacturer,
                           tr_readout=tr_readout, n_readouts=n_readouts,
                           b1_scale=b1_scale, b1_curvature=b1_curvature,
                           bias_amplitude=bias_amplitude, noise_fraction=noise_fraction,
                           slice_fwhm=slice_fwhm, gain=gain))


def get_config(arg: str | None = None) -> ConfigDict:
    """Default config; ``arg="debug"`` shrinks everything for tests (< 1 min); ``arg="large"`` is
    the recommended larger variant: 800 training steps of 16 slices (the default's are of 8),
    1.5x the channels of both networks and an ensemble of two of them, each adopted by a
    validation rule declared before its runs (docs/phycharm_ablation.md, items 13, 26 and 28;
    ~2 x 50 min of training on one CPU core instead of ~11; ``--config.model.ensemble=1``
    halves it for one network)."""
    config = ConfigDict()
    config.method = "phycharm"
    config.mode = "train_eval"  # or "harmonize"
    config.seed = 0

    data = config.data = ConfigDict()
    data.bids_root = ""      # empty: build/use the embedded default dataset
    data.cache_dir = ""      # empty: $PHYJAX_CACHE or ~/.cache/phyjax
    data.site_params = ""    # TSV: site + tr_prep_s, ti_s, ... filling what sidecars lack
    data.mask_label = "brain"  # ROI masks: derivatives/*/sub-*/[ses-*/]anat/*desc-<label>_mask
    data.site_field = ""     # sidecar field naming the site (e.g. Manufacturer); "" = ses- label
    data.grid_mm = 0.0       # BIDS data: common RAS grid voxel (mm); 0 = native if all scans
                             # share one grid, else their median voxel size
    data.stream = "auto"     # volumes on disk, read when used: "on", "off", or "auto" (when
    data.memory_gb = 4.0     # ... they would take more memory than this)
    data.seed = 0
    data.n_subjects = 12
    data.n_test = 4          # held-out subjects (split by subject)
    data.voxel_size = 2      # mm (integer; nilearn resamples the template)
    data.deform_mm = 4.0
    data.tissue_jitter = 0.05
    data.t1_texture = 0.03
    data.atrophy = 0.3       # per-subject atrophy level drawn from [0, atrophy] (cortical
                             # thinning + ventricular enlargement; phyjax.data.synthetic.atrophy)
    data.partial_volume = "signal"  # voxels mixing tissues: "signal" (each tissue's signal
                                    # weighted by its fraction, as in a scanner) or "parameter"
                                    # (the signal of the mean T1/PD; the pre-format-4 data)
    data.test_anatomy = "mni152"  # held-out subjects made from the training template, or from
                                  # "real_philips": one real head (FAST maps of a Philips T1w)
                                  # that no method trains on (phyjax.data.synthetic)
    data.lesions = 0         # > 0 (default data): each subject gets ceil(n/2)..n white-matter
                             # lesions (T1/T2 lengthened; synthetic.wm_lesions), and the benchmark
                             # measures how each method keeps their contrast (LesionMeasure)
    data.lesion_subjects = "all"  # "held_out": lesions only in held-out subjects (trained on
                                  # healthy heads, applied to patients)
    data.anatomy_sharpness = 0.0  # > 0: each template subject's partial-volume band narrowed
                                  # (tissue shares ^ gamma, gamma ~ U[1, 1 + this]; crisper, as
                                  # one head is than the population template)
    data.min_mask_fraction = 0.0   # slices with less brain than this fraction of the largest
                                   # slice's are not trained on; 0: every slice with brain, as
                                   # inference harmonizes every slice (0.15 left the end slices
                                   # of the brain unseen: garbage there, 16-48 % of an image's
                                   # squared error; 0 gained 1.2 dB on the validation heads,
                                   # docs/phycharm_ablation.md, item 34)
    data.target_site = "reference"
    data.sites = ConfigDict(dict(
        # Every site is imaged with its sequence's full readout train (phyjax.physics.signal.
        # mprage_readout) and its sidecar is written as its vendor's dcm2niix writes it --
        # without what vendors leave out (Siemens: echo spacing, readouts per inversion; GE:
        # the time between inversions, readouts per inversion), which the dataset's site table
        # (code/site_parameters.tsv) gives, as a user's would (phyjax.data.synthetic).
        # Reference protocol: HCP-like MPRAGE at 3 T (echo spacing 7.6 ms), clean scanner.
        reference=_site("mprage", tr=2.4, te=0.00222, ti=1.0, flip_angle=8, tr_readout=0.0076,
                        n_readouts=256, noise_fraction=0.01),
        # ADNI-like Siemens MPRAGE (176 partitions, echo spacing 7.1 ms) with a strong bias field.
        siemensMPRAGE3T=_site("mprage", tr=2.3, te=0.00298, ti=0.9, flip_angle=9,
                              tr_readout=0.0071, n_readouts=176,
                              b1_scale=1.1, b1_curvature=0.15, bias_amplitude=0.3,
                              noise_fraction=0.03, gain=1.6),
        # GE-like IR-prepared SPGR (BRAVO): shorter TI and preparation TR, 7.8 ms readout TR.
        geIRSPGR3T=_site("mprage", tr=2.0, te=0.0031, ti=0.75, flip_angle=12,
                         manufacturer="GE", tr_readout=0.0078, n_readouts=128,
                         b1_scale=0.9, bias_amplitude=0.2, noise_fraction=0.04, gain=0.7),
        # 1.5 T MPRAGE (160 partitions, echo spacing 8.6 ms) with thicker slices.
        mprage1p5T=_site("mprage", tr=2.4, te=0.0036, ti=1.0, flip_angle=8,
                         field_strength=1.5, tr_readout=0.0086, n_readouts=160,
                         bias_amplitude=0.15, noise_fraction=0.05, slice_fwhm=1.5, gain=0.8),
        # 1.5 T 2-D spin-echo T1w with 5 mm axial slices (FWHM 2.5 voxels of 2 mm): the
        # clinical T1w whose through-plane detail a 2-D method cannot restore.
        se1p5T2D=_site("se", tr=0.55, te=0.014, flip_angle=90, field_strength=1.5,
                       bias_amplitude=0.2, noise_fraction=0.03, slice_fwhm=2.5, gain=1.1),
        # Philips 3-D T1-FFE (RF-spoiled gradient echo) with B1+ inhomogeneity.
        spgr3T=_site("spgr", tr=0.02, te=0.0045, flip_angle=25, manufacturer="Philips",
                     b1_scale=0.85, b1_curvature=0.2, bias_amplitude=0.25,
                     noise_fraction=0.03, gain=1.2),
    ))

    model = config.model = ConfigDict()
    model.features = (16, 32, 64)   # channels per U-Net level, both networks; (24, 48, 96) in
                                    # the "large" variant: +0.84 dB, GM Dice +0.001 and |dV| -0.16
                                    # points on the validation heads at 800 steps, ~1.8x the time
                                    # per step (docs/phycharm_ablation.md, item 26)
    model.context = 2        # neighbouring slices on each side as input channels (2.5-D): 2
                             # (5 slices, 10 mm at 2 mm) sees across a 5 mm slice profile;
                             # +1.1 dB PSNR overall over 1 (docs/phycharm_ablation.md, item 5)
    model.cond_features = 32
    model.t1_max = 5.0       # s, upper bound of predicted T1
    model.m0_max = 1.5       # upper bound of predicted M0 (PD fraction)
    model.readout = "sidecar"  # MPRAGE/IR-SPGR signal with the readout train the protocol
                               # carries (sidecar + site table), or "static" (the static
                               # equation for all: the pre-issue-14 model, for the ablation)
    # How a voxel's predicted T1/M0 become a signal (the target re-synthesis, the source
    # physics-consistency term and data consistency; phyjax.physics.partial_volume):
    # "two_tissue" reads each voxel's mean T1 as the two adjacent tissues it mixes (WM/GM or
    # GM/CSF) and sums their signals, as a scanner does; "single" takes the signal equation of
    # the mean T1 (the published model), which re-synthesizes even the exact maps of a head
    # with 40-50 % too much CSF under the target MPRAGE (benchmarks/partial_volume.py).
    # "auto" (default): "two_tissue" on the gated base -- over two seeds on the validation
    # heads (rule written before the runs) +0.03 dB, GM Dice +0.0027, mean |dV| -0.56 points,
    # T1 NRMSE 0.138 -> 0.114, the main command 27 s longer (docs/phycharm_ablation.md, item
    # 50); without traveling subjects (physics-made pairs, phycharm_unpaired) -0.22 dB, GM
    # Dice +0.0053 (up in 103 of 120 images), mean |dV| -1.35 points (item 52) -- and "single"
    # on the re-synthesis base (a model for a range of targets), where two_tissue lost 0.37 dB,
    # past the rule's 0.3 (items 30, 35).
    model.partial_volume = "auto"
    # What the harmonizer's residual is added to: "resynth" (the target re-synthesized from the
    # predicted maps, the published model) or "gated" (a per-voxel blend of that re-synthesis and
    # the source's own centre slice, the weight a second output of the harmonizer: the
    # supervised U-Net's identity prior where the source already has the target's contrast, the
    # physics where it has not). "gated": on the validation heads (two seeds, 120 images, rule
    # written before the runs) +0.44 dB, GM Dice +0.0075 (up in 103 of 120), mean |dV| 4.6 ->
    # 3.6 %, on both seeds; it costs the 1.5 T MPRAGE 0.4-1.3 dB (docs/phycharm_ablation.md,
    # item 42). "auto" (default): "gated" for a model of one target, "resynth" for one trained
    # for a range of targets (target.randomize: the source's own slice is the wrong start for
    # a target far from its contrast). Models saved before the setting existed are "resynth".
    model.base = "auto"
    model.gate_prior = 0.5   # gated base: where the gate starts (its logit offset by logit(this);
                             # 0.5: no offset, the untrained gate near an even blend). 0.88
                             # (start near the re-synthesis) failed the validation rule on both
                             # seeds, -0.30 dB, GM Dice -0.0024 (docs/phycharm_ablation.md, item 43)
    # Gated base: the source slice in the blend smoothed in-plane by a Gaussian of this sd
    # (voxels, inside the brain mask; 0 = unsmoothed), so the source's noise is not passed on
    # where the gate opens to it (the network still sees the raw source). Off: 0.5 raised PSNR
    # by 0.30 dB and SSIM by 0.0024 on the validation heads (two seeds) but also the mean
    # volume error, +0.12 points (GM +0.26), failing the rule (docs/phycharm_ablation.md, item 44);
    # 0.5 with detail_gate (below) and 800 steps of 8 slices is the default (item 48).
    model.source_smoothing = 0.5
    # ... and with this > 0 the smoothing is edge-preserving: a bilateral filter whose
    # intensity sd this is (the source is normalized, 99th in-brain percentile = 1), so
    # neighbours across a tissue boundary barely count. Off: 0.1 with source_smoothing=0.5
    # kept item 44's GM/WM volumes (GM |dV| -0.12 against no smoothing) but raised the CSF one
    # by 0.40 points and gained 0.15 dB only (docs/phycharm_ablation.md, item 45).
    model.source_range = 0.0
    # ... and with this True (source_smoothing > 0) a third output of the harmonizer chooses
    # per voxel between the raw and the smoothed source slice, so edges (the cortex) can keep
    # the raw slice and flat tissue take the smoothed one. On, with 800 steps of 8 slices: on
    # the validation heads (two seeds, 120 images, rule written before the runs) +0.55 dB, GM
    # Dice +0.0048 (up in 110 of 120), mean |dV| -0.15 points against 400 steps of 16 without
    # it (docs/phycharm_ablation.md, item 48). Both are dropped for a resynth base, named or
    # auto for a range of targets (no source slice in the base), and the detail gate where
    # source_smoothing is 0 (phyjax.methods.phycharm.resolve_base_settings).
    model.detail_gate = True
    # ... and with this > 0 (voxels, wider than source_smoothing) the detail gate chooses among
    # three: the raw slice, the one smoothed by source_smoothing and one smoothed by this (a
    # fourth harmonizer output; softmax weights), so a source noisier than the others (the
    # 1.5 T MPRAGE) can lose more of its noise while the others keep the narrow arm's edges.
    # 0 (the two-arm gate): 1.0 gained the 1.5 T MPRAGE 0.29 dB and SSIM 0.003 on the
    # validation heads, but lowered GM Dice elsewhere (pooled -0.0008, mean |dV| +0.08 points;
    # docs/phycharm_ablation.md, item 63).
    model.source_smoothing_wide = 0.0
    # Data consistency at inference (phyjax.physics.consistency): the network's T1/M0 are the
    # prior of a per-voxel MAP estimate given the source image through its own signal equation,
    # and the harmonized image moves by what that changes in the target's signal equation, so
    # detail the network smoothed away comes back with the target's contrast.
    # Off by default: on a validation split (12 unseen heads of data.seed 1, 5 sites) it
    # lowered the GM volume error (7.8 -> 6.0 %) but also GM Dice (0.890 -> 0.884), failing the
    # rule declared before the run; on the test heads and the real Philips scan it gives higher
    # Dice and PSNR, lower SSIM (docs/phycharm_ablation.md, item 11).
    model.refine = ConfigDict(dict(
        enabled=False,
        t1_sd=0.15,          # relative prior sd of the network's T1 (its T1 NRMSE ~0.12-0.18)
        m0_sd=0.08,          # relative prior sd of its M0 (M0 NRMSE ~0.08)
        noise=0.06,          # sd of what the maps cannot explain in the normalized source (99th
                             # in-brain percentile = 1): image noise (0.01-0.05 at the default
                             # sites) plus model error; the best of 0.015/0.03/0.06 on training
                             # subjects
        bias_fwhm_mm=40.0,   # FWHM of the smooth receive gain (bias field) fitted beside
        iterations=3,        # Gauss-Newton steps
    ))

    # The harmonized image on the data's intensity scale (an inference setting, like refine):
    # "p99" divides it by its 99th in-brain percentile, the normalization every input and
    # target image has (phyjax.methods.phycharm.calibrate_output); "none" keeps the network's.
    # Off by default: on the validation split (12 unseen heads of data.seed 1, 5 sites) it
    # lowered PSNR 25.46 -> 25.20 dB (+0.85 at the 1.5 T MPRAGE, -1.37 at the GE IR-SPGR),
    # failing the rule declared before the run (docs/phycharm_ablation.md, item 12).
    # "match" returns the source scan histogram-matched to the network's output (a monotone
    # map that keeps every edge of the input): on the validation split it lowered SSIM in
    # every image and Dice and PSNR on average (item 14).
    # "sites" (**the default**): the network's output through a monotone map per source
    # protocol, learned at the end of training on the traveling-subject pairs (the pooled
    # outputs on the training scans quantile-matched to the same subjects' target scans,
    # calibrate_knots quantiles; phyjax.methods.calibration.fit_site_maps): the network's
    # systematic residual at each site, not anatomy. On the validation split (120 images, two
    # seeds, rule written before the runs) +0.73 dB, GM Dice +0.0074 (up in 89 of 120), mean
    # |dV| 6.5 -> 4.6 %, on both seeds (docs/phycharm_ablation.md, item 41); ~2.5 min more
    # training time (the network harmonizes every training scan once). Without traveling
    # subjects (phycharm_unpaired, pairs=simulated) the maps are learned on heads made by the
    # physics (calibrate_with below); a protocol without a map keeps the network's output,
    # with a warning. A quantile map is not physics: the benchmark gives its U-Net maps too
    # (config.unet.calibrate), and the U-Net gained more from them (+4.25 dB). What is physics
    # since item 71 is the heads PhyCHarm's maps are learned on (made by the physics, below);
    # the U-Net's, having no physics, are learned on the traveling subjects.
    model.calibrate = "sites"
    model.calibrate_knots = 256
    # The site maps' form: "quantile" (the pooled outputs' quantiles matched to the pooled
    # target scans', above) or "least_squares" (where the maps' heads are voxel pairs with
    # their target scans, as the physics makes them: the increasing map of least squares on
    # those pairs, isotonic regression over calibrate_knots bins, the target's conditional
    # mean given the output; phyjax.methods.calibration.least_squares_knots). Quantile
    # matching depends on the heads' tissue proportions and pulled each head's volumes toward
    # the population's (docs/phycharm_ablation.md, items 80, 81).
    model.calibrate_map = "quantile"
    # The site maps' quantiles from every k-th slice of each of their heads only (source and
    # target alike; the i-th head's sample starts at slice i mod k, so heads on one grid have
    # every slice position sampled: phyjax.methods.calibration.pooled_outputs): the network
    # harmonizes each of the maps' 80 scans for them, and 4 quarters that pass (the maps
    # 278 -> 139 s on one busy core). On the validation split (120 images, two seeds) the same
    # network's scores with maps from every slice and from every fourth one agree within
    # item 51's tolerances (docs/phycharm_ablation.md, item 79; every fourth slice from
    # slice 0 for every head failed them, item 78). 1: every slice.
    model.calibrate_slice_step = 4
    # With the site maps, an in-plane filter per protocol chosen on the same heads: among these
    # comma-separated "S:R" edge-preserving bilateral filters (spatial sd S voxels, intensity
    # sd R on the target's scale, whose 99th percentile is 1) and none, the one that brings
    # the mapped outputs closest to the heads' target scans (least squares), applied after the
    # map (phyjax.methods.calibration.choose_denoise): the part of a noisy source's output
    # that is noise the target scan does not have. "" (off): the map alone. Chosen at every
    # site where it gains at all (calibrate_denoise_min_gain=0), it failed its rule: +0.11 dB,
    # mean |dV| -0.09 points, GM Dice -0.0002 (docs/phycharm_ablation.md, item 75) ...
    model.calibrate_denoise = "0.5:0.05,0.5:0.1,0.7:0.05,0.7:0.1,1.0:0.05"
    # ... so a map keeps its filter only where it gains at least this many dB of PSNR on those
    # heads: the default's 16 heads give the 1.5 T MPRAGE 0.27-0.28 dB and every other site of
    # the benchmark 0.10 or less. On fresh validation heads (data.seed 2, 240 images, two
    # seeds) +0.07 dB, GM Dice +0.0001, mean |dV| -0.04 points; the 1.5 T MPRAGE +0.33 dB, SSIM
    # +0.003 (item 76). 0: wherever it gains. Only heads with a site's own scanner effects
    # (calibrate_effects fitted; harmonize.new_protocol_effects=fitted) choose a filter: on
    # drawn noise, not the scan's, a harmonize-time map chose one for the real Philips T1w
    # that cost detail (high-pass SSIM 0.941 -> 0.930) and Dice vs FAST (-0.004 to -0.009).
    model.calibrate_denoise_min_gain = 0.2
    # Site maps learned on N traveling subjects kept out of the network's training (drawn with
    # config.seed; phyjax.methods.calibration.calibration_holdout) instead of on the heads the
    # network trained on and has memorized; the network then trains on the others. 0: the
    # maps from the network's own training subjects (docs/phycharm_ablation.md, item 61).
    model.calibrate_heads = 0
    # Which heads the site maps are learned on: "traveling" subjects (the training pairs; a
    # model without them has no maps), heads made by the "physics" (calibrate_simulated of
    # them: shipped anatomies the network never saw, imaged with each training source
    # protocol, its sidecar's SliceThickness and drawn scanner effects, and with the target
    # protocol; phyjax.methods.phycharm.calibration_heads), or "auto": traveling subjects where
    # the training has them, else the physics' heads. Without traveling subjects
    # (phycharm_unpaired, pairs=simulated) the physics' maps gave +0.92 dB, GM Dice +0.0106 and
    # mean |dV| 6.4 -> 3.7 % on the validation split (120 images, two seeds, rule written
    # before the runs; docs/phycharm_ablation.md item 70); with them, in place of the
    # traveling subjects' maps, -0.58 dB with drawn scanner effects (item 69) and -0.10 dB,
    # GM Dice +0.0003, mean |dV| -0.06 points with each site's effects fitted to its scans
    # (item 71, calibrate_effects below: the default since).
    model.calibrate_with = "physics"
    # 16 heads, not 8: val. mean |dV| 2.67 -> 2.46 %, -0.02 dB (item 73; ~1 min more)
    model.calibrate_simulated = 16
    # The physics-made heads' scanner effects: "drawn" (B1+ 0.85-1.15, bias 0-30 %, noise 1-5 %,
    # gain), "fitted" to each site's own training scans (phyjax.data.simulated.
    # fit_site_effects: the B1+, bias and noise under which the site's protocol gives its
    # scans' intensity distribution, read against the same subjects' target-site scans where
    # they travel; ~20 s per site), or "auto": fitted where the site's subjects travel, else
    # drawn. With traveling subjects, fitted effects made the physics' maps the default (item
    # 71: -0.10 dB, GM Dice +0.0003, mean |dV| -0.06 points, WM -0.73, CSF +0.64 against the
    # traveling subjects' maps); without them drawn ones gave item 70's gain.
    model.calibrate_effects = "auto"
    # Test-time augmentation (inference only): "flip" averages the outputs on the scan and on
    # its left-right mirror (the axis its affine names L/R), mirrored back; twice the
    # inference time (phyjax.methods.networks.predict_volume); "none": one pass. On by
    # default: on the validation split (60 images per network, rule written before the runs)
    # it raised PSNR by 0.20 dB and GM Dice by 0.0017 (in 117 of 120 images) on two 800-step
    # networks, +0.30 dB / +0.0030 on the 400-step default, volumes unchanged
    # (docs/phycharm_ablation.md, item 20).
    model.tta = "flip"
    # Deep ensemble (a training setting): this many networks, seeds seed, seed + 1, ...,
    # their outputs averaged at inference (phyjax.methods.networks.fit_ensemble). 1: one
    # network -- 2 would double the training time and take the main command past 15 minutes
    # on 2 CPU cores; the larger variant uses 2 (docs/phycharm_ablation.md, items 22 and 28:
    # two wide networks against their mean, +0.35 dB, GM Dice +0.0022 on 120 images).
    model.ensemble = 1
    # Slicing planes (a training and inference setting): ("axial",) trains and infers on axial
    # slices; more, e.g. ("axial", "coronal", "sagittal"), trains one network on batches of
    # every plane in turn and averages its outputs over them (multi-view aggregation; thick
    # slices in any orientation are then seen as in-plane blur by two of the planes;
    # phyjax.methods.networks.predict_volume). Each plane costs one inference pass. Axial by
    # default: on the validation split (two 800-step networks, 120 images, rule written before
    # the runs) three planes raised PSNR by 1.4 dB and SSIM at every site but left GM Dice
    # unchanged (0.9085 -> 0.9086) and raised the volume errors (mean 5.72 -> 6.12 points),
    # failing the rule (docs/phycharm_ablation.md, item 24).
    model.views = ("axial",)

    train = config.train = ConfigDict()
    # 800 optimizer steps of 8 slices: the time of 400 of 16 (a step costs about half), +0.61 dB
    # and every Dice up on the validation heads (docs/phycharm_ablation.md, item 46: the number
    # of updates, not the slices seen, is what 800 steps of 16 had bought), but alone it raised
    # the CSF volume error (+0.66 points, failing the rule); with item 48's detail gate the
    # default.
    train.steps = 800
    train.batch_size = 8
    # Mirror augmentation: each training slice (source, target, mask, maps together) flipped
    # left-right with this probability (phyjax.methods.networks.mirror_batch; the benchmark's
    # U-Net trains with the same). Off: on the validation split it lowered GM Dice on both
    # of two seeds (pooled 0.9085 -> 0.9046) and raised the volume errors
    # (docs/phycharm_ablation.md, item 21).
    train.mirror = 0.0
    train.learning_rate = 2e-3
    train.warmup_steps = 20
    # > 0: the network used after training is an exponential moving average of the parameters
    # over the steps, this the weight kept per step (0.995: a window of ~200 steps;
    # phyjax.methods.networks.params_ema); 0: the last step's parameters. Both slice networks
    # (PhyCHarm and the benchmark's U-Net) read it. Off: at 800 steps 0.995 lowered every
    # Dice and raised the volume errors on the validation heads (docs/phycharm_ablation.md, item 55).
    train.ema = 0.0
    train.checkpoint_every = 100
    train.log_every = 10
    train.w_map = 1.0        # L1 on T1/M0 maps (where ground truth exists)
    train.w_physics = 0.5    # source re-synthesis consistency (self-supervised); 0, 1.0 and 1.5
                             # all lowered GM Dice on the validation split (docs/phycharm_ablation.md, item 25)
    train.physics_off_sites = ()  # source sites whose paired batches get no w_physics term
                                  # (thick slices: the term models no slice profile). Empty:
                                  # off on the 5 mm spin echo it failed the validation rule,
                                  # -0.48 dB (docs/phycharm_ablation.md, item 39)
    train.w_target_physics = 0.0  # target re-synthesis consistency: the maps through the target
                                  # protocol must explain the target scan (scale-free, as
                                  # w_physics for the source; paired batches only). Off:
                                  # -0.35 dB on the validation split over two seeds, GM Dice
                                  # +0.002 (docs/phycharm_ablation.md, item 32)
    train.w_harm = 1.0       # L1 of harmonized vs target image
    train.w_ssim = 0.5       # 1 - SSIM of harmonized vs target image
    # Anatomy-keeping terms (phyjax.losses; 0 switches one off):
    train.w_grad = 1.0       # gradient difference harmonized vs target (sharp edges)
    train.w_tissue = 0.2     # soft CSF/GM/WM membership harmonized vs target, at the target
                             # protocol's tissue signal levels (boundaries where they belong)
    train.w_edge = 0.1       # normalized-gradient-field distance harmonized vs source (edges
                             # where the input has them; also on unpaired real scans)
    # Wasserstein-1 of each slice's in-mask intensities harmonized vs target (keeps the
    # histogram's spread, hence the tissue volumes a histogram-fitting segmenter measures;
    # phyjax.methods.phycharm.resolve_loss_weights). w_hist: where per-site output maps follow
    # the network (traveling-subject pairs with model.calibrate=sites, the default), which
    # restore that spread themselves: 0 -- against 2 on the validation heads (two seeds, 120
    # images, rule written before the runs) +0.27 dB, SSIM +0.0017, every Dice up (GM +0.0028,
    # up in 113 of 120), mean |dV| -0.09 points (docs/phycharm_ablation.md, item 57).
    # w_hist_no_maps: everywhere else (physics-made pairs, phycharm_unpaired -- whose maps,
    # learned on physics-made heads, were measured with it on, item 70; another calibrate):
    # item 6's 2, not re-measured there.
    train.w_hist = 0.0
    train.w_hist_no_maps = 2.0
    train.w_tissue_hist = 0.0  # the same inside each of the target's CSF/GM/WM classes (at the
                               # target protocol's tissue levels): no trading one tissue's
                               # brightness against another's (phyjax.losses.tissue_distribution).
                               # Off: at 800 steps neither 2.0 beside w_hist nor 2.0 instead of
                               # it passed the validation rule (docs/phycharm_ablation.md, item 18)
    train.w_mixture = 0.5    # segmentation consistency: CSF/GM/WM posteriors of a Gaussian
                             # mixture fitted by EM to each image on its own (the fixed
                             # segmenter's model without its MRF), harmonized vs target
                             # (phyjax.losses.mixture_consistency). On: on the validation split
                             # (two seeds, 120 images, rule written before the runs) +0.17 dB,
                             # GM Dice +0.0046 (up in 93 of 120), mean |dV| -1.0 points
                             # (docs/phycharm_ablation.md, item 40)
    train.pairs = "auto"     # "paired" (traveling subjects), "simulated" (physics-made pairs on
                             # shipped anatomies + self-supervised adaptation to the real scans;
                             # target-site images unused), "auto" (paired if every training
                             # subject has a target-site scan)
    train.n_anatomies = 8    # simulated mode: anatomies the pairs are simulated on
    train.adapt_every = 4    # simulated mode: every n-th batch is a real, unpaired scan (physics
                             # consistency and edges only); 0 = no adaptation
    train.random_sources = 4  # simulated mode: protocols per source family drawn from its
                              # documented range (with readout trains) beside the user's own
                              # (domain randomisation); 0 = the user's protocols only
    # Traveling-subject (paired) training: every n-th batch a physics-made pair instead -- the
    # training set's source protocols, random_sources more per family, and the target, simulated
    # with random scanner effects on n_anatomies shipped heads the traveling subjects do not
    # have -- so the network sees more anatomy than the site's few heads; 0 = traveling pairs
    # only. Off: 4 lowered GM Dice by 0.0013 and PSNR by 0.15 dB on the validation heads (two
    # seeds; mean |dV| -0.05 points), most at the 5 mm spin echo (docs/phycharm_ablation.md,
    # item 62) -- not for its slice profile: with train.slice_profile=sidecar the loss is the
    # same (item 67); with steps=1066, keeping all 800 traveling-subject batches, it is neutral
    # (+0.05 dB, GM Dice +0.0003) but below 1000 steps of traveling pairs alone (item 68).
    train.simulated_every = 0
    # The slice profile of every physics-made source scan (both modes above): "drawn" from
    # 0-1.5 voxels along the last axis (phyjax.data.simulated.EFFECT_RANGES); "sidecar": a
    # source protocol of the training set takes its scans' own SliceThickness (dcm2niix writes
    # it; mm, the profile's FWHM) along their slice direction, so a 5 mm 2-D site is simulated
    # 5 mm thick (phyjax.data.simulated.slice_profiles); the drawn extra protocols and the
    # target keep the drawn one. "drawn" by default: for phycharm_unpaired on the validation
    # heads (two seeds, rule written before the runs) "sidecar" changed PSNR by +0.03 dB, GM
    # Dice by +0.0004 and the mean |dV| by +0.02 points (docs/phycharm_ablation.md, item 66).
    train.slice_profile = "drawn"

    # The target as a protocol (a sidecar and/or values; s, degrees, T): overrides the target
    # site's sidecars, and need not be a site in the data.  Empty/negative = not given.
    tg = config.target = ConfigDict()
    tg.sidecar = ""
    tg.sequence = ""         # mprage, spgr, ir, se, bssfp
    tg.tr = -1.0
    tg.te = -1.0
    tg.ti = -1.0
    tg.flip_angle = -1.0
    tg.field_strength = -1.0
    tg.randomize = False     # train for every target in phyjax.data.simulated.TARGET_RANGES of
                             # its family (simulated pairs), so one model serves any of them
    tg.n_protocols = 8       # targets drawn from that range (the given target first)

    ev = config.eval = ConfigDict()
    ev.baselines = ("none", "zscore", "histmatch")
    ev.save_volumes = True
    # Slices per inference call. A volume's slices are cut into batches of this size and the
    # last one is padded, so a small batch pads less (82 slices: 88 run at 8, 96 at 32); each
    # slice's output does not depend on its batch-mates (identical outputs). 8 against 32:
    # -25 % inference time per scan, -40 % over every second slice, on 2 cores
    # (benchmarks/inference_batch.py; docs/phycharm_ablation.md, item 53).
    ev.batch_size = 8

    h = config.harmonize = ConfigDict()
    h.input = ""             # T1w NIfTI to harmonize
    h.bids_root = ""         # ... or every T1w of this BIDS folder (masks: data.mask_label),
                             # written as a BIDS derivatives dataset into h.output (a folder;
                             # default <bids_root>/derivatives/phyjax)
    h.resolution = "native"  # run at the input's voxel size, or "training" (resample to the
                             # training grid and back)
    h.harmonizer = ""        # fitted harmonizer folder; default: <workdir>/harmonizer
    h.mask = ""              # brain mask NIfTI (or probability maps, comma-separated, summed)
    h.sidecar = ""           # JSON sidecar; default: next to the input
    h.output = ""            # default: <workdir>/harmonized/<input>_harmonized.nii.gz
    h.sequence = ""          # override the sequence family
    h.tr = -1.0              # overrides in s / degrees / T; negative = take from sidecar
    h.te = -1.0
    h.ti = -1.0
    h.flip_angle = -1.0
    h.field_strength = -1.0
    # an inversion-prepared scan's readout train (MPRAGE, IR-SPGR, TFE): readout TR (s) and
    # readouts per inversion, where its sidecar leaves them out (GE's and United Imaging's
    # IR-SPGR sidecars give no readout count, tests/data/vendor_t1_sidecars; a dataset gives
    # it in a site table); negative = take from sidecar
    h.tr_readout = -1.0
    h.n_readouts = -1.0
    h.figure = True
    # A scan whose protocol no site map was learned for (model.calibrate=sites; a scanner the
    # training never saw): "physics" -- the physics makes that protocol's map before it is
    # harmonized, as training made the sites' own (model.calibrate_simulated heads imaged with
    # it and with the target; per new protocol, once (then kept), on one core: ~25 s at 2 mm and
    # ~2.4 min at 1 mm with 8 heads, twice that with 16; its harmonizer.json is not changed,
    # the map is kept beside it: new_protocol_cache; docs/phycharm_ablation.md item 72) -- or
    # "none": the network's output, uncalibrated, with a warning. The heads' scanner effects
    # are "drawn"
    # (as for a model trained without target-site images, item 70) or "fitted" to the scans
    # being harmonized (phyjax.data.simulated.fit_site_effects; ~20 s more).
    h.new_protocol_map = "physics"
    h.new_protocol_effects = "drawn"
    # where each such map is kept, so the next run with the same model, protocol and settings
    # reads it instead of making it again (phyjax.methods.map_cache: a file per map, used only
    # when the network, its settings, the target, the protocol, slice thickness and heads are
    # those it was made with): "harmonizer" (<harmonizer>/new_protocol_maps/), "off", or a
    # folder (for a model in a read-only place)
    h.new_protocol_cache = "harmonizer"
    # Which of config.model's inference settings (refine, calibrate, tta) replace the saved
    # harmonizer's: phyjax.main fills it with those given on the command line, so a harmonizer
    # trained with, e.g., tta=none keeps it unless --config.model.tta=... is given.  None (a
    # config built in Python, not by phyjax.main): every one of them applies.
    h.model_overrides = None
    # The target: config.target (a sidecar and/or values) when given, else the fitted one.

    if arg == "debug":
        data.n_subjects = 3
        data.n_test = 1
        data.voxel_size = 4
        model.features = (8, 16)
        model.cond_features = 8
        train.steps = 6
        train.n_anatomies = 2    # simulated pairs on 2 heads, not 8 (6 steps see few slices)
        model.calibrate_simulated = 2   # physics-made heads for the site maps
        model.calibrate_effects = "drawn"   # no ~20 s fit per site (tested on its own)
        train.batch_size = 4
        train.checkpoint_every = 3
        train.log_every = 2
    elif arg == "large":
        train.batch_size = 16    # twice the slices per step (the 800 steps of items 13 and 38)
        model.features = (24, 48, 96)
        model.ensemble = 2       # seeds seed and seed + 1 (docs/phycharm_ablation.md, item 28)
    elif arg not in (None, ""):
        raise ValueError(f"Unknown config variant {arg!r}; expected '', 'debug' or 'large'.")
    config.lock()
    return config
