-- gandissect store schema: the source of truth for every table.
--
-- Read by db/store.py (`ensure_schema`, executed on the first write connection; idempotent) and by
-- db/tables.py's test, which checks that the `TABLES` declarations agree with this file exactly.
-- Every table is preceded by `-- grain: one row per ...` (one sentence) and `-- key: col, ...` (the
-- columns that are unique together); every column line ends with a `--` comment. Result tables are
-- keyed by run_key (plus model and layer) and have no primary key: uniqueness is checked by
-- db/audits.sql inside every publish transaction (an ART index would make bulk replaces ~10x slower).
-- Small tables (dimensions, runs, flags, benchmarks, store_meta) have primary keys (upserts use them).
-- Timestamps are UTC. Pixel counts are DOUBLE (sums over many images; soft masks may be fractional).

-- grain: one row per store setting (the schema fingerprint, ...)
-- key: key
CREATE TABLE IF NOT EXISTS store_meta (
    key VARCHAR NOT NULL PRIMARY KEY,  -- setting name, e.g. 'schema_sha256'
    value VARCHAR  -- setting value as text
);

-- grain: one row per model, that is per generator checkpoint (each file of a checkpoint glob is its own model)
-- key: model
CREATE TABLE IF NOT EXISTS models (
    model VARCHAR NOT NULL PRIMARY KEY,  -- model name used in every other table
    family VARCHAR NOT NULL,  -- loader family: progan | module | ...
    dataset VARCHAR,  -- training data set (village, church, ...); NULL when unknown
    checkpoint VARCHAR,  -- path of the weights file as declared in the spec
    checkpoint_sha256 VARCHAR,  -- sha256 of the weights file
    resolution INTEGER,  -- output image side in pixels
    z_dim INTEGER,  -- latent dimension
    training_step BIGINT,  -- training iteration of this checkpoint; NULL when unknown
    model_group VARCHAR,  -- the spec's model entry: every checkpoint of one glob shares it (compare across training)
    registered_at TIMESTAMP,  -- when this row was last written (UTC)
    role VARCHAR  -- generator | classifier (the spec entry's role; a classifier's images come from a dataset)
);

-- grain: one row per dissectable layer of a model
-- key: model, layer
CREATE TABLE IF NOT EXISTS layers (
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- dotted module path, usable with named_modules()
    layer_index INTEGER NOT NULL,  -- position among the model's dissectable layers, 0 = nearest to z
    units INTEGER NOT NULL,  -- number of channels (units)
    height INTEGER,  -- featuremap height
    width INTEGER,  -- featuremap width
    PRIMARY KEY (model, layer)
);

-- grain: one row per segmenter
-- key: segmenter
CREATE TABLE IF NOT EXISTS segmenters (
    segmenter VARCHAR NOT NULL PRIMARY KEY,  -- segmenter name used in every other table
    family VARCHAR NOT NULL,  -- loader family: village | ...
    checkpoint VARCHAR,  -- path of the weights file as declared in the spec
    checkpoint_sha256 VARCHAR,  -- sha256 of the weights file
    resolution INTEGER,  -- input/output image side in pixels
    registered_at TIMESTAMP  -- when this row was last written (UTC)
);

-- grain: one row per concept a segmenter labels (its "none" channel excluded)
-- key: segmenter, concept
CREATE TABLE IF NOT EXISTS concepts (
    segmenter VARCHAR NOT NULL,  -- segmenters.segmenter
    concept VARCHAR NOT NULL,  -- concept name (tree, door, brick, ...)
    category VARCHAR NOT NULL,  -- object | part | material (more where a segmenter has them)
    concept_index INTEGER,  -- label value / output channel k of the segmenter (0 is "none")
    PRIMARY KEY (segmenter, concept)
);

