"""FEAB: the facial-emotion annotation benchmark, and annotation quality of a FEID version.

One metrics code path serves both (`evaluate`):

- expression: accuracy, macro-F1 and UAR (unweighted average recall) over the classes present
  in the ground truth, and the confusion matrix (a missing answer is its own column, `none`);
- AUs: F1 per AU over the items whose source annotates that AU (`au_set`); an AU a source does
  not annotate is *not annotated*, never *absent*, so those items do not count for it. The mean
  is over the AUs annotated anywhere (and per source, over that source's `au_set`);
- VA: CCC, RMSE and Pearson r, for valence and for arousal;
- a bootstrap interval for each (percentile, `bench.bootstrap` resamples, `bench.ci` level),
  resampling *subjects* rather than images, because images of one person are not independent.

Split (`build_split`): labelled sources are read in place; images whose bytes FEID ingested,
and every person FEID contains, are excluded; the remaining people are assigned to `dev` or
`test` by a hash of (seed, subject), so the split is subject-disjoint and deterministic.

Prediction (`predict`): each benchmark image is cropped like the crop stage (largest face;
the whole image if no face is found), asked with exactly the requests FEID asks of a face with
no prior labels (`tasks.stages.prompt.requests_for`), sampled with FEID's adaptive Monte Carlo
sampler and response cache, and aggregated by the verify stage's code (`tasks.method.decide.decide`).
"""

from tasks.tools.feab.metrics import ccc, confusion, evaluate, macro_f1
from tasks.tools.feab.predict import predict, quality_rows, selective, truth_from_manifest
from tasks.tools.feab.report import write_outputs
from tasks.tools.feab.split import build_split, check_disjoint, read_split, training_set, write_split

__all__ = [
    "build_split",
    "ccc",
    "check_disjoint",
    "confusion",
    "evaluate",
    "macro_f1",
    "predict",
    "quality_rows",
    "read_split",
    "selective",
    "training_set",
    "truth_from_manifest",
    "write_outputs",
    "write_split",
]
