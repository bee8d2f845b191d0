#!/usr/bin/env bash
# Ablations of SV-UAMC, each one a params.yaml change.
#
#   benchmarks/ablations.sh            # DVC experiments: queue all, run all, show, diff
#   benchmarks/ablations.sh --study    # the same switches in the quality study (ground truth, sim)
#
# DVC experiments run the real pipeline (params.yaml's annotator on paths.input) and report
# what the pipeline can measure without ground truth: samples and calls per face, acceptance
# rate, mean confidence, reject reasons. Queued experiments run from the last commit, so
# commit everything the pipeline needs first. The quality study runs the same switches
# against known ground truth (accuracy, coverage, ECE, calls).
#
# Each experiment starts with an empty response cache (.seke/ is not in git), so `calls` in
# metrics/sample.json is what that configuration costs from scratch. With the local
# annotator `prompt.knowledge` cannot matter (it does not read prompt text); changing the
# text only changes the request ids, and with them the seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

ABLATIONS=(
  "full|"
  "no-knowledge|-S prompt.knowledge=false"
  "fixed-K|-S sample.k0=6 -S sample.kmax=6"
  "bayes-stop|-S sample.stop_rule=bayes -S sample.verify_round=uncertain"
  "no-verification|-S sample.verify_round=none -S verify.use_verification=false"
  "no-consistency|-S verify.use_consistency=false -S sample.stop_min_consistency=0"
  "no-priors|-S verify.use_priors=false -S prompt.blind=false"
  "naive-stop|-S sample.stop_rule=naive -S sample.stop_min_samples=3"
)

if [[ "${1:-}" == "--study" ]]; then
  for a in "${ABLATIONS[@]}"; do
    name=${a%%|*}; args=${a#*|}
    echo "== $name $args"
    # self-calibrated, half the people labelled, measured on the unlabelled faces
    python benchmarks/quality_study.py --annotator "${ANNOTATOR:-sim}" --only none --self-calibrated 0.5 $args \
      --json "benchmarks/results/ablation_${ANNOTATOR:-sim}_${name}.json" 2>&1 | grep -A1 "^labelled  cal"
  done
  exit 0
fi

# Experiments of an earlier run of this script would make the names ambiguous: drop them
# (only abl-*; other experiments, queued or not, are left alone).
old=$(dvc exp list -A --name-only 2>/dev/null | grep -E '^abl-' || true)
if [[ -n "$old" ]]; then
  # shellcheck disable=SC2086
  dvc exp remove $old
fi

if [[ -n "$(git status --porcelain --untracked-files=no -- dvc.yaml dvc.lock params.yaml tasks flows)" ]]; then
  echo "warning: uncommitted changes to the pipeline; queued experiments run from HEAD ($(git rev-parse --short HEAD)) without them" >&2
fi

# A queued experiment runs from HEAD at queue time; if someone commits meanwhile, the
# experiments hang off several commits. Show every commit from here on.
base=$(git rev-parse HEAD)
for a in "${ABLATIONS[@]}"; do
  name=${a%%|*}; args=${a#*|}
  # shellcheck disable=SC2086
  dvc exp run --queue -n "abl-$name" $args
done
dvc exp run --run-all --jobs 1
dvc queue status
if [[ -n "$(git diff --name-only "$base" HEAD -- dvc.yaml dvc.lock params.yaml tasks flows)" ]]; then
  echo "warning: the pipeline changed between $base and HEAD while queueing; baselines differ" >&2
fi
dvc exp show --rev HEAD -n "$(( $(git rev-list --count "$base"..HEAD) + 1 ))" --only-changed --md --drop 'Created|.*validation.*|.*\.(parquet|py)$|data/.*|tasks/.*|expectations/.*'
for n in no-knowledge fixed-K no-verification no-consistency no-priors naive-stop; do
  echo; echo "## dvc metrics diff abl-full abl-$n"
  dvc metrics diff abl-full "abl-$n" --md || true
done