-- grain: one row per run, that is per analysis of one model with one set of canonical parameters
-- key: run_key
CREATE TABLE IF NOT EXISTS runs (
    run_key VARCHAR NOT NULL PRIMARY KEY,  -- sha256 of canonical params + checkpoint hashes + code version
    analysis VARCHAR NOT NULL,  -- analysis kind: dissect | ace | ablate | insert | realism | trace | ...
    name VARCHAR,  -- the spec's analysis entry name
    model VARCHAR,  -- models.model; NULL when the run concerns no single model
    layer VARCHAR,  -- the layer when the run concerns one; '*' or NULL when it covers several (see the result rows)
    segmenter VARCHAR,  -- segmenters.segmenter; NULL when none is used
    n_samples INTEGER,  -- size of the sample set
    seed BIGINT,  -- seed of the sample set: (model, seed, sample) identifies an image
    params VARCHAR,  -- canonical parameters as JSON text (dissect: threshold 'q0.99' | 'iqr', interpretable_iou, ...)
    code_version VARCHAR,  -- version of the code that computed it
    status VARCHAR NOT NULL,  -- running | done | failed
    started_at TIMESTAMP NOT NULL,  -- when the run started (UTC)
    finished_at TIMESTAMP,  -- when it became done or failed (UTC); NULL while running
    seconds DOUBLE,  -- wall-clock seconds of compute
    error VARCHAR,  -- error text of a failed run
    device VARCHAR,  -- device it computed on (cpu, cuda:0, ...)
    threshold_spec VARCHAR,  -- params.threshold as db.threshold.Threshold writes it ('q0.99' | 'iqr' | 'iclr'); NULL when the run has no threshold
    threshold_mode VARCHAR,  -- the views' threshold family: 'quantile' (q<level>, iclr) | 'iqr'
    threshold_level DOUBLE,  -- the activation quantile of a fixed-quantile threshold (0.99 for q0.99, 0.995 for iclr); NULL in iqr mode
    interpretable_iou DOUBLE,  -- a unit is interpretable above this best IoU (params.interpretable_iou, else 0.04 quantile / 0.05 iqr)
    interpretable_iqr DOUBLE  -- iqr mode: and above this IQR (params.interpretable_iqr, else 0.01)
);

-- grain: one row per layer of a run (the layers its result rows cover), written with the results when they are published
-- key: run_key, layer
CREATE TABLE IF NOT EXISTS run_layers (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer ('' for a result row that concerns no layer, e.g. an inversion of z only)
    PRIMARY KEY (run_key, layer)
);

-- grain: one row per unit and quantile level of a layer in a run
-- key: run_key, model, layer, unit, q
CREATE TABLE IF NOT EXISTS unit_quantiles (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    unit INTEGER NOT NULL,  -- channel index, 0-based
    q DOUBLE NOT NULL,  -- quantile level in [0, 1] (includes 0.99, 0.995, 0.999)
    value DOUBLE NOT NULL  -- activation quantile over all samples and positions of the upsampled featuremap
);

-- grain: one row per unit and rank among the samples that activate it most, in a run
-- key: run_key, model, layer, unit, rank
CREATE TABLE IF NOT EXISTS unit_topk (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    unit INTEGER NOT NULL,  -- channel index, 0-based
    rank INTEGER NOT NULL,  -- 1 = the sample with the highest activation
    seed BIGINT NOT NULL,  -- sample set seed: (model, seed, sample) identifies the image
    sample INTEGER NOT NULL,  -- sample index within the seed's latent sequence
    value DOUBLE NOT NULL  -- the unit's spatial-max activation on that sample
);

-- grain: one row per unit and concept of a layer in a dissection run
-- key: run_key, model, layer, unit, concept
CREATE TABLE IF NOT EXISTS unit_iou (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    unit INTEGER NOT NULL,  -- channel index, 0-based
    concept VARCHAR NOT NULL,  -- concepts.concept of the run's segmenter
    threshold DOUBLE,  -- activation threshold t used for this unit (and concept, in iqr mode)
    iou DOUBLE,  -- intersection over union in [0, 1]; NULL when the concept never appears in the sample
    inter DOUBLE,  -- pixels where the unit is above threshold and the concept present, summed over images
    above DOUBLE,  -- pixels where the unit is above threshold, summed over images
    concept_pixels DOUBLE,  -- pixels where the concept is present, summed over images
    iqr DOUBLE,  -- information quality ratio I/H at the threshold (iqr mode); NULL otherwise
    null_mean DOUBLE,  -- mean IoU under the permutation null (the unit's maps paired with other images' masks, within blocks); NULL if not computed
    null_std DOUBLE,  -- standard deviation of that null IoU (delta method from the exact count variance); NULL if not computed
    z DOUBLE,  -- (inter - 1/2 - null mean count) / null sd count; NULL if not computed
    p_value DOUBLE,  -- one-sided permutation p-value P(null IoU >= iou), normal tail; NULL if not computed
    q_value DOUBLE,  -- Benjamini-Hochberg q over every unit x concept test of the layer in this run; beats chance when < 0.05
    log10_p DOUBLE  -- log10 of p_value, finite where p_value underflows to 0 (keeps the ordering of strong units)
);

-- grain: one row per layer of a dissection run: over the layer's units, the null's expected best IoU (max over concepts of null_mean)
-- key: run_key, model, layer
CREATE TABLE IF NOT EXISTS layer_null_iou (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    method VARCHAR NOT NULL,  -- how the null was drawn: permutation (maps re-paired with other images' masks within blocks) | shuffle (older runs: shifted masks) | random_direction
    n_values INTEGER NOT NULL,  -- number of null best-IoU values behind the statistics
    mean DOUBLE,  -- mean null best-IoU
    std DOUBLE,  -- standard deviation of the null best-IoU
    median DOUBLE,  -- median null best-IoU
    q90 DOUBLE,  -- 0.90 quantile of the null best-IoU
    q95 DOUBLE,  -- 0.95 quantile of the null best-IoU
    q99 DOUBLE,  -- 0.99 quantile: a best IoU above it beats chance at 1 %
    max DOUBLE  -- largest null best-IoU
);

-- grain: one row per concept and unit of an ACE optimisation run: the final alpha
-- key: run_key, model, layer, concept, unit
CREATE TABLE IF NOT EXISTS ace_alpha (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    concept VARCHAR NOT NULL,  -- concept whose causal units are sought
    unit INTEGER NOT NULL,  -- channel index, 0-based
    alpha DOUBLE NOT NULL,  -- optimised intervention strength in [0, 1]
    alpha_init DOUBLE  -- initial alpha (IoU / max IoU over units) in [0, 1]
);

-- grain: one row per concept and epoch of an ACE optimisation run: the objective's trajectory
-- key: run_key, model, layer, concept, epoch
CREATE TABLE IF NOT EXISTS ace_epochs (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    concept VARCHAR NOT NULL,  -- concept whose causal units are sought
    epoch INTEGER NOT NULL,  -- 0 = initialisation, then one per epoch
    loss DOUBLE,  -- mean loss: -effect + lambda * penalty (runs.params penalty: 'l2' = ||alpha||_2, 'l2sq' = its square)
    effect DOUBLE,  -- normalised average causal effect delta of the current alpha
    alpha_l1 DOUBLE,  -- sum of alpha over units
    alpha_l2 DOUBLE  -- L2 norm of alpha
);

-- grain: one row per concept, epoch and unit of an ACE optimisation run: alpha along the optimisation
-- key: run_key, model, layer, concept, epoch, unit
CREATE TABLE IF NOT EXISTS ace_trajectory (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    concept VARCHAR NOT NULL,  -- concept whose causal units are sought
    epoch INTEGER NOT NULL,  -- 0 = initialisation, then one per epoch
    unit INTEGER NOT NULL,  -- channel index, 0-based
    alpha DOUBLE NOT NULL  -- alpha of the unit after that epoch, in [0, 1]
);

-- grain: one row per concept, ranking and number of ablated units of an ablation run
-- key: run_key, model, layer, concept, ranking, n_units
CREATE TABLE IF NOT EXISTS ablation_curves (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    concept VARCHAR NOT NULL,  -- concept measured
    ranking VARCHAR NOT NULL,  -- how units were ranked: ace | iou | random
    n_units INTEGER NOT NULL,  -- number of top-ranked units ablated (0 = none)
    remaining DOUBLE NOT NULL,  -- fraction of the concept's baseline pixels left (mean over draws for random)
    remaining_std DOUBLE,  -- standard deviation over random draws; NULL for deterministic rankings
    draws INTEGER NOT NULL,  -- number of random draws (1 for deterministic rankings)
    baseline_pixels DOUBLE  -- the concept's pixels with no ablation, summed over the held-out images
);

-- grain: one row per inserted concept and context concept of an insertion run
-- key: run_key, model, layer, concept, context
CREATE TABLE IF NOT EXISTS insertion_contexts (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    concept VARCHAR NOT NULL,  -- concept inserted
    context VARCHAR NOT NULL,  -- concept present at the location before the edit (wall, sky, ...)
    locations BIGINT NOT NULL,  -- number of featuremap locations with that context
    effect DOUBLE,  -- mean added concept pixels in the neighbourhood of an insertion there
    effect_std DOUBLE  -- standard deviation of that effect over locations
);

-- grain: one row per inserted concept, sample and featuremap location of an insertion run
-- key: run_key, model, layer, concept, seed, sample, y, x
CREATE TABLE IF NOT EXISTS insertion_maps (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer (the edited layer)
    concept VARCHAR NOT NULL,  -- concept inserted
    seed BIGINT NOT NULL,  -- sample set seed
    sample INTEGER NOT NULL,  -- sample index within the seed's latent sequence
    y INTEGER NOT NULL,  -- featuremap row of the insertion
    x INTEGER NOT NULL,  -- featuremap column of the insertion
    context VARCHAR,  -- concept present at the location before the edit
    effect DOUBLE NOT NULL  -- added concept pixels in the neighbourhood
);

-- grain: one row per inserted concept, later layer and location of a tracing run
-- key: run_key, model, layer, concept, target_layer, y, x
CREATE TABLE IF NOT EXISTS trace_effects (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer (the edited layer)
    concept VARCHAR NOT NULL,  -- concept inserted
    target_layer VARCHAR NOT NULL,  -- a later layer where the change is measured
    y INTEGER NOT NULL,  -- row in the target layer's featuremap
    x INTEGER NOT NULL,  -- column in the target layer's featuremap
    effect DOUBLE NOT NULL  -- mean over channels of |change| / the channel's mean |activation| (averaged over the run's samples)
);

-- grain: one row per concept and named unit set of a causal-effect run
-- key: run_key, model, layer, concept, unit_set
CREATE TABLE IF NOT EXISTS causal_effects (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    concept VARCHAR NOT NULL,  -- concept measured
    unit_set VARCHAR NOT NULL,  -- name of the unit set (ace_top20, iou_top20, random, ...)
    n_units INTEGER NOT NULL,  -- number of units in the set
    units VARCHAR,  -- the unit indices as a JSON list
    ace DOUBLE,  -- normalised average causal effect: (E[s_c(x_i)] - E[s_c(x_a)]) / E[s_c(x)]
    ablation DOUBLE,  -- normalised ablation effect: (E[s_c(x)] - E[s_c(x_a)]) / E[s_c(x)]
    insertion DOUBLE  -- normalised insertion effect: (E[s_c(x_i)] - E[s_c(x)]) / E[s_c(x)]
);

-- grain: one row per unit and flag set by hand in the dashboard
-- key: model, layer, unit, flag
CREATE TABLE IF NOT EXISTS unit_flags (
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    unit INTEGER NOT NULL,  -- channel index, 0-based
    flag VARCHAR NOT NULL,  -- artifact | watermark | interesting | label
    note VARCHAR,  -- free text; for flag 'label' the custom label
    created_at TIMESTAMP NOT NULL,  -- when the flag was set (UTC)
    PRIMARY KEY (model, layer, unit, flag)
);

-- grain: one row per benchmark and metric (the latest measurement)
-- key: bench, metric
CREATE TABLE IF NOT EXISTS benchmarks (
    bench VARCHAR NOT NULL,  -- benchmark: dissect | edit | ace | insert | ...
    metric VARCHAR NOT NULL,  -- metric name (forward_s_per_1k, median_ms, ...)
    value DOUBLE NOT NULL,  -- measured value
    unit VARCHAR,  -- unit of the value (s, ms, MB, ratio)
    params VARCHAR,  -- JSON text: sample counts, model, device, ...
    created_at TIMESTAMP NOT NULL,  -- when it was measured (UTC)
    PRIMARY KEY (bench, metric)
);

-- grain: one row per unit of a layer in a realism run: the Frechet distance of its top images to real images
-- key: run_key, model, layer, unit
CREATE TABLE IF NOT EXISTS unit_realism (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    unit INTEGER NOT NULL,  -- channel index, 0-based
    frechet DOUBLE NOT NULL,  -- Frechet distance between features of the unit's top images and of real images (lower is more realistic)
    n_top INTEGER NOT NULL,  -- number of top-activating generated images used
    n_real INTEGER NOT NULL,  -- number of real images used
    top_samples VARCHAR  -- JSON list of the first top-activating sample indices (seed = runs.seed), for image strips
);

-- grain: one row per unit set and draw of a repair run: the Frechet distance before and after ablating the set
-- key: run_key, model, layer, unit_set, draw
CREATE TABLE IF NOT EXISTS repair_effects (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer (the ablated layer)
    unit_set VARCHAR NOT NULL,  -- manual | realism | union | random
    draw INTEGER NOT NULL,  -- 0 for deterministic sets, 0..n-1 for random draws
    n_units INTEGER NOT NULL,  -- number of units ablated
    units VARCHAR,  -- the unit indices as a JSON list
    fd_before DOUBLE NOT NULL,  -- Frechet distance of the whole sample to real images before ablation (the real images left after runs.params real_exclude)
    fd_after DOUBLE NOT NULL,  -- the same after ablating the set
    fd_before_full DOUBLE,  -- Frechet distance before ablation to the full real distribution (real_samples images, nothing excluded); NULL in runs before repair code version 2
    fd_after_full DOUBLE  -- the same after ablating the set
);

-- grain: one row per unit set, draw and concept of a repair run: the concept's pixel fraction before and after ablating the set
-- key: run_key, model, layer, unit_set, draw, concept
CREATE TABLE IF NOT EXISTS repair_concepts (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer (the ablated layer)
    unit_set VARCHAR NOT NULL,  -- repair_effects.unit_set
    draw INTEGER NOT NULL,  -- repair_effects.draw
    concept VARCHAR NOT NULL,  -- concepts.concept
    fraction_before DOUBLE NOT NULL,  -- share of the generated pixels labelled with the concept, before ablation
    fraction_after DOUBLE NOT NULL  -- the same after ablating the set
);

-- grain: one row per layer and cut-off k of a repair run: the k worst realism scores as a predictor of the flagged units
-- key: run_key, model, layer, k
CREATE TABLE IF NOT EXISTS realism_flag_pr (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    layer VARCHAR NOT NULL,  -- layers.layer
    k INTEGER NOT NULL,  -- number of units predicted as artifacts: those with frechet >= the threshold
    frechet DOUBLE NOT NULL,  -- the score threshold (sklearn.metrics.precision_recall_curve)
    precision DOUBLE NOT NULL,  -- flagged units among the k, over k
    recall DOUBLE NOT NULL,  -- flagged units among the k, over all flagged units of the layer
    n_flagged INTEGER NOT NULL  -- flagged units of the layer (the manual set)
);

-- grain: one row per concept and image source of a coverage run: how much of it generated and real images hold
-- key: run_key, concept, source
CREATE TABLE IF NOT EXISTS concept_coverage (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model whose generated images are compared
    segmenter VARCHAR NOT NULL,  -- segmenters.segmenter that labelled both sources
    concept VARCHAR NOT NULL,  -- concepts.concept
    source VARCHAR NOT NULL,  -- generated | real
    pixel_fraction DOUBLE NOT NULL,  -- share of all pixels labelled with the concept, in [0, 1]
    presence DOUBLE NOT NULL,  -- share of images where the concept covers at least runs.params presence_share of the pixels, in [0, 1]
    n_images INTEGER NOT NULL  -- number of images behind the two shares
);

-- grain: one row per unit and class of a classifier layer in a unit_roles run: the class's held-out accuracy with that one unit ablated
-- key: run_key, model, layer, unit, class
CREATE TABLE IF NOT EXISTS class_unit_effects (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model (a classifier)
    layer VARCHAR NOT NULL,  -- layers.layer
    unit INTEGER NOT NULL,  -- channel index, 0-based
    class VARCHAR NOT NULL,  -- class name (the classifier's classes)
    class_index INTEGER NOT NULL,  -- logit index of the class
    images INTEGER NOT NULL,  -- held-out images of the class
    rank INTEGER NOT NULL,  -- the unit's importance for the class, 1 = largest accuracy drop (ties: larger logit drop)
    accuracy DOUBLE NOT NULL,  -- share of the class's images classified as the class with the unit ablated, in [0, 1]
    accuracy_drop DOUBLE NOT NULL,  -- unablated accuracy minus accuracy
    true_logit DOUBLE NOT NULL,  -- mean logit of the true class over the class's images, unit ablated
    logit_drop DOUBLE NOT NULL,  -- unablated mean true-class logit minus true_logit
    true_prob DOUBLE NOT NULL,  -- mean softmax probability of the true class, unit ablated
    prob_drop DOUBLE NOT NULL  -- unablated mean true-class probability minus true_prob
);

-- grain: one row per class, ranking and set size k of a classifier layer in a unit_roles run: accuracies with k units ablated together
-- key: run_key, model, layer, class, ranking, k
CREATE TABLE IF NOT EXISTS class_ablation_curves (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model (a classifier)
    layer VARCHAR NOT NULL,  -- layers.layer
    class VARCHAR NOT NULL,  -- class name
    ranking VARCHAR NOT NULL,  -- top (the class's k most important units) | random (k units drawn uniformly)
    k INTEGER NOT NULL,  -- units ablated together; 0 = the unablated baseline
    draws INTEGER NOT NULL,  -- random sets averaged (1 for top)
    accuracy DOUBLE NOT NULL,  -- the class's held-out accuracy (mean over draws), in [0, 1]
    other_accuracy DOUBLE NOT NULL,  -- mean accuracy of the other classes (mean over draws), in [0, 1]
    accuracy_std DOUBLE,  -- standard deviation of accuracy over draws (0 for top)
    other_accuracy_std DOUBLE,  -- standard deviation of other_accuracy over draws (0 for top)
    units VARCHAR  -- comma-separated ablated units, most important first (top only)
);

-- grain: one row per model and image of an invert run: how closely the generator reconstructs the image
-- key: run_key, model, image
CREATE TABLE IF NOT EXISTS inversions (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model the image was inverted into
    layer VARCHAR NOT NULL,  -- layers.layer whose featuremap was optimised after z ('' when only z was)
    image VARCHAR NOT NULL,  -- image id: 'village:<seed>' for a rendered scene, else the file's sha256
    image_sha256 VARCHAR NOT NULL,  -- sha256 of the file's bytes (a rendered scene: of its uint8 pixels)
    path VARCHAR,  -- the photo's path as given (NULL for a rendered scene)
    village_seed BIGINT,  -- the rendered scene's seed (NULL for a photo)
    width INTEGER NOT NULL,  -- original width in pixels (before the centre-square rule)
    height INTEGER NOT NULL,  -- original height in pixels
    psnr DOUBLE NOT NULL,  -- dB, final reconstruction vs the squared image (8-bit, [0, 1] range)
    psnr_z DOUBLE NOT NULL,  -- dB after the z step only
    psnr_encoder DOUBLE NOT NULL,  -- dB of G(z0), the z step's start: the encoder's E(x) or a fixed random latent that fits better
    seconds DOUBLE NOT NULL,  -- wall time of the image's inversion (its share of its batch)
    n_omitted INTEGER NOT NULL,  -- concepts present in the image and omitted by the reconstruction
    omitted VARCHAR  -- JSON list of the omitted concepts, most dropped first
);

-- grain: one row per model, image and concept of an invert run (concepts labelled in the image or its reconstruction): pixel shares in both and recall
-- key: run_key, model, image, concept
CREATE TABLE IF NOT EXISTS inversion_concepts (
    run_key VARCHAR NOT NULL,  -- runs.run_key
    model VARCHAR NOT NULL,  -- models.model
    segmenter VARCHAR NOT NULL,  -- segmenters.segmenter that labelled the image and its reconstruction
    image VARCHAR NOT NULL,  -- inversions.image
    concept VARCHAR NOT NULL,  -- concepts.concept
    photo_share DOUBLE NOT NULL,  -- share of the image's pixels labelled with the concept, in [0, 1]
    recon_share DOUBLE NOT NULL,  -- share of the reconstruction's pixels labelled with it, in [0, 1]
    recall DOUBLE,  -- |image ∩ reconstruction| / |image| pixels of the concept, in [0, 1]; NULL when absent from the image
    present BOOLEAN NOT NULL,  -- photo_share >= the run's presence_share
    omitted BOOLEAN NOT NULL  -- present and recall < the run's omit_recall
);
